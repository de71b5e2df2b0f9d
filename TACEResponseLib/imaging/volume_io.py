"""Reading and writing scalar volumes (NRRD, NIfTI, MetaImage, DICOM series) with exact geometry.

SimpleITK reads and writes; ITK works in LPS, so the conversion to Slicer's RAS happens here
(flip of the first two rows), nowhere else. Writes are atomic (:mod:`TACEResponseLib.core.files`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path
from TACEResponseLib.imaging.geometry import (
    LPS_TO_RAS,
    Volume,
    check_volume,
    to_sitk_image,
)

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


# --- volumes ----------------------------------------------------------------------------
def volume_from_sitk(image, name: str, metadata: dict[str, Any] | None = None) -> Volume:
    import SimpleITK as sitk

    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * spacing
    ijk_to_lps[:3, 3] = image.GetOrigin()
    array = sitk.GetArrayFromImage(image)
    return Volume(array, LPS_TO_RAS @ ijk_to_lps, name, dict(metadata or {}))


def unreadable_image_error(path: Path, exc: Exception) -> InputError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(f"{path}: cannot be read as an image ({first_line[:200]})")


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a scalar volume (NRRD / NIfTI / MHA file, or a folder holding a DICOM series)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file or folder does not exist")
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise unreadable_image_error(path, exc) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed"
        )
    if image.GetDimension() != 3:
        raise InputError(f"{path}: is {image.GetDimension()}-D; a 3-D volume is needed")
    name = path.name.split(".")[0]
    volume = volume_from_sitk(image, name, {"source": str(path)})
    return check_volume(volume, label=str(path))


@contextlib.contextmanager
def _locale_kept() -> Iterator[None]:
    """GDCM (SimpleITK's DICOM reader) switches the process locale to "C" and leaves it so,
    after which Python reads and prints text as ASCII; put it back."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read one DICOM series from a folder (the only one, or the one named by ``series_uid``)."""
    import SimpleITK as sitk

    folder = Path(folder)
    with _locale_kept():
        series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])
        if not series:
            raise InputError(f"{folder}: no DICOM series found in this folder")
        if series_uid is None:
            if len(series) > 1:
                raise InputError(f"{folder}: holds {len(series)} DICOM series; choose one of {series}")
            series_uid = series[0]
        elif series_uid not in series:
            raise InputError(f"{folder}: DICOM series {series_uid} not found; available: {series}")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise unreadable_image_error(folder, exc) from None
    volume = volume_from_sitk(image, folder.name, {"source": str(folder), "series_uid": series_uid})
    return check_volume(volume, label=str(folder))


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a volume (format from the suffix) atomically; RAS geometry stored as LPS."""
    import SimpleITK as sitk

    path = Path(path)
    image = to_sitk_image(volume)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def read_phase_volumes(paths: Sequence[str | os.PathLike], phases: Sequence[str | None] = ()) -> list[Volume]:
    """Read the images of one case, each named by its phase/sequence when ``phases`` gives one.

    No resampling here: :func:`TACEResponseLib.imaging.patches.patches_for_case` resamples the other
    phases onto the first one around the tumour only.
    """
    volumes = []
    for n, path in enumerate(paths):
        volume = read_volume(path)
        phase = phases[n] if n < len(phases) else None
        volume.name = phase or volume.name
        volumes.append(volume)
    return volumes
