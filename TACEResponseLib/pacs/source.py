"""The DICOM series a prediction's reference image came from: what every result object refers to.

DICOM results belong to the source: the same patient and study (Study Instance UID), the source's
frame of reference (so a viewer overlays SEG and parametric map on the CT), and references to the
source images' SOP instances. So ``--dicom-out`` needs the reference image as DICOM — a folder
(``FOLDER``, ``FOLDER#N``, ``FOLDER#SERIES_UID``) or one multi-frame file — whose headers carry
those identifiers; anything else is refused before any work (:func:`check_dicom_reference`).

Geometry: our volumes index voxels ``(i, j, k)`` → RAS with arrays ``[k, j, i]``; highdicom's volumes
index ``(slice, row, column)`` → LPS. :func:`highdicom_affine` converts one into the other exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import LPS_TO_RAS, Volume

logger = logging.getLogger(__name__)

#: identifiers every source image must carry (what the results refer to)
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


@dataclass
class SourceSeries:
    """The headers (no pixel data) of the images a reference volume was read from, and where from."""

    path: Path
    datasets: list[Any]

    @property
    def first(self) -> Any:
        return self.datasets[0]

    @property
    def study_uid(self) -> str:
        return str(self.first.StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.first.SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.FrameOfReferenceUID)

    @property
    def modality(self) -> str:
        return str(self.first.get("Modality", "") or "")

    def describe(self) -> str:
        return (f"{self.path} (series {self.series_uid}, {len(self.datasets)} image"
                f"{'s' if len(self.datasets) != 1 else ''}, {self.modality or 'no modality'})")


#: the versions the DICOM objects are written with (requirements.txt pins the same)
WRITER = "highdicom==0.28.2"


def check_dicom_writer() -> None:
    """highdicom (and the pydicom 3 it needs) importable here, or one InputError saying what to install.
    3D Slicer 5.10 ships pydicom 2.4, which highdicom 0.28 cannot use."""
    import importlib.util

    import pydicom

    major = int(str(pydicom.__version__).split(".")[0])
    if major < 3:
        raise InputError(f"DICOM results need highdicom 0.28 with pydicom 3; this Python has pydicom "
                         f"{pydicom.__version__} (3D Slicer 5.10 ships 2.4.4): write them with tace-response outside "
                         f"Slicer, or install {WRITER} here (it updates pydicom)")
    if importlib.util.find_spec("highdicom") is None:
        raise InputError(f"DICOM results need highdicom, which is not installed here: pip install {WRITER}")


def split_choice(path: str | Path) -> tuple[Path, str | None]:
    """``FOLDER#CHOICE`` → (FOLDER, CHOICE) when FOLDER is a folder; otherwise (path, None)."""
    path = Path(path)
    if not path.exists() and "#" in path.name:
        folder, choice = str(path).rsplit("#", 1)
        if Path(folder).is_dir():
            return Path(folder), choice
    return path, None


def _dicom_header(path: Path):
    """The header of a DICOM file, or None when it is not one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, AttributeError, KeyError):
        return None


def _not_dicom(path: Path, why: str) -> InputError:
    return InputError(f"--dicom-out: the reference image {path} {why}; DICOM results are written beside DICOM "
                      "input only: they take the source series' patient, study and frame of reference and refer "
                      "to its images (give the DICOM folder, or leave --dicom-out out)")


def _series_files(folder: Path, choice: str | None, series_uid: str | None) -> list[Path]:
    """The files of the series the reader chose in ``folder`` (by the UID it recorded, else the choice)."""
    from TACEResponseLib.imaging.dicom import list_series

    series = list_series(folder)
    if not series:
        raise _not_dicom(folder, "is a folder without DICOM images")
    if series_uid:
        for info in series:
            if info.uid == series_uid:
                return [Path(f) for f in info.files]
    if choice and choice.isdigit() and 1 <= int(choice) <= len(series):
        return [Path(f) for f in series[int(choice) - 1].files]
    if choice:
        for info in series:
            if info.uid == choice:
                return [Path(f) for f in info.files]
    images = [s for s in series if not s.localizer] or series
    if len(images) == 1:
        return [Path(f) for f in images[0].files]
    raise InputError(f"--dicom-out: {folder} holds {len(series)} DICOM series; name the one predicted as "
                     f"{folder}#N or {folder}#SERIES_UID")


def _without_uids(path: Path, missing: list[str]) -> InputError:
    return InputError(f"--dicom-out: the reference image {path} is DICOM without {', '.join(missing)} (an anonymised "
                      "export?); DICOM results join the source's study and frame of reference and refer to its images "
                      "by these identifiers (use the original series, or leave --dicom-out out)")


def _missing_uids(dataset, path: Path) -> list[str]:
    return [name for name in REQUIRED_UIDS if not str(dataset.get(name, "") or "").strip()] if dataset else ["all"]


def _as_list(paths: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def _source_files(paths: str | Path | Sequence[str | Path], series_uid: str | None) -> list[Path]:
    """The files of the source series: each path a series folder (``FOLDER#N`` accepted) or a file."""
    files: list[Path] = []
    for path in _as_list(paths):
        folder, choice = split_choice(path)
        if folder.is_dir():
            files += _series_files(folder, choice, series_uid)
        elif folder.is_file():
            if _dicom_header(folder) is None:
                suffix = "".join(folder.suffixes[-2:]) or folder.suffix
                raise _not_dicom(folder, f"is not DICOM ({suffix or 'no suffix'} file)")
            files.append(folder)
        else:
            raise InputError(f"--dicom-out: the DICOM source {folder} does not exist")
    return files


def check_dicom_reference(paths: str | Path | Sequence[str | Path], quick: bool = False) -> None:
    """Refuse, before any work, a source that cannot carry DICOM results: not DICOM (NRRD, NIfTI …), or
    DICOM images without the identifiers the results must copy and refer to. ``paths``: the reference
    image as given (a DICOM folder, ``FOLDER#N``, a file) or the files of its series; ``quick``: only
    the first file looked at."""
    check_dicom_writer()
    paths = _as_list(paths)
    if len(paths) == 1 and not split_choice(paths[0])[0].exists():
        return  # the reader says so, with the same words as without --dicom-out
    files = _source_files(paths, None)
    for file in files[:1] if quick else files:
        missing = _missing_uids(_dicom_header(file), file)
        if missing:
            raise _without_uids(file, missing)


def read_source_series(paths: str | Path | Sequence[str | Path], reference: Volume) -> SourceSeries:
    """The headers of the images ``reference`` was read from — ``paths``: what was given as the
    reference image, or the files of its series — localizers and images of another orientation or size
    than the volume left out, as the reader left them out."""
    paths = _as_list(paths)
    folder = split_choice(paths[0])[0]
    files = _source_files(paths, reference.metadata.get("series_uid"))
    datasets = []
    for file in files:
        header = _dicom_header(file)
        missing = _missing_uids(header, file)
        if missing:
            raise _without_uids(file, missing)
        datasets.append(header)
    if len(datasets) > 1:
        datasets = _slices_of(datasets, reference)
        _check_on_source(datasets, reference, folder)
    studies = {str(d.StudyInstanceUID) for d in datasets}
    if len(studies) > 1:
        raise InputError(f"{folder}: the series' images name {len(studies)} different studies; DICOM results "
                         "belong to one study")
    series = {str(d.SeriesInstanceUID) for d in datasets}
    if len(series) > 1:
        raise InputError(f"{folder}: the DICOM source holds {len(series)} series; give the one series the reference "
                         "image was read from")
    frames = {str(d.FrameOfReferenceUID) for d in datasets}
    if len(frames) > 1:
        raise InputError(f"{folder}: the series' images name {len(frames)} frames of reference; a SEG and a "
                         "parametric map are placed in one")
    return SourceSeries(folder, datasets)


def _slices_of(datasets: list[Any], reference: Volume) -> list[Any]:
    """The single-frame images that are slices of ``reference`` (same orientation, rows and columns,
    not a localizer), ordered along the slice normal."""
    row_col = reference.direction  # RAS columns: i (row direction of the image), j (column direction)
    want = (LPS_TO_RAS[:3, :3] @ row_col[:, 0], LPS_TO_RAS[:3, :3] @ row_col[:, 1])
    shape = reference.shape_kji
    kept = []
    for ds in datasets:
        orientation = np.asarray(ds.get("ImageOrientationPatient") or [0] * 6, float)
        localizer = "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]
        if localizer or int(ds.get("Rows", 0)) != shape[1] or int(ds.get("Columns", 0)) != shape[2]:
            continue
        if np.allclose(orientation[:3], want[0], atol=1e-3) and np.allclose(orientation[3:], want[1], atol=1e-3):
            kept.append(ds)
    if not kept:
        raise InputError("--dicom-out: none of the series' images has the orientation and size of the volume read "
                         "from it; the results could not refer to them")
    normal = np.cross(want[0], want[1])
    return sorted(kept, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, float) @ normal))


def _check_on_source(datasets: list[Any], reference: Volume, folder: Path) -> None:
    """The reference volume's first slice is one of the source's slices (same place, to 0.01 mm): a volume
    read from another series, or moved since, would put the SEG and the map beside the anatomy."""
    origin_lps = (LPS_TO_RAS @ reference.ijk_to_ras @ np.array([0.0, 0.0, 0.0, 1.0]))[:3]
    positions = np.array([np.asarray(d.ImagePositionPatient, float) for d in datasets])
    if np.min(np.linalg.norm(positions - origin_lps, axis=1)) > 0.01 + 1e-3 * float(np.max(reference.spacing)):
        raise InputError(f"--dicom-out: the reference image does not lie on the slices of the DICOM source {folder} "
                         "(another series, or a volume moved or resampled since it was read); the results would not "
                         "overlay the source")


def highdicom_affine(volume: Volume) -> np.ndarray:
    """The 4×4 matrix of ``volume``'s grid as highdicom indexes it: (slice k, row j, column i) → LPS mm."""
    ijk_to_lps = LPS_TO_RAS @ volume.ijk_to_ras  # LPS_TO_RAS is its own inverse
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = ijk_to_lps[:3, 2], ijk_to_lps[:3, 1], ijk_to_lps[:3, 0]
    affine[:3, 3] = ijk_to_lps[:3, 3]
    return affine


def highdicom_volume(array_kji: np.ndarray, grid: Volume, frame_of_reference_uid: str,
                     channels: dict[str, list] | None = None):
    """``array_kji`` (indexed like ``grid``'s arrays; ``channels`` describe the axes after the three
    spatial ones) as a :class:`highdicom.Volume` on ``grid``'s geometry."""
    import highdicom as hd

    return hd.Volume(array_kji, highdicom_affine(grid), "PATIENT", frame_of_reference_uid=frame_of_reference_uid,
                     channels=channels)


def highdicom_geometry(grid: Volume, frame_of_reference_uid: str | None = None):
    """``grid``'s geometry as a :class:`highdicom.VolumeGeometry` (to place what is read back on it)."""
    import highdicom as hd

    return hd.VolumeGeometry(highdicom_affine(grid), grid.shape_kji, "PATIENT",
                             frame_of_reference_uid=frame_of_reference_uid)
