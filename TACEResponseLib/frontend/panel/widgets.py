"""The panel's widgets that are built or filled from data: clinical form, phase selectors, model
selector, tumour list, probability bars.

``qt`` is Slicer's ``qt`` module (PythonQt) in the module, the same class names from PySide6 in
tests (``Testing/render_panel.py``). Only calls that read and behave the same on both are used:
methods, ``signal.connect(callable)``, and ``widget.property(name)`` to read a Qt property (PythonQt
exposes properties as attributes where PySide6 has getter methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from TACEResponseLib.frontend.panel.form import (
    ClinicalField,
    PhaseSelector,
    SpinBoxConfig,
    configure_spinbox,
    mark_clinical_field,
    spinbox_value,
    training_range_problems,
)
from TACEResponseLib.frontend.panel.results import PROBABILITY_BARS

#: what a model selector entry holds: "name:<registered model>", "path:<bundle folder>" or "load"
LOAD_ITEM = "load"


# --- clinical form --------------------------------------------------------------------------------
@dataclass
class ClinicalRow:
    """One row of the clinical form: its widget, field, spin box set-up (None for a category) and label."""

    widget: Any
    field: ClinicalField
    config: SpinBoxConfig | None
    label: Any
    tooltip: str


class ClinicalForm:
    """The clinical form in a ``QFormLayout``: one combo box per categorical field ("not set" first),
    one spin box per numeric one; a value outside the nomogram's training range is marked beside it."""

    def __init__(self, qt: Any, on_edit: Callable[[str], None], not_set: str = "not set") -> None:
        self.qt, self.on_edit, self.not_set = qt, on_edit, not_set
        self.rows: dict[str, ClinicalRow] = {}

    @property
    def fields(self) -> list[ClinicalField]:
        return [row.field for row in self.rows.values()]

    def build(self, layout: Any, fields: Sequence[ClinicalField]) -> None:
        while layout.rowCount() > 0:
            layout.removeRow(0)
        self.rows = {}
        for item in fields:
            if item.levels:
                widget = self.qt.QComboBox()
                widget.addItem(self.not_set)
                for level in item.levels:
                    widget.addItem(level)
                config, tooltip = None, f"{item.title}: one of {', '.join(item.levels)}."
                widget.currentIndexChanged.connect(lambda *_args, name=item.name: self.on_edit(name))
            else:
                widget = self.qt.QDoubleSpinBox()
                config = configure_spinbox(widget, item)
                tooltip = config.tooltip
                widget.valueChanged.connect(lambda *_args, name=item.name: self.on_edit(name))
            widget.setToolTip(tooltip)
            label = self.qt.QLabel(f"{item.title}:")
            layout.addRow(label, widget)
            self.rows[item.name] = ClinicalRow(widget, item, config, label, tooltip)

    def show(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Show ``values`` (without emitting edits); returns the training-range problems it marked."""
        problems = training_range_problems(self.fields, values)
        for name, row in self.rows.items():
            value = values.get(name)
            was = row.widget.blockSignals(True)
            try:
                if row.config is None:
                    levels = list(row.field.levels)
                    row.widget.setCurrentIndex(levels.index(value) + 1 if value in levels else 0)
                else:
                    try:
                        row.widget.setValue(float(value) if value is not None else row.config.unset)
                    except (TypeError, ValueError):
                        row.widget.setValue(row.config.unset)
            finally:
                row.widget.blockSignals(was)
            mark_clinical_field(row.label, row.widget, row.field, problems.get(name, ""), row.tooltip)
        return problems

    def value(self, name: str) -> Any:
        """The value the user entered (a category label or a number), None when "not set"."""
        row = self.rows[name]
        if row.config is None:
            index = int(row.widget.property("currentIndex"))
            return list(row.field.levels)[index - 1] if index > 0 else None
        return spinbox_value(row.config, float(row.widget.property("value")))


# --- phase selectors ----------------------------------------------------------------------------
def build_phase_selectors(layout: Any, specs: Sequence[PhaseSelector], make_selector: Callable[[PhaseSelector], Any],
                          qt: Any, label_width: int = 0, old: Mapping[str, tuple[Any, Any]] | None = None
                          ) -> dict[str, tuple[Any, Any]]:
    """``{phase: (label, selector)}`` rows in a ``QFormLayout``: the ``old`` ones removed, one per spec
    (``make_selector(spec)`` creates the node selector and connects it)."""
    for label, _selector in (old or {}).values():
        layout.removeRow(label)
    rows = {}
    for spec in specs:
        selector = make_selector(spec)
        selector.setToolTip(spec.tooltip)
        label = qt.QLabel(spec.label)
        label.setMinimumWidth(label_width)  # aligned with the outer form
        layout.addRow(label, selector)
        rows[spec.phase] = (label, selector)
    return rows


# --- model selector -------------------------------------------------------------------------------
def fill_model_selector(combo: Any, choices: Sequence[Any], qt: Any, load_text: str = "Load bundle from folder…") -> None:
    """The registered models ("name:…", their description as tooltip), then "Load bundle from folder…"."""
    was = combo.blockSignals(True)
    try:
        combo.clear()
        for choice in choices:
            combo.addItem(choice.title, "name:" + choice.model)
            combo.setItemData(int(combo.property("count")) - 1, choice.description, qt.Qt.ToolTipRole)
        combo.addItem(load_text, LOAD_ITEM)
    finally:
        combo.blockSignals(was)


def select_model(combo: Any, model_name: str, model_path: str, qt: Any, folder_text: str = "{name} (folder)") -> int:
    """Select the parameter node's model; a bundle folder gets its own entry above "Load bundle…".
    Returns the index (-1: the model is not in the list)."""
    was = combo.blockSignals(True)
    try:
        wanted = ("path:" + model_path) if model_path else ("name:" + model_name)
        index = combo.findData(wanted)
        if index < 0 and model_path:
            index = combo.findData(LOAD_ITEM)
            combo.insertItem(index, folder_text.format(name=Path(model_path).name), wanted)
            combo.setItemData(index, model_path, qt.Qt.ToolTipRole)
        combo.setCurrentIndex(index)
        return index
    finally:
        combo.blockSignals(was)


def model_item(data: Any) -> tuple[str, str]:
    """``("name", model)``, ``("path", folder)``, ``("load", "")`` or ``("", "")`` for a selector entry's data."""
    text = str(data or "")
    if text == LOAD_ITEM:
        return LOAD_ITEM, ""
    for kind in ("name", "path"):
        if text.startswith(kind + ":"):
            return kind, text[len(kind) + 1:]
    return "", ""


# --- results ----------------------------------------------------------------------------------------
def fill_tumour_combo(combo: Any, labels: Sequence[str], index: int) -> None:
    """The tumours of the result, ``index`` selected, without emitting a selection."""
    was = combo.blockSignals(True)
    try:
        combo.clear()
        for label in labels:
            combo.addItem(label)
        combo.setCurrentIndex(index)
    finally:
        combo.blockSignals(was)


def ensure_probability_bars(ui: Any, count: int, qt: Any) -> None:
    """The .ui has four class bars; models with more classes get more rows, set on ``ui`` by their numbered names."""
    layout = ui.probabilitiesFrame.layout()
    for index in range(PROBABILITY_BARS, count):
        if getattr(ui, f"probabilityBar{index}", None) is None:
            label, bar = qt.QLabel(), qt.QProgressBar()
            bar.setFormat("%p %")
            layout.addWidget(label, index + 1, 0)
            layout.addWidget(bar, index + 1, 1)
            setattr(ui, f"probabilityLabel{index}", label)
            setattr(ui, f"probabilityBar{index}", bar)
