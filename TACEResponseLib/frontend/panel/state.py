"""The panel's state machine and which controls are enabled in each state (no Qt).

idle → running → done | failed | cancelled, back to idle when an input changes. Widgets are
reached by duck typing (``ui.<objectName>.setEnabled(...)``): the same calls work on Slicer's
PythonQt widgets and on PySide6 widgets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence

logger = logging.getLogger(__name__)

# --- state machine ------------------------------------------------------------------------------
class PanelState(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class PanelEvent(str, Enum):
    START = "start"
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"
    INPUT_CHANGED = "input_changed"


_FINISHED = (PanelState.DONE, PanelState.FAILED, PanelState.CANCELLED)


TRANSITIONS: dict[tuple[PanelState, PanelEvent], PanelState] = {
    (PanelState.IDLE, PanelEvent.START): PanelState.RUNNING,
    (PanelState.IDLE, PanelEvent.INPUT_CHANGED): PanelState.IDLE,
    (PanelState.RUNNING, PanelEvent.SUCCEED): PanelState.DONE,
    (PanelState.RUNNING, PanelEvent.FAIL): PanelState.FAILED,
    (PanelState.RUNNING, PanelEvent.CANCEL): PanelState.CANCELLED,
    # inputs are disabled while running; a script changing them does not affect the run
    (PanelState.RUNNING, PanelEvent.INPUT_CHANGED): PanelState.RUNNING,
    **{(s, PanelEvent.START): PanelState.RUNNING for s in _FINISHED},
    **{(s, PanelEvent.INPUT_CHANGED): PanelState.IDLE for s in _FINISHED},
}


class InvalidTransition(RuntimeError):
    """An event that makes no sense in the current state (a programming error, not a user one)."""


@dataclass
class PanelStateMachine:
    """Where the panel is; ``message`` is the status line for the user."""

    state: PanelState = PanelState.IDLE
    message: str = ""

    def handle(self, event: PanelEvent, message: str = "") -> PanelState:
        key = (self.state, PanelEvent(event))
        if key not in TRANSITIONS:
            raise InvalidTransition(f"cannot {key[1].value} while {self.state.value}")
        new = TRANSITIONS[key]
        if new is not self.state or message:
            self.message = message
        self.state = new
        return new

    def start(self, message: str = "Starting…") -> PanelState:
        return self.handle(PanelEvent.START, message)

    def succeed(self, message: str = "Done.") -> PanelState:
        return self.handle(PanelEvent.SUCCEED, message)

    def fail(self, message: str) -> PanelState:
        return self.handle(PanelEvent.FAIL, message)

    def cancel(self, message: str = "Cancelled; nothing was changed.") -> PanelState:
        return self.handle(PanelEvent.CANCEL, message)

    def input_changed(self) -> PanelState:
        return self.handle(PanelEvent.INPUT_CHANGED)

    @property
    def running(self) -> bool:
        return self.state is PanelState.RUNNING


# --- controls -----------------------------------------------------------------------------------
#: the parameter-node fields a result depends on, in the order of the inputs key
#: (:func:`TACEResponseLib.frontend.panel.logic.inputs_key`): a change makes the shown result stale,
#: and every widget that edits one of them is locked while a prediction runs
INPUT_PARAMETERS: tuple[str, ...] = (
    "referenceVolume", "phaseVolumes", "segmentationNode", "segmentId", "modelName", "modelPath",
    "survivalEnabled", "nomogramPath", "clinicalValues", "device", "splitIslands", "minIslandMl", "patientRule",
    "testTimeViews",
)
#: how the background run works, not what it computes: locked while running, not in the inputs key
RUN_SETTINGS: tuple[str, ...] = ("keepTemporaryFiles",)
#: how a result is shown (the heatmap layer): free while running, never stale
DISPLAY_PARAMETERS: tuple[str, ...] = ("heatmapVisible", "heatmapOpacity", "heatmapColormap")
#: the nodes a prediction writes
OUTPUT_PARAMETERS: tuple[str, ...] = ("heatmapNode", "resultTableNode", "survivalTableNode", "survivalChartNode")
#: the "Assess response" section's visits, new lesions, lesion pairs and table (TACEResponseLib.frontend.assess):
#: not what a prediction depends on, so free while one runs and never making its result stale
ASSESS_PARAMETERS: tuple[str, ...] = tuple(
    f"assess{visit}{what}" for visit in ("Baseline", "Followup1", "Followup2")
    for what in ("Volume", "Precontrast", "Segmentation")) + (
    "assessNewLesion1", "assessNewLesion2", "assessMatches1", "assessMatches2", "assessResponsesTable")

#: widgets the module binds by its own code (no ``SlicerParameterName``), by the parameter they edit
HAND_BOUND_WIDGETS: dict[str, tuple[str, ...]] = {
    "phaseVolumes": ("phaseSelectorsFrame",),
    "segmentationNode": ("segmentSelector", "editSegmentButton"),
    "segmentId": ("segmentSelector",),
    "modelName": ("modelSelector",),
    "modelPath": ("modelSelector",),
    "clinicalValues": ("clinicalFactorsFrame",),
    "nomogramPath": ("nomogramPathLineEdit",),
}

#: the other control groups → objectNames in TACEResponse.ui (the inputs group is derived: :func:`locked_while_running`)
CONTROL_GROUPS: dict[str, tuple[str, ...]] = {
    "apply": ("applyButton",),
    "cancel": ("cancelButton",),
    # what the user does with a result (select a tumour, the heatmap layer, export): not while a run replaces it
    "results": ("tumourComboBox", "heatmapFrame", "exportReportButton"),
    # the numbers of the result: greyed, too, when the inputs changed since they were computed
    "result_values": ("predictedClassLabel", "predictedClassDetailLabel", "reliabilityFrame", "probabilitiesFrame",
                      "resultsTable", "survivalGroupBox"),
    "install": ("installDependenciesButton",),
}


def locked_while_running(bound: Mapping[str, Any], ui: Any) -> list[Any]:
    """The widgets that edit an input or run setting: those bound by ``SlicerParameterName``
    (``bound``: :func:`~TACEResponseLib.frontend.panel.binding.parameter_widgets`) and those the
    module binds itself (:data:`HAND_BOUND_WIDGETS`), derived from :data:`INPUT_PARAMETERS`."""
    locked = set(INPUT_PARAMETERS) | set(RUN_SETTINGS)
    widgets = [widget for name, widget in bound.items() if name in locked]
    for name in locked:
        for object_name in HAND_BOUND_WIDGETS.get(name, ()):
            widget = getattr(ui, object_name)
            if all(widget is not w for w in widgets):
                widgets.append(widget)
    return widgets


@dataclass(frozen=True)
class ControlStates:
    """Enabled flag per control group, and what is visible, for one panel state."""

    enabled: dict[str, bool]
    progress_visible: bool
    blockers_visible: bool
    stale_visible: bool = False


def control_states(state: PanelState, *, has_result: bool, blockers: Sequence[str] = (),
                   stale: bool = False) -> ControlStates:
    """Which control groups are enabled: inputs are locked while running; Apply needs no blocker;
    Cancel only while running; results need a result (and no run replacing it); the result's
    numbers are greyed when the inputs changed since they were computed (``stale``)."""
    running = state is PanelState.RUNNING
    enabled = {
        "inputs": not running,
        "apply": not running and not blockers,
        "cancel": running,
        "results": has_result and not running,
        "result_values": has_result and not running and not stale,
        "install": not running,
    }
    return ControlStates(enabled, progress_visible=running, blockers_visible=not running and bool(blockers),
                         stale_visible=has_result and stale and not running)


def apply_control_states(ui: Any, states: ControlStates, inputs: Sequence[Any] = ()) -> None:
    """Enable/disable each group's widgets and ``inputs`` (:func:`locked_while_running`), show/hide
    the progress row and the stale-result line (duck-typed Qt)."""
    for widget in inputs:
        widget.setEnabled(states.enabled["inputs"])
    for group, names in CONTROL_GROUPS.items():
        for name in names:
            getattr(ui, name).setEnabled(states.enabled[group])
    ui.progressFrame.setVisible(states.progress_visible)
    ui.stageLabel.setVisible(states.progress_visible)
    ui.applyBlockersLabel.setVisible(states.blockers_visible)
    ui.staleResultLabel.setText(STALE_RESULT_TEXT if states.stale_visible else "")
    ui.staleResultLabel.setVisible(states.stale_visible)


#: what the panel says over a result whose inputs changed
STALE_RESULT_TEXT = "Inputs changed — run Apply again. The result below is for the previous inputs."


STAGE_LABELS: dict[str, str] = {
    "starting": "Starting Python",
    "reading": "Reading images",
    "resampling": "Resampling onto the reference",
    "patches": "Cutting tumour patches",
    "network": "Preparing the network (first use of this model on this computer)",
    "forward": "Running the network",
    "cam": "Computing the heatmap",
    "survival": "Nomogram and survival",
    "writing": "Writing results",
    "done": "Finishing",
}


def stage_text(stage: str | None, fraction: float | None) -> str:
    """``"Running the network — 45 %"`` for the stage label."""
    label = STAGE_LABELS.get(stage or "starting", (stage or "").capitalize() or "Working")
    return f"{label} — {round(100 * (fraction or 0.0))} %"
