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

**ICC inputs.** ``extract(cases, perturbation="erode" | "dilate")`` repeats the extraction from
the ROI eroded / dilated in-plane; ``"reader2"`` uses a second reader's segmentation (manifest
column ``segmentation_2``, optional ``segment_2``).
"""

from __future__ import annotations

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

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import (
    atomic_path,
    content_fingerprint,
    safe_file_name,
    sha256_of,
    write_json_atomic,
)
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.geometry import Volume, resample_to_reference
from TACEResponseLib.imaging.manifest import ManifestRow, read_manifest
from TACEResponseLib.imaging.patches import PatchSpec, extract_patches
from TACEResponseLib.imaging.segmentation import (
    Segmentation,
    read_segmentation,
    segment_mask_on,
)
from TACEResponseLib.imaging.tumours import IslandRule, index_tumour
from TACEResponseLib.imaging.volume_io import read_volume

logger = logging.getLogger(__name__)

FEATURE_FORMAT = "tace-response-deep-features/1"


N_FEATURES = 1024


MIN_SIZE = 32  # DenseNet-121 downsamples by 32


PERTURBATIONS = ("none", "erode", "dilate", "reader2")


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
def read_feature_manifest(path: str | Path, phases: Sequence[str]) -> list[ManifestRow]:
    """The cases of a survival manifest (``case_id``, one column per phase, ``segmentation``, optional
    ``segment``, ``segmentation_2``, ``segment_2``), every row checked and every problem listed in one
    error (:func:`~TACEResponseLib.imaging.manifest.read_manifest`)."""
    return read_manifest(path, phases, require_label=False)


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
        from TACEResponseLib.networks.device import select_device

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

        from TACEResponseLib.networks.device import run_with_device_fallback
        from TACEResponseLib.networks.features import densenet_features

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
        if self.settings.islands is None:
            mask = segment_mask_on(segmentation, _pick_segment(segmentation, segment), reference)
        else:  # the largest island under the rule (the index tumour), as prediction and training define tumours
            mask = index_tumour(segmentation, reference, _pick_segment(segmentation, segment),
                                self.settings.islands).full_mask(reference)
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

    def _case_files(self, case: ManifestRow, perturbation: str) -> tuple[dict[str, Path], Path, str | None]:
        images = case.image_by_phase
        missing = [p for p in self.settings.phases if p not in images]
        if missing:
            raise InputError(f"case {case.case_id!r}: no image for phase(s) {missing}")
        if perturbation == "reader2":
            if not case.segmentation_2:
                raise InputError(f"case {case.case_id!r}: the 'reader2' extraction needs a second reader's "
                                 "segmentation (manifest column segmentation_2)")
            return images, case.segmentation_2, case.segment_2 or case.segment
        return images, case.segmentation, case.segment

    def cache_key(self, case: ManifestRow, perturbation: str = "none") -> str:
        images, segmentation, segment = self._case_files(case, perturbation)
        settings = {
            "format": FEATURE_FORMAT,
            "phases": self.settings.phases,
            "segment": segment or "",
            "perturbation": perturbation,
            "perturb_voxels": self.perturb_voxels if perturbation in ("erode", "dilate") else 0,
            "patch_spec": self.settings.patch_spec.to_dict(),
            "weights_sha256": self.weights.sha256,
        }
        if self.settings.islands is not None:
            settings["islands"] = self.settings.islands.to_dict()
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
        aligned = self.align(volumes, label=case.case_id)
        mask = self._mask(aligned[self.settings.phases[0]], read_segmentation(segmentation_path), segment,
                          perturbation, label=f"case {case.case_id!r}")
        return self.case_patches(aligned, mask, label=f"case {case.case_id!r}")

    def extract(self, cases: Sequence[ManifestRow], perturbation: str = "none",
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
