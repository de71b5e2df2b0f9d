"""Predict one case in memory: images + tumour segment(s) + bundle → probabilities, class, heatmap.

Steps (each timed): check the images are plausible scans (:mod:`TACEResponseLib.imaging.sanity`),
list the tumours (each segment, and each island of a segment, :mod:`TACEResponseLib.imaging.tumours`),
cut patches as the bundle's card says (other phases resampled around the tumours only), one
forward pass per case that also yields the CAMs, tumour probability = mean over the tumour's
patches, the patient-level answer by the stated rule (default: the mRECIST target lesions = the
up-to-two largest assessable tumours, mean over their patches), heatmap = each predicted
tumour's class map put back into the reference volume. A tumour that cannot be assessed (too
small, no square of the minimum size, patch leaving the image or another phase's field of
view, constant phase) gets a not-assessable row with its reason; the case fails only when no
tumour is assessable, and the error then lists every tumour with its reason. The device is
chosen automatically (CUDA, MPS, CPU) and a GPU out-of-memory falls back to the CPU. On the CPU
results are deterministic.

``progress(fraction, stage)`` is called between steps; raising
:class:`~TACEResponseLib.core.errors.CancelledError` from it stops the prediction cleanly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, crop
from TACEResponseLib.imaging.patches import through_plane_warning
from TACEResponseLib.imaging.sanity import check_scan, hu_warning
from TACEResponseLib.imaging.segmentation import Segmentation
from TACEResponseLib.imaging.tumours import (
    DEFAULT_PATIENT_RULE,
    PATIENT_RULES,
    IslandRule,
    assess_tumours,
    check_patient_rule,
    patient_tumours,
    tumour_rois,
)
from TACEResponseLib.networks.bundle import Bundle
from TACEResponseLib.networks.catalog import resolve_bundle
from TACEResponseLib.networks.input_scaling import scale_inputs
from TACEResponseLib.networks.architectures import cam_layers
from TACEResponseLib.prediction.cam import (
    class_maps,
    footprint_box,
    grad_cam,
    normalise,
    project_to_volume,
    quantised,
    upsample,
)
from TACEResponseLib.imaging.transforms import TRANSFORMS
from TACEResponseLib.networks.trust import NOT_AVAILABLE, pooled, softmax
from TACEResponseLib.prediction.trust import (
    case_warning,
    check_views,
    patient_trust,
    roi_intensities,
    run_views,
    tumour_trust,
)
from TACEResponseLib.prediction.results import (
    NotAssessableTumour,
    PatientPrediction,
    PredictionResult,
    TumourPrediction,
)

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


STAGES = ("reading", "resampling", "patches", "network", "forward", "cam", "survival", "writing")


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
        islands: how segments become tumours (:class:`IslandRule`; default: the rule the bundle
            was trained with, else one tumour per island of at least 0.05 ml).
        patient_rule: which tumours give the patient-level answer (``target_lesions`` or
            ``volume_weighted``; default: the bundle's, else target lesions).
        backend: what runs the network on the CPU (:mod:`TACEResponseLib.networks.backends`):
            ``auto`` (a checked ONNX graph on OpenVINO or ONNX Runtime, else eager PyTorch),
            ``openvino``, ``onnxruntime`` or ``torch``; None: ``$TACERESPONSE_BACKEND``, else auto.
        threads: CPU threads of the network (default: every processor this process may use).
        tta: test-time augmentation views (1 = off … 6: identity and the five flips/rotations of
            training; default 6): each tumour's probability spread over them, at ``tta`` forwards' cost.
    """

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto", cam_method: str = "auto",
                 islands: IslandRule | None = None, patient_rule: str | None = None, backend: str | None = None,
                 threads: int | None = None, tta: int | None = None) -> None:
        from TACEResponseLib.networks.backends import check_backend
        from TACEResponseLib.networks.device import resolve_device

        self.bundle = bundle if isinstance(bundle, Bundle) else resolve_bundle(bundle)
        if cam_method not in ("auto", "cam", "gradcam", "none"):
            raise InputError(f"cam method must be auto, cam, gradcam or none, got {cam_method!r}")
        self.islands, self.patient_rule = tumour_rule_of(self.bundle, islands, patient_rule)
        self.device = resolve_device(device)
        self.backend = check_backend(backend)
        self.threads = threads
        self.target_layer, self.fc_layer = cam_layers(self.bundle.card.architecture, **self.bundle.card.network_options)
        if cam_method == "auto":
            cam_method = "cam" if self.fc_layer else "gradcam"
        if cam_method == "cam" and not self.fc_layer:
            raise InputError(f"{self.bundle.card.architecture} has no linear head for CAM; use gradcam")
        self.cam_method = cam_method
        self.tta = check_views(tta)
        self._network = None
        self._engine = None
        self._profile: tuple | None = None

    @property
    def profile(self) -> tuple:
        """``(TrainingProfile, ProfileArrays)`` of the bundle, or ``(None, None)`` (read once)."""
        if self._profile is None:
            self._profile = (self.bundle.card.training_profile, self.bundle.profile_arrays())
        return self._profile

    @property
    def network(self):
        """The bundle's PyTorch network (loaded on first use, on the CPU; engines move it)."""
        if self._network is None:
            self._network = self.bundle.load_network("cpu")
        return self._network

    @property
    def engine(self):
        """What runs the forward pass (:func:`~TACEResponseLib.networks.backends.open_engine`; chosen,
        and the first time exported and checked, on first use)."""
        if self._engine is None:
            from TACEResponseLib.networks.backends import open_engine

            self._engine = open_engine(self.bundle, lambda: self.network, cam_target=self.target_layer,
                                       cam_fc=self.fc_layer, device=self.device, backend=self.backend,
                                       threads=self.threads, gradients=self.cam_method == "gradcam")
            logger.info("network %s runs on %s %s (%s)", self.bundle.id, self._engine.info.name,
                        self._engine.info.version, self._engine.info.note)
        return self._engine

    def check_images(self, images: Sequence[Volume]) -> list[str]:
        """Refuse images that are not plausible scans; warnings for CT inputs not in HU."""
        card = self.bundle.card
        needed = [p.name for p in card.inputs]
        if len(images) != len(needed):
            got = ", ".join(img.name or "?" for img in images)
            raise InputError(f"model {self.bundle.id} needs {len(needed)} image(s) in this order: "
                             f"{', '.join(needed)}; got {len(images)} ({got})")
        warnings = []
        for n, (image, phase) in enumerate(zip(images, card.inputs)):
            label = f"{phase.name} image ({image.metadata.get('source') or image.name or 'in memory'})"
            check_scan(image, label=label)
            warnings += [str(w) for w in image.metadata.get("warnings") or []]  # e.g. a DICOM series regularised
            window = card.patch_spec.normalization_for(n) == "window"
            warning = None
            if phase.modality.upper() == "CT" and window:
                warning = hu_warning(image, label=label)
            elif phase.modality.upper().startswith("MR") and window:
                warning = (f"{label}: an MR input normalised with the CT window {card.patch_spec.window} HU, as model "
                           f"{self.bundle.id}'s card says; MR intensities are not HU, so check that the model was "
                           "trained this way")
            if warning:
                logger.warning(warning)
                warnings.append(warning)
        interpolated = through_plane_warning(images[0], card.patch_spec, f"{card.inputs[0].name} image")
        if interpolated:
            logger.warning(interpolated)
            warnings.append(interpolated)
        return warnings

    def predict(
        self,
        images: Sequence[Volume],
        segmentation: Segmentation,
        segments: Sequence[str] | None = None,
        clinical: Mapping[str, Any] | None = None,
        case_id: str = "case",
        progress: Progress | None = None,
    ) -> PredictionResult:
        """Predict every tumour of one case; the result carries the heatmap as a Volume.

        Raises:
            InputError: an image is not a plausible scan, a segment is unknown, a clinical value
                is bad, or no tumour can be assessed (the message lists every tumour's reason).
        """
        progress = progress or no_progress
        card = self.bundle.card
        timings: dict[str, float] = {}
        needed = [p.name for p in card.inputs]
        warnings = self.check_images(images)
        clinical_values = clinical_vector(self.bundle, clinical)

        progress(0.10, "resampling")
        start = time.perf_counter()
        reference = images[0]
        rois = tumour_rois(segmentation, reference, segments, self.islands)
        timings["segments"] = time.perf_counter() - start

        progress(0.25, "patches")
        named = [img if img.name == name else Volume(img.array, img.ijk_to_ras, name, img.metadata)
                 for img, name in zip(images, needed)]
        assessment = assess_tumours(named, rois, card.patch_spec, timings=timings)
        assessed = assessment.assessed
        not_assessable = [NotAssessableTumour(roi.segment_id, roi.segment_name, reason, detail, roi.island,
                                              roi.volume_ml) for roi, reason, detail in assessment.not_assessable]
        if not assessed:
            raise assessment.error(f"case {case_id}")

        if self._engine is None:
            progress(0.40, "network")
            start = time.perf_counter()
            self.engine  # noqa: B018 - chosen (first use of a model: exported and checked) outside the forward time
            timings["network"] = time.perf_counter() - start
        progress(0.45, "forward")
        # the input scaling the weights were trained with (ImageNet mean/SD, or none): CAM sees the same input
        all_images = scale_inputs(np.concatenate([p.images for _, p in assessed]), card.scaling)
        owners = np.concatenate([[n] * len(p) for n, (_, p) in enumerate(assessed)])
        forward = self.forward(all_images, clinical_values, owners)
        probabilities, cams = forward.probabilities, forward.cams
        profile, arrays = self.profile
        modality = reference.metadata.get("modality")
        timings["forward"], timings["cam"] = forward.forward_seconds, forward.cam_seconds
        _check_finite(probabilities, case_id)

        progress(0.80, "cam")
        start = time.perf_counter()
        provenance = [prov for _, patches in assessed for prov in patches.provenance]
        lo, hi = footprint_box(provenance, reference)
        heat = np.zeros(tuple(hi - lo), np.float32)  # only the box of the patches' footprints
        tumours: list[TumourPrediction] = []
        orr_idx = card.objective_response_indices
        for n, (roi, patches) in enumerate(assessed):
            rows = owners == n
            patch_probs = probabilities[rows]
            mean = patch_probs.mean(axis=0)
            predicted = int(np.argmax(mean))
            peak = None
            if cams is not None:
                maps = normalise(cams[rows][np.arange(rows.sum()), predicted] if cams.ndim == 4 else cams[rows])
                project_to_volume(maps, patches.provenance, reference, out=heat, origin_kji=lo)  # max where tumours meet
                # the voxel holding the tumour's strongest patch pixel (no full-volume temporaries)
                patch, v, u = np.unravel_index(int(np.argmax(maps)), maps.shape)
                ijk = (patches.provenance[patch].patch_to_ijk @ np.array([u, v, 0.0, 1.0]))[:3]
                peak = reference.ijk_to_ras_points(np.round(ijk)[None])[0].tolist()
            trust = tumour_trust(mean, None if forward.views is None else forward.views[:, rows], profile, arrays,
                                 None if forward.pooled is None else forward.pooled[rows], roi_intensities(reference, roi),
                                 reference, modality)
            notes = ["touches the image edge: the tumour may extend beyond the image, so its largest slice may lie "
                     "outside it"] if roi.touches_edge else []
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
                volume_ml=roi.volume_ml,
                heatmap_peak_ras=peak,
                notes=notes,
                trust=trust,
                uncalibrated_probabilities=(None if forward.uncalibrated is None
                                            else [float(p) for p in forward.uncalibrated[rows].mean(axis=0)]),
            ))
        box = crop(reference, lo, hi)
        heatmap = Volume(quantised(heat), box.ijk_to_ras, f"{reference.name} TACE heatmap",
                         {"heatmap": True, "crop_offset_kji": [int(v) for v in lo]})
        timings["cam"] += time.perf_counter() - start
        return PredictionResult(
            case_id=case_id,
            bundle_id=self.bundle.id,
            bundle_sha256=card.weights_sha256,
            synthetic_model=card.synthetic,
            warning=card.warning,
            device=forward.device,
            tumours=tumours,
            timings={k: float(v) for k, v in timings.items()},
            reference={"name": reference.name, "ijk_to_ras": reference.ijk_to_ras.tolist(),
                       "shape_kji": list(reference.shape_kji)},
            not_assessable=not_assessable,
            patient=patient_prediction(tumours, self.patient_rule, orr_idx),
            trust={"calibration": card.calibration.describe() if card.calibration is not None
                   else "none (the model bundle carries no calibration)",
                   "temperature": card.calibration.temperature if card.calibration is not None else None,
                   "test_time_views": self.tta, "test_time_transforms": list(TRANSFORMS[:self.tta]),
                   "forwards": forward.forwards, "patches": int(len(all_images)),
                   "out_of_distribution": profile.describe() if profile is not None else NOT_AVAILABLE},
            ood_warning=case_warning(tumours),
            islands={**self.islands.to_dict(), "description": self.islands.describe()},
            warnings=warnings,
            heatmap=heatmap,
            heatmap_box_kji=[[int(v) for v in lo], [int(v) for v in hi]],
            heatmap_method=self.cam_method if cams is not None else "",
            backend=self.engine.info.to_dict(),
        )

    def forward(self, images: np.ndarray, clinical: np.ndarray | None = None,
                owners: np.ndarray | None = None) -> "ForwardPass":
        """The network on prepared patches ``(N, C, S, S)``: probabilities and the class maps.

        The one place the network runs for a prediction. Maps are CAMs ``(N, classes, S, S)``
        (features × head weights, upsampled to the patch size), Grad-CAMs ``(N, S, S)`` of each
        tumour's predicted class (``owners[n]`` = the tumour of patch ``n``), or None.
        """
        engine = self.engine
        start = time.perf_counter()
        clinical_rows = None if clinical is None else np.repeat(np.asarray(clinical, np.float32)[None], len(images), 0)
        output = run_views(engine, images, clinical_rows, self.tta)
        calibration = self.bundle.card.calibration
        logits = output.logits if calibration is None else calibration.apply(output.logits)
        all_views = softmax(logits)
        probabilities = all_views[0].astype(np.float32)
        uncalibrated = None if calibration is None else softmax(output.logits[0]).astype(np.float32)
        pooled_features = None if output.features is None else pooled(output.features)
        forward_s = time.perf_counter() - start
        start = time.perf_counter()
        size = images.shape[-1]
        cams = None
        if self.cam_method == "cam":
            n, _, h, w = output.features.shape
            maps = class_maps(output.features, engine.head)
            cams = upsample(maps.reshape(n * maps.shape[1], h, w), size).reshape(n, maps.shape[1], size, size)
        elif self.cam_method == "gradcam":
            cams = self._grad_cam(images, clinical_rows, probabilities, owners, output.device)
        return ForwardPass(probabilities, cams, output.device, forward_s, time.perf_counter() - start,
                           all_views if self.tta > 1 else None, uncalibrated, pooled_features, output.forwards)

    def _grad_cam(self, images: np.ndarray, clinical: np.ndarray | None, probabilities: np.ndarray,
                  owners: np.ndarray | None, device: str) -> np.ndarray:
        """Grad-CAM of each tumour's predicted class (mean over its patches), on the device the forward ran on."""
        import torch

        owners = np.zeros(len(images), int) if owners is None else owners
        predicted = np.zeros(len(images), int)
        for owner in np.unique(owners):
            predicted[owners == owner] = int(np.argmax(probabilities[owners == owner].mean(axis=0)))
        network = self.engine.network.to(device)
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(device)
        c = None if clinical is None else torch.from_numpy(clinical).to(device)
        return grad_cam(network, x, self.target_layer, predicted, clinical=c).detach().float().cpu().numpy()


@dataclass
class ForwardPass:
    """What :meth:`Predictor.forward` gives: probabilities, maps, the device, seconds of the forward and the maps."""

    probabilities: np.ndarray
    cams: np.ndarray | None
    device: str
    forward_seconds: float
    cam_seconds: float
    #: calibrated probabilities of every test-time view ``(views, N, classes)`` (None without augmentation)
    views: np.ndarray | None = None
    #: the unaugmented patches' probabilities before calibration (None when the bundle has none)
    uncalibrated: np.ndarray | None = None
    #: pooled CAM-layer features of the unaugmented patches ``(N, C)``
    pooled: np.ndarray | None = None
    forwards: int = 0


def tumour_rule_of(bundle: Bundle, islands: IslandRule | None = None,
                   patient_rule: str | None = None) -> tuple[IslandRule, str]:
    """The island rule and patient rule to use: the ones given, else the bundle's (what it was
    trained with), else the defaults — so training, evaluation and prediction agree."""
    stored = dict(bundle.card.tumour_rule or {})
    if islands is None:
        islands = IslandRule(split=bool(stored.get("split", True)),
                             min_island_ml=stored.get("min_island_ml", IslandRule().min_island_ml))
    rule = check_patient_rule(patient_rule or stored.get("patient_rule") or DEFAULT_PATIENT_RULE)
    return islands, rule


def patient_prediction(tumours: Sequence[TumourPrediction], rule: str,
                       objective_indices: Sequence[int] = ()) -> PatientPrediction | None:
    """The patient-level answer from the predicted tumours by ``rule`` (see :data:`PATIENT_RULES`).

    ``target_lesions``: the patches of the up-to-two largest tumours pooled, probability = their
    mean (Peng 2019 averaged the patches of the largest tumour; mRECIST assesses up to two
    target lesions per organ). ``volume_weighted``: every tumour's probabilities weighted by its
    volume.
    """
    if not tumours:
        return None
    rule = check_patient_rule(rule)
    chosen = patient_tumours([t.volume_ml for t in tumours], rule)
    used = [tumours[n] for n in chosen]
    if rule == "target_lesions":
        patches = np.concatenate([np.asarray(t.patch_probabilities, np.float64) for t in used])
        mean = patches.mean(axis=0)
        weights = [len(t.patch_probabilities) / len(patches) for t in used]
    else:
        volumes = np.array([max(t.volume_ml, 0.0) for t in used], np.float64)
        weights_arr = volumes / volumes.sum() if volumes.sum() > 0 else np.full(len(used), 1.0 / len(used))
        mean = (weights_arr[:, None] * np.array([t.probabilities for t in used], np.float64)).sum(axis=0)
        weights = weights_arr.tolist()
    class_names = list(used[0].class_names)
    predicted = int(np.argmax(mean))
    labels = [t.label for t in used]
    return PatientPrediction(
        rule=rule, description=PATIENT_RULES[rule], tumours=[t.label for t in used],
        weights=[float(w) for w in weights], class_names=class_names, probabilities=[float(p) for p in mean],
        predicted_class=class_names[predicted],
        objective_response_probability=float(mean[list(objective_indices)].sum()) if objective_indices else None,
        n_patches=int(sum(len(t.patch_probabilities) for t in used)),
        trust=patient_trust(used, labels, weights))


def _check_finite(probabilities: np.ndarray, case_id: str) -> None:
    """Refuse non-finite network outputs (they come from inputs the checks did not catch)."""
    if not np.all(np.isfinite(probabilities)):
        raise InputError(f"case {case_id}: the network gave non-finite probabilities (NaN or infinity); the input "
                         "images hold values the model cannot use — check their intensities")
