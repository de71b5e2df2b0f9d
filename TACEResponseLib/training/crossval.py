"""Quan 2024's protocol: patient-level K-fold cross-validation of the training cohort, backbone
selection by cross-validated cross-entropy, then the final model on every training patient.

With several backbones the cross-validation that chose the winner is optimistic for it (the
minimum of several noisy losses), so the selection itself is validated: :func:`nested_backbone_selection`
repeats it inside each of K outer folds (the candidates cross-validated on the outer-training
patients only, the winner trained on them) and scores the winner on the outer fold's patients,
which no selection saw. Those pooled outer predictions are the performance the card reports for
"select a backbone, then train it", and give the Youden operating point.

Each fold trains through :func:`~.train.train` (same patches, split rules, augmentation and
card) on the other folds' patients and is evaluated through
:func:`~.evaluation.evaluate_bundle` (the path prediction takes) on its own patients, so no
patient is ever in both. The report holds each fold's patient-level metrics and the pooled
out-of-fold predictions' metrics (with the patch-level figures, Mann–Whitney, operating point).
The cross-validated loss is the mean patient-level cross-entropy ``−log p(true class)`` of the
out-of-fold predictions; with several backbones the lowest one is trained on the whole cohort.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path, write_json_atomic
from TACEResponseLib.imaging.manifest import read_manifest
from TACEResponseLib.training.config import TrainingConfig

logger = logging.getLogger(__name__)

REPORT_FILE = "cross_validation.json"


def patient_folds(case_ids: Sequence[str], labels: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` patient-level folds stratified by label (each class dealt round-robin in a seeded order)."""
    if k < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {k}")
    if len(set(case_ids)) != len(case_ids):
        raise InputError("cross-validation: case ids must be unique (one row per patient)")
    if k > len(case_ids):
        raise InputError(f"cross-validation: {k} folds but only {len(case_ids)} patients")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    start = 0
    for label in sorted(set(labels)):
        members = sorted(c for c, lab in zip(case_ids, labels) if lab == label)
        for offset, index in enumerate(rng.permutation(len(members))):
            folds[(start + offset) % k].append(members[index])
        start += len(members)  # the next class continues where this one stopped, so fold sizes stay even
    return [sorted(f) for f in folds]


def _write_subset(manifest: Path, case_ids: set[str], phases: Sequence[str], path: Path) -> Path:
    """The rows of ``manifest`` for ``case_ids`` with absolute image and segmentation paths."""
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or [])
        rows = [dict(r) for r in reader if (r.get("case_id") or "").strip() in case_ids]
    for row in rows:
        for column in [*phases, "segmentation"]:
            value = (row.get(column) or "").strip()
            if value and not Path(value).is_absolute():
                row[column] = str((manifest.parent / value).resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return path


def _cross_entropy(predictions, class_names: Sequence[str]) -> float:
    """Mean patient-level ``−log p(true class)`` (probabilities clipped at 1e-7)."""
    losses = [-math.log(max(p.probabilities[list(class_names).index(p.label)], 1e-7)) for p in predictions]
    return float(np.mean(losses)) if losses else math.nan


@dataclass
class CrossValidation:
    """One architecture's cross-validation: the folds and the pooled out-of-fold figures."""

    architecture: str
    folds: list[dict[str, Any]]
    pooled: dict[str, Any]
    loss: float
    predictions: list[Any] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "cross_entropy": self.loss, "folds": self.folds,
                "pooled": self.pooled}


def cross_validate(manifest: str | Path, config: TrainingConfig, k: int, work: str | Path,
                   progress_bar: bool = False, n_bootstrap: int | None = None) -> CrossValidation:
    """Train on K−1 folds and evaluate on the K-th, for every fold; returns per-fold and pooled figures."""
    from TACEResponseLib.networks.bundle import load_bundle
    from TACEResponseLib.training.evaluation import evaluate_bundle, response_statistics
    from TACEResponseLib.training.metrics import compute_metrics
    from TACEResponseLib.training.train import compact_metrics, train

    manifest = Path(manifest)
    work = Path(work)
    rows = read_manifest(manifest, config.phases, require_label=True, clinical=config.clinical,
                         class_names=config.class_names)
    folds = patient_folds([r.case_id for r in rows], [r.label for r in rows], k, config.seed)
    shared_patches = work / "patches"
    shared_patches.mkdir(parents=True, exist_ok=True)
    n_bootstrap = config.n_bootstrap if n_bootstrap is None else n_bootstrap
    reports, pooled = [], []
    for number, test_ids in enumerate(folds, start=1):
        fold_dir = work / f"fold{number}"
        train_ids = {r.case_id for r in rows} - set(test_ids)
        train_csv = _write_subset(manifest, train_ids, config.phases, fold_dir / "train.csv")
        test_csv = _write_subset(manifest, set(test_ids), config.phases, fold_dir / "test.csv")
        training_work = fold_dir / "training"
        training_work.mkdir(parents=True, exist_ok=True)
        if not (training_work / "patches").exists():
            (training_work / "patches").symlink_to(shared_patches.resolve(), target_is_directory=True)
        logger.info("%s fold %d/%d: %d training, %d test patients", config.architecture, number, k, len(train_ids),
                    len(test_ids))
        result = train(train_csv, fold_dir / "bundle", replace(config, name=f"{config.name}-fold{number}"),
                       work_dir=training_work, progress_bar=progress_bar)
        evaluation = evaluate_bundle(load_bundle(result.bundle.path), test_csv, fold_dir / "evaluation",
                                     n_bootstrap=n_bootstrap, seed=config.seed, progress_bar=progress_bar, plots=False)
        pooled += evaluation.predictions
        reports.append({"fold": number, "n_train": len(train_ids), "n_test": len(test_ids), "test_cases": test_ids,
                        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                        "cross_entropy": _cross_entropy(evaluation.predictions, config.class_names),
                        "failed_cases": evaluation.failed, "metrics": compact_metrics(evaluation.metrics)})
    card = load_bundle(work / "fold1" / "bundle").card
    labels = [p.label for p in pooled]
    probabilities = np.array([p.probabilities for p in pooled])
    metrics = compute_metrics(labels, probabilities, config.class_names, card.objective_response_indices,
                              n_bootstrap=n_bootstrap, seed=config.seed)
    metrics.update(response_statistics(pooled, card))
    return CrossValidation(config.architecture, reports, compact_metrics(metrics),
                           _cross_entropy(pooled, config.class_names), pooled)


def _candidate(config: TrainingConfig, name: str, keep_size: bool) -> TrainingConfig:
    """``config`` for backbone ``name`` (its own input size unless ``keep_size``)."""
    from TACEResponseLib.networks.architectures import architecture_spec

    spec = config.patch_spec if keep_size else replace(config.patch_spec, size=architecture_spec(name).input_size)
    return replace(config, architecture=name, patch_spec=spec)


@dataclass
class NestedSelection:
    """The backbone selection validated in outer folds: per fold the winner of the inner
    cross-validation (on the outer-training patients only) and its score on the fold's patients."""

    outer_folds: int
    folds: list[dict[str, Any]]
    pooled: dict[str, Any]
    loss: float
    predictions: list[Any] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"outer_folds": self.outer_folds, "cross_entropy": self.loss, "folds": self.folds,
                "pooled": self.pooled, "chosen_per_fold": [f["chosen"] for f in self.folds],
                "note": "performance of 'choose the backbone by cross-validated loss, then train it', measured on "
                        "outer-fold patients that no selection saw"}


def nested_backbone_selection(manifest: str | Path, config: TrainingConfig, backbones: Sequence[str], k: int,
                              work: str | Path, progress_bar: bool = False, keep_size: bool = False,
                              n_bootstrap: int | None = None) -> NestedSelection:
    """The backbone selection inside each of ``k`` outer patient folds (see the module docstring)."""
    from TACEResponseLib.networks.bundle import load_bundle
    from TACEResponseLib.training.evaluation import evaluate_bundle, response_statistics
    from TACEResponseLib.training.metrics import compute_metrics
    from TACEResponseLib.training.train import compact_metrics, train

    manifest, work = Path(manifest), Path(work)
    rows = read_manifest(manifest, config.phases, require_label=True, clinical=config.clinical,
                         class_names=config.class_names)
    outer = patient_folds([r.case_id for r in rows], [r.label for r in rows], k, config.seed + 1)
    n_bootstrap = config.n_bootstrap if n_bootstrap is None else n_bootstrap
    folds, pooled, card = [], [], None
    for number, test_ids in enumerate(outer, start=1):
        fold_dir = work / f"outer{number}"
        train_ids = {r.case_id for r in rows} - set(test_ids)
        train_csv = _write_subset(manifest, train_ids, config.phases, fold_dir / "train.csv")
        test_csv = _write_subset(manifest, set(test_ids), config.phases, fold_dir / "test.csv")
        inner = [cross_validate(train_csv, _candidate(config, name, keep_size), k, fold_dir / f"cv_{name}", progress_bar)
                 for name in backbones]
        best = min(inner, key=lambda cv: (cv.loss, list(backbones).index(cv.architecture)))
        chosen = _candidate(config, best.architecture, keep_size)
        logger.info("outer fold %d/%d: %s chosen on %d patients, scored on %d", number, k, best.architecture,
                    len(train_ids), len(test_ids))
        result = train(train_csv, fold_dir / "bundle", replace(chosen, name=f"{config.name}-outer{number}"),
                       work_dir=fold_dir / "training", progress_bar=progress_bar)
        bundle = load_bundle(result.bundle.path)
        card = card or bundle.card
        evaluation = evaluate_bundle(bundle, test_csv, fold_dir / "evaluation", n_bootstrap=n_bootstrap,
                                     seed=config.seed, progress_bar=progress_bar, plots=False)
        pooled += evaluation.predictions
        folds.append({"fold": number, "chosen": best.architecture, "test_cases": list(test_ids),
                      "n_train": len(train_ids), "n_test": len(test_ids),
                      "inner_cross_entropy": {cv.architecture: cv.loss for cv in inner},
                      "cross_entropy": _cross_entropy(evaluation.predictions, config.class_names),
                      "failed_cases": evaluation.failed})
    labels = [p.label for p in pooled]
    metrics = compute_metrics(labels, np.array([p.probabilities for p in pooled]), config.class_names,
                              card.objective_response_indices, n_bootstrap=n_bootstrap, seed=config.seed)
    metrics.update(response_statistics(pooled, card))
    return NestedSelection(k, folds, compact_metrics(metrics), _cross_entropy(pooled, config.class_names), pooled)


@dataclass
class CrossValidatedTraining:
    """What ``train --folds`` did: each candidate's cross-validation, the choice, the final training,
    and (several candidates) the nested validation of the choice."""

    candidates: list[CrossValidation]
    chosen: str
    final: Any  # TrainingResult
    report_path: Path
    nested: NestedSelection | None = None

    def summary_lines(self) -> list[str]:
        lines = []
        for cv in self.candidates:
            lines.append(f"{cv.architecture}: {len(cv.folds)}-fold cross-validated cross-entropy {cv.loss:.4f}, "
                         f"pooled accuracy {cv.pooled['accuracy']:.3f}" + _auc_text(cv.pooled))
            for fold in cv.folds:
                lines.append(f"  fold {fold['fold']}: {fold['n_test']} patients, accuracy "
                             f"{fold['metrics']['accuracy']:.3f}, cross-entropy {fold['cross_entropy']:.4f}"
                             + _auc_text(fold["metrics"]))
        if len(self.candidates) > 1:
            lines.append(f"chosen backbone: {self.chosen} (lowest cross-validated cross-entropy; that loss chose it and "
                         "is optimistic for it)")
        if self.nested is not None:
            lines.append(f"the selection, nested ({self.nested.outer_folds} outer folds no selection saw; chosen "
                         f"{', '.join(f['chosen'] for f in self.nested.folds)}): cross-entropy {self.nested.loss:.4f}, "
                         f"pooled accuracy {self.nested.pooled['accuracy']:.3f}" + _auc_text(self.nested.pooled))
        lines.append(f"cross-validation report: {self.report_path}")
        return lines


def _out_of_fold_operating_point(cv: CrossValidation | NestedSelection, card) -> dict[str, Any] | None:
    """The Youden cut-off of the binary outcome on the training patients' out-of-fold predictions
    (never the final model's in-sample predictions); with a backbone selection, the nested outer
    folds' predictions (no selection saw those patients)."""
    from TACEResponseLib.training.roc_statistics import youden_cutoff

    objective = card.objective_response_indices
    truth = np.array([int(card.class_names.index(p.label) in objective) for p in cv.predictions])
    if not objective or not 0 < truth.sum() < len(truth):
        return None
    score = np.array([sum(p.probabilities[i] for i in objective) for p in cv.predictions])
    where = (f"the nested backbone selection's outer folds ({cv.outer_folds} folds" if isinstance(cv, NestedSelection)
             else f"{len(cv.folds)}-fold cross-validation")
    return {**youden_cutoff(truth, score), "outcome": " + ".join(card.class_names[i] for i in objective),
            "chosen_on": f"training patients' out-of-fold predictions ({where}, {len(truth)} patients, Youden J)"}


def _auc_text(metrics: dict[str, Any]) -> str:
    auc = ((metrics.get("objective_response") or {}).get("auc") or {}).get("auc")
    return f", objective-response AUC {auc:.3f}" if auc is not None else ""


def train_with_cross_validation(manifest: str | Path, output: str | Path, config: TrainingConfig, folds: int = 5,
                                backbones: Sequence[str] | None = None, work_dir: str | Path | None = None,
                                progress_bar: bool = False, keep_size: bool = False) -> CrossValidatedTraining:
    """Cross-validate ``config`` (or each of ``backbones``), train the best on every patient, and put
    the cross-validation into the bundle's card (``metrics.cross_validation``) and ``docs/cross_validation.json``.

    Args:
        backbones: architectures to choose from by cross-validated cross-entropy (None: ``config.architecture``).
        keep_size: keep ``config.patch_spec.size`` for every backbone (else each gets its own input size).
    """
    from TACEResponseLib.core.files import check_output_folder, write_text_atomic
    from TACEResponseLib.networks.bundle import CARD_FILE, DOC_FILE, card_markdown
    from TACEResponseLib.training.train import train

    output = check_output_folder(output)
    work = Path(work_dir) if work_dir else output.with_name(output.name + ".work")
    check_output_folder(work, "--work-dir")
    names = list(dict.fromkeys(backbones or [config.architecture]))
    if len(names) > 1 and config.pretrained:
        raise InputError("--select-backbone with --pretrained: one ImageNet file fits one architecture; "
                         "choose among backbones without --pretrained, or give one architecture")
    if len(names) > 1 and config.clinical:
        raise InputError("--select-backbone chooses an image backbone; clinical factors need the fusion architecture")
    work.mkdir(parents=True, exist_ok=True)
    candidates = [cross_validate(manifest, _candidate(config, name, keep_size), folds, work / f"cv_{name}", progress_bar)
                  for name in names]
    best = min(candidates, key=lambda cv: (cv.loss, names.index(cv.architecture)))
    nested = (nested_backbone_selection(manifest, config, names, folds, work / "nested", progress_bar, keep_size)
              if len(names) > 1 else None)
    final_config = _candidate(config, best.architecture, keep_size)
    final = train(manifest, output, final_config, work_dir=work / "final", progress_bar=progress_bar)
    report = {"format": "tace-response-cross-validation/1", "folds": folds, "unit": "patient",
              "selection": "lowest mean patient-level cross-entropy of the out-of-fold predictions",
              "chosen": best.architecture, "candidates": [cv.to_dict() for cv in candidates],
              "nested_selection": nested.to_dict() if nested is not None else None}
    report_path = write_json_atomic(final.bundle.path / "docs" / REPORT_FILE, report)
    card = final.bundle.card
    card.metrics["cross_validation"] = {
        "folds": folds, "chosen": best.architecture,
        "candidates": {cv.architecture: {"cross_entropy": cv.loss, "pooled_accuracy": cv.pooled["accuracy"],
                                         "pooled": cv.pooled,
                                         "per_fold": [{"fold": f["fold"], "n_test": f["n_test"],
                                                       "accuracy": f["metrics"]["accuracy"],
                                                       "cross_entropy": f["cross_entropy"]} for f in cv.folds]}
                       for cv in candidates}}
    if nested is not None:
        card.metrics["cross_validation"]["nested_selection"] = {
            k: v for k, v in nested.to_dict().items() if k != "folds"} | {
            "per_fold": [{"fold": f["fold"], "chosen": f["chosen"], "n_test": f["n_test"],
                          "cross_entropy": f["cross_entropy"]} for f in nested.folds]}
    operating = _out_of_fold_operating_point(nested if nested is not None else best, card)
    if operating:
        card.metrics["operating_point"] = operating
    write_json_atomic(final.bundle.path / CARD_FILE, card.to_dict())
    write_text_atomic(final.bundle.path / DOC_FILE, card_markdown(card))
    return CrossValidatedTraining(candidates, best.architecture, final, report_path, nested)
