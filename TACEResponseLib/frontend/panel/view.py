"""What the panel shows, on the widgets of TACEResponse.ui: forms, controls, progress, results.

:class:`PanelView` is the part of the module's widget that turns state into widgets; the module
file keeps the Qt and MRML wiring (signals, observers, dialogs, the plot view, jumping the slice
views). ``Testing/render_panel.py`` renders the panel through the same class with PySide6, and
the tests drive it there. ``qt`` is Slicer's ``qt`` module or the same names from PySide6; widgets
are reached by duck typing (see :mod:`TACEResponseLib.frontend.panel.widgets`).
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from TACEResponseLib.core.errors import TACEResponseError
from TACEResponseLib.frontend.panel.form import phase_selectors
from TACEResponseLib.frontend.panel.inputs import PanelInputs, apply_blockers, blockers_text
from TACEResponseLib.frontend.panel.models import describe_card, model_warning
from TACEResponseLib.frontend.panel.results import clear_results, fill_results, result_view
from TACEResponseLib.frontend.panel.results_table import TableRow, fill_result_table, result_table_rows
from TACEResponseLib.frontend.panel.state import (
    PanelStateMachine,
    apply_control_states,
    control_states,
    stage_text,
)
from TACEResponseLib.frontend.panel.widgets import (
    ClinicalForm,
    build_phase_selectors,
    ensure_probability_bars,
    fill_model_selector,
    fill_tumour_combo,
    select_model,
)

logger = logging.getLogger(__name__)


def _same(text: str) -> str:
    return text


class PanelView:
    """The panel's widgets from the panel's state (see the module docstring).

    ``tr`` translates the panel's sentences (Slicer's ``tr``; the identity in tests).
    """

    def __init__(self, ui: Any, qt: Any, on_clinical_edit: Callable[[str], None] = lambda name: None,
                 locked_while_running: Sequence[Any] = (), tr: Callable[[str], str] = _same) -> None:
        self.ui, self.qt, self.tr = ui, qt, tr
        self.state = PanelStateMachine()
        self.clinical = ClinicalForm(qt, on_clinical_edit, tr("not set"))
        self.locked = list(locked_while_running)
        self.phase_selectors: dict[str, tuple[Any, Any]] = {}
        self.form_key: Any = None
        self.inputs_key: Any = None
        self.result: Any = None
        self.result_key: Any = None  # what the results section shows; set only once it was shown
        self.result_inputs_key: Any = None  # the inputs the shown result was computed from
        self.run_inputs_key: Any = None
        self.tumour_index = 0
        self.rows: list[TableRow] = []
        self.expanded = False
        self.nomogram_png: Optional[Path] = None
        self.problems: dict[str, str] = {}  # what an observer step could not do: in the status line

    # -- inputs -------------------------------------------------------------------------------------
    def show_forms(self, inputs: PanelInputs, make_selector: Callable[[Any], Any]) -> None:
        """Model description, phase selectors and clinical form (rebuilt only when the model or nomogram
        changed), then the clinical values, marked where outside the nomogram's training range."""
        key = (inputs.model, inputs.card is not None, str(inputs.nomogram), tuple(f.name for f in inputs.clinical_fields),
               tuple(inputs.survival_phases))
        if key != self.form_key:
            self.form_key = key
            ui, card = self.ui, inputs.card
            ui.modelInfoLabel.setText(inputs.model_problem or describe_card(card))
            warning = model_warning(card)
            ui.modelWarningLabel.setText(warning)
            ui.modelWarningLabel.setVisible(bool(warning))
            phases = card.inputs if card is not None else []
            ui.referenceVolumeLabel.setText(self.tr("Reference ({phase}):").format(phase=phases[0].name) if phases
                                            else self.tr("Reference volume:"))
            if phases:
                ui.referenceVolumeSelector.setToolTip(self.tr(
                    "The model's first input, {phase} ({modality}): other phases and the segment are resampled onto "
                    "its grid and the heatmap is shown on it.").format(phase=phases[0].name, modality=phases[0].modality))
            self.phase_selectors = build_phase_selectors(
                ui.phaseSelectorsFrame.layout(), phase_selectors(card, inputs.survival_phases), make_selector, self.qt,
                int(ui.referenceVolumeLabel.property("minimumWidth")), self.phase_selectors)
            ui.phaseSelectorsFrame.setVisible(bool(self.phase_selectors))
            self.clinical.build(ui.clinicalFactorsFrame.layout(), inputs.clinical_fields)
            ui.clinicalHintLabel.setText(
                self.tr("Clinical values for the model and the nomogram (checked against their accepted ranges).")
                if inputs.clinical_fields else self.tr("The chosen model and nomogram need no clinical factors."))
        self.clinical.show(inputs.clinical_values)

    def show_model(self, model_name: str, model_path: str, choices: Callable[[], Sequence[Any]]) -> None:
        """The model selector filled once (``choices()`` may raise: its message is shown), then the model selected."""
        combo = self.ui.modelSelector
        if int(combo.property("count")) == 0:
            try:
                found = list(choices())
            except Exception as exc:  # noqa: BLE001 - an unreadable registry: say why, offer "Load bundle…"
                found = []
                self.ui.modelInfoLabel.setText(str(exc))
            fill_model_selector(combo, found, self.qt, self.tr("Load bundle from folder…"))
        select_model(combo, model_name, model_path, self.qt, self.tr("{name} (folder)"))

    # -- state and controls -------------------------------------------------------------------------
    def set_inputs_key(self, key: Any) -> None:
        """The inputs changed: a finished panel goes back to idle and its result becomes stale."""
        if key != self.inputs_key:
            self.inputs_key = key
            self.state.input_changed()

    @property
    def stale(self) -> bool:
        """A result is shown whose inputs changed since it was computed."""
        return self.result is not None and self.result_inputs_key != self.inputs_key

    def update_controls(self, inputs: PanelInputs, path_field_enabled: bool = True) -> list[str]:
        """Enable what the state allows, say why Apply is disabled, grey a stale result; returns the blockers."""
        ui = self.ui
        running = self.state.running
        blockers = [] if running else apply_blockers(inputs)
        states = control_states(self.state.state, has_result=self.result is not None, blockers=blockers,
                                stale=self.stale)
        apply_control_states(ui, states, self.locked)
        if not running:  # the path field also follows the survival check box
            ui.nomogramPathLineEdit.setEnabled(path_field_enabled)
        text = blockers_text(blockers)
        ui.applyBlockersLabel.setText(text)
        ui.applyButton.setToolTip(text or self.tr("Predict the response of the chosen tumour (runs in the background)."))
        message = "\n".join(m for m in [self.state.message, *self.problems.values()] if m)
        ui.statusLabel.setText(message)
        ui.statusLabel.setVisible(bool(message))
        return blockers

    def started(self, inputs_key: Any, message: str) -> None:
        self.run_inputs_key = inputs_key
        self.state.start(message)
        self.ui.progressBar.setValue(0)
        self.ui.stageLabel.setText(stage_text("starting", 0.0))

    def show_progress(self, update: Any) -> None:
        self.ui.progressBar.setValue(round(100 * (update.fraction or 0.0)))
        self.ui.stageLabel.setText(stage_text(update.stage, update.fraction))

    def show_update(self, update: Any) -> bool:
        """Progress of the run; True when it finished (a failure or a cancel is recorded here, a success
        by :meth:`finished` and :meth:`succeeded` once its result is shown)."""
        self.show_progress(update)
        if not update.finished:
            return False
        if update.state.value == "failed":
            self.state.fail(self.tr("Prediction failed: {error}").format(error=update.error))
        elif update.state.value == "cancelled":
            self.state.cancel()
        return True

    def succeeded(self, shown: bool) -> None:
        if shown:
            self.state.succeed(self.tr("Done.") + " " + result_view(self.result).status)
        else:
            self.state.fail(self.tr("The results could not be shown; see the error message."))

    def finished(self, result: Any) -> None:
        """A run's result arrived: it is current for the inputs the run started with."""
        self.result, self.tumour_index, self.expanded = result, 0, False
        self.result_key, self.result_inputs_key = None, self.run_inputs_key

    # -- results ------------------------------------------------------------------------------------
    def clear(self) -> None:
        self.result, self.result_key, self.result_inputs_key, self.rows = None, None, None, []
        clear_results(self.ui)

    def show_result(self, result: Any, key: Any, inputs_key: Callable[[], Any]) -> bool:
        """Show ``result`` (None: the empty results section) unless ``key`` is already shown; a result
        seen for the first time without a run (a loaded scene) counts as computed from the current
        inputs (``inputs_key()``). Returns True when the section was (re)filled with a result."""
        if key == self.result_key:
            return False
        self.result = result
        if result is None:
            clear_results(self.ui)
            self.result_key, self.result_inputs_key, self.rows = key, None, []
            return False
        if self.result_inputs_key is None:
            self.result_inputs_key = inputs_key()
        view = result_view(result, self.tumour_index, self.clinical.fields)
        self.tumour_index = view.tumour_index
        ensure_probability_bars(self.ui, len(view.bars), self.qt)
        fill_results(self.ui, view)
        fill_tumour_combo(self.ui.tumourComboBox, view.tumours, view.tumour_index)
        self.show_table()
        self.show_nomogram_figure()
        self.ui.resultsCollapsibleButton.setProperty("collapsed", False)
        self.result_key = key  # only now: a result that could not be shown is tried again
        return True

    def show_table(self) -> None:
        """One compact row per tumour, the not-assessable ones folded into one row (:attr:`expanded`)."""
        self.rows = result_table_rows(self.result, self.expanded)
        fill_result_table(self.ui.resultsTable, self.rows, self.qt)
        selected = next((n for n, r in enumerate(self.rows) if r.tumour_index == self.tumour_index), None)
        if selected is not None:
            self.ui.resultsTable.selectRow(selected)
            self.ui.resultsTable.scrollToItem(self.ui.resultsTable.item(selected, 0))

    def clicked(self, row: int) -> Optional[TableRow]:
        """A click on a table row: the summary row folds/unfolds the not-assessable tumours; a tumour
        row is returned (the module centres the slice views on it and selects it)."""
        if not 0 <= row < len(self.rows):
            return None
        clicked = self.rows[row]
        if clicked.kind == "summary":
            self.expanded = not self.expanded
            self.show_table()
            self.scroll_to_summary()
            return None
        return clicked if clicked.jumps else None

    def scroll_to_summary(self) -> None:
        """Keep the not-assessable summary row (and what it unfolded) in sight after a refill."""
        row = next((n for n, r in enumerate(self.rows) if r.kind == "summary"), None)
        if row is not None:
            table = self.ui.resultsTable
            table.scrollToItem(table.item(row, 0), self.qt.QAbstractItemView.PositionAtTop)

    def show_reliability_details(self, shown: bool) -> None:
        self.ui.reliabilityDetailsLabel.setVisible(shown)
        self.ui.reliabilityDetailsButton.setArrowType(self.qt.Qt.DownArrow if shown else self.qt.Qt.RightArrow)

    def show_nomogram_figure(self) -> None:
        label = self.ui.nomogramImageLabel
        if self.nomogram_png is None or not Path(self.nomogram_png).is_file():
            label.clear()
            label.setVisible(False)
            return
        width = max(200, int(self.ui.survivalGroupBox.property("width")) - 30)
        label.setPixmap(self.qt.QPixmap(str(self.nomogram_png)).scaledToWidth(width, self.qt.Qt.SmoothTransformation))
        label.setVisible(True)


@contextlib.contextmanager
def reported_errors(what: str, show: Callable[..., Any], testing: bool = False,
                    busy: Callable[[], Any] = contextlib.nullcontext):
    """Show our own errors (bad input, bad bundle: :class:`TACEResponseError`) as ``what`` and the plain
    message, anything else (a bug) with the traceback as details; ``busy()`` (a wait cursor) ends before
    the message shows. Users never see a bare traceback; in a test (``testing``) errors propagate."""
    try:
        with busy():
            yield
    except TACEResponseError as exc:
        logger.warning("%s %s", what, exc)
        if testing:
            raise
        show(f"{what}\n\n{exc}")
    except Exception as exc:  # noqa: BLE001 - a bug: show it, with details for the report
        logger.exception(what)
        if testing:
            raise
        show(f"{what}\n\n{exc}", detailedText=traceback.format_exc())


def run_install_plan(plan: Sequence[Any], pip_install: Callable[[str], Any], pytorch_logic: Callable[[], Any]) -> None:
    """Carry out :func:`~TACEResponseLib.frontend.panel.dependencies.install_plan` steps (only ever on the
    user's request): torch through the PyTorch extension's logic (``pytorch_logic()``), which installs a
    matching torchvision with it (TACE Response does not use it), the rest with ``pip_install``; an
    installation that fails raises with pip's message."""
    for step in plan:
        if step.method == "pytorch_utils":
            torch_logic = pytorch_logic()
            if not torch_logic.torchInstalled():
                torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=step.requirement)
        else:
            pip_install(step.requirement)
