"""DIMSE through pynetdicom: C-FIND to list a study's series, C-GET to fetch one, C-STORE to store.

C-GET is used rather than C-MOVE: the PACS sends the instances back over our own association, so it
needs no route to this computer (C-MOVE would need the PACS to know our AE title, host and port).
Each presentation context offers one transfer syntax, so the PACS can send what it holds without
transcoding (Orthanc, for one, cannot transcode JPEG 2000). A rejected association (wrong AE title,
our AE title unknown), an unreachable peer, an aborted association and a failure status are one
:class:`~.endpoint.PacsError` line each.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from TACEResponseLib.pacs.endpoint import Endpoint, PacsError, RemoteSeries, SendOutcome

logger = logging.getLogger(__name__)

#: transfer syntaxes offered for C-GET, one presentation context each
GET_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",     # Explicit VR Little Endian
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.5",     # RLE Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
)
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
#: image storage classes asked for when the PACS does not say which the series holds
COMMON_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4",
                  "1.2.840.10008.5.1.4.1.1.4.1")
SUCCESS, PENDING = 0x0000, (0xFF00, 0xFF01)
WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pynetdicom's own log lines (connection attempts, tracebacks of refused connections) only with -v."""
    log = logging.getLogger("pynetdicom")
    before = log.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(before)


def _application_entity(endpoint: Endpoint):
    from pynetdicom import AE

    ae = AE(ae_title=endpoint.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = endpoint.timeout_s
    ae.connection_timeout = min(endpoint.timeout_s, 10.0)
    ae.maximum_associations = 1
    return ae


def _identity(endpoint: Endpoint) -> list[Any]:
    """User Identity negotiation (user name and password) when credentials are given."""
    credentials = endpoint.credentials
    if not credentials.username:
        return []
    from pynetdicom.pdu_primitives import UserIdentityNegotiation

    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = credentials.username.encode()
    item.secondary_field = credentials.password.encode()
    return [item]


def _reachable(endpoint: Endpoint, doing: str) -> None:
    """A TCP connection to the peer, opened and closed: pynetdicom reports a refused connection as an
    aborted association, which would blame the PACS for not being there."""
    import socket

    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=min(endpoint.timeout_s, 10.0)):
            pass
    except socket.timeout:
        raise PacsError(f"cannot reach the PACS at {endpoint} while {doing}: no answer within "
                        f"{min(endpoint.timeout_s, 10.0):g} s") from None
    except OSError as exc:
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else (exc.strerror or str(exc))
        raise PacsError(f"cannot reach the PACS at {endpoint} while {doing} ({reason})") from None


def _associate(ae, endpoint: Endpoint, doing: str, ext_neg: Sequence[Any] = (), handlers: Sequence[Any] = ()):
    _reachable(endpoint, doing)
    association = ae.associate(endpoint.host, endpoint.port, ae_title=endpoint.aet,
                               ext_neg=[*_identity(endpoint), *ext_neg] or None, evt_handlers=list(handlers) or None)
    if association.is_established:
        return association
    where = f"the PACS at {endpoint}"
    if association.is_rejected:
        primitive = association.acceptor.primitive
        reason = getattr(primitive, "reason_str", "") if primitive is not None else ""
        hint = ""
        if "called ae title" in reason.lower():
            hint = f"; is {endpoint.aet!r} its AE title?"
        elif "calling ae title" in reason.lower():
            hint = f"; the PACS does not know our AE title {endpoint.calling_aet!r} (--calling-aet, or register it there)"
        raise PacsError(f"{where} rejected the association while {doing}: {reason or 'rejected'}{hint}")
    if association.is_aborted:
        raise PacsError(f"{where} aborted the association while {doing}")
    raise PacsError(f"cannot reach {where} while {doing} (no association: connection refused or timed out)")


def _status_text(code: int) -> str:
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", ""))[1]
    return f"status 0x{code:04X}{' ' + meaning if meaning else ''}"


def _count(identifier, keyword: str) -> int:
    """An IS element of a C-FIND answer as a count; 0 when it is absent or not a number."""
    try:
        return max(int(identifier.get(keyword) or 0), 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def find_series(endpoint: Endpoint, study_uid: str) -> list[RemoteSeries]:
    """The series of a study (C-FIND, Study Root, SERIES level); none when the PACS does not hold it."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    for keyword in ("SeriesInstanceUID", "Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances",
                    "SeriesNumber"):
        setattr(query, keyword, "")
    with _quiet():
        ae = _application_entity(endpoint)
        ae.add_requested_context(FIND)
        association = _associate(ae, endpoint, f"listing the series of study {study_uid}")
        found = []
        try:
            for status, identifier in association.send_c_find(query, FIND):
                code = int(status.Status) if status else None
                if code is None:
                    raise PacsError(f"the PACS at {endpoint} stopped answering while listing the series of study "
                                    f"{study_uid}")
                if code in PENDING and identifier is not None:
                    found.append(RemoteSeries(uid=str(identifier.get("SeriesInstanceUID", "")),
                                              modality=str(identifier.get("Modality", "") or ""),
                                              description=str(identifier.get("SeriesDescription", "") or ""),
                                              instances=_count(identifier, "NumberOfSeriesRelatedInstances"),
                                              number=str(identifier.get("SeriesNumber", "") or "")))
                elif code not in PENDING and code != SUCCESS:
                    raise PacsError(f"the PACS at {endpoint} refused to list the series of study {study_uid} "
                                    f"(C-FIND status 0x{code:04X})")
        finally:
            association.release()
    return [s for s in found if s.uid]


def _sop_classes(endpoint: Endpoint, study_uid: str, series_uid: str) -> list[str]:
    """The SOP classes of a series' instances (C-FIND at IMAGE level); the common image classes when
    the PACS does not say."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series_uid
    query.SOPInstanceUID = query.SOPClassUID = ""
    ae = _application_entity(endpoint)
    ae.add_requested_context(FIND)
    association = _associate(ae, endpoint, f"listing the instances of series {series_uid}")
    classes: set[str] = set()
    try:
        for status, identifier in association.send_c_find(query, FIND):
            if status and int(status.Status) in PENDING and identifier is not None and identifier.get("SOPClassUID"):
                classes.add(str(identifier.SOPClassUID))
    finally:
        association.release()
    return sorted(classes) or list(COMMON_STORAGE)


def fetch_series(endpoint: Endpoint, study_uid: str, series_uid: str, store: Callable[[Any], None]) -> int:
    """Retrieve every instance of a series (C-GET), each handed to ``store`` (with its file meta)."""
    from pydicom.dataset import Dataset
    from pynetdicom import build_context, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

    received: list[int] = [0]
    failures: list[str] = []

    def on_store(event) -> int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            store(dataset)
        except Exception as exc:  # noqa: BLE001 - answered to the PACS as a failure, reported after
            failures.append(str(exc))
            return 0xA700
        received[0] += 1
        return SUCCESS

    with _quiet():
        classes = _sop_classes(endpoint, study_uid, series_uid)
        ae = _application_entity(endpoint)
        contexts = [build_context(GET)] + [build_context(c, [ts]) for c in classes for ts in GET_TRANSFER_SYNTAXES]
        ae.requested_contexts = contexts[:128]
        roles = [build_role(c, scp_role=True) for c in classes]
        association = _associate(ae, endpoint, f"fetching series {series_uid}", roles, [(evt.EVT_C_STORE, on_store)])
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series_uid
        final = None
        try:
            for status, _ in association.send_c_get(query, GET):
                if not status:
                    raise PacsError(f"the PACS at {endpoint} stopped answering while sending series {series_uid} "
                                    f"({received[0]} instance(s) received)")
                final = int(status.Status)
                if failures:  # a PACS sending on after what was refused is not waited for
                    association.abort()
                    break
        finally:
            if association.is_established:
                association.release()
    if failures:
        raise PacsError(f"series {series_uid} from {endpoint}: {failures[0]}")
    if final not in (SUCCESS, *WARNINGS):
        raise PacsError(f"the PACS at {endpoint} could not send series {series_uid} (C-GET status "
                        f"0x{(final or 0):04X}, {received[0]} instance(s) received)")
    return received[0]


def send(endpoint: Endpoint, items: Sequence[tuple[str, Path]],
         on_sent: Callable[[str, int, int], None] | None = None) -> SendOutcome:
    """C-STORE each ``(name, file)`` in one association; an instance counts as sent only on a success (or
    warning) status; the first failure, abort or lost connection stops the send."""
    import pydicom
    from pynetdicom import build_context

    outcome = SendOutcome(str(endpoint), len(items))
    headers = [(name, path, pydicom.dcmread(path, stop_before_pixels=True)) for name, path in items]
    wanted: dict[str, set[str]] = {}
    for _, _, header in headers:
        syntax = str(header.file_meta.TransferSyntaxUID)
        wanted.setdefault(str(header.SOPClassUID), set()).update({syntax, *(UNCOMPRESSED if syntax in UNCOMPRESSED
                                                                            else ())})
    contexts = [build_context(sop, sorted(syntaxes)) for sop, syntaxes in wanted.items()]
    if len(contexts) > 128:
        raise PacsError(f"{len(contexts)} different kinds of instances: more than one association can carry (128)")
    with _quiet():
        ae = _application_entity(endpoint)
        ae.requested_contexts = contexts
        try:
            association = _associate(ae, endpoint, "storing instances")
        except PacsError as exc:
            outcome.error = str(exc)
            return outcome
        try:
            accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in association.accepted_contexts}
            for name, path, header in headers:
                if not association.is_established:
                    outcome.error = f"the association with {endpoint} was lost"
                    break
                if not any(sop == str(header.SOPClassUID) for sop, _ in accepted):
                    outcome.error = (f"the PACS at {endpoint} does not accept {header.SOPClassUID.name} "
                                     f"instances ({name})")
                    break
                try:
                    status = association.send_c_store(pydicom.dcmread(path))
                except RuntimeError:  # the association ended between two instances
                    outcome.error = f"the association with {endpoint} was lost while storing {name}"
                    break
                code = int(status.Status) if status else None
                if code is None:
                    outcome.error = f"the PACS at {endpoint} stopped answering while storing {name}"
                    break
                if code not in (SUCCESS, *WARNINGS):
                    outcome.error = f"the PACS at {endpoint} did not store {name} ({_status_text(code)})"
                    break
                outcome.sent.append((name, str(header.SOPInstanceUID)))
                if on_sent:
                    on_sent(name, len(outcome.sent), outcome.total)
        finally:
            if association.is_established:
                association.release()
    return outcome
