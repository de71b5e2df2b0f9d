"""Which follow-up lesion is which baseline lesion: a rigid registration of the follow-up onto the baseline
(SimpleITK), then the overlap of the lesions once moved, matched one-to-one; the user's pairs override.

The registration maps baseline RAS points to follow-up RAS points (ITK's fixed → moving convention), a
rotation and a translation (Euler 3-D, Mattes mutual information on 10 % of the voxels, images shrunk 4×
then 2×: lesions are matched by overlap, for which a millimetre or two is plenty; started from the
identity: both visits are expected in one scanner frame, give or take a few centimetres; visits whose
images do not overlap at all are refused before it runs). Lesions are compared on the baseline grid: each
follow-up lesion is resampled through the transform (nearest neighbour) and its overlap with each baseline
lesion is the overlap coefficient |A ∩ B| / min(|A|, |B|), which a lesion that shrank after treatment
keeps high. Pairs are chosen by the Hungarian method on the overlaps; a pair needs ``min_overlap``. A
lesion left unpaired (a small one, barely overlapping after an imperfect registration) is then paired with
the nearest unpaired follow-up lesion whose centroid, moved onto the baseline, lies within
``max_centroid_mm`` of its own (source "centroid").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.geometry import LPS_TO_RAS, Volume, crop, overlap_fraction, to_sitk_image

logger = logging.getLogger(__name__)

#: the smallest overlap coefficient that pairs two lesions
MIN_OVERLAP = 0.1
#: farthest apart (mm) two unpaired lesions' centroids may be to pair them by distance
MAX_CENTROID_MM = 10.0
#: the least fraction of the baseline's extent a follow-up must cover before registration
MIN_GRID_OVERLAP = 0.05


@dataclass
class Registration(JsonRecord):
    """A rigid map from baseline RAS to follow-up RAS (mm): ``followup = matrix @ baseline``."""

    matrix: list[list[float]]
    method: str
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    metric: float | None = None
    iterations: int = 0

    @classmethod
    def identity(cls, why: str) -> "Registration":
        return cls(np.eye(4).tolist(), why)

    @property
    def baseline_to_followup(self) -> np.ndarray:
        return np.asarray(self.matrix, float)

    @property
    def followup_to_baseline(self) -> np.ndarray:
        return np.linalg.inv(self.baseline_to_followup)


@dataclass
class LesionMatch(JsonRecord):
    """A baseline lesion and the follow-up lesion taken as the same tumour (None: not found)."""

    baseline: str
    followup: str | None
    overlap: float = 0.0
    centroid_distance_mm: float | None = None
    source: str = "overlap"      # "overlap" | "centroid" | "user" | "none"


@dataclass
class Matching(JsonRecord):
    """All matches of one follow-up, and its lesions no baseline lesion matched (candidate new lesions)."""

    matches: list[LesionMatch]
    unmatched_followup: list[str] = field(default_factory=list)
    overlaps: dict[str, dict[str, float]] = field(default_factory=dict)

    def followup_of(self, baseline: str) -> str | None:
        return next((m.followup for m in self.matches if m.baseline == baseline), None)


def parse_pairs(text: str, what: str = "lesion pairs") -> dict[str, str | None]:
    """``"Tumour_1=Segment_3; Tumour_2="`` → {baseline lesion: follow-up lesion, or None for "not present"}:
    pairs separated by ``;`` or new lines, the follow-up side empty or ``none`` when the lesion is gone."""
    pairs: dict[str, str | None] = {}
    for part in str(text or "").replace("\n", ";").split(";"):
        if not part.strip():
            continue
        baseline, equals, followup = part.partition("=")
        if not equals or not baseline.strip():
            raise InputError(f"{what}: {part.strip()!r} is not BASELINE_LESION=FOLLOWUP_LESION (e.g. Tumour_1=Segment_3; "
                             "an empty or 'none' follow-up lesion: not present)")
        followup = followup.strip()
        pairs[baseline.strip()] = None if followup.lower() in ("", "none") else followup
    return pairs


def check_same_space(baseline: Volume, followup: Volume, what: str) -> None:
    """Refuse a follow-up whose image does not overlap the baseline's in space (another patient's grid,
    wrong origins): registration cannot start from there."""
    fraction = overlap_fraction(baseline, followup)
    if fraction < MIN_GRID_OVERLAP:
        box_b, box_f = np.round(baseline.bounds_ras(), 1), np.round(followup.bounds_ras(), 1)
        raise InputError(f"{what}: its image does not overlap the baseline's in space ({fraction:.0%} of the baseline's "
                         f"extent; baseline RAS {box_b[0].tolist()}…{box_b[1].tolist()} mm, follow-up "
                         f"{box_f[0].tolist()}…{box_f[1].tolist()} mm): another patient, or wrong origins?")


def register_rigid(baseline: Volume, followup: Volume, seed: int = 0) -> Registration:
    """Rigid registration of ``followup`` onto ``baseline`` (module docstring); deterministic for a seed."""
    import SimpleITK as sitk

    fixed = sitk.Cast(to_sitk_image(baseline), sitk.sitkFloat32)
    moving = sitk.Cast(to_sitk_image(followup), sitk.sitkFloat32)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=100,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=True)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as exc:
        raise InputError(f"rigid registration of the follow-up onto the baseline failed ({str(exc).splitlines()[-1]}); "
                         "check that both images are of the same patient and region") from None
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(initial.GetMatrix()).reshape(3, 3)
    lps[:3, 3] = initial.GetTranslation()
    c = np.asarray(initial.GetCenter())
    lps[:3, 3] += c - lps[:3, :3] @ c  # ITK: T(x) = R (x − c) + c + t
    ras = LPS_TO_RAS @ lps @ LPS_TO_RAS
    angles = euler_degrees(ras[:3, :3])
    return Registration(np.round(ras, 6).tolist(), "rigid (Euler 3-D, Mattes mutual information, SimpleITK)",
                        angles, tuple(round(float(v), 3) for v in ras[:3, 3]), round(float(method.GetMetricValue()), 5),
                        int(method.GetOptimizerIteration()))


def euler_degrees(rotation: np.ndarray) -> tuple[float, float, float]:
    """Angles (degrees) about R, then A, then S of a rotation (the convention of
    :func:`~TACEResponseLib.imaging.geometry.rotation_matrix`: ``R = Rs @ Ra @ Rr``)."""
    about_a = math.asin(float(np.clip(-rotation[2, 0], -1.0, 1.0)))
    about_r = math.atan2(float(rotation[2, 1]), float(rotation[2, 2]))
    about_s = math.atan2(float(rotation[1, 0]), float(rotation[0, 0]))
    return tuple(round(math.degrees(a), 3) for a in (about_r, about_a, about_s))  # type: ignore[return-value]


def _labelmap(masks: Sequence[Volume], grid: Volume, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Masks that lie on boxes of ``grid`` painted as labels 1…N on its box ``lo`` … ``hi`` (a later one wins)."""
    from TACEResponseLib.imaging.geometry import grid_offset

    out = np.zeros(tuple(int(v) for v in hi - lo), np.uint16)
    for number, mask in enumerate(masks, start=1):
        offset = grid_offset(mask, grid)
        if offset is None:
            raise InputError(f"lesion {mask.name!r} is not on the visit's grid")
        a, b = offset - lo, offset - lo + np.asarray(mask.shape_kji)
        p, q = np.maximum(a, 0), np.minimum(b, out.shape)
        if np.all(q > p):
            inside = mask.array[p[0] - a[0]:q[0] - a[0], p[1] - a[1]:q[1] - a[1], p[2] - a[2]:q[2] - a[2]] > 0
            out[p[0]:q[0], p[1]:q[1], p[2]:q[2]][inside] = number
    return out


def _box_around(masks: Sequence[Volume], grid: Volume, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    from TACEResponseLib.imaging.geometry import grid_offset

    los, his = [], []
    for mask in masks:
        offset = grid_offset(mask, grid)
        los.append(offset)
        his.append(offset + np.asarray(mask.shape_kji))
    margin = np.ceil(margin_mm / grid.spacing[::-1]).astype(int)
    return np.maximum(np.min(los, axis=0) - margin, 0), np.minimum(np.max(his, axis=0) + margin, grid.shape_kji)


def overlap_matrix(baseline_masks: dict[str, Volume], baseline_grid: Volume, followup_masks: dict[str, Volume],
                   followup_grid: Volume, registration: Registration) -> np.ndarray:
    """Overlap coefficient of every (baseline lesion, follow-up lesion) pair once the follow-up lesions are
    moved onto the baseline grid through the registration."""
    import SimpleITK as sitk

    names_b, names_f = list(baseline_masks), list(followup_masks)
    lo, hi = _box_around(list(baseline_masks.values()), baseline_grid, 30.0)
    region = crop(baseline_grid, lo, hi)
    base = _labelmap(list(baseline_masks.values()), baseline_grid, lo, hi)
    f_lo, f_hi = _box_around(list(followup_masks.values()), followup_grid, 2.0)
    f_region = crop(followup_grid, f_lo, f_hi)
    follow = _labelmap(list(followup_masks.values()), followup_grid, f_lo, f_hi)
    transform = sitk.AffineTransform(3)
    lps = LPS_TO_RAS @ registration.baseline_to_followup @ LPS_TO_RAS
    transform.SetMatrix(lps[:3, :3].ravel().tolist())
    transform.SetTranslation(lps[:3, 3].tolist())
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(to_sitk_image(Volume(np.zeros(region.shape_kji, np.uint8), region.ijk_to_ras)))
    resampler.SetTransform(transform)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(0)
    moved = sitk.GetArrayFromImage(resampler.Execute(to_sitk_image(Volume(follow, f_region.ijk_to_ras))))
    pairs = np.zeros((len(names_b) + 1, len(names_f) + 1), np.int64)
    np.add.at(pairs, (base.ravel().astype(np.int64), moved.ravel().astype(np.int64)), 1)
    size_b = pairs[1:, :].sum(axis=1)  # voxels of each baseline lesion
    size_f = pairs[:, 1:].sum(axis=0)  # voxels of each moved follow-up lesion on the baseline grid
    return pairs[1:, 1:] / np.maximum(np.minimum(size_b[:, None], size_f[None, :]), 1)


def match_lesions(baseline_masks: dict[str, Volume], baseline_grid: Volume, followup_masks: dict[str, Volume],
                  followup_grid: Volume, registration: Registration, user_pairs: dict[str, str | None] | None = None,
                  centroids: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
                  min_overlap: float = MIN_OVERLAP, max_centroid_mm: float = MAX_CENTROID_MM) -> Matching:
    """Pair each baseline lesion with at most one follow-up lesion (module docstring). ``user_pairs``:
    baseline lesion → follow-up lesion (None: "not present at this visit"), applied first and kept."""
    from scipy.optimize import linear_sum_assignment

    user_pairs = dict(user_pairs or {})
    names_b, names_f = list(baseline_masks), list(followup_masks)
    for b, f in user_pairs.items():
        if b not in names_b:
            raise InputError(f"lesion match {b}={f}: no baseline lesion {b!r}; baseline lesions: {', '.join(names_b)}")
        if f is not None and f not in names_f:
            raise InputError(f"lesion match {b}={f}: no follow-up lesion {f!r}; follow-up lesions: {', '.join(names_f)}")
    overlaps = overlap_matrix(baseline_masks, baseline_grid, followup_masks, followup_grid, registration) \
        if names_b and names_f else np.zeros((len(names_b), len(names_f)))
    free_b = [n for n, b in enumerate(names_b) if b not in user_pairs]
    taken = {f for f in user_pairs.values() if f is not None}
    free_f = [n for n, f in enumerate(names_f) if f not in taken]
    chosen: dict[str, tuple[str, float]] = {}
    by_centroid: set[str] = set()
    if free_b and free_f:
        sub = overlaps[np.ix_(free_b, free_f)]
        rows, cols = linear_sum_assignment(-sub)
        for r, c in zip(rows, cols):
            if sub[r, c] >= min_overlap:
                chosen[names_b[free_b[r]]] = (names_f[free_f[c]], float(sub[r, c]))

    def distance(b: str, f: str | None) -> float | None:
        if f is None or centroids is None:
            return None
        moved = registration.followup_to_baseline @ np.append(centroids[1][f], 1.0)
        return round(float(np.linalg.norm(moved[:3] - centroids[0][b])), 2)

    if centroids is not None:  # the lesions overlap left alone: the nearest centroids, if close enough
        left_b = [b for b in names_b if b not in user_pairs and b not in chosen]
        left_f = [f for f in names_f if f not in taken and f not in {v[0] for v in chosen.values()}]
        near = sorted((distance(b, f), b, f) for b in left_b for f in left_f)
        for gap, b, f in near:
            if gap <= max_centroid_mm and b not in chosen and f not in {v[0] for v in chosen.values()}:
                chosen[b] = (f, float(overlaps[names_b.index(b), names_f.index(f)]))
                by_centroid.add(b)

    matches = []
    for n, b in enumerate(names_b):
        if b in user_pairs:
            f = user_pairs[b]
            value = float(overlaps[n, names_f.index(f)]) if f is not None else 0.0
            matches.append(LesionMatch(b, f, round(value, 4), distance(b, f), "user"))
        elif b in chosen:
            f, value = chosen[b]
            matches.append(LesionMatch(b, f, round(value, 4), distance(b, f),
                                       "centroid" if b in by_centroid else "overlap"))
        else:
            matches.append(LesionMatch(b, None, 0.0, None, "none"))
    used = {m.followup for m in matches if m.followup is not None}
    table = {b: {f: round(float(overlaps[i, j]), 4) for j, f in enumerate(names_f) if overlaps[i, j] > 0}
             for i, b in enumerate(names_b)}
    return Matching(matches, [f for f in names_f if f not in used], table)


def grid_of(volume: Volume) -> Volume:
    """An empty volume with ``volume``'s geometry (for placing masks)."""
    return Volume(np.broadcast_to(np.uint8(0), volume.shape_kji), volume.ijk_to_ras, volume.name)

