"""Cohort manifests (CSV): read, resolve and validate every row before any work starts.

Columns: ``case_id``, one column per image phase/sequence (named like the model's inputs,
e.g. ``arterial``; the first is the reference), ``segmentation`` (``.seg.nrrd``, labelmap, or a DICOM
SEG file or folder), optional ``segment`` (id, name, or for a DICOM SEG number, label or code; blank →
the segmentation's first segment, or every tumour segment of a DICOM SEG), ``label``
(response class; required for training and evaluation), one column per clinical factor, and
optionally a second reader's ``segmentation_2`` / ``segment_2`` (for the ICC of deep features).
Relative paths are relative to the manifest's own folder, so a cohort folder can be moved.

:func:`read_manifest` checks *everything* — columns, blank or duplicate case ids, missing
files, unknown labels, segments that are missing or empty (each segmentation is read), and
clinical values that are missing or not finite numbers — and raises **one**
:class:`~TACEResponseLib.core.errors.InputError` that lists every bad row (by its line in the
CSV), so a user fixes the whole manifest in one go instead of one error per run.

Cases written by :mod:`TACEResponseLib.imaging.phantoms` carry a ``<case_id>_case.json`` with
``"synthetic": true`` beside their images; :attr:`ManifestRow.synthetic` reports it so a
model trained on them is marked synthetic automatically.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError, TACEResponseError

logger = logging.getLogger(__name__)

#: mRECIST response classes (the default label set)
MRECIST_CLASSES = ("CR", "PR", "SD", "PD")
RESERVED_COLUMNS = ("case_id", "segmentation", "segment", "label")
MAX_LISTED_PROBLEMS = 50


@dataclass
class ManifestRow:
    """One case of a manifest with absolute paths and checked values."""

    case_id: str
    images: list[Path]
    segmentation: Path
    segment: str | None
    label: str | None
    clinical: dict[str, float] = field(default_factory=dict)
    line: int = 0                  # line in the CSV (header = line 1)
    synthetic: bool = False        # a phantom's case.json says so
    phases: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # filled when read with strict=False
    segmentation_2: Path | None = None   # a second reader's segmentation (optional column)
    segment_2: str | None = None

    @property
    def image_by_phase(self) -> dict[str, Path]:
        return dict(zip(self.phases, self.images))


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


def _case_is_synthetic(row: ManifestRow) -> bool:
    """A phantom writes ``<case_id>_case.json`` with ``"synthetic": true`` beside its images."""
    for folder in dict.fromkeys([p.parent for p in row.images] + [row.segmentation.parent]):
        info = folder / f"{row.case_id}_case.json"
        if info.parent != folder:  # a case id naming another folder ("../x") is no phantom's
            return False
        if info.is_file() and info.stat().st_size < 1 << 20:
            try:
                return bool(json.loads(info.read_text(encoding="utf-8")).get("synthetic", False))
            except (OSError, json.JSONDecodeError):
                return False
    return False


def _check_segment(row: ManifestRow) -> str | None:
    """Problem with the row's segment (missing, empty), or None; reads the segmentation."""
    from TACEResponseLib.imaging.segmentation import read_segmentation

    try:
        segmentation = read_segmentation(row.segmentation)
    except TACEResponseError as exc:
        return str(exc)
    if not segmentation.segments:
        return f"segmentation {row.segmentation.name} has no segments"
    try:
        seg = segmentation.metadata.get("kind") == "dicom-seg"  # blank: every tumour segment, else the first segment
        keys = [row.segment] if row.segment else segmentation.default_segment_ids()[:None if seg else 1]
        found = [segmentation.find(key) for key in keys]
    except InputError as exc:
        return str(exc)
    drawn = [s for s in found if np.any(segmentation.layers[s.layer] == s.label_value)]
    if not drawn:
        return f"segment {', '.join(repr(k) for k in keys[:3])} of {row.segmentation.name} is empty (no voxel drawn)"
    if row.segment is None and not seg:
        row.segment = found[0].id  # a DICOM SEG's blank stays blank: every tumour segment
    references = segmentation.metadata.get("referenced_instances")
    if seg and references:  # a folder of several series / stacked acquisitions: the one the SEG was drawn on
        from TACEResponseLib.imaging.dicom import image_for_references

        row.images = [Path(image_for_references(image, references)) for image in row.images]
    return None


def read_manifest(
    path: str | os.PathLike,
    phases: Sequence[str],
    require_label: bool = True,
    clinical: Sequence[str] = (),
    class_names: Sequence[str] = MRECIST_CLASSES,
    check_segments: bool = True,
    strict: bool = True,
) -> list[ManifestRow]:
    """Rows of the manifest at ``path``, validated; one InputError lists every bad row.

    ``phases`` are the image columns in the model's channel order; ``clinical`` the numeric
    clinical columns the model needs. With ``require_label`` every row needs a label from
    ``class_names``; without it a label, when given, must still be one of them. With
    ``check_segments`` each segmentation is read to check that its segment exists and is not
    empty (a blank ``segment`` becomes the first segment's id). With ``strict=False`` (batch
    prediction, where one bad case must not stop the others) each row's problems are returned
    in :attr:`ManifestRow.problems` instead of raised; missing columns still raise.
    """
    phases = list(phases)
    if not phases:
        raise InputError("read_manifest: at least one image phase column is needed")
    path = Path(path)
    needed = ["case_id", *phases, "segmentation", *(["label"] if require_label else []), *clinical]
    raw_rows = read_manifest_rows(path, needed)
    rows: list[ManifestRow] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for offset, raw in enumerate(raw_rows):
        row = _row(raw, offset + 2, path.parent, phases, list(clinical), require_label, class_names, first_line)
        if check_segments and row.segmentation.exists() and str(row.segmentation) not in ("", "."):
            problem = _check_segment(row)
            if problem:
                row.problems.append(problem)
        if row.problems:
            problems.append(f"line {row.line} ({row.case_id or 'no case id'}): " + "; ".join(row.problems))
        rows.append(row)
    if problems and strict:
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        raise InputError(
            f"{path}: {len(problems)} of {len(raw_rows)} row(s) are unusable; fix them and run again:\n  "
            + "\n  ".join(shown) + (f"\n  … and {more} more" if more else "")
        )
    for row in rows:
        row.synthetic = _case_is_synthetic(row)
    logger.info("%s: %d valid case(s)", path, len(rows))
    return rows


def read_manifest_rows(path: Path, needed: Sequence[str], what: str = "manifest") -> list[dict[str, str]]:
    """A CSV manifest's rows as dicts (header names stripped, BOM ignored); a missing file, a missing
    column or no rows raise an InputError naming ``what`` (e.g. "visits manifest")."""
    if not path.is_file():
        raise InputError(f"{path}: {what} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            raw_rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot be read as a CSV {what} ({exc})") from None
    missing_columns = [c for c in needed if c not in columns]
    if missing_columns:
        raise InputError(f"{path}: {what} lacks column(s) {missing_columns}; it has {columns}")
    if not raw_rows:
        raise InputError(f"{path}: {what} has no rows")
    return raw_rows


def _row(raw: dict[str, str], line: int, base: Path, phases: list[str], clinical: list[str], require_label: bool,
         class_names: Sequence[str], first_line: dict[str, int]) -> ManifestRow:
    """One row with absolute paths and checked values; its problems (files, labels, numbers) are listed on it."""
    def get(column: str) -> str:
        return (raw.get(column) or "").strip()

    problems: list[str] = []
    case_id = get("case_id")
    if not case_id:
        problems.append("case_id is blank")
    elif case_id in first_line:
        problems.append(f"duplicate case id {case_id!r} (first on line {first_line[case_id]})")
    else:
        first_line[case_id] = line
    images = [_existing(base, get(phase), f"{phase} image", problems) for phase in phases]
    segmentation = _existing(base, get("segmentation"), "segmentation", problems)
    label = get("label") or None
    if label is None and require_label:
        problems.append("label is blank")
    elif label is not None and label not in class_names:
        problems.append(f"unknown label {label!r} (expected one of {', '.join(class_names)})")
    values: dict[str, float] = {}
    for name in clinical:
        if get(name):
            values[name] = _clinical_number(name, get(name), problems)
        else:
            problems.append(f"clinical value {name!r} is missing")
    second = _existing(base, get("segmentation_2"), "segmentation_2", problems) if get("segmentation_2") else None
    return ManifestRow(case_id, images, segmentation, get("segment") or None, label, values, line,
                       phases=list(phases), problems=problems, segmentation_2=second,
                       segment_2=get("segment_2") or None)


def _existing(base: Path, value: str, what: str, problems: list[str]) -> Path:
    """``value`` resolved against the manifest's folder; a blank or missing path is added to ``problems``."""
    if not value:
        problems.append(f"{what} path is blank")
        return Path()
    path = _resolve(base, value)
    if not path.exists() and "#" in path.name and Path(str(path).rsplit("#", 1)[0]).is_dir():
        return path  # FOLDER#SERIES[@ACQUISITION]: one series of a DICOM folder
    if not path.exists():
        problems.append(f"{what} {path} does not exist")
    return path


def _clinical_number(name: str, text: str, problems: list[str]) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        problems.append(f"clinical value {name!r} = {text!r} is not a finite number")
    return number


def class_counts(rows: Sequence[ManifestRow], class_names: Sequence[str]) -> dict[str, int]:
    """Number of rows per label, in ``class_names`` order."""
    return {name: sum(1 for row in rows if row.label == name) for name in class_names}
