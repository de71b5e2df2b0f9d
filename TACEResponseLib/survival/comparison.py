"""One JSON report + PNG figures comparing survival models on several cohorts.

Every model is a :class:`~.nomogram.Nomogram` (the signature-only model is a Cox model on
the signature score), so each is evaluated the same way on each cohort (training,
validation, ...): C-index with bootstrap CI, calibration at the nomogram's time points,
high/low risk by the model's training-median cut-off with Kaplan-Meier + log-rank, and
time-dependent AUC (censoring weights from the training cohort). Pairs of models named in
``compare`` (Zhang 2020: combined vs clinical) get the C-index difference with a paired
bootstrap CI and p value on every cohort, drawn with every model's C-index in
``cindex_comparison.png``. Each model's categorical variables are listed with the hazard
ratio of every level. Figure paths in the report are relative to the output folder, so the
folder can be moved as a whole.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.figures import new_figure, save_figure
from TACEResponseLib.core.files import write_json_atomic
from TACEResponseLib.survival.data import validate_survival_table
from TACEResponseLib.survival.metrics import (
    ConcordanceDifference,
    calibration,
    concordance,
    concordance_difference,
    json_safe,
    kaplan_meier_logrank,
    plot_calibration,
    plot_kaplan_meier,
    risk_groups,
    time_dependent_auc,
)
from TACEResponseLib.survival.nomogram import Nomogram, plot_nomogram

logger = logging.getLogger(__name__)

REPORT_NOTE = "Research use only. Not for clinical decisions."


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def evaluate_models(
    models: Mapping[str, Nomogram],
    cohorts: Mapping[str, pd.DataFrame],
    output_dir: str | Path,
    *,
    training: str = "training",
    times: Sequence[float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_calibration_groups: int = 4,
    report_name: str = "report.json",
    extra: Mapping[str, Any] | None = None,
    figure_note: str = "",
    compare: Sequence[tuple[str, str]] = (("combined", "clinical"),),
) -> dict[str, Any]:
    """Evaluate each model on each cohort; write PNGs and ``report_name`` into ``output_dir``.

    ``cohorts`` maps a name to a table with the models' variables and survival columns;
    ``training`` names the cohort used for the AUC(t) censoring weights; ``compare`` the
    (model A, model B) pairs whose C-index difference is tested (pairs with a missing model
    are skipped). Returns the report.
    """
    if not models:
        raise InputError("survival report: no model to evaluate")
    if training not in cohorts:
        raise InputError(f"survival report: training cohort {training!r} not among cohorts {list(cohorts)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"\n{figure_note}" if figure_note else ""
    report: dict[str, Any] = {"note": REPORT_NOTE, "n_boot": n_boot, "seed": seed, "models": {}, "summary": []}

    for model_name, nomogram in models.items():
        variables = [v.name for v in nomogram.variables]
        at_times = list(nomogram.survival_times if times is None else times)
        slug = _slug(model_name)
        figure = plot_nomogram(nomogram, output_dir / f"nomogram_{slug}.png", title=f"Nomogram: {model_name}")
        entry: dict[str, Any] = {
            "variables": variables,
            "coefficients": _coefficients(nomogram),
            "categories": _categories(nomogram),
            "risk_cutoff_linear_predictor": nomogram.risk_cutoff,
            "time_unit": nomogram.time_unit,
            "figure": figure.name,
            "cohorts": {},
        }
        tables = {
            name: validate_survival_table(df, nomogram.time_col, nomogram.event_col, variables,
                                          check_dimensions=False, name=f"{name} cohort for model {model_name!r}")
            for name, df in cohorts.items()
        }
        train = tables[training]
        for cohort_name, df in tables.items():
            time, event = df[nomogram.time_col].to_numpy(), df[nomogram.event_col].to_numpy()
            lp = nomogram.linear_predictor(df)
            c = concordance(time, event, lp, n_boot=n_boot, seed=seed)
            predicted = nomogram.survival_from_lp(lp, at_times)
            calib = [
                calibration(time, event, predicted[:, i], t, n_groups=n_calibration_groups, time_unit=nomogram.time_unit)
                for i, t in enumerate(at_times)
            ]
            groups = risk_groups(lp, nomogram.risk_cutoff)
            tag = f"{slug}_{_slug(cohort_name)}"
            figures = {
                "calibration": plot_calibration(
                    calib, output_dir / f"calibration_{tag}.png", title=f"{model_name} — {cohort_name}{suffix}"
                ).name,
            }
            strat = None
            if len(set(groups)) > 1:
                strat = kaplan_meier_logrank(time, event, groups, cutoff=nomogram.risk_cutoff, time_unit=nomogram.time_unit)
                figures["kaplan_meier"] = plot_kaplan_meier(
                    time, event, groups, output_dir / f"km_{tag}.png", title=f"{model_name} — {cohort_name}: risk groups{suffix}",
                    logrank_p=strat.logrank_p, time_unit=nomogram.time_unit,
                ).name
            else:
                logger.warning("%s on %s: every patient in the %s risk group; no log-rank test", model_name, cohort_name, groups[0])
            auc = time_dependent_auc(
                train[nomogram.time_col], train[nomogram.event_col], time, event, lp, at_times
            )
            entry["cohorts"][cohort_name] = {
                "n": int(len(df)),
                "n_events": int(event.sum()),
                "c_index": c.to_dict(),
                "calibration": [r.to_dict() for r in calib],
                "risk_groups": strat.to_dict() if strat else None,
                "time_dependent_auc": auc.to_dict(),
                "figures": figures,
            }
            report["summary"].append({
                "model": model_name, "cohort": cohort_name, "c_index": c.c_index,
                "ci_lower": c.ci_lower, "ci_upper": c.ci_upper,
                "logrank_p": strat.logrank_p if strat else None,
                "calibration_rmse": {f"{r.time:g}": r.rmse for r in calib},
            })
            ci = f" ({c.ci_lower:.3f}-{c.ci_upper:.3f})" if c.ci_lower is not None and c.ci_upper is not None else ""
            logger.info("%s on %s: C-index %.3f%s", model_name, cohort_name, c.c_index, ci)
        report["models"][model_name] = entry
    differences = _differences(models, cohorts, compare, n_boot=n_boot, seed=seed)
    report["c_index_difference"] = [d.to_dict() | {"cohort": cohort} for cohort, d in differences]
    report["figures"] = {"cindex_comparison": plot_cindex_comparison(
        report["summary"], differences, output_dir / "cindex_comparison.png", note=figure_note).name}
    if extra:
        report.update(extra)
    report = json_safe(report)
    write_json_atomic(output_dir / report_name, report)
    return report


def _coefficients(nomogram: Nomogram) -> dict[str, float]:
    """Log hazard ratio per model column: ``ALT``, ``BCLC[B]`` (vs the reference level), ``AFP>400``."""
    out: dict[str, float] = {}
    for v in nomogram.variables:
        if v.coding == "categorical":
            out.update({f"{v.name}[{level}]": effect for level, effect in (v.level_effects or {}).items()
                        if level != v.reference})
        elif v.coding == "cutoff":
            out[f"{v.name}>{v.cutoff:g}"] = v.coefficient
        else:
            out[v.name] = v.coefficient
    return out


def _categories(nomogram: Nomogram) -> dict[str, Any]:
    """Per categorical or dichotomised variable: its levels with log hazard ratio, hazard ratio and points."""
    import math

    out: dict[str, Any] = {}
    for v in nomogram.variables:
        if v.coding == "categorical":
            levels = {level: {"code": v.levels[level], "log_hr": effect, "hazard_ratio": math.exp(effect),  # type: ignore[index]
                              "points": (effect - v.lowest_lp) * nomogram.points_per_lp}
                      for level, effect in (v.level_effects or {}).items()}
            out[v.name] = {"coding": "categorical", "reference": v.reference, "levels": levels}
        elif v.coding == "cutoff":
            out[v.name] = {"coding": "cutoff", "cutoff": v.cutoff, "levels": {
                f"<= {v.cutoff:g}": {"log_hr": 0.0, "hazard_ratio": 1.0,
                                      "points": (0.0 - v.lowest_lp) * nomogram.points_per_lp},
                f"> {v.cutoff:g}": {"log_hr": v.coefficient, "hazard_ratio": math.exp(v.coefficient),
                                     "points": (v.coefficient - v.lowest_lp) * nomogram.points_per_lp}}}
    return out


def _differences(models: Mapping[str, Nomogram], cohorts: Mapping[str, pd.DataFrame],
                 compare: Sequence[tuple[str, str]], *, n_boot: int, seed: int) -> list[tuple[str, ConcordanceDifference]]:
    """C-index difference of each (A, B) pair on each cohort (patients with both models' values)."""
    out = []
    for a, b in compare:
        if a not in models or b not in models:
            logger.info("C-index difference %s - %s: %s not fitted; skipped", a, b, b if a in models else a)
            continue
        ma, mb = models[a], models[b]
        for cohort_name, df in cohorts.items():
            difference = concordance_difference(
                df[ma.time_col], df[ma.event_col], ma.linear_predictor(df), mb.linear_predictor(df), model_a=a,
                model_b=b, n_boot=n_boot, seed=seed)
            out.append((cohort_name, difference))
            logger.info("%s - %s on %s: C-index difference %.3f (p %s)", a, b, cohort_name, difference.difference,
                        "n/a" if difference.p_value is None else f"{difference.p_value:.3g}")
    return out


def plot_cindex_comparison(summary: Sequence[Mapping[str, Any]], differences: Sequence[tuple[str, ConcordanceDifference]],
                           path: str | Path, *, note: str = "") -> Path:
    """Every model's C-index (95% CI) per cohort, with the tested differences written under each cohort."""
    import numpy as np

    cohorts = list(dict.fromkeys(row["cohort"] for row in summary))
    model_names = list(dict.fromkeys(row["model"] for row in summary))
    figure = new_figure(max(6.0, 2.6 * len(cohorts) + 1.5), 4.8)
    ax = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(model_names), 1)
    colours = {"combined": "tab:red", "clinical": "tab:blue", "signature": "tab:green"}
    for m, model in enumerate(model_names):
        xs, ys, err = [], [], []
        for c, cohort in enumerate(cohorts):
            row = next((r for r in summary if r["model"] == model and r["cohort"] == cohort), None)
            if row is None:
                continue
            xs.append(c - 0.4 + width * (m + 0.5))
            ys.append(row["c_index"])
            low, high = row.get("ci_lower"), row.get("ci_upper")
            err.append((row["c_index"] - low, high - row["c_index"]) if low is not None and high is not None else (0, 0))
        ax.errorbar(xs, ys, yerr=np.clip(np.array(err).T, 0, None) if err else None, fmt="o", capsize=4,
                    color=colours.get(model), label=model)
    for c, cohort in enumerate(cohorts):
        lines = []
        for name, d in differences:
            if name != cohort:
                continue
            ci = f"\n95% CI {d.ci_lower:+.3f} to {d.ci_upper:+.3f}" if d.ci_lower is not None else ""
            p = f", p = {d.p_value:.3g}" if d.p_value is not None else ""
            lines.append(f"ΔC {d.model_a} − {d.model_b} = {d.difference:+.3f}{ci}{p}")
        if lines:
            ax.text(c, 0.02, "\n".join(lines), ha="center", va="bottom", fontsize=7, transform=ax.get_xaxis_transform())
    ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(cohorts)), cohorts)
    ax.set_xlim(-0.6, len(cohorts) - 0.4)
    ax.set_ylim(0.2, 1.0)
    ax.set_ylabel("Harrell's C-index (95% bootstrap CI)")
    ax.set_title("C-index by model and cohort" + (f"\n{note}" if note else ""), fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(figure, path)
