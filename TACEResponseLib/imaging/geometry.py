"""Volumes that carry their geometry, and resampling between them.

A :class:`Volume` is a voxel array indexed ``[k, j, i]`` (slice, row, column — the order of
``slicer.util.arrayFromVolume`` and of SimpleITK's ``GetArrayFromImage``) plus the 4×4
IJK→RAS matrix that places voxel centres in patient space (mm, RAS as in Slicer). Spacing,
direction and origin are derived from that matrix, never stored twice, so they cannot
disagree. Files in LPS (DICOM, ITK) are converted at the reader, nowhere else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError

logger = logging.getLogger(__name__)

#: RAS <-> LPS flips the first two axes; the matrix is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

AXIS_NAMES = {"sagittal": 0, "coronal": 1, "axial": 2}  # index of the R, A, S world axis


@dataclass
class Volume:
    """Voxel array ``[k, j, i]`` with its IJK→RAS matrix (mm)."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        matrix = np.asarray(self.ijk_to_ras, dtype=np.float64)
        label = self.name or "volume"
        if matrix.shape != (4, 4):
            raise InputError(f"{label}: IJK→RAS matrix must be 4×4, got shape {matrix.shape}")
        if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
            raise InputError(f"{label}: IJK→RAS matrix is singular or not finite:\n{matrix}")
        self.ijk_to_ras = matrix

    # --- derived geometry -------------------------------------------------------------
    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm (norms of the matrix columns)."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3×3 matrix whose columns are the unit RAS directions of the i, j, k axes."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous IJK indices to (N, 3) RAS mm."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        """Map (N, 3) RAS mm to (N, 3) continuous IJK indices."""
        ras = np.atleast_2d(np.asarray(ras, dtype=np.float64))
        inverse = self.ras_to_ijk
        return ras @ inverse[:3, :3].T + inverse[:3, 3]

    def corners_ras(self) -> np.ndarray:
        """RAS of the 8 outer corners of the voxel grid (voxel edges, not centres)."""
        k, j, i = self.shape_kji
        lo, hi = -0.5, np.array([i, j, k]) - 0.5
        corners = np.array(
            [[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])]
        )
        return self.ijk_to_ras_points(corners)

    def bounds_ras(self) -> np.ndarray:
        """Axis-aligned RAS bounding box ``[[rmin, amin, smin], [rmax, amax, smax]]``."""
        corners = self.corners_ras()
        return np.stack([corners.min(axis=0), corners.max(axis=0)])

    def array_axis_for(self, axis: str | int) -> int:
        """Array axis (0 = k, 1 = j, 2 = i) that is closest to a named anatomical axis.

        ``"axial"`` gives the array axis whose IJK direction is most aligned with S, so
        slices along it are the axial slices even for oblique volumes. An int is taken as
        an array axis as is.
        """
        if isinstance(axis, (int, np.integer)):
            if int(axis) not in (0, 1, 2):
                raise InputError(f"slice axis must be 0, 1 or 2 (array axis), got {axis}")
            return int(axis)
        if axis not in AXIS_NAMES:
            raise InputError(f"slice axis must be one of {sorted(AXIS_NAMES)} or 0/1/2, got {axis!r}")
        world = AXIS_NAMES[axis]
        ijk_axis = int(np.argmax(np.abs(self.direction[world, :])))  # 0=i, 1=j, 2=k
        return 2 - ijk_axis

    def with_array(self, array: np.ndarray, name: str | None = None, **metadata: Any) -> "Volume":
        """Same geometry, new voxels (e.g. a heatmap or a mask in this grid)."""
        array = np.asarray(array)
        if array.shape[:3] != self.shape_kji:
            raise InputError(
                f"{name or self.name}: array shape {array.shape} does not match the grid {self.shape_kji}"
            )
        return Volume(array, self.ijk_to_ras.copy(), name or self.name, {**self.metadata, **metadata})

    def same_geometry(self, other: "Volume", atol: float = 1e-6) -> bool:
        return self.shape_kji == other.shape_kji and np.allclose(
            self.ijk_to_ras, other.ijk_to_ras, atol=atol
        )


def ijk_to_ras_from(
    spacing: Sequence[float], direction: np.ndarray | None = None, origin: Sequence[float] = (0, 0, 0)
) -> np.ndarray:
    """Build an IJK→RAS matrix from spacing (i, j, k mm), direction columns and origin (RAS)."""
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.asarray(spacing, dtype=np.float64)
    matrix[:3, 3] = origin
    return matrix


def rotation_matrix(degrees: Sequence[float]) -> np.ndarray:
    """Rotation about R, then A, then S by the given angles in degrees (for oblique grids)."""
    rx, ry, rz = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    about_r = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_a = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_s = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_s @ about_a @ about_r


# --- checks ---------------------------------------------------------------------------
def check_volume(volume: Volume, label: str | None = None, allow_nan: bool = False) -> Volume:
    """Refuse inputs that would fail later in obscure ways: 2-D, empty, NaN voxels."""
    label = label or volume.name or "volume"
    if volume.array.ndim != 3:
        raise InputError(f"{label}: expected a 3-D volume, got an array of shape {volume.array.shape}")
    if min(volume.array.shape) < 2:
        raise InputError(
            f"{label}: volume is 2-D (shape {volume.array.shape}, a single slice); a 3-D volume is needed"
        )
    if volume.array.size == 0:
        raise InputError(f"{label}: volume is empty")
    if not allow_nan and np.issubdtype(volume.array.dtype, np.floating):
        low, high = value_range_of(volume)
        if not (np.isfinite(low) and np.isfinite(high)):
            bad = int(np.count_nonzero(~np.isfinite(volume.array)))
            raise InputError(f"{label}: {bad} voxels are NaN or infinite")
    return volume


def _signature(array: np.ndarray) -> list:
    return [int(array.ctypes.data), list(array.shape), list(array.strides), array.dtype.str]


def value_range_of(volume: Volume) -> tuple[float, float]:
    """:func:`value_range` of a volume's voxels, computed once: kept in its metadata for that very
    array (same buffer, shape, strides and type), so the checks after reading do not scan the
    voxels again. (Voxels changed in place after that are not seen.)"""
    signature = _signature(volume.array)
    known = volume.metadata.get("value_range")
    if isinstance(known, dict) and known.get("array") == signature:
        low, high = known["range"]
        return float(low), float(high)
    low, high = value_range(volume.array)
    volume.metadata["value_range"] = {"range": [low, high], "array": signature}
    return low, high


def value_range(array: np.ndarray, block_bytes: int = 1 << 22) -> tuple[float, float]:
    """``(min, max)`` of an array in one pass over memory (blocks small enough to stay in the cache
    between the two reductions); NaN when any value is NaN, ±inf when one is infinite."""
    flat = array.reshape(-1) if array.flags.c_contiguous else np.ravel(array)
    if flat.size == 0:
        return float("nan"), float("nan")
    step = max(1, block_bytes // max(1, flat.itemsize))
    low, high = float("inf"), float("-inf")
    for start in range(0, flat.size, step):
        block = flat[start:start + step]
        block_low, block_high = float(block.min()), float(block.max())
        if block_low != block_low or block_high != block_high:  # NaN
            return float("nan"), float("nan")
        low, high = min(low, block_low), max(high, block_high)
    return low, high


def crop(volume: Volume, lo_kji: Sequence[int], hi_kji: Sequence[int]) -> Volume:
    """The sub-volume ``array[lo:hi]`` (a view) with its own exact IJK→RAS (origin moved to ``lo``)."""
    lo = np.clip(np.asarray(lo_kji, int), 0, volume.shape_kji)
    hi = np.clip(np.asarray(hi_kji, int), lo, volume.shape_kji)
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] = volume.ijk_to_ras_points(lo[::-1][None].astype(float))[0]
    array = volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return Volume(array, matrix, volume.name, {**volume.metadata, "crop_offset_kji": lo.tolist()})


def grid_offset(mask: Volume, reference: Volume) -> np.ndarray | None:
    """Index ``(k, j, i)`` of ``mask``'s first voxel in ``reference`` when ``mask`` is (a box of)
    the reference grid — same spacing and directions, origin on a reference voxel — else None."""
    if mask.same_geometry(reference):
        return np.zeros(3, int)
    if not np.allclose(mask.ijk_to_ras[:3, :3], reference.ijk_to_ras[:3, :3], atol=1e-6):
        return None
    ijk = reference.ras_to_ijk_points(mask.origin[None])[0]
    if not np.allclose(ijk, np.round(ijk), atol=1e-4):
        return None
    offset = np.round(ijk).astype(int)[::-1]
    if np.any(offset < 0) or np.any(offset + np.asarray(mask.shape_kji) > np.asarray(reference.shape_kji)):
        return None
    return offset


def in_grid(volume: Volume, reference: Volume, fill: float = 0) -> np.ndarray:
    """``volume``'s voxels on ``reference``'s whole grid, ``fill`` outside: ``volume`` is that grid or a
    box of it (:func:`grid_offset`; e.g. a heatmap covering only its patches). InputError otherwise."""
    offset = grid_offset(volume, reference)
    if offset is None:
        raise InputError(f"{volume.name or 'volume'}: not on the grid of {reference.name or 'the reference'} "
                         "nor a box of it")
    if volume.same_geometry(reference):
        return volume.array
    full = np.full(reference.shape_kji, fill, dtype=volume.array.dtype)
    hi = offset + np.asarray(volume.shape_kji)
    full[offset[0]:hi[0], offset[1]:hi[1], offset[2]:hi[2]] = volume.array
    return full


def bounding_box(mask: np.ndarray, margin_kji: Sequence[int] = (0, 0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` index box (hi exclusive) of the non-zero voxels, grown by ``margin_kji``, clipped."""
    present = [np.nonzero(np.any(mask, axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1))]
    if any(p.size == 0 for p in present):
        raise InputError("bounding box of an empty mask")
    lo = np.array([p[0] for p in present]) - np.asarray(margin_kji, int)
    hi = np.array([p[-1] + 1 for p in present]) + np.asarray(margin_kji, int)
    return np.clip(lo, 0, mask.shape), np.clip(hi, 0, mask.shape)


def overlap_fraction(a: Volume, b: Volume) -> float:
    """Fraction of ``a``'s RAS bounding box volume that ``b``'s bounding box covers."""
    box_a, box_b = a.bounds_ras(), b.bounds_ras()
    lo, hi = np.maximum(box_a[0], box_b[0]), np.minimum(box_a[1], box_b[1])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    return inter / float(np.prod(box_a[1] - box_a[0]))


# --- resampling -----------------------------------------------------------------------
Interpolation = Literal["linear", "nearest"]


def _lps_geometry(ijk_to_ras: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """ITK's spacing, direction (row-major) and origin (LPS) of an IJK→RAS matrix."""
    ijk_to_lps = LPS_TO_RAS @ ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    return ([float(s) for s in spacing], [float(v) for v in (ijk_to_lps[:3, :3] / spacing).ravel()],
            [float(v) for v in ijk_to_lps[:3, 3]])


def to_sitk_image(volume: Volume):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    spacing, direction, origin = _lps_geometry(volume.ijk_to_ras)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    return image


class _ImageBuffer:
    """Exposes a SimpleITK image's voxel buffer to numpy and keeps the image alive while an array
    uses it: the array *is* the image's memory, no copy (the image belongs to this array alone)."""

    def __init__(self, image) -> None:
        import SimpleITK as sitk

        self.image = image
        interface = dict(sitk.GetArrayViewFromImage(image).__array_interface__)
        interface["data"] = (interface["data"][0], False)  # writable, as a copy would be
        self.__array_interface__ = interface


def array_of(image) -> np.ndarray:
    """The voxels ``[k, j, i]`` of a SimpleITK image without copying them (the array keeps the image)."""
    return np.asarray(_ImageBuffer(image))


def support_box(moving: Volume, reference: Volume, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` index box of ``moving`` (``kji``, hi exclusive, clipped) holding every voxel that
    resampling it onto ``reference``'s grid can touch: the reference voxel centres mapped into
    ``moving``, plus ``margin`` voxels for the interpolation's neighbours."""
    k, j, i = reference.shape_kji
    corners = np.array([[x, y, z] for x in (0, i - 1) for y in (0, j - 1) for z in (0, k - 1)], dtype=np.float64)
    ijk = moving.ras_to_ijk_points(reference.ijk_to_ras_points(corners))
    lo = (np.floor(ijk.min(axis=0)).astype(int) - margin)[::-1]
    hi = (np.ceil(ijk.max(axis=0)).astype(int) + margin + 1)[::-1]
    shape = np.asarray(moving.shape_kji)
    return np.clip(lo, 0, shape), np.clip(hi, 0, shape)


def resample_to_reference(
    moving: Volume,
    reference: Volume,
    interpolation: Interpolation = "linear",
    default_value: float = 0.0,
    min_overlap: float = 0.05,
) -> Volume:
    """Resample ``moving`` onto ``reference``'s voxel grid (physical space, any directions).

    Linear for images, nearest for labelmaps. Assumes the two are co-registered (same
    patient space). Refuses volumes whose physical extents do not overlap, since that
    means a wrong phase, a wrong patient or a missing registration. Only the part of
    ``moving`` that the reference grid reaches (:func:`support_box`) is converted and checked,
    so resampling a large volume onto a small region costs what the region costs.
    """
    if reference.same_geometry(moving, atol=1e-9):
        check_volume(moving, allow_nan=False)
        return Volume(moving.array.copy(), reference.ijk_to_ras.copy(), moving.name, dict(moving.metadata))
    fraction = overlap_fraction(reference, moving)
    if fraction < min_overlap:
        raise InputError(
            f"{moving.name or 'moving volume'} and {reference.name or 'reference volume'}: physical extents "
            f"overlap {fraction:.1%} of the reference (need ≥ {min_overlap:.0%}); are they the same patient, "
            "co-registered, with correct origins?"
        )
    import SimpleITK as sitk

    lo, hi = support_box(moving, reference)
    if np.all(hi > lo):  # the same samples: every reference point inside moving lies inside the box
        moving = crop(moving, lo, hi)
    check_volume(moving, label=moving.name or "moving volume", allow_nan=False)
    resampler = sitk.ResampleImageFilter()
    spacing, direction, origin = _lps_geometry(reference.ijk_to_ras)
    resampler.SetSize([int(n) for n in reference.shape_kji[::-1]])
    resampler.SetOutputSpacing(spacing)
    resampler.SetOutputDirection(direction)
    resampler.SetOutputOrigin(origin)
    resampler.SetInterpolator(sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(float(default_value))
    moving_image = to_sitk_image(moving)
    if interpolation == "linear" and not np.issubdtype(moving.array.dtype, np.floating):
        moving_image = sitk.Cast(moving_image, sitk.sitkFloat32)
    out = array_of(resampler.Execute(moving_image))
    return Volume(out, reference.ijk_to_ras.copy(), moving.name, dict(moving.metadata))
