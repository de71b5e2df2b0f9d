"""Pictures and tables for people: slices shown the way a radiologist reads them.

Slices are displayed in radiological convention, as Slicer's slice views do: axial with the
patient's right on the left of the screen and anterior at the top; coronal with superior at
the top. Pixel aspect follows the in-plane spacing (mm). matplotlib (Agg) is imported inside
the functions so importing this module stays cheap. PNGs are written atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .geometry import Volume
from .io import atomic_path

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
    """Slice ``slice_index`` along array axis ``slice_axis`` of ``volume`` (a Volume, or an
    array on ``reference``'s grid) in radiological screen order."""
    array = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    return to_screen(np.take(array, slice_index, axis=slice_axis), reference, slice_axis)


def save_figure(figure, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", facecolor=figure.get_facecolor())
    plt.close(figure)
    return path


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_patches, n_channels = images.shape[:2]
    distinct = [c for c in range(n_channels) if not any(np.array_equal(images[:, c], images[:, d]) for d in range(c))]
    columns = len(distinct) + (1 if context is not None else 0)
    figure, axes = plt.subplots(n_patches, columns, figsize=(2.6 * columns, 2.6 * n_patches), squeeze=False)
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
    return save_figure(figure, path)


def save_prediction_png(
    reference: Volume,
    heatmap: Volume,
    result,
    path: str | Path,
    mask: Volume | None = None,
    tumour_index: int = 0,
    window: tuple[float, float] = (-160.0, 240.0),
    zoom_margin: float = 0.6,
) -> Path:
    """Three panels: the whole slice through the tumour's first patch (tumour outline, zoom box),
    the zoomed slice with the heatmap overlaid as Slicer's foreground layer would show it, and
    the class probabilities with objective response."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    tumour = result.tumours[tumour_index]
    first = tumour.provenance[0]
    axis, index = int(first["slice_axis"]), int(first["slice_index"])
    background = display_plane(reference, reference, axis, index)
    heat = display_plane(heatmap, reference, axis, index).image
    outline = display_plane(mask, reference, axis, index).image if mask is not None else None
    focus = heat > 0 if outline is None else (heat > 0) | (outline > 0)
    rows, cols = np.nonzero(focus) if focus.any() else np.nonzero(np.ones_like(heat))
    half = max(rows.max() - rows.min(), (cols.max() - cols.min()) * background.aspect) * (0.5 + zoom_margin)
    centre_r, centre_c = (rows.max() + rows.min()) / 2, (cols.max() + cols.min()) / 2
    r0, r1 = int(max(centre_r - half, 0)), int(min(centre_r + half, heat.shape[0] - 1)) + 1
    half_c = half / background.aspect
    c0, c1 = int(max(centre_c - half_c, 0)), int(min(centre_c + half_c, heat.shape[1] - 1)) + 1

    figure = plt.figure(figsize=(13.5, 4.4), facecolor="white")
    grid = figure.add_gridspec(1, 3, width_ratios=[1.0, 1.12, 0.95], wspace=0.38)
    whole = figure.add_subplot(grid[0])
    whole.imshow(background.image, cmap="gray", vmin=window[0], vmax=window[1], aspect=background.aspect)
    if outline is not None:
        whole.contour(outline, levels=[0.5], colors="cyan", linewidths=0.7)
    whole.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec="yellow", lw=1.0))
    whole.set_title(f"{reference.name} · slice {index}", fontsize=9)
    for ax in (whole,):
        ax.text(0.02, 0.02, "R", color="white", transform=ax.transAxes, fontsize=8)
        ax.text(0.98, 0.02, "L", color="white", transform=ax.transAxes, fontsize=8, ha="right")
        ax.text(0.5, 0.98, "A", color="white", transform=ax.transAxes, fontsize=8, ha="center", va="top")
    zoom = figure.add_subplot(grid[1])
    zoom.imshow(background.image[r0:r1, c0:c1], cmap="gray", vmin=window[0], vmax=window[1], aspect=background.aspect)
    overlay = zoom.imshow(np.ma.masked_where(heat[r0:r1, c0:c1] <= 1e-3, heat[r0:r1, c0:c1]), cmap="inferno",
                          vmin=0, vmax=1, alpha=0.6, aspect=background.aspect)
    if outline is not None:
        zoom.contour(outline[r0:r1, c0:c1], levels=[0.5], colors="cyan", linewidths=1.0)
    zoom.set_title(f"class-activation map of {tumour.predicted_class} (patches only)", fontsize=9)
    colourbar = figure.colorbar(overlay, ax=zoom, fraction=0.046, pad=0.02)
    colourbar.set_label("CAM, relative", fontsize=8)
    for ax in (whole, zoom):
        ax.set_xticks([])
        ax.set_yticks([])
    bars = figure.add_subplot(grid[2])
    names = list(tumour.class_names) + (["ORR"] if tumour.objective_response_probability is not None else [])
    values = list(tumour.probabilities) + ([tumour.objective_response_probability]
                                           if tumour.objective_response_probability is not None else [])
    colours = ["tab:orange" if n == tumour.predicted_class else "tab:blue" for n in tumour.class_names] + ["tab:green"]
    positions = np.arange(len(names))[::-1]
    bars.barh(positions, values, color=colours[: len(names)])
    for y, value in zip(positions, values):
        bars.text(0.98, y, f"{value:.2f}", va="center", ha="right", fontsize=9,
                  color="white" if value > 0.85 else "black")
    bars.set_yticks(positions, names)
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability")
    bars.set_title(f"{tumour.label}: predicted {tumour.predicted_class}", fontsize=10, fontweight="bold")
    footer = result.warning if result.synthetic_model else "Research use only."
    figure.text(0.5, 0.0, f"{footer}  Model {result.bundle_id}.", ha="center", fontsize=8,
                color="darkred" if result.synthetic_model else "black")
    return save_figure(figure, path)
