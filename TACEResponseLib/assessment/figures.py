"""Overlays of a lesion at a visit with its calipers drawn, as a radiologist checks them.

Two panels, each the arterial image resliced on the axial plane of a caliper (radiological convention:
the patient's right on the left of the picture, anterior at the top; CT in the abdomen window):

- left, **viable tumour** (mRECIST, EASL): the tumour outlined in yellow, its viable part filled in orange,
  iodised oil outlined in cyan, the longest viable diameter (solid green; magenta when drawn by hand) and the
  perpendicular diameter (dashed);
- right, **whole tumour** (RECIST 1.1): the tumour outlined and its longest axial diameter (solid white).

Each caliper is labelled with its length, and the title says which visit, which lesion, and its role.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from TACEResponseLib.assessment.calipers import Caliper
from TACEResponseLib.core.figures import new_figure, save_figure
from TACEResponseLib.imaging.geometry import Volume, resample_to_reference

#: field of view of a panel: this many times the lesion's longest diameter, at least ``MIN_FOV_MM``
FOV_FACTOR = 2.2
MIN_FOV_MM = 50.0
VIABLE_CALIPER, MANUAL_CALIPER, WHOLE_CALIPER, VIABLE_FILL = "#39ff14", "#ff2bd6", "#ffffff", "#ff7a00"


def axial_plane(centre_ras, s_mm: float, fov_mm: float, pixel_mm: float) -> Volume:
    """A one-slice grid on the axial plane S = ``s_mm`` centred on ``centre_ras``: columns run to the patient's
    left, rows to posterior (so ``array[0]`` shows as radiologists read it)."""
    n = int(np.ceil(fov_mm / pixel_mm))
    direction = np.diag([-1.0, -1.0, 1.0])
    origin = np.array([centre_ras[0] + pixel_mm * (n - 1) / 2, centre_ras[1] + pixel_mm * (n - 1) / 2, s_mm])
    matrix = np.eye(4)
    matrix[:3, :3] = direction * pixel_mm
    matrix[:3, 3] = origin
    return Volume(np.zeros((1, n, n), np.float32), matrix, "plane")


def _on_plane(volume: Volume | None, plane: Volume, nearest: bool) -> np.ndarray | None:
    if volume is None:
        return None
    sampled = resample_to_reference(volume if not nearest else volume.with_array((volume.array > 0).astype(np.uint8)),
                                    plane, "nearest" if nearest else "linear", default_value=0, min_overlap=0.0)
    return np.asarray(sampled.array[0], np.float32)


def _pixels(plane: Volume, ras) -> np.ndarray:
    """Continuous (column, row) of RAS points on the plane's picture."""
    ijk = plane.ras_to_ijk_points(np.atleast_2d(np.asarray(ras, float)))
    return ijk[:, :2]


def _draw_caliper(ax, plane: Volume, caliper: Caliper | None, color: str, style: str, text: str) -> None:
    if caliper is None or caliper.length_mm <= 0:
        return
    ends = _pixels(plane, [caliper.start_ras, caliper.end_ras])
    ax.plot(ends[:, 0], ends[:, 1], style, color=color, linewidth=1.8, solid_capstyle="butt")
    ax.plot(ends[:, 0], ends[:, 1], "o", color=color, markersize=3.5)
    label_at = ends[np.argmin(ends[:, 1])] + np.array([2.0, -3.0])
    ax.text(label_at[0], label_at[1], text, color=color, fontsize=7.5, fontweight="bold",
            bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.2, "edgecolor": "none"})


def _panel(ax, image: Volume, window: tuple[float, float], centre, caliper: Caliper | None, fov: float,
           outline: Volume | None, fill: Volume | None, oil: Volume | None, title: str) -> Volume:
    s_mm = float(np.asarray(caliper.start_ras)[2]) if caliper is not None else float(centre[2])
    pixel = float(max(0.3, min(np.min(image.spacing), fov / 160.0)))
    plane = axial_plane(centre, s_mm, fov, pixel)
    pixels = _on_plane(image, plane, nearest=False)
    ax.imshow(pixels, cmap="gray", vmin=window[0], vmax=window[1], interpolation="bilinear")
    filled = _on_plane(fill, plane, nearest=True)
    if filled is not None and filled.any():
        from matplotlib.colors import ListedColormap

        ax.imshow(np.ma.masked_where(filled < 0.5, filled), cmap=ListedColormap([VIABLE_FILL]), alpha=0.5, vmin=0,
                  vmax=1, interpolation="nearest")
    for mask, color in ((outline, "#ffd400"), (oil, "#00e5ff")):
        shown = _on_plane(mask, plane, nearest=True)
        if shown is not None and shown.any():
            ax.contour(shown, levels=[0.5], colors=[color], linewidths=1.1)
    ax.set_title(title, fontsize=8.5, color="white")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(2, pixels.shape[0] - 3, f"S {s_mm:+.1f} mm", color="#cccccc", fontsize=6.5)
    ax.text(2, 8, "R", color="#cccccc", fontsize=7)
    ax.text(pixels.shape[1] - 9, 8, "L", color="#cccccc", fontsize=7)
    return plane


def lesion_overlay(path: str | Path, image: Volume, window: tuple[float, float], lesion, tumour_mask: Volume,
                   title: str) -> Path:
    """Write the overlay of one :class:`~.series.LesionMeasurement` at one visit (module docstring)."""
    viable = lesion.viable_tumour
    caliper = lesion.viable_caliper
    fov = max(MIN_FOV_MM, FOV_FACTOR * max(lesion.whole.length_mm, lesion.viable_diameter_mm))
    centre = np.asarray(lesion.centroid_ras, float)
    figure = new_figure(8.2, 4.5, facecolor="black")
    left, right = figure.subplots(1, 2)
    for ax in (left, right):
        ax.set_facecolor("black")
    manual = lesion.manual_viable is not None
    plane = _panel(left, image, window, centre, caliper if caliper is not None else lesion.whole.longest, fov,
                   tumour_mask, viable.mask, viable.oil, "viable tumour (mRECIST, EASL)")
    if caliper is not None:
        _draw_caliper(left, plane, caliper, MANUAL_CALIPER if manual else VIABLE_CALIPER, "-",
                      f"{caliper.length_mm:.1f} mm" + (" (manual)" if manual else ""))
        if not manual:
            _draw_caliper(left, plane, lesion.viable.perpendicular, VIABLE_CALIPER, "--",
                          f"{lesion.viable.perpendicular_mm:.1f} mm")
    else:
        left.text(0.5, 0.06, "no enhancing tumour", transform=left.transAxes, color="#ff8c00", ha="center", fontsize=9)
    plane = _panel(right, image, window, centre, lesion.whole.longest, fov, tumour_mask, None, None,
                   "whole tumour (RECIST 1.1)")
    _draw_caliper(right, plane, lesion.whole.longest, WHOLE_CALIPER, "-", f"{lesion.whole.length_mm:.1f} mm")
    detail = (f"viable {lesion.viable_diameter_mm:.1f} mm × {lesion.viable.perpendicular_mm:.1f} mm, "
              f"{viable.viable_ml:.2f} ml ({viable.fraction:.0%} of {lesion.volume_ml:.2f} ml)"
              + (f", iodised oil {viable.oil_ml:.2f} ml" if viable.oil_voxels else "")
              + f" — whole {lesion.whole.length_mm:.1f} mm")
    figure.suptitle(title, color="white", fontsize=10.5, y=0.99)
    figure.text(0.5, 0.03, detail, color="#dddddd", ha="center", fontsize=8)
    return save_figure(figure, path, dpi=110)
