"""Patient-level metrics of a response model, as Peng 2019 reports them.

One-vs-rest AUC per class and the objective-response AUC (p = P(CR) + P(PR)), each with a
percentile bootstrap 95 % CI (patients resampled with replacement, seeded); accuracy with a
bootstrap CI and the confusion matrix; calibration (reliability bins, Brier score); decision
curves (net benefit ``TP/n − FP/n · pt/(1 − pt)`` against treat-all and treat-none). AUC, ROC,
confusion matrix and Brier score come from scikit-learn; nothing here re-implements them.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError

logger = logging.getLogger(__name__)

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


def top_label_calibration(truth: Sequence[int], probabilities: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error of the predicted class (Guo et al. 2017): equal-width bins of the
    top probability, ECE = Σ (bin share) × |accuracy − mean confidence|; with the bins for the
    reliability diagram and the mean negative log-likelihood of the true class."""
    y = np.asarray(truth, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=False), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        count = int(sel.sum())
        if count:
            ece += count / len(y) * abs(correct[sel].mean() - confidence[sel].mean())
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "mean_confidence": float(confidence[sel].mean()) if count else None,
                     "accuracy": float(correct[sel].mean()) if count else None})
    nll = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)))) if len(y) else math.nan
    return {"ece": float(ece), "nll": nll, "accuracy": float(correct.mean()) if len(y) else math.nan,
            "mean_confidence": float(confidence.mean()) if len(y) else math.nan, "n": int(len(y)), "bins": bins}


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
