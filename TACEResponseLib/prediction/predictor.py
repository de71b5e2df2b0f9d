"""Predict one case in memory: images + tumour segment(s) + bundle → probabilities, class, heatmap.

Steps (each timed): list the tumours (each segment, and each island of a segment when it has
several, :mod:`TACEResponseLib.imaging.tumours`), cut patches as the bundle's card says (other
phases resampled around the tumours only), one forward pass per case that also yields the
CAMs, tumour probability = mean over the tumour's patches, heatmap = the predicted class's map
put back into the reference volume. The device is chosen automatically (CUDA, MPS, CPU) and a
GPU out-of-memory falls back to the CPU. On the CPU results are deterministic.

``progress(fraction, stage)`` is called between steps; raising
:class:`~TACEResponseLib.core.errors.CancelledError` from it stops the prediction cleanly.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, check_volume
from TACEResponseLib.imaging.patches import PatchSet, patches_for_case
from TACEResponseLib.imaging.segmentation import Segmentation
from TACEResponseLib.imaging.tumours import IslandRule, tumour_rois
from TACEResponseLib.networks.bundle import Bundle
from TACEResponseLib.networks.catalog import resolve_bundle
from TACEResponseLib.prediction.cam import (
    forward_with_cam,
    grad_cam,
    normalise,
    project_to_volume,
    upsample,
)
from TACEResponseLib.prediction.results import PredictionResult, TumourPrediction

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


STAGES = ("reading", "resampling", "patches", "forward", "cam", "survival", "writing")


def no_progress(fraction: float, stage: str) -> None:  # noqa: ARG001
    return None


def clinical_vector(bundle: Bundle, clinical: Mapping[str, Any] | None) -> np.ndarray | None:
    """Standardised clinical factors in the bundle's order; every problem listed in one error."""
    factors = bundle.card.clinical_factors
    if not factors:
        return None
    clinical = clinical or {}
    checked, problems = {}, []
    for factor in factors:
        if factor.name not in clinical or clinical[factor.name] in (None, ""):
            problems.append(f"clinical factor {factor.name!r} ({factor.unit}) is missing")
            continue
        try:
            checked[factor.name] = factor.check(clinical[factor.name])
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        raise InputError(f"model {bundle.id}: " + "; ".join(problems))
    return bundle.card.clinical_scaler().transform(checked)[0]


class Predictor:
    """A bundle's network on a device, ready to predict cases (reuse it across a batch).

    Args:
        bundle: a :class:`Bundle`, a bundle folder or a registered model name.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        cam_method: ``auto`` (CAM where the head is linear, else Grad-CAM), ``cam``, ``gradcam``, ``none``.
        islands: how segments become tumours (:class:`IslandRule`; default: one tumour per island).
    """

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto", cam_method: str = "auto",
                 islands: IslandRule = IslandRule()) -> None:
        from TACEResponseLib.networks.device import select_device

        self.bundle = bundle if isinstance(bundle, Bundle) else resolve_bundle(bundle)
        self.device = select_device(device)
        if cam_method not in ("auto", "cam", "gradcam", "none"):
            raise InputError(f"cam method must be auto, cam, gradcam or none, got {cam_method!r}")
        from TACEResponseLib.networks.architectures import cam_layers

        self.target_layer, self.fc_layer = cam_layers(self.bundle.card.architecture, **self.bundle.card.network_options)
        if cam_method == "auto":
            cam_method = "cam" if self.fc_layer else "gradcam"
        if cam_method == "cam" and not self.fc_layer:
            raise InputError(f"{self.bundle.card.architecture} has no linear head for CAM; use gradcam")
        self.cam_method = cam_method
        self.islands = islands
        self._network = None

    @property
    def network(self):
        if self._network is None:  # loaded on the CPU; _forward moves it to the device in use
            self._network = self.bundle.load_network("cpu")
        return self._network

    def predict(
        self,
        images: Sequence[Volume],
        segmentation: Segmentation,
        segments: Sequence[str] | None = None,
        clinical: Mapping[str, Any] | None = None,
        case_id: str = "case",
        progress: Progress | None = None,
    ) -> PredictionResult:
        """Predict every tumour of one case; the result carries the heatmap as a Volume."""
        progress = progress or no_progress
        card = self.bundle.card
        timings: dict[str, float] = {}
        needed = [p.name for p in card.inputs]
        if len(images) != len(needed):
            got = ", ".join(img.name or "?" for img in images)
            raise InputError(f"model {self.bundle.id} needs {len(needed)} image(s) in this order: "
                             f"{', '.join(needed)}; got {len(images)} ({got})")
        clinical_values = clinical_vector(self.bundle, clinical)

        progress(0.10, "resampling")
        start = time.perf_counter()
        reference = check_volume(images[0], label=needed[0])
        rois = tumour_rois(segmentation, reference, segments, self.islands)
        timings["segments"] = time.perf_counter() - start

        progress(0.25, "patches")
        named = [img if img.name == name else Volume(img.array, img.ijk_to_ras, name, img.metadata)
                 for img, name in zip(images, needed)]
        patch_sets: list[PatchSet] = patches_for_case(named, [roi.mask for roi in rois], card.patch_spec,
                                                      labels=[roi.label for roi in rois], timings=timings)

        progress(0.45, "forward")
        from TACEResponseLib.networks.device import run_with_device_fallback

        all_images = np.concatenate([p.images for p in patch_sets])
        owners = np.concatenate([[n] * len(p) for n, p in enumerate(patch_sets)])
        outcome = run_with_device_fallback(lambda device: self._forward(all_images, clinical_values, owners, device),
                                           self.device)
        probabilities, cams, device_used, timings["forward"], timings["cam"] = outcome

        progress(0.80, "cam")
        start = time.perf_counter()
        heat = np.zeros(reference.shape_kji, np.float32)
        tumours: list[TumourPrediction] = []
        voxel_ml = float(np.prod(reference.spacing)) / 1000.0
        for n, (roi, patches) in enumerate(zip(rois, patch_sets)):
            rows = owners == n
            patch_probs = probabilities[rows]
            mean = patch_probs.mean(axis=0)
            predicted = int(np.argmax(mean))
            orr_idx = card.objective_response_indices
            peak = None
            if cams is not None:
                maps = normalise(cams[rows][np.arange(rows.sum()), predicted] if cams.ndim == 4 else cams[rows])
                project_to_volume(maps, patches.provenance, reference, out=heat)  # max where tumours meet
                # the voxel holding the tumour's strongest patch pixel (no full-volume temporaries)
                patch, v, u = np.unravel_index(int(np.argmax(maps)), maps.shape)
                ijk = (patches.provenance[patch].patch_to_ijk @ np.array([u, v, 0.0, 1.0]))[:3]
                peak = reference.ijk_to_ras_points(np.round(ijk)[None])[0].tolist()
            tumours.append(TumourPrediction(
                segment_id=roi.segment_id,
                segment_name=roi.segment_name,
                island=roi.island,
                class_names=list(card.class_names),
                probabilities=[float(p) for p in mean],
                predicted_class=card.class_names[predicted],
                objective_response_probability=float(mean[orr_idx].sum()) if orr_idx else None,
                patch_probabilities=patch_probs.astype(float).tolist(),
                provenance=[p.to_dict() for p in patches.provenance],
                volume_ml=float(np.count_nonzero(roi.mask.array)) * voxel_ml,
                heatmap_peak_ras=peak,
            ))
        timings["cam"] += time.perf_counter() - start
        heatmap = reference.with_array(heat, name=f"{reference.name} TACE heatmap", heatmap=True)
        return PredictionResult(
            case_id=case_id,
            bundle_id=self.bundle.id,
            bundle_sha256=card.weights_sha256,
            synthetic_model=card.synthetic,
            warning=card.warning,
            device=str(device_used),
            tumours=tumours,
            timings={k: float(v) for k, v in timings.items()},
            reference={"name": reference.name, "ijk_to_ras": reference.ijk_to_ras.tolist(),
                       "shape_kji": list(reference.shape_kji)},
            heatmap=heatmap,
        )

    def _forward(self, images: np.ndarray, clinical: np.ndarray | None, owners: np.ndarray, device):
        """Probabilities ``(N, classes)`` and maps: CAM ``(N, classes, S, S)`` or Grad-CAM ``(N, S, S)``."""
        import torch

        network = self.network.to(device)
        x = torch.from_numpy(images).to(device)
        c = None if clinical is None else torch.from_numpy(np.repeat(clinical[None], len(images), 0)).to(device)
        size = images.shape[-1]
        start = time.perf_counter()
        cams = None
        with torch.inference_mode():
            if self.cam_method == "cam":
                out = forward_with_cam(network, x, self.target_layer, self.fc_layer, clinical=c)
                logits = out.logits
                n, k, h, w = out.cams.shape
                cams = upsample(out.cams.reshape(n * k, h, w), size).reshape(n, k, size, size)
            else:
                logits = network(x) if c is None else network(x, c)
            probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
        forward_s = time.perf_counter() - start
        start = time.perf_counter()
        if self.cam_method == "gradcam":
            # the class explained is each tumour's predicted class (mean over its patches)
            predicted = np.zeros(len(images), int)
            for owner in np.unique(owners):
                predicted[owners == owner] = int(np.argmax(probabilities[owners == owner].mean(axis=0)))
            cams = grad_cam(network, x.clone(), self.target_layer, predicted, clinical=c)
        cam_np = None if cams is None else cams.detach().float().cpu().numpy()
        return probabilities, cam_np, device, forward_s, time.perf_counter() - start
