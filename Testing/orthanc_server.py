"""A real Orthanc PACS (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the tests, run as a plain process.

:func:`start` writes a configuration into a throwaway folder (storage, index, log), picks free HTTP
and DICOM ports, starts ``Orthanc`` and waits until its REST API answers. The server requires HTTP
basic authentication (user ``radiologist``, a random password), checks the called AE title
(``ORTHANC``) and knows our AE title for C-GET. :meth:`Orthanc.stop` ends the process (terminate,
then kill) — the fixtures call it whatever happens, so no server outlives the tests.

``make test`` installs the packages when run as root (apt-get), as it does for Chromium; without
them :func:`missing` says what is missing and the tests skip with that reason.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AET = "ORTHANC"
OUR_AET = "TACERESPONSE"
USER = "radiologist"


def missing() -> str:
    """Why no Orthanc can be started here ("" when it can)."""
    if shutil.which(ORTHANC) is None:
        return ("Orthanc is not installed (make test installs Debian's orthanc and orthanc-dicomweb with apt-get "
                "when run as root)")
    if not DICOMWEB_PLUGIN.is_file():
        return f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; Debian package orthanc-dicomweb)"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    folder: Path
    http_port: int
    dicom_port: int
    password: str
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"{AET}@127.0.0.1:{self.dicom_port}"

    def rest(self, path: str):
        """GET Orthanc's own REST API (JSON)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        request.add_header("Authorization", "Basic " + b64encode(f"{USER}:{self.password}".encode()).decode())
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every instance stored."""
        return {self.rest(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in self.rest("/instances")}

    def start(self) -> "Orthanc":
        config = {
            "Name": "TACEResponse tests", "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": AET,
            "StorageDirectory": str(self.folder / "storage"), "IndexDirectory": str(self.folder / "storage"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: self.password},
            "DicomCheckCalledAet": True, "DicomModalities": {"tace": [OUR_AET, "127.0.0.1", free_port()]},
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpTimeout": 60, "StableAge": 1,
        }
        (self.folder / "config.json").write_text(json.dumps(config, indent=1))
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "config.json")], stdout=log, stderr=log,
                                        cwd=self.folder)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: "
                                   + (self.folder / "orthanc.log").read_text(errors="replace")[-2000:])
            try:
                self.rest("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 30 s")

    def stop(self, kill: bool = False) -> None:
        """End the server (``kill``: at once, as a crash would)."""
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


def start(folder: Path) -> Orthanc:
    """A running Orthanc whose storage lives in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return Orthanc(folder, free_port(), free_port(), secrets.token_urlsafe(12)).start()
