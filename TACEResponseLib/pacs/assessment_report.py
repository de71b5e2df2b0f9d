"""A response assessment (``assess``) as DICOM: per visit, in that visit's own study, what the radiologist
reads in the PACS beside the images it was measured on.

For each visit (baseline and every follow-up), written by :func:`~.export.write_findings` into
``DIR/<visit>/`` (same folder layout, ``dicom.json``, UIDs from the content, atomic):

- **SEG** on the visit's arterial series: each target lesion as found at that visit (SNOMED CT Mass in
  Liver) and, when it has one, its viable (arterially enhancing) part — a segment of its own, the Mass
  modified by the local code "Viable (arterially enhancing) part". The same lesion keeps one Tracking UID
  in every visit's SEG and report (derived from the baseline series and the target's name), so a viewer
  can follow it from visit to visit.
- **TID 1500 report**: per target lesion (TID 1411, referring to its SEG segment, at its time point, TID
  1502: baseline or posttreatment, in visit order) the longest axial diameter of the whole tumour
  (SNOMED CT *Long axis*, method RECIST 1.1), the longest axial viable diameter (*Long axis*, method
  mRECIST viable tumour), the viable perpendicular diameter (*Perpendicular Axis*, method EASL), the
  tumour and viable volumes, all with UCUM units; at baseline its category *Target Lesion at Baseline*.
  Per criterion (TID 1501, the criterion as method and as *Response Evaluation Method*: RECIST 1.1 is
  DCM 126081, mRECIST, EASL and volumetric are local codes) the sum over the targets with its SD, and at a
  follow-up the baseline and nadir sums, the changes from baseline and nadir (%, with SD), the *Current
  Response* coded with CID 6144 (Target Lesion CR / PR / SD / PD), the near-threshold flag (yes / no) with
  the categories it could be, and why. Document comments: research use only (SYNTHETIC when it is), what
  the tool does not decide, the uncertainty assumed, the candidate new lesions, targets not found.
- **Secondary captures**: the caliper overlays of that visit (``overlay_<visit>_<lesion>.png`` of the
  assessment's folder), the research-use caveat burned in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import safe_file_name
from TACEResponseLib.imaging.geometry import in_grid
from TACEResponseLib.pacs import codes
from TACEResponseLib.pacs.export import DicomResults, Finding, software_version, write_findings
from TACEResponseLib.pacs.images import RESEARCH_ONLY, Identity
from TACEResponseLib.pacs.report import ReportGroup

logger = logging.getLogger(__name__)

ASSESSMENT_NAME = "Response assessment"
#: the local concepts of an assessment (DICOM has no code for them)
VIABLE_PART = ("VIABLE", "Viable (arterially enhancing) part")
VIABLE_METHOD = ("MRECIST-VIABLE", "Viable tumour, arterial phase (mRECIST)")
EASL_METHOD = ("EASL-VIABLE", "Viable tumour, perpendicular to the longest (EASL)")
LOCAL_CRITERIA = {"mRECIST": codes.MRECIST_NAME,
                  "EASL": ("EASL", "EASL (viable tumour, bidimensional)"),
                  "volumetric": ("VOLUMETRIC", "Volumetric (enhancing tumour volume, qEASL)")}
SUM_NAME = ("SUM", "Sum over the target lesions")
BASELINE_SUM_NAME = ("SUM-BASELINE", "Sum over the target lesions at baseline")
NADIR_SUM_NAME = ("SUM-NADIR", "Sum over the target lesions at the nadir")
CHANGE_BASELINE_NAME = ("CHANGE-BASELINE", "Change of the sum from baseline")
CHANGE_NADIR_NAME = ("CHANGE-NADIR", "Change of the sum from the nadir")
NEAR_THRESHOLD_NAME = ("NEAR-THRESHOLD", "Category could change within the measurement uncertainty")
COULD_BE_NAME = ("COULD-BE", "Categories within the measurement uncertainty")
REASON_NAME = ("REASON", "Why this category")


def criterion_code(name: str):
    """CID 6147 "Response Criteria" where DICOM has the criterion (RECIST 1.1), else a local code."""
    if name == "RECIST 1.1":
        return codes.standard("DCM.RECIST1Point1")
    value, meaning = LOCAL_CRITERIA.get(name, (name.upper(), name))
    return codes.local(value, meaning)


def sum_unit(unit: str):
    """A criterion's unit (``mm``, ``mm²``, ``ml``) as its UCUM code."""
    return {"mm": codes.standard("UCUM.Millimeter"), "mm²": codes.standard("UCUM.SquareMillimeter"),
            "ml": codes.unit("ml")}[unit]


def assessment_identity(assessment) -> Identity:
    """Who made the objects: the assessment (no model), this software's version, SYNTHETIC when it is."""
    version = software_version()
    caveat = RESEARCH_ONLY + (" - SYNTHETIC phantom, not a patient" if assessment.synthetic else "")
    return Identity(ASSESSMENT_NAME, codes.dicom_text(version), "", version, bool(assessment.synthetic), caveat,
                    model=False)


def target_tracking_uid(baseline_series_uid: str, target: str, part: str = "") -> str:
    """One Tracking UID per target lesion (and its viable part) for every visit: from the baseline series and
    the target's name."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["tace-response assessment target", baseline_series_uid, target, part])


def _time_point(assessment, visit) -> tuple[str, Any, int]:
    order = assessment.visits.index(visit) + 1
    kind = codes.standard("cid6146.Baseline" if visit is assessment.baseline else "cid6146.Posttreatment")
    return visit.name, kind, order


def _lesion_group(assessment, visit, target: str, lesion) -> ReportGroup:
    """A target lesion at ``visit``: its diameters and volumes (TID 1411; segment and tracking set later)."""
    mm, ml = codes.standard("UCUM.Millimeter"), codes.unit("ml")
    long_axis, perpendicular, volume = (codes.standard("SCT.LongAxis"), codes.standard("SCT.PerpendicularAxis"),
                                        codes.standard("SCT.Volume"))
    viable = codes.local(*VIABLE_METHOD)
    label = target if lesion.label == target else f"{target} (here {lesion.label})"
    group = ReportGroup(label=label, tracking_uid="", time_point=_time_point(assessment, visit))
    group.measurements = [
        (long_axis, lesion.whole.length_mm, mm, None, codes.standard("DCM.RECIST1Point1")),
        (long_axis, lesion.viable_diameter_mm, mm, None, viable),
        (perpendicular, lesion.viable.perpendicular_mm, mm, None, codes.local(*EASL_METHOD)),
        (volume, lesion.volume_ml, ml, None),
        (volume, lesion.viable_tumour.viable_ml, ml, None, viable),
    ]
    if visit is assessment.baseline:
        group.evaluations.append((codes.standard("DCM.BaselineCategory"), codes.standard("DCM.TargetLesionAtBaseline")))
    note = codes.local(*codes.NOTE_NAME)
    tumour = lesion.viable_tumour
    group.texts.append((note, f"viable tumour {tumour.source}: {tumour.method}"))
    if lesion.manual_viable is not None:
        group.texts.append((note, f"viable diameter measured by hand: {lesion.manual_viable.length_mm:.1f} mm"))
    if not lesion.enhancing:
        group.texts.append((note, "no arterially enhancing (viable) tumour"))
    if visit.matching is not None:  # how, not the registration's numbers (in assessment.json): a rerun whose
        match = next((m for m in visit.matching.matches if m.baseline == target), None)  # registration moved a
        if match is not None:  # little gives the same instances
            group.texts.append((note, f"{lesion.label} matched to baseline {target} by {match.source}"))
    return group


def _criterion_groups(assessment, visit) -> list[ReportGroup]:
    """Per criterion: the sums and, at a follow-up, the response with its changes and flags (TID 1501)."""
    from TACEResponseLib.assessment.criteria import CRITERIA

    percent, sd = codes.standard("UCUM.Percent"), codes.standard("SCT.StandardDeviation")
    groups = []
    for name, criterion in CRITERIA.items():
        method = criterion_code(name)
        unit = sum_unit(criterion.unit)
        group = ReportGroup(label=f"{name} response"[:64], tracking_uid="", method=method,
                            time_point=_time_point(assessment, visit))
        group.evaluations.append((codes.standard("DCM.ResponseEvaluationMethod"), method))
        response = visit.responses.get(name)
        if response is None:  # baseline: the sum every follow-up's response starts from
            start = assessment.followups[0].responses[name]
            group.measurements = [(codes.local(*SUM_NAME), start.baseline, unit, None)]
            groups.append(group)
            continue
        group.evaluations += [(codes.standard("DCM.CurrentResponse"), codes.response_code(response.category)),
                              (codes.local(*NEAR_THRESHOLD_NAME), codes.yes_no(response.near_threshold))]
        group.measurements = [(codes.local(*SUM_NAME), response.total, unit, None),
                              (codes.local(*SUM_NAME), response.total_sd, unit, sd),
                              (codes.local(*BASELINE_SUM_NAME), response.baseline, unit, None),
                              (codes.local(*NADIR_SUM_NAME), response.nadir, unit, None)]
        for concept, change, spread in ((CHANGE_BASELINE_NAME, response.change_from_baseline,
                                         response.change_from_baseline_sd),
                                        (CHANGE_NADIR_NAME, response.change_from_nadir, response.change_from_nadir_sd)):
            if change is not None:
                group.measurements.append((codes.local(*concept), 100.0 * change, percent, None))
            if spread is not None:
                group.measurements.append((codes.local(*concept), 100.0 * spread, percent, sd))
        group.texts.append((codes.local(*REASON_NAME), response.reason))
        if response.could_be:
            group.texts.append((codes.local(*COULD_BE_NAME), ", ".join(response.could_be)))
        note = codes.local(*codes.NOTE_NAME)
        group.texts.append((note, f"nadir at {response.nadir_visit}"))
        if response.new_lesion:
            group.texts.append((note, "a new lesion was marked at this visit by the user"))
        if response.manual:
            group.texts.append((note, "a viable diameter measured by hand is in the sum"))
        groups.append(group)
    return groups


def _comments(assessment, visit) -> list[str]:
    u = assessment.options.uncertainty
    comments = [f"Target lesions: {', '.join(assessment.targets)} (chosen at baseline)",
                f"Near threshold: 95 % interval, assumed reader SD {u.reader_sd_mm:g} mm per diameter and volume "
                f"CV {u.reader_volume_cv:g}", *assessment.not_decided]
    if visit.new_lesion:
        comments.append(f"{visit.name}: a new lesion was marked by the user (PD by every criterion)")
    if visit.candidate_new_lesions:
        comments.append(f"{visit.name}: lesion(s) matching no baseline lesion: {', '.join(visit.candidate_new_lesions)}"
                        " - a new lesion? the radiologist's call")
    if visit.missing_targets:
        comments.append(f"{visit.name}: target(s) not found: {', '.join(visit.missing_targets)} (counted as 0)")
    return comments


def visit_findings(assessment, visit, baseline_series_uid: str) -> list[Finding]:
    """Each target lesion found at ``visit`` (its mask on the visit's arterial grid, its measurement group),
    followed by its viable part when it has one (a segment without a group of its own)."""
    findings = []
    reference = visit.arterial
    for target in assessment.targets:
        lesion = assessment.target_at(visit, target)
        if lesion is None:
            continue
        mask = in_grid(visit.masks[lesion.label], reference) > 0
        findings.append(Finding(target if lesion.label == target else f"{target} (here {lesion.label})", mask,
                                _lesion_group(assessment, visit, target, lesion), lesion.segment_name,
                                tracking_uid=target_tracking_uid(baseline_series_uid, target)))
        viable = lesion.viable_tumour.mask
        if viable is not None and lesion.enhancing:
            findings.append(Finding(f"{target} viable", in_grid(viable, reference) > 0, None, lesion.segment_name,
                                    type_modifier=codes.local(*VIABLE_PART),
                                    tracking_uid=target_tracking_uid(baseline_series_uid, target, "viable")))
    return findings


def visit_overlays(assessment, visit, folder: str | Path | None) -> list[Path]:
    """The caliper overlays ``write_assessment`` drew for ``visit`` in ``folder`` (targets, then candidates)."""
    from TACEResponseLib.assessment.outputs import overlay_name

    if folder is None:
        return []
    names = [t for t in assessment.targets if assessment.target_at(visit, t) is not None]
    names += list(visit.candidate_new_lesions)
    paths = [Path(folder) / overlay_name(visit.name, name) for name in names]
    return [p for p in paths if p.is_file()]


def visit_source(visit) -> str:
    """The DICOM series a visit's arterial image was read from (what its objects refer to)."""
    images = list(visit.sources.get("images") or [])
    if not images:
        raise InputError(f"{visit.name}: no arterial image file recorded; DICOM results need the DICOM series it "
                         "was read from")
    return str(images[0])


def write_assessment_dicom(assessment, output_dir: str | Path, overlays: str | Path | None = None,
                           sources: Mapping[str, str | Path | Sequence[str | Path]] | None = None
                           ) -> dict[str, DicomResults]:
    """Every visit's DICOM objects (module docstring) into ``output_dir/<visit>``; ``overlays``: the
    assessment's folder (its overlay PNGs become the secondary captures); ``sources``: each visit's DICOM
    series when not the arterial image it was read from."""
    from TACEResponseLib.pacs.source import read_source_series

    output = Path(output_dir)
    sources = dict(sources or {})
    baseline = assessment.baseline
    baseline_series = read_source_series(sources.get(baseline.name) or visit_source(baseline), baseline.arterial)
    identity = assessment_identity(assessment)
    rule = assessment.options.viable
    method = f"viable: > liver + {rule.margin_sd:g} SD, oil >= {rule.oil_hu:g} HU"
    written = {}
    output.mkdir(parents=True, exist_ok=True)
    for visit in assessment.visits:  # each visit's folder complete (dicom.json last) or as it was
        findings = visit_findings(assessment, visit, baseline_series.series_uid)
        written[visit.name] = write_findings(
            findings, visit.arterial, sources.get(visit.name) or visit_source(visit),
            output / safe_file_name(visit.name), identity, case_id=visit.name, method=method,
            patient=_criterion_groups(assessment, visit), comments=_comments(assessment, visit),
            captures=visit_overlays(assessment, visit, overlays))
    return written

