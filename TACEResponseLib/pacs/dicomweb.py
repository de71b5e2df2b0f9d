"""DICOMweb through dicomweb-client: QIDO-RS to list a study's series, WADO-RS to fetch one, STOW-RS to store.

Every failure of the service becomes one :class:`~.endpoint.PacsError` line saying what happened:
not reachable, no answer in time, credentials asked for or refused, study or series not found, or
the HTTP status with the service's reason. Credentials ride on the HTTP session (basic auth or a
bearer token), never in the URL or in the headers dicomweb-client logs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from TACEResponseLib.pacs.endpoint import PASSWORD_ENV, USER_ENV, Endpoint, PacsError, RemoteSeries, SendOutcome

logger = logging.getLogger(__name__)

#: instances per STOW-RS request (each request is confirmed instance by instance)
STOW_BATCH = 8
#: any transfer syntax the PACS holds: nothing has to be transcoded on the way (GDCM decodes it here)
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)


def client(endpoint: Endpoint):
    """A :class:`dicomweb_client.DICOMwebClient` for ``endpoint`` with its credentials on the session."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
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
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


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
    series = [RemoteSeries(uid=str(_value(item, "0020000E")), modality=str(_value(item, "00080060")),
                           description=str(_value(item, "0008103E")), instances=int(_value(item, "00201209", 0) or 0),
                           number=str(_value(item, "00200011")))
              for item in found or []]
    return [s for s in series if s.uid]


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
