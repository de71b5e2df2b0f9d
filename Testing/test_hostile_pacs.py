"""A PACS that answers like an attacker: DICOMweb listings of the wrong shape or with a series UID made to
climb out of the fetch folder, answers that never end or come a byte at a time, multipart answers whose
parts are not DICOM, hold more instances than listed, or one instance without end. Each is one PacsError
naming the PACS, nothing written outside the fetch folder, memory and time bounded.

The PACS is a local HTTP server in a thread, each test choosing what it answers.
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from TACEResponseLib.pacs import dicomweb, transfer
from TACEResponseLib.pacs.endpoint import PacsError, RemoteSeries, parse_endpoint

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.answer(self)

    def log_message(self, *args):
        pass


@pytest.fixture
def hostile_pacs():
    """``(endpoint, set_answer)``: a DICOMweb root on 127.0.0.1 whose answer is ``set_answer(function)``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = parse_endpoint(f"http://127.0.0.1:{server.server_port}/dicom-web", timeout_s=1.0)

    def set_answer(function):
        server.answer = function

    yield endpoint, set_answer
    server.shutdown()
    server.server_close()


def json_answer(body, status: int = 200):
    def answer(handler):
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/dicom+json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return answer


def series_item(uid: str = SERIES, instances="2") -> dict:
    return {"0020000E": {"vr": "UI", "Value": [uid]}, "00080060": {"vr": "CS", "Value": ["CT"]},
            "00201209": {"vr": "IS", "Value": [instances]}}


@pytest.mark.parametrize("body, words", [
    ("nothing", ["other than a list of DICOM JSON objects (str)"]),
    ([5, [SERIES]], ["other than a list of DICOM JSON objects (list)"]),
    ([{"0020000E": SERIES}, {"0020000E": {"Value": 5}}, {"0020000E": {"Value": [[SERIES]]}}], ["holds no study"]),
    ([series_item("../../../../tmp/outside")], ["'../../../../tmp/outside' is not a DICOM UID"]),
    ([series_item(f"{SERIES}\n")], ["is not a DICOM UID"]),
])
def test_a_series_listing_of_the_wrong_shape_or_with_a_climbing_uid_is_one_pacs_error(hostile_pacs, body, words):
    endpoint, set_answer = hostile_pacs
    set_answer(json_answer(body))
    with pytest.raises(PacsError) as caught:
        transfer.find_series(endpoint, STUDY)
    for word in [str(endpoint), *words]:
        assert word in str(caught.value), caught.value


def test_an_instance_count_that_is_not_a_number_is_unknown(hostile_pacs):
    endpoint, set_answer = hostile_pacs
    set_answer(json_answer([series_item(instances="many")]))
    assert [(s.uid, s.instances) for s in transfer.find_series(endpoint, STUDY)] == [(SERIES, 0)]


def test_a_listing_that_never_ends_is_cut_off_at_its_byte_limit(hostile_pacs, monkeypatch):
    endpoint, set_answer = hostile_pacs
    monkeypatch.setattr(dicomweb, "MAX_LISTING_BYTES", 1 << 20)
    sent = []

    def endless(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom+json")
        handler.end_headers()
        handler.wfile.write(b"[")
        try:
            for _ in range(64):  # 16 MB, then the server gives up (a real attacker would not)
                handler.wfile.write(b" " * (256 << 10))
                sent.append(1)
        except OSError:
            pass

    set_answer(endless)
    with pytest.raises(PacsError, match="was cut off while listing the series.*its answer passed 1 MB"):
        transfer.find_series(endpoint, STUDY)
    assert len(sent) < 64


def test_a_listing_sent_a_byte_at_a_time_is_cut_off_by_its_rate(hostile_pacs):
    endpoint, set_answer = hostile_pacs
    stop = threading.Event()

    def dribble(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom+json")
        handler.end_headers()
        try:
            for _ in range(200):  # 40 s at most; each byte well inside the 1 s read timeout
                if stop.is_set():
                    return
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    set_answer(dribble)
    with pytest.raises(PacsError, match=r"was cut off.*KB/s after \d+ s, slower than the 32 KB/s"):
        transfer.find_series(endpoint, STUDY)
    stop.set()


def _instance(uid: str | None = None, series: str = SERIES) -> bytes:
    dataset = pydicom.Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = uid or generate_uid()
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.Modality = STUDY, series, "CT"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart_answer(parts: list[bytes], end: bool = True):
    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=B0UNDARY')
        handler.end_headers()
        try:
            for part in parts:
                handler.wfile.write(b"\r\n--B0UNDARY\r\nContent-Type: application/dicom\r\n\r\n" + part)
            if end:
                handler.wfile.write(b"\r\n--B0UNDARY--\r\n")
        except OSError:
            pass
    return answer


def fetch(endpoint, folder: Path, instances: int = 2) -> Path:
    return transfer.fetch_series_to(endpoint, STUDY, RemoteSeries(SERIES, "CT", "", instances, "1"), folder)


def test_a_series_answer_holding_more_instances_than_listed_or_one_twice_is_refused(hostile_pacs, tmp_path):
    endpoint, set_answer = hostile_pacs
    set_answer(multipart_answer([_instance() for _ in range(3)]))
    with pytest.raises(PacsError, match="sent more instances of series .* than the 2 it listed"):
        fetch(endpoint, tmp_path / "more")
    twice = _instance("1.2.3.4")
    set_answer(multipart_answer([twice, twice]))
    with pytest.raises(PacsError, match="sent instance 1.2.3.4 of series .* twice"):
        fetch(endpoint, tmp_path / "twice")
    set_answer(multipart_answer([_instance(), _instance()]))
    assert len(list(fetch(endpoint, tmp_path / "right").glob("*.dcm"))) == 2


def test_a_series_answer_whose_parts_are_not_dicom_is_one_pacs_error(hostile_pacs, tmp_path):
    endpoint, set_answer = hostile_pacs
    set_answer(multipart_answer([_instance(), b"<html>Internal error</html>"]))
    with pytest.raises(PacsError, match="sent, as instance 2 of series .*, something that is not DICOM"):
        fetch(endpoint, tmp_path / "series")


def test_an_instance_without_end_is_cut_off_at_the_instance_limit(hostile_pacs, tmp_path, monkeypatch):
    endpoint, set_answer = hostile_pacs
    monkeypatch.setattr(dicomweb, "MAX_INSTANCE_BYTES", 1 << 20)
    set_answer(multipart_answer([_instance(), _instance() + b"\0" * (8 << 20)], end=False))
    with pytest.raises(PacsError, match="cut off while fetching series.*one instance of its answer passed 1 MB"):
        fetch(endpoint, tmp_path / "series")


def test_a_dimse_pacs_sending_more_instances_than_listed_is_cut_off(tmp_path):
    from pynetdicom import AE, StoragePresentationContexts, evt
    from pynetdicom.sop_class import (
        StudyRootQueryRetrieveInformationModelFind as FIND,
        StudyRootQueryRetrieveInformationModelGet as GET,
    )

    sent = []

    def on_find(event):
        answer = pydicom.Dataset()
        answer.QueryRetrieveLevel, answer.SOPClassUID = "IMAGE", "1.2.840.10008.5.1.4.1.1.2"
        yield 0xFF00, answer

    def on_get(event):
        yield 50
        for _ in range(50):  # a PACS that sends on whatever it is answered
            sent.append(1)
            yield 0xFF00, pydicom.dcmread(io.BytesIO(_instance()))

    ae = AE(ae_title="HOSTILE")
    ae.add_supported_context(FIND)
    ae.add_supported_context(GET)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, scu_role=False, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_GET, on_get)])
    try:
        endpoint = parse_endpoint(f"HOSTILE@127.0.0.1:{server.server_address[1]}", timeout_s=5.0)
        with pytest.raises(PacsError, match="sent more instances of series .* than the 2 it listed"):
            fetch(endpoint, tmp_path / "series")
    finally:
        server.shutdown()
    assert len(list((tmp_path / "series").glob("*.dcm"))) == 2 and len(sent) < 50
