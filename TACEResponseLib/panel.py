"""The module panel's decisions, without Qt: state, enabled controls, Apply blockers, results text.

Everything the Slicer panel decides that does not need a widget lives here so pytest reaches
it headless: the state machine (idle → running → done | failed | cancelled, back to idle
when an input changes), which controls are enabled in each state, the human-readable reasons
why Apply is disabled, the clinical-factor form (from the model card and the nomogram), what
the results section shows, the report export, the Python dependency check and install plan,
and :class:`PredictionRun`, which writes the inputs, runs the ``tace-response`` CLI in the
background (:mod:`.process`) and reads the result back.

Widgets are reached by duck typing (``ui.<objectName>.setText(...)``): the same calls work
on Slicer's PythonQt widgets and on PySide6 widgets (used to render the panel in tests).
MRML nodes are only passed through to :mod:`.mrml` helpers, apart from ``GetName`` for
messages and the segment look-up in :func:`segment_problem`.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .bundle import BundleCard, ClinicalFactor, read_registry, resolve_bundle, resources_dir
from .errors import InputError, TACEResponseError
from .io import atomic_path

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
    "clinical": ("clinicalFactorsFrame", "nomogramPathLineEdit"),
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


# --- models -------------------------------------------------------------------------------------
LOAD_FROM_FOLDER = "Load bundle from folder…"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model selector: a registered bundle (``name``) or a folder (``path``)."""

    title: str
    model: str  # registry name or bundle folder, what the CLI's --bundle takes
    synthetic: bool = False
    description: str = ""


def model_choices(registry: str | Path | None = None) -> list[ModelChoice]:
    """Registered models (Resources/Models.json), synthetic demo models marked as such."""
    choices = []
    for entry in read_registry(registry):
        title = entry.title + (" (synthetic demo)" if entry.synthetic and "synthetic" not in entry.title.lower() else "")
        choices.append(ModelChoice(title, entry.name, entry.synthetic, entry.description))
    return choices


def folder_choice(path: str | Path) -> ModelChoice:
    """A selector entry for a bundle folder; raises BundleError when it is not a usable bundle."""
    card = load_card(str(path))
    return ModelChoice(f"{card.name} {card.version} (folder)", str(Path(path)), card.synthetic, card.description)


def load_card(model: str) -> BundleCard:
    """The card of a registered model or bundle folder (weights checked when the CLI loads them)."""
    return resolve_bundle(model, verify=False).card


def describe_card(card: BundleCard | None) -> str:
    """One paragraph for the model info label."""
    if card is None:
        return "No model chosen."
    inputs = ", ".join(f"{p.name} ({p.modality})" for p in card.inputs)
    text = (f"{card.name} {card.version}: {card.architecture}, classes {', '.join(card.class_names)}; "
            f"inputs in order: {inputs}.")
    if card.clinical_factors:
        text += " Clinical factors: " + ", ".join(f.name for f in card.clinical_factors) + "."
    return text


def model_warning(card: BundleCard | None) -> str:
    """The synthetic-demo warning for demo models, else empty."""
    return card.warning if card is not None and card.synthetic else ""


# --- clinical factors ---------------------------------------------------------------------------
@dataclass
class ClinicalField:
    """One field of the clinical form: a model factor and/or a clinical variable of the nomogram.

    ``minimum``/``maximum`` are the accepted range (values outside block Apply); a nomogram
    variable's ``training_range`` is only shown (the nomogram extrapolates beyond it).
    """

    name: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    levels: dict[str, float] | None = None
    label: str = ""
    description: str = ""
    training_range: tuple[float, float] | None = None
    sources: list[str] = field(default_factory=list)  # "model", "nomogram"

    @property
    def title(self) -> str:
        return self.label or self.name

    def check(self, value: Any) -> float:
        """The value as a number (a category's code), or InputError naming the factor and its range."""
        if self.levels:
            if isinstance(value, str) and value in self.levels:
                return float(self.levels[value])
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise InputError(f"clinical factor {self.name!r}: {value!r} is not one of {list(self.levels)}") from None
            if number not in [float(code) for code in self.levels.values()]:
                raise InputError(f"clinical factor {self.name!r}: {value!r} is not one of {list(self.levels)}")
            return number
        factor = ClinicalFactor(self.name, self.unit, -math.inf if self.minimum is None else self.minimum,
                                math.inf if self.maximum is None else self.maximum)
        return factor.check(value)

    def cli_value(self, value: Any) -> str:
        """The text passed as ``--clinical NAME=VALUE``: a category's label, else the number."""
        number = self.check(value)
        if self.levels:
            return next(label for label, code in self.levels.items() if float(code) == number)
        return repr(number)


def _finite_or_none(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


@lru_cache(maxsize=8)
def _nomogram_fields(path: str, _mtime_ns: int) -> tuple[ClinicalField, ...]:
    try:
        from .survival.features import load_survival_model
    except ImportError as exc:
        raise InputError(f"reading the nomogram needs the Python package {exc.name!r}: click 'Install dependencies'") from None
    model = load_survival_model(Path(path))
    fields = []
    for name in model.clinical_variables:
        spec = model.variables[name]
        low, high = spec.valid_range if spec.valid_range is not None else (None, None)
        fields.append(ClinicalField(name, "", _finite_or_none(low), _finite_or_none(high),
                                    {str(k): float(v) for k, v in spec.levels.items()} if spec.levels else None,
                                    spec.label if spec.label != name else "",
                                    training_range=tuple(spec.training_range) if spec.training_range else None,
                                    sources=["nomogram"]))
    return tuple(fields)


def nomogram_fields(path: str | Path) -> list[ClinicalField]:
    """The clinical inputs of a survival model or nomogram file (its deep-learning signature is
    computed from the images, not asked); InputError when the file is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"nomogram file {path} does not exist")
    return [dataclasses.replace(f, sources=list(f.sources)) for f in _nomogram_fields(str(path), path.stat().st_mtime_ns)]


@lru_cache(maxsize=8)
def _survival_phases(path: str, _mtime_ns: int) -> tuple[str, ...]:
    try:
        from .survival.features import load_survival_model
    except ImportError as exc:
        raise InputError(f"reading the nomogram needs the Python package {exc.name!r}: click 'Install dependencies'") from None
    return tuple(load_survival_model(Path(path)).image_phases)


def survival_phases(path: str | Path | None) -> list[str]:
    """Phases a survival model computes its deep-learning signature from (first = its reference grid);
    empty for a nomogram without image signature or no file. InputError when the file is not one."""
    if path is None:
        return []
    path = Path(path)
    if not path.is_file():
        raise InputError(f"nomogram file {path} does not exist")
    return list(_survival_phases(str(path), path.stat().st_mtime_ns))


def default_nomogram(model: str) -> Path | None:
    """The survival model file registered as the default for a response model (registry name),
    its checksum verified; None when there is none (or it is damaged: logged)."""
    from .bundle import default_survival_model, verify_survival_model
    from .errors import BundleError

    try:
        entry = default_survival_model(model) if model else None
        return verify_survival_model(entry) if entry is not None else None
    except BundleError as exc:
        logger.warning("default survival model of %s not used: %s", model, exc)
        return None


def nomogram_after_model_change(new_model: str, current: Path | None) -> Path | None:
    """The nomogram path after the user picks ``new_model``: a path the user chose (not a registered
    default) is kept; an empty path or another model's registered default becomes ``new_model``'s
    default (None when it has none). So the demo survival model follows the demo response model,
    and clearing the field sticks until the model is changed."""
    from .bundle import read_survival_registry
    from .errors import BundleError

    if current is not None:
        try:
            defaults = {entry.model_file().resolve() for entry in read_survival_registry()}
        except BundleError:
            defaults = set()
        if Path(current).resolve() not in defaults:
            return current
    return default_nomogram(new_model)


@dataclass(frozen=True)
class PhaseSelector:
    """One extra volume selector of the inputs section: a model input or a survival-only phase."""

    phase: str
    label: str
    tooltip: str
    survival_only: bool = False


def phase_selectors(card: BundleCard | None, survival: Sequence[str] = ()) -> list[PhaseSelector]:
    """Selectors beside the reference: the model's other inputs ("portal:"), then each phase the
    survival model needs that the model does not take ("portal (survival):"). A survival phase
    that is a model input (or the reference) reuses that volume and gets no selector."""
    phases = [p for p in card.inputs] if card is not None else []
    selectors = [PhaseSelector(p.name, f"{p.name}:", f"Volume of phase '{p.name}' ({p.modality}); resampled onto the "
                               "reference. " + (p.description or "")) for p in phases[1:]]
    taken = {p.name for p in phases}
    for name in survival:
        if name not in taken:
            taken.add(name)
            selectors.append(PhaseSelector(
                name, f"{name} (survival):",
                f"Volume of phase '{name}' for the survival model's deep-learning signature only (the response model "
                "does not use it); its DenseNet features are computed in the tumour segment.", survival_only=True))
    return selectors


def clinical_fields(card: BundleCard | None, nomogram: Sequence[ClinicalField] = ()) -> list[ClinicalField]:
    """Form fields: the model's clinical factors, then the nomogram's other variables (one per name)."""
    fields: dict[str, ClinicalField] = {}
    for factor in (card.clinical_factors if card is not None else []):
        fields[factor.name] = ClinicalField(factor.name, factor.unit, factor.minimum, factor.maximum,
                                            description=factor.description, sources=["model"])
    for variable in nomogram:
        existing = fields.get(variable.name)
        if existing is None:
            fields[variable.name] = dataclasses.replace(variable, sources=list(variable.sources or ["nomogram"]))
        else:
            existing.sources.append("nomogram")
            existing.levels = existing.levels or variable.levels
            existing.training_range = existing.training_range or variable.training_range
            existing.label = existing.label or variable.label
    return list(fields.values())


def parse_clinical_values(text: str | None) -> dict[str, Any]:
    """Clinical values stored in the parameter node (JSON object); anything else gives {}."""
    try:
        values = json.loads(text or "{}")
    except ValueError:
        logger.warning("clinical values in the parameter node are not JSON; ignored")
        return {}
    return dict(values) if isinstance(values, dict) else {}


def dump_clinical_values(values: Mapping[str, Any]) -> str:
    return json.dumps(dict(values), sort_keys=True)


@dataclass(frozen=True)
class SpinBoxConfig:
    """How to set up the QDoubleSpinBox of a numeric field; ``unset`` shows as "not set"."""

    minimum: float
    maximum: float
    unset: float
    decimals: int
    single_step: float
    suffix: str
    tooltip: str


def spinbox_config(item: ClinicalField) -> SpinBoxConfig:
    """Range = the accepted range plus one step below it, which stands for 'not entered yet'."""
    low = -1.0e6 if item.minimum is None else float(item.minimum)
    high = 1.0e6 if item.maximum is None else float(item.maximum)
    span = high - low
    step = 10 ** math.floor(math.log10(span / 100)) if span > 0 else 1.0
    step = min(max(step, 0.001), 100.0)
    decimals = max(0, min(4, -int(math.floor(math.log10(step)))))
    used_by = " and ".join(item.sources) or "model"
    tooltip = f"{item.title}: {low:g}–{high:g} {item.unit}".rstrip() + f" (used by the {used_by})."
    if item.training_range:
        tooltip += (f" Training range {item.training_range[0]:g}–{item.training_range[1]:g}; "
                    "outside it the nomogram extrapolates.")
    if item.description:
        tooltip += f" {item.description}"
    return SpinBoxConfig(low - step, high, low - step, decimals, step, f" {item.unit}" if item.unit else "", tooltip)


def configure_spinbox(widget: Any, item: ClinicalField, value: float | None = None) -> SpinBoxConfig:
    """Set up a QDoubleSpinBox (PythonQt in Slicer or PySide6 offscreen: same methods) for ``item``."""
    config = spinbox_config(item)
    widget.setDecimals(config.decimals)
    widget.setRange(config.minimum, config.maximum)
    widget.setSingleStep(config.single_step)
    widget.setSuffix(config.suffix)
    widget.setSpecialValueText("not set")
    widget.setToolTip(config.tooltip)
    widget.setValue(config.unset if value is None else float(value))
    return config


def spinbox_value(config: SpinBoxConfig, value: float) -> float | None:
    """The field value from the spin box: None when it shows 'not set'."""
    return None if value <= config.unset + 1e-12 else float(value)


# --- inputs and Apply blockers ------------------------------------------------------------------
@dataclass
class PanelInputs:
    """Everything Apply needs, as the widget (or a test) collected it: nodes are MRML nodes or None."""

    reference: Any = None
    phase_volumes: dict[str, Any] = field(default_factory=dict)  # extra phases by name
    segmentation: Any = None
    segment_id: str = ""
    segment_problem: str | None = None
    model: str = ""
    card: BundleCard | None = None
    model_problem: str | None = None
    clinical_fields: list[ClinicalField] = field(default_factory=list)
    clinical_values: dict[str, Any] = field(default_factory=dict)
    nomogram: Path | None = None
    nomogram_problem: str | None = None
    missing_packages: list[str] = field(default_factory=list)
    survival_phases: list[str] = field(default_factory=list)  # what the survival model's signature needs

    @property
    def phase_names(self) -> list[str]:
        return [p.name for p in self.card.inputs] if self.card is not None else []

    @property
    def survival_only_phases(self) -> list[str]:
        """Survival phases that are not model inputs: they get their own selector and file."""
        return [p.phase for p in phase_selectors(self.card, self.survival_phases) if p.survival_only]

    def image_nodes(self) -> list[Any]:
        """Reference first, then the other phases in the model's order."""
        return [self.reference] + [self.phase_volumes.get(name) for name in self.phase_names[1:]]

    def survival_nodes(self) -> dict[str, Any]:
        """The volumes of the survival-only phases, by phase (None where not chosen)."""
        return {name: self.phase_volumes.get(name) for name in self.survival_only_phases}


def _name(node: Any) -> str:
    return node.GetName() if hasattr(node, "GetName") else str(node)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value))


def apply_blockers(inputs: PanelInputs) -> list[str]:
    """Why Apply cannot run, one sentence per problem, in the order the panel shows its inputs."""
    blockers: list[str] = []
    if inputs.missing_packages:
        blockers.append(f"Python package(s) {', '.join(inputs.missing_packages)} not installed: "
                        "click 'Install dependencies'.")
    if not inputs.model:
        blockers.append("Choose a model.")
    elif inputs.model_problem:
        blockers.append(inputs.model_problem)
    phases = inputs.phase_names
    if inputs.reference is None:
        blockers.append(f"Choose the reference volume ({phases[0]})." if phases else "Choose the reference volume.")
    for name in phases[1:]:
        if inputs.phase_volumes.get(name) is None:
            blockers.append(f"Choose a volume for phase '{name}'.")
    survival_only = inputs.survival_only_phases if not inputs.nomogram_problem else []
    for name in survival_only:
        if inputs.phase_volumes.get(name) is None:
            blockers.append(f"Choose a volume for phase '{name}' (survival): the survival model's signature needs it.")
    chosen = [(name, node) for name, node in zip(phases or ["reference"], inputs.image_nodes()) if node is not None]
    chosen += [(f"{name} (survival)", inputs.phase_volumes.get(name)) for name in survival_only
               if inputs.phase_volumes.get(name) is not None]
    for index, (name, node) in enumerate(chosen):
        for other_name, other in chosen[:index]:
            if other is node:
                blockers.append(f"Volume '{_name(node)}' is chosen for both '{other_name}' and '{name}'; "
                                "each phase needs its own volume.")
    if inputs.segmentation is None:
        blockers.append("Choose a segmentation, or click 'Edit in Segment Editor' to draw the tumour.")
    elif not inputs.segment_id:
        blockers.append(f"Choose the tumour segment of '{_name(inputs.segmentation)}'.")
    elif inputs.segment_problem:
        blockers.append(inputs.segment_problem)
    for item in inputs.clinical_fields:
        value = inputs.clinical_values.get(item.name)
        if _is_empty(value):
            unit = f" ({item.unit})" if item.unit else ""
            blockers.append(f"Enter clinical factor '{item.title}'{unit}.")
            continue
        try:
            item.check(value)
        except InputError as exc:
            blockers.append(str(exc)[0].upper() + str(exc)[1:] + ".")
    if inputs.nomogram_problem:
        blockers.append(inputs.nomogram_problem)
    return blockers


def blockers_text(blockers: Sequence[str]) -> str:
    """The text of the 'why is Apply disabled' label and the Apply tooltip."""
    if not blockers:
        return ""
    return "Apply is disabled:\n" + "\n".join(f"• {b}" for b in blockers)


def segment_problem(segmentation_node: Any, segment_id: str) -> str | None:
    """Why the chosen segment cannot be used (not found, empty), or None; cheap enough for every edit.

    Looks at the segment's binary labelmap (shared layers: only voxels of its label value count)
    or, for surface segments, its number of points; no copy onto the reference grid is made.
    """
    from .mrml import resolve_segment_id

    if segmentation_node is None or not segment_id:
        return None
    try:
        segment_id = resolve_segment_id(segmentation_node, segment_id)
    except InputError as exc:
        return str(exc)[0].upper() + str(exc)[1:] + "."
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    name = segment.GetName()
    labelmap = segment.GetRepresentation("Binary labelmap")
    if labelmap is not None:
        extent = labelmap.GetExtent()
        scalars = labelmap.GetPointData().GetScalars() if labelmap.GetPointData() is not None else None
        if scalars is not None and extent[1] >= extent[0] and extent[3] >= extent[2] and extent[5] >= extent[4]:
            from vtk.util.numpy_support import vtk_to_numpy

            if (vtk_to_numpy(scalars) == segment.GetLabelValue()).any():
                return None
    else:
        surface = segment.GetRepresentation("Closed surface")
        if surface is not None and surface.GetNumberOfPoints() > 0:
            return None
    return f"Segment '{name}' is empty: draw the tumour in the Segment Editor."


# --- the request and the background run ---------------------------------------------------------
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "image"


@dataclass
class PredictionRequest:
    """The files and options of one CLI run (what ``tace-response predict`` gets)."""

    image_paths: list[Path]
    segmentation_path: Path
    segment: str
    model: str
    clinical: dict[str, str] = field(default_factory=dict)
    nomogram: Path | None = None
    device: str = "auto"
    case_id: str = "case"
    survival_images: dict[str, Path] = field(default_factory=dict)  # survival-only phases

    def cli_arguments(self, output: str | Path) -> list[str]:
        arguments = ["predict"]
        for path in self.image_paths:
            arguments += ["--image", str(path)]
        arguments += ["--segmentation", str(self.segmentation_path), "--segment", self.segment,
                      "--bundle", self.model, "--output", str(output), "--device", self.device,
                      "--case-id", self.case_id]
        for name, value in self.clinical.items():
            arguments += ["--clinical", f"{name}={value}"]
        if self.nomogram is not None:
            arguments += ["--nomogram", str(self.nomogram)]
        for phase, path in self.survival_images.items():
            arguments += ["--survival-image", f"{phase}={path}"]
        return arguments + ["--progress"]


def write_case_inputs(folder: str | Path, inputs: PanelInputs, device: str = "auto") -> PredictionRequest:
    """Write the chosen volumes (NRRD, world geometry) and the segment (.seg.nrrd on the reference grid).

    Raises InputError if Apply would be blocked, so scripts get the same messages as the panel.
    """
    from .io import write_segmentation, write_volume
    from .mrml import segmentation_from_node, volume_from_node

    blockers = apply_blockers(inputs)
    if blockers:
        raise InputError(" ".join(blockers))
    if device not in DEVICE_CHOICES and not re.fullmatch(r"cuda:\d+|mps", device):
        raise InputError(f"device must be one of {DEVICE_CHOICES}, got {device!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = inputs.phase_names or ["reference"]
    paths = []
    for index, (name, node) in enumerate(zip(names, inputs.image_nodes())):
        volume = volume_from_node(node, label=f"{name} volume {_name(node)!r}")
        # uncompressed: written in the GUI thread at Apply, read once by the background process
        paths.append(write_volume(volume, folder / f"{index:02d}_{_file_stem(name)}.nrrd", compress=False))
    survival_paths = {}
    if inputs.nomogram is not None:
        for index, (name, node) in enumerate(inputs.survival_nodes().items()):
            volume = volume_from_node(node, label=f"{name} (survival) volume {_name(node)!r}")
            survival_paths[name] = write_volume(volume, folder / f"s{index:02d}_{_file_stem(name)}.nrrd", compress=False)
    segmentation = segmentation_from_node(inputs.segmentation, inputs.reference, [inputs.segment_id])
    segmentation_path = write_segmentation(segmentation, folder / "tumour.seg.nrrd")
    clinical = {item.name: item.cli_value(inputs.clinical_values[item.name]) for item in inputs.clinical_fields}
    return PredictionRequest(paths, segmentation_path, inputs.segment_id, inputs.model, clinical, inputs.nomogram,
                             device, _file_stem(_name(inputs.reference)), survival_paths)


class PredictionRun:
    """Inputs written, the CLI run in the background, the result read back: all but MRML output and Qt.

    ``start()`` writes the inputs into the run's private folder and launches
    ``python -m TACEResponseLib.cli predict … --progress``; ``poll()`` / ``wait()`` report
    progress; after success ``read_result()`` gives the :class:`PredictionResult` and heatmap;
    ``cleanup()`` removes every temporary file (unless ``keep_files``).
    """

    def __init__(self, inputs: PanelInputs, *, device: str = "auto", python: str | None = None,
                 env: Mapping[str, str] | None = None, work_root: str | Path | None = None,
                 keep_files: bool = False, grace_period: float = 1.0) -> None:
        from .process import OUTPUT_PLACEHOLDER, BackgroundRun, cli_command, library_environment

        self.inputs = inputs
        self.device = device
        self.request: PredictionRequest | None = None
        self._command = lambda request: cli_command(request.cli_arguments(OUTPUT_PLACEHOLDER), python)
        self.run = BackgroundRun(required_outputs=("result.json", "heatmap.nrrd"), env=library_environment(env),
                                 work_root=work_root, keep_work_dir=keep_files, grace_period=grace_period)

    def start(self) -> "PredictionRun":
        try:
            self.request = write_case_inputs(self.run.inputs_dir, self.inputs, self.device)
        except BaseException:
            self.run.cancel()  # removes the half-written inputs
            raise
        self.run.start(self._command(self.request))
        return self

    def poll(self):
        return self.run.poll()

    def wait(self, timeout: float | None = None):
        return self.run.wait(timeout)

    def cancel(self) -> None:
        self.run.cancel()

    @property
    def work_dir(self) -> Path:
        return self.run.work_dir

    def read_result(self):
        """``(PredictionResult, heatmap Volume)`` of a successful run."""
        from .io import read_volume
        from .results import PredictionResult

        if self.run.output_dir is None:
            raise TACEResponseError(f"no result to read: the run {self.run.state.value}")
        result = PredictionResult.read_json(self.run.output_dir / "result.json")
        heatmap = read_volume(self.run.output_dir / (result.heatmap_path or "heatmap.nrrd"))
        result.heatmap = heatmap
        return result, heatmap

    def cleanup(self) -> None:
        self.run.cleanup()


# --- results ------------------------------------------------------------------------------------
CLASS_DESCRIPTIONS = {
    "CR": "complete response",
    "PR": "partial response",
    "SD": "stable disease",
    "PD": "progressive disease",
    "responder": "responder",
    "non-responder": "non-responder",
}
#: probability bars in the .ui (probabilityBar0…); more classes get bars added at run time
PROBABILITY_BARS = 4
ORR_LABEL = "ORR (CR+PR)"


@dataclass
class ResultView:
    """What the results section shows for one tumour of a result."""

    headline: str
    detail: str
    bars: list[tuple[str, int, bool]]  # (class, percent, is the predicted class)
    orr: tuple[str, int] | None
    tumours: list[str]
    tumour_index: int
    warning: str
    risk_text: str
    survival_text: str
    status: str


def _percent(value: float | None) -> int:
    return 0 if value is None or value != value else int(round(100 * float(value)))


def survival_texts(survival: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(risk group line, survival-at-times line)`` of a patient's nomogram read-out."""
    if not survival:
        return "No nomogram chosen: no survival estimate.", ""
    points = survival.get("total_points")
    risk = str(survival.get("risk_group", "?"))
    risk_text = f"{risk.capitalize()} risk group" + (f" · {points:.0f} nomogram points" if points is not None else "")
    parts = [f"{time}: {_percent(s)} %" for time, s in survival_at(survival).items()]
    return risk_text, ("Predicted survival — " + " · ".join(parts)) if parts else ""


def survival_at(survival: Mapping[str, Any] | None) -> dict[str, float]:
    """``{"12 months": 0.81, …}`` from a survival read-out (its times and probabilities)."""
    if not survival:
        return {}
    unit = survival.get("time_unit", "months")
    times, values = survival.get("survival_times"), survival.get("survival")
    if times and values:
        return {f"{float(t):g} {unit}": float(v) for t, v in zip(times, values)}
    return {str(k): float(v) for k, v in (survival.get("survival_at") or {}).items()}


def result_view(result, tumour_index: int = 0) -> ResultView:
    """Headline class, bars, ORR, warning, risk group and survival text for one tumour."""
    if not result.tumours:
        raise InputError(f"result of case {result.case_id!r} has no tumour")
    tumour_index = min(max(tumour_index, 0), len(result.tumours) - 1)
    tumour = result.tumours[tumour_index]
    probabilities = tumour.probability_of
    predicted = tumour.predicted_class
    detail = f"{CLASS_DESCRIPTIONS.get(predicted, predicted)} · probability {_percent(probabilities.get(predicted))} %"
    if tumour.volume_ml:
        detail += f" · {tumour.volume_ml:.1f} ml"
    bars = [(name, _percent(p), name == predicted) for name, p in zip(tumour.class_names, tumour.probabilities)]
    orr = (ORR_LABEL, _percent(tumour.objective_response_probability)) \
        if tumour.objective_response_probability is not None else None
    risk_text, survival_text = survival_texts(result.survival)
    seconds = result.timings.get("total")
    status = f"Model {result.bundle_id} on {result.device}" + (f", {seconds:.1f} s." if seconds else ".")
    return ResultView(headline=predicted, detail=detail, bars=bars, orr=orr, tumours=[t.label for t in result.tumours],
                      tumour_index=tumour_index, warning=result.warning if result.synthetic_model else "",
                      risk_text=risk_text, survival_text=survival_text, status=status)


def fill_results(ui: Any, view: ResultView) -> None:
    """Show a :class:`ResultView` in the results section (bars beyond the .ui's four must exist on ``ui``)."""
    ui.syntheticWarningLabel.setText(view.warning)
    ui.syntheticWarningLabel.setVisible(bool(view.warning))
    ui.predictedClassLabel.setText(view.headline)
    ui.predictedClassDetailLabel.setText(view.detail)
    count = max(len(view.bars), PROBABILITY_BARS)
    for index in range(count):
        label, bar = getattr(ui, f"probabilityLabel{index}", None), getattr(ui, f"probabilityBar{index}", None)
        if label is None or bar is None:
            continue
        shown = index < len(view.bars)
        label.setVisible(shown)
        bar.setVisible(shown)
        if shown:
            name, percent, predicted = view.bars[index]
            label.setText(f"<b>{name}</b>" if predicted else name)
            bar.setValue(percent)
            bar.setToolTip(f"P({name}) = {percent} %")
    ui.orrLabel.setVisible(view.orr is not None)
    ui.orrBar.setVisible(view.orr is not None)
    if view.orr is not None:
        ui.orrLabel.setText(view.orr[0])
        ui.orrBar.setValue(view.orr[1])
    ui.riskGroupLabel.setText(view.risk_text)
    ui.survivalSummaryLabel.setText(view.survival_text)
    ui.survivalSummaryLabel.setVisible(bool(view.survival_text))


def clear_results(ui: Any) -> None:
    """The results section before any prediction."""
    ui.syntheticWarningLabel.setVisible(False)
    ui.predictedClassLabel.setText("—")
    ui.predictedClassDetailLabel.setText("No prediction yet.")
    for index in range(PROBABILITY_BARS):
        getattr(ui, f"probabilityBar{index}").setValue(0)
    ui.orrBar.setValue(0)
    ui.riskGroupLabel.setText(survival_texts(None)[0])
    ui.survivalSummaryLabel.setText("")


def result_rows(result) -> list[dict[str, Any]]:
    """One CSV row per tumour: probabilities, objective response, volume, survival, model, warning."""
    survival = result.survival or {}
    rows = []
    for tumour in result.tumours:
        row: dict[str, Any] = {"case_id": result.case_id, "tumour": tumour.label, "segment_id": tumour.segment_id,
                               "predicted": tumour.predicted_class}
        row.update({f"P({c})": round(float(p), 6) for c, p in zip(tumour.class_names, tumour.probabilities)})
        row["P(objective response)"] = (None if tumour.objective_response_probability is None
                                        else round(float(tumour.objective_response_probability), 6))
        row["volume_ml"] = round(float(tumour.volume_ml), 3)
        if survival:
            row["risk_group"] = survival.get("risk_group")
            row["total_points"] = survival.get("total_points")
            row.update({f"S({time})": value for time, value in survival_at(survival).items()})
        row.update({"model": result.bundle_id, "model_sha256": result.bundle_sha256, "device": result.device,
                    "synthetic_model": result.synthetic_model, "note": result.warning})
        rows.append(row)
    return rows


def export_report(result, folder: str | Path, *, reference=None, heatmap=None, mask=None,
                  nomogram_png: str | Path | None = None, tumour_index: int = 0) -> list[Path]:
    """Write ``<case>_tace_response.csv``, the overlay figure as PNG and PDF (when the reference and
    heatmap volumes are given) and a copy of the nomogram figure; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{_file_stem(result.case_id)}_tace_response"
    rows = result_rows(result)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    written = []
    with atomic_path(folder / f"{stem}.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    written.append(folder / f"{stem}.csv")
    if reference is not None and heatmap is not None:
        from .report import save_prediction_png

        for suffix in (".png", ".pdf"):
            written.append(save_prediction_png(reference, heatmap, result, folder / f"{stem}_overlay{suffix}",
                                               mask=mask, tumour_index=tumour_index))
    if nomogram_png is not None and Path(nomogram_png).is_file():
        target = folder / f"{stem}_nomogram.png"
        shutil.copyfile(nomogram_png, target)
        written.append(target)
    return written


def nomogram_figure(nomogram_path: str | Path, survival: Mapping[str, Any], png: str | Path,
                    title: str | None = None) -> Path:
    """The nomogram (of a survival model or nomogram file) with the patient's values and points marked."""
    from .survival.features import load_survival_model
    from .survival.nomogram import PatientNomogram, plot_nomogram

    model = load_survival_model(Path(nomogram_path))
    known = {f.name for f in dataclasses.fields(PatientNomogram)}
    patient = PatientNomogram(**{k: v for k, v in survival.items() if k in known})
    return plot_nomogram(model.nomogram, png, patient=patient, title=title)


# --- Python dependencies ------------------------------------------------------------------------
#: import name → pip project name of what the prediction process needs
REQUIRED_PACKAGES: dict[str, str] = {"torch": "torch", "monai": "monai", "lifelines": "lifelines",
                                     "SimpleITK": "SimpleITK"}
#: installed together (same pins) so pip does not pull an incompatible version (lifelines: pandas < 3)
COMPANIONS: dict[str, tuple[str, ...]] = {"lifelines": ("pandas",)}


def dependency_status(modules: Iterable[str] = tuple(REQUIRED_PACKAGES)) -> list[str]:
    """Import names among ``modules`` that are not installed (found without importing them)."""
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def pytorch_utils_available() -> bool:
    """True when Slicer's PyTorch extension (PyTorchUtils module) is installed."""
    return not dependency_status(["PyTorchUtils"])


def pinned_requirements(path: str | Path | None = None) -> dict[str, str]:
    """``{project name (lower case): requirement line}`` from requirements.txt (empty if absent)."""
    candidates = [Path(path)] if path else [resources_dir().parent / "requirements.txt", resources_dir() / "requirements.txt"]
    for candidate in candidates:
        if candidate.is_file():
            pins = {}
            for line in candidate.read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip()
                match = re.match(r"^([A-Za-z0-9_.\-]+)", line)
                if match:
                    pins[match.group(1).lower()] = line
            return pins
    return {}


@dataclass(frozen=True)
class InstallStep:
    """Install one package: ``method`` is "pytorch_utils" (Slicer's PyTorch extension) or "pip"."""

    package: str
    method: str
    requirement: str
    note: str = ""


def install_plan(missing: Sequence[str], pytorch_utils_available: bool,
                 requirements: Mapping[str, str] | None = None) -> list[InstallStep]:
    """What to install and how: torch first (through PyTorchUtils when present, which picks the
    right CPU/CUDA build), then the other packages with slicer.util.pip_install of the pinned lines."""
    pins = pinned_requirements() if requirements is None else {k.lower(): v for k, v in requirements.items()}
    steps: list[InstallStep] = []
    ordered = sorted(missing, key=lambda m: (m != "torch", list(REQUIRED_PACKAGES).index(m)
                                             if m in REQUIRED_PACKAGES else len(REQUIRED_PACKAGES)))
    for module in ordered:
        project = REQUIRED_PACKAGES.get(module, module)
        line = pins.get(project.lower(), project)
        if project == "torch" and pytorch_utils_available:
            version = re.search(r"==\s*([\w.]+)", line)
            steps.append(InstallStep("torch", "pytorch_utils", f">={version.group(1)}" if version else "",
                                     "through the PyTorch extension (chooses the CPU or CUDA build)"))
            continue
        companions = [pins.get(c, c) for c in COMPANIONS.get(project, ())]
        note = "with " + ", ".join(companions) + " to keep compatible versions" if companions else ""
        if project == "torch":
            note = "the PyTorch extension is not installed; pip installs the default (CPU) build"
        steps.append(InstallStep(project, "pip", " ".join([line, *companions]), note))
    return steps


def install_summary(steps: Sequence[InstallStep]) -> str:
    """Human-readable list for the confirmation dialog."""
    lines = []
    for step in steps:
        how = "PyTorch extension" if step.method == "pytorch_utils" else "pip"
        lines.append(f"{step.package}: {step.requirement or 'latest'} via {how}" + (f" ({step.note})" if step.note else ""))
    return "\n".join(lines)


def dependency_message(missing: Sequence[str]) -> str:
    """The text of the dependency banner."""
    if not missing:
        return ""
    return (f"Python package(s) needed for the prediction are not installed: {', '.join(missing)}. "
            "Click 'Install dependencies' (needs a network connection; may take several minutes).")
