"""What an assessment writes and prints: ``assessment.json``, ``assessment.csv``, one overlay per target
lesion (and candidate new lesion) and visit, one viable segmentation per visit, and the summary lines.

Everything is computed before anything is written; each file is written atomically and
``assessment.json`` last, so a folder with an ``assessment.json`` is complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

from TACEResponseLib.assessment.criteria import CRITERIA, format_change
from TACEResponseLib.assessment.figures import lesion_overlay
from TACEResponseLib.assessment.series import SeriesAssessment, image_window, viable_segmentation
from TACEResponseLib.core.files import csv_text as spreadsheet_csv_text
from TACEResponseLib.core.files import safe_file_name, write_json_atomic, write_text_atomic
from TACEResponseLib.imaging.segmentation import write_segmentation

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("visit", "criterion", "category", "sum", "unit", "sum_sd", "baseline", "nadir", "nadir_visit",
               "change_from_baseline_pct", "change_from_baseline_sd_pct", "change_from_nadir_pct",
               "change_from_nadir_sd_pct", "near_threshold", "could_be", "new_lesion", "manual", "reason")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def csv_text(assessment: SeriesAssessment) -> str:
    """One row per follow-up and criterion (the responses), numbers as computed."""
    rows = []
    for visit in assessment.followups:
        for name, r in visit.responses.items():
            rows.append({
                "visit": visit.name, "criterion": name, "category": r.category, "sum": f"{r.total:.4f}", "unit": r.unit,
                "sum_sd": f"{r.total_sd:.4f}", "baseline": f"{r.baseline:.4f}", "nadir": f"{r.nadir:.4f}",
                "nadir_visit": r.nadir_visit, "change_from_baseline_pct": _pct(r.change_from_baseline),
                "change_from_baseline_sd_pct": _pct(r.change_from_baseline_sd),
                "change_from_nadir_pct": _pct(r.change_from_nadir), "change_from_nadir_sd_pct": _pct(r.change_from_nadir_sd),
                "near_threshold": int(r.near_threshold), "could_be": " ".join(r.could_be), "new_lesion": int(r.new_lesion),
                "manual": int(r.manual), "reason": r.reason})
    return spreadsheet_csv_text(CSV_COLUMNS, rows)


def response_text(r) -> str:
    """A response in a few words: its category and the change that decided it (from the nadir for PD)."""
    if r.new_lesion:
        detail = "new lesion marked"
    elif r.category == "PD" and r.change_from_nadir is not None:
        detail = f"{format_change(r.change_from_nadir, r.change_from_nadir_sd)} vs nadir at {r.nadir_visit}"
    elif r.category == "PD":
        detail = f"reappeared after 0 at {r.nadir_visit}"
    else:
        detail = f"{format_change(r.change_from_baseline, r.change_from_baseline_sd)} vs baseline"
    near = f"; near threshold, could be {'/'.join(r.could_be)}" if r.near_threshold else ""
    return f"{r.criterion} {r.category} ({detail}{near}{'; manual' if r.manual else ''})"


def summary_lines(assessment: SeriesAssessment) -> list[str]:
    """The response per criterion at each follow-up, with the flags a reader must look at."""
    lines = [f"target lesions: {', '.join(assessment.targets)}" + (" (SYNTHETIC)" if assessment.synthetic else "")]
    for visit in assessment.followups:
        lines.append(f"{visit.name}: " + "; ".join(response_text(visit.responses[name]) for name in CRITERIA))
        if visit.candidate_new_lesions:
            lines.append(f"  {visit.name}: lesion(s) matching no baseline lesion: {', '.join(visit.candidate_new_lesions)}"
                         + (" (a new lesion is marked at this visit)" if visit.new_lesion else
                            " — a new lesion? the radiologist's call (mark it to count it)"))
        if visit.missing_targets:
            lines.append(f"  {visit.name}: target(s) not found: {', '.join(visit.missing_targets)} (counted as 0)")
    return lines


def overlay_name(visit: str, lesion: str) -> str:
    return f"overlay_{safe_file_name(visit)}_{safe_file_name(lesion)}.png"


def write_assessment(assessment: SeriesAssessment, folder: str | Path, overlays: bool = True) -> dict[str, Path]:
    """Write the assessment into ``folder`` (module docstring); returns the files by kind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    figures: dict[str, list[str]] = {}
    for visit in assessment.visits:
        seg_path = folder / f"viable_{safe_file_name(visit.name)}.seg.nrrd"
        written[f"viable:{visit.name}"] = write_segmentation(viable_segmentation(visit), seg_path)
        if not overlays:
            continue
        window = image_window(visit.arterial)
        shown = [(t, assessment.target_at(visit, t), "target") for t in assessment.targets]
        shown += [(label, visit.lesion(label), "matches no baseline lesion") for label in visit.candidate_new_lesions]
        for name, lesion, role in shown:
            if lesion is None:
                continue
            label = name if lesion.label == name else f"{name} (here {lesion.label})"
            path = folder / overlay_name(visit.name, name)
            lesion_overlay(path, visit.arterial, window, lesion, visit.masks[lesion.label],
                           f"{visit.name} — {label}: {role}" + (" — SYNTHETIC" if assessment.synthetic else ""))
            figures.setdefault(visit.name, []).append(path.name)
            written[f"overlay:{visit.name}:{name}"] = path
    written["csv"] = write_text_atomic(folder / "assessment.csv", csv_text(assessment))
    record = assessment.to_dict()
    record["files"] = {"csv": "assessment.csv", "overlays": figures,
                       "viable_segmentations": {v.name: f"viable_{safe_file_name(v.name)}.seg.nrrd"
                                                for v in assessment.visits}}
    written["json"] = write_json_atomic(folder / "assessment.json", record)
    return written
