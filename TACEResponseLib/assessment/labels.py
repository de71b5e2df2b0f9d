"""Response labels for a training cohort, assessed from each patient's visits (``tace-response cohort label``).

The visits manifest (CSV) has one row per visit: ``patient_id``, ``visit`` (``baseline`` for the
pre-treatment visit; any name for the others), ``arterial`` (the image the tumours are measured on),
``segmentation``, and optionally ``precontrast``, ``new_lesion`` (1/yes/true: the radiologist saw a new
lesion at that visit) and more image columns of the baseline visit (e.g. ``portal``: the inputs of a
model trained on the result). Follow-ups are taken in the order of their rows. Relative paths are relative
to the manifest's folder.

The training manifest written has one row per patient whose assessment succeeded, in the format
:func:`~TACEResponseLib.imaging.manifest.read_manifest` reads: ``case_id``, the baseline's image columns,
``segmentation``, ``segment`` (the first target lesion's segment), ``label`` (the response by
``criterion`` at the ``first`` follow-up, or the ``best`` response over all of them), and each label's
measurements and flags (change from baseline and its SD, change from the nadir, near threshold, new lesion
marked, candidate new lesions, the other criteria's categories). Patients whose assessment failed are
listed with the reason in ``<name>.failed.csv`` beside it. With a work folder, each patient's full
assessment (JSON, overlays, viable segmentations) is kept there and reused when its inputs have not changed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from TACEResponseLib.assessment.criteria import CRITERIA
from TACEResponseLib.core.errors import InputError, TACEResponseError
from TACEResponseLib.core.files import content_fingerprint, safe_file_name, write_csv_atomic, write_text_atomic
from TACEResponseLib.imaging.manifest import read_manifest_rows

logger = logging.getLogger(__name__)

REQUIRED = ("patient_id", "visit", "arterial", "segmentation")
VISIT_ONLY = ("patient_id", "visit", "arterial", "precontrast", "segmentation", "new_lesion", "segment")
TRUE_WORDS = ("1", "yes", "true", "y")
#: best response order (best first)
BEST_FIRST = ("CR", "PR", "SD", "PD")


@dataclass
class VisitRow:
    name: str
    arterial: Path
    segmentation: Path
    precontrast: Path | None = None
    new_lesion: bool = False
    line: int = 0
    extra: dict[str, str | Path] = field(default_factory=dict)


@dataclass
class PatientVisits:
    patient_id: str
    visits: list[VisitRow]

    @property
    def paths(self) -> list[Path | None]:
        return [p for v in self.visits for p in (v.arterial, v.precontrast, v.segmentation)]


def _resolve(base: Path, text: str) -> Path:
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else base / path


def read_visits(path: str | os.PathLike) -> list[PatientVisits]:
    """The patients of a visits manifest, each with its baseline first; one InputError lists every problem."""
    path = Path(path)
    rows = read_manifest_rows(path, REQUIRED, "visits manifest")
    columns = list(rows[0])
    problems: list[str] = []
    patients: dict[str, list[VisitRow]] = {}
    for line, raw in enumerate(rows, start=2):
        get = lambda c: (raw.get(c) or "").strip()  # noqa: E731
        pid, name = get("patient_id"), get("visit")
        row_problems = [f"{c} is blank" for c in REQUIRED if not get(c)]
        files = {c: _resolve(path.parent, get(c)) for c in ("arterial", "segmentation", "precontrast") if get(c)}
        row_problems += [f"{c} {p} does not exist" for c, p in files.items() if not p.exists()]
        if row_problems:
            problems.append(f"line {line} ({pid or 'no patient id'}): " + "; ".join(row_problems))
            continue
        extra: dict[str, str | Path] = {}
        for column in columns:  # further columns (other phases, clinical values): files resolved, the rest as is
            if column not in VISIT_ONLY and get(column):
                resolved = _resolve(path.parent, get(column))
                extra[column] = resolved if resolved.is_file() or resolved.is_dir() else get(column)
        patients.setdefault(pid, []).append(VisitRow(name, files["arterial"], files["segmentation"],
                                                     files.get("precontrast"), get("new_lesion").lower() in TRUE_WORDS,
                                                     line, extra))
    out = []
    for pid, visits in patients.items():
        baselines = [v for v in visits if v.name.lower() == "baseline"]
        names = [v.name for v in visits]
        if len(baselines) != 1:
            problems.append(f"patient {pid}: {len(baselines)} rows with visit 'baseline' (lines "
                            f"{', '.join(str(v.line) for v in visits)}); exactly one is needed")
        elif len(visits) < 2:
            problems.append(f"patient {pid}: no follow-up visit (line {visits[0].line})")
        elif len(set(names)) != len(names):
            problems.append(f"patient {pid}: visit names repeat ({', '.join(names)})")
        else:
            out.append(PatientVisits(pid, baselines + [v for v in visits if v is not baselines[0]]))
    if problems:
        raise InputError(f"{path}: {len(problems)} problem(s); fix them and run again:\n  " + "\n  ".join(problems[:50]))
    return out


def label_from(record: dict, criterion: str, which: str) -> tuple[str, str, dict]:
    """``(label, visit, response)`` from an assessment record: the response by ``criterion`` at the first
    follow-up, or the best one (CR > PR > SD > PD; the earliest visit on a tie)."""
    followups = record["visits"][1:]
    if which == "first":
        chosen = followups[0]
    else:
        chosen = min(followups, key=lambda v: BEST_FIRST.index(v["responses"][criterion]["category"]))
    response = chosen["responses"][criterion]
    return response["category"], chosen["name"], response


def _relative(path: Path, folder: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # another drive
        return str(path.resolve())


def training_row(patient: PatientVisits, record: dict, criterion: str, which: str, folder: Path) -> dict[str, str]:
    """One row of the training manifest for a patient (module docstring)."""
    label, visit_name, response = label_from(record, criterion, which)
    visit = next(v for v in record["visits"] if v["name"] == visit_name)
    baseline = patient.visits[0]
    target = record["targets"][0]
    segment = next(m["segment_id"] for m in record["visits"][0]["lesions"] if m["label"] == target)

    def pct(value):
        return "" if value is None else f"{100 * value:.2f}"

    row = {"case_id": patient.patient_id, "arterial": _relative(baseline.arterial, folder)}
    row.update({k: _relative(v, folder) if isinstance(v, Path) else v for k, v in baseline.extra.items()})
    row.update({"segmentation": _relative(baseline.segmentation, folder), "segment": segment, "label": label,
                "label_criterion": criterion, "label_visit": visit_name,
                "change_from_baseline_pct": pct(response["change_from_baseline"]),
                "change_from_baseline_sd_pct": pct(response["change_from_baseline_sd"]),
                "change_from_nadir_pct": pct(response["change_from_nadir"]),
                "near_threshold": str(int(response["near_threshold"])), "could_be": " ".join(response["could_be"]),
                "new_lesion": str(int(visit["new_lesion"])),
                "candidate_new_lesions": " ".join(visit["candidate_new_lesions"]),
                "targets": " ".join(record["targets"])})
    for name in CRITERIA:
        if name != criterion:
            row[f"{safe_file_name(name).lower().replace('.', '')}_label"] = visit["responses"][name]["category"]
    return row


def label_cohort(manifest: str | os.PathLike, output: str | os.PathLike, assess: Callable[[PatientVisits, Path | None], dict],
                 criterion: str = "mRECIST", which: str = "first", work: str | os.PathLike | None = None,
                 fingerprint_extra: dict | None = None, say: Callable[[str], None] = logger.info) -> tuple[int, int]:
    """Assess every patient of a visits manifest and write the training manifest ``output`` (module
    docstring). ``assess(patient, folder)`` returns the assessment record (folder: where to keep its files,
    or None). Returns (labelled, failed)."""
    if criterion not in CRITERIA:
        raise InputError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if which not in ("first", "best"):
        raise InputError(f"which response must be 'first' or 'best', got {which!r}")
    patients = read_visits(manifest)
    output = Path(output)
    rows, failed = [], []
    for number, patient in enumerate(patients, start=1):
        folder = Path(work) / safe_file_name(patient.patient_id) if work else None
        fingerprint = content_fingerprint(patient.paths, {"visits": [(v.name, v.new_lesion) for v in patient.visits],
                                                          **(fingerprint_extra or {})})
        record = _reuse(folder, fingerprint)
        try:
            if record is None:
                record = assess(patient, folder)
                if folder is not None:
                    record_path = folder / "assessment.json"
                    stored = json.loads(record_path.read_text(encoding="utf-8"))
                    stored["inputs_fingerprint"] = fingerprint
                    write_text_atomic(record_path, json.dumps(stored, indent=2) + "\n")
            row = training_row(patient, record, criterion, which, output.parent)
        except TACEResponseError as exc:
            failed.append({"case_id": patient.patient_id, "error": str(exc).replace("\n", " ")})
            say(f"[{number}/{len(patients)}] {patient.patient_id}: failed — {exc}")
            continue
        rows.append(row)
        say(f"[{number}/{len(patients)}] {patient.patient_id}: {row['label']} ({criterion} at {row['label_visit']}"
            + (", near threshold" if row["near_threshold"] == "1" else "") + ")")
    _write_rows(output, rows)
    failures = output.with_name(output.name.rsplit(".", 1)[0] + ".failed.csv")
    if failed:
        _write_rows(failures, failed)
    elif failures.exists():
        failures.unlink()
    return len(rows), len(failed)


def _reuse(folder: Path | None, fingerprint: str) -> dict | None:
    if folder is None or not (folder / "assessment.json").is_file():
        return None
    try:
        record = json.loads((folder / "assessment.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("inputs_fingerprint") == fingerprint else None


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    write_csv_atomic(path, columns or ["case_id"], rows)

