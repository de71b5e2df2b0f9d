"""The prediction overlay for people: the tumour slice, the heatmap over it, the class probabilities.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from TACEResponseLib.core.figures import new_figure, save_figure
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.views import display_plane

logger = logging.getLogger(__name__)

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
    from matplotlib.patches import Rectangle

    from TACEResponseLib.prediction.cam import heatmap_values

    heatmap = heatmap_values(heatmap)
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

    figure = new_figure(13.5, 4.4, facecolor="white")
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
    trust = getattr(tumour, "trust", None)
    spread = list(trust.spread) if trust is not None and trust.spread is not None else None
    errors = None if spread is None else spread + ([None] if len(names) > len(spread) else [])
    bars.barh(positions, values, color=colours[: len(names)])
    if spread is not None:
        classes = len(spread)
        bars.errorbar(values[:classes], positions[:classes], xerr=spread, fmt="none", ecolor="black", capsize=3)
    for n, (y, value) in enumerate(zip(positions, values)):
        text = f"{value:.2f}" + (f" ± {errors[n]:.2f}" if errors is not None and errors[n] is not None else "")
        long_bar = value > 0.5  # its label inside the bar's start, clear of the bar's end and its error bar
        bars.text(0.02 if long_bar else 0.98, y, text, va="center", ha="left" if long_bar else "right", fontsize=9,
                  color="white" if long_bar else "black")
    bars.set_yticks(positions, names)
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability" + (f" (± SD over {trust.views} test-time views)" if spread is not None else ""))
    bars.set_title(f"{tumour.label}: predicted {tumour.predicted_class}", fontsize=10, fontweight="bold")
    warning = trust.warning if trust is not None else ""
    if warning:
        figure.text(0.5, 0.985, f"⚠ {warning[0].upper()}{warning[1:]}", ha="center", va="top", fontsize=9,
                    fontweight="bold", color="#8a4b00", wrap=True,
                    bbox={"facecolor": "#fff4e0", "edgecolor": "#e08a00", "boxstyle": "round,pad=0.3"})
        figure.subplots_adjust(top=0.8)
    summary = overlay_summary(result)
    if summary:
        figure.subplots_adjust(bottom=0.2)
        figure.text(0.5, 0.04, summary, ha="center", fontsize=8, wrap=True)
    footer = result.warning if result.synthetic_model else "Research use only."
    figure.text(0.5, 0.0, f"{footer}  Model {result.bundle_id}.", ha="center", fontsize=8,
                color="darkred" if result.synthetic_model else "black")
    return save_figure(figure, path, dpi=110)


def overlay_summary(result) -> str:
    """The patient answer and the tumours that were not assessable, grouped by reason, in one line."""
    from TACEResponseLib.prediction.results import NOT_ASSESSABLE_REASONS

    parts = []
    patient = getattr(result, "patient", None)
    if patient is not None and (len(result.tumours) > 1 or getattr(result, "not_assessable", None)):
        parts.append(f"Patient: {patient.predicted_class} "
                     f"({100 * patient.probability_of[patient.predicted_class]:.0f} %) from {', '.join(patient.tumours)}")
    skipped = getattr(result, "not_assessable", [])
    if skipped:
        groups = [f"{sum(t.reason == code for t in skipped)} {text}" for code, text in NOT_ASSESSABLE_REASONS.items()
                  if any(t.reason == code for t in skipped)]
        parts.append(f"not assessable: {len(skipped)} tumour(s) — " + ", ".join(groups))
    return " · ".join(parts)


def write_overlay(result, reference_path, segmentation_path, png: Path) -> Path:
    from TACEResponseLib.imaging.segmentation import read_segmentation, segment_mask_on
    from TACEResponseLib.imaging.volume_io import read_volume

    reference = read_volume(reference_path)
    mask = segment_mask_on(read_segmentation(segmentation_path), result.tumours[0].segment_id, reference)
    return save_prediction_png(reference, result.heatmap, result, png, mask=mask)
