"""PACS addresses, credentials and the PACS options of the commands, checked before anything connects.

Each bad command line is exit 2 with one ``error:`` line naming what is wrong, no traceback, nothing
written; a secret never appears in what the tool prints or logs, nor in the objects' ``repr``.
"""

from __future__ import annotations

import json
import logging

import pytest

from TACEResponseLib.cli import main
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.pacs.endpoint import Credentials, parse_endpoint, read_credentials


def test_endpoints_parse_both_forms():
    web = parse_endpoint("HTTPS://pacs.example.org:8443/dicom-web/?x=1")
    assert (web.kind, web.url, str(web)) == ("dicomweb", "https://pacs.example.org:8443/dicom-web",
                                             "https://pacs.example.org:8443/dicom-web")
    dimse = parse_endpoint("ORTHANC@10.0.0.5:4242", calling_aet="SLICER")
    assert (dimse.kind, dimse.aet, dimse.host, dimse.port, dimse.calling_aet, str(dimse)) == (
        "dimse", "ORTHANC", "10.0.0.5", 4242, "SLICER", "ORTHANC@10.0.0.5:4242")
    assert parse_endpoint("PACS@[::1]:104").host == "::1"


@pytest.mark.parametrize("text, words", [
    ("", "no PACS given"),
    ("ftp://pacs/dicom-web", "only http and https"),
    ("http://user:secret@pacs:8042/dicom-web", "holds a user name or password"),
    ("http://pacs:99999/dicom-web", "port is not a number"),
    ("pacs.example.org:4242", "not a PACS address"),
    ("AET@host", "not a PACS address"),
    ("A\\B@host:104", "AE title"),
    ("SEVENTEEN_CHARS_X@host:104", "AE title"),
    ("AET@host:0", "port is not a number"),
])
def test_bad_endpoints_say_the_two_forms(text, words):
    with pytest.raises(InputError, match=words) as error:
        parse_endpoint(text, "--to")
    assert "secret" not in str(error.value)


def test_credentials_from_a_file_or_the_environment_and_never_shown(tmp_path):
    path = tmp_path / "pacs.json"
    path.write_text(json.dumps({"username": "reader", "password": "p4ss-word"}))
    path.chmod(0o600)
    from_file = read_credentials(path, environ={})
    assert (from_file.username, from_file.password, from_file.source) == ("reader", "p4ss-word", str(path))
    assert "p4ss-word" not in repr(from_file) and "p4ss-word" not in str(from_file)
    token = read_credentials(None, environ={"TACE_PACS_TOKEN": "tok-123"})
    assert token.token == "tok-123" and "tok-123" not in repr(token) and token
    user = read_credentials(None, environ={"TACE_PACS_USER": "u", "TACE_PACS_PASSWORD": "pw-x"})
    assert (user.username, user.password) == ("u", "pw-x") and "pw-x" not in repr(user)
    assert not read_credentials(None, environ={})
    with pytest.raises(InputError, match=r"\$TACE_PACS_USER is set but \$TACE_PACS_PASSWORD is not"):
        read_credentials(None, environ={"TACE_PACS_USER": "u"})
    (tmp_path / "bad.json").write_text('{"user": "x"}')
    with pytest.raises(InputError, match="expected"):
        read_credentials(tmp_path / "bad.json", environ={})
    (tmp_path / "text.json").write_text("reader:secret")
    with pytest.raises(InputError, match="not a JSON file") as error:
        read_credentials(tmp_path / "text.json", environ={})
    assert "secret" not in str(error.value)


def test_an_open_credentials_file_is_warned_about(tmp_path, caplog):
    path = tmp_path / "pacs.json"
    path.write_text(json.dumps({"token": "t"}))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        read_credentials(path, environ={})
    assert "other users of this computer may read it" in caplog.text


def test_the_pacs_group_is_listed(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "PACS:\n  pacs" in text and "export, send, series" in text


@pytest.fixture()
def dicom_folder(tmp_path):
    """A folder holding one real DICOM file (pydicom's CT sample, with its UIDs)."""
    from pydicom.data import get_testdata_file

    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())
    return folder


@pytest.mark.parametrize("argv, words", [
    (["pacs", "send", "{missing}", "--to", "http://127.0.0.1:9/dicom-web"], ["{missing}", "does not exist"]),
    (["pacs", "send", "{empty}", "--to", "http://127.0.0.1:9/dicom-web"], ["{empty}", "holds no DICOM files"]),
    (["pacs", "send", "{dicom}", "--to", "pacs:104"], ["--to", "not a PACS address"]),
    (["pacs", "send", "{dicom}", "--to", "PACS@127.0.0.1:9", "--calling-aet", "BAD\\AET"], ["--calling-aet"]),
    (["pacs", "send", "{dicom}", "--to", "http://127.0.0.1:9/dicom-web", "--credentials", "{missing}"],
     ["--credentials", "does not exist"]),
    (["pacs", "series", "--pacs", "http://127.0.0.1:9/dicom-web", "--study", "not-a-uid"], ["--study", "not a DICOM UID"]),
    (["predict", "--segmentation", "{dicom}", "--output", "{out}", "--send-results", "--image", "{dicom}"],
     ["--send-results", "no PACS to send to"]),
    (["predict", "--segmentation", "{dicom}", "--output", "{out}", "--study", "1.2.3"], ["--study", "give --pacs"]),
    (["predict", "--segmentation", "{dicom}", "--output", "{out}"], ["no image given"]),
    (["predict", "--segmentation", "{dicom}", "--output", "{out}", "--pacs", "http://127.0.0.1:9/dicom-web"],
     ["--pacs", "--study STUDY_INSTANCE_UID"]),
    (["predict", "--segmentation", "{dicom}", "--output", "{out}", "--pacs", "http://127.0.0.1:9/dicom-web",
      "--study", "1.2.3", "--image", "{dicom}"], ["--image and --pacs both given"]),
    (["predict", "--segmentation", "{dicom}", "--output", "{out}", "--image", "{dicom}", "--dicom-source", "{dicom}"],
     ["--dicom-source", "give --dicom-out"]),
    (["batch", "--manifest", "{dicom}/ct.dcm", "--output", "{out}", "--send-results"], ["--send-results"]),
    (["predict", "--segmentation", "pacs:1.2.3", "--output", "{out}", "--image", "{dicom}"],
     ["--segmentation pacs:1.2.3", "--pacs and --study"]),
    (["predict", "--segmentation", "pacs:x.y", "--output", "{out}", "--pacs", "http://127.0.0.1:9/dicom-web",
      "--study", "1.2.3"], ["--segmentation pacs:", "not a DICOM UID"]),
    (["batch", "--manifest", "{seg_from_pacs}", "--output", "{out}"],
     ["{seg_from_pacs}, case c1: segmentation pacs:1.2.3 is a SEG series on a PACS; give --pacs"]),
    (["batch", "--manifest", "{bad_seg_uid}", "--output", "{out}", "--pacs", "http://127.0.0.1:9/dicom-web"],
     ["{bad_seg_uid}, case c1: segmentation pacs: 'x.y': not a DICOM UID"]),
])
def test_bad_pacs_options_are_one_error_before_any_work(argv, words, dicom_folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    names = {"missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty"), "dicom": str(dicom_folder),
             "out": str(tmp_path / "out"), "seg_from_pacs": str(tmp_path / "seg_from_pacs.csv"),
             "bad_seg_uid": str(tmp_path / "bad_seg_uid.csv")}
    for name, cell in (("seg_from_pacs", "pacs:1.2.3"), ("bad_seg_uid", "pacs:x.y")):
        with open(names[name], "w") as handle:
            handle.write(f"case_id,arterial,segmentation\nc1,1.2.826.0.1.3680043.8.498.1,{cell}\n")
    assert main([a.format(**names) for a in argv]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    for word in words:
        assert word.format(**names) in errors[0], errors[0]
    assert not (tmp_path / "out").exists()


def test_credentials_object_equality_does_not_leak_in_endpoint_repr():
    endpoint = parse_endpoint("http://pacs/dicom-web", credentials=Credentials("u", "hidden-pw", source="f"))
    assert "hidden-pw" not in repr(endpoint) and "hidden-pw" not in str(endpoint)
