"""Files written safely, named safely, and recognised by content.

Every write goes to a temporary file in the target folder and is renamed into place, so a
crash never leaves a half-written file under the final name. :func:`safe_file_name` is the
one rule that turns a case id or a volume name into a file or folder name, and
:func:`content_fingerprint` the one key for caches and resumable runs: it changes when a
file's bytes change, not when it is touched or moved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError

logger = logging.getLogger(__name__)

# --- atomic writes ----------------------------------------------------------------------
_UMASK = os.umask(0)  # read the process umask (the only way) and put it back at once
os.umask(_UMASK)


def _temporary_beside(path: Path) -> Path:
    """A new empty file beside ``path`` (hidden, same suffix, readable like any file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".nii.gz", ".seg.nrrd")) else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should be as readable as any file
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the final suffix so writers that dispatch on the extension
    (SimpleITK, matplotlib) still pick the right format.
    """
    path = Path(path)
    tmp_path = _temporary_beside(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_paths(paths: Iterable[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths for files that belong together, renamed onto ``paths`` in order (put the
    file whose presence means "complete" last) only when the block succeeds. On failure no
    final file is touched, so a previous result stays whole."""
    finals = [Path(p) for p in paths]
    temporaries: list[Path] = []
    try:
        for path in finals:
            temporaries.append(_temporary_beside(path))
        yield temporaries
        for tmp, path in zip(temporaries, finals):
            os.replace(tmp, path)
    finally:
        for tmp in temporaries:
            if tmp.exists():
                tmp.unlink()


#: the staging folders of :func:`atomic_folder` are named ``.<folder>.partial-<random>`` beside it
PARTIAL = ".partial-"


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike, last: Sequence[str] = ()) -> Iterator[Path]:
    """Write a command's output folder as one group: yield an empty staging folder beside ``folder`` (hidden,
    same parent, so renames stay on one file system) to write everything into.

    When the block ends without an exception, the staging folder becomes ``folder`` (one rename when
    ``folder`` does not exist) or is merged into it (each file renamed into place, replacing a previous
    result's file of the same name; other files are left alone; files named in ``last`` — the one whose
    presence means "complete" — go last). When the block raises, the staging folder is removed and
    ``folder`` is exactly as it was: never a half-written output. A staging path the block records goes
    through :func:`relocated` to name the final file.
    """
    final = Path(folder).resolve()  # "." has no name and is its own parent; a link: beside its target (one FS)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}{PARTIAL}", dir=final.parent))
    os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes 0700; an output folder is as readable as any
    try:
        yield staging
        _check_mergeable(staging, final)
        if not final.exists():
            try:
                os.rename(staging, final)
                return
            except OSError:  # created meanwhile: merge into it
                pass
        files = sorted((p for p in staging.rglob("*") if not p.is_dir()),
                       key=lambda p: (p.relative_to(staging).as_posix() in last, p.relative_to(staging).as_posix()))
        for source in files:
            target = final / source.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _check_mergeable(staging: Path, final: Path) -> None:
    """Refuse, before anything moves, a merge where a file would replace a folder or the other way round."""
    if final.exists() and not final.is_dir():
        raise InputError(f"{final}: is a file, not a folder")
    for source in staging.rglob("*"):
        target = final / source.relative_to(staging)
        if target.exists() and target.is_dir() != source.is_dir():
            raise InputError(f"{target}: is a {'folder' if target.is_dir() else 'file'} in the output folder; the "
                             f"new output has a {'folder' if source.is_dir() else 'file'} of that name")


def relocated(path: str | os.PathLike, staging: Path, folder: str | os.PathLike) -> Path:
    """``path`` inside an :func:`atomic_folder` staging folder → the same file in the final ``folder``
    (any other path as it is)."""
    path = Path(path)
    try:
        return Path(folder) / path.relative_to(staging)
    except ValueError:
        return path


# --- output locations ---------------------------------------------------------------------
def _probe_writable(folder: Path, what: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"{what} {folder}: cannot write there ({exc.strerror or exc})") from None


def check_output_folder(path: str | os.PathLike | None, what: str = "--output") -> Path:
    """The output folder, refused before any work when it cannot be used: not given, a file,
    under a missing parent folder, or not writable. Nothing is created."""
    text = "" if path is None else str(path)
    if not text.strip():
        raise InputError(f"{what}: no output folder given")
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder}: is a file, not a folder")
    existing = folder if folder.exists() else folder.parent
    if not existing.is_dir():
        raise InputError(f"{what} {folder}: its parent folder {existing} does not exist; create it first")
    _probe_writable(existing, what)
    return folder


def check_output_file(path: str | os.PathLike | None, what: str = "--output") -> Path:
    """An output file path, refused before any work when it cannot be written: not given, a
    folder, under a missing parent folder, or in a folder that is not writable."""
    text = "" if path is None else str(path)
    if not text.strip():
        raise InputError(f"{what}: no output file given")
    target = Path(text)
    if target.is_dir():
        raise InputError(f"{what} {target}: is a folder; give a file name")
    if not target.parent.is_dir():
        raise InputError(f"{what} {target}: its folder {target.parent} does not exist; create it first")
    _probe_writable(target.parent, what)
    return target


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically (temporary file beside ``path``, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


#: what a spreadsheet takes for the start of a formula in a CSV cell
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text, never runs: text beginning with ``=``, ``+``, ``-``,
    ``@``, a tab or a carriage return gets a leading apostrophe (a case id or segment name such as
    ``=HYPERLINK(…)`` from an uploaded file). Numbers, and text that is a number ("-1.5"), stay as they are."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def from_spreadsheet_safe(value: Any) -> Any:
    """The cell :func:`spreadsheet_safe` was given, read back from a CSV this package wrote (its leading
    apostrophe removed), so an id such as ``-7`` or ``=A1`` matches the same id in the user's own tables."""
    if isinstance(value, str) and value.startswith("'") and spreadsheet_safe(value[1:]) == value:
        return value[1:]
    return value


def csv_text(columns: Iterable[str], rows: Iterable[dict], extrasaction: str = "raise") -> str:
    """Rows of dicts as CSV text (a header of ``columns``), every cell and column name :func:`spreadsheet_safe`:
    what every CSV output of this package goes through."""
    import csv
    import io

    columns = list(columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction=extrasaction, lineterminator="\n")
    writer.writerow({column: spreadsheet_safe(column) for column in columns})
    writer.writerows({key: spreadsheet_safe(value) for key, value in row.items()} for row in rows)
    return buffer.getvalue()


def write_csv_atomic(path: str | os.PathLike, columns: Iterable[str], rows: Iterable[dict],
                     extrasaction: str = "raise") -> Path:
    """Write rows of dicts as CSV (:func:`csv_text`: every cell :func:`spreadsheet_safe`), atomically."""
    return write_text_atomic(path, csv_text(columns, rows, extrasaction))


def spreadsheet_safe_frame(frame):
    """A copy of a pandas DataFrame to write with ``to_csv``: its text cells, index labels and column names
    :func:`spreadsheet_safe` (numbers untouched; :func:`from_spreadsheet_safe` undoes it on reading)."""
    safe = frame.copy(deep=False)
    for position, dtype in enumerate(safe.dtypes):
        if dtype == object or str(dtype) in ("string", "category"):
            safe.isetitem(position, safe.iloc[:, position].astype(object).map(spreadsheet_safe))
    safe.index = safe.index.map(spreadsheet_safe)
    safe.columns = safe.columns.map(spreadsheet_safe)
    return safe


def from_spreadsheet_safe_frame(frame):
    """A DataFrame read from a CSV :func:`spreadsheet_safe_frame` wrote, its text cells, index labels and column
    names as they were (:func:`from_spreadsheet_safe`)."""
    for position, dtype in enumerate(frame.dtypes):
        if dtype == object:
            frame.isetitem(position, frame.iloc[:, position].map(from_spreadsheet_safe))
    frame.index = frame.index.map(from_spreadsheet_safe)
    frame.columns = frame.columns.map(from_spreadsheet_safe)
    return frame


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (numpy values and paths become plain JSON)."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for numpy arrays and scalars and paths."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- names ------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_file_name(text: str, fallback: str = "case") -> str:
    """A file or folder name made from ``text`` (a case id, a volume name): runs of anything but
    ASCII letters, digits, ``_``, ``-`` and ``.`` become one ``_``; leading dots and underscores
    and trailing underscores go (no hidden files, no ``..``); empty gives ``fallback``."""
    name = _UNSAFE.sub("_", str(text)).lstrip("._").rstrip("_")
    return name or fallback


# --- content ----------------------------------------------------------------------------
def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


#: digests already computed in this process, by (resolved path, size, mtime): a file is read once
_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read once per process (remembered by path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_of(path)
    return _DIGESTS[key]


def content_fingerprint(paths: Iterable[str | os.PathLike | None], extra: Any = None) -> str:
    """SHA-256 over the content of ``paths`` (in order) and the JSON of ``extra``.

    A file contributes its bytes' digest; a folder (a DICOM series) the digest of every file
    inside with its relative path; ``None`` contributes a marker. Names and modification
    times do not count, so a copied or touched file keeps its fingerprint and an edited one
    changes it. Digests are remembered per process, so each file is read once.
    """
    digest = hashlib.sha256()
    for entry in paths:
        if entry is None:
            digest.update(b"<none>\0")
            continue
        path = Path(entry)
        if not path.exists() and "#" in path.name and Path(str(path).rsplit("#", 1)[0]).is_dir():
            folder, choice = str(path).rsplit("#", 1)  # FOLDER#SERIES[@ACQUISITION]: the folder and the choice
            digest.update(f"<series {choice}>\0".encode())
            path = Path(folder)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    child = Path(root) / name
                    digest.update(f"{child.relative_to(path).as_posix()}\0{file_sha256(child)}\0".encode())
            digest.update(b"<end of folder>\0")
        elif path.is_file():
            digest.update(f"{file_sha256(path)}\0".encode())
        else:
            raise InputError(f"{path}: file or folder does not exist")
    if extra is not None:
        digest.update(json.dumps(extra, sort_keys=True, default=json_default).encode())
    return digest.hexdigest()
