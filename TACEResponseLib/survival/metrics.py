"""How good is a survival model: C-index with bootstrap CI, calibration, risk groups, AUC(t).

* **C-index**: Harrell's concordance from lifelines' ``concordance_index`` with ``-risk``
  (higher risk = shorter survival); 95% CI by the percentile bootstrap over patients
  (``n_boot`` resamples, seeded; resamples without an event or comparable pair are skipped).
* **Calibration** at time ``t``: patients split into ``n_groups`` quantile groups of predicted
  ``S(t)``; in each group the mean prediction is compared with the Kaplan-Meier estimate at
  ``t`` (with its 95% CI). RMSE over groups summarises the gap. A group whose follow-up ends
  before ``t`` has no observed value (reported as None, left out of the RMSE).
* **Risk groups**: ``high`` when the risk score exceeds a cut-off (the training median in
  Zhang 2020), Kaplan-Meier curves per group and the log-rank test (lifelines).
* **Time-dependent AUC**: cumulative/dynamic AUC(t) with IPCW from scikit-survival, at the
  times inside the follow-up of both the training and the evaluated cohort.

Times are in the table's unit (months by default). Every result is a dataclass with
``to_dict()`` that json.dumps accepts (NaN/inf become None).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.figures import new_figure, save_figure
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.survival.data import check_length, validate_survival_arrays

logger = logging.getLogger(__name__)


def finite_or_none(value: Any) -> float | None:
    """Float, or None for NaN/inf/None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/inf float (also inside dicts/lists) replaced by None."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return finite_or_none(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- C-index ---------------------------------------------------------------------------
@dataclass
class ConcordanceResult(JsonRecord):
    """Harrell's C of a risk score and its percentile-bootstrap confidence interval."""

    c_index: float
    ci_lower: float | None
    ci_upper: float | None
    confidence: float
    n_boot: int
    n_boot_valid: int
    n: int
    n_events: int


def _bootstrap(event: np.ndarray, statistic: Any, n_boot: int, seed: int) -> list[float]:
    """``statistic(idx)`` over ``n_boot`` resamples of patients (seeded); resamples without an event
    or without a comparable pair are skipped."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(event), len(event))
        if event[idx].sum() == 0:
            continue
        try:
            values.append(float(statistic(idx)))
        except ZeroDivisionError:  # no comparable pair in this resample
            continue
    return values


def concordance(
    time: Any, event: Any, risk: Any, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> ConcordanceResult:
    """C-index of ``risk`` (higher = worse prognosis) with a bootstrap CI (``n_boot=0``: none)."""
    from lifelines.utils import concordance_index

    time, event = validate_survival_arrays(time, event, name="C-index survival data")
    risk = check_length(risk, len(time), name="C-index risk scores")
    c = float(concordance_index(time, -risk, event))
    values = _bootstrap(event, lambda idx: concordance_index(time[idx], -risk[idx], event[idx]), n_boot, seed)
    lower = upper = None
    if values:
        tail = (1.0 - confidence) / 2.0
        lower, upper = (float(q) for q in np.quantile(values, [tail, 1.0 - tail]))
    return ConcordanceResult(c, lower, upper, confidence, n_boot, len(values), len(time), int(event.sum()))


@dataclass
class ConcordanceDifference(JsonRecord):
    """C-index of model A minus model B on the same patients: paired bootstrap CI and p value.

    Both models are scored on each resample of patients, so the CI and p account for their
    correlation. ``p_value`` is the two-sided percentile-bootstrap p of "no difference",
    ``2 (1 + #{resampled differences on the other side of 0}) / (n + 1)`` (capped at 1), which
    agrees with the percentile CI (it excludes 0 about when p < 0.05); ``se`` and ``z`` (the
    normal approximation) are given beside it.
    """

    model_a: str
    model_b: str
    c_index_a: float
    c_index_b: float
    difference: float
    ci_lower: float | None
    ci_upper: float | None
    se: float | None
    z: float | None
    p_value: float | None
    confidence: float
    n_boot: int
    n_boot_valid: int
    n: int
    n_events: int


def concordance_difference(
    time: Any, event: Any, risk_a: Any, risk_b: Any, *, model_a: str = "A", model_b: str = "B",
    n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
) -> ConcordanceDifference:
    """Harrell's C of ``risk_a`` minus that of ``risk_b`` (higher = worse prognosis), paired bootstrap."""
    from lifelines.utils import concordance_index

    time, event = validate_survival_arrays(time, event, name="C-index difference survival data")
    risk_a = check_length(risk_a, len(time), name=f"C-index difference: risk scores of {model_a}")
    risk_b = check_length(risk_b, len(time), name=f"C-index difference: risk scores of {model_b}")
    c_a = float(concordance_index(time, -risk_a, event))
    c_b = float(concordance_index(time, -risk_b, event))
    values = _bootstrap(event, lambda idx: concordance_index(time[idx], -risk_a[idx], event[idx])
                        - concordance_index(time[idx], -risk_b[idx], event[idx]), n_boot, seed)
    lower = upper = se = z = p = None
    if len(values) > 1:
        tail = (1.0 - confidence) / 2.0
        lower, upper = (float(q) for q in np.quantile(values, [tail, 1.0 - tail]))
        se = float(np.std(values, ddof=1))
        z = (c_a - c_b) / se if se > 0 else None
        boot = np.asarray(values)
        other_side = np.sum(boot <= 0) if c_a - c_b > 0 else np.sum(boot >= 0)
        p = float(min(1.0, 2.0 * (1 + other_side) / (len(boot) + 1)))
    return ConcordanceDifference(model_a, model_b, c_a, c_b, c_a - c_b, lower, upper, se, z, p, confidence, n_boot,
                                 len(values), len(time), int(event.sum()))


# --- many scores at once ------------------------------------------------------------------
def comparable_pairs(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays ``(i, j)`` of Harrell's comparable pairs as lifelines counts them: patient ``i``
    died and ``j`` left the study later, or was censored at the same time (a death at ``t`` is
    compared with a patient censored at ``t``; two deaths at the same time are not compared)."""
    time = np.asarray(time, float)
    died = np.asarray(event).astype(bool)
    later = time[None, :] > time[:, None]
    censored_same = (time[None, :] == time[:, None]) & ~died[None, :]
    i, j = np.nonzero(died[:, None] & (later | censored_same))
    return i, j


def concordance_many(time: Any, event: Any, risks: Any, *, chunk: int = 64) -> np.ndarray:
    """Harrell's C of every column of ``risks`` (``(n, k)``; higher = worse prognosis) — lifelines'
    ``concordance_index(time, -risk, event)`` for each column, computed over the comparable pairs at
    once (ties in risk count one half). NaN for a column when there is no comparable pair."""
    risks = np.asarray(risks, float)
    if risks.ndim == 1:
        risks = risks[:, None]
    i, j = comparable_pairs(np.asarray(time, float), np.asarray(event))
    if not len(i):
        return np.full(risks.shape[1], np.nan)
    out = np.empty(risks.shape[1])
    for start in range(0, risks.shape[1], chunk):
        block = risks[:, start:start + chunk]
        a, b = block[i], block[j]
        out[start:start + chunk] = ((a > b).sum(axis=0) + 0.5 * (a == b).sum(axis=0)) / len(i)
    return out


def km_survival_at(time: np.ndarray, event: np.ndarray, at_time: float) -> float | None:
    """Kaplan-Meier S(``at_time``) (product over event times ≤ ``at_time`` of 1 − deaths / at risk);
    None when nobody is followed up to ``at_time`` (no estimate there). Same value as lifelines'."""
    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    if not len(time) or (time.max() < at_time and not (event & (time == time.max())).any()):
        return None
    deaths, counts = np.unique(time[event & (time <= at_time)], return_counts=True)
    at_risk = len(time) - np.searchsorted(np.sort(time), deaths, side="left")
    return float(np.prod(1.0 - counts / at_risk))


# --- calibration slope -------------------------------------------------------------------
@dataclass
class CalibrationSlope(JsonRecord):
    """Cox regression of the outcome on the model's linear predictor alone: slope 1 = the spread of
    the predictions is right; below 1 = too extreme (overfitted), above 1 = too timid."""

    slope: float | None
    se: float | None
    ci_lower: float | None
    ci_upper: float | None
    n: int
    n_events: int


def _efron_terms(time: np.ndarray, event: np.ndarray, x: np.ndarray, beta: float) -> tuple[float, float, float]:
    """Log partial likelihood, score and information of a one-covariate Cox model (Efron's ties)."""
    w = np.exp(beta * x)
    order = np.argsort(-time, kind="stable")  # longest first: cumulative sums are the risk sets
    t, e, xs, ws = time[order], event[order], x[order], w[order]
    s0, s1, s2 = np.cumsum(ws), np.cumsum(ws * xs), np.cumsum(ws * xs * xs)
    loglik = score = information = 0.0
    last = np.searchsorted(-t, -np.unique(t[e == 1]), side="right") - 1  # the risk set ends at each event time
    for end in last:
        tied = (t == t[end]) & (e == 1)
        d = int(tied.sum())
        r0, r1, r2 = s0[end], s1[end], s2[end]
        d0, d1, d2 = ws[tied].sum(), (ws * xs)[tied].sum(), (ws * xs * xs)[tied].sum()
        loglik += beta * xs[tied].sum()
        score += xs[tied].sum()
        for k in range(d):
            f = k / d
            a0, a1, a2 = r0 - f * d0, r1 - f * d1, r2 - f * d2
            loglik -= np.log(a0)
            score -= a1 / a0
            information += a2 / a0 - (a1 / a0) ** 2
    return float(loglik), float(score), float(information)


def cox_slope(time: Any, event: Any, x: Any, *, max_iter: int = 50, tol: float = 1e-9) -> tuple[float, float] | None:
    """Coefficient and standard error of a one-covariate Cox model (Efron ties, Newton-Raphson with
    step halving) — what lifelines' ``CoxPHFitter`` gives for one column, without its overhead (the
    optimism bootstrap fits thousands). None when the likelihood has no finite maximum."""
    time = np.asarray(time, float)
    event = np.asarray(event, int)
    x = np.asarray(x, float)
    x = x - x.mean()
    beta = 0.0
    loglik, score, information = _efron_terms(time, event, x, beta)
    for _ in range(max_iter):
        if information <= 0:
            return None
        step = score / information
        for _ in range(30):
            candidate = _efron_terms(time, event, x, beta + step)
            if candidate[0] >= loglik - 1e-12:
                break
            step /= 2.0
        beta += step
        loglik, score, information = candidate
        if abs(step) < tol:
            break
    else:
        return None
    if information <= 0 or not math.isfinite(beta) or abs(beta) * x.std() > 8.0:
        return None
    return float(beta), float(1.0 / math.sqrt(information))


def calibration_slope(time: Any, event: Any, lp: Any) -> CalibrationSlope:
    """Slope of the linear predictor ``lp`` in a Cox model (Efron ties, :func:`cox_slope`) with its
    95% Wald CI. Constant ``lp`` (a model that selected nothing) or a fit that does not converge give None."""
    time, event = validate_survival_arrays(time, event, name="calibration slope survival data")
    lp = check_length(lp, len(time), name="calibration slope linear predictor")
    none = CalibrationSlope(None, None, None, None, len(time), int(event.sum()))
    if np.ptp(lp) <= 1e-12:
        return none
    fitted = cox_slope(time, event, lp)
    if fitted is None:
        return none
    slope, se = fitted
    return CalibrationSlope(slope, se, slope - 1.959963984540054 * se, slope + 1.959963984540054 * se,
                            len(time), int(event.sum()))


# --- Kaplan-Meier helpers --------------------------------------------------------------
def _km(time: np.ndarray, event: np.ndarray, label: str):
    from lifelines import KaplanMeierFitter

    return KaplanMeierFitter(label=label).fit(time, event)


def _km_at(fitter, t: float) -> tuple[float, float, float]:
    """Kaplan-Meier S(t) and its 95% CI (step function: last value at or before t)."""
    survival = float(fitter.survival_function_at_times(t).iloc[0])
    ci = fitter.confidence_interval_survival_function_
    row = ci[ci.index <= t]
    low, high = (row.iloc[-1].to_numpy(dtype=float) if len(row) else (1.0, 1.0))
    return survival, float(low), float(high)


# --- calibration -----------------------------------------------------------------------
@dataclass
class CalibrationGroup(JsonRecord):
    """One quantile group: mean predicted S(t) vs Kaplan-Meier observed S(t)."""

    n: int
    n_events: int
    predicted: float
    observed: float | None
    observed_lower: float | None
    observed_upper: float | None


@dataclass
class CalibrationResult(JsonRecord):
    time: float
    groups: list[CalibrationGroup]
    rmse: float | None
    time_unit: str = "months"


#: fewest patients per calibration group (deciles in cohorts of 50 or more, fewer groups below)
MIN_PER_CALIBRATION_GROUP = 5


def calibration_groups(n: int, requested: int) -> int:
    """Risk groups for the time-point calibration: ``requested`` (deciles), fewer when a group would
    hold fewer than :data:`MIN_PER_CALIBRATION_GROUP` patients, at least 2."""
    return int(max(2, min(requested, n // MIN_PER_CALIBRATION_GROUP)))


def quantile_groups(values: Any, n_groups: int) -> np.ndarray:
    """Group index 0..n_groups-1 of each value: quantile groups of its rank (ties by order), lowest first."""
    return pd.qcut(pd.Series(np.asarray(values, float)).rank(method="first"), n_groups, labels=False).to_numpy()


def calibration(
    time: Any, event: Any, predicted_survival: Any, at_time: float, *, n_groups: int = 4, time_unit: str = "months"
) -> CalibrationResult:
    """Predicted vs Kaplan-Meier observed survival at ``at_time`` by quantile groups of prediction."""
    time, event = validate_survival_arrays(time, event, name="calibration survival data")
    predicted = check_length(predicted_survival, len(time), name=f"predicted survival at {at_time} {time_unit}")
    if n_groups < 1 or n_groups > len(time):
        raise InputError(f"calibration: n_groups must be between 1 and {len(time)}, got {n_groups}")
    group = quantile_groups(predicted, n_groups)
    groups = []
    for g in range(n_groups):
        members = group == g
        t, e = time[members], event[members]
        observed = low = high = None
        if t.max() >= at_time or (e.astype(bool) & (t == t.max())).any():
            observed, low, high = _km_at(_km(t, e, f"group {g + 1}"), at_time)
        else:
            logger.info("calibration: group %d follow-up ends at %.1f < %.1f %s", g + 1, t.max(), at_time, time_unit)
        groups.append(CalibrationGroup(int(members.sum()), int(e.sum()), float(predicted[members].mean()), observed, low, high))
    gaps = [g.predicted - g.observed for g in groups if g.observed is not None]
    rmse = float(np.sqrt(np.mean(np.square(gaps)))) if gaps else None
    return CalibrationResult(float(at_time), groups, rmse, time_unit)


def plot_calibration(results: Sequence[CalibrationResult], path: str | Path, *, title: str = "Calibration") -> Path:
    """Observed (Kaplan-Meier, 95% CI) vs predicted survival, one series per time point."""
    figure = new_figure(5.5, 5.2)
    ax = figure.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="ideal")
    for result, marker in zip(results, "osD^v<>"):
        groups = [g for g in result.groups if g.observed is not None]
        if not groups:
            continue
        x = np.array([g.predicted for g in groups])
        y = np.array([g.observed for g in groups])
        err = np.array([[g.observed - g.observed_lower, g.observed_upper - g.observed] for g in groups]).T
        rmse = f", RMSE {result.rmse:.3f}" if result.rmse is not None else ""
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker=marker, capsize=3, linewidth=1,
                    label=f"{result.time:g} {result.time_unit}{rmse}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Predicted survival probability")
    ax.set_ylabel("Observed survival (Kaplan-Meier)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(figure, path)


# --- risk groups, Kaplan-Meier, log-rank ------------------------------------------------
def risk_groups(risk: Any, cutoff: float) -> np.ndarray:
    """``"high"`` where ``risk > cutoff``, else ``"low"``."""
    risk = np.asarray(risk, dtype=float)
    return np.where(risk > cutoff, "high", "low")


@dataclass
class KMCurve(JsonRecord):
    """Kaplan-Meier estimate of one group (step function at ``times``)."""

    group: str
    n: int
    n_events: int
    median_survival: float | None
    times: list[float]
    survival: list[float]
    ci_lower: list[float]
    ci_upper: list[float]


@dataclass
class RiskStratification(JsonRecord):
    """Kaplan-Meier curves per group and the log-rank test between them."""

    curves: list[KMCurve]
    logrank_statistic: float
    logrank_p: float
    cutoff: float | None = None
    time_unit: str = "months"


def _group_fitters(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    order = ["low", "high"] if set(groups) <= {"low", "high"} else sorted(set(groups))
    return {str(g): _km(time[groups == g], event[groups == g], str(g)) for g in order if (groups == g).any()}


def kaplan_meier_logrank(
    time: Any, event: Any, groups: Any, *, cutoff: float | None = None, time_unit: str = "months"
) -> RiskStratification:
    """KM curve per group and the log-rank test (lifelines; k-group test when k > 2)."""
    from lifelines.statistics import multivariate_logrank_test

    time, event = validate_survival_arrays(time, event, name="Kaplan-Meier survival data")
    groups = np.asarray(groups).astype(str).ravel()
    if len(groups) != len(time):
        raise InputError(f"risk groups: {len(groups)} labels for {len(time)} patients")
    if len(set(groups)) < 2:
        raise InputError(f"risk groups: need at least two groups for a log-rank test, got only {sorted(set(groups))}")
    test = multivariate_logrank_test(time, groups, event)
    curves = []
    for name, fitter in _group_fitters(time, event, groups).items():
        sf = fitter.survival_function_.iloc[:, 0]
        ci = fitter.confidence_interval_survival_function_
        members = groups == name
        curves.append(KMCurve(
            group=name, n=int(members.sum()), n_events=int(event[members].sum()),
            median_survival=finite_or_none(fitter.median_survival_time_),
            times=[float(t) for t in sf.index], survival=[float(s) for s in sf],
            ci_lower=[float(v) for v in ci.iloc[:, 0]], ci_upper=[float(v) for v in ci.iloc[:, 1]],
        ))
    return RiskStratification(curves, float(test.test_statistic), float(test.p_value), cutoff, time_unit)


def plot_kaplan_meier(
    time: Any, event: Any, groups: Any, path: str | Path, *, title: str = "Kaplan-Meier",
    logrank_p: float | None = None, time_unit: str = "months",
) -> Path:
    """KM curves with 95% bands per group, at-risk table, log-rank p in the legend."""
    time, event = validate_survival_arrays(time, event, name="Kaplan-Meier survival data")
    groups = np.asarray(groups).astype(str).ravel()
    from lifelines.plotting import add_at_risk_counts

    figure = new_figure(7.0, 5.2)
    ax = figure.add_subplot(1, 1, 1)
    colours = {"low": "tab:blue", "high": "tab:red"}
    fitters = _group_fitters(time, event, groups)
    for name, fitter in fitters.items():
        fitter.plot_survival_function(ax=ax, ci_show=True, color=colours.get(name))
    if logrank_p is not None:
        ax.text(0.98, 0.95, f"log-rank p = {logrank_p:.3g}", transform=ax.transAxes, ha="right", va="top", fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"Time ({time_unit})")
    ax.set_ylabel("Overall survival probability")
    ax.set_title(title, fontsize=10)
    add_at_risk_counts(*fitters.values(), ax=ax, fig=figure, rows_to_show=["At risk"])
    return save_figure(figure, path)


# --- decision curve --------------------------------------------------------------------
@dataclass
class SurvivalDecisionCurve(JsonRecord):
    """Net benefit at ``time`` of treating the patients whose predicted risk of death by ``time``
    (1 − S(t)) reaches each threshold, with the observed risk from Kaplan-Meier (Vickers et al.,
    BMC Med Inform Decis Mak 2008): ``NB = P(r ≥ p) (1 − S_KM(t | r ≥ p)) − P(r ≥ p) S_KM(t | r ≥ p) p / (1 − p)``.
    ``treat_all`` is the same with everybody treated; treating nobody is 0. None where the
    Kaplan-Meier estimate at ``time`` does not exist (follow-up too short)."""

    time: float
    thresholds: list[float]
    net_benefit: list[float | None]
    treat_all: list[float | None]
    time_unit: str = "months"


def survival_decision_curve(time: Any, event: Any, risk_at_time: Any, at_time: float, *,
                            thresholds: Sequence[float] | None = None, time_unit: str = "months") -> SurvivalDecisionCurve:
    """Decision curve of predicted risks of death by ``at_time`` (see :class:`SurvivalDecisionCurve`)."""
    time, event = validate_survival_arrays(time, event, name="decision curve survival data")
    risk = check_length(risk_at_time, len(time), name=f"predicted risk by {at_time:g} {time_unit}")
    grid = np.round(np.arange(0.02, 0.96, 0.02), 2) if thresholds is None else np.asarray(thresholds, float)
    overall = km_survival_at(time, event, at_time)
    net, everyone = [], []
    for p in grid:
        odds = p / (1.0 - p)
        everyone.append(None if overall is None else float((1.0 - overall) - overall * odds))
        treated = risk >= p
        if not treated.any():
            net.append(0.0)
            continue
        s = km_survival_at(time[treated], event[treated], at_time)
        share = treated.mean()
        net.append(None if s is None else float(share * (1.0 - s) - share * s * odds))
    return SurvivalDecisionCurve(float(at_time), [float(p) for p in grid], net, everyone, time_unit)


# --- time-dependent AUC -----------------------------------------------------------------
@dataclass
class TimeDependentAUC(JsonRecord):
    times: list[float]
    auc: list[float]
    mean_auc: float | None
    skipped_times: list[float] = field(default_factory=list)


def time_dependent_auc(
    train_time: Any, train_event: Any, time: Any, event: Any, risk: Any, times: Sequence[float]
) -> TimeDependentAUC:
    """Cumulative/dynamic AUC(t) (scikit-survival, IPCW from the training cohort's censoring).

    The censoring weights exist only inside the training follow-up, so evaluated patients
    followed longer are censored at its end (they stay controls at every evaluated t), and
    times outside the follow-up of either cohort are skipped (listed in ``skipped_times``).
    """
    from sksurv.metrics import cumulative_dynamic_auc
    from sksurv.util import Surv

    train_time, train_event = validate_survival_arrays(train_time, train_event, name="AUC(t) training data")
    time, event = validate_survival_arrays(time, event, name="AUC(t) evaluated data")
    risk = check_length(risk, len(time), name="AUC(t) risk scores")
    beyond = time > train_time.max()
    time, event = np.where(beyond, train_time.max(), time), np.where(beyond, 0, event)
    valid = [float(t) for t in times if time.min() <= t < time.max() and ((time <= t) & (event == 1)).any()]
    skipped = [float(t) for t in times if float(t) not in valid]
    if not valid:
        return TimeDependentAUC([], [], None, skipped)
    auc, mean_auc = cumulative_dynamic_auc(
        Surv.from_arrays(train_event.astype(bool), train_time), Surv.from_arrays(event.astype(bool), time), risk, valid
    )
    return TimeDependentAUC(valid, [float(a) for a in auc], finite_or_none(mean_auc), skipped)
