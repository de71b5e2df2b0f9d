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
) -> Path:
    """The reference slice through the tumour's first patch with the heatmap overlaid (as in
    Slicer's foreground layer), the tumour outline, and the class probabilities beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tumour = result.tumours[tumour_index]
    first = tumour.provenance[0]
    axis, index = int(first["slice_axis"]), int(first["slice_index"])
    background = display_plane(reference, reference, axis, index)
    heat = display_plane(heatmap, reference, axis, index).image
    figure = plt.figure(figsize=(9.5, 4.6), facecolor="white")
    grid = figure.add_gridspec(1, 2, width_ratios=[1.15, 1.0], wspace=0.25)
    ax = figure.add_subplot(grid[0])
    ax.imshow(background.image, cmap="gray", vmin=window[0], vmax=window[1], aspect=background.aspect)
    masked = np.ma.masked_where(heat <= 1e-3, heat)
    overlay = ax.imshow(masked, cmap="inferno", vmin=0, vmax=1, alpha=0.55, aspect=background.aspect)
    if mask is not None:
        ax.contour(display_plane(mask, reference, axis, index).image, levels=[0.5], colors="cyan", linewidths=0.8)
    ax.set_title(f"{reference.name} · slice {index} · heatmap of {tumour.predicted_class}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.01, 0.01, "R", color="white", transform=ax.transAxes, fontsize=8, va="bottom")
    ax.text(0.99, 0.01, "L", color="white", transform=ax.transAxes, fontsize=8, va="bottom", ha="right")
    figure.colorbar(overlay, ax=ax, fraction=0.04, pad=0.02, label="CAM (relative)")
    bars = figure.add_subplot(grid[1])
    names = list(tumour.class_names) + (["ORR"] if tumour.objective_response_probability is not None else [])
    values = list(tumour.probabilities) + ([tumour.objective_response_probability]
                                           if tumour.objective_response_probability is not None else [])
    colours = ["tab:orange" if n == tumour.predicted_class else "tab:blue" for n in tumour.class_names] + ["tab:green"]
    positions = np.arange(len(names))[::-1]
    bars.barh(positions, values, color=colours[: len(names)])
    for y, value in zip(positions, values):
        bars.text(min(value + 0.02, 0.9), y, f"{value:.2f}", va="center", fontsize=9)
    bars.set_yticks(positions, names)
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability")
    bars.set_title(f"{tumour.label}: predicted {tumour.predicted_class}", fontsize=10, fontweight="bold")
    footer = result.warning if result.synthetic_model else "Research use only."
    figure.text(0.5, 0.005, f"{footer}  Model {result.bundle_id}.", ha="center", fontsize=8,
                color="darkred" if result.synthetic_model else "black")
    return save_figure(figure, path)
