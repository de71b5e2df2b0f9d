"""One JSON report + PNG figures comparing survival models on several cohorts.

Every model is a :class:`~.nomogram.Nomogram` (the signature-only model is a Cox model on
the signature score), so each is evaluated the same way on each cohort (training,
validation, ...): C-index with bootstrap CI, calibration at the nomogram's time points,
high/low risk by the model's training-median cut-off with Kaplan-Meier + log-rank, and
time-dependent AUC (censoring weights from the training cohort). Figure paths in the
report are relative to the output folder, so the folder can be moved as a whole.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import write_json_atomic
from TACEResponseLib.survival.data import validate_survival_table
from TACEResponseLib.survival.metrics import (
    calibration,
    concordance,
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
) -> dict[str, Any]:
    """Evaluate each model on each cohort; write PNGs and ``report_name`` into ``output_dir``.

    ``cohorts`` maps a name to a table with the models' variables and survival columns;
    ``training`` names the cohort used for the AUC(t) censoring weights. Returns the report.
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
            "coefficients": {v.name: v.coefficient for v in nomogram.variables},
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
    if extra:
        report.update(extra)
    report = json_safe(report)
    write_json_atomic(output_dir / report_name, report)
    return report
