"""Harrell's optimism bootstrap of the whole Zhang 2020 pipeline on the training cohort.

A model scored on the patients it was fitted on looks better than it is: the signature's mRMR
and elastic net, the univariate screen and the stepwise AIC all chose what fits *these*
patients. Harrell's bootstrap (Harrell, Lee & Mark, Stat Med 1996; Steyerberg, *Clinical
Prediction Models*, ch. 17) estimates by how much:

1. apparent performance ``A``: the published models on the training cohort;
2. for each of ``B`` resamples (patients drawn with replacement, seeded per resample), the
   **whole** pipeline is fitted again on the resample — mRMR ranking, elastic-net ratio and
   penalty by cross-validation, coefficients, univariate Cox screen, stepwise AIC, the
   nomograms — and scored on the resample (``A_b``) and on the original training cohort (``T_b``);
3. optimism ``O = mean_b (A_b - T_b)``; optimism-corrected performance ``A - O``.

Measured that way: Harrell's C of each model (and the difference combined − clinical), the
calibration slope (Cox regression of the outcome on the model's linear predictor; 1 when the
model is fitted on the cohort itself, below 1 when its predictions are too extreme) and the
time-point calibration (predicted S(t) vs Kaplan-Meier observed S(t) by risk group, as
``rms::calibrate(cmethod="KM")`` does: per group, the optimism of ``observed − predicted``).

What is *not* refitted, and why: the ICC reproducibility filter uses no outcome (the features
and their perturbed repeat only), so it cannot make the signature fit the outcome and stays as
fitted; the deep features are the network's, fitted on nothing here. A signature stage written
before the training features were kept can only hold the signature fixed: the report says so,
and such a correction underestimates the optimism.

Harrell's correction is known to fall short when the pipeline selects among many more
candidates than there are patients (Zhang's 2048 deep features): each resample's model is
scored on an original cohort that holds about 63% of the patients it was fitted on. Beside it
every model's C-index gets Efron & Tibshirani's .632+ estimate from the same resamples (the
models scored on the patients their resample left out, :func:`point632plus`), and the report
warns when the two disagree. Inside a resample the signature's cross-validation keeps the copies
of a patient in one fold, as the pipeline's own cross-validation never sees a patient twice.

A resample where a model selects nothing counts as a model without discrimination (C = 0.5 on
the resample and on the original); a resample where the pipeline cannot be fitted at all (too
few events for the signature's folds, no eligible penalty) is left out and counted. Resamples
run as tasks on the Dask path of :mod:`TACEResponseLib.core.tasks` (in this process by default).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.survival.metrics import (calibration_groups, calibration_slope,
                                              concordance_many, km_survival_at, quantile_groups)

logger = logging.getLogger(__name__)

#: resamples per task sent to a worker
RESAMPLES_PER_TASK = 5
COMPARED = ("combined", "clinical")


def group_calibration(time: np.ndarray, event: np.ndarray, predicted: np.ndarray, at_time: float,
                      n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per risk group (quantile groups of predicted S(t), lowest first): mean predicted S(t) and the
    Kaplan-Meier observed S(t) (NaN when the group's follow-up ends before ``at_time``)."""
    group = quantile_groups(predicted, n_groups)  # the groups calibration() reports
    mean = np.full(n_groups, np.nan)
    observed = np.full(n_groups, np.nan)
    for g in range(n_groups):
        members = group == g
        if not members.any():
            continue
        mean[g] = predicted[members].mean()
        km = km_survival_at(time[members], event[members], at_time)
        observed[g] = np.nan if km is None else km
    return mean, observed


@dataclass
class _Measure:
    """One fitted model on one cohort: C, calibration slope, per time point the groups' mean
    predicted and observed S(t)."""

    c_index: float
    slope: float
    predicted: np.ndarray   # (times, groups)
    observed: np.ndarray    # (times, groups)
    lp: np.ndarray | None = None


def measure(nomogram: Any, data: pd.DataFrame, times: Sequence[float], n_groups: int) -> _Measure:
    """C-index, calibration slope and group calibration of ``nomogram`` on ``data``."""
    time = data[nomogram.time_col].to_numpy(float)
    event = data[nomogram.event_col].to_numpy(int)
    lp = nomogram.linear_predictor(data)
    c = float(concordance_many(time, event, lp)[0])
    slope = calibration_slope(time, event, lp).slope
    survival = nomogram.survival_from_lp(lp, list(times))
    predicted = np.full((len(times), n_groups), np.nan)
    observed = np.full((len(times), n_groups), np.nan)
    for k, t in enumerate(times):
        predicted[k], observed[k] = group_calibration(time, event, survival[:, k], float(t), n_groups)
    return _Measure(c, np.nan if slope is None else float(slope), predicted, observed, lp)


def _null_measure(n_times: int, n_groups: int) -> _Measure:
    """A model that selected nothing: no discrimination, no calibration figures."""
    empty = np.full((n_times, n_groups), np.nan)
    return _Measure(0.5, np.nan, empty, empty)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The refits' own warnings (screens, stepwise, small folds) are the resample's, not the user's."""
    root = logging.getLogger("TACEResponseLib.survival")
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@dataclass
class _Payload:
    """What every resample needs (sent once per task; built once per worker)."""

    table: pd.DataFrame            # training cohort: survival columns, clinical covariates, signature score
    features: pd.DataFrame | None  # training features after the ICC filter (None: signature held fixed)
    config: Any                    # SurvivalConfig
    models: tuple[str, ...]        # the models fitted on the original cohort
    times: tuple[float, ...]
    n_groups: int


def _payload_state(threads: int | None, payload: _Payload) -> _Payload:
    return payload


def _refit(payload: _Payload, rows: np.ndarray) -> tuple[dict[str, Any], Any]:
    """The whole pipeline on the resample ``rows``; returns its nomograms and the signature it used
    (None when the signature is held fixed)."""
    from dataclasses import replace

    from TACEResponseLib.survival.nomogram import fit_cox_models
    from TACEResponseLib.survival.selection import fit_signature

    config = payload.config
    labels = pd.Index([f"b{k:05d}" for k in range(len(rows))], name=payload.table.index.name)
    sample = payload.table.iloc[rows].set_axis(labels)
    signature = None
    if payload.features is not None:
        features = payload.features.iloc[rows].set_axis(labels)
        options = {**config.signature_options(), "nested_folds": 0}
        signature = fit_signature(features, sample[config.time_col], sample[config.event_col], groups=rows,
                                  **options).signature
        sample = sample.assign(**{config.signature_name: signature.score(features)})
    models = fit_cox_models(sample, replace(config, note=""), name_suffix=" (bootstrap resample)")
    return {"nomograms": models.nomograms, "sample": sample}, signature


def _one_resample(payload: _Payload, b: int) -> dict[str, Any]:
    """Fit on resample ``b`` and measure there and on the original cohort; ``error`` when it cannot fit."""
    config = payload.config
    rng = np.random.default_rng([int(config.seed), 7919, int(b)])
    rows = rng.integers(0, len(payload.table), len(payload.table))
    record: dict[str, Any] = {"b": int(b), "error": None, "models": {}}
    try:
        with _quiet():
            fitted, signature = _refit(payload, rows)
    except Exception as exc:  # noqa: BLE001 - a resample the pipeline cannot fit is counted and reported, not fatal
        record["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        return record
    original = payload.table
    if signature is not None:
        original = original.assign(**{config.signature_name: signature.score(payload.features)})
    n_times = len(payload.times)
    for name in payload.models:
        nomogram = fitted["nomograms"].get(name)
        if nomogram is None:  # the refit selected nothing for this model
            record["models"][name] = {"boot": _null_measure(n_times, payload.n_groups),
                                      "test": _null_measure(n_times, payload.n_groups), "selected": False}
            continue
        try:
            with _quiet():
                boot = measure(nomogram, fitted["sample"], payload.times, payload.n_groups)
                test = measure(nomogram, original, payload.times, payload.n_groups)
        except InputError as exc:  # e.g. a category level no resampled patient had: it cannot score the cohort
            record["models"][name] = {"error": f"{(str(exc).splitlines() or [''])[0][:300]}"}
            continue
        out_of_bag = np.setdiff1d(np.arange(len(original)), rows)
        oob = concordance_many(original[config.time_col].to_numpy(float)[out_of_bag],
                               original[config.event_col].to_numpy(int)[out_of_bag], test.lp[out_of_bag])[0]
        boot.lp = test.lp = None  # not sent back
        record["models"][name] = {"boot": boot, "test": test, "selected": True, "out_of_bag": float(oob)}
    return record


def _resample_chunk(payload: _Payload, resamples: Sequence[int]) -> list[dict[str, Any]]:
    """One task: several resamples (top-level, so it can be sent to a Dask worker)."""
    return [_one_resample(payload, b) for b in resamples]


# --- the result ------------------------------------------------------------------------------
@dataclass
class OptimismResult(JsonRecord):
    """Apparent, optimism and optimism-corrected performance of each model on the training cohort.

    ``models[name]`` holds ``c_index`` and ``calibration_slope`` (each ``apparent``, ``optimism``,
    ``corrected``, ``n`` resamples) and ``calibration`` (per time point the risk groups' predicted,
    Kaplan-Meier observed and bootstrap-corrected observed S(t), with the mean absolute error of
    both). ``difference`` is the C-index difference combined − clinical the same way.
    """

    n_boot: int
    n_valid: int
    seed: int
    refitted: list[str]
    held_fixed: list[str]
    models: dict[str, Any]
    difference: dict[str, Any] | None = None
    failures: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    method: str = ("Harrell's optimism bootstrap: the whole pipeline refitted on each resample of the training "
                   "patients, scored on the resample and on the original training cohort; corrected = apparent − "
                   "mean(resample − original)")

    def corrected_c_index(self, model: str) -> float | None:
        entry = (self.models.get(model) or {}).get("c_index") or {}
        return entry.get("corrected")


def _summary(apparent: float | None, optimisms: Sequence[float]) -> dict[str, Any]:
    values = np.asarray([v for v in optimisms if np.isfinite(v)], float)
    optimism = float(values.mean()) if len(values) else None
    corrected = apparent - optimism if apparent is not None and optimism is not None else None
    return {"apparent": apparent, "optimism": optimism, "corrected": corrected, "n": int(len(values)),
            "optimism_se": float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None}


def point632plus(apparent: float | None, out_of_bag: Sequence[float], no_information: float = 0.5) -> dict[str, Any]:
    """Efron & Tibshirani's .632+ estimate (JASA 1997) for an index where higher is better and
    ``no_information`` is chance (C-index: 0.5): the out-of-bag value (models scored on the patients
    their resample left out), weighted against the apparent one by the relative overfitting rate
    ``R = (apparent − oob) / (apparent − chance)``: ``w = 0.632 / (1 − 0.368 R)``, estimate
    ``(1 − w) apparent + w oob``. With pure overfitting (oob at chance) it is the oob value."""
    values = np.asarray([v for v in out_of_bag if np.isfinite(v)], float)
    if apparent is None or not len(values):
        return {"estimate": None, "out_of_bag": None, "relative_overfitting": None, "n": int(len(values))}
    oob = max(float(values.mean()), no_information)
    rate = ((apparent - oob) / (apparent - no_information)
            if apparent > oob and apparent > no_information else 0.0)
    rate = min(max(rate, 0.0), 1.0)
    weight = 0.632 / (1.0 - 0.368 * rate)
    return {"estimate": float((1.0 - weight) * apparent + weight * oob), "out_of_bag": float(values.mean()),
            "relative_overfitting": float(rate), "n": int(len(values))}


def _finite(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _calibration_summary(apparent: _Measure, records: list[dict[str, Any]], name: str,
                         times: Sequence[float]) -> list[dict[str, Any]]:
    out = []
    gaps = [r["models"][name]["boot"].observed - r["models"][name]["boot"].predicted
            - (r["models"][name]["test"].observed - r["models"][name]["test"].predicted)
            for r in records if r["models"].get(name, {}).get("selected")]
    stack = np.stack(gaps) if gaps else np.full((0, *apparent.predicted.shape), np.nan)
    for k, t in enumerate(times):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a group no resample could observe: NaN
            optimism = np.nanmean(stack[:, k, :], axis=0) if len(stack) else np.full(apparent.predicted.shape[1], np.nan)
            n_used = np.sum(np.isfinite(stack[:, k, :]), axis=0) if len(stack) else np.zeros(apparent.predicted.shape[1])
        groups = []
        for g in range(apparent.predicted.shape[1]):
            predicted, observed = apparent.predicted[k, g], apparent.observed[k, g]
            corrected = observed - optimism[g] if np.isfinite(observed) and np.isfinite(optimism[g]) else np.nan
            groups.append({"predicted": _finite(predicted), "observed": _finite(observed),
                           "optimism": _finite(optimism[g]), "corrected": _finite(corrected),
                           "n_resamples": int(n_used[g])})
        shown = [g for g in groups if g["observed"] is not None and g["predicted"] is not None]
        corrected_shown = [g for g in groups if g["corrected"] is not None and g["predicted"] is not None]
        out.append({"time": float(t), "groups": groups,
                    "apparent_error": (float(np.mean([abs(g["observed"] - g["predicted"]) for g in shown]))
                                       if shown else None),
                    "corrected_error": (float(np.mean([abs(g["corrected"] - g["predicted"]) for g in corrected_shown]))
                                        if corrected_shown else None)})
    return out


def optimism_bootstrap(training: pd.DataFrame, nomograms: Mapping[str, Any], config: Any, *,
                       features: pd.DataFrame | None = None, signature: Any = None, cluster: Any = None,
                       progress_bar: bool = False) -> OptimismResult:
    """Harrell's optimism bootstrap (``config.optimism_boot`` resamples, ``config.seed``) of the
    pipeline that produced ``nomograms`` from ``training`` (case ids as index; survival columns,
    clinical covariates and the signature score). ``features``: the training cases' features after
    the ICC filter — the signature is refitted in every resample (without them it is held fixed,
    and the result says so). ``cluster``: where the resamples run (default: this process)."""
    from TACEResponseLib.core.tasks import IN_PROCESS, CaseTask, WorkerSetup, run_cases

    n_boot = int(config.optimism_boot)
    if n_boot < 1:
        raise InputError(f"optimism bootstrap: at least 1 resample is needed, got {n_boot}")
    if features is not None:
        missing = training.index.difference(features.index)
        if len(missing):
            raise InputError(f"optimism bootstrap: no training features for {len(missing)} case(s): {list(missing[:5])}")
        features = features.loc[training.index]
    times = tuple(float(t) for t in config.survival_times)
    n_groups = calibration_groups(len(training), config.n_calibration_groups)
    names = tuple(nomograms)
    payload = _Payload(training, features, config, names, times, n_groups)
    apparent = {name: measure(nomograms[name], training, times, n_groups) for name in names}

    chunks = [list(range(start, min(start + RESAMPLES_PER_TASK, n_boot)))
              for start in range(0, n_boot, RESAMPLES_PER_TASK)]
    tasks = [CaseTask(f"resamples {c[0] + 1}-{c[-1] + 1}", (c,)) for c in chunks]
    setup = WorkerSetup(_payload_state, (payload,), local=payload)
    records: list[dict[str, Any]] = []
    for outcome in run_cases(_resample_chunk, tasks, setup, cluster or IN_PROCESS, label="optimism bootstrap",
                             progress_bar=progress_bar):
        if not outcome.ok:
            raise InputError(f"optimism bootstrap: {outcome.case_id} failed: {outcome.error}")
        records.extend(outcome.value)
    records.sort(key=lambda r: r["b"])
    valid = [r for r in records if r["error"] is None]
    failures: dict[str, int] = {}
    for r in records:
        if r["error"] is not None:
            failures[r["error"]] = failures.get(r["error"], 0) + 1
    notes: list[str] = []
    if len(valid) < 0.8 * n_boot:
        notes.append(f"optimism bootstrap: the pipeline could not be fitted on {n_boot - len(valid)} of {n_boot} "
                        "resamples (see report: optimism.failures); the correction rests on the others")

    models: dict[str, Any] = {}
    for name in names:
        used = [r for r in valid if "boot" in r["models"].get(name, {})]
        unscored = sum(1 for r in valid if "error" in r["models"].get(name, {}))
        models[name] = {
            "c_index": _summary(apparent[name].c_index,
                                [r["models"][name]["boot"].c_index - r["models"][name]["test"].c_index for r in used]),
            "c_index_632plus": point632plus(apparent[name].c_index,
                                            [r["models"][name]["out_of_bag"] for r in used
                                             if "out_of_bag" in r["models"][name]]),
            "calibration_slope": _summary(_finite(apparent[name].slope),
                                          [r["models"][name]["boot"].slope - r["models"][name]["test"].slope
                                           for r in used]),
            "calibration": _calibration_summary(apparent[name], used, name, times),
            "selected_in": sum(1 for r in used if r["models"][name]["selected"]),
            "could_not_score": unscored,
            "n_groups": n_groups,
        }
        if unscored:
            notes.append(f"optimism bootstrap: the {name} model refitted on {unscored} resample(s) could not score "
                            "every training patient (a category level absent from the resample); those are left out")
    difference = None
    a, b = COMPARED
    if a in names and b in names:
        both = [r for r in valid if "boot" in r["models"].get(a, {}) and "boot" in r["models"].get(b, {})]
        difference = {"model_a": a, "model_b": b, **_summary(
            apparent[a].c_index - apparent[b].c_index,
            [(r["models"][a]["boot"].c_index - r["models"][b]["boot"].c_index)
             - (r["models"][a]["test"].c_index - r["models"][b]["test"].c_index) for r in both])}
    for name, entry in models.items():
        harrell, plus = entry["c_index"]["corrected"], entry["c_index_632plus"]["estimate"]
        if harrell is not None and plus is not None and harrell - plus > 0.03:
            notes.append(f"optimism bootstrap: the {name} model's Harrell-corrected C-index {harrell:.3f} is above its "
                         f".632+ estimate {plus:.3f}: when the pipeline selects among many more features than there "
                         "are patients, Harrell's correction falls short (each resample's model is scored on the "
                         "patients it was fitted on); quote the lower value, or validate externally")
    refitted = (["mRMR ranking", "elastic-net ratio and penalty (cross-validation)", "signature coefficients"]
                if features is not None else [])
    refitted += ["univariate Cox screen", "stepwise AIC", "Cox coefficients and baseline hazard"]
    held = ["ICC filter (uses no outcome)", "deep features (the network is not fitted here)"]
    if features is None:
        held.insert(0, "the signature (this signature stage kept no training features): the optimism is "
                       "underestimated")
        notes.append("optimism bootstrap: the signature was held fixed (the signature stage has no training "
                        "features; refit it with fit-signature): the correction covers the nomogram step only")
    result = OptimismResult(n_boot, len(valid), int(config.seed), refitted, held, models, difference, failures,
                            notes)
    logger.info("optimism bootstrap: %d of %d resamples fitted; %s", len(valid), n_boot,
                ", ".join(f"{m} C {v['c_index']['apparent']:.3f} → {v['c_index']['corrected']:.3f}"
                          for m, v in models.items() if v["c_index"]["corrected"] is not None))
    return result
