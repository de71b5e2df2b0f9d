"""``tace-response assess`` and ``tace-response cohort label`` on the SYNTHETIC treatment series, in-process
through the CLI's ``main()``: the known categories end to end, the files a user gets, and bad inputs (one
``error:`` line each, exit 2, nothing written)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from TACEResponseLib.cli import main
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.segmentation import read_segmentation
from TACEResponseLib.imaging.volume_io import read_volume, write_volume


def _visit_args(files, visit):
    return [files[visit]["arterial"], files[visit]["precontrast"]], files[visit]["segmentation"]


def _assess_argv(files, out, followups=("followup1", "followup2"), baseline="baseline", *extra):
    images, seg = _visit_args(files, baseline)
    argv = ["assess", "--baseline", *images, "--baseline-segmentation", seg, "--output", str(out)]
    for visit in followups:
        images, seg = _visit_args(files, visit)
        argv += ["--followup", *images, "--followup-segmentation", seg]
    return argv + list(extra)


@pytest.fixture(scope="module")
def assessed_folder(treatment_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("assess") / "out"
    return out, _assess_argv(treatment_files, out, ("followup1", "followup2"), "baseline", "--new-lesion", "2")


@pytest.mark.slow
def test_assess_gives_the_known_categories_and_writes_what_a_user_needs(assessed_folder, capsys):
    out, argv = assessed_folder
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "target lesions: Tumour_1, Tumour_2 (SYNTHETIC)" in printed
    assert "followup1: mRECIST PR" in printed and "RECIST 1.1 SD" in printed
    assert "followup2: mRECIST PD (new lesion marked)" in printed
    assert "lesion(s) matching no baseline lesion: New_1 (a new lesion is marked at this visit)" in printed
    record = json.loads((out / "assessment.json").read_text())
    assert record["kind"] == "tace-response-assessment" and record["synthetic"] is True
    categories = {v["name"]: {n: r["category"] for n, r in v["responses"].items()} for v in record["visits"][1:]}
    assert categories == {"followup1": {"mRECIST": "PR", "RECIST 1.1": "SD", "EASL": "PR", "volumetric": "PR"},
                          "followup2": {"mRECIST": "PD", "RECIST 1.1": "PD", "EASL": "PD", "volumetric": "PD"}}
    assert record["visits"][2]["new_lesion"] is True and record["visits"][2]["candidate_new_lesions"] == ["New_1"]
    assert any("radiologist's call" in line for line in record["not_decided"])
    assert set(record["criteria"]) == {"mRECIST", "RECIST 1.1", "EASL", "volumetric"}
    assert record["options"]["uncertainty"]["reader_sd_mm"] == 2.0
    # the CSV holds the same responses, one row per follow-up and criterion
    with open(out / "assessment.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["visit"], r["criterion"], r["category"]) for r in rows] == [
        (v, n, categories[v][n]) for v in ("followup1", "followup2") for n in ("mRECIST", "RECIST 1.1", "EASL",
                                                                             "volumetric")]
    fu1 = next(r for r in rows if r["visit"] == "followup1" and r["criterion"] == "mRECIST")
    response = record["visits"][1]["responses"]["mRECIST"]
    assert float(fu1["change_from_baseline_pct"]) == pytest.approx(100 * response["change_from_baseline"], abs=0.01)
    # an overlay per target lesion and visit, plus the unmatched lesion; the calipers are drawn in them
    overlays = sorted(p.name for p in out.glob("overlay_*.png"))
    assert overlays == sorted([f"overlay_{v}_{t}.png" for v in ("baseline", "followup1", "followup2")
                               for t in ("Tumour_1", "Tumour_2")] + ["overlay_followup2_New_1.png"])
    from PIL import Image

    picture = np.asarray(Image.open(out / "overlay_followup1_Tumour_1.png").convert("RGB")).astype(int)
    green = (picture[..., 1] > 200) & (picture[..., 0] < 120) & (picture[..., 2] < 120)  # the viable caliper
    orange = (picture[..., 0] > 200) & (abs(picture[..., 1] - 150) < 60) & (picture[..., 2] < 100)  # viable fill
    assert green.sum() > 100 and orange.sum() > 100
    # the viable segments written back, tagged with their tumour, readable by the project's reader
    written = read_segmentation(out / "viable_followup1.seg.nrrd")
    viable = next(s for s in written.segments if s.name == "Tumour_1 viable")
    assert viable.tags["TACEResponse.ViableOf"] == "Tumour_1"
    lesion = next(m for m in record["visits"][1]["lesions"] if m["label"] == "Tumour_1")
    voxels = int((written.layers[viable.layer] == viable.label_value).sum())
    assert voxels == lesion["viable_tumour"]["viable_voxels"]


# --- bad inputs: one line, exit 2, nothing written ----------------------------------------------------------
def _refused(argv, out, capsys, expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not out.exists() or not any(out.iterdir()), "nothing may be written"
    return err[0]


def test_a_followup_on_another_patients_grid_is_refused(treatment_files, tmp_path, capsys):
    image = read_volume(treatment_files["followup1"]["arterial"])
    far = image.ijk_to_ras.copy()
    far[:3, 3] += (0.0, 0.0, 600.0)
    moved = write_volume(Volume(image.array, far), tmp_path / "elsewhere.nrrd")
    seg = read_segmentation(treatment_files["followup1"]["segmentation"])
    labels = Volume(seg.layers[0], far)
    seg_path = write_volume(labels, tmp_path / "elsewhere_tumour.nrrd")
    images, base_seg = _visit_args(treatment_files, "baseline")
    out = tmp_path / "out"
    argv = ["assess", "--baseline", *images, "--baseline-segmentation", base_seg, "--followup", str(moved),
            "--followup-segmentation", str(seg_path), "--output", str(out)]
    _refused(argv, out, capsys, "followup1: its image does not overlap the baseline's in space")


def test_a_followup_with_no_tumour_is_refused(treatment_files, tmp_path, capsys):
    image = read_volume(treatment_files["followup1"]["arterial"])
    empty = write_volume(image.with_array(np.zeros(image.shape_kji, np.uint8)), tmp_path / "empty.nrrd")
    images, base_seg = _visit_args(treatment_files, "baseline")
    out = tmp_path / "out"
    argv = ["assess", "--baseline", *images, "--baseline-segmentation", base_seg,
            "--followup", treatment_files["followup1"]["arterial"], "--followup-segmentation", str(empty),
            "--output", str(out)]
    _refused(argv, out, capsys, "no tumour segment in the segmentation")


def test_a_baseline_segment_with_no_enhancing_voxels_is_refused(treatment_files, tmp_path, capsys):
    # follow-up 1 as a "baseline" with only its necrotic Tumour_3 chosen
    out = tmp_path / "out"
    argv = _assess_argv(treatment_files, out, ("followup2",), "followup1", "--segment", "Tumour_3")
    _refused(argv, out, capsys, "no measurable enhancing target lesion (Tumour_3: no arterially enhancing")


@pytest.mark.parametrize("extra, expected", [
    (["--new-lesion", "3"], "--new-lesion 3: there are 2 follow-up(s)"),
    (["--match", "Tumour_1=Tumour_2"], "expected FOLLOWUP_NUMBER:BASELINE_LESION=FOLLOWUP_LESION"),
    (["--match", "1:Tumour_9=Tumour_1"], "no baseline lesion 'Tumour_9'"),
    (["--reader-sd-mm", "-1"], "argument --reader-sd-mm: expected a number ≥ 0"),
])
def test_bad_options_are_one_line(treatment_files, tmp_path, capsys, extra, expected):
    out = tmp_path / "out"
    _refused(_assess_argv(treatment_files, out, ("followup1", "followup2"), "baseline", "--no-registration", *extra),
             out, capsys, expected)


def test_followups_and_their_segmentations_must_pair(treatment_files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _assess_argv(treatment_files, out, ("followup1",))
    argv += ["--followup", treatment_files["followup2"]["arterial"]]
    _refused(argv, out, capsys, "2 --followup and 1 --followup-segmentation given")


# --- cohort label ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cohort_label_writes_a_training_manifest_with_each_labels_measurements(treatment_files, tmp_path, capsys):
    from TACEResponseLib.imaging.manifest import read_manifest

    image = read_volume(treatment_files["followup1"]["arterial"])
    empty = write_volume(image.with_array(np.zeros(image.shape_kji, np.uint8)), tmp_path / "empty.nrrd")
    f = {v: {k: os.path.relpath(p, tmp_path) for k, p in paths.items()} for v, paths in treatment_files.items()}
    rows = [("P1", "baseline", "baseline", ""), ("P1", "month1", "followup1", ""), ("P1", "month3", "followup2", "1"),
            ("P2", "baseline", "baseline", ""), ("P2", "month3", "followup2", "yes"),
            ("P3", "baseline", "baseline", ""), ("P3", "month1", None, "")]
    manifest = tmp_path / "visits.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "visit", "arterial", "precontrast", "segmentation", "new_lesion"])
        for pid, name, visit, new in rows:
            if visit is None:
                writer.writerow([pid, name, f["followup1"]["arterial"], "", "empty.nrrd", new])
            else:
                writer.writerow([pid, name, f[visit]["arterial"], f[visit]["precontrast"], f[visit]["segmentation"], new])
    out, work = tmp_path / "labels" / "train.csv", tmp_path / "work"
    out.parent.mkdir()
    argv = ["cohort", "label", "--manifest", str(manifest), "--output", str(out), "--work", str(work),
            "--no-registration"]
    assert main(argv) == 1  # P3 failed: said, listed, the others labelled
    printed = capsys.readouterr().out
    assert "2 patient(s) labelled, 1 failed" in printed
    labelled = read_manifest(out, ["arterial"])  # the format training reads
    assert {(r.case_id, r.label) for r in labelled} == {("P1", "PR"), ("P2", "PD")}
    with open(out, newline="") as handle:
        table = {r["case_id"]: r for r in csv.DictReader(handle)}
    assert table["P1"]["label_visit"] == "month1" and table["P2"]["new_lesion"] == "1"
    assert table["P1"]["segment"] == "Tumour_1" and table["P1"]["recist_11_label"] == "SD"
    p1 = json.loads((work / "P1" / "assessment.json").read_text())
    assert float(table["P1"]["change_from_baseline_pct"]) == pytest.approx(
        100 * p1["visits"][1]["responses"]["mRECIST"]["change_from_baseline"], abs=0.01)
    with open(out.with_name("train.failed.csv"), newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert [r["case_id"] for r in failures] == ["P3"] and "no tumour" in failures[0]["error"]
    # again, the best response: P1's assessment is reused (unchanged inputs), not recomputed
    before = (work / "P1" / "assessment.json").stat().st_mtime_ns
    assert main(argv + ["--response", "best"]) == 1
    assert (work / "P1" / "assessment.json").stat().st_mtime_ns == before
    assert {(r.case_id, r.label) for r in read_manifest(out, ["arterial"])} == {("P1", "PR"), ("P2", "PD")}


@pytest.mark.slow
def test_dicom_series_and_a_dicom_seg_work_alike(dicom_visits, tmp_path, capsys):
    """Each visit as a DICOM CT series with a DICOM SEG (highdicom) that also outlines the liver: the SEG's
    tumour segments are assessed (the liver is the parenchyma reference), with the same categories."""
    from dicom_helpers import assess_argv

    out = tmp_path / "out"
    assert main(assess_argv(dicom_visits, out)) == 0, capsys.readouterr().err
    record = json.loads((out / "assessment.json").read_text())
    assert record["targets"] == ["Tumour_1", "Tumour_2"]
    assert {m["label"] for m in record["visits"][0]["lesions"]} == {"Tumour_1", "Tumour_2", "Tumour_3"}
    categories = {n: r["category"] for n, r in record["visits"][1]["responses"].items()}
    assert categories == {"mRECIST": "PR", "RECIST 1.1": "SD", "EASL": "PR", "volumetric": "PR"}
