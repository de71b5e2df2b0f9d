"""The training cohort as patches: patient-level split, per-case patch cache, the patch dataset.

Patches are cut exactly as inference cuts them (the card's :class:`PatchSpec`, the same tumour
rule) and cached per case in memory and on disk, keyed by the spec and the inputs' content,
so epochs and resumed runs do not re-read volumes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError, TACEResponseError
from TACEResponseLib.core.files import atomic_path, content_fingerprint, safe_file_name, write_json_atomic
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.manifest import ManifestRow
from TACEResponseLib.imaging.patches import PatchSpec
from TACEResponseLib.imaging.tumours import DEFAULT_PATIENT_RULE, IslandRule

logger = logging.getLogger(__name__)

# --- split ------------------------------------------------------------------------------------------
@dataclass
class Split(JsonRecord):
    train: list[str]
    validation: list[str]


def stratified_patient_split(case_ids: Sequence[str], labels: Sequence[str], validation_fraction: float,
                             seed: int = 0) -> Split:
    """Patient-level split stratified by label: each class contributes ``round(n·fraction)``
    patients to validation (at least 1 and at most n − 1 when it has two or more). Patients,
    not patches, are split, so no patient is on both sides. Deterministic for a seed."""
    if len(case_ids) != len(labels):
        raise InputError(f"split: {len(case_ids)} case ids but {len(labels)} labels")
    if len(set(case_ids)) != len(case_ids):
        raise InputError("split: case ids must be unique (one row per patient)")
    rng = np.random.default_rng(seed)
    validation: set[str] = set()
    for label in sorted(set(labels)):
        members = sorted(c for c, lab in zip(case_ids, labels) if lab == label)
        n = len(members)
        n_val = int(round(n * validation_fraction)) if validation_fraction > 0 else 0
        if validation_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        elif n < 2:
            n_val = 0
            if validation_fraction > 0:
                logger.warning("class %s has %d patient(s); none held out for validation", label, n)
        chosen = rng.permutation(n)[:n_val]
        validation.update(members[i] for i in chosen)
    return Split([c for c in case_ids if c not in validation], [c for c in case_ids if c in validation])


# --- patches -----------------------------------------------------------------------------------------
def case_patches(row: ManifestRow, spec: PatchSpec, islands: IslandRule = IslandRule(),
                 patient_rule: str = DEFAULT_PATIENT_RULE, info: dict[str, Any] | None = None) -> np.ndarray:
    """Patches ``(P, C, S, S)`` of one case, cut exactly as :class:`~TACEResponseLib.prediction.predictor.Predictor`
    cuts them, from the tumours that give the patient-level answer (default: the mRECIST target
    lesions = the up-to-two largest assessable tumours) — the rule prediction and evaluation use.

    ``info`` (a dict) receives the acquired slice spacing along the patches' slice axis (mm) and,
    per patch, its tumour and nearest acquired slice: patches resampled from one acquired slice
    are one independent unit, not several."""
    from TACEResponseLib.imaging.sanity import check_scan
    from TACEResponseLib.imaging.segmentation import read_segmentation
    from TACEResponseLib.imaging.tumours import (
        assess_tumours,
        patient_tumours,
        tumour_rois,
    )
    from TACEResponseLib.imaging.volume_io import read_phase_volumes

    images = read_phase_volumes(row.images, row.phases)
    for image, phase in zip(images, row.phases):
        check_scan(image, label=f"{phase} image {image.metadata.get('source', '')}".strip())
    segmentation = read_segmentation(row.segmentation)
    rois = tumour_rois(segmentation, images[0], [row.segment] if row.segment else None, islands)
    assessment = assess_tumours(images, rois, spec, label_prefix=f"{row.case_id} ")
    assessed = assessment.assessed
    if not assessed:
        raise assessment.error(f"case {row.case_id}")
    chosen = patient_tumours([roi.volume_ml for roi, _ in assessed], patient_rule)
    if info is not None:
        provenance = [(n, prov) for n in chosen for prov in assessed[n][1].provenance]
        axis = provenance[0][1].slice_axis
        info.update({"acquired_slice_mm": float(images[0].spacing[2 - axis]),
                     "units": [f"{assessed[n][0].label}@{prov.slice_index}" for n, prov in provenance]})
    return np.concatenate([assessed[n][1].images for n in chosen])


class PatchCache:
    """Per-case patches in memory and (optionally) as ``.npy`` files keyed by spec + file stats."""

    def __init__(self, folder: str | Path | None = None, islands: IslandRule = IslandRule(),
                 patient_rule: str = DEFAULT_PATIENT_RULE) -> None:
        self.folder = Path(folder) if folder else None
        self.islands = islands
        self.patient_rule = patient_rule
        self.memory: dict[str, np.ndarray] = {}
        self.infos: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0

    def key(self, row: ManifestRow, spec: PatchSpec) -> str:
        """Cache key: the inputs' content, the segment, the phases, the patch spec and the tumour rules."""
        return content_fingerprint([*row.images, row.segmentation],
                                   {"spec": spec.to_dict(), "phases": row.phases, "segment": row.segment,
                                    "islands": self.islands.to_dict(), "patient_rule": self.patient_rule,
                                    "version": 5})

    def get(self, row: ManifestRow, spec: PatchSpec) -> np.ndarray:
        key = self.key(row, spec)
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        path = None
        if self.folder is not None:
            path = self.folder / f"{safe_file_name(row.case_id)}-{key[:20]}.npy"
            if path.is_file() and path.with_suffix(".json").is_file():
                try:
                    patches = np.load(path, allow_pickle=False)
                    self.infos[key] = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
                    self.memory[key] = patches
                    self.hits += 1
                    return patches
                except (OSError, ValueError):
                    logger.warning("patch cache %s unreadable; cutting the patches again", path)
        self.misses += 1
        info: dict[str, Any] = {}
        patches = case_patches(row, spec, self.islands, self.patient_rule, info=info)
        self.memory[key], self.infos[key] = patches, info
        if path is not None:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, patches, allow_pickle=False)
            write_json_atomic(path.with_suffix(".json"), info)
        return patches

    def info(self, row: ManifestRow, spec: PatchSpec) -> dict[str, Any]:
        """What :func:`case_patches` recorded about the case's patches (after :meth:`get`)."""
        return self.infos.get(self.key(row, spec), {})


@dataclass
class PatchDataset:
    """All patches of a cohort with the patient each belongs to."""

    images: np.ndarray        # (N, C, S, S) float32
    case_index: np.ndarray    # (N,) index into case_ids
    case_ids: list[str]
    labels: np.ndarray        # (n_cases,) class index per case
    clinical: np.ndarray | None = None  # (n_cases, n_factors) standardised
    case_info: list[dict[str, Any]] = field(default_factory=list)  # per case: acquired slice spacing, patch units

    def patch_labels(self) -> np.ndarray:
        return self.labels[self.case_index]

    def rows_of(self, case_ids: Sequence[str]) -> np.ndarray:
        wanted = {self.case_ids.index(c) for c in case_ids}
        return np.nonzero(np.isin(self.case_index, list(wanted)))[0]


def build_dataset(rows: Sequence[ManifestRow], spec: PatchSpec, class_names: Sequence[str],
                  cache: PatchCache | None = None, progress_bar: bool = True) -> PatchDataset:
    """Patches of every case; every case that fails is listed in one InputError."""
    from tqdm import tqdm

    cache = cache or PatchCache()
    per_case: list[np.ndarray] = []
    problems: list[str] = []
    for row in tqdm(rows, desc="cutting patches", unit="case", disable=not progress_bar):
        try:
            per_case.append(cache.get(row, spec))
        except (TACEResponseError, OSError) as exc:
            problems.append(f"line {row.line} ({row.case_id}): {exc}")
            per_case.append(np.zeros((0,), np.float32))
    if problems:
        raise InputError(f"{len(problems)} case(s) give no patches; fix them and run again:\n  " + "\n  ".join(problems))
    images = np.concatenate(per_case).astype(np.float32, copy=False)
    case_index = np.concatenate([np.full(len(p), n) for n, p in enumerate(per_case)])
    labels = np.array([list(class_names).index(r.label) for r in rows], dtype=int)
    return PatchDataset(images, case_index, [r.case_id for r in rows], labels,
                        case_info=[cache.info(r, spec) for r in rows])


def through_plane(dataset: PatchDataset, spec: PatchSpec) -> dict[str, Any] | None:
    """What the through-plane resampling (``spec.slice_spacing_mm``) did to the cohort: acquired slice
    spacings, the cases whose slices are thicker (their patches are interpolated between acquired
    slices, several from one slice) and how many independent units (acquired slices) the patches
    come from. None when no resampling is asked for."""
    if not spec.slice_spacing_mm:
        return None
    target = float(spec.slice_spacing_mm)
    spacings = {c: info.get("acquired_slice_mm") for c, info in zip(dataset.case_ids, dataset.case_info)}
    known = {c: v for c, v in spacings.items() if v is not None}
    thicker = sorted(c for c, v in known.items() if v > target * 1.001)
    units = sum(len(set(info.get("units") or [])) for info in dataset.case_info)
    return {"target_mm": target, "acquired_mm": {"min": min(known.values()), "max": max(known.values())} if known else None,
            "n_cases": len(spacings), "n_interpolated": len(thicker), "interpolated_cases": thicker,
            "n_patches": int(len(dataset.images)), "n_independent_units": int(units),
            "note": (f"{len(thicker)} of {len(spacings)} cases have slices thicker than {target:g} mm: their patches are "
                     "interpolated between acquired slices, and patches from one acquired slice count as one "
                     "independent unit" if thicker else f"every case has slices of {target:g} mm or thinner")}
