"""Calipers on true axial planes, in physical millimetres, as a radiologist draws them.

A radiologist measures a liver lesion on axial slices, and Slicer's Red view shows planes of constant S
(patient superior) whatever the acquisition's direction matrix. :func:`axial_frame` puts a mask on such
planes: when one of the grid's axes already runs along S (any axial acquisition, flipped or rotated in
plane, with any voxel size), its slices are axial and its voxels are used as they are (a transposed view,
no resampling); otherwise (a tilted, oblique grid) the mask is resampled, nearest neighbour at the finest
voxel size, onto a grid whose axes run along R, A and S: what the slice view displays.

On each axial plane the longest diameter is the largest distance between two voxel centres of the lesion
(the 2-D Feret diameter, exactly what ITK's ``LabelShapeStatisticsImageFilter`` reports), found on the
convex hull of the boundary voxels. The caliper then runs from the outer edge of one end voxel to the
outer edge of the other: half a voxel's in-plane extent along the caliper is added at each end, so a
caliper measures what calipers drawn on the screen across the lesion measure. The perpendicular diameter
(the bidimensional product of EASL and WHO) is the longest chord perpendicular to the caliper in the
same plane, measured the same way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.geometry import Volume, bounding_box, crop, ijk_to_ras_from, resample_to_reference

logger = logging.getLogger(__name__)

#: a grid axis whose direction is within this of ±S (|cos| > 1 − tolerance) gives axial slices as they are
AXIS_TOLERANCE = 1e-4


@dataclass
class Caliper(JsonRecord):
    """A measured line: its two ends (RAS mm), its length (mm) and how it was obtained.

    ``centre_to_centre_mm`` is the distance between the centres of the two end voxels (ITK's Feret
    diameter); ``voxel_extent_mm`` the in-plane extent of one voxel along the line, half of which is added
    at each end (0 for a line drawn by hand). ``manual``: the line was placed or moved by a person.
    """

    start_ras: tuple[float, float, float]
    end_ras: tuple[float, float, float]
    length_mm: float
    centre_to_centre_mm: float = 0.0
    voxel_extent_mm: float = 0.0
    manual: bool = False

    @classmethod
    def drawn(cls, start_ras, end_ras) -> "Caliper":
        """A line a person placed (e.g. a markup line's two ends): its length is the distance between them."""
        start, end = np.asarray(start_ras, float), np.asarray(end_ras, float)
        length = float(np.linalg.norm(end - start))
        return cls(_point(start), _point(end), length, length, 0.0, manual=True)

    @property
    def midpoint_ras(self) -> np.ndarray:
        return (np.asarray(self.start_ras) + np.asarray(self.end_ras)) / 2.0


@dataclass
class AxialDiameters(JsonRecord):
    """The longest axial diameter of a mask and the longest diameter perpendicular to it in the same plane
    (None for an empty mask). ``frame``: ``native`` (the grid's own slices are axial) or ``resampled``."""

    longest: Caliper | None = None
    perpendicular: Caliper | None = None
    frame: str = "native"

    @property
    def length_mm(self) -> float:
        return self.longest.length_mm if self.longest is not None else 0.0

    @property
    def perpendicular_mm(self) -> float:
        return self.perpendicular.length_mm if self.perpendicular is not None else 0.0

    @property
    def product_mm2(self) -> float:
        """Bidimensional product (mm²): longest × perpendicular."""
        return self.length_mm * self.perpendicular_mm


def _point(values) -> tuple[float, float, float]:
    return tuple(round(float(v), 4) for v in values)  # type: ignore[return-value]


# --- the axial frame ----------------------------------------------------------------------------
def axial_axis(volume: Volume) -> int | None:
    """The array axis (0 = k, 1 = j, 2 = i) whose direction runs along ±S, or None for a tilted grid."""
    s_part = np.abs(volume.direction[2, :])  # |S component| of the i, j, k directions
    ijk = int(np.argmax(s_part))
    return 2 - ijk if s_part[ijk] > 1.0 - AXIS_TOLERANCE else None


def axial_frame(mask: Volume) -> Volume:
    """``mask`` (binary) on a grid whose array axis 0 steps along S, so that ``array[k]`` is an axial plane.

    A grid with an axis along S is transposed (a view, voxels untouched, ``metadata["axial_frame"] =
    "native"``); a tilted grid is resampled around the mask, nearest neighbour, onto an R/A/S grid at its
    finest voxel size (``"resampled"``), as Slicer's slice views reslice it.
    """
    axis = axial_axis(mask)
    if axis is not None:
        order = [axis] + [a for a in (0, 1, 2) if a != axis]
        matrix = mask.ijk_to_ras.copy()
        for new_axis, old_axis in enumerate(order):  # array axis n ↔ ijk column 2 − n
            matrix[:3, 2 - new_axis] = mask.ijk_to_ras[:3, 2 - old_axis]
        return Volume(np.transpose(mask.array, order), matrix, mask.name, {**mask.metadata, "axial_frame": "native"})
    present = mask.array > 0
    if not present.any():
        return Volume(np.zeros((1, 1, 1), np.uint8), ijk_to_ras_from([1, 1, 1]), mask.name,
                      {**mask.metadata, "axial_frame": "resampled"})
    lo, hi = bounding_box(present, (1, 1, 1))
    box = crop(mask, lo, hi)
    edges = box.bounds_ras()
    step = float(np.min(mask.spacing))
    size = np.maximum(np.ceil((edges[1] - edges[0]) / step).astype(int), 1)  # i (R), j (A), k (S)
    target = Volume(np.zeros(tuple(size[::-1]), np.uint8), ijk_to_ras_from([step] * 3, np.eye(3), edges[0] + step / 2))
    sampled = resample_to_reference(Volume((box.array > 0).astype(np.uint8), box.ijk_to_ras), target, "nearest",
                                    min_overlap=0.0)
    return Volume(np.asarray(sampled.array), target.ijk_to_ras, mask.name, {**mask.metadata, "axial_frame": "resampled"})


# --- one plane ----------------------------------------------------------------------------------
def _plane_points(frame: Volume, k: int, plane: np.ndarray, boundary_only: bool) -> np.ndarray:
    """RAS (N, 3) of the voxel centres of ``plane`` (array ``frame.array[k]``), the boundary ones only if asked."""
    if boundary_only and plane.sum() > 8:
        from scipy.ndimage import binary_erosion

        plane = plane & ~binary_erosion(plane, border_value=0)
    jj, ii = np.nonzero(plane)
    return frame.ijk_to_ras_points(np.stack([ii, jj, np.full(ii.shape, k)], axis=1).astype(np.float64))


def farthest_pair(points: np.ndarray) -> tuple[int, int, float]:
    """Indices of the two points farthest apart (in R and A; the points lie on one axial plane) and
    their distance; the first such pair in the points' order wins a tie."""
    n = len(points)
    if n < 2:
        return 0, 0, 0.0
    flat = points[:, :2]
    candidates = np.arange(n)
    if n > 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            candidates = np.sort(ConvexHull(flat).vertices)
        except QhullError:  # all on one line: its two extreme points
            axis = flat[-1] - flat[0] if np.any(flat[-1] != flat[0]) else np.array([1.0, 0.0])
            along = flat @ axis
            candidates = np.array(sorted({int(np.argmin(along)), int(np.argmax(along))}))
    sub = flat[candidates]
    distances = np.sqrt(((sub[:, None, :] - sub[None, :, :]) ** 2).sum(axis=-1))
    a, b = np.unravel_index(int(np.argmax(distances)), distances.shape)
    return int(candidates[min(a, b)]), int(candidates[max(a, b)]), float(distances[a, b])


def _extent_along(frame: Volume, direction: np.ndarray) -> float:
    """In-plane extent (mm) of one voxel of ``frame`` along a unit direction of the axial plane."""
    return float(abs(direction @ frame.ijk_to_ras[:3, 0]) + abs(direction @ frame.ijk_to_ras[:3, 1]))


def _in_plane_unit(vector: np.ndarray) -> np.ndarray:
    flat = np.array([vector[0], vector[1], 0.0])
    norm = float(np.linalg.norm(flat))
    return flat / norm if norm > 0 else np.array([1.0, 0.0, 0.0])


def _longest_in_plane(frame: Volume, k: int, plane: np.ndarray) -> Caliper:
    points = _plane_points(frame, k, plane, boundary_only=True)
    a, b, distance = farthest_pair(points)
    if distance == 0.0:  # one voxel: the caliper spans it along i
        u = _in_plane_unit(frame.ijk_to_ras[:3, 0])
    else:
        u = _in_plane_unit(points[b] - points[a])
    extent = _extent_along(frame, u)
    start, end = points[a] - u * extent / 2, points[b] + u * extent / 2
    return Caliper(_point(start), _point(end), distance + extent, distance, extent)


def _perpendicular_in_plane(frame: Volume, k: int, plane: np.ndarray, longest: Caliper) -> Caliper:
    """The longest chord of ``plane`` perpendicular to ``longest``: voxel centres binned along the caliper
    (bins one voxel wide), the largest spread across it, half a voxel added at each end."""
    points = _plane_points(frame, k, plane, boundary_only=False)
    u = _in_plane_unit(np.asarray(longest.end_ras) - np.asarray(longest.start_ras))
    v = np.array([-u[1], u[0], 0.0])
    origin = np.asarray(longest.start_ras)
    x, y = (points - origin) @ u, (points - origin) @ v
    width = float(min(np.linalg.norm(frame.ijk_to_ras[:3, 0]), np.linalg.norm(frame.ijk_to_ras[:3, 1])))
    bins = np.floor((x - x.min()) / width).astype(int)
    count = int(bins.max()) + 1
    low, high = np.full(count, np.inf), np.full(count, -np.inf)
    np.minimum.at(low, bins, y)
    np.maximum.at(high, bins, y)
    best = int(np.argmax(high - low))
    chosen = bins == best
    at_low, at_high = np.flatnonzero(chosen & (y == low[best]))[0], np.flatnonzero(chosen & (y == high[best]))[0]
    along = (x[at_low] + x[at_high]) / 2.0
    extent = _extent_along(frame, v)
    plane_s = points[at_low][2]
    start = origin + u * along + v * (low[best] - extent / 2)
    end = origin + u * along + v * (high[best] + extent / 2)
    start[2] = end[2] = plane_s
    spread = float(high[best] - low[best])
    return Caliper(_point(start), _point(end), spread + extent, spread, extent)


# --- the lesion ---------------------------------------------------------------------------------
def measure_axial(mask: Volume, components: bool = False) -> AxialDiameters:
    """The longest axial diameter of a binary mask (any grid: oblique, anisotropic) and the longest
    diameter perpendicular to it on the same plane.

    The longest is the largest distance between voxel centres (the Feret diameter) over all planes, then
    extended to the end voxels' outer edges. ``components``: measure each in-plane connected part
    (8-connected) on its own and keep the longest, so a caliper never spans a gap between separate parts
    (mRECIST: the viable diameter does not include major intervening necrosis); otherwise the plane's voxels
    are one lesion (RECIST's whole tumour). Ties: the lowest plane, then the first part.
    """
    frame = axial_frame(mask)
    how = str(frame.metadata.get("axial_frame", "native"))
    present = frame.array > 0
    best: tuple[Caliper, int, np.ndarray] | None = None
    if components:
        from scipy.ndimage import label
    for k in np.flatnonzero(present.any(axis=(1, 2))):
        plane = present[k]
        parts = [plane]
        if components:
            labels, count = label(plane, structure=np.ones((3, 3), bool))
            parts = [labels == n for n in range(1, count + 1)]
        for part in parts:
            caliper = _longest_in_plane(frame, int(k), part)
            if best is None or caliper.centre_to_centre_mm > best[0].centre_to_centre_mm + 1e-9:
                best = (caliper, int(k), part)
    if best is None:
        return AxialDiameters(None, None, how)
    caliper, k, part = best
    return AxialDiameters(caliper, _perpendicular_in_plane(frame, k, part, caliper), how)


def plane_feret_diameters(mask: Volume) -> list[tuple[float, float]]:
    """``(S of the plane in mm, largest distance between voxel centres in it in mm)`` for every axial plane
    holding part of the mask: the per-slice 2-D Feret diameters ITK computes (for checking against it)."""
    frame = axial_frame(mask)
    present = frame.array > 0
    found = []
    for k in np.flatnonzero(present.any(axis=(1, 2))):
        points = _plane_points(frame, int(k), present[k], boundary_only=True)
        _, _, distance = farthest_pair(points)
        found.append((float(points[0][2]), distance))
    return found


def diameter_sd_mm(caliper: Caliper | None, reader_sd_mm: float) -> float:
    """Standard deviation (mm) of a diameter: the readers' SD and, for a measured caliper, where each end
    falls inside its voxel (uniform over one voxel extent: variance extent²/12 per end)."""
    if caliper is None or caliper.length_mm == 0.0:
        return 0.0
    return math.sqrt(reader_sd_mm ** 2 + caliper.voxel_extent_mm ** 2 / 6.0)
