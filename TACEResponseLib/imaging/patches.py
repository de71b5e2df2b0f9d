"""Tumour patches for the networks, each with the provenance needed to put a heatmap back.

Two published sampling strategies:

``largest_slice`` (Peng 2019)
    The slice with the largest ROI area along the chosen axis and its nearest ROI slices
    (3 patches in all by default). In each, the largest square (in mm, so anisotropic
    in-plane spacing gives a non-square pixel box) that lies wholly inside the ROI, nearest
    to the ROI centroid, resampled to ``size``×``size``; CT window → [0, 1] (MRI: volume
    percentiles → [0, 1]).
``centroid`` (Zhang 2020)
    One ``size``×``size`` patch centred on the ROI centroid of the largest-ROI slice, field
    of view in mm configurable (default: ``size`` native pixels, as in the paper), z-scored
    with the ROI's voxels.

Slices are taken along an array axis of the reference volume (no reformatting), so every
patch pixel maps back to the reference grid by one affine: ``PatchProvenance.patch_to_ijk``
takes a patch pixel ``(u = column, v = row)`` to continuous IJK, and ``patch_to_ras`` to RAS.
The patch is sampled through that same affine, so provenance and pixels cannot disagree.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.geometry import (
    Volume,
    bounding_box,
    check_volume,
    crop,
    grid_offset,
    resample_to_reference,
    support_box,
)

logger = logging.getLogger(__name__)

Strategy = Literal["largest_slice", "centroid"]

#: largest patch side in pixels (a 1024² patch is already 4× what the published networks take)
MAX_PATCH_SIZE = 1024
Normalization = Literal["window", "percentile", "roi_percentile", "zscore"]
NORMALIZATIONS = ("window", "percentile", "roi_percentile", "zscore")
#: what each normalisation does (the card and the CLI say it in these words)
NORMALIZATION_TEXT = {
    "window": "CT window (HU) → [0, 1]",
    "percentile": "percentiles of the image around the tumours → [0, 1]",
    "roi_percentile": "percentiles inside the tumour ROI → [0, 1]",
    "zscore": "z-score with the tumour ROI's mean and SD",
}
SinglePhaseChannels = Literal["repeat", "neighbours"]


@dataclass
class PatchSpec(JsonRecord):
    """How patches are cut and normalised; stored in a model bundle so inference matches training."""

    strategy: Strategy = "largest_slice"
    size: int = 224
    axis: str | int = "axial"
    n_slices: int = 3
    min_square_mm: float = 8.0
    fov_mm: float | None = None
    normalization: Normalization = "window"
    window: tuple[float, float] = (-160.0, 240.0)
    percentiles: tuple[float, float] = (1.0, 99.0)
    single_phase_channels: SinglePhaseChannels = "repeat"
    n_channels: int = 3
    #: normalisation per input image in channel order (None: ``normalization`` for every input)
    normalizations: list[str] | None = None
    #: resample along the slice axis to this spacing (mm) before choosing slices (None: as acquired)
    slice_spacing_mm: float | None = None

    def __post_init__(self) -> None:
        if self.strategy not in ("largest_slice", "centroid"):
            raise InputError(f"patch strategy must be 'largest_slice' or 'centroid', got {self.strategy!r}")
        for value in [self.normalization, *(self.normalizations or [])]:
            if value not in NORMALIZATIONS:
                raise InputError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {value!r}")
        if self.normalizations is not None:
            self.normalizations = [str(v) for v in self.normalizations]
            if not self.normalizations:
                raise InputError("normalizations: one per input image, got an empty list")
        if self.slice_spacing_mm is not None and not (math.isfinite(float(self.slice_spacing_mm))
                                                      and 0.1 <= float(self.slice_spacing_mm) <= 20):
            raise InputError(f"slice spacing to resample to must be 0.1–20 mm, got {self.slice_spacing_mm!r}")
        if self.single_phase_channels not in ("repeat", "neighbours"):
            raise InputError(f"single_phase_channels must be 'repeat' or 'neighbours', got {self.single_phase_channels!r}")
        if not (8 <= self.size <= MAX_PATCH_SIZE) or self.n_slices < 1 or self.n_channels < 1:
            raise InputError(f"patch size must be 8–{MAX_PATCH_SIZE} pixels, n_slices ≥ 1 and n_channels ≥ 1; "
                             f"got size {self.size}, n_slices {self.n_slices}, n_channels {self.n_channels}")
        if not (math.isfinite(float(self.min_square_mm)) and self.min_square_mm >= 0):
            raise InputError(f"minimum square must be a number of mm ≥ 0, got {self.min_square_mm!r}")
        if self.fov_mm is not None and not (math.isfinite(float(self.fov_mm)) and self.fov_mm > 0):
            raise InputError(f"patch field of view must be a positive number of mm, got {self.fov_mm!r}")
        if not all(math.isfinite(float(v)) for v in self.window) or self.window[1] <= self.window[0]:
            raise InputError(f"intensity window must be (low, high) with low < high, got {self.window}")
        if not (0 <= self.percentiles[0] < self.percentiles[1] <= 100):
            raise InputError(f"percentiles must be (low, high) with 0 ≤ low < high ≤ 100, got {self.percentiles}")
        self.window = (float(self.window[0]), float(self.window[1]))
        self.percentiles = (float(self.percentiles[0]), float(self.percentiles[1]))

    def normalization_for(self, index: int) -> str:
        """The normalisation of input image ``index`` (channel order)."""
        if self.normalizations is None:
            return self.normalization
        if index >= len(self.normalizations):
            raise InputError(f"patch spec names {len(self.normalizations)} normalisation(s) but input image "
                             f"{index + 1} was given")
        return self.normalizations[index]

    def describe_normalization(self, index: int) -> str:
        """Words for input ``index``'s normalisation, with its window or percentiles."""
        name = self.normalization_for(index)
        detail = {"window": f" [{self.window[0]:g}, {self.window[1]:g}] HU",
                  "percentile": f" {self.percentiles[0]:g}–{self.percentiles[1]:g}",
                  "roi_percentile": f" {self.percentiles[0]:g}–{self.percentiles[1]:g}"}.get(name, "")
        return f"{name}{detail}: {NORMALIZATION_TEXT[name]}"

    def channels_for(self, n_phases: int) -> int:
        """Number of channels the patches will have for ``n_phases`` input images."""
        if n_phases > 1:
            return n_phases
        return 3 if self.single_phase_channels == "neighbours" else self.n_channels


@dataclass
class PatchProvenance(JsonRecord):
    """Where a patch came from in the reference volume.

    ``box`` is the in-plane pixel box ``(row0, col0, rows, cols)`` of the slice (for
    ``largest_slice`` every pixel of it is inside the ROI; for ``centroid`` it is the
    continuous field of view and may reach outside the ROI). ``patch_to_ijk`` maps patch
    pixel ``(u, v, 0, 1)`` (column, row) to continuous reference IJK.
    """

    strategy: str
    slice_axis: int
    slice_index: int
    box: tuple[float, float, float, float]
    side_mm: tuple[float, float]
    patch_to_ijk: np.ndarray
    patch_to_ras: np.ndarray
    roi_area_mm2: float
    size: int

    @property
    def corners_ras(self) -> np.ndarray:
        """RAS of the patch's outer corners: top-left, top-right, bottom-left, bottom-right."""
        s = self.size - 0.5
        uv = np.array([[-0.5, -0.5, 0, 1], [s, -0.5, 0, 1], [-0.5, s, 0, 1], [s, s, 0, 1]])
        return (uv @ self.patch_to_ras.T)[:, :3]

    @property
    def center_ras(self) -> np.ndarray:
        c = (self.size - 1) / 2.0
        return (np.array([c, c, 0, 1]) @ self.patch_to_ras.T)[:3]

    json_derived = ("corners_ras", "center_ras")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "corners_ras": self.corners_ras.tolist(), "center_ras": self.center_ras.tolist()}


@dataclass
class PatchSet:
    """Patches ``(N, C, size, size)`` float32 with one provenance per patch."""

    images: np.ndarray
    provenance: list[PatchProvenance]
    spec: PatchSpec
    channel_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def translated(self, offset_kji: Sequence[int]) -> "PatchSet":
        """Provenance re-expressed on a larger grid whose voxel ``offset_kji`` is this grid's (0, 0, 0).

        Patches cut from a crop of the reference keep their RAS placement (``patch_to_ras``);
        indices (``patch_to_ijk``, slice index, box) move by the crop offset.
        """
        offset = np.asarray(offset_kji, int)
        shift = np.eye(4)
        shift[:3, 3] = offset[::-1]
        moved = []
        for prov in self.provenance:
            rows, cols = _plane_axes(prov.slice_axis)
            r0, c0, h, w = prov.box
            moved.append(replace(prov, slice_index=prov.slice_index + int(offset[prov.slice_axis]),
                                 box=(float(r0 + offset[rows]), float(c0 + offset[cols]), h, w), patch_to_ijk=shift @ prov.patch_to_ijk))
        return PatchSet(self.images, moved, self.spec, list(self.channel_names))


# --- in-plane helpers ---------------------------------------------------------------------
def _plane_axes(slice_axis: int) -> tuple[int, int]:
    """Array axes (rows, cols) of a slice taken along ``slice_axis``."""
    rows, cols = (a for a in (0, 1, 2) if a != slice_axis)
    return rows, cols


def _plane_spacing(volume: Volume, slice_axis: int) -> tuple[float, float]:
    """Pixel size (row, col) in mm of slices along ``slice_axis`` (array axis n ↔ ijk 2-n)."""
    rows, cols = _plane_axes(slice_axis)
    spacing_ijk = volume.spacing
    return float(spacing_ijk[2 - rows]), float(spacing_ijk[2 - cols])


def _patch_to_ijk(slice_axis: int, slice_index: int, row_edge: float, col_edge: float,
                  row_step: float, col_step: float) -> np.ndarray:
    """Affine from patch pixel (u, v, 0, 1) to IJK: pixel centre v ↦ row_edge + (v + ½)·row_step."""
    rows, cols = _plane_axes(slice_axis)
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1.0
    matrix[2 - cols, 0] = col_step
    matrix[2 - cols, 3] = col_edge + 0.5 * col_step
    matrix[2 - rows, 1] = row_step
    matrix[2 - rows, 3] = row_edge + 0.5 * row_step
    matrix[2 - slice_axis, 2] = 1.0  # the unused w axis points along the slice normal
    matrix[2 - slice_axis, 3] = float(slice_index)
    return matrix


def _window_fits(mask2d: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean map of top-left positions where a ``height``×``width`` box is all ROI."""
    rows, cols = mask2d.shape
    if height > rows or width > cols:
        return np.zeros((0, 0), bool)
    integral = np.zeros((rows + 1, cols + 1), np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask2d, axis=0, dtype=np.int64), axis=1)
    sums = (
        integral[height:, width:] - integral[:-height, width:] - integral[height:, :-width] + integral[:-height, :-width]
    )
    return sums == height * width


def largest_square(mask2d: np.ndarray, spacing_rc: tuple[float, float]) -> tuple[int, int, int, int] | None:
    """Largest box, square in mm, wholly inside ``mask2d``: ``(row0, col0, rows, cols)``.

    The box is ``h`` rows × ``round(h·row_mm / col_mm)`` columns for the largest feasible
    ``h`` (binary search; feasibility is monotone in ``h``). Among feasible positions the
    one whose centre is nearest (in mm) to the ROI centroid is chosen. ``None`` if no such
    box fits (empty ROI, or thinner than one pixel's width in the other direction).
    """
    mask2d = np.asarray(mask2d, dtype=bool)
    if not mask2d.any():
        return None
    row_mm, col_mm = spacing_rc
    r_idx, c_idx = np.nonzero(mask2d)
    r_lo, r_hi, c_lo, c_hi = r_idx.min(), r_idx.max() + 1, c_idx.min(), c_idx.max() + 1
    sub = mask2d[r_lo:r_hi, c_lo:c_hi]

    def width_for(h: int) -> int:
        return max(1, int(round(h * row_mm / col_mm)))

    lo, hi = 0, sub.shape[0]
    while lo < hi:  # largest h with a fitting box
        mid = (lo + hi + 1) // 2
        if _window_fits(sub, mid, width_for(mid)).any():
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:  # not even one row of the required width fits: no square in mm lies inside the ROI
        return None
    h, w = lo, width_for(lo)
    fits = _window_fits(sub, h, w)
    tops, lefts = np.nonzero(fits)
    centre_r, centre_c = r_idx.mean() - r_lo, c_idx.mean() - c_lo
    dist = ((tops + (h - 1) / 2 - centre_r) * row_mm) ** 2 + ((lefts + (w - 1) / 2 - centre_c) * col_mm) ** 2
    best = int(np.argmin(dist))
    return int(tops[best] + r_lo), int(lefts[best] + c_lo), h, w


def roi_slice_areas(mask: Volume, slice_axis: int) -> np.ndarray:
    """ROI area in mm² of every slice along ``slice_axis``."""
    row_mm, col_mm = _plane_spacing(mask, slice_axis)
    other = tuple(a for a in (0, 1, 2) if a != slice_axis)
    return np.count_nonzero(mask.array, axis=other) * row_mm * col_mm


def nearest_roi_slices(areas: np.ndarray, n: int) -> list[int]:
    """The largest-area slice, then the nearest ROI slices (ties: larger area, then lower index)."""
    present = np.nonzero(areas > 0)[0]
    if present.size == 0:
        return []
    largest = int(np.argmax(areas))
    others = sorted((int(s) for s in present if s != largest), key=lambda s: (abs(s - largest), -areas[s], s))
    return [largest] + others[: n - 1]


# --- sampling -------------------------------------------------------------------------------
def _sample(image: np.ndarray, slice_axis: int, patch_to_ijk: np.ndarray, size: int,
            clip_box: tuple[int, int, int, int] | None, channel_offset: int = 0) -> np.ndarray:
    """Sample a size×size patch of ``image`` through ``patch_to_ijk`` (bilinear in-plane).

    With ``clip_box`` the sample coordinates are clamped to that pixel box, so no pixel
    outside it (outside the ROI) contributes to the interpolation.
    """
    from scipy.ndimage import map_coordinates

    rows, cols = _plane_axes(slice_axis)
    slice_index = int(round(patch_to_ijk[2 - slice_axis, 3])) + channel_offset
    slice_index = int(np.clip(slice_index, 0, image.shape[slice_axis] - 1))
    plane = np.take(image, slice_index, axis=slice_axis).astype(np.float32, copy=False)
    u, v = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    uv = np.stack([u.ravel(), v.ravel(), np.zeros(u.size), np.ones(u.size)])
    ijk = patch_to_ijk @ uv
    r, c = ijk[2 - rows], ijk[2 - cols]
    if clip_box is not None:
        r0, c0, h, w = clip_box
        r, c = np.clip(r, r0, r0 + h - 1), np.clip(c, c0, c0 + w - 1)
    values = map_coordinates(plane, [r, c], order=1, mode="nearest")
    return values.reshape(size, size).astype(np.float32)


def _percentile_bounds(spec: PatchSpec, image: np.ndarray, label: str) -> tuple[float, float]:
    step = max(1, int(round((image.size / 2_000_000) ** (1 / 3))))  # ~2 M voxels is plenty
    lo, hi = np.percentile(image[::step, ::step, ::step], spec.percentiles)
    if hi <= lo:
        raise InputError(f"{label}: intensities are constant (percentiles {spec.percentiles} give {lo}); blank image?")
    return float(lo), float(hi)


def _normalizer(spec: PatchSpec, image: np.ndarray, mask: np.ndarray, label: str,
                bounds: tuple[float, float] | None = None, index: int = 0):
    """Return f(x) → normalised x for input ``index``, per the spec (``bounds``: precomputed percentiles)."""
    method = spec.normalization_for(index)
    if method == "window":
        lo, hi = spec.window
    elif method == "percentile":
        lo, hi = bounds if bounds is not None else _percentile_bounds(spec, image, label)
    elif method == "roi_percentile":
        values = image[mask > 0]
        lo, hi = (float(v) for v in np.percentile(values, spec.percentiles))
        if hi <= lo:
            hi = lo + 1.0
            logger.warning("%s: ROI intensities are constant; percentile scaling uses a width of 1", label)
    else:
        values = image[mask > 0].astype(np.float64)
        mean, std = float(values.mean()), float(values.std())
        if std <= 1e-6:
            std = 1.0
            logger.warning("%s: ROI intensities are constant; z-score uses std = 1", label)
        return lambda x: ((x - mean) / std).astype(np.float32)
    lo, hi = float(lo), float(hi)
    return lambda x: np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


class NotAssessableError(InputError):
    """No patch can be cut from this tumour; ``reason`` is a short code, the message says why.

    Codes: ``empty``, ``no_square`` (no square of the minimum size fits), ``image_edge`` (the
    patch would leave the image), ``outside_fov`` (outside another phase's field of view),
    ``constant`` (a phase is constant inside the tumour).
    """

    def __init__(self, label: str, reason: str, detail: str) -> None:
        super().__init__(f"{label}: {detail}")
        self.label = label
        self.reason = reason
        self.detail = detail


@dataclass
class NotAssessable:
    """Why a tumour gives no patch (the not-assessable row of a result)."""

    label: str
    reason: str
    detail: str

    @property
    def message(self) -> str:
        return f"{self.label}: {self.detail}"


def extract_patches(
    images: Sequence[Volume],
    mask: Volume,
    spec: PatchSpec | None = None,
    label: str = "ROI",
    edges: Literal["replicate", "refuse"] = "replicate",
    bounds: Sequence[tuple[float, float] | None] | None = None,
) -> PatchSet:
    """Cut patches from co-registered ``images`` (first = reference) inside ``mask``.

    All images and the mask must share the reference grid (resample first with
    :func:`TACEResponseLib.imaging.geometry.resample_to_reference`). One channel per image; a single
    image gives ``spec.n_channels`` repeated channels or the slice and its two neighbours.

    Args:
        edges: ``"replicate"`` samples beyond the image as its edge pixels; ``"refuse"`` (what
            prediction and training use) skips largest slices whose neighbour channels would
            leave the image and refuses a centroid field of view that leaves it.
        bounds: precomputed percentile bounds per image (``percentile`` normalisation).

    Raises:
        NotAssessableError: the mask is empty, no square of ``spec.min_square_mm`` fits, or
            the patch would leave the image (``edges="refuse"``).
    """
    spec = spec or PatchSpec()
    if not images:
        raise InputError("no image given to cut patches from")
    reference = check_volume(images[0], label=images[0].name or "reference volume")
    for n, image in enumerate(images):
        check_volume(image, label=image.name or f"phase {n}")
        if not image.same_geometry(reference):
            raise InputError(
                f"{image.name or f'phase {n}'}: not on the reference volume's grid; resample it onto "
                f"{reference.name or 'the reference'} first"
            )
    if not mask.same_geometry(reference):
        raise InputError(f"{label}: mask is not on the reference volume's grid; resample it first")
    if not np.any(mask.array):
        raise NotAssessableError(label, "empty", "segment is empty; draw the tumour first")

    slice_axis = reference.array_axis_for(spec.axis)
    areas = roi_slice_areas(mask, slice_axis)
    row_mm, col_mm = _plane_spacing(reference, slice_axis)
    bounds = list(bounds) if bounds is not None else [None] * len(images)
    normalizers = [_normalizer(spec, img.array, mask.array, img.name or f"phase {n}", bounds[n], n)
                   for n, img in enumerate(images)]
    n_planes = reference.shape_kji[slice_axis]
    needs_neighbours = len(images) == 1 and spec.single_phase_channels == "neighbours"

    plans: list[tuple[int, tuple[float, float, float, float], tuple[int, int, int, int] | None]] = []
    if spec.strategy == "largest_slice":
        best_side, at_edge = 0.0, 0
        for slice_index in nearest_roi_slices(areas, int(np.count_nonzero(areas))):
            if edges == "refuse" and needs_neighbours and not 0 < slice_index < n_planes - 1:
                at_edge += 1
                continue
            plane = np.take(mask.array, slice_index, axis=slice_axis) > 0
            box = largest_square(plane, (row_mm, col_mm))
            if box is None:
                continue
            side = min(box[2] * row_mm, box[3] * col_mm)
            best_side = max(best_side, side)
            if side + 1e-9 < spec.min_square_mm:
                continue
            plans.append((slice_index, tuple(float(b) for b in box), box))  # type: ignore[arg-type]
            if len(plans) == spec.n_slices:
                break
        if not plans:
            if at_edge == int(np.count_nonzero(areas)):
                raise NotAssessableError(label, "image_edge", "touches the first or last slice of the image: the "
                                         "neighbouring-slice channels of its patches would leave the image")
            raise NotAssessableError(
                label, "no_square",
                f"the largest square inside the ROI is {best_side:.1f} mm, smaller than the minimum of "
                f"{spec.min_square_mm:g} mm; is the tumour segmented completely?")
    else:
        slice_index = int(np.argmax(areas))
        plane = np.take(mask.array, slice_index, axis=slice_axis) > 0
        r_idx, c_idx = np.nonzero(plane)
        centre_r, centre_c = float(r_idx.mean()), float(c_idx.mean())
        h = spec.fov_mm / row_mm if spec.fov_mm else float(spec.size)
        w = spec.fov_mm / col_mm if spec.fov_mm else float(spec.size)
        r0, c0 = centre_r - h / 2 + 0.5, centre_c - w / 2 + 0.5
        if edges == "refuse":
            rows, cols = (reference.shape_kji[a] for a in _plane_axes(slice_axis))
            if r0 < -1e-6 or c0 < -1e-6 or r0 + h > rows + 1e-6 or c0 + w > cols + 1e-6 or (
                    needs_neighbours and not 0 < slice_index < n_planes - 1):
                raise NotAssessableError(label, "image_edge", f"too near the image edge: the {h * row_mm:.0f} mm "
                                         "field of view around its centroid would leave the image")
        plans.append((slice_index, (r0, c0, h, w), None))

    channel_names: list[str] = []
    patches, provenance = [], []
    for slice_index, (r0, c0, h, w), clip_box in plans:
        to_ijk = _patch_to_ijk(slice_axis, slice_index, r0 - 0.5, c0 - 0.5, h / spec.size, w / spec.size)
        channels: list[np.ndarray] = []
        names: list[str] = []
        if len(images) > 1:
            for image, norm in zip(images, normalizers):
                channels.append(norm(_sample(image.array, slice_axis, to_ijk, spec.size, clip_box)))
                names.append(image.name)
        elif spec.single_phase_channels == "neighbours":
            for offset in (-1, 0, 1):
                channels.append(normalizers[0](_sample(reference.array, slice_axis, to_ijk, spec.size, clip_box, offset)))
                names.append(f"{reference.name}[{offset:+d}]")
        else:
            base = normalizers[0](_sample(reference.array, slice_axis, to_ijk, spec.size, clip_box))
            channels = [base] * spec.n_channels
            names = [reference.name] * spec.n_channels
        channel_names = names
        patches.append(np.stack(channels))
        provenance.append(
            PatchProvenance(
                strategy=spec.strategy,
                slice_axis=slice_axis,
                slice_index=int(slice_index),
                box=(r0, c0, h, w),
                side_mm=(float(h * row_mm), float(w * col_mm)),
                patch_to_ijk=to_ijk,
                patch_to_ras=reference.ijk_to_ras @ to_ijk,
                roi_area_mm2=float(areas[slice_index]),
                size=spec.size,
            )
        )
    return PatchSet(np.stack(patches).astype(np.float32), provenance, spec, channel_names)


def working_margin_kji(reference: Volume, spec: PatchSpec, context_mm: float = 20.0) -> np.ndarray:
    """Voxels to keep around the ROIs so that every patch (and its intensity statistics) fits.

    In-plane: ``context_mm`` of surroundings, or half the centroid field of view if larger;
    along the slice axis: 2 slices (neighbour channels).
    """
    slice_axis = reference.array_axis_for(spec.axis)
    spacing_kji = reference.spacing[::-1]
    half_fov_mm = (spec.fov_mm / 2.0) if spec.fov_mm else (spec.size / 2.0) * float(spacing_kji.max())
    in_plane_mm = max(context_mm, half_fov_mm if spec.strategy == "centroid" else 0.0)
    margin = np.ceil(in_plane_mm / spacing_kji).astype(int) + 2
    margin[slice_axis] = 2
    return margin


def _coverage(image: Volume, region: Volume) -> np.ndarray:
    """1 where a voxel of ``region`` lies inside ``image``'s field of view, else 0 (uint8); only the
    part of ``image`` that ``region`` reaches is built."""
    lo, hi = support_box(image, region)
    part = crop(image, lo, hi)
    ones = part.with_array(np.ones(part.shape_kji, np.uint8))
    return resample_to_reference(ones, region, interpolation="nearest").array


def assess_patches(
    images: Sequence[Volume],
    masks: Sequence[Volume],
    spec: PatchSpec,
    labels: Sequence[str] | None = None,
    timings: dict[str, float] | None = None,
) -> list[PatchSet | NotAssessable]:
    """Patches of each tumour from co-registered images on any grids (first = reference), or why
    there are none.

    Each of ``masks`` lies on the reference grid or on a box of it (a crop with the same
    spacing and directions). Only the region around the tumours is resampled (their bounding
    box plus :func:`working_margin_kji`), which makes a 512×512×300 secondary phase cost what a
    small crop costs; percentile normalisation uses that region. The provenance is expressed on
    the full reference grid. A tumour gives a :class:`NotAssessable` (never an exception) when
    it is empty, no square of the minimum size fits, its patch would leave the image, a patch
    leaves another phase's field of view, or a phase is constant inside it. ``timings`` (if
    given) receives the seconds spent resampling and cutting patches.
    """
    import time

    start = time.perf_counter()
    if not images:
        raise InputError("no image given to cut patches from")
    # shape checks here; the values (NaN) are checked where patches come from: the region around the tumours
    reference = check_volume(images[0], label=images[0].name or "reference volume", allow_nan=True)
    labels = list(labels or [f"ROI {n + 1}" for n in range(len(masks))])
    boxes: list[tuple[np.ndarray, np.ndarray] | None] = []
    for mask, label in zip(masks, labels):
        offset = grid_offset(mask, reference)
        if offset is None:
            raise InputError(f"{label}: mask is not on the reference volume's grid; resample it first")
        present = mask.array > 0
        if not present.any():
            boxes.append(None)
            continue
        lo, hi = bounding_box(present)
        boxes.append((lo + offset, hi + offset))
    outcomes: list[PatchSet | NotAssessable | None] = [
        None if box is not None else NotAssessable(label, "empty", "segment is empty; draw the tumour first")
        for box, label in zip(boxes, labels)]
    present_boxes = [b for b in boxes if b is not None]
    if not present_boxes:
        return outcomes  # type: ignore[return-value]
    margin = working_margin_kji(reference, spec)
    shape = np.asarray(reference.shape_kji)
    lo = np.clip(np.min([b[0] for b in present_boxes], axis=0) - margin, 0, shape)
    hi = np.clip(np.max([b[1] for b in present_boxes], axis=0) + margin, 0, shape)
    region = check_volume(crop(reference, lo, hi), label=reference.name or "reference volume")
    aligned, coverage = [region], [None]
    for n, image in enumerate(images[1:], start=1):
        check_volume(image, label=image.name or f"phase {n}", allow_nan=True)
        if image.same_geometry(reference):
            aligned.append(check_volume(crop(image, lo, hi), label=image.name or f"phase {n}"))
            coverage.append(None)
        else:
            aligned.append(resample_to_reference(image, region))
            coverage.append(_coverage(image, region))
    bounds = [_percentile_bounds(spec, img.array, img.name or f"phase {n}")
              if spec.normalization_for(n) == "percentile" else None for n, img in enumerate(aligned)]
    resampled = time.perf_counter()
    for n, (mask, label, box) in enumerate(zip(masks, labels, boxes)):
        if box is None:
            continue
        # the tumour's own working box inside the region: what the region would give its patches
        t_lo = np.maximum(box[0] - margin, lo) - lo
        t_hi = np.minimum(box[1] + margin, hi) - lo
        local = np.zeros(tuple(t_hi - t_lo), np.uint8)
        offset = grid_offset(mask, reference)
        src_lo = np.maximum(lo + t_lo - offset, 0)
        src_hi = np.minimum(lo + t_hi - offset, np.asarray(mask.shape_kji))
        dst_lo = offset + src_lo - lo - t_lo
        dst_hi = dst_lo + (src_hi - src_lo)
        local[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = \
            mask.array[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]] > 0
        parts = [crop(img, t_lo, t_hi) for img in aligned]
        local_mask = parts[0].with_array(local, name=label)
        outcomes[n] = _assess_one(parts, local_mask, spec, label, bounds,
                                  [None if c is None else c[t_lo[0]:t_hi[0], t_lo[1]:t_hi[1], t_lo[2]:t_hi[2]]
                                   for c in coverage], offset=lo + t_lo)
    if timings is not None:
        timings["resample"] = timings.get("resample", 0.0) + resampled - start
        timings["patches"] = timings.get("patches", 0.0) + time.perf_counter() - resampled
    return outcomes  # type: ignore[return-value]


def _assess_one(parts: Sequence[Volume], mask: Volume, spec: PatchSpec, label: str,
                bounds: Sequence[tuple[float, float] | None], coverage: Sequence[np.ndarray | None],
                offset: np.ndarray) -> PatchSet | NotAssessable:
    """One tumour's patches on its working box (``offset`` = the box's place on the reference grid)."""
    inside = mask.array > 0
    for n, (part, cover) in enumerate(zip(parts, coverage)):
        name = part.name or f"phase {n}"
        values = part.array[inside] if cover is None else part.array[inside & (cover > 0)]
        if values.size and values.min() == values.max():
            return NotAssessable(label, "constant", f"phase {name!r} is constant inside the tumour (every voxel "
                                 f"{float(values.min()):g}); is it the right image, and does it cover the tumour?")
    slice_axis = mask.array_axis_for(spec.axis)
    steps = _slice_resampling(mask, slice_axis, spec.slice_spacing_mm)
    if steps is not None:
        parts = [_resample_along(p, slice_axis, steps) for p in parts]
        mask = _resample_along(mask, slice_axis, steps, binary=True)
        coverage = [None if c is None else (_resample_along(mask.with_array(c.astype(np.float32)), slice_axis, steps)
                                            .array >= 0.999).astype(np.uint8) for c in coverage]
    try:
        patches = extract_patches(parts, mask, spec, label=label, edges="refuse", bounds=bounds)
    except NotAssessableError as exc:
        return NotAssessable(label, exc.reason, exc.detail)
    for n, cover in enumerate(coverage):
        if cover is None:
            continue
        for prov in patches.provenance:
            clip = tuple(int(v) for v in prov.box) if spec.strategy == "largest_slice" else None
            sampled = _sample(cover.astype(np.float32), slice_axis, prov.patch_to_ijk, spec.size, clip)
            if sampled.min() < 0.999:
                slice_at = int(round(prov.slice_index * (steps[1] if steps is not None else 1.0))) + int(offset[slice_axis])
                return NotAssessable(label, "outside_fov", f"its patch on slice {slice_at} "
                                     f"leaves the field of view of phase {parts[n].name or f'phase {n}'!r}")
    if steps is not None:
        patches = _back_to_acquired_slices(patches, slice_axis, steps[1])
    return patches.translated(offset)


def _slice_resampling(volume: Volume, slice_axis: int, target_mm: float | None) -> tuple[int, float] | None:
    """``(n_resampled_slices, step)`` to resample along ``slice_axis`` to ``target_mm`` (step in acquired
    slices per resampled slice), or None when no resampling is asked for or needed."""
    if not target_mm:
        return None
    acquired = float(volume.spacing[2 - slice_axis])
    if abs(acquired - target_mm) < 1e-3 * target_mm:
        return None
    step = float(target_mm) / acquired
    n = int(np.floor((volume.shape_kji[slice_axis] - 1) / step + 1e-9)) + 1
    return n, step


def through_plane_warning(volume: Volume, spec: PatchSpec, label: str) -> str | None:
    """A warning when ``spec`` resamples ``volume`` to thinner slices than were acquired: the patches'
    slices then lie between acquired ones (interpolated, not measured). None when nothing is interpolated."""
    if not spec.slice_spacing_mm:
        return None
    acquired = float(volume.spacing[2 - volume.array_axis_for(spec.axis)])
    target = float(spec.slice_spacing_mm)
    if acquired <= target * 1.001:
        return None
    return (f"{label}: slices {acquired:.3g} mm apart, resampled to the model's {target:g} mm: the patches' slices "
            f"between acquired ones are interpolated (about {acquired / target:.0f} per acquired slice), so the network "
            "and the heatmap see no more through-plane detail than the acquired slices hold")


def _resample_along(volume: Volume, axis: int, steps: tuple[int, float], binary: bool = False) -> Volume:
    """``volume`` linearly resampled along array ``axis``: resampled slice k′ is acquired slice k′·step
    (a mask: interpolated, then ≥ 0.5). The IJK→RAS matrix follows, so RAS positions are kept."""
    n, step = steps
    position = np.arange(n) * step
    below = np.clip(np.floor(position).astype(int), 0, volume.shape_kji[axis] - 1)
    above = np.clip(below + 1, 0, volume.shape_kji[axis] - 1)
    weight = (position - below).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = n
    weight = weight.reshape(shape)
    data = volume.array.astype(np.float32, copy=False)
    values = np.take(data, below, axis=axis) * (1 - weight) + np.take(data, above, axis=axis) * weight
    if binary:
        values = (values >= 0.5).astype(volume.array.dtype)
    else:
        values = values.astype(np.float32)
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 2 - axis] *= step
    return Volume(values, matrix, volume.name, dict(volume.metadata))


def _back_to_acquired_slices(patches: PatchSet, slice_axis: int, step: float) -> PatchSet:
    """Provenance on the resampled grid re-expressed on the acquired grid (slice k′ ↦ k′·step;
    the slice index is the nearest acquired slice, ``patch_to_ijk`` keeps the exact position)."""
    scale = np.eye(4)
    scale[2 - slice_axis, 2 - slice_axis] = step
    moved = [replace(prov, slice_index=int(round(prov.slice_index * step)), patch_to_ijk=scale @ prov.patch_to_ijk)
             for prov in patches.provenance]
    return PatchSet(patches.images, moved, patches.spec, list(patches.channel_names))


def patches_for_case(
    images: Sequence[Volume],
    masks: Sequence[Volume],
    spec: PatchSpec,
    labels: Sequence[str] | None = None,
    timings: dict[str, float] | None = None,
) -> list[PatchSet]:
    """:func:`assess_patches` for callers that need every tumour: the first tumour that gives no
    patch is a :class:`NotAssessableError` naming it and saying why."""
    outcomes = assess_patches(images, masks, spec, labels, timings)
    for outcome in outcomes:
        if isinstance(outcome, NotAssessable):
            raise NotAssessableError(outcome.label, outcome.reason, outcome.detail)
    return outcomes  # type: ignore[return-value]
