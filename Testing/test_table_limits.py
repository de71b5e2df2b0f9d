"""Tables made to exhaust the reader (core/table_limits.py): each is refused from what it declares, in a
second and a few megabytes, with one error naming the file; the workbooks people really save still read.

Before these checks, calamine aborted the process on the first two (a failed Rust allocation of 549 GB and
96 GB: no Python exception, the test run itself died) and took hundreds of megabytes to gigabytes on the
others. The files are a few kilobytes: the bombs are in the declarations.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest
from test_tables import write_ods_xml

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.tables import read_table

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
HEADER_ROW = '<row r="1"><c r="A1" t="inlineStr"><is><t>case_id</t></is></c><c r="B1" t="inlineStr"><is><t>age</t></is></c></row>'


def xlsx_with(path: Path, sheet_data: str, shared_strings: str | None = None, tail: str = "") -> Path:
    """An Excel-written workbook (openpyxl) whose first sheet's ``sheetData`` (and shared-string table) are
    replaced by what is given."""
    pd.DataFrame({"case_id": ["HCC_001"], "age": [60]}).to_excel(path, index=False)
    parts = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            parts[name] = archive.read(name)
    parts["xl/worksheets/sheet1.xml"] = (f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{MAIN}">'
                                         f'<sheetData>{sheet_data}</sheetData>{tail}</worksheet>').encode()
    if shared_strings is not None:
        parts["xl/sharedStrings.xml"] = shared_strings.encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return path


def refused(path: Path, *words: str) -> str:
    with pytest.raises(InputError) as caught:
        read_table(path, what="clinical table")
    message = str(caught.value)
    assert message.startswith(f"clinical table {path}:"), message
    for word in words:
        assert word in message, message
    return message


def test_xlsx_values_far_apart_are_refused_from_their_cell_references(tmp_path):
    far = xlsx_with(tmp_path / "far.xlsx", HEADER_ROW + '<row r="1048576"><c r="XFD1048576"><v>1</v></c></row>')
    refused(far, "1,048,576 rows × 16,384 columns", "more than the 4,000,000 read here")
    # a formula without a cached value and a row number past Excel's own limit count as well
    formula = xlsx_with(tmp_path / "formula.xlsx", HEADER_ROW + '<row r="9"><c r="ZZ9"><f>1+1</f></c></row>'
                        '<row r="99999999999"><c><v>1</v></c></row>')
    refused(formula, "99,999,999,999 rows × 702 columns")
    # formatted but empty cells far away (what Excel writes for a coloured column) are no values
    styled = xlsx_with(tmp_path / "styled.xlsx", HEADER_ROW + '<row r="2"><c r="A2" t="inlineStr"><is><t>HCC_001</t>'
                       '</is></c><c r="B2"><v>60</v></c></row><row r="1048576"><c r="XFD1048576" s="1"/>'
                       '<c r="XFC1048576" s="1"></c></row>')
    assert read_table(styled, numeric=["age"])["age"].tolist() == [60]


def test_a_shared_string_table_declaring_billions_of_strings_is_refused(tmp_path):
    lie = (f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{MAIN}" count="4000000000" '
           'uniqueCount="4000000000"><si><t>case_id</t></si></sst>')
    refused(xlsx_with(tmp_path / "sst.xlsx", HEADER_ROW, lie), "declares 4,000,000,000 strings")


def test_one_long_shared_string_referenced_by_many_cells_is_refused(tmp_path):
    long_string = (f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{MAIN}" count="150" uniqueCount="1">'
                   f'<si><t>{"x" * (1 << 20)}</t></si></sst>')
    rows = "".join(f'<row r="{i}"><c r="A{i}" t="s"><v>0</v></c></row>' for i in range(2, 152))
    amplified = xlsx_with(tmp_path / "amplified.xlsx", HEADER_ROW + rows, long_string)
    assert amplified.stat().st_size < 20_000
    refused(amplified, "more than 128 M characters once repeated cells and shared strings are expanded")


ODS_HEADER = ('<table:table-row><table:table-cell office:value-type="string"><text:p>case_id</text:p></table:table-cell>'
              '<table:table-cell office:value-type="string"><text:p>age</text:p></table:table-cell></table:table-row>')


@pytest.mark.parametrize("cell, words", [
    ('<table:table-cell office:value-type="float" office:value="1" table:number-columns-repeated="1000"/>',
     ["5,001 rows × 1,000 columns"]),
    ('<table:table-cell table:formula="of:=1" table:number-columns-repeated="1000"/>', ["5,001 rows × 1,000 columns"]),
    ('<table:covered-table-cell office:value-type="float" office:value="1" table:number-columns-repeated="1000"/>',
     ["5,001 rows × 1,000 columns"]),
    ('<table:table-cell office:value-type="string"><text:p>A<text:s text:c="40000"/></text:p></table:table-cell>',
     ["more than 128 M characters"]),
])
def test_ods_repeats_are_counted_as_the_cells_and_text_they_expand_to(tmp_path, cell, words):
    bomb = write_ods_xml(tmp_path / "repeat.ods", f'<table:table table:name="data">{ODS_HEADER}'
                         f'<table:table-row table:number-rows-repeated="5000">{cell}</table:table-row></table:table>')
    assert bomb.stat().st_size < 2_000
    refused(bomb, *words)


def test_a_libreoffice_sheet_with_its_trailing_empty_rows_and_columns_still_reads(tmp_path):
    empty_rest = ('<table:table-row table:number-rows-repeated="1048574"><table:table-cell '
                  'table:number-columns-repeated="16384"/></table:table-row>')
    sheet = write_ods_xml(tmp_path / "lo.ods", f'<table:table table:name="data">{ODS_HEADER}<table:table-row>'
                          '<table:table-cell office:value-type="string"><text:p>HCC_001</text:p></table:table-cell>'
                          '<table:table-cell office:value-type="float" office:value="60"><text:p>60</text:p>'
                          f'</table:table-cell></table:table-row>{empty_rest}</table:table>')
    table = read_table(sheet, text_columns=["case_id"], numeric=["age"])
    assert table["case_id"].tolist() == ["HCC_001"] and table["age"].tolist() == [60]


def test_workbook_parts_that_inflate_too_far_or_are_not_plain_xml_are_refused(tmp_path, monkeypatch):
    dtd = xlsx_with(tmp_path / "dtd.xlsx", HEADER_ROW)
    with zipfile.ZipFile(dtd, "a") as archive:
        archive.writestr("xl/extra.xml", '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "c">]><a>&b;</a>')
    refused(dtd, "xl/extra.xml declares a DTD")
    broken = xlsx_with(tmp_path / "broken.xlsx", HEADER_ROW + '<row r="2"><c r="A2"><v>1</v></x></row>')
    refused(broken, "xl/worksheets/sheet1.xml is not well-formed XML")
    monkeypatch.setattr("TACEResponseLib.core.table_limits.MAX_TABLE_BYTES", 1 << 20)
    padded = xlsx_with(tmp_path / "padded.xlsx", HEADER_ROW + " " * (2 << 20))
    refused(padded, "inflate to 2 MB (a zip bomb?), more than the 1 MB read here")


def test_csv_with_too_many_cells_a_nul_byte_or_repeated_column_names_is_refused(tmp_path):
    many = tmp_path / "many.csv"
    many.write_bytes(b"case_id\n" + b"1\n" * 4_100_000)
    refused(many, "4,100,002 cells", "more than the 4,000,000 read here")
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"case_id,age\nHCC_001,6\x000\n")
    refused(nul, "NUL byte (line 2)")
    twice = tmp_path / "twice.csv"
    twice.write_text("case_id,age,age\nHCC_001,60,61\n")
    refused(twice, "column 'age' appears twice (columns 2 and 3)")
    pd.DataFrame([["HCC_001", 60, 61]], columns=["case_id", "age", "age "]).to_excel(tmp_path / "twice.xlsx",
                                                                                   index=False)
    refused(tmp_path / "twice.xlsx", "column 'age' appears twice")


def test_a_utf16_table_saved_by_excel_reads(tmp_path):
    unicode_text = tmp_path / "unicode.txt"
    unicode_text.write_bytes("case_id\tage\r\nHCC_001\t60\r\n".encode("utf-16"))
    table = read_table(unicode_text, numeric=["age"], text_columns=["case_id"])
    assert table["case_id"].tolist() == ["HCC_001"] and table["age"].tolist() == [60]


def test_the_cli_answers_a_table_bomb_with_one_error_line(tmp_path, capsys):
    from test_hostile_inputs import refused_by_cli

    bomb = xlsx_with(tmp_path / "clinical.xlsx", HEADER_ROW + '<row r="1048576"><c r="XFD1048576"><v>1</v></c></row>')
    refused_by_cli(["survival", "fit-signature", "--device", "cpu", "--size", "32", "--features", bomb,
                    "--clinical", bomb], ["clinical.xlsx", "1,048,576 rows × 16,384 columns"], capsys,
                   output=tmp_path / "signature")


def test_a_large_feature_table_of_numbers_is_read_and_a_word_in_it_is_one_error(tmp_path):
    """A deep-feature CSV beyond the 4,000,000 cells of a clinical table (2,000 patients × 2,100 features)
    is read as numbers; a word in it, or a table of words that large, is refused without pandas making
    a Python object per cell."""
    rows, columns = 2_000, 2_100
    header = "case_id," + ",".join(f"f{n}" for n in range(columns)) + "\n"
    line = ",".join(["1"] * columns)
    features = tmp_path / "features.csv"
    features.write_text(header + "".join(f"P{n:04d},{line}\n" for n in range(rows)))
    table = read_table(features, what="feature table", text_columns=["case_id"], numeric="*")
    assert table.shape == (rows, columns + 1) and table["case_id"].iloc[-1] == "P1999"
    assert (table.dtypes.iloc[1:] == "float64").all()
    with open(features, "a") as handle:
        handle.write("P2000," + ",".join(["1"] * (columns - 1)) + ",abc\n")
    with pytest.raises(InputError, match="feature table .*cannot be read as a table .*'abc'"):
        read_table(features, what="feature table", text_columns=["case_id"], numeric="*")
    with pytest.raises(InputError, match="more than the 4,000,000 read here"):  # the same file, not as numbers
        read_table(features, what="clinical table", text_columns=["case_id"])
