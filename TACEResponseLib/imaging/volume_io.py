"""Reading and writing scalar volumes (NRRD, NIfTI, MetaImage, DICOM series) with exact geometry.

SimpleITK reads and writes; ITK works in LPS, so the conversion to Slicer's RAS happens here
(flip of the first two rows), nowhere else. Writes are atomic (:mod:`TACEResponseLib.core.files`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path
from TACEResponseLib.imaging import dicom
from TACEResponseLib.imaging.dicom_pixels import pixel_layout, read_dataset
from TACEResponseLib.imaging.geometry import (
    LPS_TO_RAS,
    Volume,
    array_of,
    check_volume,
    to_sitk_image,
    value_range_of,
)
from TACEResponseLib.imaging.image_headers import check_image_file
from TACEResponseLib.imaging.itk_reading import locale_kept, unreadable_image_error
from TACEResponseLib.imaging.sanity import check_spacing

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


# --- volumes ----------------------------------------------------------------------------
def volume_from_sitk(image, name: str, metadata: dict[str, Any] | None = None) -> Volume:
    """A Volume sharing ``image``'s voxel buffer (no copy), its geometry converted from LPS to RAS."""
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * spacing
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return Volume(array_of(image), LPS_TO_RAS @ ijk_to_lps, name, dict(metadata or {}))


#: readers whose files carry no patient geometry (origin, orientation, voxel size)
_NO_GEOMETRY_IO = {"PNGImageIO", "JPEGImageIO", "BMPImageIO", "TIFFImageIO", "GiplImageIO", "LSMImageIO",
                   "VTKImageIO", "BioRadImageIO", "StimulateImageIO"}
#: DICOM objects that are not images of the patient
_NOT_IMAGES = {"1.2.840.10008.5.1.4.1.1.66.4": "a DICOM segmentation (SEG)",
               "1.2.840.10008.5.1.4.1.1.481.2": "a radiotherapy dose (RTDOSE)",
               "1.2.840.10008.5.1.4.1.1.481.3": "a radiotherapy structure set (RTSTRUCT)"}


def read_volume(path: str | os.PathLike, series_uid: str | None = None, check_values: bool = True) -> Volume:
    """Read a scalar volume: an NRRD / NIfTI / MHA / DICOM file, or a folder holding a DICOM series.

    A folder with several series is read as ``FOLDER#N`` (N-th series in the listing the error
    gives) or ``FOLDER#UID`` (``series_uid`` does the same). Files without patient geometry
    (PNG, TIFF, an MRC map without a cell size, a multi-frame DICOM without frame positions),
    truncated data and voxel sizes outside 0.05–30 mm are refused with an InputError; so
    are NaN or infinite voxels unless ``check_values=False``. Before any voxel is decoded,
    :func:`~.image_headers.check_image_file` refuses data files outside the header's folder and
    images larger than the decoding limits. The one pass over the voxels that
    checks them also records their range for :func:`~TACEResponseLib.imaging.sanity.check_scan`
    (:func:`~.geometry.value_range_of`). The array is SimpleITK's own buffer, not a copy.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists() and "#" in path.name:
        folder, choice = str(path).rsplit("#", 1)
        if Path(folder).is_dir():
            return read_dicom_series(folder, choice)
    if not path.exists():
        raise InputError(f"{path}: file or folder does not exist")
    if path.is_dir():
        return read_dicom_series(path, series_uid)  # values checked there
    check_image_file(path)  # its data files and decoded size, before anything is decoded
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with locale_kept():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise unreadable_image_error(path, exc) from None
    _check_has_geometry(path, reader)
    _check_declared_spacing(path)
    try:
        with locale_kept():
            image = reader.Execute()
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
    if check_values:
        value_range_of(volume)  # the one pass over the voxels: NaN below, the range for check_scan
    check_volume(volume, label=str(path), allow_nan=not check_values)
    return check_spacing(volume, label=str(path))


def _check_has_geometry(path: Path, reader) -> None:
    """Refuse formats and files that do not say where the voxels are in the patient."""
    import SimpleITK as sitk

    io = reader.GetImageIO() or sitk.ImageFileReader.GetImageIOFromFileName(str(path))
    if io in _NO_GEOMETRY_IO:
        raise InputError(f"{path}: a {io.replace('ImageIO', '')} file has no patient geometry (origin, orientation, "
                         "voxel size); export the image as DICOM, NRRD or NIfTI")
    if io == "MRCImageIO":
        import struct

        with open(path, "rb") as handle:
            header = handle.read(52)
        cell = struct.unpack("<3f", header[40:52]) if len(header) == 52 else (0.0, 0.0, 0.0)
        if not all(c > 0 for c in cell):
            raise InputError(f"{path}: this MRC file stores no voxel size (its cell dimensions are {cell}); "
                             "convert it to NRRD or NIfTI with the true spacing")
    if io == "GDCMImageIO":
        get = (lambda key: reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else "")
        sop = get("0008|0016")
        if sop in _NOT_IMAGES:
            raise InputError(f"{path}: is {_NOT_IMAGES[sop]}, not an image")
        pixel_layout(path, read_dataset(path))  # truncated pixel data: refused before GDCM pads them with zeros
        frames = int(get("0028|0008") or 1) if get("0028|0008").isdigit() else 1
        if frames > 1 and reader.GetOrigin() == (0.0, 0.0, 0.0) and reader.GetSpacing() == (1.0, 1.0, 1.0) \
                and not get("0028|0030"):
            raise InputError(f"{path}: multi-frame DICOM without frame positions or pixel spacing (no functional "
                             "groups); its geometry is unknown")


def _check_declared_spacing(path: Path) -> None:
    """ITK reads a zero or negative voxel size in the header as a positive one (or fails later):
    refuse what the file itself declares."""
    import gzip
    import re
    import struct

    name = path.name.lower()
    values: list[float] = []
    try:
        if name.endswith((".mha", ".mhd", ".nrrd", ".nhdr")):
            with open(path, "rb") as handle:
                header = handle.read(4096).split(b"\n\n")[0].decode("latin-1")
            match = re.search(r"^(ElementSpacing|spacings)\s*[=:]\s*(.+)$", header, re.M | re.I)
            if match:
                values = [float(v) for v in match.group(2).split() if v.lower() != "nan"]
        elif name.endswith((".nii", ".nii.gz")):
            with (gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")) as handle:
                header = handle.read(348)
            if len(header) == 348:
                endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
                dims = struct.unpack(f"{endian}h", header[40:42])[0]
                values = list(struct.unpack(f"{endian}3f", header[80:92]))[:max(0, min(dims, 3))]
    except (OSError, ValueError, EOFError, struct.error):
        return  # unreadable headers are reported by ITK's own reading
    if any(not v > 0 for v in values):
        raise InputError(f"{path}: the header declares voxel size {' × '.join(f'{v:g}' for v in values)} mm; "
                         "a voxel size must be positive")


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """One DICOM series from a folder (:func:`TACEResponseLib.imaging.dicom.read_dicom_series`; a series of
    one file, a multi-frame image, is read as any image file is)."""
    return dicom.read_dicom_series(folder, series_uid, read_file=read_volume)


#: formats whose header names a separate data file (written under the header's own name)
DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a volume (format from the suffix) atomically; RAS geometry stored as LPS."""
    import SimpleITK as sitk

    path = Path(path)
    image = to_sitk_image(volume)
    if path.suffix.lower() in DETACHED_HEADER_SUFFIXES:
        # a detached header names its data file after itself: written under the final names in a
        # staging folder, the data file renamed into place first and the header last
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            sitk.WriteImage(image, str(staging / path.name), compress)
            for written in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
                os.replace(written, path.parent / written.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def read_phase_volumes(paths: Sequence[str | os.PathLike], phases: Sequence[str | None] = (),
                       check_values: bool = True) -> list[Volume]:
    """Read the images of one case, each named by its phase/sequence when ``phases`` gives one.

    No resampling here: :func:`TACEResponseLib.imaging.patches.patches_for_case` resamples the other
    phases onto the first one around the tumour only. ``check_values``: as :func:`read_volume`.
    """
    volumes = []
    for n, path in enumerate(paths):
        volume = read_volume(path, check_values=check_values)
        phase = phases[n] if n < len(phases) else None
        volume.name = phase or volume.name
        volumes.append(volume)
    return volumes
