"""DICOM series from a folder, with the geometry the slices' headers state — never a silently wrong one.

SimpleITK (GDCM) decodes the pixels (any transfer syntax it supports, rescale slope/intercept
applied). The geometry is checked here from every slice's ImagePositionPatient and
ImageOrientationPatient, as Slicer's DICOM reader does:

- a folder with several series: the one named (``FOLDER#N`` / ``FOLDER#UID``), the only one that
  is not a localizer, or an error listing them (UID — or "no SeriesInstanceUID" — modality,
  description, number of files);
- inside a series, localizer images and images of another orientation or size are left out
  (with a warning);
- two images at one position (mixed acquisitions) are an error;
- slices not evenly spaced (a missing slice) or sheared (CT gantry tilt) are resampled onto a
  regular grid perpendicular to the slices, linearly between the two nearest slices, with a
  warning in ``Volume.metadata["warnings"]``; a gap wider than :data:`MAX_GAP_STEPS` slice steps
  (an incomplete series) is an error.

Positions are in LPS (DICOM) here; :func:`~TACEResponseLib.imaging.volume_io.volume_from_sitk`'s
conversion to RAS is applied at the end.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import LPS_TO_RAS, Volume, check_volume
from TACEResponseLib.imaging.sanity import check_spacing
from TACEResponseLib.imaging.itk_reading import locale_kept, unreadable_image_error

logger = logging.getLogger(__name__)

#: the widest gap between slices that is interpolated (in median slice steps); wider: an error
MAX_GAP_STEPS = 3.2
#: absolute part of the position tolerance (mm), as Slicer's spacingEpsilon
SPACING_EPSILON_MM = 0.01
#: relative part of the position tolerance (fraction of the slice step)
SPACING_EPSILON_FRACTION = 0.02


@dataclass
class SliceHeader:
    """What the geometry needs from one DICOM file."""

    path: str
    position: np.ndarray | None   # ImagePositionPatient (LPS mm)
    orientation: np.ndarray | None  # ImageOrientationPatient (row, column direction cosines)
    size: tuple[int, ...]
    localizer: bool


@dataclass
class SeriesInfo:
    """One series of a folder, as listed to the user."""

    uid: str
    files: list[str]
    modality: str
    description: str
    localizer: bool

    def describe(self, number: int) -> str:
        name = self.uid or "(no SeriesInstanceUID)"
        what = " ".join(p for p in (self.modality, repr(self.description) if self.description else "",
                                    "localizer" if self.localizer else "") if p)
        return f"#{number} {name} ({what}, {len(self.files)} file{'s' if len(self.files) != 1 else ''})"


def _reader(path: str):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def _tag(reader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _numbers(text: str, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in text.replace(" ", "").split("\\") if v != ""], np.float64)
    except ValueError:
        return None
    return values if values.size == count and np.all(np.isfinite(values)) else None


def read_header(path: str) -> SliceHeader:
    reader = _reader(path)
    image_type = _tag(reader, "0008|0008").upper()
    return SliceHeader(path, _numbers(_tag(reader, "0020|0032"), 3), _numbers(_tag(reader, "0020|0037"), 6),
                       tuple(reader.GetSize()), "LOCALIZER" in image_type)


def list_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """The DICOM series in ``folder`` (not its sub-folders), in GDCM's order."""
    import SimpleITK as sitk

    series = []
    with locale_kept():
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or []:
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            if not files:
                continue
            try:
                first = _reader(files[0])
            except RuntimeError:
                series.append(SeriesInfo(uid, files, "?", "", False))
                continue
            localizer = "LOCALIZER" in _tag(first, "0008|0008").upper()
            series.append(SeriesInfo(uid, files, _tag(first, "0008|0060"), _tag(first, "0008|103e"), localizer))
    return series


def _choose(folder: Path, series: list[SeriesInfo], choice: str | None) -> SeriesInfo:
    listing = "; ".join(s.describe(n) for n, s in enumerate(series, start=1))
    if choice is not None and str(choice).strip():
        choice = str(choice).strip()
        for info in series:
            if info.uid and info.uid == choice:
                return info
        if choice.isdigit() and 1 <= int(choice) <= len(series):
            return series[int(choice) - 1]
        raise InputError(f"{folder}: DICOM series {choice!r} not found; the folder holds {listing}")
    if len(series) == 1:
        return series[0]
    images = [s for s in series if not s.localizer]
    if len(images) == 1:
        logger.warning("%s: using series %s; ignoring the localizer series in the folder", folder,
                       images[0].uid or "(no SeriesInstanceUID)")
        return images[0]
    raise InputError(f"{folder}: holds {len(series)} DICOM series; choose one as {folder}#N (N from this list) or "
                     f"{folder}#SERIES_UID: {listing}")


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None, *,
                      read_file: Callable[[Path], Volume]) -> Volume:
    """Read one DICOM series from ``folder`` with its geometry checked (see the module docstring).
    ``read_file`` reads a series of one file (a multi-frame image) as an image file
    (:func:`~TACEResponseLib.imaging.volume_io.read_volume`, which calls this for a folder)."""
    import SimpleITK as sitk

    folder = Path(folder)
    series = list_series(folder)
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder")
    chosen = _choose(folder, series, series_uid)
    warnings: list[str] = []
    if len(chosen.files) == 1:  # one file: a multi-frame image, or a single slice
        volume = read_file(chosen.files[0])
        volume.name = folder.name
        volume.metadata.update({"source": str(folder), "series_uid": chosen.uid})
        return volume
    with locale_kept():
        try:
            headers = [read_header(f) for f in chosen.files]
        except RuntimeError as exc:
            raise unreadable_image_error(folder, exc) from None
        kept = _consistent_slices(folder, headers, warnings)
        geometry = _slice_geometry(folder, kept)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([h.path for h in geometry.ordered])
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "non uniform sampling": checked above instead
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise unreadable_image_error(folder, exc) from None
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    array = sitk.GetArrayFromImage(image)
    dx, dy = (float(v) for v in image.GetSpacing()[:2])
    if geometry.regular:
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = np.column_stack([geometry.row * dx, geometry.col * dy, geometry.normal * geometry.step])
        ijk_to_lps[:3, 3] = geometry.ordered[0].position
    else:
        array, ijk_to_lps, note = _regularise(array, geometry, dx, dy)
        warnings.append(f"{folder}: {note}")
    for warning in warnings:
        logger.warning(warning)
    volume = Volume(array, LPS_TO_RAS @ ijk_to_lps, folder.name,
                    {"source": str(folder), "series_uid": chosen.uid, "warnings": warnings})
    check_volume(volume, label=str(folder))
    return check_spacing(volume, label=str(folder))


def _consistent_slices(folder: Path, headers: list[SliceHeader], warnings: list[str]) -> list[SliceHeader]:
    """The slices of the series proper: no localizer, the majority's orientation and size."""
    usable = [h for h in headers if h.position is not None and h.orientation is not None]
    if len(usable) < len(headers):
        if not usable:
            raise InputError(f"{folder}: its DICOM files state no slice position or orientation "
                             "(ImagePositionPatient / ImageOrientationPatient); the geometry is unknown")
        warnings.append(f"{folder}: left out {len(headers) - len(usable)} file(s) without a slice position")
    localizers = [h for h in usable if h.localizer]
    images = [h for h in usable if not h.localizer] or usable
    if localizers and len(images) < len(usable):
        warnings.append(f"{folder}: left out {len(localizers)} localizer image(s) of the series")
    key = Counter((tuple(np.round(h.orientation, 3)), h.size) for h in images).most_common(1)[0][0]
    kept = [h for h in images if (tuple(np.round(h.orientation, 3)), h.size) == key]
    if len(kept) < len(images):
        warnings.append(f"{folder}: left out {len(images) - len(kept)} image(s) of another orientation or size "
                        "than the series")
    if len(kept) < 2:
        shapes = len({(tuple(np.round(h.orientation, 3)), h.size) for h in images})
        raise InputError(f"{folder}: not a volume: its {len(images)} image(s) have {shapes} different orientations "
                         "or sizes, so no two slices stack (a radial or multi-planar acquisition?)")
    return kept


@dataclass
class _Geometry:
    ordered: list[SliceHeader]
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    positions: np.ndarray   # along the normal, mm, ascending
    shift: np.ndarray       # (K, 2) in-plane offset of each slice from the first (row, column directions), mm
    step: float
    regular: bool


def _slice_geometry(folder: Path, headers: list[SliceHeader]) -> _Geometry:
    orientation = np.mean([h.orientation for h in headers], axis=0)
    row, col = orientation[:3], orientation[3:]
    row = row / np.linalg.norm(row)
    col = col - row * float(row @ col)
    col = col / np.linalg.norm(col)
    normal = np.cross(row, col)
    along = np.array([float(h.position @ normal) for h in headers])
    order = np.argsort(along, kind="stable")
    ordered = [headers[n] for n in order]
    positions = along[order]
    gaps = np.diff(positions)
    step = float(np.median(gaps))
    tolerance = max(SPACING_EPSILON_MM, SPACING_EPSILON_FRACTION * abs(step))
    if step <= SPACING_EPSILON_MM or np.any(gaps < tolerance):
        at = positions[1:][gaps < tolerance]
        raise InputError(f"{folder}: two or more images lie at the same slice position ({at[0]:.2f} mm along the "
                         "slice normal): the series mixes acquisitions (echoes, phases, repeats); separate them into "
                         "folders of one acquisition each")
    if gaps.max() > MAX_GAP_STEPS * step:
        n = int(np.argmax(gaps))
        raise InputError(f"{folder}: slices are missing: a gap of {gaps[n]:.1f} mm between slices at "
                         f"{positions[n]:.1f} and {positions[n + 1]:.1f} mm, where the slice step is {step:.2f} mm; "
                         "the series is incomplete")
    offsets = np.array([h.position - ordered[0].position for h in ordered])
    shift = np.column_stack([offsets @ row, offsets @ col])
    mean_step = float((positions[-1] - positions[0]) / (len(positions) - 1))
    uniform = np.max(np.abs(positions - (positions[0] + mean_step * np.arange(len(positions))))) <= tolerance
    regular = bool(uniform and np.max(np.abs(shift)) <= tolerance)
    return _Geometry(ordered, row, col, normal, positions, shift, mean_step if regular else step, regular)


def _regularise(array: np.ndarray, geometry: _Geometry, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray, str]:
    """Resample slices at uneven or sheared positions onto a regular grid perpendicular to them.

    Output slice ``m`` lies at ``positions[0] + m·step`` along the normal; each of its voxels is
    interpolated linearly between the two nearest input slices, each sampled (bilinear) at
    that voxel's place in its own plane. Outside the data: the volume's minimum.
    """
    from scipy.ndimage import shift as shift_image

    positions, step, offsets = geometry.positions, geometry.step, geometry.shift
    count = int(round((positions[-1] - positions[0]) / step)) + 1
    targets = positions[0] + step * np.arange(count)
    fill = float(array.min())
    out = np.empty((count, *array.shape[1:]), np.float32)

    def plane(k: int) -> np.ndarray:
        u, v = offsets[k]
        if abs(u) < 1e-6 and abs(v) < 1e-6:
            return array[k].astype(np.float32)
        return shift_image(array[k].astype(np.float32), (v / dy, u / dx), order=1, mode="constant", cval=fill)

    for m, target in enumerate(targets):
        k0 = int(np.clip(np.searchsorted(positions, target, side="right") - 1, 0, len(positions) - 2))
        w = float(np.clip((target - positions[k0]) / (positions[k0 + 1] - positions[k0]), 0.0, 1.0))
        out[m] = plane(k0) if w < 1e-6 else plane(k0 + 1) if w > 1 - 1e-6 else (1 - w) * plane(k0) + w * plane(k0 + 1)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.column_stack([geometry.row * dx, geometry.col * dy, geometry.normal * step])
    ijk_to_lps[:3, 3] = geometry.ordered[0].position
    gaps = np.diff(positions)
    parts = []
    if np.max(np.abs(gaps - step)) > max(SPACING_EPSILON_MM, SPACING_EPSILON_FRACTION * step):
        parts.append(f"uneven slice spacing ({gaps.min():.2f}–{gaps.max():.2f} mm between {len(positions)} slices)")
    drift = np.linalg.norm(offsets[-1]) / max(positions[-1] - positions[0], 1e-9)
    if np.max(np.abs(offsets)) > max(SPACING_EPSILON_MM, SPACING_EPSILON_FRACTION * step):
        parts.append(f"slices sheared by {math.degrees(math.atan(drift)):.1f}° (gantry tilt)")
    note = (f"{' and '.join(parts)}: resampled onto a regular {step:.2f} mm grid perpendicular to the slices "
            f"({count} slices, linear interpolation), as Slicer's acquisition geometry regularisation does")
    return out, ijk_to_lps, note
