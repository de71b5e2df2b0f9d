"""DenseNet-121 deep features of a case (Zhang 2020), cached per case, and feature tables on disk.

For each case and each phase (arterial + portal by default, any list), the ``centroid`` patch
of :mod:`TACEResponseLib.imaging.patches` — ``size`` x ``size`` pixels (224 in the paper)
centred on the ROI centroid of the largest-ROI axial slice, field of view ``fov_mm``
(default: ``size`` native pixels), z-scored with the ROI's voxels — is repeated on 3 channels
and passed through DenseNet-121 (:func:`TACEResponseLib.networks.features.densenet_features`),
giving 1024 features per phase named ``<phase>_f0000`` ... ``<phase>_f1023``. Phases are
resampled onto the first phase's grid first, the segment onto that grid (nearest).

**Weights.** ImageNet weights come from a local torchvision-format file (``pretrained=PATH``);
none ships and none is downloaded. Without one the network is initialised with
``torch.manual_seed(seed)``: those are *random-init DenseNet features*, labelled so wherever
they appear. The SHA-256 of the network's state dict is recorded, and a saved model refuses to
score a case with different weights.

**Cache.** One ``.npz`` per case and extraction, keyed by the inputs' content fingerprint, the
segment, the ROI perturbation, the patch spec, the phases and the weights hash. Writes are atomic.
Each case is one task (:mod:`TACEResponseLib.core.tasks`): in this process, or on a Dask cluster
where every worker process loads the network once and writes its cases' ``.npz`` files itself.

**ICC inputs.** ``extract(cases, perturbation=...)`` repeats the extraction: ``"randomise"``
moves images and ROI by a small random rotation/translation, randomises the contour and adds
noise (:mod:`.reproducibility`, as in image-perturbation robustness studies); ``"erode"`` /
``"dilate"`` change the ROI by one voxel in-plane; ``"reader2"`` uses a second reader's
segmentation (manifest column ``segmentation_2``, optional ``segment_2``).

**Phases.** One ROI serves every phase unless the manifest names one segment per phase
(columns ``segment_<phase>``, e.g. ``segment_portal``; drawn on that phase in the same
segmentation): then each phase's patch is centred on its own ROI. ``register=True`` in the
settings rigidly registers every phase without its own ROI onto the reference phase
(:func:`register_rigid`) before the patches are cut, for phases acquired in
different positions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError, TACEResponseError
from TACEResponseLib.core.files import (
    atomic_path,
    content_fingerprint,
    from_spreadsheet_safe_frame,
    safe_file_name,
    sha256_of,
    spreadsheet_safe_frame,
    write_json_atomic,
)
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.core.tasks import IN_PROCESS, CaseTask, ClusterOptions, WorkerSetup, run_cases
from TACEResponseLib.imaging.geometry import LPS_TO_RAS, Volume, bounding_box, resample_to_reference, to_sitk_image
from TACEResponseLib.imaging.manifest import ManifestRow, read_manifest
from TACEResponseLib.imaging.patches import PatchSpec, extract_patches
from TACEResponseLib.imaging.segmentation import (
    Segmentation,
    read_segmentation,
    segment_mask_on,
)
from TACEResponseLib.imaging.tumours import IslandRule, index_tumour
from TACEResponseLib.imaging.volume_io import read_volume
from TACEResponseLib.survival.reproducibility import RandomPerturbation, perturb_mask, randomise_case

logger = logging.getLogger(__name__)

FEATURE_FORMAT = "tace-response-deep-features/1"


N_FEATURES = 1024


MIN_SIZE = 32  # DenseNet-121 downsamples by 32


PERTURBATIONS = ("none", "randomise", "erode", "dilate", "reader2")


RANDOM_INIT_LABEL = "random-init DenseNet features, SYNTHETIC demo"


RESEARCH_NOTE = "Research use only. Not for clinical decisions."


def feature_names(phases: Sequence[str]) -> list[str]:
    """``<phase>_f0000`` ... ``<phase>_f1023`` for each phase, in order."""
    return [f"{phase}_f{j:04d}" for phase in phases for j in range(N_FEATURES)]


# --- settings -----------------------------------------------------------------------------
@dataclass
class FeatureSettings(JsonRecord):
    """How deep features are extracted; stored with a signature so cases are scored the same way."""

    phases: list[str] = field(default_factory=lambda: ["arterial", "portal"])
    size: int = 224
    fov_mm: float | None = None
    axis: str = "axial"
    pretrained: str | None = None
    seed: int = 0
    architecture: str = "densenet121"
    #: how the segment becomes the tumour: its largest island under this rule; None = the whole
    #: segment, islands merged (what models saved without this field were fitted with)
    islands: IslandRule | None = None
    #: rigidly register each phase without its own ROI onto the first phase before cutting patches
    register: bool = False
    #: the cohort was drawn with one ROI per phase (``segment_<phase>``); a case scored with one ROI is warned about
    roi_per_phase: bool = False

    def __post_init__(self) -> None:
        self.phases = [str(p) for p in self.phases]
        self.register = bool(self.register)
        self.roi_per_phase = bool(self.roi_per_phase)
        if not self.phases:
            raise InputError("feature settings: at least one phase is needed")
        if len(set(self.phases)) != len(self.phases):
            raise InputError(f"feature settings: phases repeat: {self.phases}")
        if isinstance(self.size, bool) or int(self.size) != self.size or self.size < MIN_SIZE:
            raise InputError(f"feature settings: patch size must be an integer >= {MIN_SIZE} (DenseNet-121 "
                             f"downsamples by 32), got {self.size!r}")
        self.size = int(self.size)
        if self.fov_mm is not None and not (math.isfinite(float(self.fov_mm)) and float(self.fov_mm) > 0):
            raise InputError(f"feature settings: fov_mm must be a positive number of mm, got {self.fov_mm!r}")
        if self.architecture != "densenet121":
            raise InputError(f"feature settings: only densenet121 features are supported, got {self.architecture!r}")

    @property
    def patch_spec(self) -> PatchSpec:
        return PatchSpec(strategy="centroid", size=self.size, axis=self.axis, fov_mm=self.fov_mm,
                         normalization="zscore", single_phase_channels="repeat", n_channels=3)

    @property
    def input_scaling(self):
        """What the DenseNet's input gets after the patch normalisation (the one rule of
        :func:`~TACEResponseLib.networks.input_scaling.resolve_input_scaling`, as training and prediction)."""
        from TACEResponseLib.networks.input_scaling import resolve_input_scaling

        spec = self.patch_spec
        return resolve_input_scaling("auto", bool(self.pretrained), [spec.normalization_for(0)], spec.n_channels)

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.phases)


@dataclass
class WeightsInfo(JsonRecord):
    """Which DenseNet weights produced the features."""

    kind: str  # "imagenet-file" or "random-init"
    sha256: str  # of the network's state dict as used
    label: str
    source: str | None = None
    file_sha256: str | None = None
    seed: int | None = None
    torch_version: str = ""


def _state_dict_sha256(network: Any) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(network.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


_NETWORKS: dict[tuple, tuple[Any, WeightsInfo]] = {}


def load_feature_network(settings: FeatureSettings) -> tuple[Any, WeightsInfo]:
    """DenseNet-121 in eval mode with ImageNet weights from ``settings.pretrained`` or a seeded random init.

    Networks are kept per process (keyed by seed, or by the weights file's path, size and
    modification time), so a batch or a Slicer session builds each one once. Do not modify
    the returned network.
    """
    if settings.pretrained:
        path = Path(settings.pretrained).expanduser()
        if not path.is_file():
            raise InputError(f"pretrained weights file {path} does not exist or is not a file")
        stat = path.stat()
        key: tuple = ("file", str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    else:
        key = ("random", int(settings.seed))
    if key not in _NETWORKS:
        _NETWORKS[key] = _build_feature_network(settings)
    network, info = _NETWORKS[key]
    return network, WeightsInfo(**info.to_dict())


def _build_feature_network(settings: FeatureSettings) -> tuple[Any, WeightsInfo]:
    import torch

    from TACEResponseLib.networks.architectures import build_network
    from TACEResponseLib.networks.pretrained import load_pretrained

    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
        torch.manual_seed(int(settings.seed))
        network = build_network("densenet121", num_classes=1000, in_channels=3)
    if settings.pretrained:
        path = Path(settings.pretrained).expanduser()
        report = load_pretrained(network, path, "densenet121")
        info = WeightsInfo("imagenet-file", "", f"ImageNet DenseNet-121 features ({path.name})", str(path.resolve()),
                           sha256_of(path), None)
        logger.info("deep features: %s", report.summary())
    else:
        info = WeightsInfo("random-init", "", RANDOM_INIT_LABEL, None, None, int(settings.seed))
        logger.warning("deep features: no ImageNet weights file given; DenseNet-121 uses a seeded random "
                       "initialisation (seed %d): %s", settings.seed, RANDOM_INIT_LABEL)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    info.sha256 = _state_dict_sha256(network)
    info.torch_version = str(torch.__version__)
    return network, info


# --- cases --------------------------------------------------------------------------------
@dataclass
class FeatureCase(ManifestRow):
    """A manifest row and, optionally, one segment per phase (``segment_<phase>`` columns)."""

    phase_segments: dict[str, str] = field(default_factory=dict)


def read_feature_manifest(path: str | Path, phases: Sequence[str]) -> list[FeatureCase]:
    """The cases of a survival manifest (``case_id``, one column per phase, ``segmentation``, optional
    ``segment``, ``segment_<phase>``, ``segmentation_2``, ``segment_2``), every row checked and every
    problem listed in one error (:func:`~TACEResponseLib.imaging.manifest.read_manifest`; a
    per-phase segment must exist and not be empty)."""
    rows = read_manifest(path, phases, require_label=False)
    columns = {p: f"segment_{p}" for p in phases}
    table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    table.columns = [str(c).strip() for c in table.columns]
    present = {p: c for p, c in columns.items() if c in table.columns}
    cases, problems = [], []
    by_id = table.set_index(table["case_id"].str.strip()) if present else None
    for row in rows:
        segments = {}
        if by_id is not None:
            segments = {p: str(by_id.loc[row.case_id, c]).strip() for p, c in present.items()
                        if str(by_id.loc[row.case_id, c]).strip()}
            problems += [f"case {row.case_id!r}: {problem}" for problem in _segment_problems(row.segmentation, segments)]
        cases.append(FeatureCase(**{f.name: getattr(row, f.name) for f in dataclasses.fields(ManifestRow)},
                                 phase_segments=segments))
    if problems:
        raise InputError(f"{path}: per-phase segments unusable:\n  " + "\n  ".join(problems[:50]))
    return cases


def _segment_problems(segmentation_path: Path, segments: Mapping[str, str]) -> list[str]:
    if not segments:
        return []
    try:
        segmentation = read_segmentation(segmentation_path)
    except TACEResponseError as exc:
        return [str(exc)]
    problems = []
    for phase, key in segments.items():
        try:
            segment = segmentation.find(key)
        except InputError as exc:
            problems.append(f"segment_{phase}: {exc}")
            continue
        if not np.any(segmentation.layers[segment.layer] == segment.label_value):
            problems.append(f"segment_{phase}: segment {key!r} is empty")
    return problems


def _as_segmentation(segmentation: Segmentation | str | Path) -> Segmentation:
    return segmentation if isinstance(segmentation, Segmentation) else read_segmentation(segmentation)


def _pick_segment(segmentation: Segmentation, segment: str | None) -> str:
    if segment:
        return segmentation.find(segment).id
    if not segmentation.segments:
        raise InputError(f"segmentation {segmentation.name!r} has no segments; draw the tumour first")
    return segmentation.default_segment_ids()[0]


# --- rigid registration of a phase onto the reference -------------------------------------------
@dataclass
class RigidRegistration(JsonRecord):
    """Where the moving phase was found: translation (RAS, mm) and rotation (degrees) of the
    transform mapping reference points into the moving image, and the final metric."""

    translation_mm: list[float]
    rotation_deg: list[float]
    metric: float
    iterations: int


def register_rigid(fixed: Volume, moving: Volume, *, roi: Volume | None = None, margin_mm: float = 40.0,
                   seed: int = 0) -> tuple[Volume, RigidRegistration]:
    """``moving`` rigidly registered (Mattes mutual information, Euler 3-D) and resampled onto ``fixed``'s grid.

    With ``roi`` the metric looks at the ROI's neighbourhood (its bounding box + ``margin_mm``),
    where the signature's patch is cut. Deterministic (regular metric sampling).
    """
    import SimpleITK as sitk

    fixed_image = sitk.Cast(to_sitk_image(fixed), sitk.sitkFloat32)
    moving_image = sitk.Cast(to_sitk_image(moving), sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(fixed_image, moving_image, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.25, seed)
    if roi is not None:
        margin = np.ceil(margin_mm / fixed.spacing[::-1]).astype(int)
        lo, hi = bounding_box(roi.array > 0, margin)
        box = np.zeros(fixed.shape_kji, np.uint8)
        box[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
        method.SetMetricFixedMask(to_sitk_image(fixed.with_array(box)))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=300,
                                                    relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    try:
        transform = method.Execute(fixed_image, moving_image)
    except RuntimeError as exc:
        raise InputError(f"registering {moving.name or 'the moving phase'} onto {fixed.name or 'the reference'} "
                         f"failed: {str(exc).strip().splitlines()[-1]}") from None
    out = sitk.Resample(moving_image, fixed_image, transform, sitk.sitkLinear, float(np.min(moving.array)))
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(transform).GetNthTransform(0)) \
        if transform.GetName() == "CompositeTransform" else sitk.Euler3DTransform(transform)
    translation_ras = LPS_TO_RAS[:3, :3] @ np.asarray(euler.GetTranslation())
    result = RigidRegistration([float(v) for v in translation_ras],
                               [float(np.rad2deg(a)) for a in (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ())],
                               float(method.GetMetricValue()), int(method.GetOptimizerIteration()))
    logger.info("registered %s onto %s: translation %s mm, rotation %s deg", moving.name or "phase", fixed.name or
                "reference", np.round(translation_ras, 2).tolist(), np.round(result.rotation_deg, 2).tolist())
    registered = Volume(sitk.GetArrayFromImage(out), fixed.ijk_to_ras.copy(), moving.name,
                        {**moving.metadata, "registration": result.to_dict()})
    return registered, result


# --- extraction ---------------------------------------------------------------------------
@dataclass
class CasePatches:
    """The patches of one case (one per phase) and where they came from."""

    images: np.ndarray  # (n_phases, 3, size, size)
    info: dict[str, Any]


class DeepFeatureExtractor:
    """DenseNet-121 loaded once per process, with a per-case disk cache.

    ``extract(cases)`` returns a DataFrame (index ``case_id``, columns ``<phase>_fNNNN``), one task
    per case in this process or on a Dask cluster (:mod:`TACEResponseLib.core.tasks`);
    ``extract_volumes`` scores one in-memory case (the per-patient path).
    """

    def __init__(self, settings: FeatureSettings | None = None, *, cache_dir: str | Path | None = None,
                 device: str = "auto", batch_size: int = 16, perturb_voxels: int = 1,
                 randomisation: RandomPerturbation | None = None) -> None:
        from TACEResponseLib.networks.device import select_device

        self.settings = settings or FeatureSettings()
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.perturb_voxels = int(perturb_voxels)
        self.randomisation = randomisation or RandomPerturbation()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = select_device(device)
        self._network = None
        self._weights: WeightsInfo | None = None
        self.case_info: dict[str, dict[str, Any]] = {}
        self.cache_hits = 0
        self.cache_misses = 0

    # network -------------------------------------------------------------------------
    def _load(self) -> None:
        if self._network is None:
            self._network, self._weights = load_feature_network(self.settings)

    @property
    def network(self):
        self._load()
        return self._network

    @property
    def weights(self) -> WeightsInfo:
        self._load()
        assert self._weights is not None
        return self._weights

    @property
    def feature_names(self) -> list[str]:
        return self.settings.feature_names

    def metadata(self) -> dict[str, Any]:
        """What produced the features (written beside every feature table)."""
        return {
            "format": FEATURE_FORMAT,
            "settings": self.settings.to_dict(),
            "patch_spec": self.settings.patch_spec.to_dict(),
            "input_scaling": self.settings.input_scaling.to_dict(),
            "weights": self.weights.to_dict(),
            "label": self.weights.label,
            "n_features": len(self.feature_names),
            "note": RESEARCH_NOTE,
        }

    def forward(self, patches: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S)`` patches -> ``(N, 1024)`` pooled DenseNet features (float32)."""
        import torch

        from TACEResponseLib.networks.device import run_with_device_fallback
        from TACEResponseLib.networks.features import densenet_features

        from TACEResponseLib.networks.input_scaling import scale_inputs

        patches = scale_inputs(np.ascontiguousarray(patches, dtype=np.float32), self.settings.input_scaling)
        network = self.network

        def run(device):
            model = network.to(device)
            out = []
            with torch.inference_mode():
                for start in range(0, len(patches), self.batch_size):
                    x = torch.from_numpy(patches[start:start + self.batch_size]).to(device)
                    out.append(densenet_features(model, x).float().cpu().numpy())
            return np.concatenate(out) if out else np.zeros((0, N_FEATURES), np.float32)

        return run_with_device_fallback(run, self.device)

    # patches -------------------------------------------------------------------------
    def case_patches(self, images: Mapping[str, Volume], mask: Volume | Mapping[str, Volume],
                     label: str = "ROI") -> CasePatches:
        """One 3-channel centroid patch per phase (phases on the mask's grid, first phase = reference);
        ``mask`` is one ROI for every phase, or one per phase."""
        spec = self.settings.patch_spec
        masks = mask if isinstance(mask, Mapping) else {p: mask for p in self.settings.phases}
        stack, info, per_phase = [], {}, {}
        for phase in self.settings.phases:
            patch = extract_patches([images[phase]], masks[phase], spec, label=f"{label} {phase}")
            stack.append(patch.images[0])
            prov = patch.provenance[0]
            per_phase[phase] = {"slice_axis": prov.slice_axis, "slice_index": prov.slice_index,
                                "center_ras": [float(v) for v in prov.center_ras], "side_mm": list(prov.side_mm),
                                "roi_voxels": int(np.count_nonzero(masks[phase].array))}
            if not info:
                info = dict(per_phase[phase])
        if isinstance(mask, Mapping):
            info["phases"] = per_phase
        return CasePatches(np.stack(stack).astype(np.float32), info)

    def align(self, images: Mapping[str, Volume] | Sequence[Volume], label: str = "case",
              roi: Volume | None = None, own_roi: Sequence[str] = ()) -> dict[str, Volume]:
        """The settings' phases from ``images`` (a phase->Volume mapping or named Volumes), on the first phase's grid.

        With ``settings.register`` every phase not in ``own_roi`` is rigidly registered onto the
        first one (around ``roi`` when given); the transform is recorded in the volume's metadata.
        """
        if not isinstance(images, Mapping):
            images = {v.name: v for v in images}
        missing = [p for p in self.settings.phases if p not in images]
        if missing:
            raise InputError(f"{label}: the deep features need phase(s) {self.settings.phases}; missing {missing} "
                             f"(given: {sorted(images)})")
        reference = images[self.settings.phases[0]]
        out = {}
        for p in self.settings.phases:
            if p == self.settings.phases[0]:
                out[p] = reference
            elif self.settings.register and p not in own_roi:
                out[p] = register_rigid(reference, images[p], roi=roi, seed=self.settings.seed)[0]
            else:
                out[p] = images[p] if images[p].same_geometry(reference) else resample_to_reference(images[p], reference)
        return out

    def _roi(self, reference: Volume, segmentation: Segmentation, segment: str | None) -> Volume:
        """The tumour ROI of ``segment`` on the reference grid: the whole segment, or its largest island
        under ``settings.islands`` (the index tumour, as prediction and training define tumours)."""
        if self.settings.islands is None:
            return segment_mask_on(segmentation, _pick_segment(segmentation, segment), reference)
        return index_tumour(segmentation, reference, _pick_segment(segmentation, segment),
                            self.settings.islands).full_mask(reference)

    def _masks(self, reference: Volume, segmentation: Segmentation, segment: str | Mapping[str, str] | None,
               label: str) -> dict[str, Volume]:
        """One ROI per phase on the reference grid: ``segment`` for every phase, or a phase -> segment mapping
        (phases it leaves out use the segmentation's first segment)."""
        by_phase = dict(segment) if isinstance(segment, Mapping) else {}
        shared = None if isinstance(segment, Mapping) else segment
        masks, cache = {}, {}
        for phase in self.settings.phases:
            key = _pick_segment(segmentation, by_phase.get(phase, shared))
            if key not in cache:
                cache[key] = self._roi(reference, segmentation, key)
            masks[phase] = cache[key]
        return masks

    def _perturb(self, images: dict[str, Volume], masks: dict[str, Volume], perturbation: str,
                 case_id: str, label: str) -> tuple[dict[str, Volume], dict[str, Volume], dict[str, Any]]:
        if perturbation in ("erode", "dilate"):
            done: dict[int, Volume] = {}
            for phase, mask in masks.items():
                if id(mask) not in done:
                    done[id(mask)] = perturb_mask(mask, perturbation, self.perturb_voxels, self.settings.axis, label=label)
            return images, {p: done[id(m)] for p, m in masks.items()}, {}
        if perturbation == "randomise":
            moved, moved_masks, info = randomise_case(images, masks, self.randomisation, case_id, self.settings.axis)
            return moved, moved_masks, {"perturbation": info}
        return images, masks, {}

    def _case_volumes(self, images: Mapping[str, Volume] | Sequence[Volume], segmentation: Segmentation,
                      segment: str | Mapping[str, str] | None, perturbation: str, case_id: str,
                      label: str) -> CasePatches:
        """Phases aligned (registered where asked), ROIs per phase, perturbed, cut into patches."""
        if not isinstance(images, Mapping):
            images = {v.name: v for v in images}
        own = list(segment) if isinstance(segment, Mapping) else []
        reference = images.get(self.settings.phases[0])
        roi = None
        if reference is not None and self.settings.register:
            first = segment.get(self.settings.phases[0]) if isinstance(segment, Mapping) else segment
            roi = self._roi(reference, segmentation, first)
        aligned = self.align(images, label=label, roi=roi, own_roi=own)
        masks = self._masks(aligned[self.settings.phases[0]], segmentation, segment, label)
        aligned, masks, extra = self._perturb(aligned, masks, perturbation, case_id, label)
        patches = self.case_patches(aligned, masks if own else masks[self.settings.phases[0]], label=label)
        registered = {p: v.metadata["registration"] for p, v in aligned.items() if "registration" in v.metadata}
        patches.info.update(extra)
        if registered:
            patches.info["registration"] = registered
        return patches

    def extract_volumes(self, images: Mapping[str, Volume] | Sequence[Volume], segmentation: Segmentation | str | Path,
                        segment: str | Mapping[str, str] | None = None, perturbation: str = "none",
                        case_id: str = "case") -> pd.Series:
        """Deep features of one in-memory case (no cache); ``segment``: one for every phase, or per phase."""
        self._check_perturbation(perturbation, reader2_allowed=False)
        patches = self._case_volumes(images, _as_segmentation(segmentation), segment, perturbation, case_id, case_id)
        self.case_info[case_id] = patches.info
        values = self.forward(patches.images).reshape(-1)
        return pd.Series(values, index=self.feature_names, name=case_id)

    # cohort with cache ---------------------------------------------------------------
    def _check_perturbation(self, perturbation: str, reader2_allowed: bool = True) -> None:
        allowed = PERTURBATIONS if reader2_allowed else tuple(p for p in PERTURBATIONS if p != "reader2")
        if perturbation not in allowed:
            raise InputError(f"ROI perturbation must be one of {', '.join(allowed)}, got {perturbation!r}")

    def _case_files(self, case: ManifestRow, perturbation: str
                    ) -> tuple[dict[str, Path], Path, str | Mapping[str, str] | None]:
        images = case.image_by_phase
        missing = [p for p in self.settings.phases if p not in images]
        if missing:
            raise InputError(f"case {case.case_id!r}: no image for phase(s) {missing}")
        if perturbation == "reader2":
            if not case.segmentation_2:
                raise InputError(f"case {case.case_id!r}: the 'reader2' extraction needs a second reader's "
                                 "segmentation (manifest column segmentation_2)")
            return images, case.segmentation_2, case.segment_2 or case.segment
        phase_segments = {p: s for p, s in (getattr(case, "phase_segments", None) or {}).items()
                          if p in self.settings.phases}
        if phase_segments:
            return images, case.segmentation, {p: phase_segments.get(p, case.segment) for p in self.settings.phases}
        return images, case.segmentation, case.segment

    def cache_key(self, case: ManifestRow, perturbation: str = "none") -> str:
        images, segmentation, segment = self._case_files(case, perturbation)
        settings = {
            "format": FEATURE_FORMAT,
            "phases": self.settings.phases,
            "segment": (dict(segment) if isinstance(segment, Mapping) else segment) or "",
            "perturbation": perturbation,
            "perturb_voxels": self.perturb_voxels if perturbation in ("erode", "dilate") else 0,
            "randomisation": self.randomisation.to_dict() if perturbation == "randomise" else None,
            "register": self.settings.register,
            "patch_spec": self.settings.patch_spec.to_dict(),
            "weights_sha256": self.weights.sha256,
        }
        if self.settings.islands is not None:
            settings["islands"] = self.settings.islands.to_dict()
        if perturbation == "randomise":
            settings["case_id"] = case.case_id  # the random draw is seeded by the case id
        return content_fingerprint([*(images[p] for p in self.settings.phases), segmentation], settings)

    def _cache_path(self, case_id: str, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"{safe_file_name(case_id)}-{key[:24]}.npz"

    def _read_cache(self, case_id: str, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        if self.cache_dir is None:
            return None
        path = self._cache_path(case_id, key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != key:
                    return None
                values = data["features"].astype(np.float32)
                info = json.loads(str(data["info"]))
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("feature cache %s unreadable (%s); recomputing", path, exc)
            return None
        if values.shape != (len(self.settings.phases), N_FEATURES):
            return None
        return values, info

    def _write_cache(self, case_id: str, key: str, values: np.ndarray, info: dict[str, Any]) -> None:
        if self.cache_dir is None:
            return
        path = self._cache_path(case_id, key)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, features=values.astype(np.float32), key=np.array(key),
                                    info=np.array(json.dumps(info)), phases=np.array(self.settings.phases))

    def _load_case(self, case: ManifestRow, perturbation: str) -> CasePatches:
        images, segmentation_path, segment = self._case_files(case, perturbation)
        volumes = {p: read_volume(images[p]) for p in self.settings.phases}
        return self._case_volumes(volumes, read_segmentation(segmentation_path), segment,
                                  "none" if perturbation == "reader2" else perturbation, case.case_id,
                                  f"case {case.case_id!r}")

    def case_features(self, case: ManifestRow, perturbation: str, key: str) -> tuple[np.ndarray, dict[str, Any]]:
        """One case's ``(n_phases, 1024)`` features and patch information, computed and cached (one task)."""
        patches = self._load_case(case, perturbation)
        values = self.forward(patches.images).reshape(len(self.settings.phases), -1)
        self._write_cache(case.case_id, key, values, patches.info)
        return values, patches.info

    def extract(self, cases: Sequence[ManifestRow], perturbation: str = "none",
                progress: Callable[[int, int], None] | None = None, cluster: ClusterOptions | None = None,
                progress_bar: bool = False) -> pd.DataFrame:
        """Deep features of every case: cached ones read from disk, the others one task per case.

        Args:
            cases: manifest rows (:func:`read_feature_manifest`).
            perturbation: ``none`` or one of the ROI perturbations (:data:`PERTURBATIONS`).
            progress: ``progress(done, total)`` after each case.
            cluster: where the cases run (default: in this process). On a cluster every worker
                process loads the network once; with a cache folder each task writes its case's
                ``.npz`` there (a folder every worker sees), so an interrupted run resumes.
            progress_bar: show done / failed / remaining and the rate on stderr.

        Raises:
            InputError: a case could not be scored (every failed case listed; the others are cached).
        """
        self._check_perturbation(perturbation)
        n_phases = len(self.settings.phases)
        values = np.zeros((len(cases), n_phases, N_FEATURES), np.float32)
        started = time.perf_counter()
        index_of = {case.case_id: index for index, case in enumerate(cases)}
        tasks, done = [], 0
        for index, case in enumerate(cases):
            key = self.cache_key(case, perturbation)
            cached = self._read_cache(case.case_id, key)
            if cached is not None:
                values[index], info = cached
                self.case_info[case.case_id] = {**info, "cached": True}
                self.cache_hits += 1
                done += 1
                if progress is not None:
                    progress(done, len(cases))
            else:
                tasks.append(CaseTask(case.case_id, (case, perturbation, key)))
        setup = WorkerSetup(_worker_extractor, (self.settings, str(self.device), self.batch_size, self.perturb_voxels,
                                                self.randomisation, None if self.cache_dir is None else str(self.cache_dir)),
                            local=self)
        failed: dict[str, str] = {}
        for outcome in run_cases(_case_features, tasks, setup, cluster or IN_PROCESS, label=f"features ({perturbation})",
                                 progress_bar=progress_bar):
            done += 1
            if outcome.ok:
                row, info = outcome.value
                values[index_of[outcome.case_id]] = row
                self.case_info[outcome.case_id] = {**info, "cached": False}
                self.cache_misses += 1
            else:
                failed[outcome.case_id] = outcome.error
            if progress is not None:
                progress(done, len(cases))
        if failed:
            listed = "; ".join(f"case {c!r}: {e}" for c, e in list(failed.items())[:20])
            raise InputError(f"deep features ({perturbation}): {len(failed)} of {len(cases)} case(s) failed: {listed}"
                             + ("" if self.cache_dir is None else
                                f" (the other cases are cached in {self.cache_dir}; a rerun computes only the failed ones)"))
        logger.info("deep features (%s): %d cases, %d from cache, in %.1f s", perturbation, len(cases),
                    len(cases) - len(tasks), time.perf_counter() - started)
        return pd.DataFrame(values.reshape(len(cases), -1), columns=self.feature_names,
                            index=pd.Index([c.case_id for c in cases], name="case_id"))


def _worker_extractor(threads: int | None, settings: FeatureSettings, device: str, batch_size: int,
                      perturb_voxels: int, randomisation: RandomPerturbation, cache_dir: str | None
                      ) -> DeepFeatureExtractor:
    """The extractor of one worker process (built once; the network loads on its first case)."""
    from TACEResponseLib.networks.device import set_threads

    set_threads(threads)
    return DeepFeatureExtractor(settings, cache_dir=cache_dir, device=device, batch_size=batch_size,
                                perturb_voxels=perturb_voxels, randomisation=randomisation)


def _case_features(extractor: DeepFeatureExtractor, case: ManifestRow, perturbation: str,
                   key: str) -> tuple[np.ndarray, dict[str, Any]]:
    return extractor.case_features(case, perturbation, key)


# --- feature tables on disk ---------------------------------------------------------------
def feature_metadata_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def write_feature_table(table: pd.DataFrame, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """``table`` as CSV (index ``case_id``) and its metadata as JSON beside it (same stem)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        spreadsheet_safe_frame(table).to_csv(tmp, index_label="case_id")
    write_json_atomic(feature_metadata_path(path), dict(metadata))
    return path


def read_feature_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """A feature CSV (index ``case_id``) and its metadata JSON when present."""
    from TACEResponseLib.core.tables import read_table

    table = read_table(path, what="feature table", required=["case_id"], text_columns=["case_id"], numeric="*",
                       float_precision="round_trip").set_index("case_id")  # the values written, to the last bit
    table = from_spreadsheet_safe_frame(table)  # ids and feature names as they were before writing
    path = Path(path)
    meta_path = feature_metadata_path(path)
    metadata = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None
    return table, metadata
