"""Evaluate a response bundle on a labelled cohort: ``report.json``, ``predictions.csv`` and figures.

Every case of the manifest is predicted through
:func:`TACEResponseLib.prediction.case.predict_case`, the same path the GUI, ``predict`` and
``batch`` run (one task per case, in this process or on a Dask cluster, each case's
``result.json`` kept under ``cases/`` so a rerun resumes), then :func:`.metrics.compute_metrics` gives the patient-level numbers and
:mod:`.figures` draws ``roc.png`` (with bootstrap CI bands), ``confusion_matrix.png``,
``calibration.png``, ``dca.png`` and ``reliability.png`` (the predicted class's reliability before
and after the bundle's calibration, with ECE and NLL). Outputs are written atomically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import (
    check_output_folder,
    write_csv_atomic,
    write_json_atomic,
)
from TACEResponseLib.imaging.tumours import PATIENT_RULES
from TACEResponseLib.training.figures import write_plots, write_reliability_before_after
from TACEResponseLib.training.metrics import compute_metrics, top_label_calibration

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"


PREDICTIONS_FILE = "predictions.csv"


# --- evaluation of a bundle on a cohort ----------------------------------------------------------
@dataclass
class CasePrediction:
    case_id: str
    label: str
    probabilities: list[float]
    n_patches: int
    #: the probabilities of every patch that answered for the patient (patch-level metrics)
    patch_probabilities: list[list[float]] = field(default_factory=list)
    clinical: dict[str, float] = field(default_factory=dict)
    #: the patient's probabilities before the bundle's calibration (None when it has none)
    uncalibrated: list[float] | None = None
    #: the patient's answer lies beyond the training data (None: the bundle has no training profile)
    unlike_training: bool | None = None
    ood_score: float | None = None
    #: per patch, its independent unit: ``tumour@acquired slice`` (patches resampled from one slice share it)
    patch_units: list[str] = field(default_factory=list)


@dataclass
class EvaluationReport:
    """What :func:`evaluate_bundle` computed and where it wrote it."""

    metrics: dict[str, Any]
    predictions: list[CasePrediction]
    failed: dict[str, str]
    output: Path
    files: dict[str, str] = field(default_factory=dict)

    @property
    def objective_response_auc(self) -> dict[str, Any] | None:
        return self.metrics.get("objective_response", {}).get("auc")

    def summary_lines(self) -> list[str]:
        m = self.metrics
        lines = [f"{m['n_cases']} cases evaluated" + (f", {len(self.failed)} failed" if self.failed else "")]
        orr = self.objective_response_auc
        if orr and orr.get("auc") is not None:
            lines.append(f"objective-response AUC {orr['auc']:.3f} (95% CI {orr['ci_low']:.3f}–{orr['ci_high']:.3f})")
        lines.append(f"accuracy {m['accuracy']:.3f} (95% CI {m['accuracy_ci'][0]:.3f}–{m['accuracy_ci'][1]:.3f}; "
                     f"chance {m['chance_accuracy']:.3f})")
        for name, auc in m["auc_per_class"].items():
            if auc.get("auc") is not None:
                lines.append(f"  AUC {name} vs rest {auc['auc']:.3f} ({auc['ci_low']:.3f}–{auc['ci_high']:.3f})")
        cm = m["confusion_matrix"]
        lines.append("confusion matrix (rows true, columns predicted: " + " ".join(cm["labels"]) + ")")
        lines += ["  " + f"{name:>4} " + " ".join(f"{v:4d}" for v in row)
                  for name, row in zip(cm["labels"], cm["rows_true_columns_predicted"])]
        calibration = m.get("calibration") or {}
        if calibration.get("before"):
            lines.append(f"calibration ({calibration['method']}): ECE {calibration['before']['ece']:.3f} → "
                         f"{calibration['after']['ece']:.3f}, NLL {calibration['before']['nll']:.3f} → "
                         f"{calibration['after']['nll']:.3f} (patient level, this cohort)")
        elif calibration:
            lines.append(f"calibration: {calibration['method']}; ECE {calibration['after']['ece']:.3f}")
        ood = m.get("out_of_distribution") or {}
        if "flagged" in ood:
            lines.append(f"unlike the training data (OOD warning): {ood['flagged']} of {ood['of']} cases")
        return lines + statistics_lines(m)


def predict_rows(predictor, rows, output: Path, cluster=None,
                 progress_bar: bool = True) -> tuple[list[CasePrediction], dict[str, str]]:
    """Predict each manifest row, one task per case
    (:func:`~TACEResponseLib.prediction.batch.predict_cohort`, the path ``batch`` runs), into
    ``<output>/cases/<case id>/result.json``: a rerun predicts only the cases whose inputs, bundle or
    rules changed. The patient's probabilities are the result's patient-level answer (the
    predictor's patient rule, the one prediction uses); failures are collected, not raised."""
    from TACEResponseLib.prediction.batch import case_dir, predict_cohort, read_error
    from TACEResponseLib.prediction.case import read_result

    predict_cohort(rows, predictor.bundle, output, device=str(predictor.device), islands=predictor.islands,
                   patient_rule=predictor.patient_rule, cam="none", heatmap=False, cluster=cluster,
                   progress_bar=progress_bar, label="evaluating", tta=predictor.tta)
    predictions: list[CasePrediction] = []
    failed: dict[str, str] = {}
    for row in rows:
        folder = case_dir(output, row.case_id)
        result = read_result(folder)
        if result is not None and result.patient is not None:
            patient = result.patient
            used = set(patient.tumours)
            patches = [p for t in result.tumours if t.label in used for p in t.patch_probabilities]
            units = [f"{t.label}@{prov.get('slice_index')}" for t in result.tumours if t.label in used
                     for prov in (t.provenance or [{}] * len(t.patch_probabilities))]
            chosen = {t.label: t for t in result.tumours}
            uncalibrated = None
            if all(chosen[label].uncalibrated_probabilities is not None for label in patient.tumours):
                uncalibrated = np.sum([w * np.asarray(chosen[label].uncalibrated_probabilities)
                                       for label, w in zip(patient.tumours, patient.weights)], axis=0).tolist()
            predictions.append(CasePrediction(row.case_id, row.label, list(patient.probabilities), patient.n_patches,
                                              patches, dict(row.clinical or {}), uncalibrated,
                                              None if patient.trust is None else patient.trust.unlike_training,
                                              None if patient.trust is None else patient.trust.ood_score, units))
        else:
            failed[row.case_id] = (read_error(folder) or {}).get("error") or "not predicted"
            logger.error("case %s: %s", row.case_id, failed[row.case_id])
    return predictions, failed


def evaluate_bundle(
    bundle,
    manifest: str | Path,
    output: str | Path,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress_bar: bool = True,
    plots: bool = True,
    islands=None,
    patient_rule: str | None = None,
    clinical_factors: Sequence[str] = (),
    cluster=None,
    factor_directions: dict[str, str] | None = None,
) -> EvaluationReport:
    """Predict every case of ``manifest`` with ``bundle`` and write the report and figures to ``output``.

    Args:
        bundle: a :class:`Bundle`, bundle folder or registered name.
        manifest: labelled cohort CSV (``label`` = the true class of each patient).
        n_bootstrap, seed: patient-level bootstrap of every CI.
        plots: also draw the ROC, confusion, calibration and decision-curve figures.
        islands, patient_rule: the tumour rules (default: the bundle's training rules, as prediction).
        clinical_factors: numeric manifest columns whose own ROC is compared with the model's (DeLong).
        factor_directions: each factor's pre-specified direction, ``"higher"`` (default: a higher value
            predicts the positive outcome) or ``"lower"``; never chosen on the evaluated cohort.
        cluster: where the cases run (:class:`~TACEResponseLib.core.tasks.ClusterOptions`; default:
            in this process). Each case's ``result.json`` goes to ``<output>/cases/<case id>/``, so an
            interrupted evaluation resumes.

    Returns:
        The :class:`EvaluationReport` (metrics, per-case predictions, failed cases, files written).
    """
    from TACEResponseLib.imaging.manifest import read_manifest
    from TACEResponseLib.networks.bundle import Bundle
    from TACEResponseLib.networks.catalog import resolve_bundle
    from TACEResponseLib.prediction.predictor import Predictor

    started = time.perf_counter()
    output = check_output_folder(output)
    bundle = bundle if isinstance(bundle, Bundle) else resolve_bundle(bundle)
    card = bundle.card
    model_factors = [c.name for c in card.clinical_factors]
    rows = read_manifest(manifest, [p.name for p in card.inputs], require_label=True,
                         clinical=list(dict.fromkeys([*model_factors, *clinical_factors])), class_names=card.class_names)
    # no test-time views: they change no probability, and evaluation scores probabilities
    predictor = Predictor(bundle, device=device, cam_method="none", islands=islands, patient_rule=patient_rule, tta=1)
    predictions, failed = predict_rows(predictor, rows, output, cluster, progress_bar)

    if not predictions:
        raise InputError(f"{manifest}: no case could be predicted; first error: {next(iter(failed.values()), '?')}")
    labels = [p.label for p in predictions]
    probabilities = np.array([p.probabilities for p in predictions])
    metrics = compute_metrics(labels, probabilities, card.class_names, card.objective_response_indices,
                              n_bootstrap=n_bootstrap, seed=seed)
    metrics.update(response_statistics(predictions, card, clinical_factors, factor_directions))
    metrics["calibration"] = calibration_before_after(predictions, card)
    flags = [p.unlike_training for p in predictions if p.unlike_training is not None]
    metrics["out_of_distribution"] = ({"flagged": int(sum(flags)), "of": len(flags),
                                       "scores": [p.ood_score for p in predictions],
                                       "threshold": card.training_profile.threshold}
                                      if card.training_profile is not None and flags else
                                      {"note": "the bundle carries no training profile"})
    output.mkdir(exist_ok=True)
    cohort_synthetic = all(r.synthetic for r in rows)
    report: dict[str, Any] = {
        "format": "tace-response-evaluation/1",
        "bundle": {"id": bundle.id, "path": str(bundle.path), "sha256": card.weights_sha256,
                   "architecture": card.architecture, "synthetic_model": card.synthetic, "warning": card.warning},
        "cohort": {"manifest": str(Path(manifest).resolve()), "n_rows": len(rows),
                   "synthetic": cohort_synthetic},
        "failed_cases": failed,
        "evaluated_cases": [p.case_id for p in predictions],
        "through_plane": _shared_slices(predictions),
        "patient_probability": PATIENT_RULES[predictor.patient_rule],
        "tumour_rule": {**predictor.islands.to_dict(), "patient_rule": predictor.patient_rule,
                        "description": predictor.islands.describe()},
        "metrics": metrics,
        "runtime_s": None,
    }
    files = {"report": REPORT_FILE, "predictions": PREDICTIONS_FILE}
    write_predictions_csv(output / PREDICTIONS_FILE, predictions, card.class_names, card.objective_response_indices)
    if plots:
        files.update(write_plots(metrics, labels, probabilities, card.class_names, card.objective_response_indices,
                                 output, n_bootstrap=n_bootstrap, seed=seed,
                                 footer=_footer(card.synthetic, cohort_synthetic, bundle.id)))
        if metrics["calibration"].get("before"):
            files["reliability"] = write_reliability_before_after(
                output / "reliability.png", metrics["calibration"],
                _footer(card.synthetic, cohort_synthetic, bundle.id)).name
        if metrics.get("clinical_factors"):
            files["clinical_factor_roc"] = _factor_figure(predictions, card, metrics["clinical_factors"], output,
                                                          _footer(card.synthetic, cohort_synthetic, bundle.id)).name
    from TACEResponseLib.training.reporting import evaluation_tripod_report

    files.update(evaluation_tripod_report(report, card, n_bootstrap=n_bootstrap).write(output))
    report["files"] = files
    report["runtime_s"] = round(time.perf_counter() - started, 2)
    write_json_atomic(output / REPORT_FILE, report)
    return EvaluationReport(metrics, predictions, failed, output, files)


def _shared_slices(predictions: Sequence[CasePrediction]) -> dict[str, Any]:
    """Cases whose patches come partly from one acquired slice (resampled through-plane from thicker
    slices): their patches are not independent; the patch-level figures count each slice once."""
    shared = [p.case_id for p in predictions if p.patch_units and len(set(p.patch_units)) < len(p.patch_units)]
    if shared:
        logger.warning("%d of %d cases have several patches interpolated from one acquired slice (slices thicker "
                       "than the patch spec's through-plane spacing); patch-level figures count each slice once",
                       len(shared), len(predictions))
    return {"cases_with_patches_from_one_acquired_slice": len(shared), "of": len(predictions), "cases": shared[:50],
            "patches": sum(len(p.patch_units) for p in predictions),
            "independent_units": sum(len(set(p.patch_units)) for p in predictions)}


def calibration_before_after(predictions: Sequence[CasePrediction], card) -> dict[str, Any]:
    """Top-label ECE, NLL and reliability bins of the patient-level answers before and after the
    bundle's calibration (only ``after`` and a note when the bundle has none)."""
    truth = [card.class_names.index(p.label) for p in predictions]
    after = top_label_calibration(truth, np.array([p.probabilities for p in predictions]))
    if card.calibration is None or any(p.uncalibrated is None for p in predictions):
        return {"method": "none (the bundle carries no calibration)", "after": after}
    before = top_label_calibration(truth, np.array([p.uncalibrated for p in predictions]))
    return {"method": card.calibration.short(), "temperature": card.calibration.temperature,
            "before": before, "after": after}


#: the cut-off of the binary outcome's probability when the card has none chosen on held-out data
PRESPECIFIED_CUTOFF = 0.5
FACTOR_DIRECTIONS = ("higher", "lower")


def response_statistics(predictions: Sequence[CasePrediction], card, clinical_factors: Sequence[str] = (),
                        factor_directions: dict[str, str] | None = None) -> dict[str, Any]:
    """Patch-level metrics (by independent unit: patches from one acquired slice count once), and for
    the binary outcome (objective response, or responder): the Mann–Whitney U of its probability
    between the two groups, sensitivity/specificity/PPV/NPV at the card's Youden cut-off (chosen on
    held-out or out-of-fold predictions at training; without one, the pre-specified
    :data:`PRESPECIFIED_CUTOFF` — never a cut-off chosen on the cohort it is scored on), and each
    clinical factor's own ROC AUC in its pre-specified direction (``factor_directions``, default
    ``"higher"``: a higher value predicts the positive outcome) compared with the model's by
    DeLong's test."""
    from TACEResponseLib.training.roc_statistics import delong, mann_whitney, operating_point, patch_metrics

    class_names = list(card.class_names)
    objective = card.objective_response_indices
    patch_labels = [class_names.index(p.label) for p in predictions for _ in p.patch_probabilities]
    patch_probs = np.array([q for p in predictions for q in p.patch_probabilities], float)
    units = [f"{p.case_id}/{u}" for p in predictions for u in p.patch_units]
    out: dict[str, Any] = {}
    if len(patch_probs):
        out["patch_level"] = patch_metrics(patch_labels, patch_probs, class_names, objective,
                                           units=units if len(units) == len(patch_probs) else None)
    if not objective:
        return out
    truth = np.array([int(class_names.index(p.label) in objective) for p in predictions])
    score = np.array([sum(p.probabilities[i] for i in objective) for p in predictions])
    positive = " + ".join(class_names[i] for i in objective)
    out["mann_whitney"] = {"score": f"P({positive})", "groups": f"{positive} (1) vs the others (0)",
                           **mann_whitney(score, truth)}
    if not 0 < truth.sum() < len(truth):
        return out
    trained = (card.metrics or {}).get("operating_point") or {}
    if trained.get("threshold") is not None:
        threshold, chosen = float(trained["threshold"]), trained.get("chosen_on", "the card's cut-off")
    else:
        threshold = PRESPECIFIED_CUTOFF
        chosen = (f"pre-specified P({positive}) ≥ {PRESPECIFIED_CUTOFF:g} (the card has no cut-off chosen on held-out "
                  "data; a cut-off chosen on this cohort would flatter it)")
    out["operating_point"] = {"chosen_on": chosen, **operating_point(truth, score, threshold)}
    factors = {}
    directions = dict(factor_directions or {})
    unknown = sorted(set(directions) - set(clinical_factors))
    if unknown:
        raise InputError(f"factor direction given for {unknown}, which are not among the clinical factors "
                         f"{list(clinical_factors)}")
    for name in clinical_factors:
        values = np.array([p.clinical.get(name, np.nan) for p in predictions], float)
        if not np.all(np.isfinite(values)):
            factors[name] = {"note": "missing values; not compared"}
            continue
        direction = directions.get(name, "higher")
        if direction not in FACTOR_DIRECTIONS:
            raise InputError(f"factor direction of {name}: expected 'higher' or 'lower', got {direction!r}")
        result = delong(truth, [score, values if direction == "higher" else -values])
        factors[name] = {"auc": result.aucs[1], "direction": f"{direction} {name} → {positive}",
                         "model_auc": result.aucs[0], "delong_model_vs_factor": result.compare(0, 1),
                         "note": ("direction pre-specified" if name in directions else
                                  "direction pre-specified by default (higher → positive); an AUC below 0.5 means "
                                  "the factor points the other way on this cohort")}
    if factors:
        out["clinical_factors"] = factors
    return out


def _factor_figure(predictions: Sequence[CasePrediction], card, statistics: dict[str, Any], output: Path,
                   footer: str) -> Path:
    from TACEResponseLib.training.figures import write_factor_roc

    objective = card.objective_response_indices
    truth = np.array([int(card.class_names.index(p.label) in objective) for p in predictions])
    score = np.array([sum(p.probabilities[i] for i in objective) for p in predictions])
    factors = {name: np.array([p.clinical.get(name, np.nan) for p in predictions], float) for name in statistics}
    outcome = " + ".join(card.class_names[i] for i in objective)
    return write_factor_roc(output / "clinical_factor_roc.png", truth, score, factors, statistics, outcome, footer)


def statistics_lines(metrics: dict[str, Any]) -> list[str]:
    """The report lines of :func:`response_statistics`' figures."""
    lines = []
    patch = metrics.get("patch_level")
    if patch:
        aucs = ", ".join(f"{k} {v:.3f}" for k, v in patch["auc_per_class"].items() if v is not None)
        lines.append(f"patch level ({patch['n_patches']} patches, {patch.get('n_units', patch['n_patches'])} independent "
                     f"units = {patch.get('unit', 'patch').split(' (')[0]}s): accuracy {patch['accuracy']:.3f}; AUC {aucs}")
    mw = metrics.get("mann_whitney")
    if mw and mw.get("u") is not None:
        lines.append(f"Mann–Whitney U of {mw['score']}: U = {mw['u']:.1f}, p = {mw['p_value']:.3g} "
                     f"(median {mw['median_1']:.3f} vs {mw['median_0']:.3f}; n {mw['n_1']} vs {mw['n_0']})")
    op = metrics.get("operating_point")
    if op:
        def fmt(v):
            return "n/a" if v is None else f"{v:.3f}"
        lines.append(f"at cut-off {op['threshold']:.3f} ({op['chosen_on']}): sensitivity {fmt(op['sensitivity'])}, "
                     f"specificity {fmt(op['specificity'])}, PPV {fmt(op['ppv'])}, NPV {fmt(op['npv'])}")
    for name, f in (metrics.get("clinical_factors") or {}).items():
        if "auc" in f:
            d = f["delong_model_vs_factor"]
            lines.append(f"  {name}: AUC {f['auc']:.3f} ({f['direction']}) vs model {f['model_auc']:.3f}; "
                         f"DeLong z = {d['z']:.2f}, p = {d['p_value']:.3g}")
    return lines


def _footer(synthetic_model: bool, synthetic_cohort: bool, bundle_id: str) -> str:
    parts = []
    if synthetic_model:
        parts.append("model trained on SYNTHETIC data — research use only, not for clinical use")
    if synthetic_cohort:
        parts.append("evaluated on SYNTHETIC phantoms")
    return f"{bundle_id}: " + "; ".join(parts or ["research use only"])


def write_predictions_csv(path: Path, predictions: Sequence[CasePrediction], class_names: Sequence[str],
                          objective_indices: Sequence[int]) -> Path:
    columns = ["case_id", "label", "predicted", "correct", *[f"p_{c}" for c in class_names]]
    if objective_indices:
        columns += ["p_objective_response", "objective_response_true"]
    columns.append("n_patches")
    rows = []
    for p in predictions:
        predicted = class_names[int(np.argmax(p.probabilities))]
        row = {"case_id": p.case_id, "label": p.label, "predicted": predicted,
               "correct": int(predicted == p.label), "n_patches": p.n_patches,
               **{f"p_{c}": f"{v:.6f}" for c, v in zip(class_names, p.probabilities)}}
        if objective_indices:
            row["p_objective_response"] = f"{sum(p.probabilities[i] for i in objective_indices):.6f}"
            row["objective_response_true"] = int(p.label in [class_names[i] for i in objective_indices])
        rows.append(row)
    return write_csv_atomic(path, columns, rows)
