"""Cohort manifests: paths relative to the manifest, and ONE error listing every bad row."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.segmentation import Segmentation, read_segmentation, write_segmentation
from TACEResponseLib.imaging.manifest import read_manifest
from TACEResponseLib.imaging.phantoms import make_cohort

SMALL = dict(shape_kji=(40, 64, 64), spacing_ijk=(2.0, 2.0, 2.0), phases=["arterial"])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four small SYNTHETIC phantoms (one per class) with their manifest."""
    return make_cohort(4, tmp_path_factory.mktemp("cohort"), seed=300, **SMALL)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_valid_manifest_resolves_relative_paths_from_its_folder(cohort, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the manifest's folder: paths must not depend on the cwd
    rows = read_manifest(cohort, ["arterial"], require_label=True)
    raw = _rows(cohort)
    assert [r.case_id for r in rows] == [r["case_id"] for r in raw]
    for row, original in zip(rows, raw):
        assert row.images == [cohort.parent / original["arterial"]]
        assert row.images[0].is_file() and row.segmentation.is_file()
        assert row.label == original["label"] and row.segment == original["segment"]
        assert row.synthetic is True  # the phantoms' case.json says so
        assert row.line == raw.index(original) + 2


def test_synthetic_is_false_without_case_json(cohort, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(cohort.parent, folder)
    for info in folder.glob("*_case.json"):
        info.unlink()
    assert not any(r.synthetic for r in read_manifest(folder / "manifest.csv", ["arterial"]))


def test_a_case_id_naming_another_folder_finds_no_phantom_marker_there(cohort, tmp_path):
    """The marker is looked for beside the case's own files: case id '../marked/x' must not read
    ``../marked/x_case.json``."""
    folder = tmp_path / "copy"
    shutil.copytree(cohort.parent, folder)
    for info in folder.glob("*_case.json"):
        info.unlink()
    (tmp_path / "marked").mkdir()
    (tmp_path / "marked" / "x_case.json").write_text('{"synthetic": true}')
    rows = _rows(folder / "manifest.csv")
    rows[0]["case_id"] = "../marked/x"
    rows[0]["arterial"] = str(folder / rows[0]["arterial"])
    rows[0]["segmentation"] = str(folder / rows[0]["segmentation"])
    manifest = _write(folder / "manifest_x.csv", rows)
    assert not any(r.synthetic for r in read_manifest(manifest, ["arterial"]))


def test_blank_segment_becomes_the_first_segment(cohort, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(cohort.parent, folder)
    raw = _rows(folder / "manifest.csv")
    for row in raw:
        row["segment"] = ""
    rows = read_manifest(_write(folder / "manifest.csv", raw), ["arterial"])
    for row in rows:
        assert row.segment == read_segmentation(row.segmentation).segments[0].id


def test_every_bad_row_is_listed_in_one_error(cohort, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(cohort.parent, folder)
    raw = _rows(folder / "manifest.csv")
    good_ids = [raw[0]["case_id"]]
    # line 3: missing image file; line 4: unknown label; line 5: empty segment
    raw[1]["arterial"] = "does_not_exist.nrrd"
    raw[2]["label"] = "XR"
    seg = read_segmentation(folder / raw[3]["segmentation"])
    grid = Volume(np.zeros(seg.layers[0].shape, np.uint8), seg.ijk_to_ras)
    write_segmentation(Segmentation.from_masks(grid, {"Tumour": np.zeros(grid.shape_kji, bool)}),
                       folder / "empty.seg.nrrd")
    raw[3]["segmentation"] = "empty.seg.nrrd"
    raw[3]["segment"] = ""
    # line 6: duplicate of line 2; line 7: segment that does not exist; line 8: missing segmentation file
    raw.append(dict(raw[0]))
    raw.append({**raw[0], "case_id": "nosegment", "segment": "Segment_99"})
    raw.append({**raw[0], "case_id": "noseg", "segmentation": "gone.seg.nrrd"})
    manifest = _write(folder / "manifest.csv", raw)

    with pytest.raises(InputError) as info:
        read_manifest(manifest, ["arterial"], require_label=True)
    message = str(info.value)
    assert "6 of 7 row(s) are unusable" in message
    listed = [line.strip() for line in message.splitlines()[1:]]
    assert len(listed) == 6
    assert listed[0].startswith("line 3 ") and "does_not_exist.nrrd does not exist" in listed[0]
    assert listed[1].startswith("line 4 ") and "unknown label 'XR'" in listed[1]
    assert listed[2].startswith("line 5 ") and "is empty" in listed[2]
    assert listed[3].startswith("line 6 ") and f"duplicate case id {good_ids[0]!r} (first on line 2)" in listed[3]
    assert listed[4].startswith("line 7 ") and "'Segment_99' not found" in listed[4]
    assert listed[5].startswith("line 8 ") and "gone.seg.nrrd does not exist" in listed[5]
    assert not any(line.startswith("line 2 ") for line in listed)


def test_missing_columns_and_clinical_values(cohort, tmp_path):
    folder = tmp_path / "clinical"
    shutil.copytree(cohort.parent, folder)
    raw = _rows(folder / "manifest.csv")
    values = ["61", "", "abc", "nan"]
    for row, value in zip(raw, values):
        row["age"] = value
    manifest = _write(folder / "manifest.csv", raw)
    with pytest.raises(InputError, match=r"lacks column\(s\) \['portal'\]"):
        read_manifest(manifest, ["arterial", "portal"])
    with pytest.raises(InputError) as info:
        read_manifest(manifest, ["arterial"], clinical=["age"])
    message = str(info.value)
    assert "3 of 4 row(s)" in message
    assert "line 3 " in message and "'age' is missing" in message
    assert "line 4 " in message and "'age' = 'abc' is not a finite number" in message
    assert "line 5 " in message and "'age' = 'nan'" in message
    raw[1]["age"], raw[2]["age"], raw[3]["age"] = "70.5", "48", "55"
    rows = read_manifest(_write(manifest, raw), ["arterial"], clinical=["age"])
    assert [r.clinical["age"] for r in rows] == [61.0, 70.5, 48.0, 55.0]


def test_labels_optional_for_prediction_but_checked_when_given(cohort, tmp_path):
    folder = tmp_path / "nolabel"
    shutil.copytree(cohort.parent, folder)
    raw = _rows(folder / "manifest.csv")
    raw[0]["label"] = ""
    manifest = _write(folder / "manifest.csv", raw)
    rows = read_manifest(manifest, ["arterial"], require_label=False)
    assert rows[0].label is None and rows[1].label == raw[1]["label"]
    with pytest.raises(InputError, match="line 2 .*label is blank"):
        read_manifest(manifest, ["arterial"], require_label=True)
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(folder / "nope.csv", ["arterial"])
