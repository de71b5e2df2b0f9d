"""Import of the public WAW-TACE collection (Zenodo record 12741586, CC BY 4.0; 233 patients) into a manifest.

What the collection holds, from its Zenodo file list and public code that reads it: a clinical
workbook ``clinical_data_wawtace_v2_15_07_2024.xlsx`` keyed by ``PATPRI`` with ``survival_time``
(days) and ``death``, laboratory values (``lab_afp``, ``lab_alt``, ``lab_albumin``, ``lab_bilirubin``,
``lab_inr``, ``lab_creatinine``), ``age`` and ``gender_woman``; multiphase CT scans and per-phase
tumour masks as NRRD, named ``<PATPRI>_<phase>_…`` with phase 0 non-contrast, 1 arterial, 2 portal
venous, 3 delayed (``7_1_0_tumor_seg.nrrd``: patient 7, arterial, lesion 0). Its response labels
are LI-RADS treatment response (LR-TR viable / equivocal / nonviable), not mRECIST: they become the
``responder`` task's labels (nonviable → responder, viable → non-responder, equivocal → no label),
and the report says so. The exact name of that column is not fixed here (``--response-column``;
by default the one whose name says "response" or "LI-RADS").

Each patient's lesion masks of the reference phase (arterial when there is one) are put onto that
phase's CT grid and written as one ``.seg.nrrd`` per patient (one segment per lesion) under
``OUT/segmentations``; the output folder is written as one group.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import check_output_folder
from TACEResponseLib.core.tables import read_table
from TACEResponseLib.imaging.cohort_import import (
    ImportReport,
    PatientOutcome,
    columns_of,
    import_folder,
    link_inside,
    relative_to,
    write_import,
)
from TACEResponseLib.imaging.segmentation import (
    LIVER_TUMOUR_TERMINOLOGY,
    Segmentation,
    read_segmentation,
    segment_mask_on,
    write_segmentation,
)

logger = logging.getLogger(__name__)

COLLECTION = "WAW-TACE"
PHASES = {"0": "noncontrast", "1": "arterial", "2": "portal", "3": "delayed"}
REFERENCE_ORDER = ("1", "2", "3", "0")
NAME = re.compile(r"^(\d+)_([0-3])(?:_(\d+))?_?(.*?)\.(nrrd|nhdr|nii|nii\.gz|mha)$", re.I)
MASK_WORDS = ("seg", "mask", "label")
ID_COLUMNS = ("PATPRI", "patient_id", "ID")
RESPONSE_WORDS = ("response", "lirads", "li-rads", "lr_tr", "lr-tr")
NUMERIC_COLUMNS = ("survival_time", "death", "age", "gender_woman", "lab_afp", "lab_alt", "lab_albumin",
                   "lab_bilirubin", "lab_inr", "lab_creatinine")
CLINICAL = {"AFP": "lab_afp", "ALT": "lab_alt", "albumin": "lab_albumin", "bilirubin": "lab_bilirubin",
            "INR": "lab_inr", "creatinine": "lab_creatinine", "age": "age", "female": "gender_woman"}


def response_label(value: Any) -> str:
    """``responder`` / ``non-responder`` from a LI-RADS treatment-response reading ('' when equivocal or blank)."""
    text = re.sub(r"[^a-z]", "", str(value or "").lower())
    if not text or text == "nan" or "equivocal" in text:
        return ""
    if "nonviable" in text or text in ("r", "responder", "response", "cr", "pr"):
        return "responder"
    if "viable" in text or text in ("nr", "nonresponder", "noresponse", "sd", "pd"):
        return "non-responder"
    return ""


def _files(source: Path) -> tuple[dict[str, dict[str, dict[str, list[Path]]]], dict[str, list[Path]]]:
    """patient → {"scans" | "masks": {phase code: [files]}} of every image file named <id>_<phase>_…, and
    patient → the links among them to files outside ``source`` (not read: see :func:`.link_inside`)."""
    found: dict[str, dict[str, dict[str, list[Path]]]] = {}
    outside: dict[str, list[Path]] = {}
    root = Path(os.path.realpath(source))
    for path in sorted(source.rglob("*")):
        match = NAME.match(path.name)
        if not match or not path.is_file():
            continue
        patient, phase, _, rest, _ = match.groups()
        if not all(link_inside(Path(*path.parts[:n]), root) for n in range(len(source.parts) + 1, len(path.parts) + 1)):
            outside.setdefault(str(int(patient)), []).append(path)
            continue
        kind = "masks" if any(word in rest.lower() for word in MASK_WORDS) else "scans"
        found.setdefault(str(int(patient)), {"scans": {}, "masks": {}})[kind].setdefault(phase, []).append(path)
    return found, outside


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def import_waw_tace(source: str | Path, output: str | Path, clinical: str | Path | None = None, *,
                    sheet: str | None = None, response_column: str | None = None, time_unit: str = "days") -> ImportReport:
    """Turn an unpacked WAW-TACE collection into ``OUT/manifest.csv``, ``OUT/survival.csv``,
    ``OUT/segmentations/<id>.seg.nrrd`` and the import report."""
    from TACEResponseLib.imaging.volume_io import read_volume

    started = time.perf_counter()
    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise InputError(f"{source}: the collection's folder does not exist")
    check_output_folder(output)
    clinical = clinical or next(iter(sorted(source.rglob("clinical_data_wawtace*.xlsx"))), None)
    if clinical is None:
        raise InputError(f"{source}: no clinical workbook (clinical_data_wawtace_*.xlsx) found; give it with --clinical")
    table = read_table(clinical, what="clinical workbook", sheet=sheet, numeric=NUMERIC_COLUMNS)
    id_column = next((c for c in ID_COLUMNS if c in table.columns), None)
    if id_column is None:
        raise InputError(f"clinical workbook {clinical}: lacks a patient column ({', '.join(ID_COLUMNS)}); it has "
                         f"{', '.join(map(str, table.columns[:20]))}")
    if response_column is None:
        response_column = next((c for c in table.columns if any(w in c.lower() for w in RESPONSE_WORDS)), None)
    elif response_column not in table.columns:
        raise InputError(f"clinical workbook {clinical}: no column {response_column!r}; it has "
                         f"{', '.join(map(str, table.columns[:30]))}")
    table.index = [str(int(v)) if not math.isnan(_number(v)) else str(v).strip() for v in table[id_column]]
    with import_folder(output) as staging:  # all or nothing: a failed import leaves no half folder
        files, linked_out = _files(source)
        if files:
            (staging / "segmentations").mkdir(parents=True, exist_ok=True)
        outcomes, manifest_rows, survival_rows = [], [], []
        for patient in sorted(set(files) | set(linked_out) | set(table.index), key=lambda p: (len(p), p)):
            outcome = PatientOutcome(patient)
            outcomes.append(outcome)
            if patient in linked_out:
                shown = ", ".join(str(p.relative_to(source)) for p in linked_out[patient][:3])
                outcome.notes.append(f"{len(linked_out[patient])} link(s) to files outside {source} not read ({shown}); "
                                     "copy what they point to into the collection's folder")
            data = files.get(patient)
            if not data or not data["scans"]:
                outcome.exclude("no CT scan of this patient in the source")
                continue
            reference = next((p for p in REFERENCE_ORDER if p in data["masks"] and p in data["scans"]), None)
            if reference is None:
                outcome.exclude("no tumour mask on a phase with a scan")
                continue
            try:
                image = read_volume(data["scans"][reference][0])
                masks = {}
                for n, mask_path in enumerate(sorted(data["masks"][reference]), start=1):
                    lesion = read_segmentation(mask_path)
                    placed = np.zeros(image.shape_kji, bool)
                    for segment in lesion.segments:
                        placed |= segment_mask_on(lesion, segment.id, image).array > 0
                    masks[f"Tumour {n}"] = placed
                segmentation = Segmentation.from_masks(image, masks, name=patient, terminology=LIVER_TUMOUR_TERMINOLOGY)
                write_segmentation(segmentation, staging / "segmentations" / f"{patient}.seg.nrrd")
            except InputError as exc:
                outcome.exclude(f"unreadable scan or mask: {exc}")
                continue
            outcome.image = relative_to(data["scans"][reference][0], output)
            outcome.segmentation = f"segmentations/{patient}.seg.nrrd"
            outcome.acquisition = PHASES[reference]
            outcome.phase_images = {PHASES[p]: relative_to(paths[0], output) for p, paths in sorted(data["scans"].items())}
            if len(masks) > 1:
                outcome.notes.append(f"{len(masks)} lesion masks, one segment each")
            if patient not in table.index:
                outcome.exclude("not in the clinical workbook")
                continue
            row = table.loc[patient]
            raw = row.get(response_column) if response_column else None
            outcome.label = response_label(raw)
            if raw is not None:
                outcome.readings = {"LI-RADS TR": str(raw)}
            values = {f"os_{time_unit}": _number(row.get("survival_time")), "death": _number(row.get("death")),
                      **{name: _number(row.get(column)) for name, column in CLINICAL.items()}}
            has_survival = np.isfinite(values[f"os_{time_unit}"]) and values["death"] in (0.0, 1.0)
            base = {"case_id": patient, **outcome.phase_images, "segmentation": outcome.segmentation, "segment": ""}
            if outcome.label:
                outcome.status = "used"
                manifest_rows.append({**base, "label": outcome.label, **values})
            elif has_survival:
                outcome.status, outcome.reason = "survival only", "no usable treatment-response reading"
            else:
                outcome.exclude("no treatment-response reading and no survival")
            if has_survival:
                survival_rows.append({**base, "label": outcome.label, **values})
        report = ImportReport(
            COLLECTION, str(source), str(output),
            {"clinical": str(clinical), "response column": response_column or "(none found)",
             "reference phase": "arterial where it has a mask and a scan, else portal, delayed, non-contrast",
             "survival unit": time_unit},
            outcomes, bytes_read=0,
            mapping={"case_id": id_column, "label": f"{response_column}: LI-RADS treatment response (nonviable → "
                     "responder, viable → non-responder, equivocal → no label)", f"os_{time_unit}": "survival_time",
                     "death": "death", **{k: v for k, v in CLINICAL.items()}},
            missing=[f"{name}: no such column in the workbook" for name in ("BCLC", "Child_Pugh", "tumour_size")
                     if not any(name.lower().replace("_", "") in str(c).lower().replace("_", "") for c in table.columns)],
            notes=["labels are LI-RADS treatment response, not mRECIST: train with --task responder",
                   "survival times are the workbook's survival_time in days (as the collection describes it)"])
        write_import(staging, manifest_rows, columns_of(manifest_rows, ["case_id", "segmentation", "segment", "label"]),
                         survival_rows, columns_of(survival_rows, ["case_id", f"os_{time_unit}", "death"]), report,
                         started)
    return report
