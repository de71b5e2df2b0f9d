"""`cohort import hcc-tace-seg` on a replica of the downloaded collection (Testing/hcc_replica.py).

Expected values come from the replica's own definition (PATIENTS: readings, survival, which patient
lacks what), never from the importer; then `train` (1 epoch), `fit-signature` and `fit-nomogram`
run on what it wrote.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from hcc_replica import PATIENTS, PHASE_HU, build_replica, write_workbook
from TACEResponseLib.cli import main
from TACEResponseLib.imaging.segmentation import read_segmentation, segment_mask_on
from TACEResponseLib.imaging.volume_io import read_volume

CLASSES = {1: "CR", 2: "PR", 3: "SD", 4: "PD"}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hcc")
    collection = build_replica(root)
    workbook = write_workbook(root / "HCC-TACE-Seg_clinical_data-V2.xlsx")
    assert main(["cohort", "import", "hcc-tace-seg", str(collection), "--clinical", str(workbook),
                 "--output", str(root / "out")]) == 0
    report = json.loads((root / "out" / "import_report.json").read_text())
    return root, SimpleNamespace(counts=report["counts"], missing=report["missing"],
                                 patients=[SimpleNamespace(**p) for p in report["patients"]])


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
        elif patient.foreign:
            assert outcome.status == "excluded" and "the SEG references no CT here" in outcome.reason
        elif not any(patient.mrecist):
            assert outcome.status == "survival only" and outcome.reason == "no mRECIST reading"
        else:
            assert outcome.status == "used", (patient.id, outcome.reason)
            assert outcome.label == _expected_label(patient.mrecist)
        if patient.dicom:
            assert any("AI SEG(s) skipped" in note for note in outcome.notes)
    assert by_id["HCC_005"].label == "PR" and "readers disagree" in " ".join(by_id["HCC_005"].notes)
    assert report.counts == {"patients": 15, "used": 11, "survival_only": 1, "excluded": 3}
    assert "ALT: not in the collection's workbook" in report.missing
    markdown = (root / "out" / "import_report.md").read_text()
    assert all(f"| {p.id} |" in markdown for p in PATIENTS)


def test_the_manifest_holds_the_acquisition_the_seg_was_drawn_on(imported):
    root, _ = imported
    rows = _rows(root / "out" / "manifest.csv")
    used = [p for p in PATIENTS if p.dicom and p.seg and not p.foreign and any(p.mrecist)]
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
    with_survival = [p for p in PATIENTS if p.dicom and p.seg and not p.foreign]
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
    assert main(["survival", "fit-signature", "--manifest", str(out / "survival.csv"), "--phases", "ct", "--time-col", "os_weeks",
                 "--event-col", "death", "--time-unit", "weeks", "--size", "32", "--device", "cpu",
                 "--validation-fraction", "0", "--perturb", "none", "--max-features", "1",
                 "--nested-folds", "0", "--output", str(root / "sig")]) == 0
    assert main(["survival", "fit-nomogram", "--signature", str(root / "sig"), "--covariates", "BCLC", "AFP", "--n-boot", "20",
                 "--optimism-boot", "0"]) == 0
    model = json.loads((root / "sig" / "survival_model.json").read_text())
    text = json.dumps(model)
    assert '"time_unit": "weeks"' in text and "52" in text
    capsys.readouterr()


# --- WAW-TACE ------------------------------------------------------------------------------------------
def test_waw_tace_import_maps_lirads_response_and_days(tmp_path):
    import pandas as pd

    from TACEResponseLib.imaging.geometry import Volume
    from TACEResponseLib.imaging.volume_io import write_volume
    from TACEResponseLib.imaging.waw_tace import import_waw_tace

    grid = np.diag([0.8, 0.8, 2.0, 1.0])
    k, j, i = np.indices((10, 40, 40))
    responses = {1: "LR-TR Nonviable", 2: "LR-TR Viable", 3: "LR-TR Equivocal", 4: "LR-TR Viable"}
    for patient in (1, 2, 3):  # patient 4 is in the workbook only
        folder = tmp_path / "src" / "ct_scans" / str(patient)
        for phase, hu in (("1", 250), ("2", 150)):
            write_volume(Volume(np.full((10, 40, 40), hu, np.int16), grid, "ct"), folder / f"{patient}_{phase}_scan.nii.gz")
        lesions = [((i - 20) ** 2 + (j - 20) ** 2 < 40) & (k > 2) & (k < 7)]
        if patient == 1:
            lesions.append(((i - 8) ** 2 + (j - 30) ** 2 < 12) & (k > 3) & (k < 6))
        for n, lesion in enumerate(lesions):
            write_volume(Volume(lesion.astype(np.uint8), grid, "m"),
                         tmp_path / "src" / "masks" / str(patient) / f"{patient}_1_{n}_tumor_seg.nrrd")
    rows = [{"PATPRI": p, "age": 60 + p, "gender_woman": p % 2, "survival_time": 100.0 * p, "death": p % 2,
             "lab_afp": 10.0 * p, "lab_alt": 40.0, "LI-RADS TR response": r} for p, r in responses.items()]
    pd.DataFrame(rows).to_excel(tmp_path / "src" / "clinical_data_wawtace_v2_15_07_2024.xlsx", index=False)
    # patient 4's scan is a link to a file outside the collection, patient 5's folder a link to one outside it
    elsewhere = tmp_path / "elsewhere"
    write_volume(Volume(np.full((10, 40, 40), 99, np.int16), grid, "ct"), elsewhere / "5" / "5_1_scan.nii.gz")
    (tmp_path / "src" / "ct_scans" / "4").mkdir()
    (tmp_path / "src" / "ct_scans" / "4" / "4_1_scan.nii.gz").symlink_to(elsewhere / "5" / "5_1_scan.nii.gz")
    (tmp_path / "src" / "ct_scans" / "5").symlink_to(elsewhere / "5", target_is_directory=True)
    report = import_waw_tace(tmp_path / "src", tmp_path / "out")
    by_id = {p.patient: p for p in report.patients}
    assert "link(s) to files outside" in by_id["4"].notes[0] and by_id["4"].status == "excluded"
    assert "5" not in by_id  # a linked folder is not descended into
    assert {k: v.status for k, v in by_id.items()} == {"1": "used", "2": "used", "3": "survival only", "4": "excluded"}
    assert (by_id["1"].label, by_id["2"].label) == ("responder", "non-responder")
    assert "no CT scan" in by_id["4"].reason and "2 lesion masks" in by_id["1"].notes[0]
    manifest = _rows(tmp_path / "out" / "manifest.csv")
    segmentation = read_segmentation(tmp_path / "out" / manifest["1"]["segmentation"])
    assert [s.name for s in segmentation.segments] == ["Tumour 1", "Tumour 2"]
    assert read_volume(tmp_path / "out" / manifest["1"]["arterial"]).array.max() == 250
    survival = _rows(tmp_path / "out" / "survival.csv")
    assert float(survival["3"]["os_days"]) == 300.0 and survival["3"]["label"] == ""
    assert "not mRECIST" in " ".join(report.notes)


# --- the download plan from IDC's index --------------------------------------------------------------------
def test_download_plan_is_computed_from_the_index_idc_index_data_ships(capsys):
    import idc_index_data
    import pandas as pd

    index = pd.read_parquet(idc_index_data.IDC_INDEX_PARQUET_FILEPATH,
                            columns=["collection_id", "analysis_result_id", "PatientID", "StudyInstanceUID",
                                     "SeriesInstanceUID", "Modality", "series_size_MB"])
    collection = index[index["collection_id"] == "hcc_tace_seg"]
    segs = collection[(collection["Modality"] == "SEG") & collection["analysis_result_id"].isna()]
    wanted = collection[collection["StudyInstanceUID"].isin(segs["StudyInstanceUID"])]
    wanted = wanted[(wanted["Modality"] == "CT") | wanted["SeriesInstanceUID"].isin(segs["SeriesInstanceUID"])]
    assert collection["PatientID"].nunique() == 105 and segs["PatientID"].nunique() == 105
    assert main(["cohort", "download", "hcc-tace-seg", "unused", "--dry-run"]) == 0
    line = capsys.readouterr().out
    gigabytes = wanted["series_size_MB"].astype(float).sum() / 1000
    assert f"105 patients, {len(wanted)} series" in line and f"{gigabytes:.1f} GB" in line
    assert 10 < gigabytes < 0.6 * collection["series_size_MB"].astype(float).sum() / 1000  # not the whole collection


def test_download_without_network_is_one_clear_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import errno

    from TACEResponseLib.imaging import idc_download

    def unreachable(host):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(idc_download, "_reach", unreachable)  # no traffic leaves this machine in the tests
    assert main(["cohort", "download", "hcc-tace-seg", str(tmp_path / "dl"), "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot reach IDC's storage" in errors[0] and "Network is unreachable" in errors[0]
    assert not (tmp_path / "dl").exists()
