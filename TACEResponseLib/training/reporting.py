"""The TRIPOD+AI-style report of ``evaluate`` (``tripod_report.md`` + ``.json`` beside ``report.json``).

Filled from what ran: the evaluated cohort (counts per class, failed cases and why), the model as
its card describes it (architecture, training cohort and split, protocol and every deviation
from it, how its operating point and calibration were chosen), what kind of validation this is
(no evaluated patient in the model's training split: a held-out or external evaluation; some in
it: apparent, and said so), discrimination with bootstrap CIs, calibration, the decision curve,
the operating point, the clinical factors in their pre-specified directions, and the patch-level
figures by independent unit.
"""

from __future__ import annotations

from typing import Any, Mapping

from TACEResponseLib.core.tripod import Section, TripodReport, table

DECISION_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def _ci(entry: Mapping[str, Any] | None) -> str:
    entry = entry or {}
    low, high = entry.get("ci_low"), entry.get("ci_high")
    return "—" if low is None or high is None else f"{low:.3f}–{high:.3f}"


def validation_type(card: Any, evaluated: list[str]) -> tuple[str, list[str]]:
    """``(kind, overlap)``: whether any evaluated patient was in the model's training split."""
    split = (card.training_data or {}).get("split") or {}
    trained = set(split.get("train") or []) | set(split.get("validation") or [])
    overlap = sorted(set(evaluated) & trained)
    if overlap:
        return (f"apparent for {len(overlap)} patient(s) of the model's own training data (optimistic); "
                "held-out for the others"), overlap
    if not trained:
        return "evaluation of a fixed model (the card records no training split to check against)", []
    return "held-out / external: no evaluated patient is in the model's training split", []


def evaluation_tripod_report(report: Mapping[str, Any], card: Any, *, n_bootstrap: int) -> TripodReport:
    """The report (see the module docstring) from ``report.json``'s content and the bundle's card."""
    metrics = report["metrics"]
    training = card.training_data or {}
    config = training.get("config") or {}
    predictions_ids = [c for c in (report.get("evaluated_cases") or [])]
    kind, overlap = validation_type(card, predictions_ids)
    sections: list[Section] = []
    cohort = report.get("cohort") or {}
    sections.append(Section("Source of data and participants", fields={
        "manifest": cohort.get("manifest"), "rows": cohort.get("n_rows"), "evaluated": metrics.get("n_cases"),
        "per class": metrics.get("n_per_class"), "SYNTHETIC cohort": cohort.get("synthetic"),
        "could not be predicted": len(report.get("failed_cases") or {})},
        tables=[table("Cases that could not be predicted (left out)", ["case", "reason"],
                      list((report.get("failed_cases") or {}).items()))] if report.get("failed_cases") else []))
    sections.append(Section("Outcome", fields={
        "classes": list(card.class_names), "binary outcome": " + ".join(
            card.class_names[i] for i in card.objective_response_indices) or "—",
        "patient probability": report.get("patient_probability")}))
    sections.append(Section("Predictors", fields={
        "images": [f"{i.name} ({i.modality})" for i in card.inputs],
        "patches": card.patch_spec.to_dict(), "clinical factors of the model": [f.name for f in card.clinical_factors]
        or "none", "through-plane resampling": report.get("through_plane")}))
    sections.append(Section("Missing data", text=[
        "The manifest is validated before anything runs (files, labels, clinical values); a case whose images give no "
        "patch is listed above with the reason and left out of every figure. Nothing is imputed."]))
    sections.append(Section("Model", fields={
        "bundle": report["bundle"]["id"], "architecture": card.architecture, "weights sha256": card.weights_sha256,
        "SYNTHETIC model": card.synthetic,
        "training cohort": {k: training.get(k) for k in ("cohort", "n_cases", "n_per_class") if k in training},
        "initialisation": training.get("initialisation"), "optimizer": training.get("optimizer"),
        "epochs": training.get("epochs"), "validation roles": training.get("validation_roles"),
        "calibration": card.calibration.describe() if card.calibration is not None else "none",
        "operating point": (card.metrics or {}).get("operating_point")}))
    sections.append(Section("Validation", text=[kind],
                            fields={"evaluated patients from the training split": overlap or "none"}))
    discrimination = [["accuracy", metrics.get("accuracy"), "—" if not metrics.get("accuracy_ci") else
                       f"{metrics['accuracy_ci'][0]:.3f}–{metrics['accuracy_ci'][1]:.3f}"]]
    for name, auc in (metrics.get("auc_per_class") or {}).items():
        discrimination.append([f"AUC {name} vs rest", auc.get("auc"), _ci(auc)])
    orr = metrics.get("objective_response") or {}
    if orr:
        discrimination.append([f"AUC {' + '.join(orr.get('classes') or [])}", (orr.get("auc") or {}).get("auc"),
                               _ci(orr.get("auc"))])
    sections.append(Section("Performance: discrimination", text=[
        f"Patient level; 95% percentile-bootstrap intervals over patients ({n_bootstrap} resamples)."],
        tables=[table("Discrimination", ["measure", "value", "95% CI"], discrimination)]))
    calibration = metrics.get("calibration") or {}
    rows = []
    for when in ("before", "after"):
        if calibration.get(when):
            rows.append([f"{when} the bundle's calibration (this cohort)", calibration[when].get("ece"),
                         calibration[when].get("nll")])
    if card.calibration is not None and card.calibration.ece_after_cross_fitted is not None:
        rows.append(["at training, cross-fitted on the scored validation patients",
                     card.calibration.ece_after_cross_fitted, card.calibration.nll_after_cross_fitted])
    sections.append(Section("Performance: calibration", text=[f"Method: {calibration.get('method', '—')}; top-label "
                                                              "expected calibration error (10 bins) and NLL."],
                            tables=[table("Calibration", ["where", "ECE", "NLL"], rows)]))
    curve = orr.get("decision_curve") or {}
    dca_rows = []
    for t, model, everyone in zip(curve.get("thresholds") or [], curve.get("model") or [], curve.get("treat_all") or []):
        if round(t, 2) in DECISION_THRESHOLDS:
            dca_rows.append([t, model, everyone])
    sections.append(Section("Decision curve", text=["Net benefit of acting on the binary outcome's probability; "
                                                    "treat-none is 0."],
                            tables=[table("Net benefit", ["threshold", "model", "treat all"], dca_rows)]))
    point = metrics.get("operating_point") or {}
    sections.append(Section("Operating point", fields={k: point.get(k) for k in (
        "chosen_on", "threshold", "sensitivity", "specificity", "ppv", "npv")} if point else {"operating point": "—"}))
    factors = metrics.get("clinical_factors") or {}
    if factors:
        sections.append(Section("Single clinical factors", text=["Each factor's ROC in its pre-specified direction "
                                                                 "against the model's (DeLong's test)."],
                                tables=[table("Clinical factors", ["factor", "direction", "AUC", "model AUC", "p"], [
                                    [name, f.get("direction"), f.get("auc"), f.get("model_auc"),
                                     (f.get("delong_model_vs_factor") or {}).get("p_value")]
                                    for name, f in factors.items() if "auc" in f])]))
    patch = metrics.get("patch_level") or {}
    if patch:
        sections.append(Section("Patch level", fields={"patches": patch.get("n_patches"),
                                                       "independent units": patch.get("n_units"),
                                                       "unit": patch.get("unit"), "note": patch.get("note")}))
    deviations = training.get("protocol_deviations") or config.get("protocol_deviations") or {}
    protocol = training.get("protocol") or config.get("protocol")
    sections.append(Section("Deviations from the cited protocol", text=[
        f"Protocol: {protocol}." if protocol else "The model was not trained with --protocol: its settings are the "
                                                  "card's, compared with no paper here."],
        tables=[table("Deviations", ["setting", "paper", "used", "reason"],
                      [[k, d.get("protocol"), d.get("used"), d.get("reason", "")] for k, d in deviations.items()])]
        if deviations else []))
    notes = [report["bundle"].get("warning") or "Research use only."]
    return TripodReport(f"Response model evaluation: {report['bundle']['id']}", "external or held-out evaluation of a "
                        "fixed model" if not overlap else "evaluation including training patients", sections,
                        notes=[n for n in notes if n])
