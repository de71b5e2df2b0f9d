"""A PACS both ways, whichever protocol it speaks: send a folder of DICOM files, list a study's series,
fetch the series a prediction needs into a local folder.

:func:`send_folder` reports only what the PACS confirmed it stored (:class:`~.endpoint.SendOutcome`);
a send that stops half way says how many instances were stored and how many were not, and sending
the same folder again completes it (results keep their UIDs, so nothing is stored twice).
:func:`fetch_study_series` takes the study's series the model needs — named with ``--series``, or the
one image series of the model's modality — and writes each instance atomically, refusing anything
the PACS sends that is not of the asked study and series.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Callable, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path, write_json_atomic
from TACEResponseLib.pacs.endpoint import Endpoint, PacsError, RemoteSeries, SendOutcome

logger = logging.getLogger(__name__)

#: modalities of series that are not images a model reads (results, reports, presentation states …)
NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC", "FID", "PLAN"}
FETCHED_FILE = ".fetched.json"
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: the most instances fetched for a series whose listing gave no count
MAX_SERIES_INSTANCES = 20_000


def _protocol(endpoint: Endpoint):
    if endpoint.kind == "dicomweb":
        from TACEResponseLib.pacs import dicomweb

        return dicomweb
    from TACEResponseLib.pacs import dimse

    return dimse


def dicom_files(folder: str | Path) -> list[tuple[str, Path]]:
    """The DICOM files under ``folder`` (any depth, sorted), as ``(name relative to folder, path)``;
    other files (``dicom.json`` …) are left out."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {'not a folder' if folder.exists() else 'folder does not exist'}")
    found, skipped = [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, KeyError, AttributeError):
            skipped += path.suffix.lower() != ".json"
            continue
        if not str(header.get("SOPInstanceUID", "") or "").strip() or "SOPClassUID" not in header:
            raise InputError(f"{path}: a DICOM file without SOP Class/Instance UID cannot be stored in a PACS")
        found.append((str(path.relative_to(folder)), path))
    if skipped:
        logger.warning("%s: left out %d file(s) that are not DICOM", folder, skipped)
    if not found:
        raise InputError(f"{folder}: holds no DICOM files to send")
    return found


def send_folder(folder: str | Path, endpoint: Endpoint,
                on_sent: Callable[[str, int, int], None] | None = None) -> SendOutcome:
    """Send every DICOM file under ``folder`` to ``endpoint`` (STOW-RS or C-STORE)."""
    items = dicom_files(folder)
    logger.info("sending %d instance(s) from %s to %s", len(items), folder, endpoint)
    return _protocol(endpoint).send(endpoint, items, on_sent)


def find_series(endpoint: Endpoint, study_uid: str) -> list[RemoteSeries]:
    """The series of ``study_uid`` on the PACS; a study it does not hold is a PacsError."""
    check_uid(study_uid, "--study")
    series = _protocol(endpoint).find_series(endpoint, study_uid)
    for listed in series:  # a series' UID names the folder it is fetched into
        if not UID_PATTERN.fullmatch(listed.uid) or len(listed.uid) > 64:
            raise PacsError(f"the PACS at {endpoint} listed a series of study {study_uid} whose UID "
                            f"{listed.uid[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    if not series:
        raise PacsError(f"the PACS at {endpoint} holds no study {study_uid} (or none of its series)")
    return series


def check_uid(uid: str, option: str) -> str:
    uid = str(uid or "").strip()
    if not UID_PATTERN.match(uid) or len(uid) > 64:
        raise InputError(f"{option} {uid!r}: not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def choose_series(series: Sequence[RemoteSeries], wanted: Sequence[str] | None, count: int,
                  modalities: Sequence[str], study_uid: str, endpoint: Endpoint) -> list[RemoteSeries]:
    """The ``count`` series a prediction reads: those named (each must be in the study), else the only
    image series of the model's modalities; an error listing the study's series otherwise."""
    listing = "; ".join(s.describe() for s in series)
    by_uid = {s.uid: s for s in series}
    if wanted:
        missing = [uid for uid in wanted if uid not in by_uid]
        if missing:
            raise PacsError(f"study {study_uid} on {endpoint} has no series {', '.join(missing)}; it holds: {listing}")
        if len(wanted) != count:
            raise InputError(f"--series given {len(wanted)} time(s); the model reads {count} image(s), one --series "
                             "each, in its order")
        return [by_uid[uid] for uid in wanted]
    images = [s for s in series if s.modality.upper() not in NOT_IMAGES
              and (not modalities or s.modality.upper() in {m.upper() for m in modalities})]
    if count == 1 and len(images) == 1:
        return images
    what = "/".join(modalities) or "image"
    if not images:
        raise PacsError(f"study {study_uid} on {endpoint} has no {what} series; it holds: {listing}")
    raise InputError(f"study {study_uid} on {endpoint} has {len(images)} {what} series and the model reads {count}; "
                     f"name them with --series UID (in the model's order): {listing}")


def fetch_series_to(endpoint: Endpoint, study_uid: str, series: RemoteSeries, folder: str | Path) -> Path:
    """Fetch one series into ``folder`` (one file per instance, written atomically); a folder that already
    holds the whole series (fetched earlier) is used as it is."""
    folder = Path(folder)
    record = folder / FETCHED_FILE
    if record.is_file():
        try:
            done = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            done = {}
        if done.get("series") == series.uid and len(list(folder.glob("*.dcm"))) == done.get("instances", -1):
            logger.info("series %s: fetched before (%s)", series.uid, folder)
            return folder
    folder.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)

    expected = series.instances if series.instances > 0 else MAX_SERIES_INSTANCES
    stored: set[str] = set()

    def store(dataset) -> None:
        uid = str(dataset.get("SOPInstanceUID", "") or "")
        if uid in stored:
            raise PacsError(f"the PACS at {endpoint} sent instance {uid} of series {series.uid} twice")
        if len(stored) >= expected:
            raise PacsError(f"the PACS at {endpoint} sent more instances of series {series.uid} than the "
                            f"{expected} {'it listed' if series.instances > 0 else 'read here'}")
        if str(dataset.get("StudyInstanceUID", "")) != study_uid or str(dataset.get("SeriesInstanceUID", "")) != series.uid:
            raise PacsError(f"the PACS at {endpoint} sent an instance of another study or series than "
                            f"{series.uid}; nothing of it is used")
        if not UID_PATTERN.fullmatch(uid):
            raise PacsError(f"the PACS at {endpoint} sent an instance without a valid SOP Instance UID")
        with atomic_path(folder / f"{uid}.dcm") as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
        stored.add(uid)

    count = _protocol(endpoint).fetch_series(endpoint, study_uid, series.uid, store)
    if count == 0:
        raise PacsError(f"the PACS at {endpoint} sent no instance of series {series.uid}")
    write_json_atomic(record, {"study": study_uid, "series": series.uid, "instances": count, "from": str(endpoint)})
    logger.info("series %s: %d instance(s) from %s → %s", series.uid, count, endpoint, folder)
    return folder


def fetch_study_series(endpoint: Endpoint, study_uid: str, series_uids: Sequence[str] | None, count: int,
                       modalities: Sequence[str], folder: str | Path) -> list[Path]:
    """The folders of the series a prediction reads (see :func:`choose_series`), fetched under ``folder``."""
    for uid in series_uids or []:
        check_uid(uid, "--series")
    chosen = choose_series(find_series(endpoint, study_uid), series_uids, count, modalities, study_uid, endpoint)
    return [fetch_series_to(endpoint, study_uid, s, Path(folder) / s.uid) for s in chosen]


def fetch_segmentation_series(endpoint: Endpoint, study_uid: str, series_uid: str, folder: str | Path,
                              option: str = "--segmentation pacs:") -> Path:
    """The DICOM SEG series ``series_uid`` of ``study_uid`` (e.g. a radiologist's tumour outlines, or a SEG this
    tool stored before) fetched into ``folder``; a series that is not there, or not a SEG, is one error."""
    check_uid(series_uid, option)
    series = find_series(endpoint, study_uid)
    (chosen,) = choose_series(series, [series_uid], 1, ["SEG"], study_uid, endpoint)
    if chosen.modality.upper() != "SEG":
        raise InputError(f"{option}{series_uid}: series {chosen.describe()} of study {study_uid} on {endpoint} is not "
                         "a DICOM SEG; name the study's segmentation series (tace-response pacs series lists them)")
    return fetch_series_to(endpoint, study_uid, chosen, folder)

