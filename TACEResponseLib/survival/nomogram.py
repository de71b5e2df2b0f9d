"""Cox nomogram: points per variable, total points, survival at 1/2/3 years, risk group.

Scaling follows R's ``rms::nomogram``. Each variable ``j`` contributes ``e_j(x)`` to the
linear predictor: ``b_j x`` for a numeric (or ordinal) one, ``b_j [x > cut-off]`` for a
dichotomised one, and the log hazard ratio of its level against the reference for a
categorical one (dummy coding, :mod:`.data`). Over the training values ``e_j`` spans
``r_j = max e_j - min e_j``; the variable with the widest span gets 0-100 points and every
variable gets

    points_j(x) = (e_j(x) - min e_j) * 100 / max_j r_j

(0 points at the value of lowest risk). So the total points ``T`` map to the linear
predictor by an exact affine function, ``lp = T / points_per_lp + lp_offset``. Numeric values
outside the training range extrapolate (points below 0 or above 100), with a warning.

A categorical variable is **one axis** with a tick per level (as rms draws factors), never
one axis per dummy column: a patient has one BCLC stage, so the two dummies can never both
score. Dummy columns given as input (``BCLC[B]=1``) are folded back into the variable, and an
impossible combination (``BCLC[B]=1`` and ``BCLC[C]=1``) or a level without patients in the
training cohort is refused. Files of version 1 (before categories) hold numeric and ordinal
variables only and read the same as before.

The linear predictor is lifelines' centred one, ``lp = sum_j e_j(x_j) - mean e_j`` with the
training means, and survival is ``S(t | x) = exp(-H0(t) exp(lp))`` with lifelines' Breslow
baseline cumulative hazard ``H0`` (``baseline_cumulative_hazard_``, at the mean covariates),
linearly interpolated between event times exactly as lifelines' ``predict_survival_function``
does — so a saved nomogram reproduces lifelines' prediction without refitting.

Risk group: ``high`` when the linear predictor exceeds the median over training patients.
Times are in ``time_unit`` (months by default; 12/24/36 = 1/2/3 years).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.figures import new_figure, save_figure
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.survival.cox import CoxFit, CoxSelection, fit_cox, select_cox_model
from TACEResponseLib.survival.data import numeric_matrix

logger = logging.getLogger(__name__)

DEFAULT_SURVIVAL_TIMES = (12.0, 24.0, 36.0)
MAX_POINTS = 100.0
#: Nomogram files this code reads (2: categorical and dichotomised variables).
NOMOGRAM_VERSION = 2
_DUMMY = re.compile(r"^(?P<name>.+)\[(?P<level>[^\]]+)\]$")


@dataclass
class NomogramVariable(JsonRecord):
    """One axis of the nomogram: a clinical variable (or the signature), its effect and training range.

    ``coding``: ``"linear"`` (numeric or ordinal codes: ``coefficient`` per unit; ``levels``
    only name the codes), ``"categorical"`` (``level_effects``: log hazard ratio of each level
    against the ``reference``; ``levels`` are the codes of the levels seen in training) or
    ``"cutoff"`` (``coefficient`` for a value above ``cutoff``). ``mean``, ``minimum`` and
    ``maximum`` describe the training values (codes for categories); ``effect_mean`` is the
    training mean of the contribution (centring of categorical / dichotomised variables).
    """

    name: str
    coefficient: float
    mean: float
    minimum: float
    maximum: float
    label: str = ""
    levels: dict[str, float] | None = None
    coding: str = "linear"
    level_effects: dict[str, float] | None = None
    reference: str | None = None
    cutoff: float | None = None
    effect_mean: float | None = None

    def __post_init__(self) -> None:
        if self.coding not in ("linear", "categorical", "cutoff"):
            raise InputError(f"nomogram variable {self.name!r}: unknown coding {self.coding!r}")
        if self.coding == "categorical":
            if not self.levels or not self.level_effects or set(self.levels) != set(self.level_effects):
                raise InputError(f"nomogram variable {self.name!r}: a categorical variable needs the same levels "
                                 "in levels and level_effects")
        if self.coding == "cutoff" and self.cutoff is None:
            raise InputError(f"nomogram variable {self.name!r}: a dichotomised variable needs its cut-off")
        if self.coding != "linear" and self.effect_mean is None:
            raise InputError(f"nomogram variable {self.name!r}: effect_mean is needed for coding {self.coding!r}")

    @property
    def title(self) -> str:
        return self.label or self.name

    def effect(self, x: Any) -> np.ndarray:
        """Uncentred contribution to the linear predictor of values ``x`` (codes for categories)."""
        x = np.asarray(x, dtype=float)
        if self.coding == "categorical":
            by_code = {float(code): self.level_effects[label] for label, code in self.levels.items()}  # type: ignore[index,union-attr]
            out = np.array([by_code.get(float(v), np.nan) for v in x.ravel()], dtype=float).reshape(x.shape)
            return out
        if self.coding == "cutoff":
            return self.coefficient * (x > self.cutoff).astype(float)
        return self.coefficient * x

    def centred_effect(self, x: Any) -> np.ndarray:
        """``e(x) - mean e`` over training: this variable's part of lifelines' centred linear predictor."""
        x = np.asarray(x, dtype=float)
        if self.coding == "linear":
            return (x - self.mean) * self.coefficient
        return self.effect(x) - float(self.effect_mean)  # type: ignore[arg-type]

    @property
    def centre(self) -> float:
        """Training mean of the contribution (what lifelines subtracts)."""
        return self.coefficient * self.mean if self.coding == "linear" else float(self.effect_mean)  # type: ignore[arg-type]

    def _effect_range(self) -> tuple[float, float]:
        if self.coding == "categorical":
            values = list(self.level_effects.values())  # type: ignore[union-attr]
        else:
            values = list(self.effect([self.minimum, self.maximum]))
        return float(min(values)), float(max(values))

    @property
    def lowest_lp(self) -> float:
        """Smallest contribution over the training values (the value given 0 points)."""
        return self._effect_range()[0]

    @property
    def lp_span(self) -> float:
        low, high = self._effect_range()
        return high - low

    def describe(self) -> str:
        """The variable's effect in words (model cards, reports)."""
        if self.coding == "categorical":
            return f"log HR vs {self.reference}: " + ", ".join(
                f"{label} {effect:+.4g}" for label, effect in self.level_effects.items() if label != self.reference)  # type: ignore[union-attr]
        if self.coding == "cutoff":
            return f"log HR {self.coefficient:+.4g} above {self.cutoff:g}"
        return f"coefficient {self.coefficient:+.4g}" + (f" per level of {list(self.levels)}" if self.levels else "")

    def encode(self, values: pd.Series) -> pd.Series:
        """Category labels -> their numeric codes; numbers pass through unchanged (codes are checked later)."""
        if not self.levels:
            return values
        lookup = {str(k).strip().upper(): v for k, v in self.levels.items()}
        unknown = [v for v in values if isinstance(v, str) and v.strip().upper() not in lookup
                   and not _is_number(v)]
        if unknown:
            raise InputError(
                f"variable {self.name!r}: unknown category {unknown[0]!r}; "
                f"use one of {list(self.levels)} or their codes {list(self.levels.values())}"
            )
        return values.map(lambda v: lookup[v.strip().upper()] if isinstance(v, str) and v.strip().upper() in lookup
                          else v)

    def check_codes(self, x: pd.Series, where: str) -> None:
        """A categorical variable takes only the codes of its levels seen in training."""
        if self.coding != "categorical":
            return
        known = set(self.levels.values())  # type: ignore[union-attr]
        bad = [v for v in x if float(v) not in known]
        if bad:
            raise InputError(f"{where}: {self.name!r} = {bad[0]:g} is not a level the model knows; the training "
                             f"cohort had {list(self.levels)} (codes {sorted(known)}); a level without patients there "
                             "has no estimated effect")

    def tick_values(self, n: int = 6) -> tuple[list[float], list[str]]:
        """Axis ticks inside the training range, in the variable's own units (codes for categories)."""
        if self.coding == "cutoff":
            return [self.minimum, self.maximum], [f"≤ {_fmt(self.cutoff)}", f"> {_fmt(self.cutoff)}"]  # type: ignore[arg-type]
        if self.levels:
            items = sorted((code, label) for label, code in self.levels.items()
                           if self.minimum - 1e-9 <= code <= self.maximum + 1e-9)
            return [c for c, _ in items], [lab for _, lab in items]
        values = _nice_ticks(self.minimum, self.maximum, n)
        return values, [_fmt(v) for v in values]

    def shown_value(self, value: float) -> str:
        names = {float(c): lab for lab, c in (self.levels or {}).items()}
        return names.get(float(value), f"{value:.4g}")


def _variable(fit: CoxFit, name: str, label: str, levels: Mapping[str, float] | None) -> NomogramVariable:
    """The nomogram axis of one variable of a Cox fit (its coding taken from the fit's design)."""
    x = fit.data[name].to_numpy(dtype=float)
    common = dict(name=name, mean=float(x.mean()), minimum=float(x.min()), maximum=float(x.max()), label=label)
    params = fit.fitter.params_
    coding = fit.design.coding(name) if fit.design is not None else None
    if coding is not None and coding.kind == "categorical":
        present = fit.design.levels[name]
        reference = fit.design.reference[name]
        effects = {label_: (0.0 if label_ == reference else float(params[coding.dummy_column(label_)]))
                   for label_ in present}
        variable = NomogramVariable(coefficient=0.0, levels=dict(present), coding="categorical", level_effects=effects,
                                    reference=reference, effect_mean=0.0, **common)
        variable.effect_mean = float(variable.effect(x).mean())
        return variable
    if coding is not None and coding.kind == "cutoff":
        coefficient = float(params[coding.cutoff_column])
        return NomogramVariable(coefficient=coefficient, coding="cutoff", cutoff=coding.cutoff,
                                effect_mean=float(coefficient * (x > coding.cutoff).mean()), **common)
    if coding is not None and coding.kind == "ordinal" and levels is None:
        levels = coding.levels
    return NomogramVariable(coefficient=float(params[name]),
                            levels={str(k): float(c) for k, c in levels.items()} if levels else None, **common)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class PatientNomogram(JsonRecord):
    """One patient's nomogram read-out (what the panel, tables and JSON show)."""

    values: dict[str, float]
    points: dict[str, float]
    total_points: float
    linear_predictor: float
    survival_times: list[float]
    survival: list[float]
    risk_group: str
    curve_times: list[float]
    curve_survival: list[float]
    time_unit: str = "months"
    model: str = ""

    def survival_at(self, time: float) -> float:
        return self.survival[self.survival_times.index(float(time))]


@dataclass
class Nomogram(JsonRecord):
    """A fitted Cox model as a nomogram; saved as JSON, usable without lifelines or refitting."""

    json_header = {"kind": "TACEResponse Cox nomogram", "version": NOMOGRAM_VERSION}

    name: str
    variables: list[NomogramVariable]
    points_per_lp: float
    baseline_times: list[float]
    baseline_cumulative_hazard: list[float]
    risk_cutoff: float
    survival_times: list[float] = field(default_factory=lambda: list(DEFAULT_SURVIVAL_TIMES))
    time_unit: str = "months"
    time_col: str = ""
    event_col: str = ""
    n_train: int = 0
    n_events: int = 0
    note: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> "Nomogram":
        version = data.get("version", 1) if isinstance(data, Mapping) else 1
        if isinstance(version, (int, float)) and version > NOMOGRAM_VERSION:
            raise InputError(f"{source or 'nomogram'}: nomogram file version {version} is newer than this "
                             f"TACEResponse reads ({NOMOGRAM_VERSION}); update TACEResponse")
        return super().from_dict(data, source)

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_cox(
        cls,
        fit: CoxFit,
        *,
        name: str = "nomogram",
        labels: Mapping[str, str] | None = None,
        levels: Mapping[str, Mapping[str, float]] | None = None,
        survival_times: Sequence[float] = DEFAULT_SURVIVAL_TIMES,
        time_unit: str = "months",
        note: str = "",
    ) -> "Nomogram":
        """Nomogram of a :class:`CoxFit` (from :func:`.cox.fit_cox` / stepwise), on its training data.

        Categorical and dichotomised variables take their coding from the fit; ``levels`` name
        the codes of ordinal (numeric) variables on their axis.
        """
        if not fit.covariates:
            raise InputError(f"nomogram {name!r}: the Cox model has no covariates (nothing was selected)")
        data = fit.data
        labels, levels = dict(labels or {}), dict(levels or {})
        variables = [_variable(fit, v, labels.get(v, ""), levels.get(v)) for v in fit.covariates]
        widest = max(var.lp_span for var in variables)
        if widest <= 0:
            raise InputError(f"nomogram {name!r}: every covariate is constant or has a zero coefficient")
        baseline = fit.fitter.baseline_cumulative_hazard_.iloc[:, 0]
        nomogram = cls(
            name=name,
            variables=variables,
            points_per_lp=MAX_POINTS / widest,
            baseline_times=[float(t) for t in baseline.index],
            baseline_cumulative_hazard=[float(h) for h in baseline.to_numpy()],
            risk_cutoff=0.0,
            survival_times=[float(t) for t in survival_times],
            time_unit=time_unit,
            time_col=fit.time_col,
            event_col=fit.event_col,
            n_train=fit.n,
            n_events=fit.n_events,
            note=note,
        )
        lp = nomogram.linear_predictor(data)
        design = fit.design.matrix(data) if fit.design is not None else data[fit.covariates]
        expected = fit.fitter.predict_log_partial_hazard(design).to_numpy(dtype=float)
        if not np.allclose(lp, expected, rtol=0, atol=1e-8):  # guards against a change in lifelines' centring
            raise RuntimeError(f"nomogram {name!r}: linear predictor disagrees with lifelines by {np.abs(lp - expected).max():g}")
        nomogram.risk_cutoff = float(np.median(lp))
        late = [t for t in nomogram.survival_times if t > nomogram.baseline_times[-1]]
        if late:
            logger.warning("nomogram %r: survival at %s %s is beyond the last training time %.1f (held constant)",
                           name, late, time_unit, nomogram.baseline_times[-1])
        return nomogram

    # --- the maps ----------------------------------------------------------------------
    @property
    def lp_offset(self) -> float:
        """``lp = total_points / points_per_lp + lp_offset``."""
        return float(sum(v.lowest_lp - v.centre for v in self.variables))

    @property
    def max_total_points(self) -> float:
        return float(sum(v.lp_span for v in self.variables) * self.points_per_lp)

    def _values(self, data: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
        """Numeric covariate table (categories encoded and checked) for a frame or one patient's dict."""
        frame = pd.DataFrame([dict(data)]) if isinstance(data, Mapping) else data
        if not isinstance(frame, pd.DataFrame):
            raise InputError(f"nomogram {self.name!r}: expected a DataFrame or a dict of values, got {type(data).__name__}")
        frame = self._fold_dummies(frame)
        missing = [v.name for v in self.variables if v.name not in frame.columns]
        if missing:
            raise InputError(
                f"nomogram {self.name!r}: missing value(s) for {missing}; it needs {[v.name for v in self.variables]}"
            )
        encoded = pd.DataFrame({v.name: v.encode(frame[v.name]) for v in self.variables}, index=frame.index)
        x = numeric_matrix(encoded, [v.name for v in self.variables], name=f"values for nomogram {self.name!r}")
        for v in self.variables:
            v.check_codes(x[v.name], f"values for nomogram {self.name!r}")
        return x

    def _fold_dummies(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Dummy columns (``BCLC[B]``...) given instead of a categorical variable -> its level code.

        A row with more than one level set, or a dummy that is not 0/1, is an impossible
        combination (one patient has one BCLC stage) and is refused.
        """
        categorical = {v.name: v for v in self.variables if v.coding == "categorical"}
        dummies: dict[str, dict[str, str]] = {}
        for column in frame.columns:
            match = _DUMMY.match(str(column))
            if match and match["name"] in categorical:
                dummies.setdefault(match["name"], {})[match["level"]] = column
        if not dummies:
            return frame
        frame = frame.copy()
        for name, columns in dummies.items():
            var = categorical[name]
            unknown = [level for level in columns if level not in var.levels]  # type: ignore[operator]
            if unknown:
                raise InputError(f"nomogram {self.name!r}: {name} has no level {unknown[0]!r} (levels {list(var.levels)})")
            block = frame[list(columns.values())].apply(pd.to_numeric, errors="coerce")
            if not block.isin([0, 1]).all().all():
                raise InputError(f"nomogram {self.name!r}: dummy columns of {name} ({', '.join(columns.values())}) "
                                 "must be 0 or 1")
            set_count = block.sum(axis=1)
            if (set_count > 1).any():
                row = block.index[set_count > 1][0]
                on = [c for c in columns.values() if block.loc[row, c] == 1]
                raise InputError(f"nomogram {self.name!r}: impossible combination {' and '.join(f'{c}=1' for c in on)} "
                                 f"(case {row!r}): a patient has one {var.title} level")
            code = pd.Series(var.levels[var.reference], index=frame.index, dtype=float)  # type: ignore[index]
            for level, column in columns.items():
                code[block[column] == 1] = var.levels[level]  # type: ignore[index]
            if name in frame.columns:
                given = var.encode(frame[name])
                if (pd.to_numeric(given, errors="coerce") != code).any():
                    raise InputError(f"nomogram {self.name!r}: {name} and its dummy columns disagree")
            frame[name] = code
        return frame

    def points(self, data: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
        """Points per variable (columns) for each row."""
        x = self._values(data)
        return pd.DataFrame(
            {v.name: (v.effect(x[v.name].to_numpy()) - v.lowest_lp) * self.points_per_lp for v in self.variables},
            index=x.index,
        )

    def total_points(self, data: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        return self.points(data).sum(axis=1).to_numpy(dtype=float)

    def linear_predictor(self, data: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Centred Cox linear predictor ``sum_j e_j(x_j) - mean e_j`` (lifelines' log partial hazard)."""
        x = self._values(data)
        if all(v.coding == "linear" for v in self.variables):  # the version-1 formula, bit for bit
            coef = np.array([v.coefficient for v in self.variables])
            mean = np.array([v.mean for v in self.variables])
            return (x.to_numpy(dtype=float) - mean) @ coef
        return np.sum([v.centred_effect(x[v.name].to_numpy()) for v in self.variables], axis=0)

    def lp_from_points(self, total_points: Any) -> np.ndarray:
        return np.asarray(total_points, dtype=float) / self.points_per_lp + self.lp_offset

    def points_from_lp(self, lp: Any) -> np.ndarray:
        return (np.asarray(lp, dtype=float) - self.lp_offset) * self.points_per_lp

    def cumulative_baseline_hazard(self, times: Any) -> np.ndarray:
        """Breslow ``H0(t)``, linearly interpolated as lifelines does (constant outside the data)."""
        return np.interp(np.asarray(times, dtype=float), self.baseline_times, self.baseline_cumulative_hazard)

    def survival_from_lp(self, lp: Any, times: Sequence[float] | None = None) -> np.ndarray:
        """``S(t | lp) = exp(-H0(t) exp(lp))``, shape (n patients, n times)."""
        times = self.survival_times if times is None else times
        h0 = self.cumulative_baseline_hazard(times)
        return np.exp(-np.outer(np.exp(np.atleast_1d(np.asarray(lp, dtype=float))), h0))

    def survival(self, data: pd.DataFrame | Mapping[str, Any], times: Sequence[float] | None = None) -> np.ndarray:
        return self.survival_from_lp(self.linear_predictor(data), times)

    def points_from_survival(self, survival: Any, time: float) -> np.ndarray:
        """Total points giving survival ``survival`` at ``time`` (inverse of the survival axis)."""
        h0 = float(self.cumulative_baseline_hazard(time))
        return self.points_from_lp(np.log(-np.log(np.asarray(survival, dtype=float)) / h0))

    def risk_group(self, data: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """``"high"`` where the linear predictor exceeds the training median, else ``"low"``."""
        return np.where(self.linear_predictor(data) > self.risk_cutoff, "high", "low")

    def patient(self, values: Mapping[str, Any]) -> PatientNomogram:
        """Points, total, linear predictor, survival at ``survival_times``, risk group and curve."""
        if not isinstance(values, Mapping):
            raise InputError(f"nomogram {self.name!r}: patient values must be a dict, got {type(values).__name__}")
        x = self._values(values).iloc[0]
        outside = [v.name for v in self.variables if v.coding == "linear" and not v.minimum <= x[v.name] <= v.maximum]
        if outside:
            logger.warning("nomogram %r: %s outside the training range; points are extrapolated", self.name, outside)
        points = self.points(values).iloc[0]
        lp = float(self.linear_predictor(values)[0])
        curve_times = [0.0, *self.baseline_times]
        return PatientNomogram(
            values={k: float(v) for k, v in x.items()},
            points={k: float(v) for k, v in points.items()},
            total_points=float(points.sum()),
            linear_predictor=lp,
            survival_times=list(self.survival_times),
            survival=[float(s) for s in self.survival_from_lp(lp)[0]],
            risk_group="high" if lp > self.risk_cutoff else "low",
            curve_times=curve_times,
            curve_survival=[1.0, *(float(s) for s in self.survival_from_lp(lp, self.baseline_times)[0])],
            time_unit=self.time_unit,
            model=self.name,
        )


# --- figure ----------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return f"{round(float(value), 8):g}"


def _nice_ticks(low: float, high: float, n: int) -> list[float]:
    from matplotlib.ticker import MaxNLocator

    if high <= low:
        return [low]
    ticks = MaxNLocator(nbins=n, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
    span = high - low
    return [float(t) for t in ticks if low - 1e-9 * span <= t <= high + 1e-9 * span]


SURVIVAL_TICKS = (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01)


def _spaced(positions: list[float], labels: list[str], min_gap: float) -> tuple[list[float], list[str]]:
    """Drop ticks closer than ``min_gap`` to the previously kept one (keeps labels legible)."""
    kept_p, kept_l = [], []
    for p, label in sorted(zip(positions, labels)):
        if not kept_p or p - kept_p[-1] >= min_gap:
            kept_p.append(p)
            kept_l.append(label)
    return kept_p, kept_l


def plot_nomogram(
    nomogram: Nomogram,
    path: str | Path,
    *,
    patient: PatientNomogram | Mapping[str, Any] | None = None,
    title: str | None = None,
) -> Path:
    """Draw the classic nomogram (rms style) as PNG; mark the patient's values when given.

    Rows: Points (0-100), one axis per variable in its own units, Total points, Linear
    predictor, then survival probability at each of ``survival_times``.
    """
    if patient is not None and not isinstance(patient, PatientNomogram):
        patient = nomogram.patient(patient)
    total_ticks = _nice_ticks(0.0, _nice_ticks(0.0, nomogram.max_total_points * 1.0001, 8)[-1], 10)
    if total_ticks[-1] < nomogram.max_total_points:
        total_ticks.append(total_ticks[-1] + (total_ticks[1] - total_ticks[0]))
    total_axis_max = total_ticks[-1]
    to_x = MAX_POINTS / total_axis_max  # total points -> x position on the 0-100 canvas

    # each row: title, tick x positions, tick labels, patient mark x, patient label, line extent
    rows: list[tuple[str, list[float], list[str], float | None, str | None, tuple[float, float] | None]] = []
    points_ticks = _nice_ticks(0.0, MAX_POINTS, 10)
    rows.append(("Points", points_ticks, [_fmt(t) for t in points_ticks], None, None, None))
    for var in nomogram.variables:
        values, labels = var.tick_values()
        xs = [float(x) for x in (var.effect(values) - var.lowest_lp) * nomogram.points_per_lp]
        mark = patient.points[var.name] if patient else None
        shown = var.shown_value(patient.values[var.name]) if patient else None
        rows.append((var.title, xs, labels, mark, shown, (0.0, var.lp_span * nomogram.points_per_lp)))
    rows.append(("Total points", [t * to_x for t in total_ticks], [_fmt(t) for t in total_ticks],
                 patient.total_points * to_x if patient else None,
                 _fmt(round(patient.total_points, 1)) if patient else None, None))
    lp_low, lp_high = nomogram.lp_from_points([0.0, total_axis_max])
    lp_ticks = _nice_ticks(float(lp_low), float(lp_high), 8)
    rows.append(("Linear predictor", list(nomogram.points_from_lp(lp_ticks) * to_x), [_fmt(t) for t in lp_ticks],
                 nomogram.points_from_lp(patient.linear_predictor) * to_x if patient else None,
                 f"{patient.linear_predictor:.2f}" if patient else None, None))
    for i, t in enumerate(nomogram.survival_times):
        ends = nomogram.survival_from_lp(nomogram.lp_from_points([0.0, total_axis_max]), [t])[:, 0]
        candidates = [s for s in SURVIVAL_TICKS if ends[1] <= s <= ends[0]]
        if len(candidates) < 4:  # narrow survival range: finer, evenly spaced probabilities
            candidates = [s for s in _nice_ticks(float(ends[1]), float(ends[0]), 6) if 0 < s < 1]
        xs = nomogram.points_from_survival(candidates, t) * to_x if candidates else np.array([])
        inside = [(x, s) for x, s in zip(xs, candidates) if np.isfinite(x) and -1e-9 <= x <= MAX_POINTS + 1e-9]
        pos, lab = _spaced([x for x, _ in inside], [_fmt(s) for _, s in inside], 3.0)
        if len(pos) < 2:  # survival barely varies over the axis: label its two ends
            pos, lab = [0.0, MAX_POINTS], [f"{s:.3f}" for s in ends]
        years = t / 12.0 if nomogram.time_unit == "months" else None
        name = f"{_fmt(years)}-year survival" if years and float(years).is_integer() else f"Survival at {_fmt(t)} {nomogram.time_unit}"
        rows.append((name, pos, lab,
                     nomogram.points_from_lp(patient.linear_predictor) * to_x if patient else None,
                     f"{patient.survival[i]:.1%}" if patient else None, None))

    figure = new_figure(11.0, 0.62 * len(rows) + 1.2)
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(-34, 108)
    ax.set_ylim(len(rows) - 0.35, -1.0)
    ax.axis("off")
    for r, (name, xs, labels, mark, shown, extent) in enumerate(rows):
        lo, hi = extent if extent is not None else (min(xs), max(xs))
        ax.hlines(r, lo, hi, color="black", linewidth=1.0)
        ax.vlines(xs, r - 0.12, r, color="black", linewidth=0.8)
        if name == "Points":
            minor = np.arange(0, MAX_POINTS + 0.1, 2.0)
            ax.vlines(minor, r - 0.06, r, color="black", linewidth=0.5)
        above_x = -math.inf
        for x, label in sorted(zip(xs, labels)):
            if x - above_x >= 1.2 * max(len(label), 2):  # room above the line; else (close levels) below it
                ax.text(x, r - 0.17, label, ha="center", va="bottom", fontsize=8)
                above_x = x
            else:
                ax.text(x, r + 0.06, label, ha="center", va="top", fontsize=7)
        ax.text(-3, r, name, ha="right", va="center", fontsize=10, fontweight="bold" if r == 0 else "normal")
        if mark is not None:
            ax.plot([mark], [r], marker="v", color="crimson", markersize=7, zorder=3)
            ax.text(mark, r + 0.2, shown or "", ha="center", va="top", fontsize=8, color="crimson")
            if 0 < r <= len(nomogram.variables):  # a variable: read its points off the top axis
                ax.vlines(mark, 0, r, colors="crimson", linestyles=":", linewidth=0.8)
    heading = title or f"Nomogram: {nomogram.name}"
    if patient:
        heading += f" — patient: {patient.total_points:.0f} points, {patient.risk_group} risk"
    ax.text(-34, -0.85, heading, ha="left", va="center", fontsize=12, fontweight="bold")
    footer = f"Cox model on {nomogram.n_train} patients ({nomogram.n_events} events). {nomogram.note}".strip()
    ax.text(-34, len(rows) - 0.45, footer, ha="left", va="center", fontsize=7, color="dimgray")
    return save_figure(figure, path)


def plot_survival_curve(
    survival: PatientNomogram | Mapping[str, Any],
    path: str | Path,
    *,
    title: str | None = None,
    note: str = "",
) -> Path:
    """The patient's predicted survival curve with the nomogram's time points marked.

    ``survival`` is a :class:`PatientNomogram` or the read-out dict of ``result.json``
    (``curve`` {times, survival} or ``curve_times``/``curve_survival``, ``survival_times``,
    ``survival``, ``risk_group``, ``time_unit``).
    """
    data = survival.to_dict() if isinstance(survival, PatientNomogram) else dict(survival)
    curve = data.get("curve") or {}
    times = np.asarray(curve.get("times") or data.get("curve_times") or [], float)
    values = np.asarray(curve.get("survival") or data.get("curve_survival") or [], float)
    if len(times) == 0 or len(times) != len(values):
        raise InputError("survival curve: the read-out has no curve (times and survival of equal length)")
    unit = data.get("time_unit", "months")
    marks = list(zip(data.get("survival_times") or [], data.get("survival") or []))
    figure = new_figure(6.4, 4.2)
    ax = figure.add_subplot(1, 1, 1)
    # straight lines between the curve's points: survival between event times is interpolated linearly
    # (as the read-out's 12/24/36-month values are), so the marks lie on the line
    ax.plot(times, values, color="tab:blue", linewidth=2, label="predicted overall survival")
    for t, s in marks:
        ax.plot([t], [s], marker="o", color="crimson", zorder=3)
        ax.vlines(t, 0, s, colors="crimson", linestyles=":", linewidth=0.8)
        ax.annotate(f"{_fmt(t)} {unit}: {s:.0%}", (t, s), textcoords="offset points", xytext=(6, 6), fontsize=9,
                    color="crimson")
    ax.set_xlim(0, float(times.max()) * 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"Time ({unit})")
    ax.set_ylabel("Overall survival probability")
    risk = data.get("risk_group")
    points = data.get("total_points")
    heading = title or "Predicted overall survival"
    details = ", ".join(x for x in (f"{risk} risk" if risk else "", f"{points:.0f} points" if points is not None else "")
                        if x)
    ax.set_title(heading + (f" — {details}" if details else ""), fontsize=10)
    ax.grid(alpha=0.3)
    if note:
        import textwrap

        figure.text(0.01, 0.005, textwrap.fill(note, 100), fontsize=7, color="dimgray", ha="left", va="bottom")
        figure.subplots_adjust(bottom=0.2)
    return save_figure(figure, path)


@dataclass
class CoxModels:
    """The Cox models of one fit on a training table: ``selections`` (screen + stepwise AIC of the
    clinical and combined candidates), ``nomograms`` (clinical, combined when something was selected;
    signature always) and the signature-only Cox fit."""

    selections: dict[str, CoxSelection]
    nomograms: dict[str, Nomogram]
    signature_fit: Any
    notes: list[str] = field(default_factory=list)


def fit_cox_models(training: pd.DataFrame, config: Any, *, name_suffix: str = " (training)") -> CoxModels:
    """Step 5 on a training table with the clinical covariates and the signature score: univariate
    Cox screen + stepwise AIC for the clinical and the combined candidates, and the signature-only
    Cox model, each as a :class:`Nomogram`. ``config``: a :class:`~.fitting.SurvivalConfig`. The same function fits the published models
    and every optimism-bootstrap refit (:mod:`.validation`)."""
    codings = config.codings()
    nomogram_options = dict(labels=config.labels, levels=config.levels, survival_times=config.survival_times,
                            note=config.note, time_unit=config.time_unit)
    selections: dict[str, CoxSelection] = {}
    nomograms: dict[str, Nomogram] = {}
    notes: list[str] = []
    candidates = {"clinical": list(config.clinical_covariates),
                  "combined": [*config.clinical_covariates, config.signature_name]} if config.clinical_covariates else {}
    for model, names in candidates.items():
        selections[model] = select_cox_model(training, config.time_col, config.event_col, names,
                                             p_threshold=config.screen_p, codings=codings,
                                             name=f"{model} model{name_suffix}")
        notes += selections[model].warnings
        if selections[model].selected:
            nomograms[model] = Nomogram.from_cox(selections[model].stepwise.final, name=model, **nomogram_options)
        else:
            logger.info("%s model: nothing selected; no nomogram", model)
            notes.append(f"{model} model: no candidate passed the univariate screen (p < {config.screen_p:g}); "
                         "no nomogram")
    # the signature-only model has nothing to leave out: a fit that does not converge is refused
    sig_fit = fit_cox(training, config.time_col, config.event_col, [config.signature_name],
                      name=f"signature model{name_suffix}")
    nomograms["signature"] = Nomogram.from_cox(sig_fit, name="signature", **nomogram_options)
    return CoxModels(selections, nomograms, sig_fit, notes)
