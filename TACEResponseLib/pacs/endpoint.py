"""Where a PACS is and how to sign in to it — never with a secret on the command line or in a log.

A PACS is named one of two ways (``--to``, ``--pacs``):

- ``http(s)://HOST[:PORT]/PATH`` — a DICOMweb service root (QIDO-RS, WADO-RS, STOW-RS), e.g.
  Orthanc's ``http://pacs:8042/dicom-web``;
- ``AET@HOST:PORT`` — a DIMSE peer (C-ECHO, C-FIND, C-GET, C-STORE) by its AE title.

Credentials come from ``--credentials FILE`` (JSON: ``{"username": …, "password": …}`` or
``{"token": …}``) or the environment (``TACE_PACS_USER`` + ``TACE_PACS_PASSWORD``, or
``TACE_PACS_TOKEN``). A URL holding ``user:password@`` is refused: it would end up in shell
histories, process lists and logs. :class:`Credentials` never shows its secrets (``repr``, logs);
endpoints are shown without user information or query.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from TACEResponseLib.core.errors import InputError, TACEResponseError

logger = logging.getLogger(__name__)

USER_ENV, PASSWORD_ENV, TOKEN_ENV = "TACE_PACS_USER", "TACE_PACS_PASSWORD", "TACE_PACS_TOKEN"
#: our AE title when none is given (``--calling-aet``)
DEFAULT_CALLING_AET = "TACERESPONSE"
#: seconds to wait for a PACS to connect or answer
DEFAULT_TIMEOUT_S = 30.0


class PacsError(TACEResponseError):
    """The PACS could not be reached, refused us, or does not hold what was asked: one clear line."""


@dataclass(frozen=True)
class Credentials:
    """A user name and password (HTTP basic / DIMSE user identity) or a bearer token."""

    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    source: str = ""

    def __bool__(self) -> bool:
        return bool(self.username or self.token)

    def __repr__(self) -> str:
        kind = "token" if self.token else f"user {self.username!r}" if self.username else "none"
        return f"Credentials({kind}{', from ' + self.source if self.source else ''})"

    __str__ = __repr__


NO_CREDENTIALS = Credentials()


def read_credentials(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Credentials:
    """Credentials from ``path`` (JSON) when given, else from the environment, else none."""
    environ = os.environ if environ is None else environ
    if path:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"--credentials {path}: file does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"--credentials {path}: not a JSON file; write {{\"username\": \"…\", \"password\": \"…\"}} "
                             "or {\"token\": \"…\"}") from None
        if not isinstance(data, dict) or not (data.get("token") or (data.get("username") and "password" in data)):
            raise InputError(f"--credentials {path}: expected {{\"username\": …, \"password\": …}} or {{\"token\": …}}")
        try:
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                logger.warning("--credentials %s: other users of this computer may read it (chmod 600 %s)", path, path)
        except OSError:
            pass
        return Credentials(str(data.get("username") or ""), str(data.get("password") or ""),
                           str(data.get("token") or ""), str(path))
    if environ.get(TOKEN_ENV):
        return Credentials(token=environ[TOKEN_ENV], source=f"${TOKEN_ENV}")
    if environ.get(USER_ENV):
        if PASSWORD_ENV not in environ:
            raise InputError(f"${USER_ENV} is set but ${PASSWORD_ENV} is not; set both (or neither)")
        return Credentials(environ[USER_ENV], environ[PASSWORD_ENV], source=f"${USER_ENV}/${PASSWORD_ENV}")
    return NO_CREDENTIALS


@dataclass(frozen=True)
class Endpoint:
    """A PACS: a DICOMweb root (``url``) or a DIMSE peer (``aet`` at ``host``:``port``)."""

    kind: str  # "dicomweb" | "dimse"
    url: str = ""
    aet: str = ""
    host: str = ""
    port: int = 0
    credentials: Credentials = NO_CREDENTIALS
    calling_aet: str = DEFAULT_CALLING_AET
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __str__(self) -> str:
        return self.url if self.kind == "dicomweb" else f"{self.aet}@{self.host}:{self.port}"

    def with_credentials(self, credentials: Credentials) -> "Endpoint":
        return Endpoint(self.kind, self.url, self.aet, self.host, self.port, credentials, self.calling_aet,
                        self.timeout_s)


AET_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash, ≤ 16 characters


def check_aet(text: str, option: str) -> str:
    aet = str(text).strip()
    if not aet or not AET_PATTERN.match(aet):
        raise InputError(f"{option} {text!r}: an AE title is 1–16 printable characters without a backslash")
    return aet


def parse_endpoint(text: str, option: str = "--to", credentials: Credentials = NO_CREDENTIALS,
                   calling_aet: str = DEFAULT_CALLING_AET, timeout_s: float = DEFAULT_TIMEOUT_S) -> Endpoint:
    """``http(s)://…`` (DICOMweb) or ``AET@HOST:PORT`` (DIMSE); anything else is an InputError naming both forms."""
    text = str(text or "").strip()
    forms = "give a DICOMweb URL (http://HOST:PORT/dicom-web) or a DIMSE peer as AET@HOST:PORT"
    if not text:
        raise InputError(f"{option}: no PACS given; {forms}")
    calling_aet = check_aet(calling_aet, "--calling-aet")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        parts = urlsplit(text)
        if parts.scheme.lower() not in ("http", "https"):
            raise InputError(f"{option} {parts.scheme}://…: only http and https DICOMweb services are supported; {forms}")
        if parts.username is not None or parts.password is not None:
            raise InputError(f"{option}: the URL holds a user name or password, which would show in shell histories, "
                             f"process lists and logs; put them in a file (--credentials FILE) or in ${USER_ENV} / "
                             f"${PASSWORD_ENV}")
        if not parts.hostname:
            raise InputError(f"{option} {text}: no host in the URL; {forms}")
        try:
            port = parts.port
        except ValueError:
            raise InputError(f"{option} {text}: the port is not a number from 1 to 65535") from None
        url = f"{parts.scheme.lower()}://{parts.hostname}{f':{port}' if port else ''}{parts.path.rstrip('/')}"
        return Endpoint("dicomweb", url=url, credentials=credentials, calling_aet=calling_aet, timeout_s=timeout_s)
    match = re.match(r"^(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d+)$", text)
    if not match:
        raise InputError(f"{option} {text!r}: not a PACS address; {forms}")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise InputError(f"{option} {text}: the port is not a number from 1 to 65535")
    return Endpoint("dimse", aet=check_aet(match["aet"], option), host=match["host"].strip("[]"), port=port,
                    credentials=credentials, calling_aet=calling_aet, timeout_s=timeout_s)


# --- what a PACS answers ----------------------------------------------------------------------------
@dataclass
class RemoteSeries:
    """One series of a study on a PACS, as listed to the user."""

    uid: str
    modality: str = ""
    description: str = ""
    instances: int = 0
    number: str = ""

    def describe(self) -> str:
        what = " ".join(p for p in (self.modality, repr(self.description) if self.description else "") if p)
        return f"{self.uid} ({what or 'no modality'}, {self.instances} instance{'s' if self.instances != 1 else ''})"


@dataclass
class SendOutcome:
    """What a send did: the instances the PACS confirmed as stored (name, SOP Instance UID), out of
    ``total``, and the reason it stopped early (``""`` when everything was stored)."""

    endpoint: str
    total: int
    sent: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""

    @property
    def complete(self) -> bool:
        return not self.error and len(self.sent) == self.total

    def summary(self) -> str:
        if self.complete:
            return f"sent {self.total} instance{'s' if self.total != 1 else ''} to {self.endpoint}"
        unsent = self.total - len(self.sent)
        return (f"{self.error}; {len(self.sent)} of {self.total} instance(s) confirmed stored, {unsent} not sent "
                "(run the same command again to send them)")
