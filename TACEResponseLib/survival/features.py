"""Image side of Zhang 2020: DenseNet-121 deep features, ICC inputs, the saved survival model.

**Deep features** (:class:`DeepFeatureExtractor`). For each case and each phase (arterial +
portal by default, any list), the ``centroid`` patch of :mod:`TACEResponseLib.patches` —
``size`` x ``size`` pixels (224 in the paper) centred on the ROI centroid of the largest-ROI
axial slice, field of view ``fov_mm`` (default: ``size`` native pixels), z-scored with the
ROI's voxels — is repeated on 3 channels and passed through DenseNet-121
(:func:`TACEResponseLib.models.densenet_features`: ReLU -> global average pool), giving 1024
features per phase named ``<phase>_f0000`` ... ``<phase>_f1023``. Phases are resampled onto the
first phase's grid first, the segment onto that grid (nearest).

**Weights.** ImageNet weights come from a local torchvision-format file
(``pretrained=PATH``, loaded by :func:`TACEResponseLib.models.load_pretrained`); none ships
with this repository and none is downloaded. Without one the network is initialised with
``torch.manual_seed(seed)`` (MONAI's default initialisation), which is deterministic for a
given torch version: those are *random-init DenseNet features* and every table, signature and
figure made from them is labelled "random-init DenseNet features, SYNTHETIC demo". The SHA-256
of the network's state dict is recorded, and a saved model refuses to score a case with
different weights.

**Cache.** One ``.npz`` per case and extraction in ``cache_dir``, named by a SHA-256 key over
the input files' resolved paths, sizes and modification times, the segment, the ROI
perturbation, the patch spec, the phases and the weights hash — so a changed input is
recomputed, never served stale. Writes are atomic.

**ICC inputs.** ``extract(cases, perturbation="erode" | "dilate")`` repeats the extraction from
the ROI eroded / dilated by ``perturb_voxels`` voxels *in-plane* (the slice plane of the
patch); ``"reader2"`` uses a second reader's segmentation (manifest column
``segmentation_2``, optional ``segment_2``). The signature stage then computes the per-feature
ICC on the training cases with :func:`.icc.feature_reproducibility` (ICC(2,1) by default; the
kind is named in the output).

**Survival model** (:class:`SurvivalModel`, ``survival_model.json``): points to the nomogram
and signature files and stores the feature settings and weights hash, so one case (its images,
segment and clinical values) gives the patient's nomogram read-out with the same extractor as
at fitting time. :func:`run_image_survival_pipeline` runs the whole Zhang pipeline from a
manifest: features -> ICC -> signature (:func:`fit_image_signature`) -> Cox screen + stepwise
AIC -> nomograms -> report (:func:`fit_image_nomogram`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..geometry import Volume, resample_to_reference
from ..io import Segmentation, atomic_path, read_segmentation, read_volume, segment_mask_on, write_json_atomic
from ..patches import PatchSpec, extract_patches

logger = logging.getLogger(__name__)

FEATURE_FORMAT = "tace-response-deep-features/1"
MODEL_KIND = "TACEResponse survival model"
N_FEATURES = 1024
MIN_SIZE = 32  # DenseNet-121 downsamples by 32
PERTURBATIONS = ("none", "erode", "dilate", "reader2")
RANDOM_INIT_LABEL = "random-init DenseNet features, SYNTHETIC demo"
RESEARCH_NOTE = "Research use only. Not for clinical decisions."

#: Values a clinical variable can take at all (a hard error outside); training range only warns.
DEFAULT_VALID_RANGES: dict[str, tuple[float, float]] = {
    "ALT": (0.0, 10000.0),
    "AST": (0.0, 10000.0),
    "AFP": (0.0, 1e7),
    "tumour_size": (0.0, 40.0),
    "albumin": (0.0, 100.0),
    "bilirubin": (0.0, 1000.0),
    "age": (0.0, 120.0),
}


def feature_names(phases: Sequence[str]) -> list[str]:
    """``<phase>_f0000`` ... ``<phase>_f1023`` for each phase, in order."""
    return [f"{phase}_f{j:04d}" for phase in phases for j in range(N_FEATURES)]


# --- settings -----------------------------------------------------------------------------
@dataclass
class FeatureSettings:
    """How deep features are extracted; stored with a signature so cases are scored the same way."""

    phases: list[str] = field(default_factory=lambda: ["arterial", "portal"])
    size: int = 224
    fov_mm: float | None = None
    axis: str = "axial"
    pretrained: str | None = None
    seed: int = 0
    architecture: str = "densenet121"

    def __post_init__(self) -> None:
        self.phases = [str(p) for p in self.phases]
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
    def feature_names(self) -> list[str]:
        return feature_names(self.phases)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSettings":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"feature settings: unknown field(s) {unknown}")
        return cls(**data)


@dataclass
class WeightsInfo:
    """Which DenseNet weights produced the features."""

    kind: str  # "imagenet-file" or "random-init"
    sha256: str  # of the network's state dict as used
    label: str
    source: str | None = None
    file_sha256: str | None = None
    seed: int | None = None
    torch_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _state_dict_sha256(network: Any) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(network.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
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

    from ..models import build_network, load_pretrained

    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
        torch.manual_seed(int(settings.seed))
        network = build_network("densenet121", num_classes=1000, in_channels=3)
    if settings.pretrained:
        path = Path(settings.pretrained).expanduser()
        report = load_pretrained(network, path, "densenet121")
        info = WeightsInfo("imagenet-file", "", f"ImageNet DenseNet-121 features ({path.name})", str(path.resolve()),
                           _file_sha256(path), None)
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
class FeatureCase:
    """One case on disk: a file per phase, the tumour segmentation (and optionally a second reader's)."""

    case_id: str
    images: dict[str, str]
    segmentation: str
    segment: str | None = None
    segmentation_2: str | None = None
    segment_2: str | None = None


def read_feature_manifest(path: str | Path, phases: Sequence[str]) -> list[FeatureCase]:
    """Cases of a manifest CSV: ``case_id``, one path column per phase, ``segmentation``, optional
    ``segment``, ``segmentation_2`` and ``segment_2``. Relative paths are relative to the manifest."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    missing = [c for c in ["case_id", *phases, "segmentation"] if c not in columns]
    if missing:
        raise InputError(f"{path}: manifest lacks column(s) {missing} (phases asked: {list(phases)}); it has {columns}")
    if not rows:
        raise InputError(f"{path}: manifest has no cases")

    def resolve(value: str | None) -> str | None:
        value = (value or "").strip()
        if not value:
            return None
        return value if os.path.isabs(value) else str(path.parent / value)

    cases, seen = [], set()
    for number, row in enumerate(rows, start=2):
        case_id = (row.get("case_id") or "").strip()
        if not case_id:
            raise InputError(f"{path}: row {number} has no case_id")
        if case_id in seen:
            raise InputError(f"{path}: case_id {case_id!r} appears more than once")
        seen.add(case_id)
        empty = [c for c in [*phases, "segmentation"] if not (row.get(c) or "").strip()]
        if empty:
            raise InputError(f"{path}: case {case_id!r} (row {number}) has no path in column(s) {empty}")
        cases.append(FeatureCase(
            case_id=case_id,
            images={p: resolve(row[p]) for p in phases},  # type: ignore[misc]
            segmentation=resolve(row["segmentation"]),  # type: ignore[arg-type]
            segment=(row.get("segment") or "").strip() or None,
            segmentation_2=resolve(row.get("segmentation_2")),
            segment_2=(row.get("segment_2") or "").strip() or None,
        ))
    return cases


def perturb_mask(mask: Volume, mode: str, voxels: int = 1, axis: str | int = "axial", label: str = "ROI") -> Volume:
    """The ROI eroded or dilated by ``voxels`` voxels in the slice plane (4-connected steps)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    if mode not in ("erode", "dilate"):
        raise InputError(f"ROI perturbation must be 'erode' or 'dilate', got {mode!r}")
    if isinstance(voxels, bool) or int(voxels) != voxels or voxels < 1:
        raise InputError(f"ROI perturbation: voxels must be a positive integer, got {voxels!r}")
    slice_axis = mask.array_axis_for(axis)
    structure = np.zeros((3, 3, 3), bool)
    plane: list[Any] = [slice(None)] * 3
    plane[slice_axis] = 1
    cross = np.zeros((3, 3), bool)
    cross[1, :] = cross[:, 1] = True
    structure[tuple(plane)] = cross
    array = mask.array > 0
    operation = binary_erosion if mode == "erode" else binary_dilation
    out = operation(array, structure=structure, iterations=int(voxels))
    if not out.any():
        raise InputError(f"{label}: eroding the ROI by {voxels} voxel(s) in-plane leaves nothing; "
                         "the tumour is too small for this perturbation (use dilate)")
    return mask.with_array(out.astype(np.uint8), perturbation=f"{mode} {int(voxels)} voxel(s) in-plane")


def _path_fingerprint(path: str | Path) -> list[Any]:
    """Resolved path + size + mtime (for a folder such as a DICOM series: of every file inside)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file or folder does not exist")
    resolved = str(path.resolve())
    if path.is_dir():
        listing = []
        for root, _dirs, files in sorted(os.walk(path)):
            for name in sorted(files):
                stat = os.stat(os.path.join(root, name))
                listing.append([os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns])
        return [resolved, listing]
    stat = path.stat()
    return [resolved, stat.st_size, stat.st_mtime_ns]


def _as_segmentation(segmentation: Segmentation | str | Path) -> Segmentation:
    return segmentation if isinstance(segmentation, Segmentation) else read_segmentation(segmentation)


def _pick_segment(segmentation: Segmentation, segment: str | None) -> str:
    if segment:
        return segmentation.find(segment).id
    if not segmentation.segments:
        raise InputError(f"segmentation {segmentation.name!r} has no segments; draw the tumour first")
    return segmentation.segments[0].id


# --- extraction ---------------------------------------------------------------------------
@dataclass
class CasePatches:
    """The patches of one case (one per phase) and where they came from."""

    images: np.ndarray  # (n_phases, 3, size, size)
    info: dict[str, Any]


class DeepFeatureExtractor:
    """DenseNet-121 loaded once, batched over cases, with a per-case disk cache.

    ``extract(cases)`` returns a DataFrame (index ``case_id``, columns ``<phase>_fNNNN``);
    ``extract_volumes`` scores one in-memory case (the per-patient path).
    """

    def __init__(self, settings: FeatureSettings | None = None, *, cache_dir: str | Path | None = None,
                 device: str = "auto", batch_size: int = 16, perturb_voxels: int = 1) -> None:
        from ..device import select_device

        self.settings = settings or FeatureSettings()
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.perturb_voxels = int(perturb_voxels)
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
            "weights": self.weights.to_dict(),
            "label": self.weights.label,
            "n_features": len(self.feature_names),
            "note": RESEARCH_NOTE,
        }

    def forward(self, patches: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S)`` patches -> ``(N, 1024)`` pooled DenseNet features (float32)."""
        import torch

        from ..device import run_with_device_fallback
        from ..models import densenet_features

        patches = np.ascontiguousarray(patches, dtype=np.float32)
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
    def case_patches(self, images: Mapping[str, Volume], mask: Volume, label: str = "ROI") -> CasePatches:
        """One 3-channel centroid patch per phase (phases on the mask's grid, first phase = reference)."""
        spec = self.settings.patch_spec
        stack, info = [], {}
        for phase in self.settings.phases:
            patch = extract_patches([images[phase]], mask, spec, label=f"{label} {phase}")
            stack.append(patch.images[0])
            if not info:
                prov = patch.provenance[0]
                info = {"slice_axis": prov.slice_axis, "slice_index": prov.slice_index,
                        "center_ras": [float(v) for v in prov.center_ras], "side_mm": list(prov.side_mm),
                        "roi_voxels": int(np.count_nonzero(mask.array))}
        return CasePatches(np.stack(stack).astype(np.float32), info)

    def align(self, images: Mapping[str, Volume] | Sequence[Volume], label: str = "case") -> dict[str, Volume]:
        """The settings' phases from ``images`` (a phase->Volume mapping or named Volumes), on the first phase's grid."""
        if not isinstance(images, Mapping):
            images = {v.name: v for v in images}
        missing = [p for p in self.settings.phases if p not in images]
        if missing:
            raise InputError(f"{label}: the deep features need phase(s) {self.settings.phases}; missing {missing} "
                             f"(given: {sorted(images)})")
        reference = images[self.settings.phases[0]]
        return {p: images[p] if images[p].same_geometry(reference) else resample_to_reference(images[p], reference)
                for p in self.settings.phases}

    def _mask(self, reference: Volume, segmentation: Segmentation, segment: str | None, perturbation: str,
              label: str) -> Volume:
        mask = segment_mask_on(segmentation, _pick_segment(segmentation, segment), reference)
        if perturbation in ("erode", "dilate"):
            mask = perturb_mask(mask, perturbation, self.perturb_voxels, self.settings.axis, label=label)
        return mask

    def extract_volumes(self, images: Mapping[str, Volume] | Sequence[Volume], segmentation: Segmentation | str | Path,
                        segment: str | None = None, perturbation: str = "none", case_id: str = "case") -> pd.Series:
        """Deep features of one in-memory case (no cache)."""
        self._check_perturbation(perturbation, reader2_allowed=False)
        aligned = self.align(images, label=case_id)
        mask = self._mask(aligned[self.settings.phases[0]], _as_segmentation(segmentation), segment, perturbation,
                          label=case_id)
        patches = self.case_patches(aligned, mask, label=case_id)
        self.case_info[case_id] = patches.info
        values = self.forward(patches.images).reshape(-1)
        return pd.Series(values, index=self.feature_names, name=case_id)

    # cohort with cache ---------------------------------------------------------------
    def _check_perturbation(self, perturbation: str, reader2_allowed: bool = True) -> None:
        allowed = PERTURBATIONS if reader2_allowed else PERTURBATIONS[:3]
        if perturbation not in allowed:
            raise InputError(f"ROI perturbation must be one of {', '.join(allowed)}, got {perturbation!r}")

    def _case_files(self, case: FeatureCase, perturbation: str) -> tuple[dict[str, str], str, str | None]:
        missing = [p for p in self.settings.phases if p not in case.images]
        if missing:
            raise InputError(f"case {case.case_id!r}: no image for phase(s) {missing}")
        if perturbation == "reader2":
            if not case.segmentation_2:
                raise InputError(f"case {case.case_id!r}: the 'reader2' extraction needs a second reader's "
                                 "segmentation (manifest column segmentation_2)")
            return case.images, case.segmentation_2, case.segment_2 or case.segment
        return case.images, case.segmentation, case.segment

    def cache_key(self, case: FeatureCase, perturbation: str = "none") -> str:
        images, segmentation, segment = self._case_files(case, perturbation)
        material = {
            "format": FEATURE_FORMAT,
            "phases": self.settings.phases,
            "images": [_path_fingerprint(images[p]) for p in self.settings.phases],
            "segmentation": _path_fingerprint(segmentation),
            "segment": segment or "",
            "perturbation": perturbation,
            "perturb_voxels": self.perturb_voxels if perturbation in ("erode", "dilate") else 0,
            "patch_spec": self.settings.patch_spec.to_dict(),
            "weights_sha256": self.weights.sha256,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()

    def _cache_path(self, case_id: str, key: str) -> Path:
        assert self.cache_dir is not None
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case_id) or "case"
        return self.cache_dir / f"{safe}-{key[:24]}.npz"

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

    def _load_case(self, case: FeatureCase, perturbation: str) -> CasePatches:
        images, segmentation_path, segment = self._case_files(case, perturbation)
        volumes = {p: read_volume(images[p]) for p in self.settings.phases}
        aligned = self.align(volumes, label=case.case_id)
        mask = self._mask(aligned[self.settings.phases[0]], read_segmentation(segmentation_path), segment,
                          perturbation, label=f"case {case.case_id!r}")
        return self.case_patches(aligned, mask, label=f"case {case.case_id!r}")

    def extract(self, cases: Sequence[FeatureCase], perturbation: str = "none",
                progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
        """Deep features of every case (cached ones read from disk), batched through the network."""
        self._check_perturbation(perturbation)
        n_phases = len(self.settings.phases)
        values = np.zeros((len(cases), n_phases, N_FEATURES), np.float32)
        pending: list[tuple[int, str, CasePatches]] = []
        started = time.perf_counter()
        done = 0

        def flush() -> None:
            nonlocal done
            if not pending:
                return
            out = self.forward(np.concatenate([p.images for _, _, p in pending])).reshape(len(pending), n_phases, -1)
            for (index, key, patches), row in zip(pending, out):
                values[index] = row
                self._write_cache(cases[index].case_id, key, row, patches.info)
            done += len(pending)
            pending.clear()

        for index, case in enumerate(cases):
            key = self.cache_key(case, perturbation)
            cached = self._read_cache(case.case_id, key)
            if cached is not None:
                values[index], info = cached
                self.case_info[case.case_id] = {**info, "cached": True}
                self.cache_hits += 1
                done += 1
            else:
                patches = self._load_case(case, perturbation)
                self.case_info[case.case_id] = {**patches.info, "cached": False}
                self.cache_misses += 1
                pending.append((index, key, patches))
                if len(pending) * n_phases >= self.batch_size:
                    flush()
            if progress is not None:
                progress(index + 1, len(cases))
            if (index + 1) % 25 == 0:
                logger.info("deep features (%s): %d / %d cases (%.0f s)", perturbation, index + 1, len(cases),
                            time.perf_counter() - started)
        flush()
        logger.info("deep features (%s): %d cases, %d from cache, in %.1f s", perturbation, len(cases),
                    sum(1 for c in cases if self.case_info.get(c.case_id, {}).get("cached")),
                    time.perf_counter() - started)
        table = pd.DataFrame(values.reshape(len(cases), -1), columns=self.feature_names,
                             index=pd.Index([c.case_id for c in cases], name="case_id"))
        return table


# --- feature tables on disk ---------------------------------------------------------------
def feature_metadata_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def write_feature_table(table: pd.DataFrame, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """``table`` as CSV (index ``case_id``) and its metadata as JSON beside it (same stem)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index_label="case_id")
    write_json_atomic(feature_metadata_path(path), dict(metadata))
    return path


def read_feature_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """A feature CSV (index ``case_id``) and its metadata JSON when present."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: feature table does not exist")
    table = pd.read_csv(path, float_precision="round_trip")  # the values written, to the last bit
    if "case_id" not in table.columns:
        raise InputError(f"{path}: feature table has no case_id column")
    table["case_id"] = table["case_id"].astype(str)
    table = table.set_index("case_id")
    meta_path = feature_metadata_path(path)
    metadata = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None
    return table, metadata


# --- clinical values ------------------------------------------------------------------------
def encode_levels(table: pd.DataFrame, levels: Mapping[str, Mapping[str, float]], columns: Iterable[str],
                  *, name: str = "clinical table") -> pd.DataFrame:
    """Category labels (e.g. BCLC "A"/"B"/"C") -> codes for ``columns`` that have ``levels``; numbers pass through."""
    out = table.copy()
    problems = []
    for column in columns:
        if column not in levels or column not in out.columns:
            continue
        mapping = {str(k).strip().upper(): float(v) for k, v in levels[column].items()}
        codes = set(mapping.values())

        def code(value: Any) -> float:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return math.nan
            text = str(value).strip()
            if text.upper() in mapping:
                return mapping[text.upper()]
            try:
                number = float(text)
            except ValueError:
                raise KeyError(text) from None
            if number not in codes:
                raise KeyError(text)
            return number

        values, bad = [], []
        for case, value in out[column].items():
            try:
                values.append(code(value))
            except KeyError:
                values.append(math.nan)
                bad.append(f"case {case!r} = {value!r}")
        if bad:
            problems.append(f"{column!r} has unknown categories in {len(bad)} row(s): {', '.join(bad[:5])}; "
                            f"use {list(levels[column])} or their codes {sorted(codes)}")
        out[column] = values
    if problems:
        raise InputError(f"{name}: " + "; ".join(problems))
    return out


# --- the saved model ------------------------------------------------------------------------
@dataclass
class VariableSpec:
    """How a clinical input of the nomogram is checked: categories, or a valid numeric range."""

    name: str
    label: str = ""
    levels: dict[str, float] | None = None
    valid_range: tuple[float, float] | None = None
    training_range: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("valid_range", "training_range"):
            if data[key] is not None:
                data[key] = [None if not math.isfinite(v) else v for v in data[key]]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VariableSpec":
        data = dict(data)
        if data.get("valid_range") is not None:
            low, high = data["valid_range"]
            data["valid_range"] = (-math.inf if low is None else float(low), math.inf if high is None else float(high))
        if data.get("training_range") is not None:
            data["training_range"] = tuple(float(v) for v in data["training_range"])
        return cls(**data)

    def parse(self, value: Any) -> float:
        """The numeric value the nomogram uses, or an InputError naming this variable."""
        title = f"clinical variable {self.name!r}" + (f" ({self.label})" if self.label and self.label != self.name else "")
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError(f"{title} is empty; give a value")
        if self.levels:
            lookup = {str(k).strip().upper(): float(v) for k, v in self.levels.items()}
            text = str(value).strip()
            if text.upper() in lookup:
                return lookup[text.upper()]
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if number in lookup.values():
                return number
            raise InputError(f"{title} = {value!r} is not a valid category; use one of {list(self.levels)} "
                             f"(or their codes {sorted(set(lookup.values()))})")
        try:
            number = float(str(value).strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise InputError(f"{title} = {value!r} is not a number") from None
        if not math.isfinite(number):
            raise InputError(f"{title} = {value!r} is not a finite number")
        if self.valid_range is not None:
            low, high = self.valid_range
            if not low <= number <= high:
                raise InputError(f"{title} = {number:g} is out of range; valid values are {low:g} to {high:g}")
        return number


def default_variable_spec(name: str, nomogram_variable: Any) -> VariableSpec:
    levels = dict(nomogram_variable.levels) if nomogram_variable.levels else None
    valid = None if levels else DEFAULT_VALID_RANGES.get(name)
    return VariableSpec(name=name, label=nomogram_variable.title, levels=levels, valid_range=valid,
                        training_range=(float(nomogram_variable.minimum), float(nomogram_variable.maximum)))


class SurvivalModel:
    """Nomogram + (optional) deep-learning signature + the feature settings it was fitted with.

    Saved as ``survival_model.json`` pointing to the nomogram and signature JSON files (paths
    relative to it). :meth:`patient` gives one case's nomogram read-out.
    """

    def __init__(self, nomogram: Any, signature: Any = None, features: FeatureSettings | None = None,
                 weights: Mapping[str, Any] | None = None, *, signature_name: str = "signature",
                 variables: Mapping[str, VariableSpec] | None = None, note: str = "",
                 files: Mapping[str, str] | None = None, path: Path | None = None) -> None:
        self.nomogram = nomogram
        self.signature = signature
        self.features = features
        self.weights = dict(weights) if weights else None
        self.signature_name = signature_name
        self.note = note
        self.files = dict(files or {})
        self.path = path
        names = [v.name for v in nomogram.variables]
        self.variables = {n: (variables or {}).get(n) or default_variable_spec(n, v)
                          for n, v in zip(names, nomogram.variables) if n != signature_name}
        self._extractor: DeepFeatureExtractor | None = None

    @property
    def uses_signature(self) -> bool:
        return any(v.name == self.signature_name for v in self.nomogram.variables)

    @property
    def clinical_variables(self) -> list[str]:
        return [v.name for v in self.nomogram.variables if v.name != self.signature_name]

    @property
    def image_phases(self) -> list[str]:
        """Phases the signature is computed from (first = reference grid); empty when no image is needed."""
        return list(self.features.phases) if self.uses_signature and self.features is not None else []

    @property
    def name(self) -> str:
        """For messages: the model's folder name, else the nomogram's name."""
        return self.path.parent.name if self.path is not None and self.path.name == "survival_model.json" \
            else self.nomogram.name

    # persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``survival_model.json``; nomogram/signature are written beside it if not there yet."""
        path = Path(path)
        folder = path.parent
        files = dict(self.files)
        files.setdefault("nomogram", f"nomogram_{self.nomogram.name}.json")
        if not (folder / files["nomogram"]).is_file():
            self.nomogram.save(folder / files["nomogram"])
        if self.signature is not None:
            files.setdefault("signature", "signature.json")
            if not (folder / files["signature"]).is_file():
                self.signature.save(folder / files["signature"])
        data = {
            "kind": MODEL_KIND, "version": 1, "note": self.note or RESEARCH_NOTE,
            "files": files, "signature_name": self.signature_name,
            "features": self.features.to_dict() if self.features else None,
            "patch_spec": self.features.patch_spec.to_dict() if self.features else None,
            "weights": self.weights,
            "variables": {k: v.to_dict() for k, v in self.variables.items()},
            "nomogram_variables": [v.name for v in self.nomogram.variables],
            "time_unit": self.nomogram.time_unit, "survival_times": list(self.nomogram.survival_times),
        }
        self.files = files
        self.path = path
        return write_json_atomic(path, data)

    @classmethod
    def load(cls, path: str | Path) -> "SurvivalModel":
        from .nomogram import Nomogram
        from .selection import Signature

        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"survival model {path}: cannot be read as JSON ({exc})") from exc
        if data.get("kind") == "TACEResponse Cox nomogram":  # a bare nomogram file
            return cls(Nomogram.from_dict(data), path=path)
        if data.get("kind") != MODEL_KIND:
            raise InputError(f"{path}: not a survival model or nomogram file (kind {data.get('kind')!r})")
        files = data.get("files") or {}
        if "nomogram" not in files:
            raise InputError(f"survival model {path}: names no nomogram file")
        nomogram = Nomogram.load(path.parent / files["nomogram"])
        signature = Signature.load(path.parent / files["signature"]) if files.get("signature") else None
        features = FeatureSettings.from_dict(data["features"]) if data.get("features") else None
        variables = {k: VariableSpec.from_dict(v) for k, v in (data.get("variables") or {}).items()}
        return cls(nomogram, signature, features, data.get("weights"), signature_name=data.get("signature_name", "signature"),
                   variables=variables, note=data.get("note", ""), files=files, path=path)

    # per patient -------------------------------------------------------------------------
    def extractor(self, device: str = "auto") -> DeepFeatureExtractor:
        """The fitting-time extractor (same settings; weights checked against the saved hash)."""
        if self.features is None:
            raise InputError("survival model: no deep-feature settings saved; it cannot compute the signature "
                             "from images")
        if self._extractor is None:
            extractor = DeepFeatureExtractor(self.features, device=device)
            expected = (self.weights or {}).get("sha256")
            if expected and extractor.weights.sha256 != expected:
                raise InputError(
                    f"survival model: the DenseNet weights here (sha256 {extractor.weights.sha256[:12]}…, "
                    f"{extractor.weights.label}) differ from those the signature was fitted with "
                    f"(sha256 {expected[:12]}…); the signature would be meaningless. Use the same weights file "
                    "(or the same torch version for a seeded random init)")
            self._extractor = extractor
        return self._extractor

    def clinical_values(self, clinical: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
        """Validated codes of the clinical variables, and the names outside the training range."""
        clinical = dict(clinical or {})
        missing = [n for n in self.clinical_variables if n not in clinical]
        if missing:
            needs = ", ".join(f"{n} ({self.variables[n].label})" if self.variables[n].label not in ("", n) else n
                              for n in self.clinical_variables)
            raise InputError(f"missing clinical variable(s) {missing}; the nomogram {self.nomogram.name!r} needs: {needs}"
                             + (f" (+ the {self.signature_name} computed from the images)" if self.uses_signature else ""))
        values = {n: self.variables[n].parse(clinical[n]) for n in self.clinical_variables}
        outside = [n for n, v in values.items() if self.variables[n].training_range is not None
                   and not self.variables[n].training_range[0] <= v <= self.variables[n].training_range[1]]
        return values, outside

    def patient(self, clinical: Mapping[str, Any], images: Mapping[str, Volume] | Sequence[Volume] | None = None,
                segmentation: Segmentation | str | Path | None = None, segment: str | None = None,
                case_id: str = "case", device: str = "auto") -> dict[str, Any]:
        """The patient's read-out as a plain dict (the ``survival`` of a result JSON).

        Keys: ``points`` per variable, ``total_points``, ``linear_predictor``, ``survival_times`` +
        ``survival`` and ``survival_at`` (12/24/36 months), ``risk_group``, ``curve`` {times,
        survival}, ``values`` (what the nomogram used), ``signature`` (value, how computed),
        ``extrapolated`` (variables outside the training range), ``warnings``, ``model``.
        """
        values, outside = self.clinical_values(clinical)
        warnings: list[str] = []
        signature_info = None
        if self.uses_signature:
            if images is not None and segmentation is not None:
                if self.signature is None:
                    raise InputError("survival model: the nomogram uses the signature but no signature file is saved")
                extractor = self.extractor(device)
                features = extractor.extract_volumes(images, segmentation, segment, case_id=case_id)
                value = float(self.signature.score(features.to_frame().T)[0])
                signature_info = {"name": self.signature_name, "value": value, "source": "computed from the images",
                                  "n_features": len(self.signature.feature_names), "phases": self.features.phases,
                                  "weights": extractor.weights.label, "weights_sha256": extractor.weights.sha256,
                                  "patch": extractor.case_info.get(case_id, {})}
                if self.signature_name in (clinical or {}):
                    warnings.append(f"the given {self.signature_name} value was ignored; it was computed from the images")
            elif self.signature_name in (clinical or {}):
                try:
                    value = float(clinical[self.signature_name])
                except (TypeError, ValueError):
                    raise InputError(f"{self.signature_name} = {clinical[self.signature_name]!r} is not a number") from None
                signature_info = {"name": self.signature_name, "value": value, "source": "given"}
            else:
                raise InputError(f"the nomogram {self.nomogram.name!r} uses the deep-learning {self.signature_name}: "
                                 "give the case's images and tumour segmentation (and use the survival_model.json "
                                 f"written by 'tace-response survival'), or a precomputed {self.signature_name}=VALUE")
            values[self.signature_name] = value
            var = next(v for v in self.nomogram.variables if v.name == self.signature_name)
            if not var.minimum <= value <= var.maximum:
                outside.append(self.signature_name)
        if outside:
            warnings.append(f"outside the training range (points extrapolated): {', '.join(outside)}")
        patient = self.nomogram.patient(values)
        out = patient.to_dict()
        unit = self.nomogram.time_unit
        out.update({
            "survival_at": {f"{t:g} {unit}": s for t, s in zip(patient.survival_times, patient.survival)},
            "curve": {"times": list(patient.curve_times), "survival": list(patient.curve_survival)},
            "signature": signature_info,
            "segment": segment,
            "extrapolated": outside,
            "warnings": warnings,
            "model_file": str(self.path) if self.path else None,
            "weights": (self.weights or {}).get("label") if self.uses_signature else None,
            "note": self.note or RESEARCH_NOTE,
        })
        return out


def load_survival_model(source: Any) -> SurvivalModel:
    """A :class:`SurvivalModel` from itself, a :class:`~.nomogram.Nomogram`, or a path to either's JSON."""
    from .nomogram import Nomogram

    if isinstance(source, SurvivalModel):
        return source
    if isinstance(source, Nomogram):
        return SurvivalModel(source)
    if isinstance(source, (str, Path)):
        return SurvivalModel.load(source)
    raise InputError(f"survival model: expected a survival_model.json / nomogram path or object, got {type(source).__name__}")


# --- the whole pipeline from images -----------------------------------------------------------
@dataclass
class ImageSurvivalResult:
    """What :func:`run_image_survival_pipeline` wrote (paths) and fitted."""

    output_dir: Path
    model_path: Path
    report: dict[str, Any]
    pipeline: Any  # .pipeline.SurvivalPipelineResult (its signature_stage holds the ICC filter)
    files: dict[str, str]


def _read_clinical(clinical: pd.DataFrame | str | Path, id_col: str) -> pd.DataFrame:
    if isinstance(clinical, (str, Path)):
        path = Path(clinical)
        if not path.is_file():
            raise InputError(f"{path}: clinical table does not exist")
        clinical = pd.read_csv(path, dtype={id_col: str})
    if id_col in clinical.columns:
        clinical = clinical.assign(**{id_col: clinical[id_col].astype(str)}).set_index(id_col)
    elif clinical.index.name != id_col:
        raise InputError(f"clinical table: no {id_col!r} column")
    return clinical


def _synthetic_cohort(*tables: Any) -> bool:
    """True when a manifest / clinical CSV sits beside the ``cohort.json`` of a SYNTHETIC phantom cohort."""
    for table in tables:
        if isinstance(table, (str, Path)) and (Path(table).parent / "cohort.json").is_file():
            try:
                if json.loads((Path(table).parent / "cohort.json").read_text(encoding="utf-8")).get("synthetic"):
                    return True
            except (OSError, json.JSONDecodeError):
                continue
    return False


def _coded_clinical(clinical: pd.DataFrame | str | Path, config: Any) -> pd.DataFrame:
    """Clinical table indexed by case id, categories of ``config.levels`` coded (validated by the stages)."""
    table = _read_clinical(clinical, config.id_col or "case_id")
    return encode_levels(table, config.levels, config.clinical_covariates, name="clinical table")


def _with_id(frame: pd.DataFrame, id_col: str) -> pd.DataFrame:
    frame = frame.copy()
    frame.index.name = id_col
    return frame.reset_index()


@dataclass
class ImageSignatureResult:
    """What :func:`fit_image_signature` fitted; ``stage.files`` lists what it wrote into ``output_dir``."""

    output_dir: Path
    stage: Any  # .pipeline.SignatureStage
    clinical: pd.DataFrame


def fit_image_signature(
    output_dir: str | Path,
    *,
    config: Any = None,
    settings: FeatureSettings | None = None,
    manifest: str | Path | None = None,
    clinical: pd.DataFrame | str | Path | None = None,
    features: pd.DataFrame | None = None,
    repeat: pd.DataFrame | None = None,
    feature_metadata: Mapping[str, Any] | None = None,
    perturbation: str = "erode",
    perturb_voxels: int = 1,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
) -> ImageSignatureResult:
    """Zhang 2020 up to the signature: deep features -> split -> ICC -> mRMR + elastic-net Cox.

    Either ``manifest`` (cases on disk; features extracted here, cached in ``cache_dir``, default
    ``<output>/feature_cache``) or precomputed ``features`` (+ ``repeat``, + ``feature_metadata``
    from their JSON). ``clinical`` defaults to the manifest itself (time, event, clinical columns).
    The training / validation split (``config.validation_fraction``, stratified by event, seeded)
    is made here so the perturbed extraction runs on the training cases only. Writes the
    signature stage (see :class:`.pipeline.SignatureStage`) with the features' origin, the split,
    the ICC table and the extracted feature tables into ``output_dir``.
    """
    from .data import validate_survival_table
    from .pipeline import SurvivalConfig, _split, fit_signature_stage

    config = config or SurvivalConfig()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    id_col = config.id_col or "case_id"
    if clinical is None:
        if manifest is None:
            raise InputError("survival: give a manifest (cases on disk) or a clinical table")
        clinical = manifest
    clinical_source = str(Path(clinical).resolve()) if isinstance(clinical, (str, Path)) else None
    table = _coded_clinical(clinical, config)
    # every clinical problem is reported now, before any feature is extracted
    checked = validate_survival_table(table, config.time_col, config.event_col, config.clinical_covariates,
                                      check_dimensions=False, name="clinical table")
    files: dict[str, str] = {}

    extractor = None
    if features is None:
        if manifest is None:
            raise InputError("survival: give a manifest to extract deep features from, or a feature table")
        settings = settings or FeatureSettings()
        cases = {c.case_id: c for c in read_feature_manifest(manifest, settings.phases)}
        missing = checked.index.difference(pd.Index(list(cases)))
        if len(missing):
            raise InputError(f"manifest {manifest}: no images for {len(missing)} case(s) of the clinical table: "
                             f"{list(missing[:5])}")
        extractor = DeepFeatureExtractor(settings, cache_dir=cache_dir or output_dir / "feature_cache", device=device,
                                         batch_size=batch_size, perturb_voxels=perturb_voxels)
        features = extractor.extract([cases[c] for c in checked.index])
        feature_metadata = extractor.metadata()
        files["features"] = write_feature_table(features, output_dir / "features.csv",
                                                {**feature_metadata, "perturbation": "none",
                                                 "cases": extractor.case_info}).name
    else:
        features = features.copy()
        features.index = features.index.astype(str)
        missing = checked.index.difference(features.index)
        if len(missing):
            raise InputError(f"feature table: no row for {len(missing)} case(s) of the clinical table: {list(missing[:5])}")
        if feature_metadata and feature_metadata.get("settings"):
            settings = FeatureSettings.from_dict(feature_metadata["settings"])
    weights = dict((feature_metadata or {}).get("weights") or {}) or None
    label = (feature_metadata or {}).get("label") or (weights or {}).get("label") or "deep features of unknown origin"

    # split here (same rule as the statistics pipeline) so the repeat is needed on training cases only
    if config.validation_fraction > 0:
        train_ids, val_ids = _split(checked, config.event_col, config.validation_fraction, config.seed)
    else:
        train_ids, val_ids = checked.index, pd.Index([])
    with atomic_path(output_dir / "split.csv") as tmp:
        pd.DataFrame({"case_id": [*train_ids, *val_ids],
                      "cohort": ["training"] * len(train_ids) + ["validation"] * len(val_ids)}).to_csv(tmp, index=False)
    files["split"] = "split.csv"

    if repeat is None and extractor is not None and perturbation != "none":
        repeat = extractor.extract([cases[c] for c in train_ids], perturbation=perturbation)
        files["repeat"] = write_feature_table(repeat, output_dir / f"features_{perturbation}.csv",
                                              {**extractor.metadata(), "perturbation": perturbation,
                                               "perturb_voxels": perturb_voxels,
                                               "cases": {c: extractor.case_info.get(c) for c in train_ids}}).name
    if repeat is not None:
        repeat = repeat.copy()
        repeat.index = repeat.index.astype(str)

    if _synthetic_cohort(manifest, clinical) and "SYNTHETIC" not in (config.note or ""):
        config = replace(config, note=f"SYNTHETIC phantom cohort. {config.note}".strip())
    if weights and weights.get("kind") == "random-init" and label not in (config.note or ""):
        config = replace(config, note=f"{config.note} Features: {label}.".strip())

    context = {
        "deep_features": {
            "label": label, "weights": weights, "settings": settings.to_dict() if settings else None,
            "n_cases": int(len(features)), "n_training": int(len(train_ids)), "n_validation": int(len(val_ids)),
            "cache": ({"hits": extractor.cache_hits, "misses": extractor.cache_misses} if extractor else None),
        },
        "clinical_source": clinical_source,
    }
    has_validation = len(val_ids) > 0
    stage = fit_signature_stage(
        _with_id(features.loc[train_ids], id_col), _with_id(table.loc[train_ids], id_col), output_dir, config,
        features_repeat=_with_id(repeat, id_col) if repeat is not None else None,
        validation_features=_with_id(features.loc[val_ids], id_col) if has_validation else None,
        validation_clinical=_with_id(table.loc[val_ids], id_col) if has_validation else None,
        repeat_name=perturbation, context=context, files=files,
    )
    return ImageSignatureResult(output_dir, stage, table)


def fit_image_nomogram(
    signature: Any,
    output_dir: str | Path | None = None,
    *,
    config: Any = None,
    clinical: pd.DataFrame | str | Path | None = None,
    main_model: str = "combined",
) -> ImageSurvivalResult:
    """Zhang 2020 from the signature on: Cox screen + stepwise AIC -> nomograms -> report -> survival_model.json.

    ``signature``: an :class:`ImageSignatureResult`, a :class:`.pipeline.SignatureStage` or the
    folder ``fit-signature`` wrote. ``clinical`` defaults to the table the signature was fitted
    with; ``output_dir`` to the signature's folder. ``config`` sets the nomogram side
    (covariates, levels, labels, time points, bootstrap); survival columns, split and the
    data note (SYNTHETIC ...) come from the signature stage.
    """
    from .pipeline import SIGNATURE_STAGE_SETTINGS, SignatureStage, fit_nomogram_stage

    if isinstance(signature, ImageSignatureResult):
        stage, folder = signature.stage, signature.output_dir
    elif isinstance(signature, SignatureStage):
        stage, folder = signature, None
    else:
        stage = SignatureStage.load(signature)
        folder = Path(signature) if Path(signature).is_dir() else Path(signature).parent
    if output_dir is None and folder is None:
        raise InputError("fit-nomogram: give an output folder")
    output_dir = Path(output_dir if output_dir is not None else folder)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = replace(config or stage.config, **{k: getattr(stage.config, k) for k in SIGNATURE_STAGE_SETTINGS})
    if clinical is None:
        clinical = stage.context.get("clinical_source")
        if not clinical:
            raise InputError("fit-nomogram: the signature stage records no clinical table; give one")
        if not Path(clinical).is_file():
            raise InputError(f"fit-nomogram: the clinical table the signature was fitted with, {clinical}, "
                             "no longer exists; give one")
    result = fit_nomogram_stage(stage, _coded_clinical(clinical, config), output_dir, config)
    signature_name = stage.config.signature_name
    files = dict(result.files)
    deep = dict(stage.context.get("deep_features") or {})
    settings = FeatureSettings.from_dict(deep["settings"]) if deep.get("settings") else None
    weights = deep.get("weights")
    label = deep.get("label") or "deep features of unknown origin"

    main = result.nomograms.get(main_model) or result.nomograms.get("combined") or result.nomograms["signature"]
    uses_signature = any(v.name == signature_name for v in main.variables)
    model = SurvivalModel(
        main, stage.signature if uses_signature else None, settings if uses_signature else None,
        weights if uses_signature else None, signature_name=signature_name,
        note=f"{RESEARCH_NOTE} Features: {label}.",
        files={"nomogram": f"nomogram_{main.name}.json",
               **({"signature": "signature.json"} if uses_signature else {})},
    )
    model_path = model.save(output_dir / "survival_model.json")
    files["survival_model"] = model_path.name

    report = json.loads((output_dir / "report.json").read_text(encoding="utf-8"))
    report["deep_features"] = deep or None
    report["survival_model"] = {"file": model_path.name, "main_nomogram": main.name}
    report.setdefault("files", {}).update(files)
    write_json_atomic(output_dir / "report.json", report)
    return ImageSurvivalResult(output_dir, model_path, report, result, files)


def run_image_survival_pipeline(
    output_dir: str | Path,
    *,
    config: Any = None,
    main_model: str = "combined",
    **signature_inputs: Any,
) -> ImageSurvivalResult:
    """Zhang 2020 end to end: deep features -> ICC -> signature -> nomograms -> report -> survival_model.json.

    :func:`fit_image_signature` (``signature_inputs``: manifest / features, clinical, repeat,
    settings, perturbation, cache, device ...) then :func:`fit_image_nomogram`, both in
    ``output_dir`` — the same code and files as ``tace-response fit-signature`` followed by
    ``fit-nomogram``.
    """
    signature = fit_image_signature(output_dir, config=config, **signature_inputs)
    return fit_image_nomogram(signature, output_dir, config=config, clinical=signature.clinical, main_model=main_model)
