"""Viable tumour: the arterially enhancing part of a tumour segment (mRECIST, EASL), and iodised-oil deposits.

mRECIST and EASL measure only viable tumour, "identified by uptake of contrast agent in the arterial phase"
(Lencioni & Llovet 2010). When no viable segment is given, it is derived per tumour, with every number
recorded in the result:

1. **Parenchyma reference**: the liver around the tumour, a shell ``ring_mm`` from its surface (other tumours,
   iodised oil and, when a liver segment is given, everything outside the liver left out; values beyond
   Tukey's fences dropped, which removes vessels and fat). Its median and robust SD (1.4826 × MAD).
2. **Enhancement**: the arterial image, or arterial minus pre-contrast when a pre-contrast image is given
   (subtraction; the pre-contrast image is resampled onto the arterial grid), denoised by a median over
   ``median_size`` × ``median_size`` voxels within each slice (which, unlike a Gaussian, keeps the edge
   between viable and necrotic tissue in place). A tumour voxel is viable when its enhancement exceeds the
   parenchyma median by more than ``margin_sd`` robust SDs of the parenchyma: hyperenhancement relative to
   the surrounding liver.
3. **Iodised oil** (CT only; Lipiodol after conventional TACE is dense without contrast and hides
   enhancement): voxels ≥ ``oil_hu`` HU on the pre-contrast image (or, without one, on the arterial image,
   where no enhancing tissue reaches that density), grown by ``oil_rim_mm`` (the partial-volume rim), are
   never viable.
4. Viable parts smaller than ``min_part_mm3`` are noise and dropped.

A given viable segment (a segment tagged :data:`VIABLE_OF_TAG` with the tumour segment's id, or named
"<tumour segment name> viable", e.g. the one written back here and corrected in the Segment Editor) is
used as it is, inside its tumour.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.geometry import Volume, crop, resample_to_reference, value_range_of
from TACEResponseLib.imaging.segmentation import Segment, Segmentation
from TACEResponseLib.imaging.tumours import TumourROI

logger = logging.getLogger(__name__)

#: segment tag naming the tumour segment (its id) a viable segment belongs to
VIABLE_OF_TAG = "TACEResponse.ViableOf"
#: segment tag of the iodised-oil segment written back
OIL_TAG = "TACEResponse.IodisedOil"
VIABLE_SUFFIX = " viable"
VIABLE_COLOR = (1.0, 0.35, 0.1)
OIL_COLOR = (0.95, 0.95, 0.95)
#: fewest parenchyma voxels the reference is computed from
MIN_RING_VOXELS = 30


@dataclass(frozen=True)
class ViableRule(JsonRecord):
    """How viable tumour is derived (module docstring); every value is stated in the results."""

    margin_sd: float = 2.0
    ring_mm: tuple[float, float] = (2.0, 12.0)
    median_size: int = 3
    oil_hu: float = 300.0
    oil_rim_mm: float = 2.0
    min_part_mm3: float = 15.0

    def __post_init__(self) -> None:
        values = [self.margin_sd, *self.ring_mm, self.median_size, self.oil_hu, self.oil_rim_mm, self.min_part_mm3]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise InputError(f"viable rule: every value must be a finite number ({self})")
        if not 0 <= self.ring_mm[0] < self.ring_mm[1]:
            raise InputError(f"viable rule: parenchyma shell {self.ring_mm} mm must be 0 ≤ inner < outer")
        if min(self.margin_sd, self.oil_rim_mm, self.min_part_mm3) < 0:
            raise InputError("viable rule: the margin, oil rim and minimum part must be ≥ 0")
        if isinstance(self.median_size, bool) or int(self.median_size) != self.median_size or not 0 <= self.median_size <= 7:
            raise InputError(f"viable rule: median size must be a whole number of voxels 0–7, got {self.median_size!r}")


@dataclass
class ViableTumour(JsonRecord):
    """The viable part of one tumour and how it was obtained (masks on the tumour's box of the arterial grid)."""

    source: str                     # "derived" | "given"
    method: str                     # what was compared with what
    tumour_voxels: int
    viable_voxels: int
    oil_voxels: int
    voxel_ml: float
    parenchyma_median: float | None = None
    parenchyma_sd: float | None = None
    threshold: float | None = None
    parenchyma_voxels: int = 0
    mask: Volume | None = field(default=None, metadata={"json": False})
    oil: Volume | None = field(default=None, metadata={"json": False})

    @property
    def viable_ml(self) -> float:
        return self.viable_voxels * self.voxel_ml

    @property
    def oil_ml(self) -> float:
        return self.oil_voxels * self.voxel_ml

    @property
    def fraction(self) -> float:
        return self.viable_voxels / self.tumour_voxels if self.tumour_voxels else 0.0

    json_derived = ("viable_ml", "oil_ml", "viable_fraction")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "viable_ml": round(self.viable_ml, 4), "oil_ml": round(self.oil_ml, 4),
                "viable_fraction": round(self.fraction, 4)}


def guess_ct(volume: Volume) -> bool:
    """True for CT in HU: the metadata says CT, or voxels below −150 (fat, air) exist; MR has none."""
    modality = str(volume.metadata.get("modality", "")).upper()
    if modality in ("CT", "MR", "MRI"):
        return modality == "CT"
    return value_range_of(volume)[0] < -150.0


def is_viable_segment(segment: Segment, tumour_names: Sequence[str]) -> bool:
    return bool(segment.tags.get(VIABLE_OF_TAG)) or any(segment.name == f"{n}{VIABLE_SUFFIX}" for n in tumour_names)


def viable_segment_for(segmentation: Segmentation, tumour: Segment) -> Segment | None:
    """The segment that gives ``tumour``'s viable part (tagged with its id, else named "<name> viable")."""
    for segment in segmentation.segments:
        if segment.tags.get(VIABLE_OF_TAG) == tumour.id:
            return segment
    for segment in segmentation.segments:
        if segment.name == f"{tumour.name}{VIABLE_SUFFIX}" and not segment.tags.get(VIABLE_OF_TAG):
            return segment
    return None


def _paint(rois: Sequence[TumourROI], reference: Volume, lo: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Union of the tumours' masks on the box ``lo`` … ``lo + shape`` of the reference grid."""
    out = np.zeros(shape, bool)
    for roi in rois:
        if roi.mask is not None:
            out |= paste(roi.mask, reference, lo, shape)
    return out


def paste(mask: Volume, reference: Volume, lo: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``mask`` (on ``reference``'s grid or a box of it; else resampled, nearest neighbour) as a boolean array
    on the box ``lo`` … ``lo + shape`` of the reference grid, without a copy of the whole grid."""
    from TACEResponseLib.imaging.geometry import grid_offset

    offset = grid_offset(mask, reference)
    if offset is None:
        box = crop(reference, lo, lo + np.asarray(shape))
        return resample_to_reference(mask, box, "nearest", min_overlap=0.0).array > 0
    out = np.zeros(shape, bool)
    a, b = offset - lo, offset - lo + np.asarray(mask.shape_kji)
    p, q = np.maximum(a, 0), np.minimum(b, shape)
    if np.all(q > p):
        out[p[0]:q[0], p[1]:q[1], p[2]:q[2]] = mask.array[p[0] - a[0]:q[0] - a[0], p[1] - a[1]:q[1] - a[1],
                                                          p[2] - a[2]:q[2] - a[2]] > 0
    return out


def _work_box(roi: TumourROI, reference: Volume, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    margin = np.ceil(margin_mm / reference.spacing[::-1]).astype(int) + 1
    lo = np.maximum(roi.offset_kji - margin, 0)
    hi = np.minimum(roi.offset_kji + np.asarray(roi.mask.shape_kji) + margin, reference.shape_kji)
    return lo, hi


def _drop_small(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    if min_voxels <= 1 or not mask.any():
        return mask
    from scipy.ndimage import label

    labels, count = label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def derive_viable(roi: TumourROI, arterial: Volume, all_tumours: Sequence[TumourROI], rule: ViableRule = ViableRule(),
                  precontrast: Volume | None = None, ct: bool | None = None, liver: Volume | None = None,
                  label: str = "") -> ViableTumour:
    """The viable part of one tumour (``roi`` on ``arterial``'s grid) by enhancement relative to the liver
    around it (module docstring). ``precontrast``: on the arterial grid or any grid of the same patient
    space (resampled around the tumour); ``liver``: a liver mask on the arterial grid (optional);
    ``ct``: None guesses from the voxels (:func:`guess_ct`)."""
    from scipy.ndimage import distance_transform_edt, median_filter

    label = label or roi.label
    ct = guess_ct(arterial) if ct is None else ct
    spacing = arterial.spacing[::-1]  # k, j, i
    lo, hi = _work_box(roi, arterial, rule.ring_mm[1] + rule.oil_rim_mm + 2 * float(np.max(arterial.spacing)))
    box = crop(arterial, lo, hi)
    shape = box.shape_kji
    tumour = _paint([roi], arterial, lo, shape)
    tumours = _paint(all_tumours, arterial, lo, shape)
    arterial_values = np.asarray(box.array, np.float32)
    pre_values = None
    if precontrast is not None:
        pre_values = np.asarray(resample_to_reference(precontrast, box, "linear").array, np.float32)
    measure = arterial_values - pre_values if pre_values is not None else arterial_values
    method = ("arterial minus pre-contrast" if pre_values is not None else "arterial") + " vs surrounding parenchyma"
    size = int(rule.median_size)
    smooth = median_filter(measure, size=(1, size, size), mode="nearest") if size > 1 else measure
    oil_core = np.zeros(shape, bool)
    if ct:
        oil_core = (pre_values if pre_values is not None else arterial_values) >= rule.oil_hu
    oil_zone = oil_core
    if oil_core.any() and rule.oil_rim_mm > 0:
        oil_zone = distance_transform_edt(~oil_core, sampling=spacing) <= rule.oil_rim_mm
    distance = distance_transform_edt(~tumour, sampling=spacing)
    ring = (distance >= max(rule.ring_mm[0], 1e-6)) & (distance <= rule.ring_mm[1]) & ~tumours & ~oil_zone
    if liver is not None:
        ring &= paste(liver, arterial, lo, shape)
    values = smooth[ring]
    if values.size >= MIN_RING_VOXELS:
        q1, q3 = np.percentile(values, [25, 75])
        values = values[(values >= q1 - 1.5 * (q3 - q1)) & (values <= q3 + 1.5 * (q3 - q1))]
    if values.size < MIN_RING_VOXELS:
        raise InputError(f"{label}: only {values.size} liver voxels around the tumour to compare its enhancement "
                         f"with (a shell {rule.ring_mm[0]:g}–{rule.ring_mm[1]:g} mm from its surface); is the tumour "
                         "at the edge of the image, or the image cropped to it? Give a viable segment instead")
    median = float(np.median(values))
    sd = float(1.4826 * np.median(np.abs(values - median)))
    threshold = median + rule.margin_sd * sd
    viable = tumour & (smooth > threshold) & ~oil_zone
    viable = _drop_small(viable, rule.min_part_mm3 / float(np.prod(spacing)))
    voxel_ml = round(float(np.prod(spacing)) / 1000.0, 9)
    return ViableTumour(
        "derived", method + (" (CT: iodised oil excluded)" if ct else " (MR: no iodised-oil exclusion)"),
        int(tumour.sum()), int(viable.sum()), int((oil_core & tumour).sum()), voxel_ml,
        round(median, 3), round(sd, 3), round(threshold, 3), int(values.size),
        box.with_array(viable.astype(np.uint8), name=f"{label} viable"),
        box.with_array((oil_core & tumour).astype(np.uint8), name=f"{label} oil"))


def given_viable(roi: TumourROI, viable_mask: Volume | None, arterial: Volume, label: str = "") -> ViableTumour:
    """A viable segment's voxels (on the arterial grid, a box of it or any grid; None: an empty segment)
    inside one tumour."""
    lo = roi.offset_kji
    box = crop(arterial, lo, lo + np.asarray(roi.mask.shape_kji))
    inside = np.zeros(box.shape_kji, bool) if viable_mask is None else paste(viable_mask, arterial, lo, box.shape_kji)
    viable = inside & (roi.mask.array > 0)
    voxel_ml = round(float(np.prod(arterial.spacing)) / 1000.0, 9)
    return ViableTumour("given", f"viable segment as drawn ({label or roi.label})", int((roi.mask.array > 0).sum()),
                        int(viable.sum()), 0, voxel_ml,
                        mask=box.with_array(viable.astype(np.uint8), name=f"{roi.label} viable"),
                        oil=box.with_array(np.zeros(box.shape_kji, np.uint8)))
