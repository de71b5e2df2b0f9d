"""The panel's state machine and which controls are enabled in each state (no Qt).

idle → running → done | failed | cancelled, back to idle when an input changes. Widgets are
reached by duck typing (``ui.<objectName>.setEnabled(...)``): the same calls work on Slicer's
PythonQt widgets and on PySide6 widgets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, Sequence

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
#: logical control groups → objectNames in TACEResponse.ui
CONTROL_GROUPS: dict[str, tuple[str, ...]] = {
    "inputs": ("referenceVolumeSelector", "phaseSelectorsFrame", "segmentSelector", "editSegmentButton"),
    "model": ("modelSelector",),
    "clinical": ("clinicalFactorsFrame", "nomogramCheckBox", "nomogramPathLineEdit"),
    "advanced": ("deviceComboBox", "keepTemporaryFilesCheckBox"),
    "apply": ("applyButton",),
    "cancel": ("cancelButton",),
    "results": ("tumourComboBox", "probabilitiesFrame", "resultsTableView", "heatmapFrame", "survivalGroupBox",
                "exportReportButton"),
    "install": ("installDependenciesButton",),
}


@dataclass(frozen=True)
class ControlStates:
    """Enabled flag per control group, and what is visible, for one panel state."""

    enabled: dict[str, bool]
    progress_visible: bool
    blockers_visible: bool


def control_states(state: PanelState, *, has_result: bool, blockers: Sequence[str] = ()) -> ControlStates:
    """Which control groups are enabled: inputs are locked while running; Apply needs no blocker;
    Cancel only while running; results need a result (and no run replacing it)."""
    running = state is PanelState.RUNNING
    enabled = {
        "inputs": not running,
        "model": not running,
        "clinical": not running,
        "advanced": not running,
        "apply": not running and not blockers,
        "cancel": running,
        "results": has_result and not running,
        "install": not running,
    }
    return ControlStates(enabled, progress_visible=running, blockers_visible=not running and bool(blockers))


def apply_control_states(ui: Any, states: ControlStates) -> None:
    """Enable/disable the widgets of each group and show/hide the progress row (duck-typed Qt)."""
    for group, names in CONTROL_GROUPS.items():
        for name in names:
            getattr(ui, name).setEnabled(states.enabled[group])
    ui.progressFrame.setVisible(states.progress_visible)
    ui.stageLabel.setVisible(states.progress_visible)
    ui.applyBlockersLabel.setVisible(states.blockers_visible)


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
