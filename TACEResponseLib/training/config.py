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
}


ARCHITECTURE_REFERENCES = {"resnet50": ["peng2019", "he2016"], "resnet18": ["peng2019", "he2016"],
                    "densenet121": ["zhang2020"], "inceptionv4": ["quan2024"], "fusion": ["quan2024"]}


#: what ``protocol="peng2019"`` sets: Peng 2019 as published — every patient trains (no hold-out),
#: no early stopping (the last epoch's weights), SGD with momentum 0.9, lr 1e-4, batch 64, 54
#: epochs, ResNet50, 224-px largest-slice patches resampled to 1 mm through-plane, class
#: balancing with flips and 90°/180°/270° rotations
PROTOCOLS: dict[str, dict[str, Any]] = {
    "peng2019": {"architecture": "resnet50", "validation_fraction": 0.0, "early_stopping": False, "optimizer": "sgd",
                 "learning_rate": 1e-4, "momentum": 0.9, "batch_size": 64, "epochs": 54, "balance": True,
                 "augment": True},
}


#: patch settings of a protocol (applied to the patch spec)
PROTOCOL_PATCHES: dict[str, dict[str, Any]] = {
    "peng2019": {"strategy": "largest_slice", "size": 224, "n_slices": 3, "slice_spacing_mm": 1.0},
}


#: default normalisation of an input by modality: CT gets the HU window, MR never does
DEFAULT_NORMALIZATION = {"CT": "window", "MR": "roi_percentile"}


#: freezing used with ImageNet weights when ``freeze="auto"``: the whole convolutional base (Peng 2019)
_AUTO_FREEZE = {"resnet50": "layer4", "resnet18": "layer4", "densenet121": "features",
                "inceptionv4": "blocks", "fusion": "backbone.blocks"}


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
        ``patch_spec``) win over the protocol and are listed in ``protocol_deviations`` (and logged)."""
        if protocol not in PROTOCOLS:
            raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        overrides = dict(overrides or {})
        patch_overrides = dict(overrides.pop("patch_spec", {}) or {})
        fixed, fixed_patches = PROTOCOLS[protocol], PROTOCOL_PATCHES[protocol]
        deviations = {k: {"protocol": fixed[k], "used": v} for k, v in overrides.items() if k in fixed and fixed[k] != v}
        deviations.update({f"patch_spec.{k}": {"protocol": fixed_patches[k], "used": v}
                           for k, v in patch_overrides.items() if k in fixed_patches and fixed_patches[k] != v})
        if deviations:
            logger.warning("protocol %s with deviations: %s", protocol,
                           ", ".join(f"{k} {d['used']!r} instead of {d['protocol']!r}" for k, d in deviations.items()))
        spec = values.pop("patch_spec", None) or PatchSpec()
        spec_values = {**spec.to_dict(), **fixed_patches, **patch_overrides}
        return cls(**{**values, **fixed, **overrides, "protocol": protocol, "protocol_deviations": deviations,
                      "patch_spec": PatchSpec.from_dict(spec_values)})

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


def _per_input_normalization(spec: PatchSpec, modality: str, n_inputs: int) -> PatchSpec:
    """The spec with one normalisation per input: the spec's own, except that MR inputs never get the CT
    window by default (they get :data:`DEFAULT_NORMALIZATION` ``["MR"]``, and the log says so)."""
    from dataclasses import replace

    method = spec.normalization
    if modality == "MR" and method == "window":
        method = DEFAULT_NORMALIZATION["MR"]
        logger.info("MR inputs: normalised by %s, not by the CT window", method)
    return replace(spec, normalizations=[method] * n_inputs)
