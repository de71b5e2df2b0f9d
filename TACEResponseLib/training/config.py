"""What defines a training run: :class:`TrainingConfig` (stored in the checkpoint and the card).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.manifest import MRECIST_CLASSES
from TACEResponseLib.imaging.patches import PatchSpec
from TACEResponseLib.imaging.tumours import (
    DEFAULT_PATIENT_RULE,
    IslandRule,
    check_patient_rule,
)

logger = logging.getLogger(__name__)

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
    "krizhevsky2012": "Krizhevsky A, Sutskever I, Hinton GE. ImageNet classification with deep convolutional neural "
                      "networks. NeurIPS 2012",
}


ARCHITECTURE_REFERENCES = {"resnet50": ["peng2019", "he2016"], "resnet18": ["peng2019", "he2016"],
                    "densenet121": ["zhang2020"], "inceptionv4": ["quan2024"], "fusion": ["quan2024"],
                    "alexnet": ["quan2024", "krizhevsky2012"]}


#: what ``protocol="peng2019"`` sets: Peng 2019 as published — every patient trains (no hold-out),
#: no early stopping (the last epoch's weights), SGD with momentum 0.9, lr 1e-4, batch 64, 54
#: epochs, ResNet50 from ImageNet weights (required) with the convolutional base frozen, 224-px
#: largest-slice patches resampled to 1 mm through-plane, class balancing with flips and
#: 90°/180°/270° rotations, and the L2 regularisation MATLAB's trainingOptions apply when none is
#: given (1e-4; the paper names none)
PROTOCOLS: dict[str, dict[str, Any]] = {
    "peng2019": {"architecture": "resnet50", "validation_fraction": 0.0, "early_stopping": False, "optimizer": "sgd",
                 "learning_rate": 1e-4, "momentum": 0.9, "batch_size": 64, "epochs": 54, "balance": True,
                 "augment": True, "weight_decay": 1e-4},
}

#: Peng 2019's settings one by one, as the paper reports them (or, where it is silent, what the
#: MATLAB defaults it ran on give): ``setting → value``. :func:`protocol_settings` describes a
#: configuration in the same words, and every setting whose two values differ is a deviation
#: (docs/validation.md holds the same table, and a test compares a trained card with it).
PENG2019_PAPER: dict[str, str] = {
    "framework": "MATLAB (Deep Learning Toolbox)",
    "architecture": "resnet50",
    "initialisation": "ImageNet",
    "frozen": "convolutional base (layers 1-174)",
    "input_scaling": "MATLAB resnet50 input layer",
    "intensity": "[0, 1] (window not reported)",
    "slice_spacing_mm": "1",
    "strategy": "largest_slice",
    "patch_size": "224",
    "n_slices": "3",
    "patient_rule": "largest tumour, mean of its patches",
    "class_balancing": "flipped/rotated copies of minority classes",
    "per_epoch_augmentation": "none reported",
    "iterations_per_epoch": "augmented set / 64 (set size not reported)",
    "loss": "not reported",
    "optimizer": "sgd",
    "learning_rate": "0.0001",
    "momentum": "0.9",
    "weight_decay": "0.0001",
    "batch_size": "64",
    "epochs": "54",
    "validation_fraction": "0",
    "early_stopping": "none",
}

#: why a setting of ``protocol="peng2019"`` still differs from the paper when the user asked for nothing else
PENG2019_STANDING_DEVIATIONS: dict[str, str] = {
    "framework": "this package runs PyTorch and MONAI; MATLAB's layers, initialisers and numerics differ in detail",
    "input_scaling": "torchvision-layout ImageNet weights expect torchvision's per-channel mean/SD standardisation, "
                     "which is applied instead of MATLAB's input layer",
    "intensity": "the paper maps CT values to [0, 1] without naming the window; this package uses its CT window",
    "patient_rule": "no 'largest tumour only' rule exists here; the mRECIST target-lesion rule (up to two largest "
                    "tumours) gives the same patches for single-tumour patients",
    "per_epoch_augmentation": "every patch also gets a random flip/rotation each epoch (the paper describes the "
                              "balancing copies only); --no-augment turns it off",
    "iterations_per_epoch": "the paper does not report the size of its augmented set; one epoch here is one pass "
                            "over the class-balanced patches",
    "loss": "the paper does not name its loss; cross-entropy (MATLAB's classification layer) is assumed",
}


#: patch settings of a protocol (applied to the patch spec)
PROTOCOL_PATCHES: dict[str, dict[str, Any]] = {
    "peng2019": {"strategy": "largest_slice", "size": 224, "n_slices": 3, "slice_spacing_mm": 1.0},
}


#: default normalisation of an input by modality: CT gets the HU window, MR never does
DEFAULT_NORMALIZATION = {"CT": "window", "MR": "roi_percentile"}


#: freezing used with ImageNet weights when ``freeze="auto"``: the whole convolutional base (Peng 2019)
_AUTO_FREEZE = {"resnet50": "layer4", "resnet18": "layer4", "densenet121": "features",
                "inceptionv4": "blocks", "fusion": "backbone.blocks", "alexnet": "features"}


# --- configuration ---------------------------------------------------------------------------------
@dataclass
class TrainingConfig(JsonRecord):
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
    islands: IslandRule = field(default_factory=IslandRule)  # how segments become tumours (as prediction)
    patient_rule: str = DEFAULT_PATIENT_RULE                 # which tumours' patches stand for the patient
    early_stopping: bool = True                  # False: train every epoch and keep the last weights
    input_scaling: str = "auto"                  # "auto": ImageNet mean/SD with ImageNet weights, else none
    protocol: str | None = None                  # a published recipe (PROTOCOLS) the settings follow
    protocol_deviations: dict[str, Any] = field(default_factory=dict)  # where they do not, by request

    def __post_init__(self) -> None:
        if isinstance(self.patch_spec, Mapping):
            self.patch_spec = PatchSpec.from_dict(dict(self.patch_spec))
        self.modality = "MR" if str(self.modality).upper().startswith("MR") else str(self.modality).upper()
        if isinstance(self.islands, Mapping):
            self.islands = IslandRule.from_dict(dict(self.islands))
        self.patient_rule = check_patient_rule(self.patient_rule)
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
        if self.n_bootstrap < 0:
            problems.append(f"bootstrap resamples must be ≥ 0, got {self.n_bootstrap}")
        if not (0 <= self.momentum < 1) or self.weight_decay < 0:
            problems.append(f"momentum must be in [0, 1) and weight decay ≥ 0, got {self.momentum} and {self.weight_decay}")
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
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            problems.append(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.input_scaling not in ("auto", "imagenet", "none"):
            problems.append(f"input scaling must be auto, imagenet or none, got {self.input_scaling!r}")
        if self.modality not in DEFAULT_NORMALIZATION:
            problems.append(f"modality must be CT or MR, got {self.modality!r}")
        if problems:
            raise InputError("training configuration: " + "; ".join(problems))
        if self.patch_spec.normalizations is None:
            self.patch_spec = _per_input_normalization(self.patch_spec, self.modality, len(self.phases))
        elif len(self.patch_spec.normalizations) != len(self.phases):
            raise InputError(f"training configuration: {len(self.patch_spec.normalizations)} normalisation(s) for "
                             f"{len(self.phases)} input image(s) {self.phases}")
        if self.architecture == "fusion":
            self.network_options = {**self.network_options, "n_clinical": len(self.clinical)}

    @classmethod
    def for_protocol(cls, protocol: str, overrides: Mapping[str, Any] | None = None, **values: Any) -> "TrainingConfig":
        """The settings of a published ``protocol`` (:data:`PROTOCOLS`, :data:`PROTOCOL_PATCHES`) on top
        of ``values``; ``overrides`` (what the user asked for explicitly, patch settings under
        ``patch_spec``) win over the protocol. Every setting that then differs from the paper
        (:data:`PENG2019_PAPER`) is listed in ``protocol_deviations`` with the paper's value, the one
        used and why (asked for by the user, or a standing difference of this package), and logged.

        Peng 2019 transferred ImageNet weights: without ``pretrained`` this is an InputError that
        says how to provide them (nothing is downloaded here).
        """
        if protocol not in PROTOCOLS:
            raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        overrides = dict(overrides or {})
        patch_overrides = dict(overrides.pop("patch_spec", {}) or {})
        fixed, fixed_patches = PROTOCOLS[protocol], PROTOCOL_PATCHES[protocol]
        if not values.get("pretrained"):
            architecture = overrides.get("architecture", fixed["architecture"])
            raise InputError(
                f"protocol {protocol} trains from ImageNet weights (Peng 2019: {fixed['architecture']} pretrained on "
                f"ImageNet, convolutional base frozen), and none were given: download the torchvision {architecture} "
                f"ImageNet state dict (e.g. {IMAGENET_FILES.get(architecture, architecture + '.pth')}) on a machine "
                "with internet access and pass it with --pretrained FILE (library: TrainingConfig(pretrained=...)); "
                "nothing is downloaded here. Without ImageNet weights, train without --protocol")
        spec = values.pop("patch_spec", None) or PatchSpec()
        spec_values = {**spec.to_dict(), **fixed_patches, **patch_overrides}
        user = set(overrides) | {f"patch_spec.{k}" for k in patch_overrides}
        config = cls(**{**values, **fixed, **overrides, "protocol": protocol, "protocol_deviations": {},
                        "patch_spec": PatchSpec.from_dict(spec_values)})
        config.protocol_deviations = protocol_deviations(config, user)
        asked = {k: d for k, d in config.protocol_deviations.items() if d["reason"].startswith("asked for")}
        if asked:
            logger.warning("protocol %s with deviations: %s", protocol,
                           ", ".join(f"{k} {d['used']!r} instead of {d['protocol']!r}" for k, d in asked.items()))
        return config

    def resolved_input_scaling(self, in_channels: int):
        """The :class:`~TACEResponseLib.networks.input_scaling.InputScaling` the network is trained with."""
        from TACEResponseLib.networks.input_scaling import resolve_input_scaling

        return resolve_input_scaling(self.input_scaling, bool(self.pretrained),
                                     [self.patch_spec.normalization_for(n) for n in range(len(self.phases))],
                                     in_channels)

    @property
    def class_names(self) -> list[str]:
        return list(MRECIST_CLASSES if self.task == "mrecist" else RESPONDER_CLASSES)

    def resolved_freeze(self) -> str | int | None:
        if self.freeze == "auto":
            return _AUTO_FREEZE.get(self.architecture) if self.pretrained else None
        if self.freeze in (None, "", "none", 0):
            return None
        return self.freeze

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between an interrupted run and its resumption."""
        data = self.to_dict()
        for key in ("epochs", "patience", "min_delta", "device", "threads", "name", "version", "description",
                    "n_bootstrap", "weights_dtype", "synthetic"):
            data.pop(key)
        return json.loads(json.dumps(data, sort_keys=True))


#: torchvision's ImageNet files of the architectures a protocol may name (for the error message)
IMAGENET_FILES = {"resnet50": "resnet50-0676ba61.pth", "resnet18": "resnet18-f37072fd.pth",
                  "densenet121": "densenet121-a639ec97.pth", "alexnet": "alexnet-owt-7be5be79.pth"}

#: which ``TrainingConfig`` field or patch setting an override of a table row comes from
_SETTING_FIELDS = {"architecture": "architecture", "optimizer": "optimizer", "learning_rate": "learning_rate",
                   "momentum": "momentum", "weight_decay": "weight_decay", "batch_size": "batch_size",
                   "epochs": "epochs", "validation_fraction": "validation_fraction", "early_stopping": "early_stopping",
                   "initialisation": "pretrained", "frozen": "freeze", "class_balancing": "balance",
                   "per_epoch_augmentation": "augment", "input_scaling": "input_scaling",
                   "patient_rule": "patient_rule", "patch_size": "patch_spec.size", "n_slices": "patch_spec.n_slices",
                   "slice_spacing_mm": "patch_spec.slice_spacing_mm", "strategy": "patch_spec.strategy",
                   "intensity": "patch_spec.normalization"}


def _number(value: Any) -> str:
    return "none" if value is None else f"{float(value):g}"


def protocol_settings(config: "TrainingConfig") -> dict[str, str]:
    """``config`` described setting by setting in the words of :data:`PENG2019_PAPER`."""
    spec = config.patch_spec
    freeze = config.resolved_freeze()
    normalization = spec.normalization_for(0)
    intensity = (f"HU window {spec.window[0]:g} to {spec.window[1]:g} -> [0, 1]" if normalization == "window"
                 else normalization)
    from TACEResponseLib.imaging.tumours import PATIENT_RULES

    return {
        "framework": "PyTorch + MONAI",
        "architecture": config.architecture,
        "initialisation": "ImageNet" if config.pretrained else "random",
        "frozen": ("convolutional base (layers 1-174)" if config.pretrained and freeze == _AUTO_FREEZE.get(config.architecture)
                   else f"up to {freeze}" if freeze else "nothing"),
        "input_scaling": "torchvision ImageNet mean/SD" if config.resolved_input_scaling(3).applies else "none",
        "intensity": intensity,
        "slice_spacing_mm": _number(spec.slice_spacing_mm),
        "strategy": spec.strategy,
        "patch_size": str(spec.size),
        "n_slices": str(spec.n_slices),
        "patient_rule": PATIENT_RULES[config.patient_rule],
        "class_balancing": "flipped/rotated copies of minority classes" if config.balance else "none",
        "per_epoch_augmentation": "random flip/rotation per patch each epoch" if config.augment else "none reported",
        "iterations_per_epoch": f"balanced patches / {config.batch_size}",
        "loss": "cross-entropy",
        "optimizer": config.optimizer,
        "learning_rate": _number(config.learning_rate),
        "momentum": _number(config.momentum) if config.optimizer == "sgd" else "none (adam)",
        "weight_decay": _number(config.weight_decay),
        "batch_size": str(config.batch_size),
        "epochs": str(config.epochs),
        "validation_fraction": _number(config.validation_fraction),
        "early_stopping": "validation loss" if config.early_stopping else "none",
    }


def protocol_deviations(config: "TrainingConfig", user: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every setting of ``config`` that differs from the paper: ``{setting: {protocol, used, reason}}``.

    ``user``: the fields the user set explicitly (``patch_spec.<name>`` for patch settings); a
    difference they cause says "asked for", the others give :data:`PENG2019_STANDING_DEVIATIONS`'s reason.
    """
    if config.protocol != "peng2019":
        return {}
    used = protocol_settings(config)
    out = {}
    for key, paper in PENG2019_PAPER.items():
        if used[key] == paper:
            continue
        field_name = _SETTING_FIELDS.get(key)
        if field_name in user:
            reason = "asked for by the user"
        else:
            reason = PENG2019_STANDING_DEVIATIONS.get(key, "follows from another setting the user asked for")
        out[key] = {"protocol": paper, "used": used[key], "reason": reason}
    return out


def _per_input_normalization(spec: PatchSpec, modality: str, n_inputs: int) -> PatchSpec:
    """The spec with one normalisation per input: the spec's own, except that MR inputs never get the CT
    window by default (they get :data:`DEFAULT_NORMALIZATION` ``["MR"]``, and the log says so)."""
    from dataclasses import replace

    method = spec.normalization
    if modality == "MR" and method == "window":
        method = DEFAULT_NORMALIZATION["MR"]
        logger.info("MR inputs: normalised by %s, not by the CT window", method)
    return replace(spec, normalizations=[method] * n_inputs)
