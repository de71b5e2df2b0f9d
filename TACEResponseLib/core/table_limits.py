"""What a table file may make pandas or calamine allocate, measured before either reads it.

calamine (the workbook reader under pandas) trusts what a workbook says. Measured on python-calamine
0.9.1, each of these aborted the whole process (a Rust allocation failure is no Python exception:
Slicer or a web session dies with it) or took gigabytes from a file of a few kilobytes:

* an ``.xlsx`` holding values in A1 and XFD1048576: one cell for every position between them, 549 GB;
* an ``.xlsx`` whose shared-string table declares ``uniqueCount="4000000000"``: 96 GB reserved;
* an ``.ods`` repeating one cell 10 million times (``number-columns-repeated``), or a formula cell
  without a value 100 million times: 1.2 GB and 5.4 GB;
* an ``.ods`` cell holding ``<text:s text:c="2000000000"/>`` (two billion spaces): a Rust panic, and
  1,000 cells of a million spaces each: 3 GB.

So a workbook's parts may inflate to at most :data:`MAX_TABLE_BYTES` (counted while inflating, not
taken from the zip's directory, which may lie); the values of each sheet span at most
:data:`MAX_SHEET_CELLS` cells (first to last row × first to last column, repeats counted); the text the
cells hold once repeats, shared strings and ``text:s`` are expanded is at most :data:`MAX_TABLE_TEXT`
characters; a shared-string table declares at most :data:`MAX_SHEET_CELLS` strings. Every XML part is
parsed by expat as it inflates (nothing kept but counters) and must be well-formed, without a DTD.
A text table is at most :data:`MAX_TABLE_BYTES`, holds no NUL byte (pandas cut ``6\\x000`` to 6) and at
most :data:`MAX_SHEET_CELLS` cells by its separators.
"""

from __future__ import annotations

import codecs
import re
import zipfile
from array import array
from pathlib import Path
from xml.parsers import expat

from TACEResponseLib.core.errors import InputError

WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods")
#: the largest text table, and the most bytes a workbook's parts may inflate to
MAX_TABLE_BYTES = 256 << 20
#: the most cells a sheet's values may span (first to last row × first to last column); about 1 GB of
#: Python objects once pandas holds them
MAX_SHEET_CELLS = 4_000_000
#: the most cells of a text table read as numbers only (deep-feature tables: 1,024 DenseNet features per
#: phase and patient): 8 bytes each once read, 256 MB at the most
MAX_NUMERIC_CELLS = 32_000_000
#: the largest text table read as numbers only
MAX_NUMERIC_TABLE_BYTES = 1 << 30
#: the most characters a workbook's cells may hold once repeated cells and shared strings are expanded
MAX_TABLE_TEXT = 128 << 20
_BLOCK = 1 << 20


def check_table_file(file: Path, label: str, numeric: bool = False) -> tuple[str, int]:
    """Refuse a table that would make pandas or calamine allocate far more than the file holds; returns
    the encoding a text table is read with (UTF-16 when it starts with its byte-order mark, else UTF-8;
    "" for a workbook) and its cells counted by separators (0 for a workbook).
    ``numeric``: a text table read as numbers only (no Python object per cell) may be larger:
    :data:`MAX_NUMERIC_CELLS` cells and :data:`MAX_NUMERIC_TABLE_BYTES`."""
    size = file.stat().st_size
    if file.suffix.lower() in WORKBOOK_SUFFIXES:
        with open(file, "rb") as handle:
            zipped = handle.read(4) == b"PK\x03\x04"
        if zipped:  # .xlsx, .xlsm, .ods (an .xls is a compound file: at most 65,536 × 256 cells by its format)
            check_zipped_workbook(file, label)
        elif size > MAX_TABLE_BYTES:
            raise InputError(f"{label}: {size / 2**20:,.0f} MB, more than the {MAX_TABLE_BYTES >> 20} MB read here")
        return "", 0
    max_bytes, max_cells = (MAX_NUMERIC_TABLE_BYTES, MAX_NUMERIC_CELLS) if numeric else (MAX_TABLE_BYTES, MAX_SHEET_CELLS)
    if size > max_bytes:
        raise InputError(f"{label}: {size / 2**20:,.0f} MB, more than the {max_bytes >> 20} MB read here")
    with open(file, "rb") as handle:
        utf16 = handle.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # Excel's "Unicode text"
        handle.seek(0)
        line, lines, separators = 1, 0, dict.fromkeys((b",", b"\t", b";", b"|"), 0)
        for block in iter(lambda: handle.read(_BLOCK), b""):
            if not utf16 and b"\x00" in block:
                line += block[:block.index(b"\x00")].count(b"\n")
                raise InputError(f"{label}: holds a NUL byte (line {line}); not a text table (a damaged file, or "
                                 "a workbook saved under a .csv name?)")
            line += block.count(b"\n")
            for separator in separators:
                separators[separator] += block.count(separator)
        cells = line + max(separators.values())
        if cells > max_cells:
            raise InputError(f"{label}: holds about {cells:,} cells ({line:,} lines), more than the "
                             f"{max_cells:,} read here")
    return ("utf-16" if utf16 else "utf-8-sig"), cells


def check_zipped_workbook(file: Path, label: str) -> None:
    """Inflate every part of a zipped workbook, counting, never holding it, and measure its sheets."""
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"{label}: cannot be read as a workbook ({exc})") from None
    with archive:
        members = archive.infolist()
        declared = sum(m.file_size for m in members)
        if declared > MAX_TABLE_BYTES:
            raise InputError(f"{label}: its parts inflate to {declared / 2**20:,.0f} MB (a zip bomb?), more than "
                             f"the {MAX_TABLE_BYTES >> 20} MB read here")
        scan = _WorkbookScan(label)
        for member in members:
            try:
                with archive.open(member) as stream:
                    scan.part(member.filename, stream)
            except InputError:
                raise
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as exc:
                raise InputError(f"{label}: cannot be read as a workbook ({member.filename}: {exc})") from None
        scan.finish()


def _count(value: str | None, default: int = 1) -> int:
    """A count attribute (a repeat, a row number); absurdly long digit strings count as huge."""
    if not value or not value.isdigit():
        return default
    return int(value) if len(value) <= 15 else 10 ** 15


def _local(name: str) -> str:
    return name.rsplit(":", 1)[-1]


class _Extent:
    """The first and last row and column holding a value in one sheet."""

    def __init__(self) -> None:
        self.rows: tuple[int, int] | None = None
        self.columns: tuple[int, int] = (0, 0)

    def add(self, row: int, column: int, rows: int = 1, columns: int = 1) -> None:
        last_row, last_column = row + rows - 1, column + columns - 1
        if self.rows is None:
            self.rows, self.columns = (row, last_row), (column, last_column)
        else:
            self.rows = (min(self.rows[0], row), max(self.rows[1], last_row))
            self.columns = (min(self.columns[0], column), max(self.columns[1], last_column))

    @property
    def cells(self) -> int:
        if self.rows is None:
            return 0
        return (self.rows[1] - self.rows[0] + 1) * (self.columns[1] - self.columns[0] + 1)


_CELL_REFERENCE = re.compile(r"([A-Za-z]{1,3})(\d{1,15})")


class _WorkbookScan:
    """Counters for one workbook, fed part by part: XLSX sheets (``sheetData``: rows, cells by their ``r``
    reference, else one after the previous; a cell holds something when it has a value, formula or inline
    string), XLSX shared strings (``sst``), ODS tables (``table:*``: repeats; a cell holds something when it
    has a value type or a formula). Shared-string references are totalled at the end, whatever the order
    of the parts."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.budget = MAX_TABLE_BYTES
        self.text = 0  # characters the cells hold, repeats and shared strings expanded
        self.string_lengths = array("q")
        self.references = array("q")

    # --- one part --------------------------------------------------------------------------------------
    def part(self, name: str, stream) -> None:
        self.name = name
        self.extent: _Extent | None = None
        self.in_sheet = self.in_sst = self.in_cell = False
        self.row = self.column = 0
        self.repeat_rows = 1
        self.value: list[str] | None = None
        parser = expat.ParserCreate()
        parser.buffer_text = True
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._characters
        parser.StartDoctypeDeclHandler = self._doctype
        xml, started = True, False
        looks_like_sheet = tail = b""
        for block in iter(lambda: stream.read(_BLOCK), b""):
            self.budget -= len(block)
            if self.budget < 0:
                raise InputError(f"{self.label}: its parts inflate to more than the {MAX_TABLE_BYTES >> 20} MB "
                                 "read here (a zip bomb?)")
            if xml:
                try:
                    parser.Parse(block, False)
                    started = True
                except expat.ExpatError as exc:
                    if self.extent is not None or self.in_sst or name.lower().endswith((".xml", ".rels")):
                        raise self._malformed(exc) from None
                    xml = False  # an image, a printer setting: no XML
            if not xml and not looks_like_sheet:  # calamine would still look for cells in it
                window = tail + block
                looks_like_sheet = b"sheetData" in window or b"table:table" in window
                if looks_like_sheet:
                    raise InputError(f"{self.label}: its part {name} holds sheet data but is not well-formed XML")
                tail = window[-16:]
        if xml and started:
            try:
                parser.Parse(b"", True)
            except expat.ExpatError as exc:
                if name.lower().endswith((".xml", ".rels")) or self.extent is not None:
                    raise self._malformed(exc) from None

    def _malformed(self, exc: expat.ExpatError) -> InputError:
        return InputError(f"{self.label}: its part {self.name} is not well-formed XML ({exc})")

    def _doctype(self, *_) -> None:
        raise InputError(f"{self.label}: its part {self.name} declares a DTD (no workbook does; entities could "
                         "expand without bound)")

    # --- elements ----------------------------------------------------------------------------------------
    def _start(self, tag: str, attributes: dict[str, str]) -> None:
        if tag.startswith("table:") or tag == "text:s":
            self._ods_start(tag, attributes)
            return
        local = _local(tag)
        if local == "sheetData":
            self.in_sheet, self.extent, self.row, self.column = True, _Extent(), 0, 0
        elif local == "sst":
            self.in_sst = True
            declared = _count(attributes.get("uniqueCount"), 0)
            if declared > MAX_SHEET_CELLS:
                raise InputError(f"{self.label}: its shared-string table declares {declared:,} strings, more than "
                                 f"the {MAX_SHEET_CELLS:,} read here")
        elif self.in_sst and local == "si":
            self.string_lengths.append(0)
            if len(self.string_lengths) > MAX_SHEET_CELLS:
                raise InputError(f"{self.label}: its shared-string table holds more than {MAX_SHEET_CELLS:,} strings")
        elif self.in_sst and local == "t":
            self.value = []
        elif self.in_sheet and local == "row":
            self.row, self.column = _count(attributes.get("r"), self.row + 1), 0
        elif self.in_sheet and local == "c":
            cell = _CELL_REFERENCE.fullmatch(attributes.get("r", ""))
            if cell:
                self.column, self.row = _column_number(cell.group(1)), _count(cell.group(2))
            else:
                self.column += 1
            self.in_cell, self.held, self.shared = True, False, attributes.get("t") == "s"
        elif self.in_cell and local in ("v", "f", "is", "t"):
            if not self.held:
                self.held = True
                self._add(self.row, self.column)
            if local in ("v", "t"):
                self.value = []

    def _end(self, tag: str) -> None:
        if tag in ("table:table-cell", "table:covered-table-cell"):
            self._ods_cell_end()
            return
        local = _local(tag)
        if self.value is not None and local in ("v", "t"):
            text = "".join(self.value)
            self.value = None
            if self.in_sst:
                self.string_lengths[-1] += len(text)
            elif local == "v" and self.shared:
                self.references.append(_count(text.strip(), -1))
            else:
                self._add_text(len(text))
        elif local == "c":
            self.in_cell = False
        elif local == "sheetData":
            self.in_sheet = False
        elif local == "sst":
            self.in_sst = False

    def _characters(self, data: str) -> None:
        if self.value is not None:
            self.value.append(data)
        elif self.in_cell and self.ods_cell is not None:
            self.ods_cell[2] += len(data)

    # --- ODS ---------------------------------------------------------------------------------------------
    ods_cell: list | None = None  # [columns repeated, holds a value, characters]

    def _ods_start(self, tag: str, attributes: dict[str, str]) -> None:
        if tag == "table:table":
            self.extent, self.row, self.column, self.repeat_rows = _Extent(), 0, 0, 1
        elif tag == "table:table-row":
            self.row += self.repeat_rows  # the previous row group
            self.repeat_rows, self.column = _count(attributes.get("table:number-rows-repeated")), 0
        elif tag in ("table:table-cell", "table:covered-table-cell"):
            held = any(k in attributes for k in ("office:value-type", "calcext:value-type", "table:formula"))
            self.in_cell = True
            self.ods_cell = [_count(attributes.get("table:number-columns-repeated")), held,
                             sum(len(v) for v in attributes.values())]
            self.column += 1
        elif tag == "text:s" and self.ods_cell is not None:
            self.ods_cell[2] += _count(attributes.get("text:c"))

    def _ods_cell_end(self) -> None:
        if self.ods_cell is None:
            return
        columns, held, characters = self.ods_cell
        self.ods_cell, self.in_cell = None, False
        if held and self.extent is not None:
            self._add(self.row, self.column, self.repeat_rows, columns)
            self._add_text(characters * self.repeat_rows * columns)
        self.column += columns - 1

    # --- totals ------------------------------------------------------------------------------------------
    def _add(self, row: int, column: int, rows: int = 1, columns: int = 1) -> None:
        self.extent.add(row, column, rows, columns)
        if self.extent.cells > MAX_SHEET_CELLS:
            rows, columns = (self.extent.rows[1] - self.extent.rows[0] + 1,
                             self.extent.columns[1] - self.extent.columns[0] + 1)
            raise InputError(f"{self.label}: a sheet's values span {rows:,} rows × {columns:,} columns "
                             f"({self.extent.cells:,} cells), more than the {MAX_SHEET_CELLS:,} read here")

    def _add_text(self, characters: int) -> None:
        self.text += characters
        if self.text > MAX_TABLE_TEXT:
            raise InputError(f"{self.label}: its cells hold more than {MAX_TABLE_TEXT >> 20} M characters once "
                             "repeated cells and shared strings are expanded")

    def finish(self) -> None:
        lengths, known = self.string_lengths, len(self.string_lengths)
        for index in self.references:
            if 0 <= index < known:
                self._add_text(lengths[index])


def _column_number(letters: str) -> int:
    number = 0
    for letter in letters.upper():
        number = number * 26 + ord(letter) - 64
    return number
