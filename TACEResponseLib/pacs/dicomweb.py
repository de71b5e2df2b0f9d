"""DICOMweb through dicomweb-client: QIDO-RS to list a study's series, WADO-RS to fetch one, STOW-RS to store.

Every failure of the service becomes one :class:`~.endpoint.PacsError` line saying what happened:
not reachable, no answer in time, credentials asked for or refused, study or series not found, or
the HTTP status with the service's reason. Credentials ride on the HTTP session (basic auth or a
bearer token), never in the URL or in the headers dicomweb-client logs.

A PACS's answer is read through :class:`_GuardedAdapter`, since requests and dicomweb-client take
whatever comes: a listing (JSON) holds at most :data:`MAX_LISTING_BYTES`, one instance of a WADO-RS
answer (the bytes between two multipart boundaries, all of which dicomweb-client holds in memory) at
most :data:`MAX_INSTANCE_BYTES`, a whole answer at most :data:`MAX_ANSWER_BYTES`; and after the
endpoint's timeout an answer must keep coming at :data:`MIN_BYTES_PER_S` on average and end within
:data:`MAX_ANSWER_S` (the read timeout alone is reset by every byte: a server sending one byte every
few seconds would never end).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.pacs.endpoint import PASSWORD_ENV, USER_ENV, Endpoint, PacsError, RemoteSeries, SendOutcome

logger = logging.getLogger(__name__)

#: instances per STOW-RS request (each request is confirmed instance by instance)
STOW_BATCH = 8
#: any transfer syntax the PACS holds: nothing has to be transcoded on the way (GDCM decodes it here)
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
#: the most bytes of a listing (QIDO-RS JSON) or any answer that is not multipart
MAX_LISTING_BYTES = 64 << 20
#: the most bytes of one instance in a multipart answer (a 1,000-frame 512 × 512 enhanced CT is 0.5 GB)
MAX_INSTANCE_BYTES = 1 << 30
#: the most bytes of one answer (a series)
MAX_ANSWER_BYTES = 16 << 30
#: the slowest average an answer may keep up once the endpoint's timeout has passed, and its longest time
MIN_BYTES_PER_S = 32 << 10
MAX_ANSWER_S = 4 * 3600.0


class AnswerRefused(OSError):
    """A PACS answer cut off: too large, too slow, or never ending (see the module docstring)."""


def _guard_answer(response, endpoint: Endpoint) -> None:
    """Count the bytes of ``response``'s body as they are read and cut it off where the module docstring
    says; the socket is shut by a watchdog thread, since a read blocks until its chunk is full."""
    raw = response.raw
    content_type = response.headers.get("content-type", "")
    boundary = next((item.partition("=")[2].strip().strip('"') for item in content_type.split(";")[1:]
                     if item.strip().lower().startswith("boundary=")), "")
    delimiter = f"--{boundary}".encode() if content_type.lower().startswith("multipart/") and boundary else b""
    limit = MAX_ANSWER_BYTES if delimiter else MAX_LISTING_BYTES
    state = {"bytes": 0, "since_boundary": 0, "tail": b"", "why": "", "done": False}
    started = time.monotonic()

    def refuse(why: str) -> None:
        state["why"] = why
        sock = _socket_of(raw)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def watch() -> None:
        grace = max(endpoint.timeout_s, 1.0)
        while not state["done"] and not raw.closed:
            time.sleep(min(0.25, grace / 4))
            elapsed = time.monotonic() - started
            if elapsed > MAX_ANSWER_S:
                return refuse(f"its answer did not end within {MAX_ANSWER_S:g} s")
            if elapsed > grace and state["bytes"] < MIN_BYTES_PER_S * (elapsed - grace):
                return refuse(f"its answer came at {state['bytes'] / elapsed / 1024:.1f} KB/s after "
                              f"{elapsed:.0f} s, slower than the {MIN_BYTES_PER_S >> 10} KB/s it must keep up")

    stream = raw.stream

    def guarded(*args, **kwargs):
        try:
            for chunk in stream(*args, **kwargs):
                state["bytes"] += len(chunk)
                if state["bytes"] > limit:
                    refuse(f"its answer passed {limit / 2**20:,.0f} MB")
                if delimiter:
                    window = state["tail"] + chunk
                    at = window.rfind(delimiter)
                    state["since_boundary"] = (len(window) - at - len(delimiter) if at >= 0
                                               else state["since_boundary"] + len(chunk))
                    state["tail"] = window[-len(delimiter):]
                    if state["since_boundary"] > MAX_INSTANCE_BYTES:
                        refuse(f"one instance of its answer passed {MAX_INSTANCE_BYTES / 2**20:,.0f} MB")
                if state["why"]:
                    break
                yield chunk
        except Exception:
            if not state["why"]:
                raise
        finally:
            state["done"] = True
        if state["why"]:
            raise AnswerRefused(state["why"])

    raw.stream = guarded
    threading.Thread(target=watch, name="pacs-answer-watch", daemon=True).start()


def _socket_of(raw) -> socket.socket | None:
    """The socket an urllib3 response reads from: its connection's, or (an answer that ends when the
    server closes, whose connection has let go of it) the one under http.client's file."""
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if sock is None:
        sock = getattr(getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _guarded_session(endpoint: Endpoint):
    """A requests session whose every answer goes through :func:`_guard_answer`."""
    import requests

    class GuardedAdapter(requests.adapters.HTTPAdapter):
        def send(self, request, **kwargs):
            response = super().send(request, **kwargs)
            _guard_answer(response, endpoint)
            return response

    session = requests.Session()
    session.mount("http://", GuardedAdapter())
    session.mount("https://", GuardedAdapter())
    return session


def client(endpoint: Endpoint):
    """A :class:`dicomweb_client.DICOMwebClient` for ``endpoint`` with its credentials on the session."""
    from dicomweb_client.api import DICOMwebClient

    session = _guarded_session(endpoint)
    credentials = endpoint.credentials
    if credentials.token:
        session.headers["Authorization"] = f"Bearer {credentials.token}"
    elif credentials.username:
        session.auth = (credentials.username, credentials.password)
    web = DICOMwebClient(endpoint.url, session=session, timeout=(min(endpoint.timeout_s, 10.0), endpoint.timeout_s))
    web.set_http_retry_params(retry=False)  # a refused request is said at once; a send is never repeated unseen
    return web


def explain(exc: BaseException, endpoint: Endpoint, doing: str) -> PacsError:
    """``exc`` from requests / dicomweb-client as one line naming the PACS and what was being done."""
    import requests

    where = f"the PACS at {endpoint}"
    refused = next((e for e in (exc, exc.__cause__, exc.__context__, *(exc.args or ())) if isinstance(e, AnswerRefused)),
                   None)
    if refused is not None:
        return PacsError(f"{where} was cut off while {doing}: {refused}")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return PacsError(f"cannot reach {where} while {doing}: no answer within {endpoint.timeout_s:g} s")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return PacsError(f"{where} stopped answering while {doing} (no answer within {endpoint.timeout_s:g} s)")
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = "connection refused" if "refused" in str(exc).lower() else "connection failed or was cut"
        return PacsError(f"cannot reach {where} while {doing} ({reason})")
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        text = f"HTTP {status} {exc.response.reason or ''}".strip()
        if status == 401:
            if not endpoint.credentials:
                return PacsError(f"{where} asks for credentials ({text}) while {doing}; give --credentials FILE or set "
                                 f"${USER_ENV} and ${PASSWORD_ENV}")
            return PacsError(f"{where} refused the credentials from {endpoint.credentials.source} ({text}) while {doing}")
        if status == 403:
            return PacsError(f"{where} does not allow {doing} for these credentials ({text})")
        return PacsError(f"{where} answered {text} while {doing}")
    return PacsError(f"{where} failed while {doing}: {type(exc).__name__}")


def _errors():
    import requests

    return (requests.exceptions.RequestException, OSError, ValueError)


def _value(item: dict[str, Any], tag: str, default: Any = "") -> Any:
    """The first value of ``tag`` in a DICOM JSON ``item``; ``default`` for anything not shaped like one."""
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    value = values[0] if isinstance(values, list) and values else default
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else default


def _listed_series(found: Any, endpoint: Endpoint, study_uid: str) -> list[RemoteSeries]:
    """The series of a QIDO-RS answer (a JSON list of DICOM JSON objects), or one PacsError saying the
    answer is not one."""
    if found is None:
        return []
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        raise PacsError(f"the PACS at {endpoint} answered the series listing of study {study_uid} with something "
                        f"other than a list of DICOM JSON objects ({type(found).__name__})")
    series = []
    for item in found:
        count = _value(item, "00201209", 0)
        series.append(RemoteSeries(uid=str(_value(item, "0020000E")), modality=str(_value(item, "00080060")),
                                   description=str(_value(item, "0008103E")),
                                   instances=int(count) if str(count).isdigit() else 0,
                                   number=str(_value(item, "00200011"))))
    return [s for s in series if s.uid]


def find_series(endpoint: Endpoint, study_uid: str) -> list[RemoteSeries]:
    """The series of a study (QIDO-RS); a study the PACS does not hold is a PacsError."""
    web = client(endpoint)
    try:
        found = web.search_for_series(study_uid, fields=["SeriesDescription", "NumberOfSeriesRelatedInstances",
                                                         "Modality", "SeriesNumber"])
    except _errors() as exc:
        import requests

        if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None \
                and exc.response.status_code == 404:
            found = []
        else:
            raise explain(exc, endpoint, f"listing the series of study {study_uid}") from None
    return _listed_series(found, endpoint, study_uid)


def fetch_series(endpoint: Endpoint, study_uid: str, series_uid: str,
                 store: Callable[[Any], None]) -> int:
    """Retrieve every instance of a series (WADO-RS, any transfer syntax), each handed to ``store``."""
    web = client(endpoint)
    count = 0
    try:
        for dataset in web.iter_series(study_uid, series_uid, media_types=ANY_TRANSFER_SYNTAX):
            store(dataset)
            count += 1
    except _errors() as exc:
        raise explain(exc, endpoint, f"fetching series {series_uid} of study {study_uid} "
                                     f"({count} instance(s) received)") from None
    except (PacsError, InputError):
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom's answer to a part that is not DICOM
        raise PacsError(f"the PACS at {endpoint} sent, as instance {count + 1} of series {series_uid}, something "
                        f"that is not DICOM ({type(exc).__name__}: {str(exc)[:200]})") from None
    return count


def send(endpoint: Endpoint, items: Sequence[tuple[str, Path]],
         on_sent: Callable[[str, int, int], None] | None = None) -> SendOutcome:
    """Store ``(name, file)`` items (STOW-RS, :data:`STOW_BATCH` per request). An instance counts as
    sent only when the service's answer lists it as stored; the first failure stops the send."""
    import pydicom

    web = client(endpoint)
    outcome = SendOutcome(str(endpoint), len(items))
    for start in range(0, len(items), STOW_BATCH):
        batch = [(name, pydicom.dcmread(path)) for name, path in items[start:start + STOW_BATCH]]
        try:
            answer = web.store_instances([dataset for _, dataset in batch])
        except _errors() as exc:
            answer = _answer_of(exc)
            if answer is None:
                outcome.error = str(explain(exc, endpoint, "storing instances"))
                return outcome
        stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])}
        failed = {str(item.ReferencedSOPInstanceUID): item.get("FailureReason", "")
                  for item in answer.get("FailedSOPSequence", [])}
        for name, dataset in batch:
            uid = str(dataset.SOPInstanceUID)
            if uid in stored:
                outcome.sent.append((name, uid))
                if on_sent:
                    on_sent(name, len(outcome.sent), outcome.total)
            else:
                reason = f"failure reason 0x{int(failed[uid]):04X}" if failed.get(uid) not in (None, "") else \
                    "not listed as stored in the answer"
                outcome.error = f"the PACS at {endpoint} did not store {name} ({reason})"
                return outcome
    return outcome


def _answer_of(exc: BaseException):
    """The STOW-RS answer (a dataset listing stored and failed instances) carried by an HTTP error, if any."""
    import pydicom
    import requests

    if not isinstance(exc, requests.exceptions.HTTPError) or exc.response is None \
            or exc.response.status_code not in (202, 409):
        return None
    try:
        return pydicom.Dataset.from_json(exc.response.json())
    except ValueError:
        return None
