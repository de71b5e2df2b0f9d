"""Train a response network from a cohort manifest and write a model bundle (Peng 2019 recipe).

Steps:

1. :func:`~TACEResponseLib.imaging.manifest.read_manifest` validates every row (files, labels,
   duplicate ids, empty segments, clinical values) and raises one error listing every bad
   row before anything else happens.
2. Patches per case exactly as inference cuts them (:mod:`.dataset`), cached per case.
   Cases whose patches cannot be cut are listed together in one error, still before training.
3. Patient-level stratified train/validation split: all patches of a patient are on one side.
   The split is saved in the card.
4. Class balancing by augmentation (Peng 2019): minority classes are oversampled with copies
   flipped or rotated by ±90° (:mod:`.augmentation`); every epoch each sample also gets a
   random transform from {identity, flips, ±90°}.
5. SGD (Peng: lr 1e-4, momentum 0.9, batch 64) or Adam; the convolutional base frozen as in
   Peng when ImageNet weights are given; without an ImageNet file every layer is trained from
   random initialisation, and the card says so.
6. Seeded (torch, numpy, random; per-epoch generators derived from the seed, deterministic
   algorithms on the CPU), tqdm progress bar, early stopping on the validation loss with
   patience (the best epoch's weights are kept), a checkpoint after every epoch (atomic) from
   which ``resume=True`` continues at the next epoch with results identical to an
   uninterrupted run. One validation set does not serve three jobs: with early stopping the
   validation patients are halved (stratified by label, :func:`validation_roles`); one half
   chooses the epoch, the other is scored (the card's validation metrics, the Youden operating
   point) and fits the temperature, whose post-calibration ECE is also given cross-fitted.
7. Calibration (temperature scaling on the scored validation patients) and the training profile
   for the out-of-distribution warning (:mod:`.trust`). Patches resampled through-plane from
   thicker slices are interpolated; the card says how many cases and independent slices.
8. :func:`~TACEResponseLib.networks.bundle.save_bundle` with a full card: classes, inputs,
   patch spec, clinical factors with the training set's mean/std, training data (cohort,
   counts per class, split, synthetic flag), patient-level validation metrics, references.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path
from TACEResponseLib.imaging.manifest import ManifestRow, class_counts, read_manifest
from TACEResponseLib.networks.input_scaling import scale_inputs
from TACEResponseLib.training.augmentation import (
    TRANSFORMS,
    augment_batch,
    balance_by_augmentation,
)
from TACEResponseLib.training.config import (
    ARCHITECTURE_REFERENCES,
    REFERENCES,
    TrainingConfig,
    protocol_settings,
)
from TACEResponseLib.training.dataset import (
    PatchCache,
    PatchDataset,
    Split,
    build_dataset,
    stratified_patient_split,
    through_plane,
)
from TACEResponseLib.training.figures import write_training_curve
from TACEResponseLib.training.trust import fit_trust

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


# --- training ----------------------------------------------------------------------------------------------
@dataclass
class TrainingResult:
    bundle: Any
    history: list[dict[str, Any]]
    split: Split
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int
    validation_metrics: dict[str, Any] | None
    seconds: float


@contextlib.contextmanager
def _deterministic(threads: int | None) -> Iterator[None]:
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(previous_threads)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _forward(network, x, clinical):
    return network(x) if clinical is None else network(x, clinical)


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches; a last batch of one sample joins the previous one (batch norm needs 2)."""
    starts = list(range(0, len(order), batch_size))
    if len(starts) > 1 and len(order) - starts[-1] == 1:
        starts.pop()
    ends = starts[1:] + [len(order)]
    return [order[s:e] for s, e in zip(starts, ends)]


def _evaluate_patches(network, images: np.ndarray, clinical_rows: np.ndarray | None, labels: np.ndarray,
                      device, batch_size: int) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and softmax probabilities of patches (eval mode, no augmentation)."""
    import torch

    network.eval()
    losses, probs = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).to(device)
            c = None if clinical_rows is None else torch.from_numpy(clinical_rows[start:start + batch_size]).to(device)
            y = torch.from_numpy(labels[start:start + batch_size]).to(device)
            logits = _forward(network, x, c).float()
            losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="sum").item())
            probs.append(torch.softmax(logits, 1).cpu().numpy())
    return float(sum(losses) / max(1, len(images))), np.concatenate(probs) if probs else np.zeros((0, 0))


def recompute_batchnorm(network, images: np.ndarray, clinical_rows: np.ndarray | None, device,
                        batch_size: int) -> int:
    """Re-estimate the running statistics of every *trainable* batch norm on ``images`` ("precise BN").

    With few iterations per epoch and a fast-moving network, the exponential running averages
    lag far behind the weights and eval-mode predictions become erratic; averaging the
    statistics over the (unaugmented) training patches with the current weights fixes that.
    Frozen batch norms (ImageNet statistics) are left alone. Returns how many were updated.
    """
    import torch

    layers = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              and any(p.requires_grad for p in m.parameters(recurse=False))]
    if not layers or len(images) < 2:
        return 0
    network.eval()
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    with torch.no_grad():
        for batch in _batches(np.arange(len(images)), batch_size):
            x = torch.from_numpy(images[batch]).to(device)
            c = None if clinical_rows is None else torch.from_numpy(clinical_rows[batch]).to(device)
            _forward(network, x, c)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    network.eval()
    return len(layers)


def _patient_probabilities(probs: np.ndarray, case_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean patch probability per patient (inference's rule); returns (case indices, probabilities)."""
    cases = np.unique(case_index)
    return cases, np.stack([probs[case_index == c].mean(axis=0) for c in cases])


def _clinical_factors(config: TrainingConfig, rows: Sequence[ManifestRow], train_ids: set[str]):
    from TACEResponseLib.networks.clinical import ClinicalFactor, ClinicalScaler

    if not config.clinical:
        return None, []
    scaler = ClinicalScaler.fit(config.clinical, [r.clinical for r in rows if r.case_id in train_ids])
    factors = []
    for name, mean, std in zip(scaler.names, scaler.means, scaler.stds):
        values = [r.clinical[name] for r in rows]
        given = config.clinical_ranges.get(name)
        low, high = (float(given[0]), float(given[1])) if given else (float(min(values)), float(max(values)))
        factors.append(ClinicalFactor(name=name, unit=config.clinical_units.get(name, ""), minimum=low, maximum=high,
                                      mean=mean, std=std,
                                      description="accepted range given at training" if given
                                      else "accepted range = range observed in the training cohort"))
    return scaler, factors


@dataclass
class _Cohort:
    """The training cohort as the epochs see it: patches, the patient split and class balancing."""

    rows: list[ManifestRow]
    split: Split
    factors: list[Any]               # ClinicalFactor per clinical input (with the training set's scaling)
    dataset: PatchDataset
    train_rows: np.ndarray           # patch indices of the training patients
    val_rows: np.ndarray             # patch indices of the validation patients
    patch_labels: np.ndarray
    train_index: np.ndarray          # training patches after class balancing (with repeats)
    train_transforms: np.ndarray     # the balancing transform of each entry of train_index
    clinical_per_patch: np.ndarray | None
    fingerprint: dict[str, Any]      # what a resumed run must share with the checkpoint
    scaling: Any = None              # InputScaling applied to dataset.images
    stop_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int))    # validation patches that stop early
    report_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # validation patches that are scored
    roles: dict[str, Any] = field(default_factory=dict)  # which validation patients do which job (the card's)
    through_plane: dict[str, Any] | None = None           # what the 1 mm through-plane resampling interpolated

    @property
    def has_validation(self) -> bool:
        return bool(len(self.val_rows))

    def validation_set(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(images, clinical or None, labels)`` of validation patches (default: the scored ones)."""
        rows = self.report_rows if rows is None else rows
        clinical = None if self.clinical_per_patch is None else self.clinical_per_patch[rows]
        return self.dataset.images[rows], clinical, self.patch_labels[rows]


def validation_roles(split: Split, rows: Sequence[ManifestRow], config: TrainingConfig) -> tuple[list[str], list[str], dict[str, Any]]:
    """Which validation patients stop training early and which are scored (the card's validation
    metrics) and fit the temperature: two label-stratified halves, so the patients that chose the
    epoch never score it. Without early stopping every validation patient is scored; with a single
    validation patient both jobs share it and the card says so."""
    validation = list(split.validation)
    if not validation:
        return [], [], {}
    if not config.early_stopping:
        return [], validation, {"early_stopping": None, "scored": validation,
                                "note": "no early stopping: every validation patient is scored and fits the temperature"}
    if len(validation) < 2:
        return validation, validation, {
            "early_stopping": validation, "scored": validation,
            "note": f"only {len(validation)} validation patient: early stopping, the temperature and the reported "
                    "metrics all use it (not separated; the reported metrics are optimistic)"}
    # label by label in a seeded order, dealt alternately: both halves get every class that has two patients
    labels = {r.case_id: r.label for r in rows}
    rng = np.random.default_rng([config.seed, 4099])
    ordered = sorted(validation, key=lambda c: (labels[c], c))
    ordered = [ordered[i] for i in np.lexsort((rng.permutation(len(ordered)), [labels[c] for c in ordered]))]
    stop, scored = ordered[0::2], ordered[1::2]
    return [c for c in validation if c in stop], [c for c in validation if c in scored], {
        "early_stopping": [c for c in validation if c in stop], "scored": [c for c in validation if c in scored],
        "note": "early stopping on one half of the validation patients; the reported validation metrics and the "
                "temperature on the other half (post-calibration ECE cross-fitted, leave-one-patient-out)"}


def _prepare_cohort(manifest: str | Path, config: TrainingConfig, work: Path, progress_bar: bool) -> _Cohort:
    """Read and check the manifest, split patients, cut (or load cached) patches, balance classes."""
    rows = read_manifest(manifest, config.phases, require_label=True, clinical=config.clinical,
                         class_names=config.class_names)
    present = sorted({r.label for r in rows})
    if len(present) < 2:
        raise InputError(f"{manifest}: every case has label {present[0] if present else '?'}; a classifier needs "
                         f"at least two classes of {', '.join(config.class_names)} in its training data")
    split = stratified_patient_split([r.case_id for r in rows], [r.label for r in rows],
                                     config.validation_fraction, config.seed)
    scaler, factors = _clinical_factors(config, rows, set(split.train))
    cache = PatchCache(work / "patches", config.islands, config.patient_rule)
    dataset = build_dataset(rows, config.patch_spec, config.class_names, cache, progress_bar)
    through = through_plane(dataset, config.patch_spec)
    if through and through["n_interpolated"]:
        logger.warning("through-plane resampling to %g mm: %s (acquired up to %g mm; %d patches from %d independent "
                       "acquired slices)", through["target_mm"], through["note"], through["acquired_mm"]["max"],
                       through["n_patches"], through["n_independent_units"])
    scaling = config.resolved_input_scaling(dataset.images.shape[1])
    # the input scaling the weights expect, once for all epochs (flips and rotations commute with it)
    dataset.images = scale_inputs(dataset.images, scaling)
    if scaler is not None:
        dataset.clinical = scaler.transform([r.clinical for r in rows])
    data_key = hashlib.sha256("".join(cache.key(r, config.patch_spec) for r in rows).encode()).hexdigest()
    train_rows = dataset.rows_of(split.train)
    val_rows = dataset.rows_of(split.validation) if split.validation else np.zeros(0, int)
    stop_ids, report_ids, roles = validation_roles(split, rows, config)
    stop_rows = dataset.rows_of(stop_ids) if stop_ids else np.zeros(0, int)
    report_rows = dataset.rows_of(report_ids) if report_ids else np.zeros(0, int)
    patch_labels = dataset.patch_labels()
    if config.balance:
        index, transforms = balance_by_augmentation(patch_labels[train_rows], seed=config.seed)
        train_index = train_rows[index]
    else:
        train_index, transforms = train_rows, np.zeros(len(train_rows), int)
    return _Cohort(rows, split, factors, dataset, train_rows, val_rows, patch_labels, train_index, transforms,
                   None if dataset.clinical is None else dataset.clinical[dataset.case_index],
                   {"config": config.fingerprint(), "split": split.to_dict(), "data": data_key}, scaling,
                   stop_rows, report_rows, roles, through)


def _build_model(config: TrainingConfig, n_classes: int, in_channels: int, device) -> tuple[Any, Any, dict[str, Any]]:
    """Network (ImageNet weights and freezing as configured) and optimizer; ``init`` says how it started."""
    import torch

    from TACEResponseLib.networks.architectures import build_network
    from TACEResponseLib.networks.pretrained import freeze_layers, load_pretrained

    network = build_network(config.architecture, n_classes, in_channels, **config.network_options)
    report = load_pretrained(network, config.pretrained, config.architecture).summary() if config.pretrained else None
    freeze = config.resolved_freeze()
    frozen = freeze_layers(network, freeze) if freeze is not None else []
    network.to(device)
    parameters = [p for p in network.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return network, optimizer, {"pretrained_report": report, "freeze": freeze, "frozen": frozen}


def _train_epoch(network, optimizer, cohort: _Cohort, config: TrainingConfig, epoch: int, device, bar) -> dict[str, Any]:
    """One epoch over the balanced training patches (each with a random flip/rotation), then precise BN."""
    import torch

    from TACEResponseLib.networks.pretrained import freeze_batchnorm_statistics

    rng = np.random.default_rng([config.seed, epoch])
    torch.manual_seed(config.seed * 100_003 + epoch)
    n = len(cohort.train_index)
    order = rng.permutation(n)
    general = rng.integers(0, len(TRANSFORMS), size=n) if config.augment else np.zeros(n, int)
    network.train()
    freeze_batchnorm_statistics(network)
    images, clinical = cohort.dataset.images, cohort.clinical_per_patch
    total, seen, correct = 0.0, 0, 0
    for batch in _batches(order, config.batch_size):
        rows = cohort.train_index[batch]
        x = augment_batch(augment_batch(torch.from_numpy(images[rows]), cohort.train_transforms[batch]), general[batch])
        y = torch.from_numpy(cohort.patch_labels[rows]).to(device)
        c = None if clinical is None else torch.from_numpy(clinical[rows]).to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = _forward(network, x.to(device), c)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        total += float(loss.item()) * len(batch)
        seen += len(batch)
        correct += int((logits.argmax(1) == y).sum().item())
        bar.update()
        bar.set_postfix(loss=f"{total / seen:.3f}")
    if config.precise_bn:
        recompute_batchnorm(network, images[cohort.train_rows],
                            None if clinical is None else clinical[cohort.train_rows], device,
                            max(config.batch_size, 32))
    return {"epoch": epoch, "train_loss": total / seen, "train_accuracy": correct / seen}


def _validate_epoch(network, cohort: _Cohort, device, batch_size: int) -> dict[str, float]:
    """Validation loss (patches) and patient-level accuracy (mean of each patient's patches) on the
    patients that decide early stopping (the scored ones when nothing stops early)."""
    rows = cohort.stop_rows if len(cohort.stop_rows) else cohort.report_rows
    images, clinical, labels = cohort.validation_set(rows)
    val_loss, probs = _evaluate_patches(network, images, clinical, labels, device, batch_size)
    cases, patient_probs = _patient_probabilities(probs, cohort.dataset.case_index[rows])
    return {"val_loss": val_loss,
            "val_patient_accuracy": float(np.mean(patient_probs.argmax(1) == cohort.dataset.labels[cases]))}


def _track_best(state: _TrainState, record: dict[str, Any], network, config: TrainingConfig,
                has_validation: bool) -> None:
    """Keep the best epoch's weights; stop early after ``patience`` epochs without improvement."""
    monitored = record["val_loss"] if has_validation else record["train_loss"]
    if not config.early_stopping:  # as published by Peng 2019: every epoch, the last weights kept
        state.best_loss, state.best_epoch = monitored, record["epoch"]
        state.best_state = None
        return
    if monitored < state.best_loss - config.min_delta:
        state.best_loss, state.best_epoch, state.bad_epochs = monitored, record["epoch"], 0
        state.best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    else:
        state.bad_epochs += 1
        if state.bad_epochs >= config.patience and has_validation:
            state.stopped = True
            logger.info("early stopping after epoch %d: validation loss has not improved for %d epochs",
                        record["epoch"], config.patience)


def _run_epochs(network, optimizer, cohort: _Cohort, config: TrainingConfig, device, work: Path, resume: bool,
                progress_bar: bool, on_epoch_end) -> tuple[_TrainState, int]:
    """The epochs, resumable from the checkpoint; returns the final state and the epoch resumed after."""
    from tqdm import tqdm

    state = _TrainState()
    checkpoint_path = work / CHECKPOINT_FILE
    if resume:
        state = _load_checkpoint(checkpoint_path, cohort.fingerprint, network, optimizer)
        logger.info("resuming after epoch %d (best epoch %d, validation loss %.4f)", state.epoch,
                    state.best_epoch, state.best_loss)
    elif checkpoint_path.exists():
        logger.warning("%s exists and --resume was not given: starting a new run over it", checkpoint_path)
    resumed_from = state.epoch
    batches_per_epoch = len(_batches(np.arange(len(cohort.train_index)), config.batch_size))
    bar = tqdm(total=config.epochs * batches_per_epoch, initial=state.epoch * batches_per_epoch, unit="batch",
               disable=not progress_bar, desc="training")
    try:
        while state.epoch < config.epochs and not state.stopped:
            epoch = state.epoch + 1
            bar.set_description(f"epoch {epoch}/{config.epochs}")
            record = _train_epoch(network, optimizer, cohort, config, epoch, device, bar)
            if cohort.has_validation:
                record.update(_validate_epoch(network, cohort, device, config.batch_size))
            _track_best(state, record, network, config, cohort.has_validation)
            state.epoch = epoch
            state.history.append(record)
            _save_checkpoint(checkpoint_path, cohort.fingerprint, network, optimizer, state)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
            logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
            if on_epoch_end is not None:
                on_epoch_end(record)
    finally:
        bar.close()
    return state, resumed_from


def _validation_metrics(network, cohort: _Cohort, config: TrainingConfig, best_loss: float) -> dict[str, Any] | None:
    """Patient-level metrics of the kept weights on the validation patients (None without validation)."""
    from TACEResponseLib.training.metrics import compute_metrics

    if not cohort.has_validation:
        return None
    images, clinical, labels = cohort.validation_set()
    _, probs = _evaluate_patches(network, images, clinical, labels, "cpu", config.batch_size)
    cases, patient_probs = _patient_probabilities(probs, cohort.dataset.case_index[cohort.report_rows])
    class_names = config.class_names
    orr = _objective_indices(config)
    metrics = compute_metrics([class_names[i] for i in cohort.dataset.labels[cases]], patient_probs, class_names, orr,
                              n_bootstrap=config.n_bootstrap, seed=config.seed)
    scored = cohort.roles.get("scored") or []
    separated = set(scored).isdisjoint(cohort.roles.get("early_stopping") or [])
    return {**compact_metrics(metrics), "loss": best_loss,
            "patients": (f"{len(scored)} validation patients that did not choose the epoch" if separated else
                         f"{len(scored)} validation patients that also chose the epoch (optimistic)"),
            "loss_on": "the early-stopping patients" if len(cohort.stop_rows) else "the scored patients"}


def _objective_indices(config: TrainingConfig) -> list[int]:
    names = config.class_names
    return [names.index(c) for c in ("CR", "PR") if c in names] if config.task == "mrecist" else [names.index("responder")]


def _training_operating_point(network, cohort: _Cohort, config: TrainingConfig) -> dict[str, Any] | None:
    """The Youden cut-off of the binary outcome's probability (objective response, or responder) on the
    scored validation patients (patient level), never on the training patients the weights were
    fitted on; evaluation reports sensitivity, specificity, PPV and NPV there. None without scored
    validation patients (``--folds`` gives one from out-of-fold predictions instead)."""
    from TACEResponseLib.training.roc_statistics import youden_cutoff

    rows = cohort.report_rows
    if not len(rows):
        return None
    clinical = None if cohort.clinical_per_patch is None else cohort.clinical_per_patch[rows]
    _, probs = _evaluate_patches(network, cohort.dataset.images[rows], clinical, cohort.patch_labels[rows], "cpu",
                                 config.batch_size)
    cases, patient_probs = _patient_probabilities(probs, cohort.dataset.case_index[rows])
    objective = _objective_indices(config)
    truth = np.isin(cohort.dataset.labels[cases], objective).astype(int)
    if not 0 < truth.sum() < len(truth):
        return None
    cut = youden_cutoff(truth, patient_probs[:, objective].sum(axis=1))
    return {**cut, "outcome": " + ".join(config.class_names[i] for i in objective),
            "chosen_on": f"held-out validation patients ({len(truth)}, patient level, Youden J; not the training "
                         "patients)"}


def _training_data(manifest: str | Path, config: TrainingConfig, cohort: _Cohort, network, init: dict[str, Any],
                   state: _TrainState, resumed_from: int, device, seconds: float) -> dict[str, Any]:
    """The card's ``training_data``: cohort, split, patches, augmentation, initialisation, optimisation."""
    import torch

    from TACEResponseLib.networks.pretrained import count_parameters

    rows, class_names, split = cohort.rows, config.class_names, cohort.split
    synthetic_rows = sum(r.synthetic for r in rows)
    n_total = len(rows)
    if config.pretrained:
        initialisation = (f"ImageNet weights from {Path(config.pretrained).name} (torchvision layout); "
                          f"{init['pretrained_report']}")
    else:
        initialisation = ("random initialisation: no ImageNet weights file was given, so ALL layers were trained from "
                          "scratch (Peng 2019 used ImageNet weights and froze the whole convolutional base)")
    data = {
        "cohort": Path(manifest).parent.name or str(manifest),
        "manifest": Path(manifest).name,
        "synthetic": bool(config.synthetic or synthetic_rows),
        "synthetic_source": (f"case.json of {synthetic_rows}/{n_total} cases says synthetic"
                             if synthetic_rows else ("--synthetic flag" if config.synthetic else "not synthetic")),
        "modality": config.modality,
        "phases": config.phases,
        "n_cases": n_total,
        "n_per_class": class_counts(rows, class_names),
        "split": {"method": "patient-level, stratified by label", "validation_fraction": config.validation_fraction,
                  "seed": config.seed,
                  "n_train_per_class": class_counts([r for r in rows if r.case_id in set(split.train)], class_names),
                  "n_validation_per_class": class_counts([r for r in rows if r.case_id in set(split.validation)],
                                                         class_names),
                  **split.to_dict()},
        "n_patches": {"train": int(len(cohort.train_rows)), "validation": int(len(cohort.val_rows)),
                      "train_after_class_balancing": int(len(cohort.train_index)),
                      "per_case": float(len(cohort.dataset.images) / max(1, n_total))},
        "augmentation": ("class balancing by oversampling minority classes with flipped (left-right, up-down) and "
                         "90°/180°/270°-rotated copies (Peng 2019)" if config.balance else "no class balancing")
                        + ("; random flip / 90°, 180° or 270° rotation / identity per sample every epoch"
                           if config.augment else ""),
        "protocol": config.protocol,
        "protocol_settings": ({**protocol_settings(config),
                               "iterations_per_epoch": f"{len(cohort.train_index)} balanced patches / "
                                                       f"{config.batch_size} = {len(_batches(np.arange(len(cohort.train_index)), config.batch_size))}"}
                              if config.protocol else None),
        "protocol_deviations": config.protocol_deviations if config.protocol else None,
        "validation_roles": cohort.roles or None,
        "through_plane": cohort.through_plane,
        "input_scaling": cohort.scaling.to_dict() if cohort.scaling is not None else None,
        "patch_normalization": [config.patch_spec.describe_normalization(n) for n in range(len(config.phases))],
        "slice_spacing_mm": config.patch_spec.slice_spacing_mm,
        "batch_norm": ("running statistics re-estimated on the unaugmented training patches after every epoch "
                       "(precise BN)" if config.precise_bn else "running statistics as updated during training"),
        "initialisation": initialisation,
        "frozen": {"stage": init["freeze"], "parameter_tensors": len(init["frozen"]),
                   "trainable_parameters": int(count_parameters(network, trainable_only=True)),
                   "all_parameters": int(count_parameters(network))},
        "optimizer": {"name": config.optimizer, "learning_rate": config.learning_rate,
                      "momentum": config.momentum if config.optimizer == "sgd" else None,
                      "weight_decay": config.weight_decay, "batch_size": config.batch_size,
                      "loss": "cross-entropy"},
        "epochs": {"max": config.epochs, "run": state.epoch, "best": state.best_epoch,
                   "early_stopping": ({"monitor": "validation loss" if cohort.has_validation else "training loss",
                                       "patience": config.patience, "stopped_early": state.stopped}
                                      if config.early_stopping else "none: every epoch run, last weights kept"),
                   "resumed_from_epoch": resumed_from or None},
        "seed": config.seed,
        "device": str(device),
        "torch_version": torch.__version__,
        "training_time_s": round(seconds, 1),
        "weights_dtype": config.weights_dtype,
        "config": config.to_dict(),
    }
    if data["synthetic"]:
        from TACEResponseLib.imaging.phantoms import SYNTHETIC_NOTE

        data["note"] = SYNTHETIC_NOTE
    return data


def _card(config: TrainingConfig, cohort: _Cohort, training_data: dict[str, Any], validation: dict[str, Any] | None,
          history: list[dict[str, Any]]):
    """The bundle's card: what the model is, what it takes, how it was trained and how it did."""
    from TACEResponseLib.networks.bundle import BundleCard, PhaseInput

    synthetic = training_data["synthetic"]
    description = config.description or (
        f"{config.architecture} response classifier ({', '.join(config.class_names)}) on "
        f"{config.patch_spec.size}×{config.patch_spec.size} {config.patch_spec.strategy} patches of "
        f"{'/'.join(config.phases)} {config.modality}, trained by TACEResponse's own training code.")
    return BundleCard(
        name=config.name, version=config.version, architecture=config.architecture, class_names=config.class_names,
        inputs=[PhaseInput(p, config.modality) for p in config.phases], patch_spec=config.patch_spec,
        network_options=dict(config.network_options), clinical_factors=cohort.factors, task=config.task,
        description=description,
        intended_use=("Research use only; trained on SYNTHETIC phantoms — not for clinical use. Not a medical device."
                      if synthetic else "Research use only. Not a medical device."),
        training_data=training_data,
        metrics={"validation": validation, "training_history": history},
        references=[REFERENCES[k] for k in ARCHITECTURE_REFERENCES.get(config.architecture, [])],
        tumour_rule={**config.islands.to_dict(), "patient_rule": config.patient_rule},
        input_scaling=cohort.scaling.to_dict() if cohort.scaling is not None and cohort.scaling.applies else "none",
    )


def train(
    manifest: str | Path,
    output: str | Path,
    config: TrainingConfig,
    work_dir: str | Path | None = None,
    resume: bool = False,
    progress_bar: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainingResult:
    """Train on the cohort ``manifest`` and write a bundle to ``output``.

    Args:
        manifest: cohort CSV (``case_id``, one column per phase, ``segmentation``, ``label``, …).
        output: the bundle folder to write.
        config: every setting of the run (:class:`TrainingConfig`).
        work_dir: per-epoch checkpoint and patch cache (default ``<output>.work``).
        resume: continue from the work dir's checkpoint (same data, split and settings; more epochs allowed).
        on_epoch_end: called with each epoch's record after its checkpoint is written.

    Returns:
        A :class:`TrainingResult` with the saved bundle, the history and the validation metrics.
    """
    from TACEResponseLib.core.files import check_output_folder
    from TACEResponseLib.networks.bundle import save_bundle
    from TACEResponseLib.networks.device import select_device

    started = time.perf_counter()
    output = check_output_folder(output)
    work = Path(work_dir) if work_dir else output.with_name(output.name + ".work")
    check_output_folder(work, "--work-dir")
    device = select_device(config.device)
    cohort = _prepare_cohort(manifest, config, work, progress_bar)
    with _deterministic(config.threads):
        _seed_everything(config.seed)
        network, optimizer, init = _build_model(config, len(config.class_names), cohort.dataset.images.shape[1], device)
        state, resumed_from = _run_epochs(network, optimizer, cohort, config, device, work, resume, progress_bar,
                                          on_epoch_end)
        if state.best_state is not None:
            network.load_state_dict(state.best_state)
        network.to("cpu").eval()
        validation = _validation_metrics(network, cohort, config, state.best_loss)
        operating = _training_operating_point(network, cohort, config)
        # calibration and the training profile of the weights as saved (float16: rounded)
        saved = copy.deepcopy(network).half() if config.weights_dtype == "float16" else network
        calibration, profile, profile_arrays = fit_trust(
            copy.deepcopy(saved).float() if config.weights_dtype == "float16" else network, cohort, config)
    seconds = time.perf_counter() - started
    training_data = _training_data(manifest, config, cohort, network, init, state, resumed_from, device, seconds)
    card = _card(config, cohort, training_data, validation, state.history)
    card.calibration, card.training_profile = calibration, profile
    if operating:
        card.metrics["operating_point"] = operating
    bundle = save_bundle(output, saved, card, profile_arrays)
    write_training_curve(bundle.path / "docs" / "training_curve.png", state.history, state.best_epoch,
                         training_data["synthetic"])
    logger.info("bundle written to %s (%.1f MB)", output, (output / "models" / "model.pt").stat().st_size / 1e6)
    return TrainingResult(bundle, state.history, cohort.split, state.best_epoch, state.epoch, state.stopped,
                          resumed_from, validation, seconds)


def add_trust(bundle_path: str | Path, manifest: str | Path, config: TrainingConfig, work_dir: str | Path,
              progress_bar: bool = True):
    """Fit the calibration and training profile of an already trained bundle, exactly as ``train`` fits
    them at its end, on the cohort it was trained on (same manifest, settings and hence split, which
    is checked against the card); the weights are not touched. Rewrites the card, its Markdown and
    :data:`~TACEResponseLib.networks.trust.PROFILE_FILE`.
    """
    from TACEResponseLib.core.files import write_json_atomic, write_text_atomic
    from TACEResponseLib.networks.bundle import CARD_FILE, DOC_FILE, card_markdown, load_bundle, save_profile_arrays

    bundle = load_bundle(bundle_path)
    cohort = _prepare_cohort(manifest, config, Path(work_dir), progress_bar)
    stored = bundle.card.training_data.get("split") or {}
    if (sorted(stored.get("train", [])) != sorted(cohort.split.train)
            or sorted(stored.get("validation", [])) != sorted(cohort.split.validation)):
        raise InputError(f"{manifest}: its patient split differs from the one bundle {bundle.id} was trained with; "
                         "give the training manifest and settings")
    with _deterministic(config.threads):
        calibration, profile, arrays = fit_trust(bundle.load_network("cpu"), cohort, config)
    bundle.card.calibration, bundle.card.training_profile = calibration, profile
    save_profile_arrays(bundle.path, bundle.card, arrays)
    write_json_atomic(bundle.path / CARD_FILE, bundle.card.to_dict())
    write_text_atomic(bundle.path / DOC_FILE, card_markdown(bundle.card))
    return load_bundle(bundle.path)


def compact_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the long curves (kept for the card)."""
    metrics = json.loads(json.dumps(metrics))
    orr = metrics.get("objective_response")
    if orr:
        orr.pop("decision_curve", None)
    return metrics


# --- checkpoints ---------------------------------------------------------------------------------------
@dataclass
class _TrainState:
    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, Any] | None = None


def _save_checkpoint(path: Path, fingerprint: dict[str, Any], network, optimizer, state: _TrainState) -> None:
    import torch

    payload = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "epoch": state.epoch,
        "best_loss": state.best_loss,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "stopped": state.stopped,
        "history": json.dumps(state.history),
        "model": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "best_state": state.best_state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path, fingerprint: dict[str, Any], network, optimizer) -> _TrainState:
    import torch

    if not path.is_file():
        raise InputError(f"--resume: no checkpoint at {path}; start without --resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise InputError(f"{path}: checkpoint cannot be read ({exc}); start without --resume") from None
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: checkpoint format {payload.get('format')} is not {CHECKPOINT_FORMAT}")
    saved = json.loads(payload["fingerprint"])
    if saved != fingerprint:
        differences = _differences(saved, fingerprint)
        raise InputError(f"{path}: cannot resume — the run differs from the checkpoint's in "
                         f"{', '.join(differences[:8])}; use the same manifest and settings, or start without --resume")
    network.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    return _TrainState(epoch=int(payload["epoch"]), best_loss=float(payload["best_loss"]),
                       best_epoch=int(payload["best_epoch"]), bad_epochs=int(payload["bad_epochs"]),
                       stopped=bool(payload["stopped"]), history=json.loads(payload["history"]),
                       best_state=payload["best_state"])


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [prefix or "value"]
