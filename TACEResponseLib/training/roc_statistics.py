"""Statistics the reproduced papers report beside the AUC: DeLong's test, the Youden operating
point, the Mann–Whitney U test and patch-level metrics.

* :func:`delong` — DeLong, DeLong & Clarke-Pearson (Biometrics 1988) variance and covariance of
  correlated ROC AUCs from the structural components ``V10`` (per positive) and ``V01`` (per
  negative), computed with midranks as in Sun & Xu (IEEE Signal Process Lett 2014); the
  two-sided z test of ``AUC1 − AUC2`` (Quan 2024 compares the model with single clinical factors).
* :func:`youden_cutoff` / :func:`operating_point` — the cut-off maximising sensitivity +
  specificity − 1 (exact ties: the lowest threshold), chosen on held-out or out-of-fold
  predictions, and sensitivity, specificity, PPV, NPV there.
* :func:`mann_whitney` — scipy's Mann–Whitney U of a score between two groups (Peng 2019 tested
  the response probability between responders and non-responders).
* :func:`patch_metrics` — per-class AUC, accuracy and confusion of patches (Peng 2019 reported
  patch-level figures beside the patient-level ones), counted by independent unit: patches
  resampled from one acquired slice are one; units of one patient are still not independent,
  so no confidence interval is given.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError

logger = logging.getLogger(__name__)


def _binary(y_true: Sequence[int], label: str = "outcome") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise InputError(f"{label} must be a list of 0/1 values")
    y = y.astype(int)
    if not 0 < y.sum() < len(y):
        raise InputError(f"{label}: both classes are needed (got {int(y.sum())} positive of {len(y)})")
    return y


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their mean rank."""
    from scipy.stats import rankdata

    return rankdata(values, method="average")


@dataclass
class DeLongResult:
    """AUCs of ``k`` scores on the same cases, their DeLong covariance and (for two) the paired test."""

    aucs: list[float]
    covariance: list[list[float]]
    n_positive: int
    n_negative: int

    def standard_error(self, index: int) -> float:
        return math.sqrt(max(self.covariance[index][index], 0.0))

    def compare(self, first: int = 0, second: int = 1) -> dict[str, float]:
        """Two-sided z test of ``AUC[first] − AUC[second]`` (DeLong 1988)."""
        from scipy.stats import norm

        c = self.covariance
        variance = c[first][first] + c[second][second] - 2.0 * c[first][second]
        difference = self.aucs[first] - self.aucs[second]
        if variance <= 1e-15:
            z = 0.0 if abs(difference) < 1e-12 else math.copysign(math.inf, difference)
        else:
            z = difference / math.sqrt(variance)
        return {"difference": float(difference), "se": float(math.sqrt(max(variance, 0.0))), "z": float(z),
                "p_value": float(2.0 * norm.sf(abs(z)))}


def delong(y_true: Sequence[int], scores: Sequence[Sequence[float]] | np.ndarray) -> DeLongResult:
    """AUC of each row of ``scores`` (``(k, n)``; higher = positive) and their DeLong covariance.

    ``V10_i = (T_Z(x_i) − T_X(x_i)) / n`` and ``V01_j = 1 − (T_Z(y_j) − T_Y(y_j)) / m``, with
    ``T`` the midranks among all cases (Z), the positives (X) or the negatives (Y);
    ``S = S10 / m + S01 / n`` with ``S10``, ``S01`` the sample covariances (denominator m − 1,
    n − 1) of the components across positives and negatives.
    """
    y = _binary(y_true)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if s.shape[1] != len(y):
        raise InputError(f"scores have {s.shape[1]} values per row but there are {len(y)} cases")
    if not np.all(np.isfinite(s)):
        raise InputError("scores must be finite numbers")
    positives, negatives = s[:, y == 1], s[:, y == 0]
    m, n = positives.shape[1], negatives.shape[1]
    v10 = np.empty((len(s), m))
    v01 = np.empty((len(s), n))
    for r in range(len(s)):
        combined = _midranks(np.concatenate([positives[r], negatives[r]]))
        v10[r] = (combined[:m] - _midranks(positives[r])) / n
        v01[r] = 1.0 - (combined[m:] - _midranks(negatives[r])) / m
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(s), len(s)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(s), len(s)))
    covariance = s10 / m + s01 / n
    return DeLongResult([float(a) for a in aucs], covariance.tolist(), m, n)


def youden_cutoff(y_true: Sequence[int], scores: Sequence[float]) -> dict[str, float]:
    """The cut-off ``t`` (positive when score ≥ t) maximising Youden's J = sensitivity + specificity − 1
    over scikit-learn's ROC thresholds (without the infinite one).

    Ties: J is compared exactly, as the integer ``TP·N − FP·P`` (``P`` positives, ``N`` negatives),
    so two operating points with the same J are recognised as tied even when ``tpr − fpr`` rounds
    differently; among tied points the **lowest** threshold wins (the more sensitive one).
    """
    from sklearn.metrics import roc_curve

    y = _binary(y_true)
    fpr, tpr, thresholds = roc_curve(y, np.asarray(scores, float), drop_intermediate=False)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    tp, fp = np.rint(tpr * positives).astype(np.int64), np.rint(fpr * negatives).astype(np.int64)
    exact = np.where(np.isfinite(thresholds), tp * negatives - fp * positives, np.iinfo(np.int64).min)
    best = int(np.flatnonzero(exact == exact.max())[-1])  # thresholds decrease: the last is the lowest
    return {"threshold": float(thresholds[best]), "youden_j": float(tpr[best] - fpr[best]),
            "sensitivity": float(tpr[best]), "specificity": float(1.0 - fpr[best])}


def operating_point(y_true: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV of ``score ≥ threshold`` (None where undefined), with counts."""
    y = np.asarray(y_true, int)
    predicted = np.asarray(scores, float) >= threshold
    tp = int(np.sum(predicted & (y == 1)))
    fp = int(np.sum(predicted & (y == 0)))
    tn = int(np.sum(~predicted & (y == 0)))
    fn = int(np.sum(~predicted & (y == 1)))

    def ratio(a: int, b: int) -> float | None:
        return float(a / (a + b)) if a + b else None

    return {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp), "ppv": ratio(tp, fp), "npv": ratio(tn, fn),
            "accuracy": float((tp + tn) / len(y)) if len(y) else None}


def mann_whitney(scores: Sequence[float], groups: Sequence[int]) -> dict[str, Any]:
    """Two-sided Mann–Whitney U (scipy) of ``scores`` between group 1 and group 0; ``U`` is group 1's
    statistic, so ``U / (n1·n0)`` is the AUC of the score."""
    from scipy.stats import mannwhitneyu

    g = np.asarray(groups, int)
    s = np.asarray(scores, float)
    first, second = s[g == 1], s[g == 0]
    if not len(first) or not len(second):
        return {"u": None, "p_value": None, "n_1": int(len(first)), "n_0": int(len(second)),
                "note": "undefined: one group is empty"}
    result = mannwhitneyu(first, second, alternative="two-sided")
    return {"u": float(result.statistic), "p_value": float(result.pvalue), "n_1": int(len(first)),
            "n_0": int(len(second)), "auc": float(result.statistic / (len(first) * len(second))),
            "median_1": float(np.median(first)), "median_0": float(np.median(second)),
            "test": "Mann–Whitney U, two-sided (scipy.stats.mannwhitneyu)"}


def patch_metrics(labels: Sequence[int], probabilities: np.ndarray, class_names: Sequence[str],
                  objective_indices: Sequence[int] | None = None, units: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-class one-vs-rest AUC, accuracy and confusion matrix of patches (each labelled with its patient's class).

    ``units`` (one key per patch, e.g. ``"case/tumour@acquired slice"``): patches resampled from one
    acquired slice are one independent unit, so their probabilities are averaged into one before
    anything is counted (``n_units``); without units every patch counts and the result says so.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score

    y = np.asarray(labels, int)
    p = np.asarray(probabilities, float)
    n_patches = int(len(y))
    if units is not None:
        keys = list(dict.fromkeys(units))
        index = {k: n for n, k in enumerate(keys)}
        group = np.array([index[u] for u in units])
        p = np.stack([p[group == g].mean(axis=0) for g in range(len(keys))])
        y = np.array([y[group == g][0] for g in range(len(keys))])
    k = len(class_names)
    predicted = p.argmax(axis=1)
    aucs = {}
    for index, name in enumerate(class_names):
        truth = (y == index).astype(int)
        aucs[name] = float(roc_auc_score(truth, p[:, index])) if 0 < truth.sum() < len(truth) else None
    out: dict[str, Any] = {
        "n_patches": n_patches,
        "n_units": int(len(y)),
        "unit": ("acquired slice (patches resampled from one acquired slice averaged into one)" if units is not None
                 else "patch (not independent: patches may share an acquired slice)"),
        "accuracy": float(np.mean(predicted == y)) if len(y) else None,
        "auc_per_class": aucs,
        "confusion_matrix": {"labels": list(class_names),
                             "rows_true_columns_predicted": confusion_matrix(y, predicted, labels=list(range(k))).tolist()},
        "note": "units of one patient are not independent either: no confidence intervals at patch level",
    }
    if objective_indices:
        truth = np.isin(y, list(objective_indices)).astype(int)
        score = p[:, list(objective_indices)].sum(axis=1)
        out["objective_response_auc"] = float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else None
    return out
