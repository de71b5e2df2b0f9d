"""`cohort import hcc-tace-seg` on a replica of the downloaded collection (Testing/hcc_replica.py).

Expected values come from the replica's own definition (PATIENTS: readings, survival, which patient
lacks what), never from the importer; then `train` (1 epoch), `fit-signature` and `fit-nomogram`
run on what it wrote.
"""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest

from hcc_replica import PATIENTS, PHASE_HU, build_replica, write_workbook
from TACEResponseLib.cli import main
from TACEResponseLib.imaging.hcc_tace_seg import import_hcc_tace_seg
from TACEResponseLib.imaging.segmentation import read_segmentation, segment_mask_on
from TACEResponseLib.imaging.volume_io import read_volume

CLASSES = {1: "CR", 2: "PR", 3: "SD", 4: "PD"}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hcc")
    collection = build_replica(root)
    workbook = write_workbook(root / "HCC-TACE-Seg_clinical_data-V2.xlsx")
    report = import_hcc_tace_seg(collection, root / "out", workbook)
    return root, report


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def _expected_label(readings):
    given = [CLASSES[r] for r in readings if r is not None]
    if not given:
        return ""
    top, votes = Counter(given).most_common(1)[0]
    return top if votes >= 2 else given[0]


def test_every_patient_is_accounted_for_with_the_reason(imported):
    root, report = imported
    by_id = {p.patient: p for p in report.patients}
    assert sorted(by_id) == sorted(p.id for p in PATIENTS)
    for patient in PATIENTS:
        outcome = by_id[patient.id]
        if not patient.dicom:
            assert outcome.status == "excluded" and "no DICOM images" in outcome.reason
        elif not patient.seg:
            assert outcome.status == "excluded" and "no radiologist SEG (only AI SEGs)" in outcome.reason
        elif not any(patient.mrecist):
            assert outcome.status == "survival only" and outcome.reason == "no mRECIST reading"
        else:
            assert outcome.status == "used", (patient.id, outcome.reason)
            assert outcome.label == _expected_label(patient.mrecist)
        if patient.dicom:
            assert any("AI SEG(s) skipped" in note for note in outcome.notes)
    assert by_id["HCC_005"].label == "PR" and "readers disagree" in " ".join(by_id["HCC_005"].notes)
    saved = json.loads((root / "out" / "import_report.json").read_text())
    assert saved["counts"] == {"patients": 14, "used": 11, "survival_only": 1, "excluded": 2}
    assert "ALT: not in the collection's workbook" in saved["missing"]
    markdown = (root / "out" / "import_report.md").read_text()
    assert all(f"| {p.id} |" in markdown for p in PATIENTS)


def test_the_manifest_holds_the_acquisition_the_seg_was_drawn_on(imported):
    root, _ = imported
    rows = _rows(root / "out" / "manifest.csv")
    used = [p for p in PATIENTS if p.dicom and p.seg and any(p.mrecist)]
    assert sorted(rows) == sorted(p.id for p in used)
    liver_hu, tumour_hu, aorta_hu, portal_hu = PHASE_HU["arterial"]
    for patient in used:
        row = rows[patient.id]
        assert row["label"] == _expected_label(patient.mrecist) and row["segment"] == "2"  # Mass, not Liver
        image = read_volume(root / "out" / row["ct"])
        segmentation = read_segmentation(root / "out" / row["segmentation"])
        tumour = segment_mask_on(segmentation, "Mass", image).array > 0
        aorta = segment_mask_on(segmentation, "Abdominal aorta", image).array > 0
        assert abs(image.array[tumour].mean() - tumour_hu) < 5 and abs(image.array[aorta].mean() - aorta_hu) < 5
        assert row["arterial"] == row["ct"] and row["portal"].endswith("@3")
        assert float(row["os_weeks"]) == patient.os_weeks and float(row["death"]) == patient.death
    assert row["BCLC"] in ("A", "B", "C")


def test_references_that_do_not_resolve_fall_back_to_enhancement_and_say_so(imported):
    _, report = imported
    outcome = next(p for p in report.patients if p.patient == "HCC_007")
    assert "chosen by enhancement" in " ".join(outcome.notes) and outcome.acquisition == "2"
    phases = {v["phase"] for v in outcome.enhancement.values()}
    assert phases == {"arterial", "portal"}


def test_survival_table_keeps_patients_without_a_reading(imported):
    root, _ = imported
    rows = _rows(root / "out" / "survival.csv")
    with_survival = [p for p in PATIENTS if p.dicom and p.seg]
    assert sorted(rows) == sorted(p.id for p in with_survival)
    assert rows["HCC_009"]["label"] == "" and float(rows["HCC_009"]["os_weeks"]) == 45.0


@pytest.mark.slow
def test_train_and_the_survival_pipeline_accept_the_imported_cohort(imported, capsys):
    root, _ = imported
    out = root / "out"
    assert main(["train", "--manifest", str(out / "manifest.csv"), "--phase", "ct", "--architecture", "resnet18",
                 "--size", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress",
                 "--validation-fraction", "0", "--output", str(root / "model")]) == 0
    card = json.loads((root / "model" / "configs" / "metadata.json").read_text())
    assert card["class_names"] == ["CR", "PR", "SD", "PD"]
    assert main(["fit-signature", "--manifest", str(out / "survival.csv"), "--phases", "ct", "--time-col", "os_weeks",
                 "--event-col", "death", "--time-unit", "weeks", "--size", "32", "--device", "cpu",
                 "--validation-fraction", "0", "--icc-threshold", "0", "--max-features", "1",
                 "--output", str(root / "sig")]) == 0
    assert main(["fit-nomogram", "--signature", str(root / "sig"), "--covariates", "BCLC", "AFP", "--n-boot", "20"]) == 0
    model = json.loads((root / "sig" / "survival_model.json").read_text())
    text = json.dumps(model)
    assert '"time_unit": "weeks"' in text and "52" in text
    capsys.readouterr()
