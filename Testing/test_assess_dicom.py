"""``assess --dicom-out`` / ``--send-results``: a response assessment as the DICOM objects a PACS stores.

The SYNTHETIC treatment series as three DICOM CT studies with DICOM SEG outlines (conftest's ``dicom_visits``)
is assessed in-process through the CLI's ``main()``, a new lesion marked at follow-up 2. Each visit's objects
are then checked as a PACS and a viewer take them: dciodvfy finds no error, dcmtk's dsrdump reads each report,
highdicom reads everything back; each visit's SEG placed on that visit's grid gives back the tumour outlines
given (the input SEG, read here by highdicom's writer's counterpart in the test helpers, not by the library)
and the viable parts written as ``viable_<visit>.seg.nrrd``; each report's numbers and coded responses are
``assessment.json``'s. Expected codes are typed from DICOM PS3.16, not taken from the library. Then one round
trip through a real Orthanc (conftest's ``pacs``): ``--send-results --to`` stores every object, which are
fetched back and read.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pydicom
import pytest

from dicom_helpers import SOP_CLASSES, assess_argv, conformance_tool
from TACEResponseLib.cli import main
from TACEResponseLib.imaging.segmentation import read_segmentation, segment_mask_on
from TACEResponseLib.imaging.volume_io import read_volume

pytest.importorskip("highdicom", reason="highdicom is not installed")

VISITS = ("baseline", "followup1", "followup2")
#: DICOM PS3.16 CID 6144 (RECIST defined lesion response), as read back (code meaning) and coded
RESPONSE_MEANING = {"CR": "Target Lesion Complete Response", "PR": "Target Lesion Partial Response",
                    "SD": "Target Lesion Stable Disease", "PD": "Target Lesion Progressive Disease"}
RESPONSE_CODE = {"CR": "112041", "PR": "112042", "SD": "112044", "PD": "112043"}
SC_CLASS, SEG_CLASS, SR_CLASS = SOP_CLASSES["SC"], SOP_CLASSES["SEG"], SOP_CLASSES["SR"]


@pytest.fixture(scope="module")
def assessed(dicom_visits, tmp_path_factory):
    root = tmp_path_factory.mktemp("assess-dicom")
    out, dicom = root / "out", root / "dicom"
    argv = assess_argv(dicom_visits, out, VISITS) + ["--new-lesion", "2", "--dicom-out", str(dicom)]
    assert main(argv) == 0
    record = json.loads((out / "assessment.json").read_text())
    grids = {v: read_volume(dicom_visits[v]["ct"]) for v in VISITS}
    return {"out": out, "dicom": dicom, "record": record, "grids": grids, "visits": dicom_visits, "argv": argv}


def _visit(record, name):
    return next(v for v in record["visits"] if v["name"] == name)


@pytest.mark.slow
def test_each_visits_objects_pass_dciodvfy_without_errors(assessed):
    dciodvfy = conformance_tool("dciodvfy")
    record = assessed["record"]
    for visit in VISITS:
        folder = assessed["dicom"] / visit
        overlays = record["files"]["overlays"][visit]
        names = sorted(p.name for p in folder.glob("*.dcm"))
        assert names == sorted(["seg.dcm", "report_sr.dcm", *(f"overlay_sc_{n:02d}.dcm"
                                                                for n in range(1, len(overlays) + 1))]), names
        for path in folder.glob("*.dcm"):
            run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
            lines = (run.stdout + run.stderr).splitlines()
            iod = {"seg.dcm": "Segmentation", "report_sr.dcm": "Comprehensive3DSR"}.get(path.name, "SCImage")
            assert iod in lines, lines
            assert not [line for line in lines if line.startswith("Error")], f"{visit}/{path.name}: {lines}"


@pytest.mark.slow
def test_dsrdump_reads_each_report_with_the_standard_codes(assessed):
    dsrdump = conformance_tool("dsrdump")
    record = assessed["record"]
    for visit in VISITS:
        run = subprocess.run([dsrdump, "+Pl", str(assessed["dicom"] / visit / "report_sr.dcm")], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        text = run.stdout
        assert "Comprehensive 3D SR" in text and "Imaging Measurement Report" in text and "RESEARCH USE ONLY" in text
        assert f'"Time Point")="{visit}"' in text
        assert text.count('"Long axis")=') == 2 * len(record["targets"])  # whole and viable, per target
        assert '(mm,UCUM,"mm")' in text and '(126081,DCM,"RECIST 1.1")' in text
        if visit == "baseline":
            assert '(112074,DCM,"Target Lesion at Baseline")' in text and '"Current Response"' not in text
            continue
        for name, response in _visit(record, visit)["responses"].items():
            assert f'(,,"Current Response")=({RESPONSE_CODE[response["category"]]},DCM,' in text, name
        assert '(,,"Response Evaluation Method")=(126081,DCM,"RECIST 1.1")' in text


@pytest.mark.slow
def test_each_seg_on_its_visits_grid_is_the_masks_used(assessed):
    """Targets as outlined in the input SEG, viable parts as written in viable_<visit>.seg.nrrd; voxel for voxel."""
    import highdicom as hd

    from TACEResponseLib.pacs.readback import segments_on
    from TACEResponseLib.pacs.source import highdicom_geometry

    record, visits = assessed["record"], assessed["visits"]
    tracking = {}
    for visit in VISITS:
        grid = assessed["grids"][visit]
        seg = hd.seg.segread(assessed["dicom"] / visit / "seg.dcm")
        labels = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
        viable_written = read_segmentation(assessed["out"] / record["files"]["viable_segmentations"][visit])
        expected = {}
        for target in record["targets"]:
            expected[target] = visits[visit]["masks"][target]  # the phantom keeps each lesion's name
            expected[f"{target} viable"] = segment_mask_on(viable_written, f"{target} viable", grid).array > 0
        assert sorted(labels.values()) == sorted(expected), labels
        masks = segments_on(seg, grid)
        for number, label in labels.items():
            assert masks[number].sum() > 0
            np.testing.assert_array_equal(masks[number], expected[label], err_msg=f"{visit}: {label}")
        for item in seg.SegmentSequence:  # the viable part: the Mass modified by the local code
            kind = item.SegmentedPropertyTypeCodeSequence[0]
            assert (kind.CodeValue, kind.CodingSchemeDesignator) == ("4147007", "SCT")
            modifiers = [m.CodeMeaning for m in kind.get("SegmentedPropertyTypeModifierCodeSequence", [])]
            assert modifiers == (["Viable (arterially enhancing) part"] if item.SegmentLabel.endswith(" viable") else [])
            tracking.setdefault(str(item.SegmentLabel), set()).add(str(item.TrackingUID))
        if visit == "baseline":  # highdicom's own volume of segment 1, matched onto the grid, says the same
            volume = seg.get_volume(segment_numbers=[1], combine_segments=True)
            np.testing.assert_array_equal(volume.match_geometry(highdicom_geometry(grid)).array > 0,
                                          expected[labels[1]])
    assert all(len(uids) == 1 for uids in tracking.values()), tracking  # one lesion, one Tracking UID at every visit
    assert len({next(iter(u)) for u in tracking.values()}) == len(tracking)


@pytest.mark.slow
def test_each_report_says_what_assessment_json_says(assessed):
    from TACEResponseLib.pacs.readback import report_groups

    record = assessed["record"]
    units = {"mm": "mm", "mm²": "mm2", "ml": "ml"}
    for visit in VISITS:
        groups, comments = report_groups(assessed["dicom"] / visit / "report_sr.dcm")
        seg = pydicom.dcmread(assessed["dicom"] / visit / "seg.dcm", stop_before_pixels=True)
        segment_of = {str(d.SegmentLabel): int(d.SegmentNumber) for d in seg.SegmentSequence}
        data = _visit(record, visit)
        by_label = {g.label: g for g in groups}
        assert list(by_label) == [*record["targets"], "mRECIST response", "RECIST 1.1 response", "EASL response",
                                  "volumetric response"]
        assert {g.time_point for g in groups} == {visit}
        for target in record["targets"]:
            lesion = next(m for m in data["lesions"] if m["label"] == target)
            group = by_label[target]
            assert group.segment_number == segment_of[target]  # the SEG segment of that lesion
            assert group.numbers["Long axis [RECIST 1.1]"] == pytest.approx(lesion["whole_diameter_mm"], abs=1e-3)
            viable_key = next(k for k in group.numbers if k.startswith("Long axis [") and "mRECIST" in k)
            assert group.numbers[viable_key] == pytest.approx(lesion["viable_diameter_mm"], abs=1e-3)
            assert group.numbers["Volume"] == pytest.approx(lesion["volume_ml"], abs=1e-4)
            assert {group.units["Long axis [RECIST 1.1]"], group.units[viable_key], group.units["Volume"]} == {"mm", "ml"}
            if visit == "baseline":
                assert group.evaluations["Baseline Category"] == "Target Lesion at Baseline"
            assert group.evaluations["Time Point Type"] == ("Baseline" if visit == "baseline" else "Posttreatment")
        for name, response in data["responses"].items():
            group = by_label[f"{name} response"]
            assert group.evaluations["Current Response"] == RESPONSE_MEANING[response["category"]]
            assert group.evaluations["Category could change within the measurement uncertainty"] == \
                ("Yes" if response["near_threshold"] else "No")
            assert group.numbers["Sum over the target lesions"] == pytest.approx(response["total"], rel=1e-9)
            assert group.units["Sum over the target lesions"] == units[response["unit"]]
            assert group.numbers["Change of the sum from baseline"] == pytest.approx(
                100 * response["change_from_baseline"], rel=1e-9)
            assert group.numbers["Change of the sum from baseline (SD)"] == pytest.approx(
                100 * response["change_from_baseline_sd"], rel=1e-9)
            assert group.units["Change of the sum from baseline"] == "%"
            ascii_reason = response["reason"].replace("≥", ">=").replace("≤", "<=").replace("−", "-")  # DICOM text
            assert ascii_reason in group.texts
        if visit == "baseline":
            assert not data["responses"]
            assert by_label["RECIST 1.1 response"].evaluations == {"Response Evaluation Method": "RECIST 1.1",
                                                                   "Time Point Type": "Baseline"}
        assert any("RESEARCH USE ONLY" in c for c in comments)
        assert any("radiologist's call" in c for c in comments)
    followup2 = _visit(record, "followup2")
    assert {r["category"] for r in followup2["responses"].values()} == {"PD"}  # the new lesion marked
    _, comments = report_groups(assessed["dicom"] / "followup2" / "report_sr.dcm")
    assert any("New_1" in c for c in comments) and any("new lesion was marked" in c for c in comments)


@pytest.mark.slow
def test_each_visits_objects_are_in_its_own_study_each_in_a_new_series(assessed):
    from conftest import VISIT_STUDIES

    for visit in VISITS:
        source = pydicom.dcmread(next(assessed["visits"][visit]["ct"].iterdir()), stop_before_pixels=True)
        objects = [pydicom.dcmread(p, stop_before_pixels=True) for p in (assessed["dicom"] / visit).glob("*.dcm")]
        assert {str(ds.StudyInstanceUID) for ds in objects} == {VISIT_STUDIES[visit]}
        assert {str(ds.SOPClassUID) for ds in objects} == {SEG_CLASS, SR_CLASS, SC_CLASS}
        series = {str(ds.SeriesInstanceUID) for ds in objects}
        assert len(series) == 3 and str(source.SeriesInstanceUID) not in series
        for ds in objects:
            assert (ds.PatientID, str(ds.PatientName)) == (source.PatientID, str(source.PatientName))
            assert "RESEARCH USE ONLY" in ds.SeriesDescription
            if ds.SOPClassUID == SEG_CLASS:
                assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
            if ds.SOPClassUID == SC_CLASS:
                assert ds.BurnedInAnnotation == "YES"


@pytest.mark.slow
def test_the_secondary_captures_are_the_overlays_with_the_caveat_burned_in(assessed):
    from PIL import Image

    folder = assessed["dicom"] / "followup1"
    overlay = np.asarray(Image.open(assessed["out"] / "overlay_followup1_Tumour_1.png").convert("RGB"))
    sc = pydicom.dcmread(folder / "overlay_sc_01.dcm")
    pixels = sc.pixel_array
    banner = pixels.shape[0] - overlay.shape[0]
    assert pixels.shape[1:] == overlay.shape[1:] and banner >= 12
    np.testing.assert_array_equal(pixels[banner:], overlay)  # the overlay itself, below the banner
    red = np.all(np.abs(pixels[:banner].astype(int) - [150, 0, 0]) <= 1, axis=2).mean()
    assert red > 0.6 and np.all(pixels[:banner] >= 250, axis=2).sum() > 200  # white writing on a red banner


@pytest.mark.slow
def test_assessing_again_gives_the_same_instances(assessed, capsys):
    before = {p.relative_to(assessed["dicom"]): p.read_bytes() for p in assessed["dicom"].rglob("*.dcm")}
    assert main(assessed["argv"]) == 0
    capsys.readouterr()
    after = {p.relative_to(assessed["dicom"]): p.read_bytes() for p in assessed["dicom"].rglob("*.dcm")}
    assert after == before


def test_a_local_code_means_one_thing_in_the_prediction_and_the_assessment_reports():
    """The local scheme 99TACER is one coding scheme for every report this tool stores in a PACS: a code value
    (e.g. NOTE, MRECIST) must not carry two meanings between the prediction's and the assessment's reports."""
    from TACEResponseLib.pacs import assessment_report, codes

    meanings: dict[str, set[str]] = {}
    for module in (codes, assessment_report):
        for value in vars(module).values():
            for pair in (value.values() if isinstance(value, dict) else [value]):
                if isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair):
                    meanings.setdefault(pair[0], set()).add(pair[1])
    meanings.setdefault(codes.response_method(["CR", "PR", "SD", "PD"]).value, set()).add(
        codes.response_method(["CR", "PR", "SD", "PD"]).meaning)
    assert "NOTE" in meanings and "MRECIST" in meanings
    assert {value: sorted(m) for value, m in meanings.items() if len(m) > 1} == {}


# --- bad input: one line, exit 2, nothing written ----------------------------------------------------------
def _refused(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_dicom_out_refuses_a_visit_that_is_not_dicom(treatment_files, dicom_visits, tmp_path, capsys):
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    followup = treatment_files["followup1"]
    argv = assess_argv(dicom_visits, out, ("baseline",)) + [
        "--followup", followup["arterial"], "--followup-segmentation", followup["segmentation"], "--dicom-out",
        str(dicom)]
    error = _refused(capsys, argv)
    assert f"--followup 1 {followup['arterial']}:" in error and "is not DICOM" in error
    assert not out.exists() and not dicom.exists()


def test_send_results_needs_a_pacs(dicom_visits, tmp_path, capsys):
    out = tmp_path / "out"
    error = _refused(capsys, assess_argv(dicom_visits, out) + ["--send-results"])
    assert "--send-results: no PACS to send to; give --to URL|AET@HOST:PORT" in error and not out.exists()
    error = _refused(capsys, assess_argv(dicom_visits, out) + ["--send-results", "--to", "http://user:pw@pacs/dicom-web"])
    assert "holds a user name or password" in error and ":pw@" not in error and not out.exists()


# --- a real PACS ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_send_results_stores_each_visits_objects_in_the_pacs(login, dicom_visits, tmp_path, capsys):
    from TACEResponseLib.pacs.endpoint import parse_endpoint, read_credentials
    from TACEResponseLib.pacs.readback import report_groups, segments_on
    from TACEResponseLib.pacs.transfer import fetch_series_to, find_series

    pacs = login
    out = tmp_path / "out"
    assert main(assess_argv(dicom_visits, out) + ["--send-results", "--to", pacs.url]) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    record = json.loads((out / "assessment.json").read_text())
    written = {v: json.loads((out / "dicom" / v / "dicom.json").read_text()) for v in ("baseline", "followup1")}
    assert f"sent {sum(len(w['objects']) for w in written.values())} instances to {pacs.url}" in said
    assert {o["sop_instance_uid"] for w in written.values() for o in w["objects"]} <= pacs.instance_uids()
    endpoint = parse_endpoint(pacs.url, credentials=read_credentials())
    for visit, index in written.items():
        series = {s.modality: s for s in find_series(endpoint, index["study_instance_uid"]) if s.modality in ("SEG", "SR")}
        sr = next(fetch_series_to(endpoint, index["study_instance_uid"], series["SR"], tmp_path / visit / "SR")
                  .glob("*.dcm"))
        groups, _ = report_groups(sr)
        categories = {g.label.removesuffix(" response"): g.evaluations["Current Response"] for g in groups
                      if "Current Response" in g.evaluations}
        expected = _visit(record, visit)["responses"]
        assert categories == {n: RESPONSE_MEANING[r["category"]] for n, r in expected.items()}
        seg = next(fetch_series_to(endpoint, index["study_instance_uid"], series["SEG"], tmp_path / visit / "SEG")
                   .glob("*.dcm"))
        masks = segments_on(seg, read_volume(dicom_visits[visit]["ct"]))
        np.testing.assert_array_equal(masks[1], dicom_visits[visit]["masks"]["Tumour_1"])
