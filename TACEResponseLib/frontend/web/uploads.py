"""What a browser may upload into a session, and how a batch of uploaded files is read.

Uploads are limited in type (by file name, or by content for DICOM files, which often have no
suffix), in size per file, in number of files and in total bytes per session. The launcher
reserves an upload's declared size and one file of the session's quota before it streams the bytes
to disk (:class:`UploadQuota`: parallel uploads cannot pass the caps), then checks the bytes as they
come (nothing is held in memory); the session then reads the batch folder with the library's own
readers under the web's reading rules: only self-contained image files (no detached header naming
a data file, not even beside it) and the decoding limits per image and per session
(:mod:`TACEResponseLib.imaging.image_headers`). Error messages name the uploaded files, never the
session's folder on the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import safe_file_name

logger = logging.getLogger(__name__)

#: image files a case may be opened from: self-contained ones (no .nhdr/.mhd/.hdr with a data file)
IMAGE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".dcm", ".ima")
#: tumour segmentations: Slicer's .seg.nrrd, a labelmap volume, or a DICOM SEG
SEGMENTATION_SUFFIXES = (".seg.nrrd", ".nrrd", ".nii", ".nii.gz", ".mha", ".dcm")
KINDS = {"image": IMAGE_SUFFIXES, "segmentation": SEGMENTATION_SUFFIXES}
DICOM_MAGIC_OFFSET = 128
#: the longest file or batch name accepted (file systems allow 255 bytes)
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class UploadLimits:
    """Limits of one session's uploads (bytes and counts) and of the images it decodes from them."""

    max_file_bytes: int = 1024 * 1024 * 1024
    max_session_bytes: int = 4 * 1024 * 1024 * 1024
    max_files: int = 4000
    max_image_voxels: int = 1 << 29            # 536,870,912, e.g. 512 × 512 × 2048
    max_image_bytes: int = 1024 * 1024 * 1024  # one image decoded
    max_decoded_bytes: int = 2 * 1024 * 1024 * 1024  # the images a session holds at once, decoded

    def to_client(self) -> dict:
        """What the page checks before sending (the launcher checks again while receiving)."""
        return {"max_file_bytes": self.max_file_bytes, "max_session_bytes": self.max_session_bytes,
                "max_files": self.max_files, "accept": {kind: list(suffixes) for kind, suffixes in KINDS.items()}}

    def reading_rules(self):
        """A session's reading rules: these decoding limits and its budget (uploads are read as
        self-contained files on top: :func:`read_upload_batch`; ``--image`` files of the command as
        the library reads them)."""
        from TACEResponseLib.imaging.image_headers import DataFiles, DecodeBudget, DecodeLimits, ReadRules

        return ReadRules(DataFiles.SAME_FOLDER, DecodeLimits(self.max_image_voxels, self.max_image_bytes),
                         DecodeBudget(self.max_decoded_bytes))


@dataclass
class UploadQuota:
    """A session's uploads: stored, and reserved by uploads still streaming."""

    limits: UploadLimits
    stored_bytes: int = 0
    stored_files: int = 0
    reserved_bytes: int = 0
    reserved_files: int = 0

    def reserve(self, name: str, declared: int) -> str | None:
        """Reserve ``declared`` bytes and one file for an upload about to stream, or say why not.
        Called with no ``await`` between the check and the reservation, so parallel uploads see each other."""
        limits = self.limits
        if declared > limits.max_file_bytes:
            return f"{name}: {declared / 1e6:.1f} MB is more than the {limits.max_file_bytes / 1e6:.0f} MB allowed per file"
        if self.stored_files + self.reserved_files >= limits.max_files:
            return f"{name}: more than {limits.max_files} files uploaded in this session"
        if self.stored_bytes + self.reserved_bytes + declared > limits.max_session_bytes:
            return f"{name}: this session's uploads would pass {limits.max_session_bytes / 1e6:.0f} MB"
        self.reserved_bytes += declared
        self.reserved_files += 1
        return None

    def settle(self, declared: int, stored: int | None) -> None:
        """End a reservation: ``stored`` bytes kept (None: the upload was refused or failed)."""
        self.reserved_bytes -= declared
        self.reserved_files -= 1
        if stored is not None:
            self.stored_bytes += stored
            self.stored_files += 1


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


def name_problem(name: str) -> str | None:
    """Why a file or batch name cannot be stored (too long for the file system), or None."""
    if len(stored_name(name).encode("utf-8")) > MAX_NAME_LENGTH:
        return f"{name[:40]}…: a file name longer than {MAX_NAME_LENGTH} characters; rename the file"
    return None


def read_upload_batch(folder: str | Path):
    """The volumes of an image batch: one DICOM series, or one volume per image file.

    Read under the rules in force (the session's: self-contained files, decoding limits; the batch
    replaces the images the session held). Returns a list of
    :class:`~TACEResponseLib.imaging.geometry.Volume`; InputError when the folder holds no readable
    image (the message names the file and the reason, not the folder).
    """
    from TACEResponseLib.imaging.image_headers import DataFiles, current_rules, reading_rules
    from TACEResponseLib.imaging.volume_io import read_dicom_series, read_volume

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise InputError("no file was uploaded")
    budget = current_rules().budget
    with _without_folder(folder), reading_rules(data_files=DataFiles.SELF_CONTAINED), \
            (budget.slot("images") if budget else _nothing()):
        dicom = [p for p in files if has_suffix(p.name, (".dcm", ".ima")) or _starts_as_dicom(p)]
        if dicom:
            if len(dicom) != len(files):
                others = ", ".join(p.name for p in files if p not in dicom)
                raise InputError(f"DICOM files and other files uploaded together ({others}); upload one series at a time")
            return [read_dicom_series(folder)]
        return [read_volume(path) for path in files]


def read_upload_segmentation(folder: str | Path):
    """The one segmentation file of an upload batch (.seg.nrrd or labelmap), read under the rules in
    force (it replaces the segmentation the session held); messages name the file, not the folder."""
    from TACEResponseLib.imaging.image_headers import DataFiles, current_rules, reading_rules
    from TACEResponseLib.imaging.segmentation import read_segmentation

    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        raise InputError(f"upload one segmentation file at a time ({len(files)} given)")
    budget = current_rules().budget
    with _without_folder(folder), reading_rules(data_files=DataFiles.SELF_CONTAINED), \
            (budget.slot("segmentation") if budget else _nothing()):
        return read_segmentation(files[0])


@contextlib.contextmanager
def _nothing():
    yield


@contextlib.contextmanager
def _without_folder(folder: Path):
    """InputErrors raised inside name files by their upload name, not their place on the server."""
    try:
        yield
    except InputError as exc:
        message = str(exc)
        for form in {str(folder), str(folder.resolve())}:
            message = message.replace(form + os.sep, "").replace(form, "the upload")
        raise InputError(message) from None


def _starts_as_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        return is_dicom(handle.read(DICOM_MAGIC_OFFSET + 4))
