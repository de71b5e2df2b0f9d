"""DICOM series from a folder, with the geometry the slices' headers state — never a silently wrong one.

Headers are read with pydicom (pixels left on disk) and every file's pixel data are checked against
the size its header declares before anything is decoded (:mod:`.dicom_pixels`: truncated pixel data
are refused, not zero-padded). Uncompressed little-endian slices are read straight from the files
with the pixel type and rescale GDCM would give; any other transfer syntax is decoded by SimpleITK
(GDCM). The geometry is checked from every slice's ImagePositionPatient and
ImageOrientationPatient, as Slicer's DICOM reader does:

- a folder with several series: the one named (``FOLDER#N`` / ``FOLDER#UID``), the only one that
  is not a localizer, the one a DICOM SEG references, or an error listing them (UID — or "no
  SeriesInstanceUID" — modality, description, number of files); segmentations and other
  non-image objects beside the images are not candidates;
- a series that stacks several acquisitions at the same slice positions (multi-phase liver
  protocols) is split by AcquisitionNumber, else ContentTime, else AcquisitionTime; each
  acquisition is listed and chosen like a series (``FOLDER#UID@ACQ``);
- inside a series, localizer images and images of another orientation or size are left out
  (with a warning);
- two images at one position that no acquisition key separates (mixed acquisitions) are an error;
- slices not evenly spaced (a missing slice) or sheared (CT gantry tilt) are resampled onto a
  regular grid perpendicular to the slices, linearly between the two nearest slices, with a
  warning in ``Volume.metadata["warnings"]``; a gap wider than :data:`MAX_GAP_STEPS` slice steps
  (an incomplete series) is an error.

Positions are in LPS (DICOM) here, converted to RAS at the end."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.dicom_pixels import PixelLayout, pixel_layout, read_dataset
from TACEResponseLib.imaging.geometry import LPS_TO_RAS, Volume, check_volume
from TACEResponseLib.imaging.image_headers import check_decoded_size
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
    """What the geometry, the acquisition split and the decoding need from one DICOM file."""

    path: str
    position: np.ndarray | None   # ImagePositionPatient (LPS mm)
    orientation: np.ndarray | None  # ImageOrientationPatient (row, column direction cosines)
    size: tuple[int, ...]          # (columns, rows)
    localizer: bool
    series_uid: str = ""
    sop_uid: str = ""
    modality: str = ""
    description: str = ""
    acquisition: str = ""          # AcquisitionNumber
    times: tuple[str, str] = ("", "")  # (ContentTime, AcquisitionTime)
    rescale: tuple[float, float] = (1.0, 0.0)  # (slope, intercept)
    layout: PixelLayout | None = None
    sop_class: str = ""
    patient_id: str = ""
    study_uid: str = ""
    study_date: str = ""


@dataclass
class SeriesInfo:
    """One series of a folder (or one acquisition of a series that stacks several), as listed to the user."""

    uid: str
    files: list[str]
    modality: str
    description: str
    localizer: bool
    acquisition: str = ""          # "" = the whole series; else the acquisition's key (number or time)
    headers: list[SliceHeader] = field(default_factory=list)

    @property
    def key(self) -> str:
        """``UID`` or ``UID@ACQ``: how a user names it after ``FOLDER#``."""
        return f"{self.uid}@{self.acquisition}" if self.acquisition else self.uid

    def describe(self, number: int) -> str:
        name = (self.uid or "(no SeriesInstanceUID)") + (f"@{self.acquisition}" if self.acquisition else "")
        what = " ".join(p for p in (self.modality, repr(self.description) if self.description else "",
                                    f"acquisition {self.acquisition}" if self.acquisition else "",
                                    "localizer" if self.localizer else "") if p)
        return f"#{number} {name} ({what}, {len(self.files)} file{'s' if len(self.files) != 1 else ''})"

    @property
    def sop_uids(self) -> set[str]:
        return {h.sop_uid for h in self.headers if h.sop_uid}


#: DICOM objects in an image folder that are not images of the patient (segmentations, structure sets,
#: doses, reports, presentation states): left out of the image series when there are images
NOT_IMAGE_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.481.2",
                     "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
                     "1.2.840.10008.5.1.4.1.1.11.1"}


def _numbers(value, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in (value if not isinstance(value, str) else value.split("\\"))
                           if str(v).strip() != ""], np.float64)
    except (TypeError, ValueError):
        return None
    return values if values.size == count and np.all(np.isfinite(values)) else None


def _text(ds, tag: int) -> str:
    """One text element's value as written (multi-values joined by backslashes), without pydicom's
    per-value conversion (most of a header's reading time); "" when absent."""
    from pydicom.dataelem import RawDataElement

    if tag not in ds:
        return ""
    element = ds.get_item(tag)
    if isinstance(element, RawDataElement):
        raw = element.value or b""
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:  # an ISO 8859 character set: shown in listings only
            text = raw.decode("latin-1")
    else:
        value = element.value
        text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) or type(value).__name__ == \
            "MultiValue" else ("" if value is None else str(value))
    return text.strip("\x00 ").strip()


def _number(value, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def read_header(path: str) -> SliceHeader | None:
    """The header of one file (pydicom; pixels left on disk), or None when it is not a DICOM image.
    Truncated pixel data are an InputError (:func:`~.dicom_pixels.pixel_layout`)."""
    from pydicom.errors import InvalidDicomError

    try:
        ds = read_dataset(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None
    if "PixelData" not in ds and "SOPClassUID" not in ds:
        return None  # not DICOM (pydicom's forced read of another file)
    try:
        layout = pixel_layout(path, ds)
        get = (lambda tag: _text(ds, tag))
        return SliceHeader(
            path, _numbers(get(0x00200032), 3), _numbers(get(0x00200037), 6),
            (int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)), "LOCALIZER" in get(0x00080008).upper(),
            get(0x0020000E), get(0x00080018), get(0x00080060), get(0x0008103E), get(0x00200012),
            (get(0x00080033), get(0x00080032)), (_number(get(0x00281053) or 1, 1.0), _number(get(0x00281052) or 0, 0.0)),
            layout, get(0x00080016), get(0x00100020), get(0x0020000D), get(0x00080020))
    except InputError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: its DICOM header cannot be read ({exc})") from None


def _dicom_files(folder: Path) -> list[str]:
    """The files of ``folder`` (not its sub-folders) that may be DICOM, in name order."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"{folder}: cannot be listed ({exc.strerror})") from None
    return [e.path for e in entries if e.is_file() and not e.name.startswith(".") and e.name.upper() != "DICOMDIR"]


def read_headers(folder: str | os.PathLike, skip: Collection[str] = ()) -> list[SliceHeader]:
    """Every DICOM image header of ``folder`` (not its sub-folders); other files, and the paths in
    ``skip``, are skipped (never opened)."""
    return [h for h in (read_header(f) for f in _dicom_files(Path(folder)) if f not in skip) if h is not None]


def list_series(folder: str | os.PathLike, headers: list[SliceHeader] | None = None) -> list[SeriesInfo]:
    """The DICOM series in ``folder`` (not its sub-folders), each stacked acquisition of a series
    listed on its own (:func:`split_acquisitions`), ordered by series number then UID."""
    headers = read_headers(folder) if headers is None else headers
    images = [h for h in headers if h.sop_class not in NOT_IMAGE_CLASSES]
    headers = images or headers  # only segmentations etc.: listed, so that reading them says what they are
    by_uid: dict[str, list[SliceHeader]] = {}
    for header in headers:
        by_uid.setdefault(header.series_uid, []).append(header)
    series = []
    for uid, members in by_uid.items():
        first = members[0]
        for acquisition, part in split_acquisitions(members).items():
            series.append(SeriesInfo(uid, [h.path for h in part], first.modality, first.description,
                                     all(h.localizer for h in part), acquisition, part))
    return series


def _positions_repeat(headers: list[SliceHeader]) -> bool:
    keys = [tuple(np.round(h.position, 2)) for h in headers if h.position is not None and not h.localizer]
    return len(keys) != len(set(keys))


def split_acquisitions(headers: list[SliceHeader]) -> dict[str, list[SliceHeader]]:
    """A series whose images repeat slice positions (several contrast phases stacked in one series) split
    into its acquisitions: by AcquisitionNumber, else by ContentTime, else by AcquisitionTime — the
    first that gives every part distinct positions. ``{"": headers}`` when nothing repeats or no key
    separates them (the reader then says the series mixes acquisitions)."""
    if not _positions_repeat(headers):
        return {"": headers}
    for key in (lambda h: h.acquisition, lambda h: h.times[0], lambda h: h.times[1]):
        groups: dict[str, list[SliceHeader]] = {}
        for header in headers:
            groups.setdefault(key(header), []).append(header)
        if len(groups) > 1 and "" not in groups and not any(_positions_repeat(g) for g in groups.values()):
            return dict(sorted(groups.items(), key=lambda item: _acquisition_order(item[0])))
    return {"": headers}


def _acquisition_order(key: str) -> tuple:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def _choose(folder: Path, series: list[SeriesInfo], choice: str | None,
            referenced: set[str] | None = None) -> SeriesInfo:
    listing = "; ".join(s.describe(n) for n, s in enumerate(series, start=1))
    if choice is not None and str(choice).strip():
        choice = str(choice).strip()
        for info in series:
            if info.key and info.key == choice:
                return info
        parts = [s for s in series if s.uid and s.uid == choice]
        if len(parts) > 1:
            picked = _by_reference(parts, referenced)
            if picked is not None:
                return picked
            raise InputError(f"{folder}: series {choice} stacks {len(parts)} acquisitions at the same slice positions; "
                             f"choose one as {folder}#{choice}@ACQ: "
                             + "; ".join(s.describe(series.index(s) + 1) for s in parts))
        if choice.isdigit() and 1 <= int(choice) <= len(series):
            return series[int(choice) - 1]
        raise InputError(f"{folder}: DICOM series {choice!r} not found; the folder holds {listing}")
    if len(series) == 1:
        return series[0]
    picked = _by_reference(series, referenced)
    if picked is not None:
        return picked
    images = [s for s in series if not s.localizer]
    if len(images) == 1:
        logger.warning("%s: using series %s; ignoring the localizer series in the folder", folder,
                       images[0].uid or "(no SeriesInstanceUID)")
        return images[0]
    raise InputError(f"{folder}: holds {len(series)} DICOM series or acquisitions; choose one as {folder}#N (N from "
                     f"this list), {folder}#SERIES_UID or {folder}#SERIES_UID@ACQUISITION: {listing}")


def _by_reference(series: list[SeriesInfo], referenced: set[str] | None) -> SeriesInfo | None:
    """The one series/acquisition holding the images a segmentation references (its SOP Instance UIDs)."""
    if not referenced:
        return None
    hits = [(len(s.sop_uids & referenced), s) for s in series]
    best = max(count for count, _ in hits)
    chosen = [s for count, s in hits if count == best]
    if best == 0 or len(chosen) != 1:
        return None
    logger.info("using %s: the segmentation references %d of its images", chosen[0].key, best)
    return chosen[0]


def image_for_references(image: str | os.PathLike, referenced_instances: list[str] | set[str] | None) -> str:
    """``image`` itself, or — for a DICOM folder holding several series or stacked acquisitions —
    ``FOLDER#KEY`` of the one holding the images a DICOM SEG references (its SOP Instance UIDs)."""
    path = Path(image)
    if not referenced_instances or not path.is_dir():
        return str(image)
    series = list_series(path)
    if len(series) < 2:
        return str(image)
    chosen = _by_reference(series, set(referenced_instances))
    if chosen is None:
        return str(image)
    logger.info("%s: the segmentation's acquisition is %s", path, chosen.key or "(no SeriesInstanceUID)")
    return f"{path}#{chosen.key or series.index(chosen) + 1}"


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None, *,
                      read_file: Callable[[Path], Volume], referenced_instances: set[str] | None = None) -> Volume:
    """Read one DICOM series (or one acquisition of it) from ``folder`` with its geometry checked (see
    the module docstring). ``referenced_instances`` (SOP Instance UIDs a DICOM SEG references) choose
    among several series or stacked acquisitions when ``series_uid`` does not. ``read_file`` reads a
    series of one file (a multi-frame image) as an image file
    (:func:`~TACEResponseLib.imaging.volume_io.read_volume`, which calls this for a folder)."""
    folder = Path(folder)
    series = list_series(folder)
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder")
    chosen = _choose(folder, series, series_uid, referenced_instances)
    warnings: list[str] = []
    metadata = {"source": str(folder), "series_uid": chosen.uid, "acquisition": chosen.acquisition,
                "modality": chosen.modality, "description": chosen.description}
    if len(chosen.files) == 1:  # one file: a multi-frame image, or a single slice
        volume = read_file(Path(chosen.files[0]))
        volume.name = folder.name
        volume.metadata.update(metadata)
        return volume
    kept = _consistent_slices(folder, chosen.headers, warnings)
    geometry = _slice_geometry(folder, kept)
    array, (dx, dy) = _decode(folder, geometry.ordered)
    if geometry.regular:
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = np.column_stack([geometry.row * dx, geometry.col * dy, geometry.normal * geometry.step])
        ijk_to_lps[:3, 3] = geometry.ordered[0].position
    else:
        array, ijk_to_lps, note = _regularise(array, geometry, dx, dy)
        warnings.append(f"{folder}: {note}")
    for warning in warnings:
        logger.warning(warning)
    volume = Volume(array, LPS_TO_RAS @ ijk_to_lps, folder.name, {**metadata, "warnings": warnings})
    check_volume(volume, label=str(folder))
    return check_spacing(volume, label=str(folder))


def _decode(folder: Path, ordered: list[SliceHeader]) -> tuple[np.ndarray, tuple[float, float]]:
    """The slices' pixels ``[k, j, i]`` with rescale slope/intercept applied, and the pixel spacing
    (column, row step in mm). Uncompressed little-endian slices are read straight from the files with
    the pixel type GDCM would give; anything else is decoded by SimpleITK (GDCM)."""
    fast = _native_pixel_type(ordered)
    first = ordered[0].layout
    if first is not None:  # the decoded size against the reading limits, before any pixel is decoded
        check_decoded_size(str(folder), (first.columns, first.rows, len(ordered)), fast.itemsize if fast else 4)
    if fast is None:
        return _decode_with_sitk(folder, ordered)
    stored_type = first.numpy_dtype()
    out = np.empty((len(ordered), first.rows, first.columns), fast)
    count = first.rows * first.columns
    for k, header in enumerate(ordered):
        raw = np.fromfile(header.path, dtype=stored_type, count=count, offset=header.layout.offset)
        raw = _stored_bits(raw, first)
        slope, intercept = header.rescale
        if slope == 1.0 and intercept == 0.0:
            out[k] = raw.reshape(first.rows, first.columns)
        else:
            np.add(raw.reshape(first.rows, first.columns).astype(fast, copy=False) * fast.type(slope),
                   fast.type(intercept), out=out[k], casting="unsafe")
    return out, _pixel_spacing(ordered[0].path)


def _native_pixel_type(ordered: list[SliceHeader]) -> np.dtype | None:
    """The output type of the fast path (GDCM's choice for these pixels and rescale), or None when the
    slices need SimpleITK: compressed, big endian, colour, MONOCHROME1, differing layouts, or a
    rescale that is not a whole number."""
    layouts = [h.layout for h in ordered]
    if any(lay is None or not lay.native or lay.frames != 1 for lay in layouts):
        return None
    first = layouts[0]
    shape_bits = (first.rows, first.columns, first.bits_allocated, first.bits_stored, first.signed)
    if any((lay.rows, lay.columns, lay.bits_allocated, lay.bits_stored, lay.signed) != shape_bits for lay in layouts):
        return None
    rescales = {h.rescale for h in ordered}
    if len(rescales) != 1:
        return None
    slope, intercept = next(iter(rescales))
    if slope == 1.0 and intercept == 0.0:
        return first.numpy_dtype()
    if slope != round(slope) or intercept != round(intercept):
        return None
    bits = min(first.bits_stored, first.bits_allocated)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if first.signed else (0, 2 ** bits - 1)
    values = sorted((lo * slope + intercept, hi * slope + intercept))
    for dtype in ((np.uint8, np.uint16, np.uint32) if values[0] >= 0 else (np.int8, np.int16, np.int32)):
        info = np.iinfo(dtype)
        if info.min <= values[0] and values[1] <= info.max:
            return np.dtype(dtype)
    return None


def _stored_bits(raw: np.ndarray, layout: PixelLayout) -> np.ndarray:
    """Only the BitsStored low bits of each pixel, sign-extended for signed pixels (as GDCM reads them)."""
    bits = layout.bits_stored
    if bits >= layout.bits_allocated or bits <= 0:
        return raw
    unsigned = raw.view(raw.dtype.str.replace("i", "u")) & np.array((1 << bits) - 1, raw.dtype.str.replace("i", "u"))
    if not layout.signed:
        return unsigned
    shift = layout.bits_allocated - bits
    return (unsigned.view(raw.dtype) << shift) >> shift


def _pixel_spacing(path: str) -> tuple[float, float]:
    """(column step, row step) in mm: PixelSpacing (row spacing\\column spacing), else ImagerPixelSpacing, else 1."""
    ds = read_dataset(path)
    for name in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _numbers(ds.get(name), 2)
        if values is not None and np.all(values > 0):
            return float(values[1]), float(values[0])
    return 1.0, 1.0


def _decode_with_sitk(folder: Path, ordered: list[SliceHeader]) -> tuple[np.ndarray, tuple[float, float]]:
    import SimpleITK as sitk

    with locale_kept():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([h.path for h in ordered])
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "non uniform sampling": checked here instead
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise unreadable_image_error(folder, exc) from None
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    dx, dy = (float(v) for v in image.GetSpacing()[:2])
    return sitk.GetArrayFromImage(image), (dx, dy)


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
