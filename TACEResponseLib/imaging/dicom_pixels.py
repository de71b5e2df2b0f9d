"""Where a DICOM file's pixels are and how many bytes its header promises, read before decoding.

A DICOM header declares Rows × Columns × frames × samples × BitsAllocated; the Pixel Data element
states its own length, and the file may end before that. GDCM (SimpleITK) pads what is missing
with zeros without a word, so a 4096² image with 64 bytes of pixels reads as a black image. Every
DICOM file is checked here against what its header declares before any pixel is decoded
(:func:`pixel_layout`). Compressed (encapsulated) pixel data carry no declared size: their
decoder reports truncation itself.

Only pydicom (the header parser) is used here; nothing is decoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from TACEResponseLib.core.errors import InputError

#: transfer syntaxes whose pixels are stored uncompressed, little endian (numpy reads them directly)
NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
DEFLATED = "1.2.840.10008.1.2.1.99"
#: header values are read up to this size; larger elements (the pixels) are left on disk
DEFER_BYTES = 4096


@dataclass(frozen=True)
class PixelLayout:
    """The pixels of one DICOM file as its header declares them and as the file holds them."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    transfer_syntax: str
    offset: int | None          # byte offset of the pixel values in the file (None: encapsulated)
    length: int | None          # length the Pixel Data element states (None: encapsulated)

    @property
    def declared_bytes(self) -> int:
        bits = self.rows * self.columns * self.frames * self.samples * self.bits_allocated
        return (bits + 7) // 8

    @property
    def native(self) -> bool:
        """Uncompressed little-endian grey pixels numpy can read straight from the file."""
        return (self.offset is not None and self.transfer_syntax in NATIVE_LITTLE_ENDIAN and self.samples == 1
                and self.bits_allocated in (8, 16, 32) and self.photometric == "MONOCHROME2")

    def numpy_dtype(self) -> np.dtype:
        return np.dtype(f"<{'i' if self.signed else 'u'}{self.bits_allocated // 8}")


def read_dataset(path: str | os.PathLike, force: bool = True):
    """pydicom's header of ``path`` with the large elements (the pixels) left on disk."""
    import pydicom

    return pydicom.dcmread(str(path), defer_size=DEFER_BYTES, force=force)


def pixel_layout(path: str | os.PathLike, dataset) -> PixelLayout | None:
    """The pixel layout ``dataset`` (read by :func:`read_dataset`) declares, checked against the file:
    an InputError when the Pixel Data are shorter than Rows × Columns × frames × bits say, or the file
    ends before them. None when the file has no Pixel Data (not an image)."""
    from pydicom.dataelem import RawDataElement

    if "PixelData" not in dataset:
        return None
    path = Path(path)
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        bits_allocated = int(dataset.BitsAllocated)
        bits_stored = int(dataset.get("BitsStored", bits_allocated) or bits_allocated)
        frames_text = str(dataset.get("NumberOfFrames", 1) or 1).strip()
        frames = int(frames_text) if frames_text.isdigit() else 1
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: its DICOM header does not state the image size properly ({exc})") from None
    if rows <= 0 or columns <= 0 or bits_allocated <= 0 or frames <= 0 or samples <= 0:
        raise InputError(f"{path}: its DICOM header declares an empty image ({rows} × {columns} pixels, "
                         f"{frames} frame(s), {bits_allocated} bits)")
    meta = getattr(dataset, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    try:
        element = dataset.get_item("PixelData", keep_deferred=True)
    except TypeError:  # pydicom 2 (Slicer 5.10 ships 2.4) keeps deferred values unread anyway
        element = dataset.get_item("PixelData")
    offset = length = None
    if isinstance(element, RawDataElement) and element.length != 0xFFFFFFFF:
        offset, length = int(element.value_tell), int(element.length)
    layout = PixelLayout(rows, columns, frames, samples, bits_allocated, bits_stored, signed,
                         str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(), syntax,
                         offset, length)
    if offset is None or syntax == DEFLATED:
        return layout  # compressed: its decoder checks the stream
    declared = layout.declared_bytes
    stored = os.path.getsize(path) - offset
    if length < declared or stored < declared:
        have = min(length, stored)
        raise InputError(f"{path}: truncated pixel data: the header declares {rows} × {columns} pixels × {frames} "
                         f"frame(s) × {bits_allocated} bits = {declared} bytes, the file holds {max(have, 0)}")
    return layout
