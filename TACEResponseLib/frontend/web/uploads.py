"""What a browser may upload into a session, and how a batch of uploaded files is read.

Uploads are limited in type (by file name, or by content for DICOM files, which often have no
suffix), in size per file, in number of files and in total bytes per session. The launcher checks
these while it streams the bytes to disk (nothing is held in memory); the session then reads the
batch folder with the library's own readers.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import safe_file_name

logger = logging.getLogger(__name__)

#: image files a case may be opened from (``.raw``/``.raw.gz``/``.img`` only beside their header)
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".raw", ".raw.gz", ".dcm", ".ima")
#: tumour segmentations: Slicer's .seg.nrrd, a labelmap volume, or a DICOM SEG
SEGMENTATION_SUFFIXES = (".seg.nrrd", ".nrrd", ".nii", ".nii.gz", ".mha", ".dcm")
KINDS = {"image": IMAGE_SUFFIXES, "segmentation": SEGMENTATION_SUFFIXES}
_DATA_ONLY = (".raw", ".raw.gz")
DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class UploadLimits:
    """Limits of one session's uploads (bytes and counts)."""

    max_file_bytes: int = 1024 * 1024 * 1024
    max_session_bytes: int = 4 * 1024 * 1024 * 1024
    max_files: int = 4000

    def to_client(self) -> dict:
        """What the page checks before sending (the launcher checks again while receiving)."""
        return {**asdict(self), "accept": {kind: list(suffixes) for kind, suffixes in KINDS.items()}}


def is_dicom(head: bytes) -> bool:
    """True for a DICOM Part 10 file: ``DICM`` after the 128-byte preamble."""
    return len(head) >= DICOM_MAGIC_OFFSET + 4 and head[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM"


def has_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    lower = name.lower()
    return any(lower.endswith(suffix) for suffix in suffixes)


def upload_problem(name: str, kind: str, head: bytes = b"") -> str | None:
    """Why a file may not be uploaded as ``kind`` ("image" or "segmentation"), or None."""
    if kind not in KINDS:
        return f"unknown upload kind {kind!r}; expected one of {sorted(KINDS)}"
    if not name or name in (".", ".."):
        return "the file has no name"
    if has_suffix(name, KINDS[kind]) or is_dicom(head):  # a DICOM image, or a DICOM SEG as the segmentation
        return None
    allowed = ", ".join(KINDS[kind]) + " or DICOM files"
    return f"{name}: not an accepted {kind} file ({allowed})"


def stored_name(name: str) -> str:
    """The file name an upload is stored under: no folders, nothing hidden, multi-part suffixes kept."""
    return safe_file_name(Path(str(name).replace("\\", "/")).name, fallback="upload")


def read_upload_batch(folder: str | Path):
    """The volumes of an image batch: one DICOM series, or one volume per image file.

    Returns a list of :class:`~TACEResponseLib.imaging.geometry.Volume`; InputError when the folder
    holds no readable image (the message names the file and the reason).
    """
    from TACEResponseLib.imaging.volume_io import read_dicom_series, read_volume

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise InputError("no file was uploaded")
    dicom = [p for p in files if has_suffix(p.name, (".dcm", ".ima")) or _starts_as_dicom(p)]
    if dicom:
        if len(dicom) != len(files):
            others = ", ".join(p.name for p in files if p not in dicom)
            raise InputError(f"DICOM files and other files uploaded together ({others}); upload one series at a time")
        return [read_dicom_series(folder)]
    volumes = []
    for path in files:
        if has_suffix(path.name, _DATA_ONLY):
            continue  # the data file of a .nhdr/.mhd header, read through its header
        volumes.append(read_volume(path))
    if not volumes:
        raise InputError("only data files (.raw) were uploaded; upload their header (.nhdr/.mhd) with them")
    return volumes


def _starts_as_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        return is_dicom(handle.read(DICOM_MAGIC_OFFSET + 4))
