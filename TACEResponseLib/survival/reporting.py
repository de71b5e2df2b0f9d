"""The TRIPOD+AI-style report of ``survival`` / ``fit-nomogram`` (``tripod_report.md`` + ``.json``).

Filled only from what ran: the cohorts as fitted (counts, deaths, follow-up by reverse
Kaplan-Meier), the settings in ``report.json``'s ``config``, the signature's nested
cross-validation, the selected Cox models, every performance number with its validation type
(apparent and optimism-corrected on the training cohort, held-out or external on the others),
the decision curves, the comparison verdict and where this run departs from Zhang 2020.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from TACEResponseLib.core.tripod import Section, TripodReport, table

#: Zhang 2020 as DESIGN.md records it: setting → (the paper's value, what the config calls it)
ZHANG2020 = {
    "icc_threshold": (0.75, "ICC filter threshold"),
    "n_folds": (5, "elastic-net cross-validation folds"),
    "max_signature_features": (10, "signature size"),
}
DECISION_THRESHOLDS = (0.2, 0.4, 0.6, 0.8)


def reverse_km_median_followup(time: np.ndarray, event: np.ndarray) -> float | None:
    """Median follow-up by the reverse Kaplan-Meier method (censoring as the event)."""
    from lifelines import KaplanMeierFitter

    fitter = KaplanMeierFitter().fit(np.asarray(time, float), 1 - np.asarray(event, int))
    value = float(fitter.median_survival_time_)
    return value if np.isfinite(value) else None


def _cohort_rows(cohorts: Mapping[str, pd.DataFrame], kinds: Mapping[str, str], time_col: str, event_col: str):
    rows = []
    for name, df in cohorts.items():
        time, event = df[time_col].to_numpy(float), df[event_col].to_numpy(int)
        rows.append([name, kinds.get(name, ""), len(df), int(event.sum()), f"{event.mean():.0%}",
                     reverse_km_median_followup(time, event), float(np.max(time))])
    return rows


def _deviations(config: Mapping[str, Any], report: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for key, (paper, label) in ZHANG2020.items():
        used = config.get(key)
        if used != paper:
            rows.append([label, paper, used, "changed by the user"])
    deep = report.get("deep_features") or {}
    weights = deep.get("weights") or {}
    if weights.get("kind") == "random-init":
        rows.append(["DenseNet-121 weights", "ImageNet", "seeded random initialisation",
                     "no ImageNet file given (--pretrained): features are not the paper's"])
    settings = deep.get("settings") or {}
    if settings and settings.get("size") not in (None, 224):
        rows.append(["patch size (px)", 224, settings.get("size"), "changed by the user"])
    if settings and list(settings.get("phases") or []) != ["arterial", "portal"]:
        rows.append(["phases", "arterial, portal", ", ".join(settings.get("phases") or []), "changed by the user"])
    rows.append(["mRMR implementation", "Peng et al. 2005 (estimators for a censored outcome not stated)",
                 config.get("mrmr_method"), "a choice where the paper is silent (mRMRe's survival scheme by default)"])
    rows.append(["elastic-net mixing ratio", "not stated", ", ".join(str(r) for r in config.get("l1_ratios") or []),
                 "tried by cross-validation"])
    rows.append(["signature's cross-validated C-index", "not reported as nested",
                 f"nested {config.get('nested_folds')}-fold" if config.get("nested_folds") else "not run",
                 "added: mRMR and tuning inside each outer fold"])
    rows.append(["training-cohort performance", "apparent",
                 f"apparent + optimism-corrected ({config.get('optimism_boot')} bootstrap resamples)"
                 if config.get("optimism_boot") else "apparent only (optimism bootstrap switched off)",
                 "added: Harrell's bootstrap of the whole pipeline"])
    return rows


def _ci(entry: Mapping[str, Any]) -> str:
    low, high = entry.get("ci_lower"), entry.get("ci_upper")
    return "—" if low is None or high is None else f"{low:.3f}–{high:.3f}"


def survival_tripod_report(report: Mapping[str, Any], cohorts: Mapping[str, pd.DataFrame], *,
                           signature_fit: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None,
                           note: str = "") -> TripodReport:
    """The report (see the module docstring) from ``report.json``'s content and the cohorts fitted on."""
    config = report.get("config") or {}
    kinds = report.get("validation_types") or {}
    time_col, event_col = config.get("time_col", "time"), config.get("event_col", "event")
    unit = config.get("time_unit", "months")
    context = context or {}
    deep = report.get("deep_features") or context.get("deep_features") or {}
    sections: list[Section] = []

    sections.append(Section("Source of data and participants", text=[
        "Cohorts exactly as fitted and scored. Follow-up is the reverse Kaplan-Meier median (censoring as the event)."
        + (f" {note}" if note else "")],
        fields={"clinical table": context.get("clinical_source"),
                "validation cohort": context.get("validation") or "none"},
        tables=[table("Cohorts", ["cohort", "used as", "patients", "deaths", "death rate",
                                  f"median follow-up ({unit})", f"longest time ({unit})"],
                      _cohort_rows(cohorts, kinds, time_col, event_col))]))
    sections.append(Section("Outcome", fields={
        "outcome": f"overall survival: {time_col} ({unit}), death = {event_col} (1 died, 0 censored)",
        "time points": ", ".join(f"{t:g} {unit}" for t in config.get("survival_times") or [])}))
    candidates = list(config.get("clinical_covariates") or [])
    codings = report.get("codings") or {}
    sections.append(Section("Predictors", fields={
        "clinical candidates": ", ".join(f"{c} ({(codings.get(c) or {}).get('kind', 'numeric')})" for c in candidates)
        or "none",
        "deep features": deep.get("label") or "a feature table given by the user",
        "feature settings": deep.get("settings"),
        "ICC filter": report.get("icc") or "not run (no repeated extraction)"}))
    selection = report.get("selection") or {}
    epv = {name: sel.get("events_per_variable") for name, sel in selection.items()}
    sections.append(Section("Sample size", fields={
        "events per candidate parameter": epv or None,
        "warnings": [w for w in report.get("warnings") or [] if "events per variable" in w] or "none"}))
    sections.append(Section("Missing data", text=[
        "The survival and clinical tables are checked before any fitting: a missing, non-numeric or infinite value "
        "stops the run with an error naming the rows. The analysis is complete-case by construction; nothing is "
        "imputed and no patient is dropped silently."], fields={"patients with a missing value used": 0}))

    optimism = report.get("optimism") or {}
    fit = signature_fit or report.get("signature") or {}
    signature = fit.get("signature") or {}
    nested = fit.get("nested") or {}
    steps = [
        ["ICC reproducibility filter", f"{config.get('icc_kind')} > {config.get('icc_threshold')} against the "
                                       f"repeated extraction; uses no outcome, so it stays outside the resampling"],
        ["mRMR ranking", f"method {config.get('mrmr_method')}, relevance {config.get('mrmr_relevance')}, scheme "
                         f"{config.get('mrmr_scheme')}, top {config.get('n_mrmr')}"],
        ["elastic-net Cox", f"mixing ratios {config.get('l1_ratios')}, penalty path of 100, {config.get('n_folds')}-fold "
                            f"CV ({config.get('cv_rule')} rule), at most {config.get('max_signature_features')} features; "
                            f"chosen ratio {signature.get('l1_ratio')}, alpha {signature.get('alpha')}, "
                            f"{len(signature.get('feature_names') or [])} features"],
        ["nested cross-validation", f"{config.get('nested_folds')} outer folds, stratified by event; mRMR, tuning and "
                                    "fit redone inside each" if config.get("nested_folds") else "not run"],
        ["univariate Cox screen", f"Wald p < {config.get('screen_p')} (categorical variables: joint test)"],
        ["multivariable Cox", "stepwise selection by AIC in both directions from the screened set (lifelines, Efron ties)"],
        ["nomogram", "points scaled as rms::nomogram; survival from the Breslow baseline; high/low risk at the training "
                     "median linear predictor"],
        ["confidence intervals", f"percentile bootstrap over patients, {report.get('n_boot')} resamples, seed "
                                 f"{report.get('seed')}"],
        ["optimism bootstrap", (f"{config.get('optimism_boot')} resamples of the training patients, seed "
                                f"{config.get('seed')}; refitted: {', '.join((report.get('optimism') or {}).get('refitted') or [])}; "
                                f"held fixed: {', '.join((report.get('optimism') or {}).get('held_fixed') or [])}")
                               if report.get("optimism") else "not run"],
    ]
    sections.append(Section("Model development", tables=[table("Every step and its settings", ["step", "settings"],
                                                               steps)]))
    spec_rows = []
    for name, entry in (report.get("models") or {}).items():
        for variable, coef in (entry.get("coefficients") or {}).items():
            spec_rows.append([name, variable, coef, float(np.exp(coef))])
    sections.append(Section("Model specification", text=["Log hazard ratios of the final Cox models (nomogram JSON "
                                                          "files hold the baseline hazard and the points)."],
                            tables=[table("Final models", ["model", "term", "log HR", "HR"], spec_rows)]))

    if nested and nested.get("mean_cindex") is not None:
        spread = f" ± {nested['se_cindex']:.3f} (SE)" if nested.get("se_cindex") is not None else ""
        signature_row = ["the signature alone", "nested cross-validation of the training cohort",
                         f"C-index {nested['mean_cindex']:.3f}{spread} over {nested['n_folds']} outer folds"]
    else:
        signature_row = ["the signature alone", "not cross-validated (--nested-folds 0)", ""]
    validation_rows = [signature_row]
    for name, kind in kinds.items():
        note = ""
        if name == "training":
            note = (f"beside the optimism-corrected values of {optimism.get('n_valid')} bootstrap resamples"
                    if optimism else "apparent only: no optimism bootstrap ran (--optimism-boot 0)")
        validation_rows.append([f"the nomograms on the {name} cohort", kind, note])
    sections.append(Section("Validation", text=[
        "Each number below carries its validation type. On the training cohort, apparent numbers are optimistic and "
        "appear only beside their optimism-corrected value; model comparisons are claimed on validation cohorts only."],
        tables=[table("What each number is", ["numbers", "validation type", "note"], validation_rows)]))

    discrimination, calibration_rows, dca_rows = [], [], []
    for name, entry in (report.get("models") or {}).items():
        for cohort, result in entry["cohorts"].items():
            c = result["c_index"]
            corrected = (result.get("optimism_corrected") or {}) if result.get("optimism_corrected") else {}
            corrected_c = (corrected.get("c_index") or {})
            discrimination.append([name, cohort, result["validation_type"].split(" (")[0], c["c_index"], _ci(c),
                                   corrected_c.get("optimism"), corrected_c.get("corrected"),
                                   (corrected.get("c_index_632plus") or {}).get("estimate")])
            slope = result.get("calibration_slope") or {}
            corrected_slope = corrected.get("calibration_slope") or {}
            errors = {f"{r['time']:g}": (r.get("apparent_error"), r.get("corrected_error"))
                      for r in corrected.get("calibration") or []}
            for r in result["calibration"]:
                gaps = [abs(g["predicted"] - g["observed"]) for g in r["groups"] if g.get("observed") is not None]
                apparent_error = float(np.mean(gaps)) if gaps else None
                calibration_rows.append([name, cohort, f"{r['time']:g}", len(r["groups"]), apparent_error,
                                         errors.get(f"{r['time']:g}", (None, None))[1],
                                         slope.get("slope"), _ci(slope), corrected_slope.get("corrected")])
            curve = result.get("decision_curve") or {}
            thresholds = curve.get("thresholds") or []
            for p in DECISION_THRESHOLDS:
                if p in [round(t, 2) for t in thresholds]:
                    k = [round(t, 2) for t in thresholds].index(p)
                    dca_rows.append([name, cohort, f"{curve['time']:g} {unit}", p, curve["net_benefit"][k],
                                     curve["treat_all"][k]])
    sections.append(Section("Performance: discrimination", text=[
        "Harrell's C-index with a 95% percentile-bootstrap interval. On the training cohort the interval is of the "
        "apparent value; the optimism-corrected value (Harrell) is the estimate to quote, or the .632+ estimate where "
        "it is lower (Harrell's correction falls short when features far outnumber patients)."],
        tables=[table("C-index", ["model", "cohort", "validation type", "C-index", "95% CI", "optimism",
                                  "optimism-corrected (Harrell)", ".632+"], discrimination)]))
    sections.append(Section("Performance: calibration", text=[
        "Time-point calibration: predicted vs Kaplan-Meier observed survival by risk group (deciles, fewer groups "
        "when a group would hold fewer than 5 patients); error = mean |observed − predicted| over the groups. "
        "Calibration slope: Cox regression of the outcome on the model's linear predictor (1 is ideal; 1 by "
        "construction on the training cohort for the apparent value)."],
        tables=[table("Calibration", ["model", "cohort", f"time ({unit})", "groups", "mean |obs − pred|",
                                      "optimism-corrected error", "slope", "slope 95% CI", "optimism-corrected slope"],
                      calibration_rows)]))
    sections.append(Section("Decision curve", text=[
        "Net benefit of treating the patients whose predicted risk of death by the decision time reaches the "
        "threshold (Vickers 2008, observed risk by Kaplan-Meier); treat-all beside it, treat-none is 0."],
        tables=[table("Net benefit", ["model", "cohort", "at", "threshold", "net benefit", "treat all"], dca_rows)]))
    comparison = report.get("comparison") or {}
    rows = []
    for d in report.get("c_index_difference") or []:
        if "difference_corrected" in d:
            rows.append([d["cohort"], d["validation_type"].split(" (")[0], d.get("difference_apparent"),
                         d.get("difference_corrected"), "—", "—", d["claim"]])
        else:
            rows.append([d["cohort"], d["validation_type"], d.get("difference"), None, _ci(d), d.get("p_value"),
                         d["claim"]])
    sections.append(Section("Model comparison: combined vs clinical", text=[comparison.get("statement", "")],
                            tables=[table("C-index difference", ["cohort", "validation type", "ΔC", "ΔC corrected",
                                                                 "95% CI", "p", "claim"], rows)]))
    sections.append(Section("Deviations from the cited protocol (Zhang 2020)", tables=[table(
        "Settings", ["setting", "Zhang 2020", "this run", "note"], _deviations(config, report))]))
    sections.append(Section("Notes and warnings", text=list(report.get("warnings") or []) or ["none"],
                            fields={"optimism bootstrap": {"resamples fitted": optimism.get("n_valid"),
                                                           "of": optimism.get("n_boot")} if optimism else "not run"}))
    title = "Overall-survival nomogram (Zhang 2020 pipeline): development and validation"
    study = ("development with internal validation" if not any(k for n, k in kinds.items() if n != "training")
             else "development and validation")
    return TripodReport(title, study, sections, notes=[report.get("note", ""), note] if note else [report.get("note", "")])


def write_survival_tripod(report: Mapping[str, Any], cohorts: Mapping[str, pd.DataFrame], folder: str | Path, **kw) -> dict[str, str]:
    return survival_tripod_report(report, cohorts, **kw).write(folder)
