"""What every ITK (SimpleITK / GDCM) reader of the imaging package shares: ITK's errors turned into
one clear line, and the process locale GDCM changes put back.

Below both :mod:`~TACEResponseLib.imaging.volume_io` (image files, and the dispatch of a folder to
the DICOM reader) and :mod:`~TACEResponseLib.imaging.dicom` (DICOM series), so that imports between
those two run one way: ``volume_io`` → ``dicom`` → here.
"""

from __future__ import annotations

import contextlib
import locale
import re
from pathlib import Path
from typing import Iterator

from TACEResponseLib.core.errors import InputError


def unreadable_image_error(path: Path, exc: Exception) -> InputError:
    """The InputError for a file ITK cannot read, with ITK's own reason (not its source location)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    reason = next((line for line in lines[1:] if "ERROR" in line), lines[-1] if lines else type(exc).__name__)
    reason = re.sub(r"^(sitk::ERROR:|itk::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", reason)
    reason = reason.replace(f'"{path}"', "it").replace(str(path), "it")
    if lines and "[nrrd]" in lines[-1]:
        reason = f"{reason} {lines[-1].split(':', 1)[-1].strip()}"
    if reason.startswith("Unable to determine ImageIO reader"):
        reason = "not a readable NRRD, NIfTI, MetaImage or DICOM image, or the file is damaged or truncated"
    if path.is_file() and path.stat().st_size == 0:
        reason = "the file is empty"
    return InputError(f"{path}: cannot be read as an image ({reason[:240]})")


@contextlib.contextmanager
def locale_kept() -> Iterator[None]:
    """GDCM (SimpleITK's DICOM reader) switches the process locale to "C" and leaves it so,
    after which Python reads and prints text as ASCII; put it back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)
