"""The results table of the panel: one compact row per tumour, the not-assessable ones folded.

A multifocal case (the LiTS liver of Testing/test_realdata_liver.py has 70 islands) must not bury
the panel: the tumours that got an answer get a row each (class, probability, volume, flags), the
ones that could not be assessed are one summary row ("55 not assessable ▸") that a click unfolds
into greyed rows with their reason, and the table is never taller than :data:`MAX_VISIBLE_ROWS`
rows (it scrolls). A click on a tumour row selects it and centres the slice views on it.

The table is the panel's own ``QTableWidget``, filled here; the result table *node* (every column,
saved with the scene, shown in the Tables module) is never written to by the panel. Greying rows of
a ``qMRMLTableView`` would have gone back into the node (see ``Testing/test_results_table.py``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

#: the columns of the panel's results table
COLUMNS = ("Tumour", "Class", "P", "ml", "Flags")
#: the table scrolls beyond this many rows
MAX_VISIBLE_ROWS = 8
#: text colour of not-assessable rows
GREY = (128, 128, 128)
#: short words for :attr:`NotAssessableTumour.reason` codes
REASON_WORDS = {"below_min_volume": "too small", "no_square": "no patch fits", "empty": "empty"}


@dataclass(frozen=True)
class TableRow:
    """One row of the panel's results table."""

    kind: str  # "patient", "tumour", "summary" (the folded not-assessable tumours) or "not_assessable"
    cells: tuple[str, ...]
    tooltip: str = ""
    greyed: bool = False
    tumour_index: int | None = None  # index in result.tumours (tumour rows)
    segment_id: str | None = None
    island: int | None = None

    @property
    def jumps(self) -> bool:
        """A click on the row centres the slice views on its tumour."""
        return self.kind in ("tumour", "not_assessable")


def _percent(value: float | None, spread: float | None = None) -> str:
    if value is None or value != value:
        return ""
    return f"{round(100 * float(value))}" + (f" ± {round(100 * float(spread))}" if spread is not None else "") + " %"


def _volume(value: float | None) -> str:
    return "" if not value else f"{float(value):.2f}" if value < 10 else f"{float(value):.1f}"


def tumour_flags(tumour, used_by_patient: bool) -> list[str]:
    """Short flags of a predicted tumour: in the patient answer, unlike the training data, notes."""
    flags = ["patient"] if used_by_patient else []
    trust = getattr(tumour, "trust", None)
    if trust is not None and trust.unlike_training:
        flags.append("unreliable")
    flags += [f"note: {note}" for note in getattr(tumour, "notes", []) or []]
    return flags


def result_table_rows(result, expanded: bool = False) -> list[TableRow]:
    """The rows for ``result``: the patient answer, each predicted tumour, one summary row for the
    not-assessable tumours and, when ``expanded``, one greyed row per not-assessable tumour."""
    rows: list[TableRow] = []
    patient = getattr(result, "patient", None)
    used = set(patient.tumours) if patient is not None else set()
    if patient is not None:
        probability = patient.probability_of.get(patient.predicted_class)
        rows.append(TableRow("patient", ("Patient", patient.predicted_class, _percent(probability), "",
                                         "from " + ", ".join(patient.tumours)),
                             tooltip=getattr(patient, "description", "") or ""))
    for index, tumour in enumerate(result.tumours):
        trust = getattr(tumour, "trust", None)
        predicted = tumour.class_names.index(tumour.predicted_class)
        spread = trust.spread_of(predicted) if trust is not None else None
        probability = _percent(tumour.probabilities[predicted], spread)
        flags = tumour_flags(tumour, tumour.label in used)
        tooltip = "\n".join([f"{tumour.label}: {tumour.predicted_class}, probability {probability}, "
                             f"{_volume(tumour.volume_ml)} ml" + (f"; {', '.join(flags)}" if flags else ""),
                             *([trust.warning] if trust is not None and trust.warning else []),
                             "Click to centre the slice views on this tumour."])
        rows.append(TableRow("tumour", (tumour.label, tumour.predicted_class, probability, _volume(tumour.volume_ml),
                                        ", ".join(flags)), tooltip, tumour_index=index,
                             segment_id=tumour.segment_id, island=tumour.island))
    skipped = list(getattr(result, "not_assessable", []) or [])
    if skipped:
        reasons = Counter(REASON_WORDS.get(t.reason, t.reason) for t in skipped)
        summary = " · ".join(f"{count} {word}" for word, count in reasons.most_common())
        total_ml = sum(float(t.volume_ml) for t in skipped)
        rows.append(TableRow("summary", (f"{len(skipped)} not assessable", "▾ hide" if expanded else "▸ show", "",
                                         _volume(total_ml), summary),
                             tooltip="Tumours that got no prediction (click to " + ("fold them)." if expanded else
                                                                                     "list them with their reason)."),
                             greyed=True))
        if expanded:
            for tumour in skipped:
                rows.append(TableRow("not_assessable", (tumour.label, "—", "", _volume(tumour.volume_ml),
                                                        REASON_WORDS.get(tumour.reason, tumour.reason)),
                                     tooltip=f"{tumour.label}: not assessable — {tumour.detail}\n"
                                             "Click to centre the slice views on this tumour.",
                                     greyed=True, segment_id=tumour.segment_id, island=tumour.island))
    return rows


def table_height(row_count: int, *, header_px: int, row_px: int, frame_px: int,
                 max_rows: int = MAX_VISIBLE_ROWS) -> int:
    """Pixel height of a table showing ``min(row_count, max_rows)`` rows (more rows scroll)."""
    return header_px + max(1, min(row_count, max_rows)) * row_px + 2 * frame_px


def _property(widget: Any, name: str) -> Any:
    """A Qt property's value: the same call on PythonQt (Slicer) and PySide6 widgets."""
    return widget.property(name)


def fill_result_table(table: Any, rows: Sequence[TableRow], qt: Any, max_rows: int = MAX_VISIBLE_ROWS) -> int:
    """Show ``rows`` in a ``QTableWidget`` (``qt``: Slicer's ``qt`` module, or the same names from PySide6),
    read-only, not-assessable rows greyed; the table's height fits at most ``max_rows`` rows. Returns the height."""
    table.setRowCount(0)
    table.setColumnCount(len(COLUMNS))
    table.setHorizontalHeaderLabels(list(COLUMNS))
    table.setRowCount(len(rows))
    grey = qt.QBrush(qt.QColor(*GREY))
    flags = qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable  # not editable
    for r, row in enumerate(rows):
        for c, text in enumerate(row.cells):
            item = qt.QTableWidgetItem(text)
            item.setFlags(flags)
            if row.tooltip:
                item.setToolTip(row.tooltip)
            if row.greyed:
                item.setForeground(grey)
            if row.kind in ("patient", "summary"):
                font = item.font()
                font.setBold(row.kind == "patient")
                font.setItalic(row.kind == "summary")
                item.setFont(font)
            table.setItem(r, c, item)
    header, vertical = table.horizontalHeader(), table.verticalHeader()
    vertical.setVisible(False)
    vertical.setDefaultSectionSize(table.fontMetrics().height() + 6)  # compact rows
    for column in range(len(COLUMNS) - 1):
        header.setSectionResizeMode(column, qt.QHeaderView.ResizeToContents)
    # the flags column takes the rest of the width, elided (the full text is the row's tooltip)
    header.setSectionResizeMode(len(COLUMNS) - 1, qt.QHeaderView.Stretch)
    table.setHorizontalScrollBarPolicy(qt.Qt.ScrollBarAlwaysOff)
    table.setWordWrap(False)
    height = table_height(len(rows), header_px=int(_property(header, "sizeHint").height()),
                          row_px=int(_property(vertical, "defaultSectionSize")),
                          frame_px=int(_property(table, "frameWidth")), max_rows=max_rows)
    table.setFixedHeight(height)
    return height
