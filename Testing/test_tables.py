"""The one table reader (core/tables.py): CSV and workbooks, sheets, and every bad table as one clear error.

Workbooks are written with openpyxl (.xlsx) and as a minimal OpenDocument file (.ods, the zip of XML
that LibreOffice writes) so the reader meets files it did not write itself.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import pandas as pd
import pytest

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.tables import read_table, with_sheet


def write_ods(path: Path, sheets: dict[str, list[list]]) -> Path:
    """A minimal OpenDocument spreadsheet: one table per sheet, numbers as float cells."""
    def cell(value) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f'<table:table-cell office:value-type="float" office:value="{value}"><text:p>{value}</text:p></table:table-cell>'
        return f'<table:table-cell office:value-type="string"><text:p>{escape(str(value))}</text:p></table:table-cell>'

    return write_ods_xml(path, "".join(
        f'<table:table table:name="{escape(name)}">'
        + "".join("<table:table-row>" + "".join(cell(v) for v in row) + "</table:table-row>" for row in rows)
        + "</table:table>" for name, rows in sheets.items()))


def write_ods_xml(path: Path, tables: str) -> Path:
    """An OpenDocument spreadsheet around ``tables``, the ``<table:table>`` elements as written."""
    content = ('<?xml version="1.0" encoding="UTF-8"?><office:document-content '
               'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
               'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
               'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2">'
               f'<office:body><office:spreadsheet>{tables}</office:spreadsheet></office:body></office:document-content>')
    manifest = ('<?xml version="1.0" encoding="UTF-8"?><manifest:manifest '
                'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
                '<manifest:file-entry manifest:full-path="/" '
                'manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>'
                '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
                '</manifest:manifest>')
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), "application/vnd.oasis.opendocument.spreadsheet")
        archive.writestr("META-INF/manifest.xml", manifest)
        archive.writestr("content.xml", content, compress_type=zipfile.ZIP_DEFLATED)
    return path


ROWS = [["case_id", "OS", "event", "BCLC"], ["HCC_001", 51.3, 1, "Stage-B"], ["007", 12.0, 0, "Stage-C"]]


def test_csv_xlsx_and_ods_read_the_same_values(tmp_path):
    frame = pd.DataFrame(ROWS[1:], columns=ROWS[0])
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pd.ExcelWriter(tmp_path / "t.xlsx", engine="openpyxl") as writer:
        pd.DataFrame([["notes"]]).to_excel(writer, sheet_name="notes", index=False, header=False)
        frame.to_excel(writer, sheet_name="data table", index=False)
    write_ods(tmp_path / "t.ods", {"data table": ROWS})
    tables = [read_table(tmp_path / "t.csv", text_columns=["case_id"], numeric=["OS", "event"]),
              read_table(tmp_path / "t.xlsx", sheet="data table", text_columns=["case_id"], numeric=["OS", "event"]),
              read_table(with_sheet(tmp_path / "t.xlsx", "data table"), text_columns=["case_id"]),
              read_table(tmp_path / "t.ods", text_columns=["case_id"], numeric=["OS", "event"])]
    for table in tables:
        assert table["case_id"].tolist() == ["HCC_001", "007"]
        assert table["OS"].astype(float).tolist() == [51.3, 12.0] and table["BCLC"].tolist() == ["Stage-B", "Stage-C"]


@pytest.mark.parametrize("content, words", [
    ("", ["0 bytes"]),
    ("case_id,OS,event\n", ["header but no rows"]),
    ("\n\n", ["empty"]),
    ('case_id,OS,event\n"HCC_001,1\n', ["cannot be read"]),
])
def test_empty_and_broken_csv_are_one_error_naming_the_file(tmp_path, content, words):
    path = tmp_path / "clinical.csv"
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        read_table(path, what="clinical table", required=["case_id"])
    assert str(path) in str(caught.value) and all(w in str(caught.value) for w in words), caught.value


def test_workbook_errors_name_the_sheet_the_columns_and_the_cells(tmp_path):
    frame = pd.DataFrame({"TCIA_ID": ["HCC_001", "HCC_002", "HCC_003"], "OS": [10, "unknown", 30], "AFP": [1, 2, "high"]})
    frame.to_excel(tmp_path / "c.xlsx", sheet_name="data table", index=False)
    with pytest.raises(InputError, match="no sheet 'Sheet1'; its sheets: data table"):
        read_table(tmp_path / "c.xlsx", sheet="Sheet1")
    with pytest.raises(InputError, match="lacks column\\(s\\) Death_1_StillAliveorLostToFU_0; it has TCIA_ID, OS, AFP"):
        read_table(tmp_path / "c.xlsx", required=["TCIA_ID", "Death_1_StillAliveorLostToFU_0"])
    with pytest.raises(InputError, match="'OS' at row 3 'unknown'; 'AFP' at row 4 'high'"):
        read_table(tmp_path / "c.xlsx", numeric=["OS", "AFP"])
    (tmp_path / "fake.xlsx").write_text("not a workbook")
    with pytest.raises(InputError, match="fake.xlsx.*cannot be read as a workbook"):
        read_table(tmp_path / "fake.xlsx")
    with pytest.raises(InputError, match="not a workbook"):
        (tmp_path / "plain.csv").write_text("a\n1\n")
        read_table(tmp_path / "plain.csv", sheet="x")
