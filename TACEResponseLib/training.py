"""Train a response network from a cohort manifest and write a model bundle (Peng 2019 recipe).

Steps:

1. :func:`~TACEResponseLib.manifest.read_manifest` validates every row (files, labels,
   duplicate ids, empty segments, clinical values) and raises one error listing every bad
   row before anything else happens.
2. Patches per case exactly as inference cuts them (the card's :class:`PatchSpec`, other phases
   resampled around the tumour by :func:`~TACEResponseLib.patches.patches_for_case`, the whole
   segment as one tumour); cached per case in memory and on disk (``<work_dir>/patches``), keyed by the
   spec and the files' size and mtime, so epochs and resumed runs do not re-read volumes.
   Cases whose patches cannot be cut are listed together in one error, still before training.
3. Patient-level stratified train/validation split (:func:`stratified_patient_split`): all
   patches of a patient are on one side. The split is saved in the card.
4. Class balancing by augmentation (Peng 2019): minority classes are oversampled with copies
   flipped or rotated by ±90° (:func:`balance_by_augmentation`); every epoch each sample also
   gets a random transform from {identity, flips, ±90°} (general augmentation). All are exact
   pixel permutations.
5. SGD (Peng: lr 1e-4, momentum 0.9, batch 64) or Adam; the convolutional base frozen as in
   Peng (``models.freeze_layers``) when ImageNet weights are given (``pretrained``); without
   an ImageNet file every layer is trained from random initialisation, and the card says so.
6. Seeded (torch, numpy, random; per-epoch generators derived from the seed, deterministic
   algorithms on the CPU), tqdm progress bar, early stopping on the validation loss with
   patience (the best epoch's weights are kept), a checkpoint after every epoch (atomic) from
   which ``resume=True`` continues at the next epoch with results identical to an
   uninterrupted run.
7. :func:`~TACEResponseLib.bundle.save_bundle` with a full card: classes, inputs, patch spec,
   clinical factors with the training set's mean/std, training data (cohort, counts per class,
   split, synthetic flag), patient-level validation metrics, references.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .errors import InputError, TACEResponseError
from .io import atomic_path, write_json_atomic
from .manifest import MRECIST_CLASSES, ManifestRow, class_counts, read_manifest
from .patches import PatchSpec

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
RESPONDER_CLASSES = ("non-responder", "responder")

REFERENCES = {
    "peng2019": "Peng J, Kang S, Ning Z, et al. Residual convolutional neural network for predicting response of "
                "transarterial chemoembolization in hepatocellular carcinoma from CT imaging. Eur Radiol. "
                "2020;30(1):413-424 (online 2019). doi:10.1007/s00330-019-06318-1",
    "quan2024": "Quan et al. Deep learning on multi-sequence MRI and clinical factors to predict the response of "
                "hepatocellular carcinoma to hepatic arterial infusion chemotherapy. J Imaging Inform Med. 2024",
    "zhang2020": "Zhang L, et al. Deep learning predicts overall survival of patients with unresectable "
                 "hepatocellular carcinoma treated by transarterial chemoembolization plus sorafenib. Front Oncol. "
                 "2020;10:593292",
    "he2016": "He K, Zhang X, Ren S, Sun J. Deep residual learning for image recognition. CVPR 2016",
}
_ARCH_REFERENCES = {"resnet50": ["peng2019", "he2016"], "resnet18": ["peng2019", "he2016"],
                    "densenet121": ["zhang2020"], "inceptionv4": ["quan2024"], "fusion": ["quan2024"]}

#: freezing used with ImageNet weights when ``freeze="auto"``: the whole convolutional base (Peng 2019)
_AUTO_FREEZE = {"resnet50": "layer4", "resnet18": "layer4", "densenet121": "features",
                "inceptionv4": "blocks", "fusion": "backbone.blocks"}


# --- configuration ---------------------------------------------------------------------------------
@dataclass
class TrainingConfig:
    """Everything that defines a training run (stored in the checkpoint and the card)."""

    architecture: str = "resnet50"
    phases: list[str] = field(default_factory=lambda: ["arterial"])
    modality: str = "CT"
    task: str = "mrecist"                        # "mrecist" (CR/PR/SD/PD) or "responder"
    patch_spec: PatchSpec = field(default_factory=PatchSpec)
    network_options: dict[str, Any] = field(default_factory=dict)
    clinical: list[str] = field(default_factory=list)
    clinical_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    clinical_units: dict[str, str] = field(default_factory=dict)
    validation_fraction: float = 0.2
    optimizer: str = "sgd"                       # "sgd" (Peng) or "adam"
    learning_rate: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 54
    patience: int = 10
    min_delta: float = 0.0
    seed: int = 0
    balance: bool = True
    augment: bool = True
    precise_bn: bool = True                      # re-estimate batch-norm statistics after each epoch
    pretrained: str | None = None
    freeze: str | int | None = "auto"            # "auto": Peng's frozen base with ImageNet weights, else none
    device: str = "cpu"
    threads: int | None = None
    weights_dtype: str = "float32"               # "float16" halves the bundle (computation stays float32)
    synthetic: bool = False                      # force the synthetic flag (also detected from case.json)
    name: str = "TACEResponse-model"
    version: str = "1.0"
    description: str = ""
    n_bootstrap: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.patch_spec, Mapping):
            self.patch_spec = PatchSpec.from_dict(dict(self.patch_spec))
        self.phases = list(self.phases)
        self.clinical = list(self.clinical)
        problems = []
        if self.task not in ("mrecist", "responder"):
            problems.append(f"task must be 'mrecist' or 'responder', got {self.task!r}")
        if self.optimizer not in ("sgd", "adam"):
            problems.append(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            problems.append(f"validation fraction must be in [0, 1), got {self.validation_fraction}")
        if self.batch_size < 2:
            problems.append(f"batch size must be at least 2 (batch norm), got {self.batch_size}")
        if self.epochs < 1 or self.patience < 1:
            problems.append(f"epochs and patience must be ≥ 1, got {self.epochs} and {self.patience}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            problems.append(f"learning rate must be a positive number, got {self.learning_rate}")
        if self.weights_dtype not in ("float32", "float16"):
            problems.append(f"weights dtype must be float32 or float16, got {self.weights_dtype!r}")
        if not self.phases:
            problems.append("at least one image phase is needed")
        if self.clinical and self.architecture != "fusion":
            problems.append(f"clinical factors {self.clinical} need the 'fusion' architecture, not {self.architecture!r}")
        if problems:
            raise InputError("training configuration: " + "; ".join(problems))
        if self.architecture == "fusion":
            self.network_options = {**self.network_options, "n_clinical": len(self.clinical)}

    @property
    def class_names(self) -> list[str]:
        return list(MRECIST_CLASSES if self.task == "mrecist" else RESPONDER_CLASSES)

    def resolved_freeze(self) -> str | int | None:
        if self.freeze == "auto":
            return _AUTO_FREEZE.get(self.architecture) if self.pretrained else None
        if self.freeze in (None, "", "none", 0):
            return None
        return self.freeze

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["patch_spec"] = self.patch_spec.to_dict()
        data["clinical_ranges"] = {k: list(v) for k, v in self.clinical_ranges.items()}
        return data

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between an interrupted run and its resumption."""
        data = self.to_dict()
        for key in ("epochs", "patience", "min_delta", "device", "threads", "name", "version", "description",
                    "n_bootstrap", "weights_dtype", "synthetic"):
            data.pop(key)
        return json.loads(json.dumps(data, sort_keys=True))


# --- split ------------------------------------------------------------------------------------------
@dataclass
class Split:
    train: list[str]
    validation: list[str]

    def to_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "validation": list(self.validation)}


def stratified_patient_split(case_ids: Sequence[str], labels: Sequence[str], validation_fraction: float,
                             seed: int = 0) -> Split:
    """Patient-level split stratified by label: each class contributes ``round(n·fraction)``
    patients to validation (at least 1 and at most n − 1 when it has two or more). Patients,
    not patches, are split, so no patient is on both sides. Deterministic for a seed."""
    if len(case_ids) != len(labels):
        raise InputError(f"split: {len(case_ids)} case ids but {len(labels)} labels")
    if len(set(case_ids)) != len(case_ids):
        raise InputError("split: case ids must be unique (one row per patient)")
    rng = np.random.default_rng(seed)
    validation: set[str] = set()
    for label in sorted(set(labels)):
        members = sorted(c for c, lab in zip(case_ids, labels) if lab == label)
        n = len(members)
        n_val = int(round(n * validation_fraction)) if validation_fraction > 0 else 0
        if validation_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        elif n < 2:
            n_val = 0
            if validation_fraction > 0:
                logger.warning("class %s has %d patient(s); none held out for validation", label, n)
        chosen = rng.permutation(n)[:n_val]
        validation.update(members[i] for i in chosen)
    return Split([c for c in case_ids if c not in validation], [c for c in case_ids if c in validation])


# --- augmentation -------------------------------------------------------------------------------------
#: exact pixel permutations of a square patch (last two axes): Peng's flips and ±90° rotations
TRANSFORMS = ("identity", "flip_lr", "flip_ud", "rot90", "rot270")
BALANCE_TRANSFORMS = (1, 2, 3, 4)


def augment(patch, transform: int):
    """Apply transform number ``transform`` (index into :data:`TRANSFORMS`) to the last two axes.

    Works on numpy arrays and torch tensors; ``rot90`` turns counter-clockwise as numpy does.
    """
    if transform == 0:
        return patch
    if isinstance(patch, np.ndarray):
        if transform == 1:
            return np.flip(patch, axis=-1)
        if transform == 2:
            return np.flip(patch, axis=-2)
        return np.rot90(patch, k=1 if transform == 3 else -1, axes=(-2, -1))
    import torch

    if transform == 1:
        return torch.flip(patch, dims=(-1,))
    if transform == 2:
        return torch.flip(patch, dims=(-2,))
    if transform in (3, 4):
        return torch.rot90(patch, k=1 if transform == 3 else -1, dims=(-2, -1))
    raise InputError(f"unknown augmentation transform {transform}; use 0–{len(TRANSFORMS) - 1}")


def balance_by_augmentation(labels: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Oversample minority classes with flipped / ±90°-rotated copies up to the largest class.

    Returns ``(indices, transforms)``: every original sample once with transform 0, then, for
    each smaller class, extra copies of its samples (cycling through them in a seeded random
    order) each with a non-identity transform, distinct per sample as long as possible.
    """
    labels = np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    indices = [np.arange(len(labels))]
    transforms = [np.zeros(len(labels), int)]
    classes, counts = np.unique(labels, return_counts=True)
    target = int(counts.max()) if len(counts) else 0
    for cls, count in zip(classes, counts):
        extra = target - int(count)
        if extra <= 0:
            continue
        members = rng.permutation(np.nonzero(labels == cls)[0])
        offsets = rng.permutation(len(BALANCE_TRANSFORMS))
        picks = np.arange(extra)
        indices.append(members[picks % len(members)])
        rounds = picks // len(members)  # the copy number of that sample: a different transform each round
        transforms.append(np.asarray(BALANCE_TRANSFORMS)[(offsets[picks % len(members) % len(offsets)] + rounds)
                                                         % len(BALANCE_TRANSFORMS)])
    return np.concatenate(indices), np.concatenate(transforms)


def augment_batch(x, transforms: np.ndarray):
    """Apply per-sample transforms to a ``(N, C, S, S)`` torch tensor (grouped by transform)."""
    out = x.clone()
    for t in np.unique(transforms):
        if t == 0:
            continue
        rows = np.nonzero(transforms == t)[0]
        import torch

        index = torch.as_tensor(rows)
        out[index] = augment(x[index], int(t))
    return out


# --- patches -----------------------------------------------------------------------------------------
def _file_key(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def case_patches(row: ManifestRow, spec: PatchSpec) -> np.ndarray:
    """Patches ``(P, C, S, S)`` of one case, cut exactly as :class:`~TACEResponseLib.inference.Predictor` cuts them."""
    from .inference import tumour_rois
    from .io import read_phase_volumes, read_segmentation
    from .patches import patches_for_case

    images = read_phase_volumes(row.images, row.phases)
    segmentation = read_segmentation(row.segmentation)
    rois = tumour_rois(segmentation, images[0], [row.segment] if row.segment else None, split_islands=False)
    (patches,) = patches_for_case(images, [rois[0].mask], spec, labels=[f"{row.case_id} {rois[0].label}"])
    return patches.images


class PatchCache:
    """Per-case patches in memory and (optionally) as ``.npy`` files keyed by spec + file stats."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder else None
        self.memory: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(row: ManifestRow, spec: PatchSpec) -> str:
        data = {"spec": spec.to_dict(), "phases": row.phases, "images": [_file_key(p) for p in row.images],
                "segmentation": _file_key(row.segmentation), "segment": row.segment, "version": 2}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def get(self, row: ManifestRow, spec: PatchSpec) -> np.ndarray:
        key = self.key(row, spec)
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        path = None
        if self.folder is not None:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in row.case_id)
            path = self.folder / f"{safe}-{key[:20]}.npy"
            if path.is_file():
                try:
                    patches = np.load(path, allow_pickle=False)
                    self.memory[key] = patches
                    self.hits += 1
                    return patches
                except (OSError, ValueError):
                    logger.warning("patch cache %s unreadable; cutting the patches again", path)
        self.misses += 1
        patches = case_patches(row, spec)
        self.memory[key] = patches
        if path is not None:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, patches, allow_pickle=False)
        return patches


@dataclass
class PatchDataset:
    """All patches of a cohort with the patient each belongs to."""

    images: np.ndarray        # (N, C, S, S) float32
    case_index: np.ndarray    # (N,) index into case_ids
    case_ids: list[str]
    labels: np.ndarray        # (n_cases,) class index per case
    clinical: np.ndarray | None = None  # (n_cases, n_factors) standardised

    def patch_labels(self) -> np.ndarray:
        return self.labels[self.case_index]

    def rows_of(self, case_ids: Sequence[str]) -> np.ndarray:
        wanted = {self.case_ids.index(c) for c in case_ids}
        return np.nonzero(np.isin(self.case_index, list(wanted)))[0]


def build_dataset(rows: Sequence[ManifestRow], spec: PatchSpec, class_names: Sequence[str],
                  cache: PatchCache | None = None, progress_bar: bool = True) -> PatchDataset:
    """Patches of every case; every case that fails is listed in one InputError."""
    from tqdm import tqdm

    cache = cache or PatchCache()
    per_case: list[np.ndarray] = []
    problems: list[str] = []
    for row in tqdm(rows, desc="cutting patches", unit="case", disable=not progress_bar):
        try:
            per_case.append(cache.get(row, spec))
        except (TACEResponseError, OSError) as exc:
            problems.append(f"line {row.line} ({row.case_id}): {exc}")
            per_case.append(np.zeros((0,), np.float32))
    if problems:
        raise InputError(f"{len(problems)} case(s) give no patches; fix them and run again:\n  " + "\n  ".join(problems))
    images = np.concatenate(per_case).astype(np.float32, copy=False)
    case_index = np.concatenate([np.full(len(p), n) for n, p in enumerate(per_case)])
    labels = np.array([list(class_names).index(r.label) for r in rows], dtype=int)
    return PatchDataset(images, case_index, [r.case_id for r in rows], labels)


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
    from .bundle import ClinicalFactor
    from .models import ClinicalScaler

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

    ``work_dir`` (default ``<output>.work``) holds the per-epoch checkpoint and the patch
    cache. ``resume=True`` continues from its checkpoint (same data, split and settings; more
    epochs allowed). ``on_epoch_end(record)`` is called after each epoch's checkpoint is written.
    """
    import torch

    from .bundle import BundleCard, PhaseInput, save_bundle
    from .device import select_device
    from .evaluation import compute_metrics
    from .models import build_network, count_parameters, freeze_batchnorm_statistics, freeze_layers, load_pretrained

    started = time.perf_counter()
    output = Path(output)
    work = Path(work_dir) if work_dir else output.with_name(output.name + ".work")
    class_names = config.class_names
    rows = read_manifest(manifest, config.phases, require_label=True, clinical=config.clinical,
                         class_names=class_names)
    split = stratified_patient_split([r.case_id for r in rows], [r.label for r in rows],
                                     config.validation_fraction, config.seed)
    train_ids, val_ids = set(split.train), set(split.validation)
    scaler, factors = _clinical_factors(config, rows, train_ids)

    cache = PatchCache(work / "patches")
    dataset = build_dataset(rows, config.patch_spec, class_names, cache, progress_bar)
    if scaler is not None:
        dataset.clinical = scaler.transform([r.clinical for r in rows])
    data_key = hashlib.sha256("".join(PatchCache.key(r, config.patch_spec) for r in rows).encode()).hexdigest()
    fingerprint = {"config": config.fingerprint(), "split": split.to_dict(), "data": data_key}

    train_rows = dataset.rows_of(split.train)
    val_rows = dataset.rows_of(split.validation) if split.validation else np.zeros(0, int)
    patch_labels = dataset.patch_labels()
    if config.balance:
        index, balance_t = balance_by_augmentation(patch_labels[train_rows], seed=config.seed)
        train_index, train_t = train_rows[index], balance_t
    else:
        train_index, train_t = train_rows, np.zeros(len(train_rows), int)
    in_channels = dataset.images.shape[1]
    clinical_per_patch = None if dataset.clinical is None else dataset.clinical[dataset.case_index]
    val_images = dataset.images[val_rows]
    val_clinical = None if clinical_per_patch is None else clinical_per_patch[val_rows]
    val_labels = patch_labels[val_rows]

    device = select_device(config.device)
    with _deterministic(config.threads):
        _seed_everything(config.seed)
        network = build_network(config.architecture, len(class_names), in_channels, **config.network_options)
        pretrained_report = None
        if config.pretrained:
            pretrained_report = load_pretrained(network, config.pretrained, config.architecture).summary()
        freeze = config.resolved_freeze()
        frozen = freeze_layers(network, freeze) if freeze is not None else []
        network.to(device)
        parameters = [p for p in network.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                                        weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)

        state = _TrainState()
        checkpoint_path = work / CHECKPOINT_FILE
        if resume:
            state = _load_checkpoint(checkpoint_path, fingerprint, network, optimizer)
            logger.info("resuming after epoch %d (best epoch %d, validation loss %.4f)", state.epoch,
                        state.best_epoch, state.best_loss)
        elif checkpoint_path.exists():
            logger.warning("%s exists and --resume was not given: starting a new run over it", checkpoint_path)
        resumed_from = state.epoch

        batches_per_epoch = len(_batches(np.arange(len(train_index)), config.batch_size))
        from tqdm import tqdm

        bar = tqdm(total=config.epochs * batches_per_epoch, initial=state.epoch * batches_per_epoch, unit="batch",
                   disable=not progress_bar, desc="training")
        try:
            while state.epoch < config.epochs and not state.stopped:
                epoch = state.epoch + 1
                bar.set_description(f"epoch {epoch}/{config.epochs}")
                rng = np.random.default_rng([config.seed, epoch])
                torch.manual_seed(config.seed * 100_003 + epoch)
                order = rng.permutation(len(train_index))
                general = rng.integers(0, len(TRANSFORMS), size=len(train_index)) if config.augment \
                    else np.zeros(len(train_index), int)
                network.train()
                freeze_batchnorm_statistics(network)
                total, seen, correct = 0.0, 0, 0
                for batch in _batches(order, config.batch_size):
                    rows_b = train_index[batch]
                    x = torch.from_numpy(dataset.images[rows_b])
                    x = augment_batch(augment_batch(x, train_t[batch]), general[batch]).to(device)
                    y = torch.from_numpy(patch_labels[rows_b]).to(device)
                    c = None if clinical_per_patch is None else torch.from_numpy(clinical_per_patch[rows_b]).to(device)
                    optimizer.zero_grad(set_to_none=True)
                    logits = _forward(network, x, c)
                    loss = torch.nn.functional.cross_entropy(logits, y)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.item()) * len(batch)
                    seen += len(batch)
                    correct += int((logits.argmax(1) == y).sum().item())
                    bar.update()
                    bar.set_postfix(loss=f"{total / seen:.3f}")
                if config.precise_bn:
                    recompute_batchnorm(network, dataset.images[train_rows],
                                        None if clinical_per_patch is None else clinical_per_patch[train_rows],
                                        device, max(config.batch_size, 32))
                record: dict[str, Any] = {"epoch": epoch, "train_loss": total / seen, "train_accuracy": correct / seen}
                if len(val_rows):
                    val_loss, val_probs = _evaluate_patches(network, val_images, val_clinical, val_labels, device,
                                                            config.batch_size)
                    cases, patient_probs = _patient_probabilities(val_probs, dataset.case_index[val_rows])
                    record.update(val_loss=val_loss,
                                  val_patient_accuracy=float(np.mean(patient_probs.argmax(1) == dataset.labels[cases])))
                    monitored = val_loss
                else:
                    monitored = record["train_loss"]
                if monitored < state.best_loss - config.min_delta:
                    state.best_loss, state.best_epoch, state.bad_epochs = monitored, epoch, 0
                    state.best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
                else:
                    state.bad_epochs += 1
                    if state.bad_epochs >= config.patience and len(val_rows):
                        state.stopped = True
                        logger.info("early stopping after epoch %d: validation loss has not improved for %d epochs",
                                    epoch, config.patience)
                state.epoch = epoch
                state.history.append(record)
                _save_checkpoint(checkpoint_path, fingerprint, network, optimizer, state)
                bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
                logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
                if on_epoch_end is not None:
                    on_epoch_end(record)
        finally:
            bar.close()

        if state.best_state is not None:
            network.load_state_dict(state.best_state)
        network.to("cpu").eval()

        validation_metrics = None
        if len(val_rows):
            _, val_probs = _evaluate_patches(network, val_images, val_clinical, val_labels, "cpu", config.batch_size)
            cases, patient_probs = _patient_probabilities(val_probs, dataset.case_index[val_rows])
            orr = [class_names.index(c) for c in ("CR", "PR") if c in class_names] if config.task == "mrecist" \
                else [class_names.index("responder")]
            validation_metrics = compute_metrics([class_names[i] for i in dataset.labels[cases]], patient_probs,
                                                 class_names, orr, n_bootstrap=config.n_bootstrap, seed=config.seed)
            validation_metrics = _compact(validation_metrics)
            validation_metrics["loss"] = state.best_loss

    seconds = time.perf_counter() - started
    synthetic_rows = sum(r.synthetic for r in rows)
    synthetic = bool(config.synthetic or synthetic_rows)
    n_total = len(rows)
    counts = class_counts(rows, class_names)
    train_rows_m = [r for r in rows if r.case_id in train_ids]
    val_rows_m = [r for r in rows if r.case_id in val_ids]
    if config.pretrained:
        init = (f"ImageNet weights from {Path(config.pretrained).name} (torchvision layout); {pretrained_report}")
    else:
        init = ("random initialisation: no ImageNet weights file was given, so ALL layers were trained from scratch "
                "(Peng 2019 used ImageNet weights and froze the whole convolutional base)")
    training_data = {
        "cohort": Path(manifest).parent.name or str(manifest),
        "manifest": Path(manifest).name,
        "synthetic": synthetic,
        "synthetic_source": (f"case.json of {synthetic_rows}/{n_total} cases says synthetic"
                             if synthetic_rows else ("--synthetic flag" if config.synthetic else "not synthetic")),
        "modality": config.modality,
        "phases": config.phases,
        "n_cases": n_total,
        "n_per_class": counts,
        "split": {"method": "patient-level, stratified by label", "validation_fraction": config.validation_fraction,
                  "seed": config.seed, "n_train_per_class": class_counts(train_rows_m, class_names),
                  "n_validation_per_class": class_counts(val_rows_m, class_names), **split.to_dict()},
        "n_patches": {"train": int(len(train_rows)), "validation": int(len(val_rows)),
                      "train_after_class_balancing": int(len(train_index)),
                      "per_case": float(len(dataset.images) / max(1, n_total))},
        "augmentation": ("class balancing by oversampling minority classes with flipped (left-right, up-down) and "
                         "±90°-rotated copies (Peng 2019)" if config.balance else "no class balancing")
                        + ("; random flip / ±90° rotation / identity per sample every epoch" if config.augment else ""),
        "batch_norm": ("running statistics re-estimated on the unaugmented training patches after every epoch "
                       "(precise BN)" if config.precise_bn else "running statistics as updated during training"),
        "initialisation": init,
        "frozen": {"stage": freeze, "parameter_tensors": len(frozen),
                   "trainable_parameters": int(count_parameters(network, trainable_only=True)),
                   "all_parameters": int(count_parameters(network))},
        "optimizer": {"name": config.optimizer, "learning_rate": config.learning_rate,
                      "momentum": config.momentum if config.optimizer == "sgd" else None,
                      "weight_decay": config.weight_decay, "batch_size": config.batch_size,
                      "loss": "cross-entropy"},
        "epochs": {"max": config.epochs, "run": state.epoch, "best": state.best_epoch,
                   "early_stopping": {"monitor": "validation loss" if len(val_rows) else "training loss",
                                      "patience": config.patience, "stopped_early": state.stopped},
                   "resumed_from_epoch": resumed_from or None},
        "seed": config.seed,
        "device": str(device),
        "torch_version": torch.__version__,
        "training_time_s": round(seconds, 1),
        "weights_dtype": config.weights_dtype,
        "config": config.to_dict(),
    }
    if synthetic:
        from .phantoms import SYNTHETIC_NOTE

        training_data["note"] = SYNTHETIC_NOTE
    references = [REFERENCES[k] for k in _ARCH_REFERENCES.get(config.architecture, [])]
    description = config.description or (
        f"{config.architecture} response classifier ({', '.join(class_names)}) on "
        f"{config.patch_spec.size}×{config.patch_spec.size} {config.patch_spec.strategy} patches of "
        f"{'/'.join(config.phases)} {config.modality}, trained by TACEResponse's own training code.")
    card = BundleCard(
        name=config.name, version=config.version, architecture=config.architecture, class_names=class_names,
        inputs=[PhaseInput(p, config.modality) for p in config.phases], patch_spec=config.patch_spec,
        network_options=dict(config.network_options), clinical_factors=factors, task=config.task,
        description=description,
        intended_use=("Research use only; trained on SYNTHETIC phantoms — not for clinical use. Not a medical device."
                      if synthetic else "Research use only. Not a medical device."),
        training_data=training_data,
        metrics={"validation": validation_metrics, "training_history": state.history},
        references=references,
    )
    to_save = network
    if config.weights_dtype == "float16":
        to_save = copy.deepcopy(network).half()
    bundle = save_bundle(output, to_save, card)
    _write_training_curve(bundle.path / "docs" / "training_curve.png", state.history, state.best_epoch, synthetic)
    logger.info("bundle written to %s (%.1f MB)", output, (output / "models" / "model.pt").stat().st_size / 1e6)
    return TrainingResult(bundle, state.history, split, state.best_epoch, state.epoch, state.stopped,
                          resumed_from, validation_metrics, seconds)


def _compact(metrics: dict[str, Any]) -> dict[str, Any]:
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


def _write_training_curve(path: Path, history: list[dict[str, Any]], best_epoch: int, synthetic: bool) -> Path | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_figure

    epochs = [h["epoch"] for h in history]
    figure, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="training loss (augmented)")
    if "val_loss" in history[0]:
        ax.plot(epochs, [h["val_loss"] for h in history], "o-", ms=3, label="validation loss")
    ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title("Training curve" + (" — SYNTHETIC phantoms" if synthetic else ""))
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(figure, path)


# --- demo bundle --------------------------------------------------------------------------------------------
DEMO_NAME = "TACEResponse-demo-synthetic-ct"


def demo_config(**overrides: Any) -> TrainingConfig:
    """The settings of the committed SYNTHETIC demo bundle (small and fast; see its card)."""
    values: dict[str, Any] = dict(
        architecture="resnet18", phases=["arterial"], modality="CT",
        patch_spec=PatchSpec(strategy="largest_slice", size=224, n_slices=3),
        optimizer="adam", learning_rate=3e-4, batch_size=16, epochs=15, patience=4, seed=2019,
        validation_fraction=0.2, weights_dtype="float16", name=DEMO_NAME, version="1.0",
        description=("SYNTHETIC DEMO MODEL — trained on synthetic CT phantoms by TACEResponse's own training code "
                     "(`make demo-bundle`), NOT on patients; not for clinical use. It exercises the Peng 2019 "
                     "pipeline (largest-tumour-slice patches resized to 224×224, 4-class mRECIST, patient "
                     "probability = mean over patches) at demo scale: ResNet18 with all layers trained from random "
                     "initialisation (Adam, lr 3e-4, batch 16), instead of the published ResNet50 with a frozen "
                     "ImageNet base (SGD, lr 1e-4, batch 64). Weights stored as float16 (computed in float32) to keep "
                     "the bundle small."),
    )
    values.update(overrides)
    return TrainingConfig(**values)


def make_demo_bundle(work_dir: str | Path, output: str | Path, n_train: int = 80, n_held_out: int = 40,
                     train_seed: int = 1000, held_out_seed: int = 5000, registry: str | Path | None = None,
                     progress_bar: bool = True, **overrides: Any) -> dict[str, Any]:
    """Re-create the SYNTHETIC demo bundle: phantom cohorts → train → evaluate held out → register.

    The training cohort uses phantom seeds ``train_seed …``, the held-out cohort seeds
    ``held_out_seed …`` (disjoint). The held-out metrics are stored in the card and the bundle
    is (re-)registered in ``Resources/Models.json`` with its sha256.
    """
    from .bundle import CARD_FILE, DOC_FILE, card_markdown, load_bundle, resources_dir, sha256_of, WEIGHTS_FILE
    from .evaluation import evaluate_bundle
    from .io import write_text_atomic
    from .phantoms import make_cohort

    if not (train_seed + n_train <= held_out_seed or held_out_seed + n_held_out <= train_seed):
        raise InputError("the held-out phantom seeds overlap the training seeds")
    work = Path(work_dir)
    output = Path(output)
    started = time.perf_counter()
    cohorts = {}
    generated = False
    for name, n, seed in (("train", n_train, train_seed), ("held_out", n_held_out, held_out_seed)):
        manifest = work / f"cohort_{name}" / "manifest.csv"
        if not manifest.is_file():
            logger.info("writing %d SYNTHETIC phantoms (seeds %d–%d) to %s", n, seed, seed + n - 1, manifest.parent)
            make_cohort(n, manifest.parent, modality="CT", seed=seed, phases=["arterial"])
            generated = True
        cohorts[name] = manifest
    data_seconds = time.perf_counter() - started if generated else None
    config = demo_config(**overrides)
    result = train(cohorts["train"], output, config, work_dir=work / "training", progress_bar=progress_bar)
    evaluation = evaluate_bundle(result.bundle, cohorts["held_out"], work / "evaluation_held_out",
                                 n_bootstrap=1000, seed=0, progress_bar=progress_bar)
    demo = _demo_case_prediction(result.bundle)

    card = result.bundle.card
    card.metrics["held_out"] = {
        "cohort": f"{n_held_out} SYNTHETIC CT phantoms, seeds {held_out_seed}–{held_out_seed + n_held_out - 1} "
                  f"(training seeds {train_seed}–{train_seed + n_train - 1})",
        "evaluated_by": "tace-response evaluate",
        **_compact(evaluation.metrics),
    }
    card.metrics["demo_case"] = demo
    card.training_data["cohort"] = (f"{n_train} SYNTHETIC CT phantoms (TACEResponseLib.phantoms.make_cohort, seeds "
                                    f"{train_seed}–{train_seed + n_train - 1}, 128³ voxels at 1.2 mm, arterial phase)")
    card.training_data["data_generation_s"] = (round(data_seconds, 1) if data_seconds is not None
                                               else "phantom cohorts reused from the work dir")
    bundle_path = result.bundle.path
    assert card.weights_sha256 == sha256_of(bundle_path / WEIGHTS_FILE)
    write_json_atomic(bundle_path / CARD_FILE, card.to_dict())
    write_text_atomic(bundle_path / DOC_FILE, card_markdown(card))
    for png in ("roc.png", "confusion_matrix.png", "calibration.png", "dca.png"):
        source = evaluation.output / png
        if source.is_file():
            (bundle_path / "docs" / f"held_out_{png}").write_bytes(source.read_bytes())
    load_bundle(bundle_path)  # verifies the checksum once more

    registry = Path(registry) if registry else resources_dir() / "Models.json"
    orr = evaluation.objective_response_auc or {}
    entry = {
        "name": card.name,
        "title": "Demo (SYNTHETIC phantoms) — ResNet18 at 224 px, CT arterial, 4-class mRECIST",
        "path": os.path.relpath(bundle_path.resolve(), registry.parent.resolve()).replace(os.sep, "/"),
        "sha256": card.weights_sha256,
        "synthetic": True,
        "description": ("Trained on synthetic phantoms by `make demo-bundle`; not for clinical use. Held-out "
                        f"phantoms: objective-response AUC {orr.get('auc', float('nan')):.3f} "
                        f"(95% CI {orr.get('ci_low', float('nan')):.3f}–{orr.get('ci_high', float('nan')):.3f}), "
                        f"4-class accuracy {evaluation.metrics['accuracy']:.3f}."),
    }
    register_bundle(registry, entry)
    summary = {"bundle": str(bundle_path), "size_mb": round((bundle_path / WEIGHTS_FILE).stat().st_size / 1e6, 2),
               "training_time_s": round(result.seconds, 1), "total_time_s": round(time.perf_counter() - started, 1),
               "held_out": evaluation.summary_lines(), "demo_case": demo, "registry": str(registry),
               "evaluation_dir": str(evaluation.output)}
    return summary


def _demo_case_prediction(bundle) -> dict[str, Any]:
    """Prediction of the case ``make demo`` shows: ``make_phantom("PR", seed=7, case_id="demo_case")``."""
    from .inference import Predictor
    from .phantoms import make_phantom

    case = make_phantom("PR", seed=7, case_id="demo_case")
    images = [case.phases[p.name] for p in bundle.card.inputs]
    result = Predictor(bundle, device="cpu", cam_method="none").predict(images, case.segmentation,
                                                                        case_id=case.case_id, split_islands=False)
    tumour = result.tumours[0]
    return {"case": 'make_phantom("PR", seed=7, case_id="demo_case")', "true_class": case.label,
            "predicted_class": tumour.predicted_class,
            "probabilities": {c: round(p, 4) for c, p in zip(tumour.class_names, tumour.probabilities)},
            "objective_response_probability": round(float(tumour.objective_response_probability or 0.0), 4)}


def register_bundle(registry: str | Path, entry: dict[str, Any]) -> Path:
    """Insert or replace (by name) one entry of ``Models.json``, keeping the others and their order."""
    registry = Path(registry)
    data: dict[str, Any] = {"models": []}
    if registry.is_file():
        data = json.loads(registry.read_text(encoding="utf-8"))
    models = data.setdefault("models", [])
    for n, existing in enumerate(models):
        if existing.get("name") == entry["name"]:
            models[n] = entry
            break
    else:
        models.insert(0, entry)
    return write_json_atomic(registry, data)
