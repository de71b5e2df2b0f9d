"""Slices shown the way a radiologist reads them, and the patch montage figure.

Slices are displayed in radiological convention, as Slicer's slice views do: axial with the
patient's right on the left of the screen and anterior at the top; coronal with superior at
the top. Pixel aspect follows the in-plane spacing (mm).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from TACEResponseLib.core.figures import new_figure, save_figure
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, grid_offset

logger = logging.getLogger(__name__)

# screen right / screen down, as RAS unit vectors, for each named view
_SCREEN_AXES = {
    "axial": (np.array([-1.0, 0, 0]), np.array([0, -1.0, 0])),
    "coronal": (np.array([-1.0, 0, 0]), np.array([0, 0, -1.0])),
    "sagittal": (np.array([0, 1.0, 0]), np.array([0, 0, -1.0])),
}


@dataclass
class DisplayPlane:
    """A 2-D slice reoriented for the screen, with the pixel aspect ratio (row mm / col mm)."""

    image: np.ndarray
    aspect: float
    view: str


def _view_for(volume: Volume, slice_axis: int) -> str:
    normal = volume.direction[:, 2 - slice_axis]
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def to_screen(plane: np.ndarray, reference: Volume, slice_axis: int) -> DisplayPlane:
    """Flip/transpose a 2-D slice (rows, cols = the remaining array axes in order, as for
    slices and patches) of ``reference``'s grid into radiological screen order."""
    rows_axis, cols_axis = (a for a in (0, 1, 2) if a != slice_axis)
    view = _view_for(reference, slice_axis)
    screen_right, screen_down = _SCREEN_AXES[view]
    d_rows = reference.direction[:, 2 - rows_axis]
    d_cols = reference.direction[:, 2 - cols_axis]
    spacing = reference.spacing
    row_mm, col_mm = spacing[2 - rows_axis], spacing[2 - cols_axis]
    if abs(d_rows @ screen_right) > abs(d_cols @ screen_right):  # array rows run left-right: transpose
        plane = plane.T
        d_rows, d_cols = d_cols, d_rows
        row_mm, col_mm = col_mm, row_mm
    if d_cols @ screen_right < 0:
        plane = plane[:, ::-1]
    if d_rows @ screen_down < 0:
        plane = plane[::-1, :]
    return DisplayPlane(np.ascontiguousarray(plane), float(row_mm / col_mm), view)


def display_plane(volume: Volume | np.ndarray, reference: Volume, slice_axis: int, slice_index: int) -> DisplayPlane:
    """Slice ``slice_index`` along array axis ``slice_axis`` of ``reference``'s grid, taken from
    ``volume`` (a Volume on that grid or on a box of it — 0 outside the box —, or an array on
    the grid), in radiological screen order."""
    if isinstance(volume, Volume) and not volume.same_geometry(reference):
        return to_screen(_box_plane(volume, reference, slice_axis, slice_index), reference, slice_axis)
    array = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    return to_screen(np.take(array, slice_index, axis=slice_axis), reference, slice_axis)


def _box_plane(box: Volume, reference: Volume, slice_axis: int, slice_index: int) -> np.ndarray:
    """One plane of the reference grid from a volume on a box of it (zeros outside the box)."""
    offset = grid_offset(box, reference)
    if offset is None:
        raise InputError(f"{box.name or 'volume'}: not on the grid of {reference.name or 'the reference'} "
                         "nor a box of it")
    rows_axis, cols_axis = (a for a in (0, 1, 2) if a != slice_axis)
    shape = reference.shape_kji
    plane = np.zeros((shape[rows_axis], shape[cols_axis]), box.array.dtype)
    local = slice_index - int(offset[slice_axis])
    if 0 <= local < box.shape_kji[slice_axis]:
        part = np.take(box.array, local, axis=slice_axis)
        r0, c0 = int(offset[rows_axis]), int(offset[cols_axis])
        plane[r0:r0 + part.shape[0], c0:c0 + part.shape[1]] = part
    return plane


def save_patch_montage(
    images: np.ndarray,
    titles: Sequence[str],
    path: str | Path,
    context: DisplayPlane | None = None,
    context_title: str = "",
    suptitle: str = "",
    outlines: Sequence[DisplayPlane] = (),
    orient: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Path:
    """One PNG: the context slice with ``outlines`` (e.g. ROI, patch box) contoured, then
    one row per patch with its distinct channels (repeated channels are shown once).
    ``orient`` turns a patch into screen order (e.g. ``to_screen``), so patches and the
    context slice are shown the same way round."""

    n_patches, n_channels = images.shape[:2]
    distinct = [c for c in range(n_channels) if not any(np.array_equal(images[:, c], images[:, d]) for d in range(c))]
    columns = len(distinct) + (1 if context is not None else 0)
    figure = new_figure(2.6 * columns, 2.6 * n_patches)
    axes = figure.subplots(n_patches, columns, squeeze=False)
    for row in range(n_patches):
        offset = 0
        if context is not None:
            ax = axes[row, 0]
            if row == 0:
                ax.imshow(context.image, cmap="gray", vmin=-160, vmax=240, aspect=context.aspect)
                for outline, colour in zip(outlines, ("tab:red", "yellow", "cyan")):
                    ax.contour(outline.image, levels=[0.5], colors=colour, linewidths=0.8)
                ax.set_title(context_title, fontsize=8)
            ax.axis("off")
            offset = 1
        for column, channel in enumerate(distinct):
            ax = axes[row, offset + column]
            patch = images[row, channel] if orient is None else orient(images[row, channel])
            ax.imshow(patch, cmap="gray", vmin=0, vmax=1 if images.min() >= 0 else None)
            index = row * n_channels + channel
            ax.set_title(titles[index] if index < len(titles) else "", fontsize=8)
            ax.axis("off")
    if suptitle:
        figure.suptitle(suptitle, fontsize=9)
    return save_figure(figure, path, dpi=110)


def write_patch_montage(patches, reference, out: Path, stem: str, mask=None) -> Path:
    """Montage PNG: the largest-ROI slice with ROI (red) and patch box (yellow), then the patches."""
    import numpy as np


    first = patches.provenance[0]
    axis, index = first.slice_axis, first.slice_index
    context = display_plane(reference, reference, axis, index)
    box = np.zeros(reference.shape_kji, np.uint8)
    r0, c0, h, w = (int(round(v)) for v in first.box)
    where: list = [slice(None)] * 3
    where[axis] = index
    rows, cols = (a for a in (0, 1, 2) if a != axis)
    where[rows], where[cols] = slice(max(r0, 0), r0 + h), slice(max(c0, 0), c0 + w)
    box[tuple(where)] = 1
    outlines = [display_plane(box, reference, axis, index)]
    if mask is not None:
        outlines.insert(0, display_plane(mask, reference, axis, index))
    titles = [f"slice {p.slice_index} · {n} · {p.side_mm[0]:.0f} mm" for p in patches.provenance for n in patches.channel_names]
    return save_patch_montage(patches.images, titles, out / f"{stem}.png", context=context,
                              context_title=f"{reference.name} slice {index}",
                              suptitle="SYNTHETIC phantom — research use only", outlines=outlines,
                              orient=lambda patch: to_screen(patch, reference, axis).image)
