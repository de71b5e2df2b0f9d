"""The inputs form: one volume selector per phase, and the clinical form built from the model card and the nomogram.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.networks.bundle import BundleCard
from TACEResponseLib.networks.clinical import ClinicalFactor

logger = logging.getLogger(__name__)

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
        from TACEResponseLib.survival.model import load_survival_model
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
        from TACEResponseLib.survival.model import load_survival_model
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


def training_range_problems(fields: Sequence[ClinicalField], values: Mapping[str, Any]) -> dict[str, str]:
    """``{field name: sentence}`` for each numeric value outside its nomogram training range (accepted,
    but the nomogram extrapolates there: ALT 400 U/L gave 0 % 12-month survival on the demo nomogram)."""
    problems = {}
    for item in fields:
        value = values.get(item.name)
        if item.levels or not item.training_range or value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        low, high = item.training_range
        if not low <= number <= high:
            unit = f" {item.unit}" if item.unit else ""
            problems[item.name] = (f"{item.title} = {number:g}{unit} is outside the nomogram's training range "
                                   f"{low:g}–{high:g}{unit}: the survival estimate is extrapolated.")
    return problems


#: how a clinical field whose value is outside the training range is marked
OUT_OF_RANGE_STYLE = "background-color: #ffe3b3;"


def mark_clinical_field(label: Any, widget: Any, item: ClinicalField, problem: str, tooltip: str) -> None:
    """Mark (or unmark) one clinical form row: ⚠ before its label, an orange field, the sentence as tooltip."""
    label.setText(f"⚠ {item.title}:" if problem else f"{item.title}:")
    label.setToolTip(problem)
    widget.setStyleSheet(OUT_OF_RANGE_STYLE if problem else "")
    widget.setToolTip(f"{problem}\n\n{tooltip}" if problem else tooltip)
