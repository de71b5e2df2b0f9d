"""Response assessment from baseline and follow-up images: ``assess`` (one patient) and ``cohort label``
(every patient of a visits manifest → the labels of a training manifest)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from TACEResponseLib.cli import pacs_commands
from TACEResponseLib.cli.common import Command, check_inputs_exist, number
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_folder, check_output_file, check_output_folder, relocated

logger = logging.getLogger(__name__)


def _options(args: argparse.Namespace):
    """The :class:`~TACEResponseLib.assessment.series.AssessmentOptions` the command line gives."""
    from TACEResponseLib.assessment.criteria import Uncertainty
    from TACEResponseLib.assessment.series import AssessmentOptions
    from TACEResponseLib.assessment.viable import ViableRule

    return AssessmentOptions(
        viable=ViableRule(margin_sd=args.margin_sd, oil_hu=args.oil_hu),
        uncertainty=Uncertainty(reader_sd_mm=args.reader_sd_mm, reader_volume_cv=args.reader_volume_cv),
        max_targets=args.max_targets, min_target_mm=args.min_target_mm, targets=tuple(args.target or ()),
        segments=tuple(args.segment or ()), register=not args.no_registration, modality=args.modality or "")


def synthetic_inputs(paths: list[str]) -> bool:
    """True when a SYNTHETIC phantom's ``*_visit.json`` beside an input lists it (the phantom's NRRD files
    cannot carry the mark themselves)."""
    wanted = {Path(p).resolve() for p in paths}
    for folder in {Path(p).resolve().parent for p in paths}:
        for info in sorted(folder.glob("*_visit.json"))[:100]:
            try:
                data = json.loads(info.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            listed = {Path(v).resolve() for v in (data.get("files") or {}).values() if isinstance(v, str)}
            if data.get("synthetic") and listed & wanted:
                return True
    return False


def read_visit(name: str, images: list[str], segmentation: str, new_lesion: bool = False, matches=None):
    """A :class:`~TACEResponseLib.assessment.series.Visit` from files: the arterial image, optionally the
    pre-contrast one, and the segmentation (read by the project's segmentation reader)."""
    from TACEResponseLib.assessment.series import Visit
    from TACEResponseLib.imaging.segmentation import read_segmentation
    from TACEResponseLib.imaging.volume_io import read_volume

    if not 1 <= len(images) <= 2:
        raise InputError(f"{name}: {len(images)} images given; give the arterial image, then optionally the "
                         "pre-contrast one")
    arterial = read_volume(images[0])
    precontrast = read_volume(images[1]) if len(images) > 1 else None
    if synthetic_inputs([*images, segmentation]):
        arterial.metadata["synthetic"] = True
    return Visit(name, arterial, read_segmentation(segmentation), precontrast, new_lesion, dict(matches or {}),
                 {"images": [str(p) for p in images], "segmentation": str(segmentation)})


def _matches(entries: list[str] | None, followups: int) -> dict[int, dict[str, str | None]]:
    """``--match N:BASELINE=FOLLOWUP`` → {visit number: {baseline lesion: follow-up lesion or None}}."""
    from TACEResponseLib.assessment.matching import parse_pairs

    found: dict[int, dict[str, str | None]] = {}
    for entry in entries or []:
        visit, colon, pair = entry.partition(":")
        if not (colon and visit.strip().isdigit()):
            raise InputError(f"--match {entry!r}: expected FOLLOWUP_NUMBER:BASELINE_LESION=FOLLOWUP_LESION "
                             "(e.g. 1:Tumour_1=Segment_3; an empty or 'none' follow-up lesion: not present)")
        n = int(visit)
        if not 1 <= n <= followups:
            raise InputError(f"--match {entry!r}: follow-up {n} does not exist ({followups} given)")
        found.setdefault(n, {}).update(parse_pairs(pair, f"--match {entry!r}"))
    return found


def cmd_assess(args: argparse.Namespace) -> int:
    """Assess the response of one patient: baseline and follow-ups → assessment.json, .csv, overlays."""
    from TACEResponseLib.assessment.outputs import summary_lines, write_assessment
    from TACEResponseLib.assessment.series import assess_series

    out = check_output_folder(args.output)
    followups = args.followup or []
    segmentations = args.followup_segmentation or []
    if len(followups) != len(segmentations):
        raise InputError(f"{len(followups)} --followup and {len(segmentations)} --followup-segmentation given; give "
                         "one segmentation per follow-up, in the same order")
    check_inputs_exist(baseline=args.baseline, baseline_segmentation=args.baseline_segmentation,
                       followup=[p for group in followups for p in group], followup_segmentation=segmentations)
    new = set(args.new_lesion or [])
    if any(n > len(followups) for n in new):
        raise InputError(f"--new-lesion {max(new)}: there are {len(followups)} follow-up(s)")
    pacs_commands.check_assess_options(args, [("--baseline", args.baseline[0])] + [
        (f"--followup {n}", images[0]) for n, images in enumerate(followups, start=1)])
    options = _options(args)
    matches = _matches(args.match, len(followups))
    visits = [read_visit("baseline", args.baseline, args.baseline_segmentation)]
    visits += [read_visit(f"followup{n}", images, segmentation, n in new, matches.get(n))
               for n, (images, segmentation) in enumerate(zip(followups, segmentations), start=1)]
    assessment = assess_series(visits, options)
    with atomic_folder(out, last=["assessment.json"]) as staging:  # all of it, or the folder as it was
        write_assessment(assessment, staging)
        dicom = pacs_commands.assess_results(args, assessment, staging)
    print("\n".join(summary_lines(assessment)))
    print(f"→ {out / 'assessment.json'}")
    if dicom is not None:
        dicom = relocated(dicom, staging, out) if dicom.is_relative_to(staging) else dicom
        print(f"DICOM results → {dicom}")
        pacs_commands.send_assess_results(args, dicom)
    return 0


def cmd_cohort_label(args: argparse.Namespace) -> int:
    """Assess every patient of a visits manifest and write the response labels into a training manifest."""
    from TACEResponseLib.assessment.labels import label_cohort
    from TACEResponseLib.assessment.outputs import write_assessment
    from TACEResponseLib.assessment.series import assess_series

    output = check_output_file(args.output)
    if args.work:
        check_output_folder(args.work, "--work")
    check_inputs_exist(manifest=args.manifest)
    options = _options(args)

    def assess(patient, folder):
        visits = [read_visit(v.name, [str(v.arterial)] + ([str(v.precontrast)] if v.precontrast else []),
                             str(v.segmentation), v.new_lesion) for v in patient.visits]
        assessment = assess_series(visits, options)
        if folder is not None:
            with atomic_folder(folder, last=["assessment.json"]) as staging:
                write_assessment(assessment, staging)
        return assessment.to_dict()

    done, failed = label_cohort(args.manifest, output, assess, args.criterion, args.response, args.work,
                                {"options": options.to_dict()}, say=print)
    print(f"{done} patient(s) labelled, {failed} failed → {output}"
          + (f" (failures: {output.with_name(output.name.rsplit('.', 1)[0] + '.failed.csv')})" if failed else ""))
    return 0 if failed == 0 else 1


def _assessment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", action="append", metavar="LESION",
                   help="a baseline target lesion (segment name or id, or 'NAME #N' for an island; repeatable; "
                        "default: the largest measurable enhancing lesions)")
    p.add_argument("--segment", action="append", metavar="SEGMENT",
                   help="a tumour segment of every visit (repeatable; default: every segment but liver and viable ones)")
    p.add_argument("--max-targets", type=number(int, 1, 10), default=2,
                   help="most target lesions (mRECIST: 2 intrahepatic; default 2)")
    p.add_argument("--min-target-mm", type=number(float, 0, 200), default=10.0,
                   help="smallest target lesion: longest axial and viable diameters in mm (default 10)")
    p.add_argument("--reader-sd-mm", type=number(float, 0, 50), default=2.0,
                   help="assumed inter-reader SD of a diameter (mm) for the near-threshold flag (default 2.0)")
    p.add_argument("--reader-volume-cv", type=number(float, 0, 2), default=0.10,
                   help="assumed inter-reader coefficient of variation of a volume (default 0.10)")
    p.add_argument("--margin-sd", type=number(float, 0, 20), default=2.0,
                   help="viable: enhancement above the surrounding liver by more than this many of its robust SDs "
                        "(default 2)")
    p.add_argument("--oil-hu", type=number(float, 100, 3000), default=300.0,
                   help="CT: voxels at least this dense (HU) on the pre-contrast image are iodised oil (default 300)")
    p.add_argument("--modality", choices=["CT", "MR"], default=None,
                   help="default: CT when the image holds values below -150 (HU), else MR (no oil exclusion)")
    p.add_argument("--no-registration", action="store_true",
                   help="the visits are already registered: match lesions without moving the follow-ups")


def _assess_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", nargs="+", required=True, metavar="IMG",
                   help="baseline arterial-phase image, then optionally its pre-contrast image (NRRD, NIfTI, DICOM folder)")
    p.add_argument("--baseline-segmentation", required=True, metavar="SEG",
                   help="baseline tumour segmentation (.seg.nrrd, labelmap)")
    p.add_argument("--followup", nargs="+", action="append", metavar="IMG",
                   help="a follow-up's arterial image, then optionally its pre-contrast image; repeat for later visits")
    p.add_argument("--followup-segmentation", action="append", metavar="SEG",
                   help="the follow-up's tumour segmentation; one per --followup, in the same order")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder for assessment.json, assessment.csv, overlays and viable segmentations")
    p.add_argument("--new-lesion", type=number(int, 1, 100), action="append", metavar="N",
                   help="a new lesion was seen at follow-up N (the radiologist's call): PD (repeatable)")
    p.add_argument("--match", action="append", metavar="N:BASELINE=FOLLOWUP",
                   help="at follow-up N, baseline lesion BASELINE is follow-up lesion FOLLOWUP (empty: not present); "
                        "overrides the matching by overlap (repeatable)")
    _assessment_options(p)
    pacs_commands.assess_pacs_arguments(p)


def _cohort_label_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True,
                   help="visits CSV: patient_id, visit ('baseline' or a follow-up name), arterial, segmentation "
                        "[, precontrast, new_lesion, other baseline columns]")
    p.add_argument("--output", required=True, help="the training manifest to write (CSV)")
    p.add_argument("--criterion", choices=["mRECIST", "RECIST 1.1", "EASL", "volumetric"], default="mRECIST",
                   help="the criterion that gives the label (default mRECIST)")
    p.add_argument("--response", choices=["first", "best"], default="first",
                   help="the label: the response at the first follow-up, or the best over all (default first)")
    p.add_argument("--work", default=None, metavar="DIR",
                   help="keep each patient's assessment here (reused when its inputs have not changed)")
    _assessment_options(p)


COMMANDS = [
    Command("assess", cmd_assess, _assess_args,
            "response from baseline and follow-up: mRECIST, RECIST 1.1, EASL, volumetric", task="cases"),
    Command("label", cmd_cohort_label, _cohort_label_args,
            "assess every patient of a visits manifest; write response labels into a training manifest",
            group="cohort"),
]
