"""The one reader of the tables people keep: CSV, or a workbook (.xlsx, .xls, .ods), one sheet of it.

Every command that reads a clinical, survival or feature table reads it here, so every one of them
answers bad tables the same way, with one :class:`~TACEResponseLib.core.errors.InputError` naming the
file: missing, empty (zero bytes, or a header without rows), not a table, a sheet that is not in
the workbook (the sheets are listed), columns that are missing (the columns present are listed),
text where a number belongs (rows and values shown).

A workbook's sheet is chosen with ``sheet=`` or as ``FILE.xlsx#SHEET`` (the CLI's ``--sheet``
writes that); the first sheet otherwise. Workbooks are read through pandas with the calamine
engine (python-calamine, from PyPI: .xlsx, .xlsm, .xls, .ods), or openpyxl for .xlsx when calamine
is missing. Units stay explicit: nothing here converts a value.

A table from elsewhere is measured before pandas or calamine reads it
(:func:`~TACEResponseLib.core.table_limits.check_table_file`: cells, inflated bytes, expanded text), since
calamine trusts what a workbook declares. Column names that appear twice are an error rather than
pandas' silent ``age.1``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.table_limits import MAX_SHEET_CELLS, WORKBOOK_SUFFIXES, check_table_file

TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
MAX_SHOWN = 5


def split_sheet(path: str | os.PathLike, sheet: str | None = None) -> tuple[Path, str | None]:
    """``(file, sheet)`` of ``FILE#SHEET`` (when FILE#SHEET itself is not a file); ``sheet`` wins."""
    text = str(path)
    if "#" in text and not Path(text).exists():
        file, named = text.rsplit("#", 1)
        if Path(file).suffix.lower() in WORKBOOK_SUFFIXES:
            return Path(file), sheet or named or None
    return Path(text), sheet


def with_sheet(path: str | os.PathLike | None, sheet: str | None) -> str | None:
    """``path`` with ``#sheet`` appended when it is a workbook and a sheet is chosen (the CLI's ``--sheet``)."""
    if path is None or not sheet:
        return None if path is None else str(path)
    file, _ = split_sheet(path)
    return f"{file}#{sheet}" if file.suffix.lower() in WORKBOOK_SUFFIXES else str(path)


def is_table_file(path: str | os.PathLike) -> bool:
    file, _ = split_sheet(path)
    return file.suffix.lower() in WORKBOOK_SUFFIXES + TEXT_SUFFIXES


def read_table(path: str | os.PathLike, *, what: str = "table", sheet: str | None = None,
               required: Sequence[str] = (), numeric: Iterable[str] | str = (), text_columns: Iterable[str] = (),
               float_precision: str | None = None):
    """A table as a pandas DataFrame (column names stripped), or one InputError naming ``path``.

    ``required`` columns must be present; ``numeric`` columns (``"*"``: all but ``text_columns``) must
    hold numbers (blank cells allowed, they are NaN); ``text_columns`` are kept as text (ids such as
    ``HCC_001`` or ``007``).
    """
    import pandas as pd

    file, sheet = split_sheet(path, sheet)
    label = f"{what} {file}" + (f" (sheet {sheet!r})" if sheet else "")
    if not file.exists():
        raise InputError(f"{label}: does not exist")
    if file.is_dir():
        raise InputError(f"{label}: is a folder; a CSV or workbook file is needed")
    if file.stat().st_size == 0:
        raise InputError(f"{label}: is empty (0 bytes)")
    text_columns = list(dict.fromkeys([*text_columns]))
    suffix = file.suffix.lower()
    encoding, cells = check_table_file(file, label, numeric=numeric == "*")
    try:
        if suffix in WORKBOOK_SUFFIXES:
            frame, header = _read_workbook(file, sheet, label, text_columns)
        else:
            if sheet:
                raise InputError(f"{label}: a sheet is chosen, but {file.name} is not a workbook (.xlsx, .xls, .ods)")
            options = dict(sep=None if suffix in (".tsv", ".txt") else ",", encoding=encoding,
                           engine="python" if suffix in (".tsv", ".txt") or encoding != "utf-8-sig" else "c")
            dtype: Any = {c: str for c in text_columns} or None
            if numeric == "*" and cells > MAX_SHEET_CELLS:  # numbers as they are parsed: no Python object per cell
                dtype = defaultdict(lambda: "float64", dtype or {})
            frame = pd.read_csv(file, dtype=dtype, float_precision=float_precision, **options)
            header = pd.read_csv(file, header=None, nrows=1, dtype=str, keep_default_na=False, **options)
    except InputError:
        raise
    except pd.errors.EmptyDataError:
        raise InputError(f"{label}: is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise InputError(f"{label}: cannot be read as a table ({_first_line(exc)})") from None
    _check_unique_columns(label, [] if header.empty else list(header.iloc[0]))
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.dropna(how="all")  # workbooks end in blank formatted rows
    columns = list(frame.columns)
    missing = [c for c in required if c not in columns]
    if missing:
        shown = ", ".join(columns[:30]) + (" …" if len(columns) > 30 else "")
        raise InputError(f"{label}: lacks column(s) {', '.join(missing)}; it has {shown or 'no columns'}")
    if frame.empty:
        raise InputError(f"{label}: has a header but no rows")
    for column in text_columns:
        if column in frame.columns:
            frame[column] = frame[column].map(_as_text)
    if numeric == "*":
        numeric = [c for c in frame.columns if c not in text_columns]
    problems = [problem for column in numeric if column in frame.columns
                for problem in [_non_numbers(frame, column, suffix in WORKBOOK_SUFFIXES)] if problem]
    if problems:
        raise InputError(f"{label}: text where numbers belong: " + "; ".join(problems))
    return frame


def _read_workbook(file: Path, sheet: str | None, label: str, text_columns: list[str]):
    import pandas as pd

    engine = _engine(file)
    try:
        workbook = pd.ExcelFile(file, engine=engine)
    except (ValueError, OSError, KeyError, ImportError) as exc:
        raise InputError(f"{label}: cannot be read as a workbook ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - calamine/zip raise their own types for damaged files
        raise InputError(f"{label}: cannot be read as a workbook ({_first_line(exc)})") from None
    names = [str(n) for n in workbook.sheet_names]
    with workbook:
        if sheet is not None and sheet not in names:
            raise InputError(f"{label}: the workbook has no sheet {sheet!r}; its sheets: {', '.join(names)}")
        if not names:
            raise InputError(f"{label}: the workbook has no sheets")
        chosen = sheet if sheet is not None else names[0]
        try:
            return (workbook.parse(chosen, dtype={c: object for c in text_columns} or None),
                    workbook.parse(chosen, header=None, nrows=1, dtype=object))
        except BaseException as exc:  # calamine raises its own types, a Rust panic a BaseException
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            raise InputError(f"{label}: cannot be read as a workbook ({_first_line(exc)})") from None


def _check_unique_columns(label: str, names: list) -> None:
    """Refuse a header naming one column twice (pandas would read the second as ``NAME.1``)."""
    seen: dict[str, int] = {}
    for number, raw in enumerate(names, start=1):
        name = "" if raw is None or (isinstance(raw, float) and raw != raw) else str(raw).strip()
        if not name:
            continue
        if name in seen:
            raise InputError(f"{label}: column {name!r} appears twice (columns {seen[name]} and {number}); "
                             "which one is meant? Rename one of them")
        seen[name] = number


def _engine(file: Path) -> str | None:
    import importlib.util

    if importlib.util.find_spec("python_calamine") is not None:
        return "calamine"
    if file.suffix.lower() in (".xlsx", ".xlsm") and importlib.util.find_spec("openpyxl") is not None:
        return "openpyxl"
    raise InputError(f"{file}: reading {file.suffix} workbooks needs python-calamine (pip install python-calamine)")


def _as_text(value) -> str:
    """An id cell as text: 7.0 (a workbook's number) → "7"; blank → ""."""
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _non_numbers(frame, column: str, workbook: bool) -> str:
    import pandas as pd

    values = frame[column]
    blank = values.isna() | values.astype(str).str.strip().eq("")
    numbers = pd.to_numeric(values.where(~blank), errors="coerce")
    bad = numbers.isna() & ~blank
    if not bad.any():
        return ""
    # a header line, then rows from line 2 (a workbook's row 2); the index is the row's position as read
    rows = [f"{'row' if workbook else 'line'} {2 + int(n)} {values.loc[n]!r}" for n in list(values.index[bad][:MAX_SHOWN])]
    more = int(bad.sum()) - len(rows)
    return f"{column!r} at " + ", ".join(rows) + (f" and {more} more" if more > 0 else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
