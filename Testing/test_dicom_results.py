"""DICOM results of a prediction on a real CT series: SEG, parametric map, TID 1500 report, secondary captures.

``predict --dicom-out`` runs in-process on the real Siemens CT (dicom_case.py) with the demo model and
the demo survival model. The objects are then checked as a PACS and a radiologist's viewer would take
them: dciodvfy (dicom3tools) finds no error in any, dcmtk's dsrdump reads the report, highdicom reads
each back; the SEG placed on the source grid gives back the tumours drawn (built here with numpy,
not by the library), the parametric map gives back heatmap.nrrd, and the report's codes and numbers
are result.json's. Expected codes are typed from DICOM PS3.16, not taken from the library.
"""

from __future__ import annotations

import hashlib
import subprocess

import numpy as np
import pydicom
import pytest

from dicom_case import PATIENT_ID, identified_ct, tumour_masks, write_segmentation
from dicom_helpers import SOP_CLASSES, conformance_tool
from TACEResponseLib.cli import main
from TACEResponseLib.imaging.geometry import in_grid
from TACEResponseLib.imaging.volume_io import read_volume
from TACEResponseLib.prediction.cam import read_heatmap
from TACEResponseLib.prediction.results import PredictionResult

#: DICOM PS3.16 CID 6144 (RECIST defined lesion response)
CID_6144 = {"CR": "112041", "PR": "112042", "SD": "112044", "PD": "112043"}
CLINICAL = ["BCLC=B", "ALT=40", "tumour_size=3.5", "Child_Pugh=A"]
FILES = {"SEG": "seg.dcm", "PM": "heatmap_pm.dcm", "SR": "report_sr.dcm", "SC": "overlay_sc_01.dcm"}


@pytest.fixture(scope="module")
def case(tmp_path_factory, realdata):
    root = tmp_path_factory.mktemp("dicom-results")
    ct = identified_ct(realdata, root / "ct")
    seg = write_segmentation(ct, root / "tumour.seg.nrrd")
    out, dicom = root / "out", root / "dicom"
    argv = ["predict", "--image", str(ct), "--segmentation", str(seg), "--output", str(out), "--device", "cpu",
            "--backend", "torch", "--tta", "2", "--dicom-out", str(dicom),
            "--nomogram", "TACEResponse-demo-synthetic-survival", "--survival-image", f"portal={ct}",
            *[x for c in CLINICAL for x in ("--clinical", c)]]
    assert main(argv) == 0
    return {"ct": ct, "seg": seg, "out": out, "dicom": dicom, "result": PredictionResult.load_json(out / "result.json"),
            "reference": read_volume(ct), "argv": argv}


def test_every_object_passes_dciodvfy_without_errors(case):
    dciodvfy = conformance_tool("dciodvfy")
    files = sorted(case["dicom"].glob("*.dcm"))
    assert {f.name for f in files} == {"seg.dcm", "heatmap_pm.dcm", "report_sr.dcm", "overlay_sc_01.dcm",
                                       "overlay_sc_02.dcm"}
    for path in files:
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
        lines = (run.stdout + run.stderr).splitlines()
        iod = {"seg.dcm": "Segmentation", "heatmap_pm.dcm": "ParametricMap", "report_sr.dcm": "Comprehensive3DSR"}
        assert iod.get(path.name, "SCImage") in lines, lines  # the IOD dciodvfy recognised
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_dsrdump_reads_the_report(case):
    run = subprocess.run([conformance_tool("dsrdump"), "+Pl", str(case["dicom"] / FILES["SR"])], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    result = case["result"]
    assert "Comprehensive 3D SR" in text and "Imaging Measurement Report" in text
    assert "RESEARCH USE ONLY" in text and "SYNTHETIC" in text
    for tumour in result.tumours:
        assert f'"Tracking Identifier")="{tumour.label}"' in text
        assert f"({CID_6144[tumour.predicted_class]},DCM," in text
    assert "Referenced Segment" in text and "(10200004,SCT,\"Liver\")" in text


def test_the_seg_on_the_source_grid_is_the_tumours_drawn_voxel_for_voxel(case):
    import highdicom as hd

    from TACEResponseLib.pacs.readback import segments_on

    seg = hd.seg.segread(case["dicom"] / FILES["SEG"])
    labels = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    assert labels == {1: "Tumour #1", 2: "Tumour #2"}
    masks = segments_on(seg, case["reference"])
    drawn = tumour_masks(case["reference"].shape_kji)
    for number, expected in zip((1, 2), drawn):
        assert masks[number].sum() == expected.sum() > 0
        np.testing.assert_array_equal(masks[number], expected)
    # highdicom's own volume of segment 1, matched onto the source grid, says the same
    from TACEResponseLib.pacs.source import highdicom_geometry

    volume = seg.get_volume(segment_numbers=[1], combine_segments=True)
    np.testing.assert_array_equal(volume.match_geometry(highdicom_geometry(case["reference"])).array > 0, drawn[0])


def test_the_seg_codes_the_tumours_and_names_the_algorithm(case):
    seg = pydicom.dcmread(case["dicom"] / FILES["SEG"])
    result = case["result"]
    for item in seg.SegmentSequence:
        assert (item.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
                item.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator) == ("49755003", "SCT")
        assert (item.SegmentedPropertyTypeCodeSequence[0].CodeValue,
                item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("4147007", "SCT")
        assert item.AnatomicRegionSequence[0].CodeValue == "10200004"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        name, version = result.bundle_id.split("@")
        assert name in algorithm.AlgorithmName and algorithm.AlgorithmVersion == version
        parameters = dict(p.split("=", 1) for p in algorithm.AlgorithmParameters.split(","))
        assert parameters["bundle_sha256"] == result.bundle_sha256 and len(result.bundle_sha256) == 64
    # the source series is referenced, image by image
    referenced = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                  for i in s.ReferencedInstanceSequence}
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in case["ct"].iterdir()}
    assert referenced and referenced <= sources


def test_the_parametric_map_on_the_source_grid_is_the_heatmap(case):
    import highdicom as hd

    from TACEResponseLib.pacs.readback import parametric_map_on

    pm = hd.imread(case["dicom"] / FILES["PM"])
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTExplanation == "relative class activation, 0-1"
    assert (mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue,
            mapping.MeasurementUnitsCodeSequence[0].CodeValue) == ("130402", "1")  # DCM Class activation, UCUM 1
    assert "FloatPixelData" in pm and pm.ContentQualification == "RESEARCH"
    expected = in_grid(read_heatmap(case["out"] / "heatmap.nrrd"), case["reference"])
    values = parametric_map_on(pm, case["reference"])
    assert expected.max() > 0.5
    np.testing.assert_allclose(values, expected, atol=1e-6)


def test_the_report_says_what_result_json_says(case):
    from TACEResponseLib.pacs.readback import report_groups

    result = case["result"]
    groups, comments = report_groups(case["dicom"] / FILES["SR"])
    assert [g.label for g in groups] == [t.label for t in result.tumours] + ["patient"]
    for group, tumour in zip(groups, result.tumours):
        assert group.segment_number == result.tumours.index(tumour) + 1
        assert group.evaluations["Response Evaluation"].startswith("Target Lesion")
        words = {"CR": "Complete Response", "PR": "Partial Response", "SD": "Stable Disease", "PD": "Progressive Disease"}
        assert group.evaluations["Response Evaluation"].endswith(words[tumour.predicted_class])
        assert group.numbers["Volume"] == pytest.approx(tumour.volume_ml, rel=1e-9)
        for name, probability, spread in zip(tumour.class_names, tumour.probabilities, tumour.trust.spread):
            key = next(k for k in group.numbers if k.startswith("Predicted probability of") and not k.endswith("(SD)")
                       and k.lower().endswith({"CR": "complete response", "PR": "partial response",
                                               "SD": "stable disease", "PD": "progressive disease"}[name]))
            assert group.numbers[key] == pytest.approx(probability, rel=1e-9)
            assert group.numbers[f"{key} (SD)"] == pytest.approx(spread, rel=1e-9, abs=1e-12)
        assert group.numbers["Predictive entropy of the class probabilities"] == pytest.approx(tumour.trust.entropy)
        flag = {True: "Yes", False: "No", None: "Undetermined"}[tumour.trust.unlike_training]
        assert group.evaluations["Image unlike the model's training data"] == flag
        ascii_reasons = [r.replace("×", "x").replace("…", "...") for r in tumour.trust.reasons]  # DICOM text: ASCII
        assert ascii_reasons and [t for t in group.texts if t in ascii_reasons] == ascii_reasons
    patient = groups[-1]
    survival = result.survival
    assert patient.numbers["Nomogram total points"] == pytest.approx(survival["total_points"])
    for time, probability in survival["survival_at"].items():
        assert patient.numbers[f"Predicted overall survival probability at {time}"] == pytest.approx(probability)
    assert patient.evaluations["Nomogram risk group"] == {"high": "High risk", "low": "Low risk"}[survival["risk_group"]]
    assert any("RESEARCH USE ONLY" in c for c in comments) and any("synthetic" in c.lower() for c in comments)


def test_all_objects_belong_to_the_source_study_each_in_a_new_series(case):
    source = pydicom.dcmread(next(case["ct"].iterdir()), stop_before_pixels=True)
    objects = {kind: pydicom.dcmread(case["dicom"] / name, stop_before_pixels=True) for kind, name in FILES.items()}
    series = {ds.SeriesInstanceUID for ds in objects.values()}
    assert len(series) == 4 and source.SeriesInstanceUID not in series
    for kind, ds in objects.items():
        assert ds.StudyInstanceUID == source.StudyInstanceUID, kind
        assert (ds.PatientID, str(ds.PatientName)) == (PATIENT_ID, str(source.PatientName)), kind
        assert ds.get("StudyDate") == source.StudyDate, kind
        assert "RESEARCH USE ONLY" in ds.SeriesDescription, kind
    for kind in ("SEG", "PM"):
        assert objects[kind].FrameOfReferenceUID == source.FrameOfReferenceUID
    sr = objects["SR"]
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")


def test_the_secondary_capture_carries_the_caveat_burned_in(case):
    sc = pydicom.dcmread(case["dicom"] / FILES["SC"])
    assert sc.BurnedInAnnotation == "YES" and sc.SOPClassUID == SOP_CLASSES["SC"]
    pixels = sc.pixel_array
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    red = np.all(np.abs(pixels.astype(int) - [150, 0, 0]) <= 1, axis=2).mean(axis=1)  # share of red per row
    rows = int(np.argmax(red < 0.5))  # the banner: the top rows, mostly red
    white = np.all(pixels[:rows] >= 250, axis=2)
    assert rows >= 12 and red[:rows].min() > 0.6 and white.sum() > 200  # white writing on a red banner


def test_writing_the_same_result_again_gives_the_same_instances(case, tmp_path):
    from TACEResponseLib.pacs.export import write_case_dicom

    again = write_case_dicom(case["out"], [case["ct"]], case["seg"], tmp_path / "again")
    first = {name: pydicom.dcmread(case["dicom"] / name, stop_before_pixels=True).SOPInstanceUID
             for name in FILES.values()}
    assert {o.file: o.sop_instance_uid for o in again.objects if o.file in first} == first
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "again").iterdir()}
    write_case_dicom(case["out"], [case["ct"]], case["seg"], tmp_path / "again")  # nothing to do: left as it is
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "again").iterdir()} == before


def _one_error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    return errors[0]


def test_dicom_out_refuses_non_dicom_input_before_any_work(case, tmp_path, capsys):
    nrrd = tmp_path / "ct.nrrd"
    from TACEResponseLib.imaging.volume_io import write_volume

    write_volume(case["reference"], nrrd)
    out = tmp_path / "out"
    error = _one_error(capsys, ["predict", "--image", str(nrrd), "--segmentation", str(case["seg"]), "--output",
                                str(out), "--dicom-out", str(tmp_path / "dicom")])
    assert "--dicom-out" in error and str(nrrd) in error and "is not DICOM" in error
    assert not out.exists() and not (tmp_path / "dicom").exists()


def test_dicom_out_refuses_anonymised_dicom_without_uids(realdata, case, tmp_path, capsys):
    anonymous = realdata("totalseg") / "example_ct_dicom"  # the real export: empty Study/Series/SOP UIDs
    out = tmp_path / "out"
    error = _one_error(capsys, ["predict", "--image", str(anonymous), "--segmentation", str(case["seg"]),
                                "--output", str(out), "--dicom-out", str(tmp_path / "dicom")])
    assert str(anonymous) in error and "is DICOM without SOPClassUID, SOPInstanceUID, StudyInstanceUID, " \
        "SeriesInstanceUID (an anonymised export?)" in error
    assert not out.exists()


def test_a_volume_saved_as_nrrd_with_its_dicom_source_gives_the_same_objects(case, tmp_path, capsys):
    """As the Slicer panel exports: the reference written as NRRD, its DICOM series named apart (files)."""
    from TACEResponseLib.imaging.volume_io import write_volume

    nrrd = write_volume(case["reference"], tmp_path / "reference.nrrd")
    files = sorted(case["ct"].iterdir())
    argv = ["pacs", "export", str(case["out"]), "--image", str(nrrd), "--segmentation", str(case["seg"]),
            "--output", str(tmp_path / "dicom"), *[x for f in files for x in ("--dicom-source", str(f))]]
    assert main(argv) == 0, capsys.readouterr().err
    for name in FILES.values():  # the same instances as from the DICOM folder itself
        assert (pydicom.dcmread(tmp_path / "dicom" / name, stop_before_pixels=True).SOPInstanceUID
                == pydicom.dcmread(case["dicom"] / name, stop_before_pixels=True).SOPInstanceUID)


def test_a_dicom_source_the_volume_does_not_lie_on_is_refused(case, tmp_path, capsys):
    from TACEResponseLib.imaging.volume_io import write_volume

    moved = case["reference"].with_array(case["reference"].array)
    moved.ijk_to_ras = moved.ijk_to_ras.copy()
    moved.ijk_to_ras[:3, 3] += [0.0, 0.0, 1.0]  # half a slice up: another volume than the one read from it
    nrrd = write_volume(moved, tmp_path / "moved.nrrd")
    error = _one_error(capsys, ["pacs", "export", str(case["out"]), "--image", str(nrrd), "--segmentation",
                                str(case["seg"]), "--output", str(tmp_path / "dicom"), "--dicom-source",
                                str(case["ct"])])
    assert "does not lie on the slices of the DICOM source" in error and not (tmp_path / "dicom").exists()


def test_without_pydicom_3_the_dicom_writer_says_what_to_install(monkeypatch):
    """3D Slicer 5.10's own Python has pydicom 2.4.4, which highdicom 0.28 cannot use."""
    from TACEResponseLib.core.errors import InputError
    from TACEResponseLib.pacs.source import check_dicom_writer

    monkeypatch.setattr(pydicom, "__version__", "2.4.4")
    with pytest.raises(InputError, match=r"pydicom 2\.4\.4 \(3D Slicer 5\.10 ships 2\.4\.4\).*highdicom==0\.28\.2"):
        check_dicom_writer()


class _DicomDatabase:
    """What the panel asks of ``slicer.dicomDatabase``: the file of each SOP instance."""

    def __init__(self, folder):
        self.files = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): str(f) for f in folder.iterdir()}

    def fileForInstance(self, uid):  # noqa: N802 - Slicer's name
        return self.files.get(uid, "")


def test_the_panel_writes_the_same_objects_from_its_nodes(case, mrml, tmp_path):
    """Slicer's panel: the reference node loaded from the DICOM database (its instance UIDs attribute), the
    heatmap and segmentation as nodes; the objects are those the command line wrote, and zip for the web."""
    import zipfile

    from TACEResponseLib.core.errors import InputError
    from TACEResponseLib.frontend import mrml as nodes
    from TACEResponseLib.frontend.panel.dicom import INSTANCE_UIDS_ATTRIBUTE, dicom_source_files, export_dicom, zipped
    from TACEResponseLib.imaging.segmentation import read_segmentation

    scene = mrml.scene
    reference = nodes.volume_to_node(case["reference"], scene, "CT")
    database = _DicomDatabase(case["ct"])
    with pytest.raises(InputError, match="was not loaded from DICOM"):
        dicom_source_files(reference, database)
    reference.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(database.files))
    source = dicom_source_files(reference, database)
    assert sorted(map(str, source)) == sorted(database.files.values())
    heatmap = nodes.volume_to_node(read_heatmap(case["out"] / "heatmap.nrrd"), scene, "heatmap")
    segmentation = nodes.segmentation_to_node(read_segmentation(case["seg"]), scene, "tumour")
    written = export_dicom(case["result"], nodes.volume_from_node(reference), nodes.volume_from_node(heatmap),
                           nodes.segmentation_from_node(segmentation, reference), source, tmp_path / "panel")
    by_file = {o.file: o.sop_instance_uid for o in written.objects}
    for name in FILES.values():
        assert by_file[name] == pydicom.dcmread(case["dicom"] / name, stop_before_pixels=True).SOPInstanceUID
    archive = zipped(tmp_path / "panel", tmp_path / "dicom.zip")
    with zipfile.ZipFile(archive) as bundle:
        assert sorted(bundle.namelist()) == sorted([*by_file, "dicom.json"])
    database.files.pop(next(iter(database.files)))
    with pytest.raises(InputError, match="1 of its 20 DICOM file"):
        dicom_source_files(reference, database)


def test_other_commands_write_their_findings_the_same_way(case, tmp_path):
    """What ``assess`` calls: its own measurement groups (here a coded Current Response and a diameter) and masks."""
    from TACEResponseLib.pacs import codes
    from TACEResponseLib.pacs.export import Finding, write_findings
    from TACEResponseLib.pacs.images import Identity
    from TACEResponseLib.pacs.readback import report_groups, segments_on
    from TACEResponseLib.pacs.report import ReportGroup

    drawn = tumour_masks(case["reference"].shape_kji)
    identity = Identity("mRECIST assessment", "1", "", "0.1.0", False, "RESEARCH USE ONLY - not for diagnosis")
    findings = [Finding(f"Target lesion {n}", mask, ReportGroup(
        label=f"Target lesion {n}", tracking_uid="", method=codes.local("MRECIST", "mRECIST"),
        evaluations=[(codes.standard("DCM.CurrentResponse"), codes.response_code(cls))],
        measurements=[(codes.coded("103339001", "SCT", "Long axis"), diameter, codes.coded("mm", "UCUM", "mm"), None)]))
        for n, (mask, cls, diameter) in enumerate(zip(drawn, ("PR", "SD"), (31.5, 12.0)), start=1)]
    written = write_findings(findings, case["reference"], case["ct"], tmp_path / "assess", identity, case_id="A1")
    assert [o.kind for o in written.objects] == ["SEG", "SR"]
    masks = segments_on(tmp_path / "assess" / "seg.dcm", case["reference"])
    for number, expected in enumerate(drawn, start=1):
        np.testing.assert_array_equal(masks[number], expected)
    groups, comments = report_groups(tmp_path / "assess" / "report_sr.dcm")
    assert [(g.label, g.segment_number, g.evaluations["Current Response"], g.numbers["Long axis"]) for g in groups] == [
        ("Target lesion 1", 1, "Target Lesion Partial Response", 31.5),
        ("Target lesion 2", 2, "Target Lesion Stable Disease", 12.0)]
    assert comments == ["RESEARCH USE ONLY - not for diagnosis"]
    run = subprocess.run([conformance_tool("dciodvfy"), str(tmp_path / "assess" / "report_sr.dcm")], capture_output=True, text=True)
    assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_batch_dicom_out_refuses_a_non_dicom_case_before_any_case_runs(case, tmp_path, capsys):
    from TACEResponseLib.imaging.volume_io import write_volume

    nrrd = write_volume(case["reference"], tmp_path / "ct.nrrd")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"case_id,arterial,segmentation\ndicom,{case['ct']},{case['seg']}\nnrrd,{nrrd},{case['seg']}\n")
    out = tmp_path / "out"
    error = _one_error(capsys, ["batch", "--manifest", str(manifest), "--output", str(out), "--workers", "0",
                                "--dicom-out", str(tmp_path / "dicom")])
    assert f"{manifest}, case nrrd: --dicom-out: the reference image {nrrd} is not DICOM" in error
    assert not (out / "cases").exists() and not (tmp_path / "dicom").exists()
