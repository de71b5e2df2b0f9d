"""Where a DICOM file's pixels are and how many bytes its header promises, read before decoding.

A DICOM header declares Rows × Columns × frames × samples × BitsAllocated; the Pixel Data element
states its own length, and the file may end before that. GDCM (SimpleITK) pads what is missing
with zeros without a word, so a 4096² image with 64 bytes of pixels reads as a black image. Every
DICOM file is checked here against what its header declares before any pixel is decoded
(:func:`pixel_layout`).

Compressed (encapsulated) pixel data carry no length the header promises, but each frame's code
stream declares its own size (JPEG and JPEG-LS in the SOF segment, JPEG 2000 in SIZ). GDCM believes
the stream: 16 KB of JPEG declaring 30000 × 30000 pixels, in files whose header says 16 × 16, were
decoded into 10 GB, past every decoding limit (which go by the header). So each frame's stream size
must be the header's Rows × Columns, its components no more than SamplesPerPixel, and there must be
a stream for every frame the header declares (:func:`check_encapsulated_frames`).

Only pydicom (the header parser) is used here; nothing is decoded.
"""

from __future__ import annotations

import os
import struct
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
    if offset is None:
        if isinstance(element, RawDataElement):
            check_encapsulated_frames(path, layout, int(element.value_tell))
        return layout
    if syntax == DEFLATED:
        return layout  # deflated: zlib reports a truncated stream itself
    declared = layout.declared_bytes
    stored = os.path.getsize(path) - offset
    if length < declared or stored < declared:
        have = min(length, stored)
        raise InputError(f"{path}: truncated pixel data: the header declares {rows} × {columns} pixels × {frames} "
                         f"frame(s) × {bits_allocated} bits = {declared} bytes, the file holds {max(have, 0)}")
    return layout


# --- compressed (encapsulated) pixel data -------------------------------------------------------------
#: JPEG start-of-frame markers (baseline … lossless, arithmetic) and JPEG-LS's SOF55: height, width follow
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
#: transfer syntaxes whose every frame starts a fragment with a code stream this module reads
#: (JPEG, JPEG-LS, JPEG 2000, HTJ2K) or an RLE header
_FRAMED_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                    "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5"}


#: bytes of each fragment read to find its code stream's frame header (JPEG tables come before it)
_HEAD_BYTES = 1 << 16


def _fragment_heads(path: str | os.PathLike, value_at: int) -> list[bytes]:
    """The first bytes of each fragment of the encapsulated pixel data whose value starts at byte
    ``value_at`` of ``path`` (PS3.5 A.4: items after the Basic Offset Table), read item header by item
    header, never the whole data; here rather than pydicom's ``generate_fragments``, which Slicer 5.10's
    pydicom 2.4 lacks."""
    heads = []
    with open(path, "rb") as handle:
        handle.seek(value_at)
        first = True
        while True:
            item = handle.read(8)
            if len(item) < 8:
                break
            group, element, length = struct.unpack("<HHL", item)
            if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
                break  # the sequence delimiter, or damage the decoder will name
            if not first:
                heads.append(handle.read(min(length, _HEAD_BYTES)))
                handle.seek(length - len(heads[-1]), os.SEEK_CUR)
            else:
                handle.seek(length, os.SEEK_CUR)
            first = False
    return heads


def stream_size(fragment: bytes) -> tuple[int, int, int] | None:
    """``(columns, rows, components)`` a frame's code stream declares (JPEG, JPEG-LS, JPEG 2000 /
    HTJ2K, raw or in a JP2 box), ``(0, 0, 0)`` for an RLE frame (its size is the header's), or None
    when ``fragment`` does not start a code stream this function reads."""
    if len(fragment) >= 64 and 1 <= struct.unpack_from("<L", fragment)[0] <= 15 \
            and struct.unpack_from("<L", fragment, 4)[0] == 64:
        return (0, 0, 0)  # RLE: a header of segment offsets, the first segment at byte 64
    if fragment.startswith(_JP2_SIGNATURE):
        box = fragment.find(b"jp2c")
        fragment = fragment[box + 4:] if box >= 0 else b""
    if fragment.startswith(b"\xff\x4f\xff\x51") and len(fragment) >= 42:
        x_size, y_size, x_origin, y_origin = struct.unpack_from(">LLLL", fragment, 8)
        return (x_size - x_origin, y_size - y_origin, struct.unpack_from(">H", fragment, 40)[0])
    if not fragment.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 4 <= len(fragment):
        if fragment[position] != 0xFF:
            return None
        marker = fragment[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_SOF and position + 10 <= len(fragment):
            rows, columns = struct.unpack_from(">HH", fragment, position + 5)
            return (columns, rows, fragment[position + 9])
        if marker == 0xDA:  # scan data before any frame header
            return None
        position += 2 + struct.unpack_from(">H", fragment, position + 2)[0]
    return None


def check_encapsulated_frames(path: str | os.PathLike, layout: PixelLayout, value_at: int) -> None:
    """Refuse compressed pixel data whose frames' code streams declare another size than the header's
    Rows × Columns (or more components than SamplesPerPixel), or that hold fewer frames than the header
    declares, before a decoder allocates what the stream says."""
    starts = 0
    for fragment in _fragment_heads(path, value_at):
        size = stream_size(fragment)
        if size is None:
            continue  # a later fragment of a frame, or a code stream not read here
        starts += 1
        columns, rows, components = size
        if (columns, rows) != (0, 0) and ((columns, rows) != (layout.columns, layout.rows)
                                          or components > layout.samples):
            raise InputError(f"{path}: the compressed pixel data of frame {starts} declare {columns} × {rows} pixels × "
                             f"{components} component(s), the header {layout.columns} × {layout.rows} × "
                             f"{layout.samples}; refused before decoding (damaged or forged)")
    if layout.transfer_syntax in _FRAMED_SYNTAXES and starts < layout.frames:
        raise InputError(f"{path}: truncated pixel data: the header declares {layout.frames} frame(s), the compressed "
                         f"data hold {starts}")
