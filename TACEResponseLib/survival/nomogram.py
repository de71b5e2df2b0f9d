"""Cox nomogram: points per variable, total points, survival at 1/2/3 years, risk group.

Scaling follows R's ``rms::nomogram``: for each variable ``j`` with coefficient ``b_j`` and
training range ``[min_j, max_j]``, ``b_j x`` spans ``r_j = |b_j| (max_j - min_j)``. The
variable with the widest span gets 0-100 points; every variable gets

    points_j(x) = (b_j x - min(b_j min_j, b_j max_j)) * 100 / max_j r_j

(0 points at the value of lowest risk). So the total points ``T`` map to the linear
predictor by an exact affine function, ``lp = T / points_per_lp + lp_offset``. Values
outside the training range extrapolate (points below 0 or above 100), with a warning.

The linear predictor is lifelines' centred one, ``lp = sum_j b_j (x_j - mean_j)`` with the
training means, and survival is ``S(t | x) = exp(-H0(t) exp(lp))`` with lifelines' Breslow
baseline cumulative hazard ``H0`` (``baseline_cumulative_hazard_``, at the mean covariates),
linearly interpolated between event times exactly as lifelines' ``predict_survival_function``
does — so a saved nomogram reproduces lifelines' prediction without refitting.

Categorical variables: an ordinal one (BCLC A/B/C) is one numeric column of codes
(0/1/2) with ``levels={"A": 0, "B": 1, "C": 2}`` naming the codes on its axis and accepting
the labels as patient input; a nominal one is a set of 0/1 dummy columns, each its own axis
(``levels={"no": 0, "yes": 1}``) — unlike rms, dummy groups are not merged into one axis.

Risk group: ``high`` when the linear predictor exceeds the median over training patients.
Times are in ``time_unit`` (months by default; 12/24/36 = 1/2/3 years).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.figures import new_figure, save_figure
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.survival.cox import CoxFit
from TACEResponseLib.survival.data import numeric_matrix

logger = logging.getLogger(__name__)

DEFAULT_SURVIVAL_TIMES = (12.0, 24.0, 36.0)
MAX_POINTS = 100.0


@dataclass
class NomogramVariable(JsonRecord):
    """One axis of the nomogram: a Cox covariate, its coefficient and training range."""

    name: str
    coefficient: float
    mean: float
    minimum: float
    maximum: float
    label: str = ""
    levels: dict[str, float] | None = None

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def lowest_lp(self) -> float:
        """Smallest ``b x`` over the training range (the value given 0 points)."""
        return min(self.coefficient * self.minimum, self.coefficient * self.maximum)

    @property
    def lp_span(self) -> float:
        return abs(self.coefficient) * (self.maximum - self.minimum)

    def encode(self, values: pd.Series) -> pd.Series:
        """Category labels -> their numeric codes; numbers pass through unchanged."""
        if not self.levels:
            return values
        unknown = [v for v in values if isinstance(v, str) and v not in self.levels]
        if unknown:
            raise InputError(
                f"variable {self.name!r}: unknown category {unknown[0]!r}; "
                f"use one of {list(self.levels)} or their codes {list(self.levels.values())}"
            )
        return values.map(lambda v: self.levels[v] if isinstance(v, str) else v)

    def tick_values(self, n: int = 6) -> tuple[list[float], list[str]]:
        """Axis ticks inside the training range, in the variable's own units."""
        if self.levels:
            items = sorted((code, label) for label, code in self.levels.items()
                           if self.minimum - 1e-9 <= code <= self.maximum + 1e-9)
            return [c for c, _ in items], [lab for _, lab in items]
        values = _nice_ticks(self.minimum, self.maximum, n)
        return values, [_fmt(v) for v in values]


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

    json_header = {"kind": "TACEResponse Cox nomogram", "version": 1}

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
        """Nomogram of a :class:`CoxFit` (from :func:`.cox.fit_cox` / stepwise), on its training data."""
        if not fit.covariates:
            raise InputError(f"nomogram {name!r}: the Cox model has no covariates (nothing was selected)")
        data = fit.data
        labels, levels = dict(labels or {}), dict(levels or {})
        variables = [
            NomogramVariable(
                name=v,
                coefficient=float(fit.fitter.params_[v]),
                mean=float(data[v].mean()),
                minimum=float(data[v].min()),
                maximum=float(data[v].max()),
                label=labels.get(v, ""),
                levels={str(k): float(c) for k, c in levels[v].items()} if v in levels else None,
            )
            for v in fit.covariates
        ]
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
        expected = fit.fitter.predict_log_partial_hazard(data[fit.covariates]).to_numpy(dtype=float)
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
        return float(sum(v.lowest_lp - v.coefficient * v.mean for v in self.variables))

    @property
    def max_total_points(self) -> float:
        return float(sum(v.lp_span for v in self.variables) * self.points_per_lp)

    def _values(self, data: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
        """Numeric covariate table (categories encoded) for a frame or one patient's dict."""
        frame = pd.DataFrame([dict(data)]) if isinstance(data, Mapping) else data
        if not isinstance(frame, pd.DataFrame):
            raise InputError(f"nomogram {self.name!r}: expected a DataFrame or a dict of values, got {type(data).__name__}")
        missing = [v.name for v in self.variables if v.name not in frame.columns]
        if missing:
            raise InputError(
                f"nomogram {self.name!r}: missing value(s) for {missing}; it needs {[v.name for v in self.variables]}"
            )
        encoded = pd.DataFrame({v.name: v.encode(frame[v.name]) for v in self.variables}, index=frame.index)
        return numeric_matrix(encoded, [v.name for v in self.variables], name=f"values for nomogram {self.name!r}")

    def points(self, data: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
        """Points per variable (columns) for each row."""
        x = self._values(data)
        return pd.DataFrame(
            {v.name: (v.coefficient * x[v.name] - v.lowest_lp) * self.points_per_lp for v in self.variables},
            index=x.index,
        )

    def total_points(self, data: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        return self.points(data).sum(axis=1).to_numpy(dtype=float)

    def linear_predictor(self, data: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Centred Cox linear predictor ``sum b_j (x_j - mean_j)`` (lifelines' log partial hazard)."""
        x = self._values(data).to_numpy(dtype=float)
        coef = np.array([v.coefficient for v in self.variables])
        mean = np.array([v.mean for v in self.variables])
        return (x - mean) @ coef

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
        outside = [v.name for v in self.variables if not v.minimum <= x[v.name] <= v.maximum]
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
        xs = [(var.coefficient * v - var.lowest_lp) * nomogram.points_per_lp for v in values]
        mark = patient.points[var.name] if patient else None
        shown = None
        if patient:
            raw = patient.values[var.name]
            names = {c: lab for lab, c in (var.levels or {}).items()}
            shown = names.get(raw, f"{raw:.4g}")
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
        for x, label in zip(xs, labels):
            ax.text(x, r - 0.17, label, ha="center", va="bottom", fontsize=8)
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
