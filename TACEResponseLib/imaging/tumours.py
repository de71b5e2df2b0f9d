"""The tumours of a case: each segment, and each island of a segment, as a mask on the reference grid.

One rule for prediction, training, evaluation and survival (:class:`IslandRule`): a segment made
of several separate islands (26-connected components) is one tumour per island, largest first;
with ``split=False`` the segment is one tumour, islands merged. Nothing is dropped silently: an
island below ``min_island_ml`` millilitres, or a segment that is empty on the reference grid,
still becomes a :class:`TumourROI` whose ``excluded`` says why it cannot be assessed, so every
tumour gets a row in the result.

Which tumours answer for the patient is :func:`patient_tumours`: by default the mRECIST target
lesions (the up-to-two largest assessable tumours), or every assessable tumour weighted by volume.

Masks are kept cropped to each tumour's box (``TumourROI.mask``, a Volume on the reference grid's
spacing and directions whose origin sits on a reference voxel), so 70 islands of a 512×512×300
volume cost their boxes, not 70 full volumes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.geometry import Volume, bounding_box, crop
from TACEResponseLib.imaging.patches import PatchSet, PatchSpec, assess_patches
from TACEResponseLib.imaging.segmentation import Segmentation, segment_box_on

logger = logging.getLogger(__name__)

#: default smallest island that is a tumour (ml); smaller ones are listed as not assessable
DEFAULT_MIN_ISLAND_ML = 0.05


@dataclass(frozen=True)
class IslandRule(JsonRecord):
    """How a segment becomes tumours: one per island (``split``), or the whole segment as one
    tumour; a tumour below ``min_island_ml`` millilitres is listed as not assessable."""

    split: bool = True
    min_island_ml: float = DEFAULT_MIN_ISLAND_ML

    def __post_init__(self) -> None:
        value = self.min_island_ml
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InputError(f"minimum island volume must be a number of ml ≥ 0, got {value!r}")
        object.__setattr__(self, "min_island_ml", float(value))
        object.__setattr__(self, "split", bool(self.split))

    def describe(self) -> str:
        how = "one tumour per island (26-connected)" if self.split else "one tumour per segment (islands merged)"
        return f"{how}; tumours below {self.min_island_ml:g} ml not assessable"


#: the whole segment as one tumour, islands merged
WHOLE_SEGMENT = IslandRule(split=False)

PatientRule = Literal["target_lesions", "volume_weighted"]

#: the patient-level rules and what they mean (shown in result.json and the panel)
PATIENT_RULES: dict[str, str] = {
    "target_lesions": "target lesions (mRECIST): the up-to-two largest assessable tumours; "
                      "patient probability = mean over their patches",
    "volume_weighted": "all assessable tumours; patient probability = their probabilities weighted by volume",
}
DEFAULT_PATIENT_RULE: PatientRule = "target_lesions"


def check_patient_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`PATIENT_RULES` (``-`` accepted for ``_``), else an InputError."""
    normalised = str(rule).replace("-", "_")
    if normalised not in PATIENT_RULES:
        raise InputError(f"patient rule must be one of {', '.join(PATIENT_RULES)}, got {rule!r}")
    return normalised


def patient_tumours(volumes_ml: Sequence[float], rule: str = DEFAULT_PATIENT_RULE) -> list[int]:
    """Indices of the tumours that answer for the patient, largest first.

    ``target_lesions``: the up-to-two largest (mRECIST: at most two target lesions per organ);
    ``volume_weighted``: all of them. Ties keep the given order.
    """
    rule = check_patient_rule(rule)
    order = sorted(range(len(volumes_ml)), key=lambda n: (-float(volumes_ml[n]), n))
    return order[:2] if rule == "target_lesions" else order


@dataclass
class TumourROI:
    """One tumour: a segment, or one island of it (islands numbered by size, largest = #1).

    ``mask`` is the tumour's voxels cropped to its box, on the reference grid (``offset_kji``
    = the box's first voxel). ``excluded`` is the reason it cannot be assessed (too small,
    empty), ``None`` when patches may be cut from it.
    """

    segment_id: str
    segment_name: str
    mask: Volume | None
    island: int | None = None
    voxels: int = 0
    volume_ml: float = 0.0
    touches_edge: bool = False
    excluded: str | None = None
    reason: str | None = None  # short code of ``excluded``: "below_min_volume", "empty"

    @property
    def label(self) -> str:
        return self.segment_name if self.island is None else f"{self.segment_name} #{self.island}"

    @property
    def offset_kji(self) -> np.ndarray:
        return np.asarray((self.mask.metadata if self.mask is not None else {}).get("crop_offset_kji", (0, 0, 0)), int)

    def full_mask(self, reference: Volume) -> Volume:
        """The tumour's mask on the whole reference grid (uint8 0/1)."""
        array = np.zeros(reference.shape_kji, np.uint8)
        if self.mask is not None:
            lo = self.offset_kji
            hi = lo + np.asarray(self.mask.shape_kji)
            array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = self.mask.array > 0
        return reference.with_array(array, name=self.label)


def _cropped(reference: Volume, array: np.ndarray, lo: np.ndarray, name: str) -> Volume:
    """``array`` (the box ``lo`` … ``lo + shape``) as a Volume on the reference grid."""
    box = crop(reference, lo, lo + np.asarray(array.shape))
    return Volume(array.astype(np.uint8, copy=False), box.ijk_to_ras, name, {"crop_offset_kji": [int(v) for v in lo]})


def _touches_edge(lo: np.ndarray, hi: np.ndarray, shape: Sequence[int]) -> bool:
    return bool(np.any(lo <= 0) or np.any(hi >= np.asarray(shape)))


def tumour_rois(
    segmentation: Segmentation,
    reference: Volume,
    segments: Sequence[str] | None = None,
    islands: IslandRule = IslandRule(),
) -> list[TumourROI]:
    """Every tumour of the chosen segments (``None``: every segment; a DICOM SEG's tumour segments), on the
    reference grid.

    With ``islands.split`` a segment made of several separate islands (26-connected
    components) becomes one tumour per island, numbered by size (largest = #1). A tumour
    below ``islands.min_island_ml`` ml, or a segment empty on the reference grid, is returned
    with ``excluded`` set (it gets a not-assessable row); an unknown segment is an InputError.
    """
    from scipy.ndimage import find_objects, label

    chosen = list(segments) if segments else segmentation.default_segment_ids()
    if not chosen:
        raise InputError(f"segmentation {segmentation.name!r} has no segments; draw the tumour first")
    voxel_ml = float(np.prod(reference.spacing)) / 1000.0
    minimum = islands.min_island_ml
    rois: list[TumourROI] = []
    for key in chosen:
        segment = segmentation.find(key)  # an unknown segment is the user's mistake: InputError
        try:
            mask = segment_box_on(segmentation, segment.id, reference)  # only the segment's box
        except InputError as exc:
            rois.append(TumourROI(segment.id, segment.name, None, excluded=str(exc), reason="empty"))
            continue
        present = mask.array > 0
        lo, hi = bounding_box(present)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        lo = lo + np.asarray(mask.metadata["crop_offset_kji"], int)  # on the reference grid
        if not islands.split:
            voxels = int(np.count_nonzero(present[box]))
            rois.append(_roi(segment.id, segment.name, reference, present[box], lo, None, voxels, voxel_ml, minimum))
            continue
        labels, count = label(present[box], structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        order = sorted(range(count), key=lambda n: (-int(sizes[n]), n))  # largest first; ties: scan order
        slices = find_objects(labels)
        for number, index in enumerate(order, start=1):
            sub = slices[index]
            island_lo = lo + np.array([s.start for s in sub])
            island = labels[sub] == index + 1
            rois.append(_roi(segment.id, segment.name, reference, island, island_lo, number if count > 1 else None,
                             int(sizes[index]), voxel_ml, minimum))
        small = sum(1 for r in rois[-count:] if r.reason == "below_min_volume")
        if small:
            logger.info("segment %s: %d of %d island(s) below %.3g ml, listed as not assessable", segment.name, small,
                        count, minimum)
    return rois


def _roi(segment_id: str, segment_name: str, reference: Volume, array: np.ndarray, lo: np.ndarray,
         island: int | None, voxels: int, voxel_ml: float, minimum_ml: float) -> TumourROI:
    volume_ml = voxels * voxel_ml
    hi = lo + np.asarray(array.shape)
    roi = TumourROI(segment_id, segment_name, _cropped(reference, array, lo, segment_name), island, voxels, volume_ml,
                    _touches_edge(lo, hi, reference.shape_kji))
    if volume_ml < minimum_ml:
        roi.excluded = (f"{volume_ml:.3g} ml ({voxels} voxel{'s' if voxels != 1 else ''}), below the minimum "
                        f"tumour volume of {minimum_ml:g} ml")
        roi.reason = "below_min_volume"
    return roi


def index_tumour(segmentation: Segmentation, reference: Volume, segment: str | None = None,
                 islands: IslandRule = IslandRule()) -> TumourROI:
    """The tumour that stands for a segment (the first segment when ``None``): its largest
    island under ``islands`` (the whole segment with ``split=False``); an InputError when it is
    empty or below the minimum volume."""
    key = segment or next(iter(segmentation.default_segment_ids()), None)
    if key is None:
        raise InputError(f"segmentation {segmentation.name!r} has no segments; draw the tumour first")
    rois = tumour_rois(segmentation, reference, [key], islands)
    first = rois[0]
    if first.excluded:
        raise InputError(f"{first.label}: {first.excluded}")
    return first


@dataclass
class Assessment:
    """The tumours of a case split into those that gave patches and those that did not (with why)."""

    assessed: list[tuple[TumourROI, PatchSet]]
    not_assessable: list[tuple[TumourROI, str, str]]  # (tumour, reason code, sentence)

    def error(self, case: str) -> InputError:
        """The error when nothing is assessable: every tumour with its reason."""
        listed = "; ".join(f"{roi.label}: {detail}" for roi, _, detail in self.not_assessable)
        return InputError(f"{case}: no tumour can be assessed ({len(self.not_assessable)} tumour(s)) — {listed}")


def assess_tumours(images: Sequence[Volume], rois: Sequence[TumourROI], spec: PatchSpec,
                   label_prefix: str = "", timings: dict[str, float] | None = None) -> Assessment:
    """Patches of every tumour not already excluded (:func:`~.patches.assess_patches`), in ``rois`` order."""
    candidates = [roi for roi in rois if not roi.excluded]
    outcomes = assess_patches(images, [roi.mask for roi in candidates], spec,
                              labels=[f"{label_prefix}{roi.label}" for roi in candidates],
                              timings=timings) if candidates else []
    by_roi = {id(roi): outcome for roi, outcome in zip(candidates, outcomes)}
    assessment = Assessment([], [])
    for roi in rois:
        outcome = by_roi.get(id(roi))
        if isinstance(outcome, PatchSet):
            assessment.assessed.append((roi, outcome))
        elif outcome is None:
            assessment.not_assessable.append((roi, str(roi.reason), str(roi.excluded)))
        else:
            assessment.not_assessable.append((roi, outcome.reason, outcome.detail))
    return assessment
