"""A real PACS both ways: Debian's Orthanc with its DICOMweb plugin, started here on free ports in a throwaway
folder (orthanc_server.py), with HTTP authentication and a checked AE title.

Round trip, as a radiologist's site would run it: the real CT series is pushed (``pacs send``), ``predict``
reads the study from the PACS, writes its DICOM results and sends them back, the study is queried, and the
SEG, parametric map and report fetched from the PACS are compared with result.json — over DICOMweb
(QIDO/WADO/STOW-RS) and over DIMSE (C-FIND/C-GET/C-STORE). Then a PACS that refuses (credentials, an
unknown AE title), one that is not there, a study without the asked series and a send cut half way:
one ``error:`` line each, and nothing reported as sent that the PACS did not store.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pydicom
import pytest

import orthanc_server
from dicom_case import identified_ct, tumour_masks, write_dicom_seg, write_segmentation
from TACEResponseLib.cli import main
from TACEResponseLib.imaging.volume_io import read_volume
from TACEResponseLib.prediction.results import PredictionResult

pytestmark = pytest.mark.skipif(bool(orthanc_server.missing()), reason=orthanc_server.missing() or "")
# the PACS: conftest's ``pacs`` (one Orthanc for the session) and ``login`` (its password in the environment)


@pytest.fixture(scope="module")
def study(tmp_path_factory, realdata):
    root = tmp_path_factory.mktemp("pacs-case")
    ct = identified_ct(realdata, root / "ct")
    first = pydicom.dcmread(next(ct.iterdir()), stop_before_pixels=True)
    return {"ct": ct, "seg": write_segmentation(ct, root / "tumour.seg.nrrd"), "uid": str(first.StudyInstanceUID),
            "series": str(first.SeriesInstanceUID), "instances": {str(pydicom.dcmread(f, stop_before_pixels=True)
                                                                       .SOPInstanceUID) for f in ct.iterdir()}}


def _ok(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out


def _one_error(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in captured.err + captured.out, captured.err[-3000:]
    return errors[0]


def _predict(study, out, extra):
    return ["predict", "--segmentation", str(study["seg"]), "--output", str(out), "--device", "cpu", "--backend",
            "torch", "--tta", "2", *extra]


def _check_results_from_pacs(pacs, endpoint, study, out, tmp_path):
    """Fetch the study's result series back from the PACS and compare them with result.json."""
    from TACEResponseLib.pacs.endpoint import parse_endpoint, read_credentials
    from TACEResponseLib.pacs.readback import parametric_map_on, report_groups, segments_on
    from TACEResponseLib.pacs.transfer import fetch_series_to, find_series
    from TACEResponseLib.imaging.geometry import in_grid
    from TACEResponseLib.prediction.cam import read_heatmap

    target = parse_endpoint(endpoint, credentials=read_credentials())
    series = {s.modality: s for s in find_series(target, study["uid"]) if s.modality in ("SEG", "SR")}
    result = PredictionResult.load_json(out / "result.json")
    index = json.loads((out / "dicom" / "dicom.json").read_text()) if (out / "dicom").is_dir() else None
    by_kind = {o["kind"]: o for o in (index or {}).get("objects", [])}
    fetched = {kind: fetch_series_to(target, study["uid"], series[kind], tmp_path / kind) for kind in ("SEG", "SR")}
    pm_series = next(s for s in find_series(target, study["uid"]) if s.uid == by_kind["PM"]["series_instance_uid"])
    fetched["PM"] = fetch_series_to(target, study["uid"], pm_series, tmp_path / "PM")
    reference = read_volume(study["ct"])
    seg = next(fetched["SEG"].glob("*.dcm"))
    masks = segments_on(seg, reference)
    for number, expected in enumerate(tumour_masks(reference.shape_kji), start=1):
        np.testing.assert_array_equal(masks[number], expected)
    np.testing.assert_allclose(parametric_map_on(next(fetched["PM"].glob("*.dcm")), reference),
                               in_grid(read_heatmap(out / "heatmap.nrrd"), reference), atol=1e-6)
    groups, comments = report_groups(next(fetched["SR"].glob("*.dcm")))
    assert [g.label for g in groups[:-1]] == [t.label for t in result.tumours]
    for group, tumour in zip(groups, result.tumours):
        probabilities = [v for k, v in group.numbers.items() if k.startswith("Predicted probability of")
                         and not k.endswith("(SD)") and "objective" not in k]
        assert probabilities == pytest.approx(tumour.probabilities, rel=1e-9)
        assert group.numbers["Volume"] == pytest.approx(tumour.volume_ml, rel=1e-9)
    assert any("RESEARCH USE ONLY" in c for c in comments)


@pytest.mark.slow
def test_round_trip_over_dicomweb(login, study, tmp_path, capsys):
    pacs = login
    said = _ok(capsys, ["pacs", "send", str(study["ct"]), "--to", pacs.url])
    assert f"sent 20 instances to {pacs.url}" in said
    assert study["instances"] <= pacs.instance_uids()
    out = tmp_path / "out"
    started = time.perf_counter()
    said = _ok(capsys, _predict(study, out, ["--pacs", pacs.url, "--study", study["uid"], "--send-results"]))
    seconds = time.perf_counter() - started
    assert f"fetched 1 series of study {study['uid']} from {pacs.url}" in said
    assert f"sent 5 instances to {pacs.url}" in said  # SEG, parametric map, report, 2 secondary captures
    listing = _ok(capsys, ["pacs", "series", "--pacs", pacs.url, "--study", study["uid"]])
    modalities = sorted(line.split("\t")[1] for line in listing.splitlines())
    assert modalities.count("SEG") == 1 and modalities.count("SR") == 1 and "CT" in modalities
    written = json.loads((out / "dicom" / "dicom.json").read_text())
    assert {o["sop_instance_uid"] for o in written["objects"]} <= pacs.instance_uids()
    _check_results_from_pacs(pacs, pacs.url, study, out, tmp_path / "back")
    logging.getLogger(__name__).info("DICOMweb round trip: fetch + predict + write + send %.1f s", seconds)
    # the SEG we stored is a segmentation the next prediction can read from the PACS: the same tumours, the same answer
    seg_series = next(o["series_instance_uid"] for o in written["objects"] if o["kind"] == "SEG")
    again = tmp_path / "again"
    _ok(capsys, ["predict", "--segmentation", f"pacs:{seg_series}", "--output", str(again), "--device", "cpu",
                 "--backend", "torch", "--tta", "2", "--pacs", pacs.url, "--study", study["uid"]])
    first, second = (PredictionResult.load_json(folder / "result.json") for folder in (out, again))
    assert [t.label for t in second.tumours] == [t.label for t in first.tumours]
    for before, after in zip(first.tumours, second.tumours):
        assert after.volume_ml == pytest.approx(before.volume_ml, rel=1e-9)
        assert after.probabilities == pytest.approx(before.probabilities, abs=1e-6)


@pytest.mark.slow
def test_round_trip_over_dimse(login, study, tmp_path, capsys):
    pacs = login
    said = _ok(capsys, ["pacs", "send", str(study["ct"]), "--to", pacs.dimse])
    assert f"sent 20 instances to {pacs.dimse}" in said
    out = tmp_path / "out"
    said = _ok(capsys, _predict(study, out, ["--pacs", pacs.dimse, "--study", study["uid"], "--series",
                                             study["series"], "--send-results"]))
    assert f"sent 5 instances to {pacs.dimse}" in said
    _check_results_from_pacs(pacs, pacs.dimse, study, out, tmp_path / "back")


@pytest.mark.slow
def test_sending_the_same_results_twice_stores_them_once(login, study, tmp_path, capsys):
    pacs = login
    _ok(capsys, ["pacs", "send", str(study["ct"]), "--to", pacs.url])
    out = tmp_path / "out"
    _ok(capsys, _predict(study, out, ["--pacs", pacs.url, "--study", study["uid"], "--send-results"]))
    before = len(pacs.rest("/instances"))
    said = _ok(capsys, ["pacs", "send", str(out / "dicom"), "--to", pacs.dimse])
    assert "sent 5 instances" in said and len(pacs.rest("/instances")) == before


@pytest.mark.slow
def test_batch_reads_studies_from_the_pacs_and_sends_each_case_back(login, study, tmp_path, capsys):
    pacs = login
    _ok(capsys, ["pacs", "send", str(study["ct"]), "--to", pacs.url])
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case_id,arterial,segmentation\n"
                        f"first,{study['uid']},{study['seg']}\n"
                        f"second,{study['uid']}/{study['series']},{study['seg']}\n")
    out = tmp_path / "out"
    argv = ["batch", "--manifest", str(manifest), "--output", str(out), "--workers", "0", "--backend", "torch",
            "--tta", "2", "--no-progress", "--pacs", pacs.url, "--send-results"]
    said = _ok(capsys, argv)
    assert "2 cases: 2 predicted now" in said and said.count(f"sent 5 instances to {pacs.url}") == 2
    for case in ("first", "second"):
        written = json.loads((out / "dicom" / case / "dicom.json").read_text())
        assert written["case_id"] == case and {o["sop_instance_uid"] for o in written["objects"]} <= pacs.instance_uids()
    said = _ok(capsys, argv)  # a rerun fetches, predicts and writes nothing again
    assert "2 cases: 0 predicted now, 2 already done" in said


@pytest.mark.slow
def test_batch_reads_each_cases_tumours_from_a_seg_series_of_its_study(login, study, tmp_path, capsys):
    """A radiologist's DICOM SEG stored beside the CT: ``pacs:SEG_SERIES_UID`` in the manifest's segmentation
    column is fetched with the case's study, and predicts what the same tumours from a file predict."""
    pacs = login
    seg = write_dicom_seg(study["ct"], tmp_path / "radiologist" / "seg.dcm")
    seg_series = str(pydicom.dcmread(seg, stop_before_pixels=True).SeriesInstanceUID)
    _ok(capsys, ["pacs", "send", str(study["ct"]), "--to", pacs.url])
    _ok(capsys, ["pacs", "send", str(seg.parent), "--to", pacs.dimse])
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case_id,arterial,segmentation\n"
                        f"from_pacs,{study['uid']},pacs:{seg_series}\n"
                        f"from_file,{study['uid']}/{study['series']},{study['seg']}\n")
    out = tmp_path / "out"
    argv = ["batch", "--manifest", str(manifest), "--output", str(out), "--workers", "0", "--backend", "torch",
            "--tta", "2", "--no-progress", "--pacs", pacs.url]
    said = _ok(capsys, argv)
    assert "2 cases: 2 predicted now, 0 already done, 0 failed" in said
    fetched = list((out / "pacs-images" / "from_pacs" / "segmentation").glob("*.dcm"))
    assert [str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in fetched] == [seg_series]
    from_pacs, from_file = (PredictionResult.load_json(out / "cases" / case / "result.json")
                            for case in ("from_pacs", "from_file"))
    assert [t.label for t in from_pacs.tumours] == [t.label for t in from_file.tumours] == ["Tumour #1", "Tumour #2"]
    for a, b in zip(from_pacs.tumours, from_file.tumours):
        assert a.volume_ml == pytest.approx(b.volume_ml, rel=1e-9)
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    assert "2 cases: 0 predicted now, 2 already done" in _ok(capsys, argv)  # nothing fetched or predicted again
    # a pacs: cell naming the CT series, not a SEG: one error naming the case
    manifest.write_text(f"case_id,arterial,segmentation\nwrong,{study['uid']},pacs:{study['series']}\n")
    error = _one_error(capsys, argv[:4] + [str(tmp_path / "out2")] + argv[5:])
    assert f"case wrong: segmentation pacs:{study['series']}" in error and "is not a DICOM SEG" in error


# --- a PACS that says no, or is not there ---------------------------------------------------------------
def test_wrong_password_is_one_line_and_never_shown(pacs, study, tmp_path, capsys, monkeypatch, caplog):
    secret = "not-the-password-" + pacs.password[::-1]
    credentials = tmp_path / "pacs.json"
    credentials.write_text(json.dumps({"username": orthanc_server.USER, "password": secret}))
    credentials.chmod(0o600)
    caplog.set_level(logging.DEBUG)
    error = _one_error(capsys, ["-v", "pacs", "series", "--pacs", pacs.url, "--study", study["uid"],
                                "--credentials", str(credentials)])
    assert f"the PACS at {pacs.url} refused the credentials from {credentials}" in error and "HTTP 401" in error
    assert secret not in error and secret not in caplog.text


def test_no_credentials_says_how_to_give_them(pacs, study, capsys, monkeypatch):
    for name in ("TACE_PACS_USER", "TACE_PACS_PASSWORD", "TACE_PACS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    error = _one_error(capsys, ["pacs", "series", "--pacs", pacs.url, "--study", study["uid"]])
    assert "asks for credentials (HTTP 401" in error and "--credentials FILE" in error


def test_credentials_in_the_url_are_refused_before_connecting(pacs, study, capsys):
    url = pacs.url.replace("http://", f"http://{orthanc_server.USER}:{pacs.password}@")
    error = _one_error(capsys, ["pacs", "send", str(study["ct"]), "--to", url])
    assert "holds a user name or password" in error and pacs.password not in error


def test_unreachable_pacs(study, tmp_path, capsys):
    port = orthanc_server.free_port()  # nothing listens there
    for endpoint in (f"http://127.0.0.1:{port}/dicom-web", f"ORTHANC@127.0.0.1:{port}"):
        error = _one_error(capsys, ["pacs", "send", str(study["ct"]), "--to", endpoint])
        assert f"cannot reach the PACS at {endpoint}" in error and "connection refused" in error
        error = _one_error(capsys, _predict(study, tmp_path / "out", ["--pacs", endpoint, "--study", study["uid"]]))
        assert f"cannot reach the PACS at {endpoint}" in error
    assert not (tmp_path / "out").exists()


def test_wrong_ae_title_is_one_line(pacs, study, capsys):
    endpoint = f"NOTORTHANC@127.0.0.1:{pacs.dicom_port}"
    error = _one_error(capsys, ["pacs", "send", str(study["ct"]), "--to", endpoint])
    assert f"the PACS at {endpoint} rejected the association" in error and "Called AE title not recognised" in error
    assert "is 'NOTORTHANC' its AE title?" in error


def test_a_study_without_the_asked_series(login, study, tmp_path, capsys):
    pacs = login
    _ok(capsys, ["pacs", "send", str(study["ct"]), "--to", pacs.url])
    missing = "1.2.3.4.5.6.7.8.9"
    for endpoint in (pacs.url, pacs.dimse):
        error = _one_error(capsys, _predict(study, tmp_path / "out", ["--pacs", endpoint, "--study", study["uid"],
                                                                      "--series", missing]))
        assert f"study {study['uid']} on {endpoint} has no series {missing}; it holds: " in error
        assert f"{study['series']} (CT 'CT Body 3.0', 20 instances)" in error
    error = _one_error(capsys, _predict(study, tmp_path / "out", ["--pacs", pacs.url, "--study", missing]))
    assert f"holds no study {missing}" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_a_send_cut_half_way_reports_only_what_was_stored(study, tmp_path_factory, protocol):
    """Orthanc killed after the PACS confirmed 5 of 20 instances: the send says so, stops, and every
    instance it reports as sent is in the PACS when it comes back."""
    from TACEResponseLib.pacs.endpoint import Credentials, parse_endpoint
    from TACEResponseLib.pacs.transfer import send_folder

    server = orthanc_server.start(tmp_path_factory.mktemp(f"orthanc-cut-{protocol}"))
    try:
        address = server.url if protocol == "dicomweb" else server.dimse
        endpoint = parse_endpoint(address, credentials=Credentials(orthanc_server.USER, server.password, source="test"),
                                  timeout_s=10)

        def on_sent(name, done, total):
            if done == 5:
                server.stop(kill=True)

        outcome = send_folder(study["ct"], endpoint, on_sent)
        assert not outcome.complete and 5 <= len(outcome.sent) < 20
        assert outcome.error.startswith(f"cannot reach the PACS at {address}") or "stopped answering" in outcome.error \
            or "lost" in outcome.error, outcome.error
        assert f"{len(outcome.sent)} of 20 instance(s) confirmed stored" in outcome.summary()
        server.start()
        stored = server.instance_uids()
        assert {uid for _, uid in outcome.sent} <= stored
    finally:
        server.stop()
