"""Figures of training and evaluation: ROC with bootstrap bands, confusion matrix, calibration, decision curve, training curve.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.training.metrics import roc_with_band

logger = logging.getLogger(__name__)

# --- figures ---------------------------------------------------------------------------------------
_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def write_plots(metrics: dict[str, Any], labels: Sequence[str], probabilities: np.ndarray,
                class_names: Sequence[str], objective_indices: Sequence[int], output: Path,
                n_bootstrap: int = 1000, seed: int = 0, footer: str = "") -> dict[str, str]:
    """roc.png, confusion_matrix.png and, with objective-response classes, calibration.png and dca.png.

    Args:
        metrics: :func:`~TACEResponseLib.training.metrics.compute_metrics` of the same predictions.
        labels: true class per patient; ``probabilities``: ``(patients, classes)``.
        objective_indices: classes that count as objective response (CR, PR); empty: no ORR figures.
        footer: a line under every figure (e.g. the synthetic-model warning).

    Returns:
        ``{figure kind: file name}`` of what was written into ``output``.
    """
    class_names = list(class_names)
    y = np.array([class_names.index(label) for label in labels])
    files = {"roc": _roc_figure(metrics, y, probabilities, class_names, objective_indices, output / "roc.png",
                                n_bootstrap, seed, footer).name,
             "confusion_matrix": _confusion_figure(metrics, class_names, output / "confusion_matrix.png", footer).name}
    if objective_indices:
        orr = metrics["objective_response"]
        p_or = probabilities[:, list(objective_indices)].sum(axis=1)
        truth = np.isin(y, list(objective_indices))
        files["calibration"] = _calibration_figure(orr, p_or, truth, output / "calibration.png", footer).name
        files["dca"] = _decision_curve_figure(orr, output / "dca.png", footer).name
    return files


def _roc_figure(metrics: dict[str, Any], y: np.ndarray, probabilities: np.ndarray, class_names: list[str],
                objective_indices: Sequence[int], path: Path, n_bootstrap: int, seed: int, footer: str) -> Path:
    """One-vs-rest ROC per class and, beside it, objective response; bootstrap bands shaded."""
    from TACEResponseLib.core.figures import new_figure, save_figure

    panels = 2 if objective_indices else 1
    figure = new_figure(6.0 * panels, 5.6)
    axes = figure.subplots(1, panels, squeeze=False)
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
    return save_figure(figure, path, dpi=110)


def _confusion_figure(metrics: dict[str, Any], class_names: list[str], path: Path, footer: str) -> Path:
    """Confusion matrix: counts, coloured by the fraction of each true class."""
    from TACEResponseLib.core.figures import new_figure, save_figure

    cm = np.asarray(metrics["confusion_matrix"]["rows_true_columns_predicted"])
    row_sums = cm.sum(axis=1, keepdims=True)
    fraction = np.divide(cm, np.where(row_sums == 0, 1, row_sums))
    figure = new_figure(5.6, 5.0)
    ax = figure.subplots()
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
    return save_figure(figure, path, dpi=110)


def _calibration_figure(orr: dict[str, Any], p_or: np.ndarray, truth: np.ndarray, path: Path, footer: str) -> Path:
    """Reliability diagram of P(objective response) with the histogram of predictions under it."""
    from TACEResponseLib.core.figures import new_figure, save_figure

    figure = new_figure(5.8, 6.4)
    ax, hist = figure.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
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
    edges = np.linspace(0, 1, len(orr["calibration"]["bins"]) + 1)
    hist.hist([p_or[truth], p_or[~truth]], bins=edges, stacked=True, color=["tab:green", "tab:gray"],
              label=["responders", "non-responders"])
    hist.set_xlabel("predicted probability of objective response")
    hist.set_ylabel("cases")
    hist.legend(fontsize=8)
    _footer_text(figure, footer)
    return save_figure(figure, path, dpi=110)


def write_reliability_before_after(path: Path, calibration: dict[str, Any], footer: str) -> Path:
    """Top-label reliability diagram before and after the bundle's calibration (confidence vs accuracy per bin)."""
    from TACEResponseLib.core.figures import new_figure, save_figure

    figure = new_figure(5.8, 5.4)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for key, colour, marker in (("before", "tab:red", "s"), ("after", "tab:blue", "o")):
        part = calibration[key]
        bins = [b for b in part["bins"] if b["count"]]
        ax.plot([b["mean_confidence"] for b in bins], [b["accuracy"] for b in bins], marker + "-", color=colour, lw=2,
                label=f"{key} calibration (ECE {part['ece']:.3f}, NLL {part['nll']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("accuracy")
    method = calibration["method"].replace(" (", "\n(")  # a rejected fit on its own line
    ax.set_title(f"Reliability of the predicted class, patient level, equal-width bins\n{method}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    _footer_text(figure, footer)
    return save_figure(figure, path, dpi=110)


def _decision_curve_figure(orr: dict[str, Any], path: Path, footer: str) -> Path:
    """Net benefit of the model against treat-all and treat-none."""
    from TACEResponseLib.core.figures import new_figure, save_figure

    dca = orr["decision_curve"]
    figure = new_figure(6.4, 4.8)
    ax = figure.subplots()
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
    return save_figure(figure, path, dpi=110)

def write_factor_roc(path: Path, truth: np.ndarray, model_score: np.ndarray, factors: dict[str, np.ndarray],
                     statistics: dict[str, Any], outcome: str, footer: str = "") -> Path:
    """The model's ROC of the binary outcome beside each single clinical factor's ROC (each in its
    better direction), the legend giving AUCs and DeLong's p of model vs factor (Quan 2024)."""
    from sklearn.metrics import roc_curve

    from TACEResponseLib.core.figures import new_figure, save_figure

    figure = new_figure(6.4, 6.0)
    ax = figure.subplots()
    fpr, tpr, _ = roc_curve(truth, model_score)
    first = next(iter(statistics.values()), {})
    ax.plot(fpr, tpr, color="black", lw=2.5, label=f"model: AUC {first.get('model_auc', float('nan')):.3f}")
    for index, (name, values) in enumerate(factors.items()):
        stats = statistics.get(name) or {}
        if "auc" not in stats:
            continue
        sign = 1.0 if stats["direction"].startswith("higher") else -1.0
        fpr, tpr, _ = roc_curve(truth, sign * values)
        ax.plot(fpr, tpr, color=_COLOURS[index % len(_COLOURS)], lw=1.8,
                label=f"{name} ({'higher' if sign > 0 else 'lower'}): AUC {stats['auc']:.3f}, "
                      f"DeLong p = {stats['delong_model_vs_factor']['p_value']:.3g}")
    _roc_axes(ax, f"{outcome}: model vs single clinical factors")
    _footer_text(figure, footer)
    return save_figure(figure, path, dpi=110)


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


def write_training_curve(path: Path, history: list[dict[str, Any]], best_epoch: int, synthetic: bool) -> Path | None:
    if not history:
        return None
    from TACEResponseLib.core.figures import new_figure, save_figure

    epochs = [h["epoch"] for h in history]
    figure = new_figure(6.4, 4.0)
    ax = figure.subplots()
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="training loss (augmented)")
    if "val_loss" in history[0]:
        ax.plot(epochs, [h["val_loss"] for h in history], "o-", ms=3, label="validation loss")
    ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title("Training curve" + (" — SYNTHETIC phantoms" if synthetic else ""))
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(figure, path, dpi=110)
