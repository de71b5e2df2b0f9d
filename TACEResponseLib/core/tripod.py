"""A prediction-model report in the order TRIPOD+AI asks for, as Markdown and JSON.

TRIPOD+AI (Collins GS et al., BMJ 2024;385:e078378) lists what a report of a clinical
prediction model must say: where the data came from and who is in it (counts, outcome events,
follow-up, missing values and how they were handled), every step of model building with its
settings, what kind of validation each number comes from (apparent, optimism-corrected,
cross-validated, held-out, external), discrimination and calibration with uncertainty,
clinical utility (decision curves), and where the method differs from the one it cites.

:class:`TripodReport` holds such a report as sections of paragraphs, labelled fields and
tables; the commands fill it from what actually ran (``evaluate``: :mod:`TACEResponseLib.training.reporting`,
``survival`` / ``fit-nomogram``: :mod:`TACEResponseLib.survival.reporting`) and
:meth:`TripodReport.write` saves ``<stem>.md`` and ``<stem>.json`` atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from TACEResponseLib.core.files import write_json_atomic, write_text_atomic
from TACEResponseLib.core.records import JsonRecord

TRIPOD_AI = "TRIPOD+AI: Collins GS, Moons KGM, Dhiman P, et al. BMJ 2024;385:e078378"


def shown(value: Any, digits: int = 3) -> str:
    """A value as the report prints it: floats rounded, None as "—", lists joined."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.{digits}g}" if abs(value) >= 1000 or (value != 0 and abs(value) < 1e-3) else f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(shown(v, digits) for v in value) if value else "—"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {shown(v, digits)}" for k, v in value.items()) if value else "—"
    return str(value)


@dataclass
class Table(JsonRecord):
    caption: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Section(JsonRecord):
    """One TRIPOD+AI topic: paragraphs, labelled fields (label → value) and tables."""

    title: str
    text: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)


@dataclass
class TripodReport(JsonRecord):
    """A model report in TRIPOD+AI's order (see the module docstring)."""

    json_header = {"kind": "TACEResponse TRIPOD+AI-style report", "version": 1}

    title: str
    study_type: str
    sections: list[Section]
    guideline: str = TRIPOD_AI
    notes: list[str] = field(default_factory=list)

    def section(self, title: str) -> Section:
        return next(s for s in self.sections if s.title == title)

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", "", f"*{self.study_type}. Reported after {self.guideline}.*", ""]
        lines += [f"> {note}" for note in self.notes] + ([""] if self.notes else [])
        for section in self.sections:
            lines += [f"## {section.title}", ""]
            for paragraph in section.text:
                lines += [paragraph, ""]
            if section.fields:
                lines += [f"- **{label}**: {shown(value)}" for label, value in section.fields.items()] + [""]
            for table in section.tables:
                lines += [f"*{table.caption}*", "", "| " + " | ".join(table.columns) + " |",
                          "|" + "---|" * len(table.columns)]
                lines += ["| " + " | ".join(shown(v).replace("|", "/") for v in row) + " |" for row in table.rows]
                lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def write(self, folder: str | Path, stem: str = "tripod_report") -> dict[str, str]:
        """``<stem>.md`` and ``<stem>.json`` in ``folder`` (atomic); returns their names."""
        folder = Path(folder)
        markdown = write_text_atomic(folder / f"{stem}.md", self.to_markdown())
        data = write_json_atomic(folder / f"{stem}.json", self.to_dict())
        return {"tripod_markdown": Path(markdown).name, "tripod_json": Path(data).name}


def table(caption: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    return Table(caption, list(columns), [list(r) for r in rows])
