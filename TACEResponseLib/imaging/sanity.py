"""Is this plausibly a scan? Checks of an image's geometry and intensities before a model sees it.

A network gives a confident class for anything, so garbage must be stopped before it: voxels of
100 mm or 0.001 mm, values no scanner writes (1e15, or a float64 image that overflows float32),
a blank image. Those are :class:`~TACEResponseLib.core.errors.InputError`. An image that is
readable but does not look like what the model expects — a CT model given an MR sequence or a
picture rescaled to 0…255 — gets a warning that travels with the result instead (it may be a
legitimate crop; the radiologist decides).
"""

from __future__ import annotations

import logging

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, check_volume, value_range_of

logger = logging.getLogger(__name__)

#: voxel sizes (mm) outside this range are not a clinical CT or MR scan
SPACING_RANGE_MM = (0.05, 30.0)

#: no CT (HU) or MR scanner writes values beyond this magnitude
MAX_ABS_VALUE = 1e6


def check_spacing(volume: Volume, label: str | None = None) -> Volume:
    """Refuse voxel sizes outside :data:`SPACING_RANGE_MM` (zero, negative or absurd spacing)."""
    label = label or volume.name or "volume"
    spacing = volume.spacing
    low, high = SPACING_RANGE_MM
    if not np.all(np.isfinite(spacing)) or np.any(spacing < low) or np.any(spacing > high):
        shown = " × ".join(f"{s:.4g}" for s in spacing)
        raise InputError(f"{label}: voxel size {shown} mm is outside {low:g}–{high:g} mm; the file's spacing is "
                         "wrong or missing (set it in the file header, or in Slicer's Volumes module)")
    return volume


def _sample(array: np.ndarray, voxels: int = 2_000_000) -> np.ndarray:
    step = max(1, int(round((array.size / voxels) ** (1 / 3))))
    return array[::step, ::step, ::step] if array.ndim == 3 else array


def check_scan(volume: Volume, label: str | None = None) -> Volume:
    """A 3-D image with finite values, a plausible voxel size, values a scanner writes, and not blank
    (one pass over the voxels, none when the reader already made it: :func:`~.geometry.value_range_of`)."""
    label = label or volume.name or "image"
    check_volume(volume, label=label, allow_nan=True)
    check_spacing(volume, label)
    array = volume.array
    low, high = value_range_of(volume)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(f"{label}: {int(np.count_nonzero(~np.isfinite(array)))} voxels are NaN or infinite")
    if max(abs(low), abs(high)) > MAX_ABS_VALUE:
        raise InputError(f"{label}: intensities reach {low:.3g} … {high:.3g}, beyond what any CT or MR scanner "
                         f"writes (|value| ≤ {MAX_ABS_VALUE:g}); the file is corrupt or not a scan")
    if low == high:
        raise InputError(f"{label}: every voxel is {low:g}; the image is blank")
    return volume


def hu_warning(volume: Volume, label: str | None = None) -> str | None:
    """A warning when a CT image does not look like Hounsfield units, else None.

    A CT in HU always holds air or fat (below −200 HU) somewhere in an abdominal field of view,
    and almost nothing above 4000 HU. An MR sequence or a picture rescaled to 0…255 has
    neither property.
    """
    label = label or volume.name or "image"
    values = _sample(volume.array, voxels=250_000)  # ±0.1 percentile points: plenty for a warning
    p_low, p_high = np.percentile(values, [0.5, 99.5])
    problems = []
    if p_low > -200:
        problems.append(f"no air or fat (0.5th percentile {p_low:.0f}, a CT in HU has values below −200)")
    if p_high > 4000:
        problems.append(f"values far above bone (99.5th percentile {p_high:.0f} > 4000)")
    if not problems:
        return None
    return (f"{label}: intensities do not look like CT Hounsfield units — {'; '.join(problems)}. The model expects "
            "CT in HU: is this an MR sequence or a rescaled picture? Treat the result with caution.")
