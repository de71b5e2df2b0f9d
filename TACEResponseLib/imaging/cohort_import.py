"""What every cohort importer shares: the scan of a downloaded DICOM tree, the per-patient outcome, and
the four files an import writes (``manifest.csv``, ``survival.csv``, ``import_report.json``,
``import_report.md``), each written atomically and only after every patient has been looked at.

The output folder is written as one group (all four files or none, a previous import left whole on
failure). An import never drops a patient silently: each one is listed as used, used for survival only, or
excluded with the reason (no SEG, the SEG references no CT here, no label, unreadable series, …).
Paths in the manifest are relative to the output folder, so the cohort folder and its import can be
moved together.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_folder, csv_text
from TACEResponseLib.imaging.dicom import SliceHeader, read_headers

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class PatientOutcome:
    """One patient of an import: what was used, or why not."""

    patient: str
    status: str = "excluded"           # used | survival only | excluded
    reason: str = ""                   # why excluded (or why survival only)
    image: str = ""                    # manifest path of the annotated acquisition (relative to the output)
    segmentation: str = ""
    segment: str = ""
    series_description: str = ""
    acquisition: str = ""
    phase_images: dict[str, str] = field(default_factory=dict)   # phase → manifest path, by enhancement
    enhancement: dict[str, Any] = field(default_factory=dict)    # acquisition → mean HU per vessel segment
    label: str = ""
    readings: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def exclude(self, reason: str) -> "PatientOutcome":
        self.status, self.reason = "excluded", reason
        return self


@dataclass
class ImportReport:
    """Everything an import decided, as written to ``import_report.json`` (and, readable, ``.md``)."""

    collection: str
    source: str
    output: str
    options: dict[str, Any]
    patients: list[PatientOutcome]
    mapping: dict[str, str] = field(default_factory=dict)        # output column → where it came from
    missing: list[str] = field(default_factory=list)             # nomogram variables the data lack
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes_read: int = 0

    @property
    def counts(self) -> dict[str, int]:
        statuses = [p.status for p in self.patients]
        return {"patients": len(statuses), "used": statuses.count("used"),
                "survival_only": statuses.count("survival only"), "excluded": statuses.count("excluded")}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["counts"] = self.counts
        return data

    def markdown(self) -> str:
        c = self.counts
        lines = [f"# Import of {self.collection}", "",
                 f"Source: `{self.source}`  ", f"Output: `{self.output}`  ",
                 f"{c['patients']} patients: {c['used']} used, {c['survival_only']} for survival only, "
                 f"{c['excluded']} excluded ({self.seconds:.1f} s, {self.bytes_read / 1e6:.1f} MB of DICOM read).", ""]
        if self.options:
            lines += ["## Choices", ""] + [f"- {k}: {v}" for k, v in self.options.items()] + [""]
        if self.mapping:
            lines += ["## Columns", ""] + [f"- `{k}` ← {v}" for k, v in self.mapping.items()] + [""]
        if self.missing:
            lines += ["## Missing", "", *[f"- {m}" for m in self.missing], ""]
        if self.notes:
            lines += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        lines += ["## Patients", "", "| patient | status | label | image | why / notes |", "|---|---|---|---|---|"]
        for p in self.patients:
            why = "; ".join([p.reason] + p.notes if p.reason else p.notes).replace("|", "/")
            lines.append(f"| {p.patient} | {p.status} | {p.label} | {p.series_description or ''}"
                         f"{' @' + p.acquisition if p.acquisition else ''} | {why} |")
        return "\n".join(lines) + "\n"


# --- the DICOM tree -------------------------------------------------------------------------------------
@dataclass
class DicomTree:
    """Every DICOM header of a downloaded tree, by patient, plus the folders that could not be read."""

    by_patient: dict[str, list[SliceHeader]]
    folder_of: dict[str, Path]                 # header path → its folder
    problems: dict[str, list[str]]             # patient (or folder name) → unreadable folders and why
    bytes: int = 0


def scan_dicom_tree(source: Path, patient_of_folder: Callable[[Path], str] | None = None) -> DicomTree:
    """Read every DICOM header under ``source`` (pydicom, pixels left on disk), grouped by PatientID
    (else by ``patient_of_folder``). A folder that cannot be read is recorded against its patient, and so
    are links to files or folders outside ``source``: they are not opened (a downloaded cohort could
    otherwise make the import, and the predictions after it, read any file this user may read)."""
    by_patient: dict[str, list[SliceHeader]] = {}
    folder_of: dict[str, Path] = {}
    problems: dict[str, list[str]] = {}
    total = 0
    root = Path(os.path.realpath(source))
    for folder, subfolders, files in sorted(os.walk(source)):
        folder = Path(folder)
        fallback = patient_of_folder(folder) if patient_of_folder else folder.name
        outside = [str(folder / name) for name in [*subfolders, *files] if not link_inside(folder / name, root)]
        if outside:
            shown = ", ".join(os.path.relpath(p, source) for p in outside[:3]) + (" …" if len(outside) > 3 else "")
            problems.setdefault(fallback, []).append(
                f"{folder}: {len(outside)} link(s) to files or folders outside {source} not read ({shown}); copy "
                "what they point to into the cohort folder")
        if not files:
            continue
        try:
            headers = read_headers(folder, skip=set(outside))
        except InputError as exc:
            problems.setdefault(fallback, []).append(str(exc))
            continue
        for header in headers:
            patient = header.patient_id or fallback
            by_patient.setdefault(patient, []).append(header)
            folder_of[header.path] = folder
            total += os.path.getsize(header.path)
    return DicomTree(by_patient, folder_of, problems, total)


def link_inside(path: Path, root: Path) -> bool:
    """``path``, its links followed, lies under ``root`` (itself resolved): a cohort folder's link to a file
    elsewhere is not read as one of its patients."""
    if not os.path.islink(path):
        return True
    return Path(os.path.realpath(path)).is_relative_to(root)


def image_reference(folder: Path, key: str, keys_in_folder: int, output: Path) -> str:
    """The manifest's path of one series / acquisition: ``FOLDER`` when it is alone in its folder,
    else ``FOLDER#KEY``; relative to ``output`` where possible."""
    base = relative_to(folder, output)
    return base if keys_in_folder <= 1 and "@" not in key else f"{base}#{key}"


def relative_to(path: Path, output: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), Path(output).resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


# --- enhancement: which acquisition is arterial --------------------------------------------------------
#: aorta minus portal vein (HU) above which an acquisition counts as arterial; aorta below
#: :data:`UNENHANCED_HU` is an unenhanced acquisition
ARTERIAL_GAP_HU = 50.0
UNENHANCED_HU = 100.0


def classify_enhancement(aorta_hu: float, portal_hu: float) -> str:
    """``pre-contrast``, ``arterial`` or ``portal`` from the mean HU in the aorta and the portal vein."""
    if not np.isfinite(aorta_hu) or not np.isfinite(portal_hu):
        return "unknown"
    if aorta_hu < UNENHANCED_HU:
        return "pre-contrast"
    return "arterial" if aorta_hu - portal_hu >= ARTERIAL_GAP_HU else "portal"


# --- writing ----------------------------------------------------------------------------------------------
def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    return csv_text(columns, ({k: ("" if v is None or (isinstance(v, float) and not np.isfinite(v)) else v)
                               for k, v in row.items()} for row in rows), extrasaction="ignore")


def columns_of(rows: Iterable[dict[str, Any]], first: Sequence[str]) -> list[str]:
    """``first`` then every other key of ``rows`` in the order met."""
    columns = list(first)
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def import_folder(output: Path):
    """The import's output written as one group (:func:`~TACEResponseLib.core.files.atomic_folder`: all or
    nothing, the report last); paths in it are written relative to ``output``, not to the staging folder."""
    return atomic_folder(output, last=["import_report.json"])


def write_import(folder: Path, manifest_rows: list[dict[str, Any]], manifest_columns: Sequence[str],
                 survival_rows: list[dict[str, Any]], survival_columns: Sequence[str], report: ImportReport,
                 started: float) -> dict[str, Path]:
    """Write the import's four files into ``folder`` (the staging folder of :func:`import_folder`)."""
    report.seconds = time.perf_counter() - started
    texts = {"manifest.csv": _csv_text(manifest_rows, manifest_columns),
             "survival.csv": _csv_text(survival_rows, survival_columns),
             "import_report.json": json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n",
             "import_report.md": report.markdown()}
    written = {name: Path(folder) / name for name in texts}
    for name, text in texts.items():
        written[name].write_text(text, encoding="utf-8")
    return written
