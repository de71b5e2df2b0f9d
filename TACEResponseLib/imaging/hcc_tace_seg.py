"""Import of the public HCC-TACE-Seg collection (TCIA / IDC, CC BY 4.0; 105 patients) into a manifest.

What the collection holds (checked against IDC's series index, which the ``idc-index-data`` wheel
ships, and public code that reads the collection): per patient a pre-TACE and a post-TACE CT
study; in the first (pre-TACE) study one radiologist SEG described "Segmentation" (series number
300; segments such as Liver, Mass, Portal vein, Abdominal aorta, sometimes Necrosis); IDC also
holds AI SEGs ("AIMI liver-tumor … segmentation"), which are not ground truth and are skipped
unless asked for. Multi-phase CT series often stack several contrast acquisitions at the same
positions (split by AcquisitionNumber here, :mod:`.dicom`). The clinical workbook
``HCC-TACE-Seg_clinical_data-V2.xlsx`` (sheet "data table" in V2) keys patients by ``TCIA_ID``,
codes each reader's response as ``1_mRECIST`` … ``3_mRECIST`` (1 CR, 2 PR, 3 SD, 4 PD), and gives
overall survival ``OS`` and time to progression ``TTP`` (weeks in the public descriptions) with
``Death_1_StillAliveorLostToFU_0`` and ``Censored_0_progressed_1``, ``BCLC`` as "Stage-A" …
"Stage-D", Child-Pugh as ``CPS``, ``AFP`` and tumour size ``Tr_Size``; it has no ALT or albumin.

Folder layouts of TCIA's downloader (``HCC_001/<date>-<study>/<n>.000000-<description>-<id>/1-01.dcm``)
and of IDC's (``hcc_tace_seg/HCC_001/<StudyUID>/CT_<SeriesUID>/<SOP>.dcm``) both work: patients are
grouped by PatientID and series by their UIDs, never by folder names.

The image of a case is the acquisition the SEG's frames reference. Where the references do not
settle it (the SEG names only its series, which stacks several acquisitions), the arterial one is
chosen by enhancement — the aorta brighter than the portal vein by :data:`~.cohort_import.ARTERIAL_GAP_HU`
inside the SEG's own vessel segments — and the report says so.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import check_output_folder
from TACEResponseLib.core.tables import WORKBOOK_SUFFIXES, read_table, split_sheet
from TACEResponseLib.imaging.cohort_import import (
    SEG_SOP_CLASS,
    ImportReport,
    PatientOutcome,
    classify_enhancement,
    columns_of,
    image_reference,
    relative_to,
    scan_dicom_tree,
    import_folder,
    write_import,
)
from TACEResponseLib.imaging.dicom import SeriesInfo, SliceHeader, list_series
from TACEResponseLib.imaging.segmentation import Segmentation, read_segmentation, segment_box_on

logger = logging.getLogger(__name__)

COLLECTION = "HCC-TACE-Seg"
CLINICAL_FILE = "HCC-TACE-Seg_clinical_data-V2.xlsx"
ID_COLUMNS = ("TCIA_ID", "ID", "PatientID", "Patient")
READERS = ("1", "2", "3")
MRECIST_CODES = {1: "CR", 2: "PR", 3: "SD", 4: "PD"}
READER_CHOICES = ("majority", *READERS)
TIME_UNITS = ("weeks", "months", "days")
DEATH_COLUMN = "Death_1_StillAliveorLostToFU_0"
PROGRESSION_COLUMN = "Censored_0_progressed_1"
NUMERIC_COLUMNS = ("OS", "TTP", DEATH_COLUMN, PROGRESSION_COLUMN, "AFP", "Tr_Size", "age",
                   *(f"{r}_mRECIST" for r in READERS))
#: the nomogram's clinical variables (``fit-nomogram --covariates``) and where this collection has them
NOMOGRAM_SOURCES = {"BCLC": "BCLC", "Child_Pugh": "CPS", "AFP": "AFP", "tumour_size": "Tr_Size", "ALT": None}


def is_ai_seg(description: str) -> bool:
    """An AI segmentation (IDC's "AIMI liver-tumor AI segmentation", "… radiologist 7 corrected …")."""
    text = description.lower()
    return "aimi" in text or bool(re.search(r"\bai\b", text)) or "automatic" in text


def is_radiologist_seg(description: str) -> bool:
    """The collection's own SEG: described "Segmentation" (tolerating case and spaces)."""
    return description.strip().lower() == "segmentation" or ("segmentation" in description.lower()
                                                             and not is_ai_seg(description))


def patient_key(value: Any) -> str:
    """``HCC_001`` from ``HCC_001``, ``hcc-1``, ``1`` or ``1.0``."""
    text = str(value).strip()
    match = re.fullmatch(r"(?:HCC[_ -]?)?0*(\d+)(?:\.0+)?", text, re.I)
    return f"HCC_{int(match.group(1)):03d}" if match else text


# --- the clinical workbook ---------------------------------------------------------------------------------
def read_clinical(path: str | Path, sheet: str | None = None):
    """The clinical workbook (or CSV) indexed by patient key; the sheet holding ``TCIA_ID`` when none is named."""
    import pandas as pd

    file, named = split_sheet(path, sheet)
    sheets: list[str | None] = [named]
    if named is None and file.suffix.lower() in WORKBOOK_SUFFIXES and file.is_file():
        try:
            with pd.ExcelFile(file, engine="calamine") as workbook:
                sheets = [str(n) for n in workbook.sheet_names] or [None]
        except Exception:  # noqa: BLE001 - read_table below names the problem
            sheets = [None]
    last: InputError | None = None
    for candidate in sheets:
        try:
            table = read_table(file, what="clinical workbook", sheet=candidate, numeric=NUMERIC_COLUMNS)
        except InputError as exc:
            last = exc
            continue
        id_column = next((c for c in ID_COLUMNS if c in table.columns), None)
        if id_column is None:
            last = InputError(f"clinical workbook {file}{f' (sheet {candidate!r})' if candidate else ''}: lacks a "
                              f"patient column ({', '.join(ID_COLUMNS)}); it has {', '.join(map(str, table.columns[:20]))}")
            continue
        table = table[table[id_column].notna()].copy()
        table.index = [patient_key(v) for v in table[id_column]]
        duplicated = table.index[table.index.duplicated()].tolist()
        if duplicated:
            raise InputError(f"clinical workbook {file}: patient(s) listed twice: {', '.join(duplicated[:5])}")
        if not any(f"{r}_mRECIST" in table.columns for r in READERS):
            raise InputError(f"clinical workbook {file}: no mRECIST reading column (1_mRECIST, 2_mRECIST, 3_mRECIST)")
        return table, id_column, candidate
    raise last or InputError(f"clinical workbook {file}: no sheet holds the patients")


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def response_label(row, reader: str) -> tuple[str, dict[str, str], str]:
    """(label, readings by reader, note): one reader's mRECIST class, or the majority of the readings
    (two of three agree; otherwise reader 1's, said in the note)."""
    readings: dict[str, str] = {}
    for r in READERS:
        code = _number(row.get(f"{r}_mRECIST"))
        if code in MRECIST_CODES:
            readings[r] = MRECIST_CODES[int(code)]
    if reader != "majority":
        return readings.get(reader, ""), readings, ""
    if not readings:
        return "", readings, ""
    (top, votes), *rest = Counter(readings.values()).most_common() + [("", 0)]
    if votes >= 2 or len(readings) == 1:
        return top, readings, ""
    first = readings.get("1") or next(iter(readings.values()))
    return first, readings, f"readers disagree ({', '.join(f'{k}: {v}' for k, v in readings.items())}): reader 1's"


def _bclc(value: Any) -> str:
    text = str(value or "").strip().upper().replace("STAGE", "").strip(" -_:")
    return text if text in ("0", "A", "B", "C", "D") else ""


def _child_pugh(value: Any) -> str:
    text = str(value or "").strip().upper()
    if text and text[0] in "ABC" and len(text) <= 2:
        return text[0]
    number = _number(value)
    if number in (1.0, 2.0, 3.0):
        return "ABC"[int(number) - 1]
    if 5 <= number <= 15:
        return "A" if number <= 6 else "B" if number <= 9 else "C"
    return ""


def clinical_values(row, os_unit: str) -> dict[str, Any]:
    """The nomogram's variables and the survival columns of one workbook row."""
    return {
        f"os_{os_unit}": _number(row.get("OS")), "death": _number(row.get(DEATH_COLUMN)),
        f"ttp_{os_unit}": _number(row.get("TTP")), "progressed": _number(row.get(PROGRESSION_COLUMN)),
        "BCLC": _bclc(row.get("BCLC")), "Child_Pugh": _child_pugh(row.get("CPS")), "AFP": _number(row.get("AFP")),
        "tumour_size": _number(row.get("Tr_Size")), "age": _number(row.get("age")), "sex": row.get("Sex", ""),
    }


# --- one patient ---------------------------------------------------------------------------------------------
def _series_of_study(tree, headers: list[SliceHeader], study_uid: str) -> list[tuple[Path, SeriesInfo, int]]:
    """(folder, series or acquisition, number of keys in that folder) of the CT images of one study."""
    by_folder: dict[Path, list[SliceHeader]] = {}
    for header in headers:
        if header.sop_class != SEG_SOP_CLASS and header.study_uid == study_uid:
            by_folder.setdefault(tree.folder_of[header.path], []).append(header)
    found = []
    for folder, members in sorted(by_folder.items()):
        series = list_series(folder, headers=members)
        found += [(folder, info, len(series)) for info in series if not info.localizer]
    return found


def _vessel(segmentation: Segmentation, word: str) -> str | None:
    for segment in segmentation.segments:
        if word in f"{segment.name} {segment.tags.get('DICOM.SegmentedPropertyType', '')}".lower():
            return segment.id
    return None


def _mean_hu(image, segmentation: Segmentation, segment_id: str | None) -> float:
    if segment_id is None:
        return math.nan
    try:
        box = segment_box_on(segmentation, segment_id, image)
    except InputError:
        return math.nan
    k, j, i = (int(v) for v in box.metadata["crop_offset_kji"])
    dk, dj, di = box.array.shape
    values = image.array[k:k + dk, j:j + dj, i:i + di][box.array > 0]
    return float(values.mean()) if values.size else math.nan


def _enhancement(candidates, segmentation: Segmentation, output: Path, outcome: PatientOutcome):
    """Mean HU of the aorta and portal vein (the SEG's own segments) in each candidate acquisition;
    fills ``outcome.enhancement`` / ``phase_images``; returns the arterial candidate or None."""
    from TACEResponseLib.imaging.volume_io import read_volume

    aorta, portal = _vessel(segmentation, "aorta"), _vessel(segmentation, "portal")
    if aorta is None or portal is None:
        return None
    measured = []
    for folder, info, keys in candidates:
        try:
            image = read_volume(f"{folder}#{info.key or 1}")
        except InputError as exc:
            outcome.notes.append(f"{info.key}: unreadable ({exc})")
            continue
        hu = (_mean_hu(image, segmentation, aorta), _mean_hu(image, segmentation, portal))
        phase = classify_enhancement(*hu)
        outcome.enhancement[info.key] = {"aorta_hu": round(hu[0], 1), "portal_vein_hu": round(hu[1], 1), "phase": phase}
        measured.append((hu[0] - hu[1], phase, folder, info, keys))
    arterial = [m for m in measured if m[1] == "arterial"]
    portal_phase = [m for m in measured if m[1] == "portal"]
    if arterial:
        best = max(arterial, key=lambda m: m[0])
        outcome.phase_images["arterial"] = image_reference(best[2], best[3].key, best[4], output)
    if portal_phase:
        best_portal = min(portal_phase, key=lambda m: m[0])
        outcome.phase_images["portal"] = image_reference(best_portal[2], best_portal[3].key, best_portal[4], output)
    return max(arterial, key=lambda m: m[0])[2:] if arterial else None


def _import_patient(patient: str, tree, output: Path, use_ai: bool) -> tuple[PatientOutcome, Segmentation | None]:
    outcome = PatientOutcome(patient)
    headers = tree.by_patient.get(patient, [])
    for problem in tree.problems.get(patient, []):
        outcome.notes.append(f"unreadable series: {problem}")
    if not headers:
        return outcome.exclude("no DICOM images of this patient in the source" +
                               (" (its folders could not be read)" if tree.problems.get(patient) else "")), None
    segs = sorted({h.path: h for h in headers if h.sop_class == SEG_SOP_CLASS}.values(),
                  key=lambda h: (h.study_date, h.path))
    radiologist = [h for h in segs if is_radiologist_seg(h.description)]
    ai = [h for h in segs if is_ai_seg(h.description)]
    if ai and not use_ai:
        outcome.notes.append(f"{len(ai)} AI SEG(s) skipped (not ground truth)")
    chosen_segs = radiologist or (ai if use_ai else [])
    if not chosen_segs:
        return outcome.exclude("no radiologist SEG" + (" (only AI SEGs)" if ai else "")), None
    seg_header = chosen_segs[0]
    if len(chosen_segs) > 1:
        outcome.notes.append(f"{len(chosen_segs)} SEGs; the first study's ({seg_header.study_date}) is used")
    try:
        segmentation = read_segmentation(seg_header.path)
        tumours = segmentation.default_segment_ids()
    except InputError as exc:
        return outcome.exclude(f"SEG unusable: {exc}"), None
    outcome.segmentation = relative_to(Path(seg_header.path), output)
    outcome.segment = tumours[0] if len(tumours) == 1 else ""
    candidates = _series_of_study(tree, headers, seg_header.study_uid)
    if not candidates:
        return outcome.exclude("the SEG's study holds no CT series here"), segmentation
    referenced = set(segmentation.metadata.get("referenced_instances") or [])
    hits = [(len(info.sop_uids & referenced), folder, info, keys) for folder, info, keys in candidates]
    best = max(hit[0] for hit in hits)
    winners = [hit[1:] for hit in hits if hit[0] == best and best > 0]
    if len(winners) == 1:
        chosen = winners[0]
    else:
        series_uids = set(segmentation.metadata.get("referenced_series") or [])
        same_series = [c for c in candidates if c[1].uid in series_uids] or (winners or [])
        if not same_series:
            return outcome.exclude("the SEG references no CT here (series "
                                   f"{', '.join(sorted(series_uids)) or 'not named'})"), segmentation
        chosen = same_series[0] if len(same_series) == 1 else None
        if chosen is None:
            chosen = _enhancement(same_series, segmentation, output, outcome)
            if chosen is None:
                return outcome.exclude(f"the SEG's series stacks {len(same_series)} acquisitions and its references do "
                                       "not say which; no aorta/portal-vein segments to tell them by enhancement"), segmentation
            outcome.notes.append("acquisition chosen by enhancement (arterial: aorta brighter than portal vein by "
                                 "≥ 50 HU), the SEG's references not naming it")
    folder, info, keys = chosen
    outcome.image = image_reference(folder, info.key, keys, output)
    outcome.series_description, outcome.acquisition = info.description, info.acquisition
    siblings = [c for c in candidates if c[1].uid == info.uid]
    if len(siblings) > 1 and not outcome.enhancement:
        _enhancement(siblings, segmentation, output, outcome)
    return outcome, segmentation


def _check_image(outcome: PatientOutcome, segmentation: Segmentation, output: Path) -> None:
    """The chosen image is read and the tumour placed on it: an unreadable series or a SEG that misses the
    image excludes the patient."""
    from TACEResponseLib.imaging.volume_io import read_volume

    image_path = os.path.normpath(os.path.join(output, outcome.image))  # the output folder may not exist yet
    try:
        image = read_volume(image_path)
        for segment_id in ([outcome.segment] if outcome.segment else segmentation.default_segment_ids()):
            segment_box_on(segmentation, segment_id, image)
    except InputError as exc:
        outcome.exclude(f"unreadable series or SEG off the image: {exc}")


# --- the import ------------------------------------------------------------------------------------------------
def find_clinical_file(source: Path) -> Path | None:
    """The collection's clinical workbook in or one level below ``source``."""
    for pattern in ("HCC-TACE-Seg_clinical_data*.xlsx", "*/HCC-TACE-Seg_clinical_data*.xlsx", "*clinical*.xlsx"):
        found = sorted(source.glob(pattern))
        if found:
            return found[0]
    return None


def import_hcc_tace_seg(source: str | Path, output: str | Path, clinical: str | Path | None = None, *,
                        sheet: str | None = None, reader: str = "majority", os_unit: str = "weeks",
                        use_ai_segs: bool = False, check_images: bool = True) -> ImportReport:
    """Turn a downloaded HCC-TACE-Seg tree into ``OUT/manifest.csv``, ``OUT/survival.csv`` and the import report.

    ``reader``: ``majority`` (two of three readers agree; otherwise reader 1) or ``1``/``2``/``3``.
    ``os_unit``: the unit of the workbook's OS and TTP (the public descriptions say weeks; written in
    the column names). ``check_images``: read each chosen acquisition and place the tumour on it.
    """
    started = time.perf_counter()
    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise InputError(f"{source}: the collection's folder does not exist" if not source.exists()
                         else f"{source}: is a file; give the folder the collection was downloaded to")
    if reader not in READER_CHOICES:
        raise InputError(f"reader must be one of {', '.join(READER_CHOICES)}, got {reader!r}")
    if os_unit not in TIME_UNITS:
        raise InputError(f"the OS unit must be one of {', '.join(TIME_UNITS)}, got {os_unit!r}")
    check_output_folder(output)
    clinical = clinical or find_clinical_file(source)
    if clinical is None:
        raise InputError(f"{source}: no clinical workbook ({CLINICAL_FILE}) found; give it with --clinical")
    table, id_column, used_sheet = read_clinical(clinical, sheet)
    tree = scan_dicom_tree(source)
    patients = sorted(set(tree.by_patient) | set(table.index) | set(tree.problems))
    outcomes, manifest_rows, survival_rows = [], [], []
    for patient in patients:
        outcome, segmentation = _import_patient(patient, tree, output, use_ai_segs)
        if outcome.image and segmentation is not None and check_images:
            _check_image(outcome, segmentation, output)
        row = table.loc[patient] if patient in table.index else None
        if row is None:
            if outcome.reason:
                outcome.notes.append("not in the clinical workbook")
            else:
                outcome.exclude("not in the clinical workbook")
            outcomes.append(outcome)
            continue
        label, readings, note = response_label(row, reader)
        outcome.readings, outcome.label = readings, label
        if note:
            outcome.notes.append(note)
        values = clinical_values(row, os_unit)
        if outcome.image and not outcome.reason:
            has_survival = np.isfinite(values[f"os_{os_unit}"]) and values["death"] in (0.0, 1.0)
            if label:
                outcome.status = "used"
            elif has_survival:
                outcome.status, outcome.reason = "survival only", "no mRECIST reading"
            else:
                outcome.exclude("no mRECIST reading and no survival")
            if outcome.status != "excluded":
                base = {"case_id": patient, "ct": outcome.image, **outcome.phase_images,
                        "segmentation": outcome.segmentation, "segment": outcome.segment}
                if label:
                    manifest_rows.append({**base, "label": label, **values})
                if has_survival:
                    survival_rows.append({**base, "label": label, **values})
        outcomes.append(outcome)
    report = ImportReport(
        COLLECTION, str(source), str(output),
        {"clinical": str(clinical), "sheet": used_sheet or "(first)", "reader": reader if reader != "majority" else
         "majority of readers 1–3 (two agree; otherwise reader 1) — the default",
         "OS / TTP unit": os_unit, "AI SEGs": "used when no radiologist SEG" if use_ai_segs else "skipped"},
        outcomes,
        mapping={"case_id": id_column, "label": "{1,2,3}_mRECIST: 1 CR, 2 PR, 3 SD, 4 PD",
                 f"os_{os_unit}": "OS", "death": DEATH_COLUMN, f"ttp_{os_unit}": "TTP", "progressed": PROGRESSION_COLUMN,
                 "BCLC": "BCLC (Stage-A … Stage-D → A … D)", "Child_Pugh": "CPS (A/B/C, 1/2/3 or score 5–15)",
                 "AFP": "AFP", "tumour_size": "Tr_Size", "ct": "the acquisition the radiologist SEG references",
                 "arterial / portal": "acquisitions of that series told apart by enhancement (aorta vs portal vein)"},
        missing=[f"{name}: not in the collection's workbook" for name, column in NOMOGRAM_SOURCES.items()
                 if column is None or column not in table.columns],
        notes=["labels are mRECIST readings of the post-TACE CT (1 CR, 2 PR, 3 SD, 4 PD)",
               f"survival times are the workbook's OS/TTP in {os_unit} (check against the collection's description)"],
        bytes_read=tree.bytes)
    manifest_columns = columns_of(manifest_rows, ["case_id", "ct", "segmentation", "segment", "label"])
    survival_columns = columns_of(survival_rows, ["case_id", f"os_{os_unit}", "death", "ct", "segmentation", "segment"])
    with import_folder(output) as staging:
        write_import(staging, manifest_rows, manifest_columns, survival_rows, survival_columns, report, started)
    return report
