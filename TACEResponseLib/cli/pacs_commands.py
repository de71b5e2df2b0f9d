"""The ``pacs`` group (``pacs send``, ``pacs series``) and the PACS / DICOM options of ``predict`` and ``batch``.

- ``--dicom-out DIR``: the prediction's DICOM SEG, parametric map, TID 1500 report and secondary
  captures (:mod:`TACEResponseLib.pacs.export`), beside the usual files; DICOM input only.
- ``--pacs URL|AET@HOST:PORT`` with ``--study UID`` (``predict``): the images are fetched from the PACS
  (WADO-RS or C-GET); ``batch --pacs`` reads ``STUDY_UID`` or ``STUDY_UID/SERIES_UID`` in the
  manifest's image columns. The tumours may be a DICOM SEG series of the study: ``--segmentation
  pacs:SERIES_UID`` (``predict``), a ``segmentation`` cell ``pacs:SERIES_UID`` (``batch``).
- ``--send-results``: the DICOM results are sent back to the same PACS.
- ``--credentials FILE`` (or ``$TACE_PACS_USER``/``$TACE_PACS_PASSWORD``, ``$TACE_PACS_TOKEN``),
  ``--calling-aet``, ``--pacs-timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from TACEResponseLib.cli.common import Command, number
from TACEResponseLib.core.errors import InputError

logger = logging.getLogger(__name__)

DICOM_FOLDER = "dicom"  # --send-results without --dicom-out: the results go to OUTPUT/dicom
#: ``--segmentation pacs:SERIES_UID``: a DICOM SEG series of the --study, fetched with the images
SEG_FROM_PACS = "pacs:"


#: libraries whose INFO lines (each module copied, each request made) are noise on a terminal without -v
CHATTY_LOGGERS = ("highdicom", "dicomweb_client", "pynetdicom")


def quiet_libraries(args: argparse.Namespace) -> None:
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if getattr(args, "verbose", False) else logging.WARNING)


# --- options ----------------------------------------------------------------------------------------
def connection_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--credentials", default=None, metavar="FILE",
                   help='JSON file {"username": …, "password": …} or {"token": …} for the PACS (default: '
                        "$TACE_PACS_USER and $TACE_PACS_PASSWORD, or $TACE_PACS_TOKEN; never on the command line)")
    p.add_argument("--calling-aet", default="TACERESPONSE", metavar="AET",
                   help="our AE title towards a DIMSE PACS (default: TACERESPONSE)")
    p.add_argument("--pacs-timeout", type=number(float, 0, 3600, low_open=True), default=30.0, metavar="S",
                   help="seconds to wait for the PACS to connect or answer (default: 30)")


def case_pacs_arguments(p: argparse.ArgumentParser, batch: bool = False) -> None:
    """``--dicom-out``, ``--pacs`` (+ ``--study``/``--series`` for one case), ``--send-results`` and the
    connection options."""
    group = p.add_argument_group("DICOM results and PACS")
    group.add_argument("--dicom-out", default=None, metavar="DIR",
                       help="also write the results as DICOM (SEG of the tumours used, heatmap as parametric map, "
                            "TID 1500 report, secondary captures) into DIR" + ("/CASE_ID" if batch else "")
                            + "; the reference images must be DICOM")
    if not batch:
        group.add_argument("--dicom-source", action="append", default=None, metavar="PATH",
                           help="the DICOM series the reference image was read from, when --image is not it (e.g. "
                                "a volume saved as NRRD): its folder, or its files (repeatable)")
    group.add_argument("--pacs", default=None, metavar="URL|AET@HOST:PORT",
                       help="read the images from this PACS (DICOMweb URL, or DIMSE peer)"
                            + (": the manifest's image columns hold STUDY_UID or STUDY_UID/SERIES_UID, its "
                               "segmentation column a file or pacs:SERIES_UID (a DICOM SEG series of the case's study)"
                               if batch
                               else " instead of --image"))
    if not batch:
        group.add_argument("--study", default=None, metavar="UID", help="Study Instance UID to read from --pacs")
        group.add_argument("--series", action="append", default=None, metavar="UID",
                           help="Series Instance UID of each model input, in the model's order (repeatable; default: "
                                "the study's one series of the model's modality)")
    group.add_argument("--send-results", action="store_true",
                       help="send the DICOM results to the --pacs PACS (into --dicom-out, else OUTPUT/dicom"
                            + ("/CASE_ID" if batch else "") + ")")
    connection_arguments(group)


def endpoint_from(args: argparse.Namespace, option: str = "--pacs", text: str | None = None):
    """The :class:`~TACEResponseLib.pacs.endpoint.Endpoint` the options name (credentials read now)."""
    from TACEResponseLib.pacs.endpoint import parse_endpoint, read_credentials

    return parse_endpoint(text if text is not None else getattr(args, "pacs", None), option,
                          credentials=read_credentials(getattr(args, "credentials", None)),
                          calling_aet=args.calling_aet, timeout_s=args.pacs_timeout)


def check_case_options(args: argparse.Namespace, images: Sequence[str] | None) -> None:
    """Before any work: the option combinations, the PACS address and credentials, the DICOM output
    folder, and that local reference images are DICOM when DICOM results are asked for."""
    from TACEResponseLib.core.files import check_output_folder

    quiet_libraries(args)
    if args.send_results and not args.pacs:
        raise InputError("--send-results: no PACS to send to; give --pacs URL|AET@HOST:PORT")
    if args.pacs:
        endpoint_from(args)
        if hasattr(args, "study") and images:
            raise InputError("--image and --pacs both given; the images come from one place")
        if hasattr(args, "study") and not args.study:
            raise InputError("--pacs: give the study to read with --study STUDY_INSTANCE_UID")
    elif getattr(args, "study", None) or getattr(args, "series", None):
        raise InputError("--study/--series name what to read from a PACS; give --pacs too")
    if hasattr(args, "study") and not args.pacs and not images:
        raise InputError("no image given: --image PATH (or --pacs with --study)")
    if str(getattr(args, "segmentation", "") or "").startswith(SEG_FROM_PACS):
        if not args.pacs or not hasattr(args, "study"):
            raise InputError(f"--segmentation {args.segmentation}: a SEG series is read from the PACS of --pacs and "
                             "--study")
        from TACEResponseLib.pacs.transfer import check_uid

        check_uid(args.segmentation[len(SEG_FROM_PACS):], "--segmentation pacs:")
    if getattr(args, "dicom_source", None) and dicom_folder(args, ".") is None:
        raise InputError("--dicom-source names the DICOM series the results refer to; give --dicom-out too")
    if dicom_folder(args, ".") is not None:
        from TACEResponseLib.pacs.source import check_dicom_reference, check_dicom_writer

        check_dicom_writer()
        if args.dicom_out is not None:
            check_output_folder(args.dicom_out, "--dicom-out")
        source = getattr(args, "dicom_source", None) or (images[:1] if images else None)
        if source:
            check_dicom_reference(source)


def check_batch_references(args: argparse.Namespace, manifest: str, bundle) -> None:
    """With DICOM results asked for: every case's reference image is DICOM (its first file looked at),
    before any case runs; the first that is not is the one error."""
    from TACEResponseLib.pacs.source import check_dicom_reference
    from TACEResponseLib.prediction.batch import read_batch_manifest

    cases = read_batch_manifest(manifest, [p.name for p in bundle.card.inputs],
                                [c.name for c in bundle.card.clinical_factors])
    for case in cases:
        if not case.problems:
            try:
                check_dicom_reference(case.images[0], quick=True)
            except InputError as exc:
                raise InputError(f"{manifest}, case {case.case_id}: {exc}") from None


def segmentation_from_pacs(args: argparse.Namespace) -> bool:
    """``--segmentation pacs:SERIES_UID``: the tumours are a DICOM SEG series of the study on the PACS."""
    return str(getattr(args, "segmentation", "") or "").startswith(SEG_FROM_PACS)


def dicom_folder(args: argparse.Namespace, output: str | Path) -> Path | None:
    """Where the DICOM results go: ``--dicom-out``, else ``OUTPUT/dicom`` when they are to be sent."""
    if args.dicom_out is not None:
        return Path(args.dicom_out)
    return Path(output) / DICOM_FOLDER if args.send_results else None


# --- predict ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def case_images(args: argparse.Namespace, bundle) -> Iterator[list[str]]:
    """The images of one case: ``--image`` as given, or the study's series fetched from ``--pacs`` into a
    temporary folder (removed afterwards)."""
    if not args.pacs:
        if not args.image:
            raise InputError("no image given: --image PATH (or --pacs with --study)")
        yield list(args.image)
        return
    from TACEResponseLib.pacs.transfer import fetch_segmentation_series, fetch_study_series

    endpoint = endpoint_from(args)
    inputs = bundle.card.inputs
    with tempfile.TemporaryDirectory(prefix="tace-pacs-") as folder:
        folders = fetch_study_series(endpoint, args.study, args.series, len(inputs),
                                     sorted({p.modality for p in inputs if p.modality}), folder)
        if str(args.segmentation).startswith(SEG_FROM_PACS):  # the study's DICOM SEG as the tumours
            uid = str(args.segmentation)[len(SEG_FROM_PACS):]
            args.segmentation = str(fetch_segmentation_series(endpoint, args.study, uid, Path(folder) / "segmentation"))
        print(f"fetched {len(folders)} series of study {args.study} from {endpoint}")
        yield [str(f) for f in folders]


def case_results(args: argparse.Namespace, result, images: Sequence[str], output: str | Path) -> None:
    """``--dicom-out`` / ``--send-results`` after a prediction: write the DICOM objects, send them."""
    folder = dicom_folder(args, output)
    if folder is None:
        return
    from TACEResponseLib.pacs.export import write_dicom_results

    written = write_dicom_results(result, images[0], args.segmentation, args.dicom_source or images[0], folder)
    print(f"{written.summary()} → {folder}")
    if args.send_results:
        send_or_fail(folder, endpoint_from(args))


def send_or_fail(folder: Path, endpoint) -> None:
    """Send ``folder`` and say so; a send that did not complete is the one error of the command."""
    from TACEResponseLib.pacs.endpoint import PacsError
    from TACEResponseLib.pacs.transfer import send_folder

    outcome = send_folder(folder, endpoint)
    if not outcome.complete:
        raise PacsError(outcome.summary())
    print(outcome.summary())


# --- batch ------------------------------------------------------------------------------------------
def _pacs_segmentations(manifest: str | Path) -> list[tuple[str, str]]:
    """``(case id, cell)`` of the manifest's ``pacs:`` segmentation cells (none when it cannot be read as CSV:
    the batch's own reader then says what is wrong with it)."""
    from TACEResponseLib.imaging.manifest import read_manifest_rows

    try:
        rows = read_manifest_rows(Path(manifest), ())
    except InputError:
        return []
    return [(row.get("case_id") or "", (row.get("segmentation") or "").strip()) for row in rows
            if (row.get("segmentation") or "").strip().startswith(SEG_FROM_PACS)]


def batch_manifest(args: argparse.Namespace, bundle, output: Path) -> str:
    """The manifest ``batch`` runs: as given, or with ``--pacs`` a copy under OUTPUT whose image cells
    (``STUDY_UID`` or ``STUDY_UID/SERIES_UID``) are replaced by the series fetched into
    ``OUTPUT/pacs-images/CASE/PHASE``, and whose ``pacs:SERIES_UID`` segmentation cells (a DICOM SEG series of
    the case's study: its reference image's) by that series fetched into ``OUTPUT/pacs-images/CASE/segmentation``
    (kept: a rerun fetches nothing again)."""
    if not args.pacs:
        found = _pacs_segmentations(args.manifest)
        if found:
            case, cell = found[0]
            raise InputError(f"{args.manifest}, case {case}: segmentation {cell} is a SEG series on a PACS; give "
                             "--pacs (the images' studies are read from it too)")
        return args.manifest
    from TACEResponseLib.core.files import atomic_path, safe_file_name
    from TACEResponseLib.pacs.transfer import fetch_segmentation_series, fetch_study_series

    endpoint = endpoint_from(args)
    manifest = Path(args.manifest)
    phases = [p.name for p in bundle.card.inputs]
    modalities = sorted({p.modality for p in bundle.card.inputs if p.modality})
    from TACEResponseLib.imaging.manifest import read_manifest_rows

    try:
        rows = read_manifest_rows(manifest, phases)
    except InputError as exc:
        raise InputError(f"{exc}; with --pacs each of {', '.join(phases)} holds STUDY_UID or STUDY_UID/SERIES_UID") \
            from None
    columns = [c for c in rows[0] if c is not None]  # None: the cells of a row longer than the header
    from TACEResponseLib.pacs.transfer import check_uid

    for case, cell in _pacs_segmentations(manifest):  # before anything connects
        check_uid(cell[len(SEG_FROM_PACS):], f"{manifest}, case {case}: segmentation pacs:")
    output.mkdir(parents=True, exist_ok=True)
    for row in rows:
        case = safe_file_name(row.get("case_id") or "case")
        studies = []
        for phase in phases:
            study, _, series = (row.get(phase) or "").strip().partition("/")
            if not study:
                continue  # the batch reports the empty cell for this case
            (folder,) = fetch_study_series(endpoint, study, [series] if series else None, 1, modalities,
                                           output / "pacs-images" / case / phase)
            row[phase] = str(folder)
            studies.append(study)
        segmentation = (row.get("segmentation") or "").strip()
        if segmentation.startswith(SEG_FROM_PACS) and studies:  # the tumours: a SEG series of the reference's study
            row["segmentation"] = str(fetch_segmentation_series(
                endpoint, studies[0], segmentation[len(SEG_FROM_PACS):], output / "pacs-images" / case / "segmentation",
                f"{manifest}, case {row.get('case_id')}: segmentation pacs:"))
        elif segmentation and not segmentation.startswith(SEG_FROM_PACS) and not Path(segmentation).is_absolute():
            row["segmentation"] = str((manifest.parent / segmentation).resolve())
    local = output / "pacs-manifest.csv"
    with atomic_path(local) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    print(f"fetched the images of {len(rows)} case(s) from {endpoint} → {output / 'pacs-images'}")
    return str(local)


def batch_results(args: argparse.Namespace, manifest: str, bundle, output: Path) -> int:
    """``--dicom-out`` / ``--send-results`` after a batch: each predicted case's DICOM objects in
    ``DIR/CASE_ID`` (cases written before with the same result are left as they are), then sent.
    Returns the number of cases whose DICOM results failed (each said on one line)."""
    folder = dicom_folder(args, output)
    if folder is None:
        return 0
    from TACEResponseLib.core.errors import TACEResponseError
    from TACEResponseLib.core.files import safe_file_name
    from TACEResponseLib.pacs.export import write_case_dicom
    from TACEResponseLib.prediction.batch import case_dir, read_batch_manifest
    from TACEResponseLib.prediction.case import read_result

    cases = read_batch_manifest(manifest, [p.name for p in bundle.card.inputs],
                                [c.name for c in bundle.card.clinical_factors])
    endpoint = endpoint_from(args) if args.send_results else None
    folder.mkdir(parents=True, exist_ok=True)
    written = failed = 0
    for case in cases:
        if case.problems or read_result(case_dir(output, case.case_id)) is None:
            continue
        target = folder / safe_file_name(case.case_id)
        stage = "written"
        try:
            write_case_dicom(case_dir(output, case.case_id), case.images, case.segmentation, target)
            stage = "sent"
            if endpoint is not None:
                send_or_fail(target, endpoint)
            written += 1
        except TACEResponseError as exc:
            failed += 1
            print(f"case {case.case_id}: DICOM results not {stage}: {exc}")
    print(f"DICOM results of {written} case(s) → {folder}" + (f"; {failed} case(s) failed" if failed else ""))
    return failed


# --- assess -----------------------------------------------------------------------------------------
def assess_pacs_arguments(p: argparse.ArgumentParser) -> None:
    """``assess``'s ``--dicom-out``, ``--send-results`` with ``--to``, and the connection options."""
    group = p.add_argument_group("DICOM results and PACS")
    group.add_argument("--dicom-out", default=None, metavar="DIR",
                       help="also write each visit's results as DICOM into DIR/VISIT, in that visit's study: SEG of the "
                            "target lesions and their viable parts, TID 1500 report of the measurements and responses, "
                            "secondary captures of the overlays; the arterial images must be DICOM")
    group.add_argument("--send-results", action="store_true",
                       help="send the DICOM results to the PACS of --to (into --dicom-out, else OUTPUT/dicom)")
    group.add_argument("--to", default=None, metavar="URL|AET@HOST:PORT",
                       help="the PACS to send the results to: a DICOMweb URL (STOW-RS) or a DIMSE peer (C-STORE)")
    connection_arguments(group)


def check_assess_options(args: argparse.Namespace, arterial: Sequence[tuple[str, str]]) -> None:
    """Before any work: ``--send-results`` with ``--to`` (the PACS and its credentials), the DICOM output folder,
    and every visit's arterial image DICOM with the identifiers results refer to. ``arterial``: (option, path)."""
    from TACEResponseLib.core.files import check_output_folder

    quiet_libraries(args)
    if args.send_results and not args.to:
        raise InputError("--send-results: no PACS to send to; give --to URL|AET@HOST:PORT")
    if args.to and not args.send_results:
        raise InputError("--to names the PACS --send-results sends to; give --send-results too")
    if args.send_results:
        endpoint_from(args, "--to", args.to)
    if dicom_folder(args, ".") is None:
        return
    from TACEResponseLib.pacs.source import check_dicom_reference, check_dicom_writer

    check_dicom_writer()
    if args.dicom_out is not None:
        check_output_folder(args.dicom_out, "--dicom-out")
    for option, path in arterial:
        try:
            check_dicom_reference(path)
        except InputError as exc:
            raise InputError(f"{option} {path}: {exc}") from None


def assess_results(args: argparse.Namespace, assessment, staging: Path) -> Path | None:
    """``--dicom-out`` / ``--send-results`` of ``assess``: each visit's DICOM objects, written while the
    assessment's folder is staged (``staging``: its overlays become the secondary captures; without
    --dicom-out the objects go into it, under ``dicom``). Returns the folder written, or None."""
    folder = Path(args.dicom_out) if args.dicom_out is not None else (staging / DICOM_FOLDER if args.send_results
                                                                       else None)
    if folder is None:
        return None
    from TACEResponseLib.pacs.assessment_report import write_assessment_dicom

    written = write_assessment_dicom(assessment, folder, overlays=staging)
    for visit, index in written.items():
        print(f"{visit}: {index.summary()}")
    return folder


def send_assess_results(args: argparse.Namespace, folder: Path | None) -> None:
    if args.send_results and folder is not None:
        send_or_fail(folder, endpoint_from(args, "--to", args.to))


# --- the pacs group ---------------------------------------------------------------------------------
def cmd_send(args: argparse.Namespace) -> int:
    """Send a folder of DICOM files (e.g. ``--dicom-out``'s) to a PACS; only what it confirmed is reported."""
    from TACEResponseLib.pacs.transfer import dicom_files

    quiet_libraries(args)
    endpoint = endpoint_from(args, "--to", args.to)
    dicom_files(args.folder)  # a folder without DICOM files is refused before connecting
    send_or_fail(Path(args.folder), endpoint)
    return 0


def cmd_series(args: argparse.Namespace) -> int:
    """List the series of a study on a PACS (to choose ``--series``)."""
    from TACEResponseLib.pacs.transfer import find_series

    quiet_libraries(args)
    endpoint = endpoint_from(args)
    for series in find_series(endpoint, args.study):
        print(f"{series.uid}\t{series.modality}\t{series.instances}\t{series.description}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """The DICOM results of a prediction made earlier (its folder: result.json and heatmap.nrrd)."""
    from TACEResponseLib.cli.common import check_inputs_exist
    from TACEResponseLib.pacs.export import write_case_dicom
    from TACEResponseLib.pacs.source import check_dicom_reference, check_dicom_writer

    quiet_libraries(args)
    check_inputs_exist(result=args.result, image=args.image, segmentation=args.segmentation,
                       dicom_source=args.dicom_source)
    check_dicom_writer()
    endpoint = endpoint_from(args, "--to", args.to) if args.to else None
    check_dicom_reference(args.dicom_source or args.image)
    written = write_case_dicom(args.result, [args.image], args.segmentation, args.output,
                               source=args.dicom_source or None)
    print(f"{written.summary()} → {args.output}")
    if endpoint is not None:
        send_or_fail(Path(args.output), endpoint)
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("result", metavar="RESULT_DIR", help="a prediction's folder (result.json and heatmap.nrrd)")
    p.add_argument("--image", required=True, metavar="PATH", help="the reference image the prediction ran on")
    p.add_argument("--segmentation", required=True, metavar="PATH", help="the segmentation it used")
    p.add_argument("--dicom-source", action="append", default=None, metavar="PATH",
                   help="the reference's DICOM series when --image is not it (folder, or files; repeatable)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the DICOM objects")
    p.add_argument("--to", default=None, metavar="URL|AET@HOST:PORT", help="also send them to this PACS")
    connection_arguments(p)


def _send_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="folder of DICOM files (any depth), e.g. what --dicom-out wrote")
    p.add_argument("--to", required=True, metavar="URL|AET@HOST:PORT",
                   help="the PACS: a DICOMweb URL (STOW-RS), or a DIMSE peer's AE title, host and port (C-STORE)")
    connection_arguments(p)


def _series_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pacs", required=True, metavar="URL|AET@HOST:PORT", help="the PACS (DICOMweb URL or DIMSE peer)")
    p.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    connection_arguments(p)


COMMANDS = [
    Command("export", cmd_export, _export_args,
            "write a finished prediction as DICOM (SEG, parametric map, TID 1500 report, secondary captures)",
            group="pacs"),
    Command("send", cmd_send, _send_args, "send a folder of DICOM files to a PACS (STOW-RS or C-STORE)",
            group="pacs"),
    Command("series", cmd_series, _series_args, "list a study's series on a PACS (QIDO-RS or C-FIND)",
            group="pacs"),
]
