"""What an image file may make a reader do, checked from its header before a voxel is decoded.

Two checks, each in one place, run by every reader of the library (:func:`~.volume_io.read_volume`,
:func:`~.segmentation.read_segmentation`, the MRML loader) and by the web page's uploads:

* **Data files** (:func:`check_data_files`). A detached header (NRRD ``data file:``, MetaImage
  ``ElementDataFile``, the ``.img`` of an Analyze/NIfTI pair) names the file that holds its voxels,
  which SimpleITK and pynrrd read from anywhere: ``/etc/passwd``, ``../../other-user/result.json``, a
  ``LIST`` of files, a symbolic link out of the folder. By default every data file must lie in the
  header's own folder (resolved, so a symbolic link pointing elsewhere is refused); formats whose
  reader may open other files this module cannot inspect (HDF5, MINC, Bruker ``2dseq``, Stimulate)
  are refused. :class:`DataFiles` names the three policies: ``SELF_CONTAINED`` (the web page:
  one file holds header and voxels), ``SAME_FOLDER`` (the default) and ``ANYWHERE`` (trusted local
  files: ``tace-response … --trust-detached-headers``, carried to worker processes by the
  :data:`TRUST_ENV` environment variable).
* **Decoded size** (:func:`check_decoded_size`). A 1 MB gzip NRRD can declare 1024³ voxels; the
  voxels and bytes a header declares are checked against :class:`DecodeLimits` per image and, in a
  :class:`DecodeBudget` (a web session), per session, before the reader allocates them. The same
  function serves any reader that knows a shape (the DICOM series reader calls it with rows ×
  columns × slices). Where the header declares more data than the file holds and the reader would
  silently pad with zeros (uncompressed NIfTI/Analyze, compressed MetaImage, ``.nii.gz``), the
  file is refused as truncated.

The rules in force come from :func:`reading_rules` (a context manager: scoped, thread- and
task-local) over the process default (:func:`set_default_rules`).
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import gzip
import logging
import math
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

from TACEResponseLib.core.errors import InputError

logger = logging.getLogger(__name__)

#: set to "1" by ``--trust-detached-headers`` so worker processes read data files anywhere too
TRUST_ENV = "TACERESPONSE_TRUST_DETACHED_HEADERS"
#: the most files a ``LIST`` or a file-name pattern may name
MAX_DATA_FILES = 100_000
TRUST_HINT = ("if you trust this file, read it with --trust-detached-headers, or copy its data file beside it")


class DataFiles(enum.Enum):
    """Where the voxels of an image file may come from."""

    SELF_CONTAINED = "self-contained"  # header and voxels in the one file (web uploads)
    SAME_FOLDER = "same-folder"        # detached data files only in the header's own folder (default)
    ANYWHERE = "anywhere"              # trusted local files


@dataclass(frozen=True)
class DecodeLimits:
    """The largest image a reader may decode (voxels × components, and bytes)."""

    max_image_voxels: int = 1 << 30          # 1,073,741,824 voxels, e.g. 1024 × 1024 × 1024
    max_image_bytes: int = 4 << 30           # 4 GiB decoded

    def describe(self) -> str:
        return f"{self.max_image_voxels:,} voxels or {self.max_image_bytes / 2**20:,.0f} MB decoded per image"


class DecodeBudget:
    """Decoded bytes one session holds, in named slots (e.g. "images", "segmentation"): reading into
    a slot replaces what the slot held once the read succeeds, so opening a new case releases the
    old one. Thread-safe (a session reads in worker threads)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._held: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(self._held.values())

    def charge(self, label: str, nbytes: int, slot: str) -> None:
        """Count ``nbytes`` into ``slot`` (inside :meth:`slot`: its pending read, which will replace what it
        held; outside: held at once, added up); InputError when the session would pass its limit."""
        with self._lock:
            reading = slot in self._pending
            mine = (self._pending if reading else self._held).get(slot, 0) + nbytes
            others = sum(v for k, v in self._held.items() if k != slot) + \
                sum(v for k, v in self._pending.items() if k != slot)
            if others + mine > self.max_bytes:
                raise InputError(f"{label}: decoding it would make this session hold {(others + mine) / 2**20:,.0f} MB "
                                 f"of images, more than the {self.max_bytes / 2**20:,.0f} MB allowed per session")
            (self._pending if reading else self._held)[slot] = mine

    @contextlib.contextmanager
    def slot(self, name: str) -> Iterator["DecodeBudget"]:
        """Reads inside charge ``name``; on success they replace what ``name`` held, on failure they are dropped."""
        with self._lock:
            self._pending[name] = 0
        token = _SLOT.set(name)
        try:
            yield self
        except BaseException:
            with self._lock:
                self._pending.pop(name, None)
            raise
        else:
            with self._lock:
                self._held[name] = self._pending.pop(name, 0)
        finally:
            _SLOT.reset(token)


@dataclass(frozen=True)
class ReadRules:
    """The data-file policy, the per-image limits and (optionally) the session's budget."""

    data_files: DataFiles = DataFiles.SAME_FOLDER
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    budget: DecodeBudget | None = None


_DEFAULT = ReadRules()
_RULES: contextvars.ContextVar[ReadRules | None] = contextvars.ContextVar("tace_read_rules", default=None)
#: reads outside :meth:`DecodeBudget.slot` count into "images" (a web session: the case it opened at start,
#: which an uploaded case replaces)
_SLOT: contextvars.ContextVar[str] = contextvars.ContextVar("tace_read_slot", default="images")


def current_rules() -> ReadRules:
    """The rules in force: the innermost :func:`reading_rules`, else the process default (whose
    data-file policy is ``ANYWHERE`` while :data:`TRUST_ENV` is "1")."""
    rules = _RULES.get() or _DEFAULT
    if rules.data_files is DataFiles.SAME_FOLDER and os.environ.get(TRUST_ENV) == "1":
        return replace(rules, data_files=DataFiles.ANYWHERE)
    return rules


def set_default_rules(rules: ReadRules) -> None:
    """The process-wide rules (a web session sets its own once at start)."""
    global _DEFAULT
    _DEFAULT = rules


@contextlib.contextmanager
def reading_rules(*, data_files: DataFiles | None = None, limits: DecodeLimits | None = None,
                  budget: DecodeBudget | None = None) -> Iterator[ReadRules]:
    """Rules for the reads inside the block (what is not given stays as it is)."""
    base = _RULES.get() or _DEFAULT
    rules = ReadRules(data_files or base.data_files, limits or base.limits, budget if budget is not None else base.budget)
    token = _RULES.set(rules)
    try:
        yield rules
    finally:
        _RULES.reset(token)


@contextlib.contextmanager
def trusted_data_files(trust: bool) -> Iterator[None]:
    """``--trust-detached-headers``: data files anywhere, in this process and the processes it starts,
    for the duration of one command (the environment is restored afterwards)."""
    if not trust:
        yield
        return
    saved = os.environ.get(TRUST_ENV)
    os.environ[TRUST_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = saved


# --- what a header declares -------------------------------------------------------------------------
@dataclass
class DeclaredImage:
    """What a header says about its voxels (shape None: the format is not parsed here)."""

    format: str
    shape: tuple[int, ...] | None = None
    bytes_per_voxel: int = 0           # bytes of one voxel, all its components
    data_files: list[str] = field(default_factory=list)   # as written in the header (detached data)
    data_offset: int | None = None     # where uncompressed voxels start in their file
    encoding: str = "raw"

    @property
    def voxels(self) -> int:
        return math.prod(self.shape) if self.shape else 0

    @property
    def nbytes(self) -> int:
        return self.voxels * self.bytes_per_voxel


_NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
        "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
_NRRD_BYTES = {name: size for size, names in _NRRD_TYPES.items() for name in names}
_META_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}
_HEADER_LIMIT = 1 << 20  # a text header longer than this is not read further
#: ImageIOs that read only the file they are given
_SINGLE_FILE_IO = {"GDCMImageIO", "MRCImageIO", "GE4ImageIO", "GE5ImageIO", "JPEG2000ImageIO", "GiplImageIO",
                   "VTKImageIO", "PNGImageIO", "JPEGImageIO", "BMPImageIO", "TIFFImageIO", "LSMImageIO",
                   "BioRadImageIO"}
#: ImageIOs whose other files are checked here
_CHECKED_IO = {"NrrdImageIO", "MetaImageIO", "NiftiImageIO"}


def _text_header(path: Path, stop_at_blank: bool) -> list[str]:
    with open(path, "rb") as handle:
        raw = handle.read(_HEADER_LIMIT)
    if stop_at_blank:
        end = re.search(rb"\r?\n\r?\n", raw)
        raw = raw[:end.start()] if end else raw
    return raw.decode("latin-1").splitlines()


def _nrrd(path: Path) -> DeclaredImage:
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_LIMIT)
    end = re.search(rb"\r?\n\r?\n", head)
    header_bytes = end.end() if end else len(head)
    lines = head[:end.start() if end else len(head)].decode("latin-1").splitlines()
    fields: dict[str, str] = {}
    data_files: list[str] = []
    for number, line in enumerate(lines[1:], start=1):
        if line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep or value.startswith("="):
            continue  # a key/value pair ("key:=value"), not a field
        key = re.sub(r"\s+", " ", name.strip().lower())
        fields[key] = value.strip()
        if key in ("data file", "datafile"):
            data_files = _listed_files(value.strip(), lines[number + 1:], path)
            break  # with LIST, the rest of the header names the files
    sizes = [int(v) for v in fields.get("sizes", "").split()] if fields.get("sizes") else None
    kind = fields.get("type", "").lower()
    per_voxel = int(fields["block size"]) if kind == "block" and fields.get("block size", "").isdigit() \
        else _NRRD_BYTES.get(kind, 8)
    encoding = fields.get("encoding", "raw").lower()
    return DeclaredImage("NRRD", tuple(sizes) if sizes else None, per_voxel, data_files,
                         None if data_files else header_bytes, encoding)


def _meta(path: Path) -> DeclaredImage:
    lines = _text_header(path, stop_at_blank=False)
    fields: dict[str, str] = {}
    data_files: list[str] = []
    offset = 0
    with open(path, "rb") as handle:
        raw = handle.read(_HEADER_LIMIT)
    for number, line in enumerate(lines):
        name, sep, value = line.partition("=")
        if not sep:
            continue
        key = name.strip().lower()
        fields[key] = value.strip()
        if key == "elementdatafile":
            value = value.strip()
            if value.upper() != "LOCAL":
                data_files = _listed_files(value, lines[number + 1:], path)
            else:
                marker = raw.find(line.encode("latin-1"))
                newline = raw.find(b"\n", marker)
                offset = newline + 1 if marker >= 0 and newline >= 0 else None
            break
    try:
        sizes = tuple(int(v) for v in fields.get("dimsize", "").split())
        channels = int(fields.get("elementnumberofchannels", "1") or 1)
    except ValueError:
        raise InputError(f"{path}: the MetaImage header's DimSize or ElementNumberOfChannels is not a list of "
                         "integers") from None
    per_voxel = _META_BYTES.get(fields.get("elementtype", "").upper().replace("_ARRAY", ""), 8) * max(1, channels)
    compressed = fields.get("compresseddata", "false").lower() in ("true", "1")
    return DeclaredImage("MetaImage", sizes or None, per_voxel, data_files, None if data_files else offset,
                         "zlib" if compressed else "raw")


def _nifti(path: Path) -> DeclaredImage:
    """NIfTI-1/Analyze 7.5 (``.nii``, ``.nii.gz``, ``.hdr`` + ``.img``) and NIfTI-2."""
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        if gzipped:  # gzip data that end too soon (not gzip at all: the reader says what it is not)
            raise InputError(f"{path}: truncated or not valid gzip data ({exc})") from None
        return DeclaredImage("NIfTI")
    if len(header) < 348:
        if name.endswith(".gz"):
            raise InputError(f"{path}: truncated NIfTI header")
        return DeclaredImage("NIfTI")
    for endian in "<>":
        size = struct.unpack(f"{endian}i", header[:4])[0]
        if size == 348:
            dims = struct.unpack(f"{endian}8h", header[40:56])
            bitpix = struct.unpack(f"{endian}h", header[72:74])[0]
            offset = int(struct.unpack(f"{endian}f", header[108:112])[0])
            magic = header[344:348]
            break
        if size == 540 and len(header) >= 540:
            dims = struct.unpack(f"{endian}8q", header[16:80])
            bitpix = struct.unpack(f"{endian}h", header[14:16])[0]
            offset = int(struct.unpack(f"{endian}q", header[168:176])[0])
            magic = header[4:8]
            break
    else:
        return DeclaredImage("NIfTI")
    count = max(0, min(int(dims[0]), 7))
    shape = tuple(max(1, int(d)) for d in dims[1:1 + count])
    pair = not magic.startswith(b"n+")  # "ni1"/"ni2" or Analyze: voxels in the .img beside the .hdr
    data_files = []
    if pair:
        stem = re.sub(r"\.(hdr|img)(\.gz)?$", "", path.name, flags=re.I)
        data_files = [f"{stem}.img.gz" if name.endswith(".gz") else f"{stem}.img"]
    return DeclaredImage("NIfTI", shape or None, max(1, bitpix // 8), data_files, 0 if pair else offset,
                         "gzip" if name.endswith(".gz") else "raw")


def _listed_files(value: str, rest: Sequence[str], header: Path) -> list[str]:
    """The data files a ``data file:`` / ``ElementDataFile`` value names: one file, ``LIST`` (the
    following lines), or a printf pattern with min, max, step."""
    words = value.split()
    if words and words[0].upper() == "LIST":
        names = [line.strip() for line in rest if line.strip()]
        if len(names) > MAX_DATA_FILES:
            raise InputError(f"{header}: its LIST names {len(names):,} data files, more than {MAX_DATA_FILES:,}")
        return names
    if len(words) >= 4 and "%" in words[0]:
        try:
            low, high, step = (int(w) for w in words[1:4])
        except ValueError:
            return [value]
        if step == 0 or (high - low) // step + 1 > MAX_DATA_FILES:
            raise InputError(f"{header}: its data-file pattern {value!r} names too many files")
        try:
            return [words[0] % n for n in range(low, high + (1 if step > 0 else -1), step)]
        except (TypeError, ValueError):
            return [value]
    return [value]


def declared_image(path: str | os.PathLike) -> DeclaredImage:
    """What the header of ``path`` declares, parsed as the reader SimpleITK would choose reads it
    (NRRD — also pynrrd's format — MetaImage and NIfTI/Analyze here; other formats: only their reader's name)."""
    path = Path(path)
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic.startswith(b"NRRD"):
        return _nrrd(path)
    io = _image_io(path)
    if not io:  # SimpleITK's probe failed (e.g. a damaged .nii.gz its reader may still open): go by the name
        name = path.name.lower()
        io = ("MetaImageIO" if name.endswith((".mha", ".mhd")) else
              "NiftiImageIO" if name.endswith((".nii", ".nii.gz", ".hdr", ".img", ".img.gz")) else "")
    if io == "MetaImageIO":
        return _meta(path)
    if io == "NrrdImageIO":
        return _nrrd(path)
    if io == "NiftiImageIO":
        if re.search(r"\.img(\.gz)?$", path.name, flags=re.I):  # the voxels of a pair: its header is the .hdr
            header = path.parent / re.sub(r"\.img(\.gz)?$", ".hdr", path.name, flags=re.I)
            declared = _nifti(header) if header.is_file() else DeclaredImage("NIfTI")
            declared.data_files = [header.name, path.name]
            return declared
        return _nifti(path)
    return DeclaredImage(io or "unknown")


def _image_io(path: Path) -> str:
    import SimpleITK as sitk

    try:
        return sitk.ImageFileReader.GetImageIOFromFileName(str(path)) or ""
    except RuntimeError:
        return ""


# --- the checks ---------------------------------------------------------------------------------------
def check_data_files(path: str | os.PathLike, declared: DeclaredImage | None = None) -> DeclaredImage:
    """Refuse ``path`` when its voxels would be read from a file the rules in force do not allow
    (see the module docstring); returns what its header declares."""
    path = Path(path)
    declared = declared or declared_image(path)
    policy = current_rules().data_files
    known = declared.format in ("NRRD", "MetaImage", "NIfTI") or declared.format in _SINGLE_FILE_IO
    if not known and declared.format not in ("unknown", ""):
        if policy is not DataFiles.ANYWHERE:
            raise InputError(f"{path}: a {declared.format.replace('ImageIO', '')} file may make the reader open other "
                             "files, which is not checked here; convert it to NRRD, NIfTI or DICOM "
                             f"({TRUST_HINT})")
        return declared
    if not declared.data_files or policy is DataFiles.ANYWHERE:
        return declared
    if policy is DataFiles.SELF_CONTAINED:
        raise InputError(f"{path.name}: a detached header (its voxels are in another file); only self-contained "
                         "images are accepted here: NRRD with its data attached (.nrrd), .mha, .nii/.nii.gz or DICOM")
    folder = Path(os.path.realpath(path.parent))
    for name in declared.data_files:
        target = Path(os.path.realpath(path.parent / name))
        if target.parent != folder:
            raise InputError(f"{path}: its header reads voxels from {name!r}, which is not in the header's own folder "
                             f"(absolute paths, '..', sub-folders and symbolic links out of the folder are refused; "
                             f"{TRUST_HINT})")
    return declared


def check_decoded_size(label: str, shape: Sequence[int], bytes_per_voxel: int) -> int:
    """Refuse an image of ``shape`` (any axis order) and ``bytes_per_voxel`` (all components) larger
    than the rules' per-image limits or the session's budget; returns its decoded bytes. Called
    before the voxels are decoded (the DICOM series reader: rows × columns × slices)."""
    rules = current_rules()
    limits = rules.limits
    if any(int(n) < 0 for n in shape):
        raise InputError(f"{label}: the header declares a negative size {tuple(shape)}")
    voxels = math.prod(int(n) for n in shape)
    nbytes = voxels * max(1, int(bytes_per_voxel))
    described = " × ".join(str(int(n)) for n in shape)
    if voxels > limits.max_image_voxels or nbytes > limits.max_image_bytes:
        raise InputError(f"{label}: the header declares {described} voxels ({nbytes / 2**20:,.0f} MB decoded), more "
                         f"than the {limits.describe()} allowed")
    if rules.budget is not None:
        rules.budget.charge(label, nbytes, _SLOT.get())
    return nbytes


def check_image_file(path: str | os.PathLike) -> DeclaredImage:
    """Every check before ``path`` is decoded: its data files (:func:`check_data_files`), its declared
    size (:func:`check_decoded_size`; formats not parsed here: the size SimpleITK reads from the
    header) and, where a reader would pad missing voxels with zeros, that the file holds them."""
    path = Path(path)
    declared = check_data_files(path)
    shape, per_voxel = declared.shape, declared.bytes_per_voxel
    if shape is None:
        shape, per_voxel = _itk_declared(path)
    if shape is not None:
        check_decoded_size(str(path), shape, per_voxel)
    if declared.shape is not None:
        _check_data_present(path, declared)
    return declared


def _itk_declared(path: Path) -> tuple[tuple[int, ...] | None, int]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None, 0  # the reader reports it, with its reason
    component = reader.GetPixelID()
    try:
        per_component = sitk.Image([1] * reader.GetDimension(), component).GetSizeOfPixelComponent()
    except RuntimeError:
        per_component = 8
    return tuple(reader.GetSize()), per_component * max(1, reader.GetNumberOfComponents())


def _check_data_present(path: Path, declared: DeclaredImage) -> None:
    """Refuse a file that holds fewer voxels than its header declares where the reader would not notice:
    uncompressed NIfTI/Analyze, gzip NIfTI (the gzip trailer's size) and compressed MetaImage."""
    needed = declared.nbytes
    if declared.format == "NIfTI":
        data = next((path.parent / n for n in declared.data_files if re.search(r"\.img(\.gz)?$", n, re.I)), path)
        if declared.encoding == "gzip":
            _check_gzip_size(data, (declared.data_offset or 0) + needed)
        elif data.is_file() and data.stat().st_size < (declared.data_offset or 0) + needed:
            raise InputError(f"{path}: truncated: the header declares {needed:,} bytes of voxels, the file holds "
                             f"{max(0, data.stat().st_size - (declared.data_offset or 0)):,}")
    elif declared.format == "MetaImage" and declared.encoding == "zlib" and not declared.data_files \
            and declared.data_offset is not None:
        got = _inflated_size(path, declared.data_offset, needed)
        if got < needed:
            raise InputError(f"{path}: truncated: the header declares {needed:,} bytes of voxels, the compressed data "
                             f"hold {got:,}")


def _check_gzip_size(path: Path, expected: int) -> None:
    """A truncated ``.gz`` decompresses to a partial image that ITK pads with zeros: compare the gzip
    trailer's size (modulo 2³²) with the size the header announces."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() < 18:
            raise InputError(f"{path}: truncated (only {handle.tell()} bytes)")
        handle.seek(-4, os.SEEK_END)
        (stored,) = struct.unpack("<I", handle.read(4))
    if stored != expected % 2**32:
        raise InputError(f"{path}: truncated or corrupt: the compressed data hold {stored} bytes, the header "
                         f"announces {expected}")


def _inflated_size(path: Path, offset: int, limit: int) -> int:
    """Bytes the zlib stream from ``offset`` inflates to (at most ``limit`` + 1; streamed, never held)."""
    inflater = zlib.decompressobj()
    total = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        while total <= limit:
            chunk = handle.read(1 << 20)
            if not chunk:
                break
            try:
                total += len(inflater.decompress(chunk, limit + 1 - total))
                while inflater.unconsumed_tail and total <= limit:
                    total += len(inflater.decompress(inflater.unconsumed_tail, limit + 1 - total))
            except zlib.error:
                break
            if inflater.eof:
                break
    return total
