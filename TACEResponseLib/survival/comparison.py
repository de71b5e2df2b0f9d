"""One JSON report + PNG figures comparing survival models on several cohorts.

Every model is a :class:`~.nomogram.Nomogram` (the signature-only model is a Cox model on
the signature score), so each is evaluated the same way on each cohort (training,
validation, ...): C-index with bootstrap CI, calibration slope, calibration at the nomogram's
time points (predicted vs Kaplan-Meier observed S(t) by risk decile, fewer groups in small
cohorts), high/low risk by the model's training-median cut-off with Kaplan-Meier + log-rank,
time-dependent AUC (censoring weights from the training cohort) and a decision curve.

Every number says what kind of validation it is (``validation_type``): on the training cohort
it is **apparent** (the models were chosen and fitted on these patients) and is shown beside
the **optimism-corrected** value of Harrell's bootstrap (:mod:`.validation`) when one ran; on a
held-out split or an external cohort it is a validation. Pairs of models named in ``compare``
(Zhang 2020: combined vs clinical) get the C-index difference with a paired bootstrap CI and p
value **only on validation cohorts**; on the training cohort the difference appears only
optimism-corrected, without a test, and labelled so; with no validation cohort the report says
that no comparison can be claimed. ``cindex_comparison.png`` draws it all. Each model's
categorical variables are listed with the hazard ratio of every level. Figure paths in the
report are relative to the output folder, so the folder can be moved as a whole.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.figures import new_figure, save_figure
from TACEResponseLib.core.files import write_json_atomic
from TACEResponseLib.survival.data import validate_survival_table
from TACEResponseLib.survival.metrics import (
    ConcordanceDifference,
    calibration,
    calibration_groups,
    calibration_slope,
    concordance,
    concordance_difference,
    json_safe,
    kaplan_meier_logrank,
    plot_kaplan_meier,
    risk_groups,
    survival_decision_curve,
    time_dependent_auc,
)
from TACEResponseLib.survival.nomogram import Nomogram, plot_nomogram

logger = logging.getLogger(__name__)

REPORT_NOTE = "Research use only. Not for clinical decisions."
APPARENT = "apparent (training cohort: the models were selected and fitted on these patients)"
CORRECTED = "optimism-corrected (Harrell's bootstrap of the whole pipeline on the training cohort)"
NO_VALIDATION_COMPARISON = ("No validation cohort: no comparison between models can be claimed. On the training "
                            "cohort a difference is optimistic by construction; the optimism-corrected difference is "
                            "shown for orientation only, without a test.")
TRAINING_COMPARISON = ("training cohort: shown optimism-corrected only, without a test; a comparison is claimed on "
                       "validation cohorts alone")


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
    n_calibration_groups: int = 10,
    report_name: str = "report.json",
    extra: Mapping[str, Any] | None = None,
    figure_note: str = "",
    compare: Sequence[tuple[str, str]] = (("combined", "clinical"),),
    optimism: Any = None,
    validation_types: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate each model on each cohort; write PNGs and ``report_name`` into ``output_dir``.

    ``cohorts`` maps a name to a table with the models' variables and survival columns;
    ``training`` names the cohort the models were fitted on (also used for the AUC(t) censoring
    weights); ``compare`` the (model A, model B) pairs whose C-index difference is tested on the
    other cohorts (pairs with a missing model are skipped). ``optimism``: the
    :class:`~.validation.OptimismResult` of the training cohort (None: its numbers stay apparent
    only, and say so). ``validation_types``: what each other cohort is ("held-out split",
    "external"; default "validation"). Returns the report.
    """

    if not models:
        raise InputError("survival report: no model to evaluate")
    if training not in cohorts:
        raise InputError(f"survival report: training cohort {training!r} not among cohorts {list(cohorts)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"\n{figure_note}" if figure_note else ""
    kinds = {name: (APPARENT if name == training else (validation_types or {}).get(name, "validation"))
             for name in cohorts}
    report: dict[str, Any] = {"note": REPORT_NOTE, "n_boot": n_boot, "seed": seed, "validation_types": kinds,
                              "models": {}, "summary": []}
    if optimism is not None:
        report["optimism"] = optimism.to_dict()

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
        corrected = (optimism.models.get(model_name) if optimism is not None else None) or {}
        for cohort_name, df in tables.items():
            time, event = df[nomogram.time_col].to_numpy(), df[nomogram.event_col].to_numpy()
            lp = nomogram.linear_predictor(df)
            c = concordance(time, event, lp, n_boot=n_boot, seed=seed)
            slope = calibration_slope(time, event, lp)
            predicted = nomogram.survival_from_lp(lp, at_times)
            groups_n = calibration_groups(len(df), n_calibration_groups)
            calib = [calibration(time, event, predicted[:, i], t, n_groups=groups_n, time_unit=nomogram.time_unit)
                     for i, t in enumerate(at_times)]
            is_training = cohort_name == training
            tag = f"{slug}_{_slug(cohort_name)}"
            figures = {"calibration": plot_time_calibration(
                calib, output_dir / f"calibration_{tag}.png", title=f"{model_name} — {cohort_name}{suffix}",
                corrected=corrected.get("calibration") if is_training else None,
                kind="apparent" if is_training else kinds[cohort_name]).name}
            groups = risk_groups(lp, nomogram.risk_cutoff)
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
            decision_time = at_times[len(at_times) // 2]
            dca = survival_decision_curve(time, event, 1.0 - predicted[:, len(at_times) // 2], decision_time,
                                          time_unit=nomogram.time_unit)
            result: dict[str, Any] = {
                "validation_type": kinds[cohort_name],
                "n": int(len(df)),
                "n_events": int(event.sum()),
                "c_index": c.to_dict(),
                "calibration_slope": slope.to_dict(),
                "calibration": [r.to_dict() for r in calib],
                "risk_groups": strat.to_dict() if strat else None,
                "time_dependent_auc": auc.to_dict(),
                "decision_curve": dca.to_dict(),
                "figures": figures,
            }
            row: dict[str, Any] = {
                "model": model_name, "cohort": cohort_name, "validation_type": kinds[cohort_name],
                "c_index": c.c_index, "ci_lower": c.ci_lower, "ci_upper": c.ci_upper,
                "calibration_slope": slope.slope,
                "logrank_p": strat.logrank_p if strat else None,
                "calibration_rmse": {f"{r.time:g}": r.rmse for r in calib},
            }
            if is_training:
                if corrected:
                    result["optimism_corrected"] = {"validation_type": CORRECTED, **corrected}
                    row["c_index_corrected"] = corrected["c_index"]["corrected"]
                    row["c_index_632plus"] = (corrected.get("c_index_632plus") or {}).get("estimate")
                    row["calibration_slope_corrected"] = corrected["calibration_slope"]["corrected"]
                else:
                    result["optimism_corrected"] = None
                    row["c_index_corrected"] = None
            entry["cohorts"][cohort_name] = result
            report["summary"].append(row)
            ci = f" ({c.ci_lower:.3f}-{c.ci_upper:.3f})" if c.ci_lower is not None and c.ci_upper is not None else ""
            logger.info("%s on %s: C-index %.3f%s [%s]", model_name, cohort_name, c.c_index, ci, kinds[cohort_name])
        report["models"][model_name] = entry
    differences = _differences(models, {k: v for k, v in cohorts.items() if k != training}, compare,
                               n_boot=n_boot, seed=seed)
    report["c_index_difference"] = _training_difference(optimism, models, compare, training) + [
        d.to_dict() | {"cohort": cohort, "validation_type": kinds[cohort], "claim": _claim(d)} for cohort, d in differences]
    report["comparison"] = _comparison_verdict(report["c_index_difference"], training, optimism, compare, models)
    report["figures"] = {"cindex_comparison": plot_cindex_comparison(
        report["summary"], report["c_index_difference"], output_dir / "cindex_comparison.png", note=figure_note).name}
    dca_figure = plot_decision_curves(report, output_dir, note=figure_note)
    if dca_figure is not None:
        report["figures"]["decision_curves"] = dca_figure
    if extra:
        report.update(extra)
    report = json_safe(report)
    write_json_atomic(output_dir / report_name, report)
    return report


def _claim(d: ConcordanceDifference) -> str:
    if d.ci_lower is None or d.ci_upper is None:
        return "no interval: nothing can be concluded"
    if d.ci_lower > 0:
        return f"{d.model_a} ranks patients better than {d.model_b} (95% CI above 0)"
    if d.ci_upper < 0:
        return f"{d.model_a} ranks patients worse than {d.model_b} (95% CI below 0)"
    return f"no difference shown (95% CI includes 0)"


def _training_difference(optimism: Any, models: Mapping[str, Nomogram], compare: Sequence[tuple[str, str]],
                         training: str) -> list[dict[str, Any]]:
    """The training cohort's C-index difference: optimism-corrected only, no test, no claim."""
    out = []
    for a, b in compare:
        if a not in models or b not in models:
            continue
        difference = (optimism.difference if optimism is not None and optimism.difference
                      and (optimism.difference["model_a"], optimism.difference["model_b"]) == (a, b) else None)
        out.append({"model_a": a, "model_b": b, "cohort": training,
                    "validation_type": CORRECTED if difference else APPARENT,
                    "difference": None, "difference_apparent": difference["apparent"] if difference else None,
                    "optimism": difference["optimism"] if difference else None,
                    "difference_corrected": difference["corrected"] if difference else None,
                    "ci_lower": None, "ci_upper": None, "p_value": None,
                    "claim": "none: " + TRAINING_COMPARISON + ("" if difference else
                                                               " (no optimism bootstrap ran: not even that)")})
    return out


def _comparison_verdict(rows: Sequence[Mapping[str, Any]], training: str, optimism: Any,
                        compare: Sequence[tuple[str, str]], models: Mapping[str, Nomogram]) -> dict[str, Any]:
    tested = [r for r in rows if r["cohort"] != training]
    pairs = [(a, b) for a, b in compare if a in models and b in models]
    if not pairs:
        return {"claimable": False, "statement": "no pair of models to compare was fitted"}
    if not tested:
        return {"claimable": False, "statement": NO_VALIDATION_COMPARISON}
    return {"claimable": True, "statement": "; ".join(f"{r['cohort']} ({r['validation_type']}): {r['claim']}"
                                                      for r in tested),
            "training": TRAINING_COMPARISON}


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


def plot_cindex_comparison(summary: Sequence[Mapping[str, Any]], differences: Sequence[Mapping[str, Any]],
                           path: str | Path, *, note: str = "") -> Path:
    """Every model's C-index (95% CI) per cohort — on the training cohort the apparent value (open)
    beside the optimism-corrected one (filled) — with the differences written under each cohort:
    tested on validation cohorts, optimism-corrected and untested on the training cohort."""
    cohorts = list(dict.fromkeys(row["cohort"] for row in summary))
    model_names = list(dict.fromkeys(row["model"] for row in summary))
    figure = new_figure(max(6.0, 2.8 * len(cohorts) + 1.5), 5.0)
    ax = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(model_names), 1)
    colours = {"combined": "tab:red", "clinical": "tab:blue", "signature": "tab:green"}
    for m, model in enumerate(model_names):
        xs, ys, err, hollow, plus = [], [], [], [], []
        for c, cohort in enumerate(cohorts):
            row = next((r for r in summary if r["model"] == model and r["cohort"] == cohort), None)
            if row is None:
                continue
            x = c - 0.4 + width * (m + 0.5)
            low, high = row.get("ci_lower"), row.get("ci_upper")
            if "c_index_corrected" in row:  # the training cohort: apparent open, Harrell filled, .632+ diamond
                hollow.append((x - width * 0.25, row["c_index"]))
                if row["c_index_corrected"] is not None:
                    xs.append(x)
                    ys.append(row["c_index_corrected"])
                    err.append((0.0, 0.0))
                if row.get("c_index_632plus") is not None:
                    plus.append((x + width * 0.25, row["c_index_632plus"]))
                continue
            xs.append(x)
            ys.append(row["c_index"])
            err.append((row["c_index"] - low, high - row["c_index"]) if low is not None and high is not None else (0, 0))
        ax.errorbar(xs, ys, yerr=np.clip(np.array(err).T, 0, None) if err else None, fmt="o", capsize=4,
                    color=colours.get(model), label=model)
        if hollow:
            ax.scatter(*zip(*hollow), facecolors="none", edgecolors=colours.get(model, "black"), zorder=3)
        if plus:
            ax.scatter(*zip(*plus), marker="D", s=22, color=colours.get(model, "black"), zorder=3)
    for c, cohort in enumerate(cohorts):
        lines = []
        for d in differences:
            if d["cohort"] != cohort:
                continue
            if "difference_corrected" in d:  # the training cohort: no test
                value = d.get("difference_corrected")
                lines.append(f"ΔC {d['model_a']} − {d['model_b']}, optimism-corrected: "
                             + (f"{value:+.3f}" if value is not None else "not estimated") + "\nno test on training data")
                continue
            ci = f"\n95% CI {d['ci_lower']:+.3f} to {d['ci_upper']:+.3f}" if d.get("ci_lower") is not None else ""
            p = f", p = {d['p_value']:.3g}" if d.get("p_value") is not None else ""
            lines.append(f"ΔC {d['model_a']} − {d['model_b']} = {d['difference']:+.3f}{ci}{p}")
        if lines:
            ax.text(c, 0.02, "\n".join(lines), ha="center", va="bottom", fontsize=7, transform=ax.get_xaxis_transform())
    ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)
    labels = [f"{cohort}\n(apparent ○ / optimism-corrected ● / .632+ ◆)" if any("c_index_corrected" in r and r["cohort"] == cohort
                                                                  for r in summary) else cohort for cohort in cohorts]
    ax.set_xticks(range(len(cohorts)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(cohorts) - 0.4)
    ax.set_ylim(0.2, 1.0)
    ax.set_ylabel("Harrell's C-index (95% bootstrap CI)")
    ax.set_title("C-index by model and cohort" + (f"\n{note}" if note else ""), fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(figure, path)


def plot_time_calibration(results: Sequence[Any], path: str | Path, *, title: str = "Calibration",
                          corrected: Sequence[Mapping[str, Any]] | None = None, kind: str = "") -> Path:
    """One panel per time point: predicted S(t) vs Kaplan-Meier observed S(t) (95% CI) by risk group,
    the ideal line, and — on the training cohort — the optimism-corrected curve of Harrell's bootstrap."""
    figure = new_figure(4.2 * max(1, len(results)), 4.8)
    for k, result in enumerate(results):
        ax = figure.add_subplot(1, max(1, len(results)), k + 1)
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="ideal")
        shown = [g for g in result.groups if g.observed is not None]
        if shown:
            x = np.array([g.predicted for g in shown])
            y = np.array([g.observed for g in shown])
            err = np.array([[g.observed - g.observed_lower, g.observed_upper - g.observed] for g in shown]).T
            ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker="o", capsize=3, linewidth=1, color="tab:blue",
                        label="apparent (KM, 95% CI)" if corrected else f"observed (KM, 95% CI){' — ' + kind if kind else ''}")
        if corrected and k < len(corrected):
            points = [(g["predicted"], g["corrected"]) for g in corrected[k]["groups"]
                      if g.get("predicted") is not None and g.get("corrected") is not None]
            if points:
                px, py = zip(*sorted(points))
                ax.plot(px, py, marker="s", color="tab:red", linewidth=1.5, label="bootstrap-corrected")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"Predicted survival at {result.time:g} {result.time_unit}")
        if k == 0:
            ax.set_ylabel("Observed survival (Kaplan-Meier)")
        ax.set_title(f"{result.time:g} {result.time_unit} ({len(result.groups)} risk groups)", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
        ax.grid(alpha=0.3)
    lines = title.count("\n") + 1
    figure.subplots_adjust(top=1.0 - 0.055 * (lines + 1), wspace=0.25)  # the title's lines above the panel titles
    figure.suptitle(title, fontsize=10, y=0.99)
    return save_figure(figure, path)


def plot_decision_curves(report: Mapping[str, Any], output_dir: Path, *, note: str = "") -> str | None:
    """Net benefit of every model on every cohort at the decision time (one panel per cohort)."""
    cohorts = list(dict.fromkeys(row["cohort"] for row in report["summary"]))
    if not cohorts:
        return None
    figure = new_figure(4.6 * len(cohorts), 4.4)
    colours = {"combined": "tab:red", "clinical": "tab:blue", "signature": "tab:green"}
    for k, cohort in enumerate(cohorts):
        ax = figure.add_subplot(1, len(cohorts), k + 1)
        curve = None
        for model, entry in report["models"].items():
            curve = entry["cohorts"][cohort]["decision_curve"]
            pts = [(t, v) for t, v in zip(curve["thresholds"], curve["net_benefit"]) if v is not None]
            if pts:
                ax.plot(*zip(*pts), color=colours.get(model), label=model)
        if curve is not None:
            pts = [(t, v) for t, v in zip(curve["thresholds"], curve["treat_all"]) if v is not None]
            if pts:
                ax.plot(*zip(*pts), color="gray", linestyle="--", label="treat all")
            ax.axhline(0.0, color="black", linewidth=1, label="treat none")
            ax.set_xlabel(f"Threshold risk of death by {curve['time']:g} {curve['time_unit']}")
        ax.set_ylim(-0.05, 0.6)
        ax.set_title(f"{cohort} ({report['validation_types'][cohort].split(' (')[0]})", fontsize=9)
        if k == 0:
            ax.set_ylabel("Net benefit")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    figure.suptitle("Decision curves" + (f" — {note}" if note else ""), fontsize=10)
    return save_figure(figure, output_dir / "decision_curves.png").name
