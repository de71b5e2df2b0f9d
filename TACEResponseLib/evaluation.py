"""Evaluate a response bundle on a labelled cohort: the numbers and figures Peng 2019 reports.

Every case of the manifest is predicted with :class:`~TACEResponseLib.inference.Predictor`
(the same code the GUI and ``predict`` run; patient probability = mean over the tumour's
patches, the whole segment as one tumour, as in training). Then, at the patient level:

- one-vs-rest AUC per class and the objective-response AUC (p = P(CR) + P(PR), truth =
  label in {CR, PR}), each with a 1000-bootstrap percentile 95 % CI (patients resampled with
  replacement, seeded; resamples holding one class only are skipped and counted);
- accuracy (with a bootstrap CI) and the confusion matrix;
- calibration of the objective-response probability: reliability bins and Brier score
  (plus the multi-class Brier score);
- decision-curve analysis for objective response: net benefit
  ``TP/n − FP/n · pt/(1 − pt)`` of the model vs treat-all and treat-none over thresholds.

AUC, ROC, confusion matrix and Brier score come from scikit-learn; nothing here
re-implements them. Outputs (written atomically): ``report.json``, ``predictions.csv``,
``roc.png`` (with bootstrap CI bands), ``confusion_matrix.png``, ``calibration.png``,
``dca.png``.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError, TACEResponseError
from .io import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.csv"
DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 0.991, 0.01), 2)


# --- statistics --------------------------------------------------------------------------------
def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """``(n_bootstrap, n)`` patient indices drawn with replacement (seeded)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(int(n_bootstrap), int(n)))


def bootstrap_ci(
    statistic: Callable[..., float],
    arrays: Sequence[np.ndarray],
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    valid: Callable[..., bool] | None = None,
) -> tuple[float, float, int]:
    """Percentile bootstrap CI of ``statistic(*arrays)``, resampling rows (patients) together.

    Resamples for which ``valid(*resampled)`` is false (e.g. one class only for an AUC) are
    skipped. Returns ``(low, high, n_valid_resamples)``; NaNs when no resample is valid.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    values = []
    for idx in bootstrap_indices(n, n_bootstrap, seed):
        sample = [a[idx] for a in arrays]
        if valid is not None and not valid(*sample):
            continue
        values.append(float(statistic(*sample)))
    if not values:
        return math.nan, math.nan, 0
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high), len(values)


def _two_classes(y: np.ndarray, *_: Any) -> bool:
    return 0 < int(np.sum(y)) < len(y)


def auc_with_ci(y_true: Sequence[int], scores: Sequence[float], n_bootstrap: int = 1000, seed: int = 0,
                confidence: float = 0.95) -> dict[str, Any]:
    """ROC AUC (scikit-learn) with a percentile bootstrap CI; ``auc`` None when one class is absent."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, dtype=int)
    s = np.asarray(scores, dtype=float)
    out: dict[str, Any] = {"n": int(len(y)), "n_positive": int(y.sum()), "n_negative": int(len(y) - y.sum())}
    if not _two_classes(y):
        out.update(auc=None, ci_low=None, ci_high=None, n_bootstrap_valid=0,
                   note="AUC undefined: only one class present")
        return out
    auc = float(roc_auc_score(y, s))
    low, high, n_valid = bootstrap_ci(roc_auc_score, [y, s], n_bootstrap, seed, confidence, valid=_two_classes)
    out.update(auc=auc, ci_low=low, ci_high=high, confidence=confidence, n_bootstrap=int(n_bootstrap),
               n_bootstrap_valid=n_valid)
    return out


def roc_with_band(y_true: Sequence[int], scores: Sequence[float], n_bootstrap: int = 1000, seed: int = 0,
                  confidence: float = 0.95, grid: int = 101) -> dict[str, list[float]] | None:
    """ROC curve (scikit-learn) plus a pointwise bootstrap band of TPR on a common FPR grid."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true, dtype=int)
    s = np.asarray(scores, dtype=float)
    if not _two_classes(y):
        return None
    fpr, tpr, _ = roc_curve(y, s)
    fpr_grid = np.linspace(0.0, 1.0, grid)
    curves = []
    for idx in bootstrap_indices(len(y), n_bootstrap, seed):
        if not _two_classes(y[idx]):
            continue
        f, t, _ = roc_curve(y[idx], s[idx])
        curves.append(np.interp(fpr_grid, f, t))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(np.asarray(curves), [tail, 100.0 - tail], axis=0)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "fpr_grid": fpr_grid.tolist(),
            "tpr_low": low.tolist(), "tpr_high": high.tolist()}


def net_benefit(y_true: Sequence[int], probabilities: Sequence[float], thresholds: Sequence[float]) -> np.ndarray:
    """Net benefit of treating patients with ``p ≥ pt``: ``TP/n − FP/n · pt/(1 − pt)`` per threshold."""
    y = np.asarray(y_true, dtype=bool)
    p = np.asarray(probabilities, dtype=float)
    n = len(y)
    out = []
    for pt in np.asarray(thresholds, dtype=float):
        if not 0.0 < pt < 1.0:
            raise InputError(f"decision-curve thresholds must lie strictly between 0 and 1, got {pt}")
        treat = p >= pt
        tp = np.count_nonzero(treat & y)
        fp = np.count_nonzero(treat & ~y)
        out.append(tp / n - fp / n * pt / (1.0 - pt))
    return np.asarray(out)


def decision_curve(y_true: Sequence[int], probabilities: Sequence[float],
                   thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, list[float]]:
    """Net benefit of the model, of treating all (p ≡ 1) and of treating none (0) per threshold."""
    y = np.asarray(y_true, dtype=int)
    thresholds = np.asarray(thresholds, dtype=float)
    return {
        "thresholds": thresholds.tolist(),
        "model": net_benefit(y, probabilities, thresholds).tolist(),
        "treat_all": net_benefit(y, np.ones(len(y)), thresholds).tolist(),
        "treat_none": [0.0] * len(thresholds),
        "prevalence": float(y.mean()) if len(y) else math.nan,
    }


def reliability(y_true: Sequence[int], probabilities: Sequence[float], n_bins: int = 10) -> dict[str, Any]:
    """Equal-width reliability bins: count, mean predicted probability and observed frequency."""
    from sklearn.metrics import brier_score_loss

    y = np.asarray(y_true, dtype=int)
    p = np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        sel = which == b
        count = int(sel.sum())
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "mean_predicted": float(p[sel].mean()) if count else None,
                     "observed": float(y[sel].mean()) if count else None})
    try:
        brier = float(brier_score_loss(y, p, pos_label=1, labels=[0, 1]))
    except ValueError:
        brier = math.nan
    return {"bins": bins, "brier": brier}


def compute_metrics(
    labels: Sequence[str],
    probabilities: np.ndarray,
    class_names: Sequence[str],
    objective_indices: Sequence[int] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Patient-level metrics from true labels and ``(n, classes)`` probabilities."""
    from sklearn.metrics import accuracy_score, brier_score_loss, confusion_matrix

    class_names = list(class_names)
    probabilities = np.asarray(probabilities, dtype=float)
    unknown = sorted({label for label in labels if label not in class_names})
    if unknown:
        raise InputError(f"labels {unknown} are not classes of the model ({class_names})")
    if probabilities.shape != (len(labels), len(class_names)):
        raise InputError(f"probabilities have shape {probabilities.shape}, expected ({len(labels)}, {len(class_names)})")
    y = np.array([class_names.index(label) for label in labels], dtype=int)
    predicted = probabilities.argmax(axis=1)
    k = len(class_names)
    normalised = probabilities / probabilities.sum(axis=1, keepdims=True)  # float32 means sum to 1 ± 1e-7
    accuracy = float(accuracy_score(y, predicted))
    acc_low, acc_high, _ = bootstrap_ci(lambda a, b: float(np.mean(a == b)), [y, predicted], n_bootstrap, seed,
                                        confidence)
    per_class = {}
    for index, name in enumerate(class_names):
        per_class[name] = auc_with_ci((y == index).astype(int), probabilities[:, index], n_bootstrap, seed, confidence)
    metrics: dict[str, Any] = {
        "n_cases": int(len(y)),
        "n_per_class": {name: int(np.sum(y == i)) for i, name in enumerate(class_names)},
        "accuracy": accuracy,
        "accuracy_ci": [acc_low, acc_high],
        "chance_accuracy": float(np.max(np.bincount(y, minlength=k)) / len(y)) if len(y) else math.nan,
        "auc_per_class": per_class,
        "confusion_matrix": {"labels": class_names,
                             "rows_true_columns_predicted": confusion_matrix(y, predicted, labels=list(range(k))).tolist()},
        "brier_multiclass": float(brier_score_loss(y, normalised, labels=list(range(k)), scale_by_half=False)),
        "bootstrap": {"n": int(n_bootstrap), "seed": int(seed), "confidence": confidence, "method": "percentile",
                      "unit": "patient"},
    }
    if objective_indices:
        truth = np.isin(y, list(objective_indices)).astype(int)
        p_or = probabilities[:, list(objective_indices)].sum(axis=1)
        metrics["objective_response"] = {
            "classes": [class_names[i] for i in objective_indices],
            "auc": auc_with_ci(truth, p_or, n_bootstrap, seed, confidence),
            "accuracy_at_0.5": float(np.mean((p_or >= 0.5) == truth)),
            "calibration": reliability(truth, p_or, n_bins),
            "decision_curve": decision_curve(truth, p_or, thresholds),
        }
    return metrics


# --- evaluation of a bundle on a cohort ----------------------------------------------------------
@dataclass
class CasePrediction:
    case_id: str
    label: str
    probabilities: list[float]
    n_patches: int


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
        return lines


def predict_rows(predictor, rows, progress_bar: bool = True) -> tuple[list[CasePrediction], dict[str, str]]:
    """Predict each manifest row (whole segment = one tumour); failures are collected, not raised."""
    from tqdm import tqdm

    from .io import read_phase_volumes, read_segmentation

    predictions: list[CasePrediction] = []
    failed: dict[str, str] = {}
    for row in tqdm(rows, desc="evaluating", unit="case", disable=not progress_bar):
        try:
            images = read_phase_volumes(row.images, row.phases)
            segmentation = read_segmentation(row.segmentation)
            result = predictor.predict(images, segmentation, segments=[row.segment] if row.segment else None,
                                       clinical=row.clinical or None, case_id=row.case_id, split_islands=False)
            tumour = result.tumours[0]
            predictions.append(CasePrediction(row.case_id, row.label, list(tumour.probabilities),
                                              len(tumour.patch_probabilities)))
        except (TACEResponseError, OSError) as exc:
            logger.error("case %s: %s", row.case_id, exc)
            failed[row.case_id] = str(exc)
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
) -> EvaluationReport:
    """Predict every case of ``manifest`` with ``bundle`` and write the report and figures to ``output``."""
    from .bundle import Bundle, resolve_bundle
    from .inference import Predictor
    from .manifest import read_manifest

    started = time.perf_counter()
    bundle = bundle if isinstance(bundle, Bundle) else resolve_bundle(bundle)
    card = bundle.card
    rows = read_manifest(manifest, [p.name for p in card.inputs], require_label=True,
                         clinical=[c.name for c in card.clinical_factors], class_names=card.class_names)
    predictor = Predictor(bundle, device=device, cam_method="none")
    predictions, failed = predict_rows(predictor, rows, progress_bar)
    if not predictions:
        raise InputError(f"{manifest}: no case could be predicted; first error: {next(iter(failed.values()), '?')}")
    labels = [p.label for p in predictions]
    probabilities = np.array([p.probabilities for p in predictions])
    metrics = compute_metrics(labels, probabilities, card.class_names, card.objective_response_indices,
                              n_bootstrap=n_bootstrap, seed=seed)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    cohort_synthetic = all(r.synthetic for r in rows)
    report: dict[str, Any] = {
        "format": "tace-response-evaluation/1",
        "bundle": {"id": bundle.id, "path": str(bundle.path), "sha256": card.weights_sha256,
                   "architecture": card.architecture, "synthetic_model": card.synthetic, "warning": card.warning},
        "cohort": {"manifest": str(Path(manifest).resolve()), "n_rows": len(rows),
                   "synthetic": cohort_synthetic},
        "failed_cases": failed,
        "patient_probability": "mean of the patch probabilities of the whole segment",
        "metrics": metrics,
        "runtime_s": None,
    }
    files = {"report": REPORT_FILE, "predictions": PREDICTIONS_FILE}
    write_predictions_csv(output / PREDICTIONS_FILE, predictions, card.class_names, card.objective_response_indices)
    if plots:
        files.update(write_plots(metrics, labels, probabilities, card.class_names, card.objective_response_indices,
                                 output, n_bootstrap=n_bootstrap, seed=seed,
                                 footer=_footer(card.synthetic, cohort_synthetic, bundle.id)))
    report["files"] = files
    report["runtime_s"] = round(time.perf_counter() - started, 2)
    write_json_atomic(output / REPORT_FILE, report)
    return EvaluationReport(metrics, predictions, failed, output, files)


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
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for p in predictions:
                predicted = class_names[int(np.argmax(p.probabilities))]
                row = {"case_id": p.case_id, "label": p.label, "predicted": predicted,
                       "correct": int(predicted == p.label), "n_patches": p.n_patches,
                       **{f"p_{c}": f"{v:.6f}" for c, v in zip(class_names, p.probabilities)}}
                if objective_indices:
                    row["p_objective_response"] = f"{sum(p.probabilities[i] for i in objective_indices):.6f}"
                    row["objective_response_true"] = int(p.label in [class_names[i] for i in objective_indices])
                writer.writerow(row)
    return path


# --- figures ---------------------------------------------------------------------------------------
_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def write_plots(metrics: dict[str, Any], labels: Sequence[str], probabilities: np.ndarray,
                class_names: Sequence[str], objective_indices: Sequence[int], output: Path,
                n_bootstrap: int = 1000, seed: int = 0, footer: str = "") -> dict[str, str]:
    """roc.png, confusion_matrix.png and, with objective-response classes, calibration.png and dca.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_figure

    class_names = list(class_names)
    y = np.array([class_names.index(label) for label in labels])
    files: dict[str, str] = {}

    # ROC curves with bootstrap bands: one-vs-rest per class, and objective response
    panels = 2 if objective_indices else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 5.6), squeeze=False)
    ax = axes[0, 0]
    for index, name in enumerate(class_names):
        curve = roc_with_band((y == index).astype(int), probabilities[:, index], n_bootstrap, seed)
        if curve is None:
            continue
        auc = metrics["auc_per_class"][name]
        colour = _COLOURS[index % len(_COLOURS)]
        ax.fill_between(curve["fpr_grid"], curve["tpr_low"], curve["tpr_high"], color=colour, alpha=0.12, lw=0)
        ax.plot(curve["fpr"], curve["tpr"], color=colour, lw=2,
                label=f"{name} vs rest: AUC {auc['auc']:.3f} ({auc['ci_low']:.3f}–{auc['ci_high']:.3f})")
    _roc_axes(ax, "One-vs-rest ROC per class (shaded: 95% bootstrap band)")
    if objective_indices:
        ax = axes[0, 1]
        truth = np.isin(y, list(objective_indices)).astype(int)
        p_or = probabilities[:, list(objective_indices)].sum(axis=1)
        curve = roc_with_band(truth, p_or, n_bootstrap, seed)
        auc = metrics["objective_response"]["auc"]
        if curve is not None:
            ax.fill_between(curve["fpr_grid"], curve["tpr_low"], curve["tpr_high"], color="tab:green", alpha=0.2,
                            lw=0, label="95% bootstrap band")
            ax.plot(curve["fpr"], curve["tpr"], color="tab:green", lw=2.5,
                    label=f"AUC {auc['auc']:.3f} (95% CI {auc['ci_low']:.3f}–{auc['ci_high']:.3f})")
        names = "+".join(class_names[i] for i in objective_indices)
        _roc_axes(ax, f"Objective response ({names}), p = " + " + ".join(f"P({class_names[i]})" for i in objective_indices))
    _footer_text(figure, footer)
    files["roc"] = save_figure(figure, output / "roc.png").name

    # confusion matrix: counts, coloured by row fraction
    cm = np.asarray(metrics["confusion_matrix"]["rows_true_columns_predicted"])
    row_sums = cm.sum(axis=1, keepdims=True)
    fraction = np.divide(cm, np.where(row_sums == 0, 1, row_sums))
    figure, ax = plt.subplots(figsize=(5.6, 5.0))
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{fraction[i, j]:.0%}", ha="center", va="center", fontsize=11,
                    color="white" if fraction[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (n = {int(cm.sum())}, accuracy {metrics['accuracy']:.1%})")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    _footer_text(figure, footer)
    files["confusion_matrix"] = save_figure(figure, output / "confusion_matrix.png").name

    if objective_indices:
        orr = metrics["objective_response"]
        # calibration (reliability diagram + histogram)
        figure, (ax, hist) = plt.subplots(2, 1, figsize=(5.8, 6.4), gridspec_kw={"height_ratios": [3, 1]},
                                          sharex=True)
        bins = [b for b in orr["calibration"]["bins"] if b["count"]]
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "o-", color="tab:green", lw=2,
                label=f"model (Brier {orr['calibration']['brier']:.3f})")
        for b in bins:
            ax.annotate(str(b["count"]), (b["mean_predicted"], b["observed"]), textcoords="offset points",
                        xytext=(4, -11), fontsize=8, color="dimgray")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("observed frequency of objective response")
        ax.set_title("Calibration of P(objective response)\n(points: equal-width bins, numbers: cases per bin)")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        p_or = probabilities[:, list(objective_indices)].sum(axis=1)
        truth = np.isin(y, list(objective_indices))
        edges = np.linspace(0, 1, len(orr["calibration"]["bins"]) + 1)
        hist.hist([p_or[truth], p_or[~truth]], bins=edges, stacked=True, color=["tab:green", "tab:gray"],
                  label=["responders", "non-responders"])
        hist.set_xlabel("predicted probability of objective response")
        hist.set_ylabel("cases")
        hist.legend(fontsize=8)
        _footer_text(figure, footer)
        files["calibration"] = save_figure(figure, output / "calibration.png").name

        # decision curve
        dca = orr["decision_curve"]
        figure, ax = plt.subplots(figsize=(6.4, 4.8))
        t = np.asarray(dca["thresholds"])
        ax.plot(t, dca["model"], color="tab:green", lw=2.5, label="model")
        ax.plot(t, dca["treat_all"], color="tab:gray", lw=1.5, label="treat all")
        ax.plot(t, dca["treat_none"], color="black", lw=1.5, ls="--", label="treat none")
        top = max(max(dca["model"]), dca["prevalence"])
        ax.set_ylim(-0.05, top + 0.05)
        ax.set_xlim(0, 1)
        ax.set_xlabel("threshold probability")
        ax.set_ylabel("net benefit")
        ax.set_title(f"Decision curve: objective response (prevalence {dca['prevalence']:.0%})")
        ax.legend()
        ax.grid(alpha=0.3)
        _footer_text(figure, footer)
        files["dca"] = save_figure(figure, output / "dca.png").name
    return files


def _roc_axes(ax, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


def _footer_text(figure, text: str) -> None:
    if text:
        figure.text(0.5, -0.01, text, ha="center", va="top", fontsize=7.5, color="darkred", wrap=True)
