"""Response networks of the three reproduced papers, ImageNet weight loading, freezing and CAM names.

============  ==============================================  =========  ======================
name          network                                         input      paper
============  ==============================================  =========  ======================
resnet50      MONAI ``resnet50`` laid out like torchvision's  224×224    Peng 2019 (TACE)
resnet18      MONAI ``resnet18`` laid out like torchvision's  224×224    smaller, for fast demos
densenet121   MONAI ``DenseNet121``                           224×224    Zhang 2020 (survival)
inceptionv4   :class:`InceptionV4` (plain torch, ``width``)   299×299    Quan 2024 (HAIC)
fusion        :class:`FusionNet`: InceptionV4 + clinical      299×299    Quan 2024 (HAIC)
============  ==============================================  =========  ======================

No torchvision (it cannot be imported here) and no download: ImageNet weights come from a
local state-dict file in torchvision layout (Cadene/timm layout for InceptionV4, which
torchvision does not have) and :func:`load_pretrained` maps its keys onto these modules.
Every network is 2-D, takes ``(N, in_channels, H, W)`` and returns ``(N, num_classes)``
logits; :func:`cam_layers` names the layers ``monai.visualize.CAM``/``GradCAM`` need.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .errors import BundleError, InputError

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURES", "ArchitectureSpec", "ClinicalScaler", "DenseNetFeatureExtractor", "FusionNet",
    "InceptionV4", "LoadReport", "PENG2019_FROZEN_STAGE", "build_network", "cam_layers",
    "architectures", "count_parameters", "densenet_features", "freeze_batchnorm_statistics", "freeze_layers",
    "load_pretrained",
]

#: Peng 2019 froze "layers 1–174" of Keras' ResNet50. keras.applications.ResNet50 without its
#: top has 175 layers (input, conv1 pad/conv/bn/relu, pool pad/pool = 7, then 4 first blocks of
#: 12 layers and 12 identity blocks of 10 = 168, up to ``conv5_block3_out``), so layers 1–174
#: are the whole convolutional base and only the new classifier is trained. Here that is
#: ``freeze_layers(model, "layer4")``: conv1, bn1 and layer1–layer4 (159 parameter tensors)
#: frozen, ``fc`` trained.
PENG2019_FROZEN_STAGE = "layer4"


# --------------------------------------------------------------------------------------
# InceptionV4 (Szegedy 2017) in plain torch
# --------------------------------------------------------------------------------------
# Module and parameter names follow Cadene's pretrained-models / timm port (``features.<i>`` →
# ``blocks.<i>`` and ``last_linear`` → ``fc`` here), so their ImageNet state dict loads through
# :func:`load_pretrained`. ``width`` scales every convolution's output channels; 1.0 is the
# published network (1536 pooled features).


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3 as in the TensorFlow original), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _chain(in_ch: int, *layers: tuple) -> nn.Sequential:
    """``_ConvBN`` layers in sequence; each tuple is ``(out_ch, kernel, stride=1, padding=0)``."""
    modules = []
    for out_ch, *rest in layers:
        modules.append(_ConvBN(in_ch, out_ch, *rest))
        in_ch = out_ch
    seq = nn.Sequential(*modules)
    seq.out_channels = in_ch  # type: ignore[assignment]
    return seq


def _avg_branch(in_ch: int, out_ch: int) -> nn.Sequential:
    seq = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), _ConvBN(in_ch, out_ch, 1))
    seq.out_channels = out_ch  # type: ignore[assignment]
    return seq


class _Concat(nn.Module):
    """Runs the named branches on the same input and concatenates them along channels."""

    branch_names: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, name)(x) for name in self.branch_names], 1)


class _Mixed3a(_Concat):
    branch_names = ("maxpool", "conv")

    def __init__(self, in_ch: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.conv = _ConvBN(in_ch, c(96), 3, stride=2)
        self.out_channels = in_ch + c(96)


class _Mixed4a(_Concat):
    branch_names = ("branch0", "branch1")

    def __init__(self, in_ch: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.branch0 = _chain(in_ch, (c(64), 1), (c(96), 3))
        self.branch1 = _chain(in_ch, (c(64), 1), (c(64), (1, 7), 1, (0, 3)), (c(64), (7, 1), 1, (3, 0)), (c(96), 3))
        self.out_channels = 2 * c(96)


class _Mixed5a(_Concat):
    branch_names = ("conv", "maxpool")

    def __init__(self, in_ch: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.conv = _ConvBN(in_ch, c(192), 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.out_channels = c(192) + in_ch


class _InceptionA(_Concat):
    branch_names = ("branch0", "branch1", "branch2", "branch3")

    def __init__(self, in_ch: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.branch0 = _ConvBN(in_ch, c(96), 1)
        self.branch1 = _chain(in_ch, (c(64), 1), (c(96), 3, 1, 1))
        self.branch2 = _chain(in_ch, (c(64), 1), (c(96), 3, 1, 1), (c(96), 3, 1, 1))
        self.branch3 = _avg_branch(in_ch, c(96))
        self.out_channels = 4 * c(96)


class _ReductionA(_Concat):
    branch_names = ("branch0", "branch1", "branch2")

    def __init__(self, in_ch: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.branch0 = _ConvBN(in_ch, c(384), 3, stride=2)
        self.branch1 = _chain(in_ch, (c(192), 1), (c(224), 3, 1, 1), (c(256), 3, 2))
        self.branch2 = nn.MaxPool2d(3, stride=2)
        self.out_channels = c(384) + c(256) + in_ch


class _InceptionB(_Concat):
    branch_names = ("branch0", "branch1", "branch2", "branch3")

    def __init__(self, in_ch: int, c: Callable[[int], int]) -> None:
        super().__init__()
        h, v = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
        self.branch0 = _ConvBN(in_ch, c(384), 1)
        self.branch1 = _chain(in_ch, (c(192), 1), (c(224), *h), (c(256), *v))
        self.branch2 = _chain(in_ch, (c(192), 1), (c(192), *v), (c(224), *h), (c(224), *v), (c(256), *h))
        self.branch3 = _avg_branch(in_ch, c(128))
        self.out_channels = c(384) + 2 * c(256) + c(128)


class _ReductionB(_Concat):
    branch_names = ("branch0", "branch1", "branch2")

    def __init__(self, in_ch: int, c: Callable[[int], int]) -> None:
        super().__init__()
        self.branch0 = _chain(in_ch, (c(192), 1), (c(192), 3, 2))
        self.branch1 = _chain(in_ch, (c(256), 1), (c(256), (1, 7), 1, (0, 3)), (c(320), (7, 1), 1, (3, 0)),
                              (c(320), 3, 2))
        self.branch2 = nn.MaxPool2d(3, stride=2)
        self.out_channels = c(192) + c(320) + in_ch


class _InceptionC(nn.Module):
    def __init__(self, in_ch: int, c: Callable[[int], int]) -> None:
        super().__init__()
        h, v = ((1, 3), 1, (0, 1)), ((3, 1), 1, (1, 0))
        self.branch0 = _ConvBN(in_ch, c(256), 1)
        self.branch1_0 = _ConvBN(in_ch, c(384), 1)
        self.branch1_1a = _ConvBN(c(384), c(256), *h)
        self.branch1_1b = _ConvBN(c(384), c(256), *v)
        self.branch2_0 = _ConvBN(in_ch, c(384), 1)
        self.branch2_1 = _ConvBN(c(384), c(448), *v)
        self.branch2_2 = _ConvBN(c(448), c(512), *h)
        self.branch2_3a = _ConvBN(c(512), c(256), *h)
        self.branch2_3b = _ConvBN(c(512), c(256), *v)
        self.branch3 = _avg_branch(in_ch, c(256))
        self.out_channels = 6 * c(256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.branch1_0(x)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat([self.branch0(x), self.branch1_1a(x1), self.branch1_1b(x1),
                          self.branch2_3a(x2), self.branch2_3b(x2), self.branch3(x)], 1)


class InceptionV4(nn.Module):
    """InceptionV4: stem, Inception-A×4, Reduction-A, Inception-B×7, Reduction-B, Inception-C×3.

    ``blocks`` holds the 22 stages in order (index 0–2 stem convolutions, 3–5 mixed stem
    blocks, 6–9 A, 10 reduction A, 11–17 B, 18 reduction B, 19–21 C); global average pooling
    gives ``num_features`` (1536 at ``width`` 1.0) and ``fc`` the logits. ``num_classes=None``
    leaves out ``fc`` (a backbone whose forward returns the pooled features). Inputs smaller
    than ``MIN_INPUT_SIZE`` pixels vanish in the unpadded stride-2 convolutions and are refused.
    """

    MIN_INPUT_SIZE = 75

    def __init__(self, num_classes: int | None = 1000, in_channels: int = 3, width: float = 1.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not (isinstance(width, (int, float)) and 0.0 < width <= 4.0):
            raise InputError(f"InceptionV4 width (channel multiplier) must be in (0, 4], got {width!r}")

        def c(n: int) -> int:
            return max(1, int(round(n * width)))

        stages: list[nn.Module] = [_ConvBN(in_channels, c(32), 3, stride=2), _ConvBN(c(32), c(32), 3),
                                   _ConvBN(c(32), c(64), 3, padding=1)]
        for block in [_Mixed3a, _Mixed4a, _Mixed5a] + [_InceptionA] * 4 + [_ReductionA] + [_InceptionB] * 7 \
                + [_ReductionB] + [_InceptionC] * 3:
            stages.append(block(stages[-1].out_channels, c))  # type: ignore[arg-type]
        self.blocks = nn.Sequential(*stages)
        self.width = float(width)
        self.in_channels = in_channels
        self.num_features = int(stages[-1].out_channels)  # type: ignore[arg-type]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes is not None else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled output of the last Inception-C block, ``(N, num_features)``."""
        if x.ndim != 4 or min(x.shape[-2:]) < self.MIN_INPUT_SIZE:
            raise InputError(f"InceptionV4 needs (N, C, H, W) input with H, W ≥ {self.MIN_INPUT_SIZE}, "
                             f"got shape {tuple(x.shape)}")
        return torch.flatten(self.pool(self.blocks(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x)
        return pooled if self.fc is None else self.fc(self.dropout(pooled))


class FusionNet(nn.Module):
    """Image backbone features concatenated with standardised clinical factors → class logits.

    The default head (``hidden=0``) is one linear layer on ``[image features, clinical]``,
    stored as two blocks so that CAM works: ``image_head`` (features → classes, with the bias)
    plus ``clinical_head`` (clinical → classes, no bias). The sum is exactly a linear layer on
    the concatenation; a CAM with ``fc_layers="image_head"`` shows the image's share of the
    logit, the clinical share being one constant per class. ``hidden > 0`` puts an MLP
    (``mlp``: linear, ReLU, dropout, linear) on the concatenation instead; then only Grad-CAM
    applies. ``n_clinical=0`` is an image-only classifier with the same backbone.
    """

    def __init__(self, backbone: nn.Module, n_clinical: int, num_classes: int = 2, hidden: int = 0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not hasattr(backbone, "features") or not hasattr(backbone, "num_features"):
            raise InputError("FusionNet backbone needs a .features(x) method and .num_features")
        if n_clinical < 0 or hidden < 0:
            raise InputError(f"FusionNet n_clinical and hidden must be ≥ 0, got {n_clinical} and {hidden}")
        self.backbone = backbone
        self.n_clinical = int(n_clinical)
        self.num_features = int(backbone.num_features)
        self.dropout = nn.Dropout(dropout)
        self.image_head: nn.Linear | None = None
        self.clinical_head: nn.Linear | None = None
        self.mlp: nn.Sequential | None = None
        if hidden == 0:
            self.image_head = nn.Linear(self.num_features, num_classes)
            if n_clinical:
                self.clinical_head = nn.Linear(n_clinical, num_classes, bias=False)
        else:
            self.mlp = nn.Sequential(nn.Linear(self.num_features + n_clinical, hidden), nn.ReLU(inplace=True),
                                     nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled image features of the backbone, ``(N, num_features)``."""
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.dropout(self.features(x))
        if self.n_clinical == 0:
            if clinical is not None and clinical.numel():
                raise InputError(f"this FusionNet takes no clinical factors, got shape {tuple(clinical.shape)}")
            clinical = pooled.new_zeros((pooled.shape[0], 0))
        elif clinical is None or tuple(clinical.shape) != (pooled.shape[0], self.n_clinical):
            got = None if clinical is None else tuple(clinical.shape)
            raise InputError(f"FusionNet needs clinical factors of shape ({pooled.shape[0]}, {self.n_clinical}) "
                             f"(standardised with the model's ClinicalScaler), got {got}")
        clinical = clinical.to(pooled.dtype)
        if self.mlp is not None:
            return self.mlp(torch.cat([pooled, clinical], 1))
        logits = self.image_head(pooled)  # type: ignore[misc]
        return logits if self.clinical_head is None else logits + self.clinical_head(clinical)


# --------------------------------------------------------------------------------------
# Clinical factors
# --------------------------------------------------------------------------------------


@dataclass
class ClinicalScaler:
    """Names of the clinical factors, in the order the network sees them, and their z-scores.

    Stored in the model bundle, so inference standardises exactly as training did. Values must
    be numbers (encode categories such as Child-Pugh or BCLC class as numbers first).
    """

    names: list[str]
    means: list[float]
    stds: list[float]

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.means = [float(m) for m in self.means]
        self.stds = [float(s) for s in self.stds]
        if not (len(self.names) == len(self.means) == len(self.stds)):
            raise InputError(f"clinical scaler: {len(self.names)} names, {len(self.means)} means and "
                             f"{len(self.stds)} stds; they must have equal lengths")
        if len(set(self.names)) != len(self.names):
            raise InputError(f"clinical scaler: duplicate factor names in {self.names}")
        bad = [n for n, m, s in zip(self.names, self.means, self.stds)
               if not (math.isfinite(m) and math.isfinite(s) and s > 0)]
        if bad:
            raise InputError(f"clinical scaler: factor(s) {bad} need a finite mean and a finite std > 0")

    @staticmethod
    def _matrix(names: Sequence[str], rows: Any) -> np.ndarray:
        """``(len(rows), len(names))`` float64 array; one InputError listing every bad value."""
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
            rows = rows.to_dict("records")
        if isinstance(rows, Mapping):
            rows = [rows]
        out = np.empty((len(rows), len(names)), dtype=np.float64)
        problems: list[str] = []
        for i, row in enumerate(rows):
            for j, name in enumerate(names):
                if name not in row:
                    problems.append(f"row {i}: clinical factor {name!r} is missing")
                    continue
                value = row[name]
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                if not math.isfinite(number):
                    problems.append(f"row {i}: clinical factor {name!r} is not a finite number ({value!r})")
                out[i, j] = number
        if problems:
            shown = "; ".join(problems[:10]) + (f"; … and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise InputError(f"{len(problems)} unusable clinical value(s): {shown}")
        return out

    @classmethod
    def fit(cls, names: Sequence[str], rows: Any) -> "ClinicalScaler":
        """Means and population standard deviations of the training rows (std 0 → 1, with a warning)."""
        values = cls._matrix(list(names), rows)
        if values.shape[0] == 0:
            raise InputError("clinical scaler: no rows to fit")
        stds = values.std(axis=0)
        for name, std in zip(names, stds):
            if std == 0:
                logger.warning("clinical factor %r is constant in the training rows; it is only centred", name)
        return cls(list(names), values.mean(axis=0).tolist(), np.where(stds > 0, stds, 1.0).tolist())

    def transform(self, rows: Any) -> np.ndarray:
        """Standardised ``(N, n_factors)`` float32 array from a mapping, a list of mappings or a DataFrame."""
        values = self._matrix(self.names, rows)
        return ((values - np.asarray(self.means)) / np.asarray(self.stds)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClinicalScaler":
        missing = [k for k in ("names", "means", "stds") if k not in data]
        if missing:
            raise BundleError(f"clinical factor scaling lacks {missing} (has {sorted(data)})")
        return cls(list(data["names"]), list(data["means"]), list(data["stds"]))


# --------------------------------------------------------------------------------------
# DenseNet-121 features (Zhang 2020)
# --------------------------------------------------------------------------------------


def densenet_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 1024 globally pooled DenseNet-121 features per image: ``features`` → ReLU → pool → flatten.

    Exactly the input of ``class_layers.out``, the ImageNet classifier that Zhang 2020 dropped.
    """
    layers = getattr(model, "class_layers", None)
    if layers is None or not hasattr(model, "features"):
        raise InputError(f"densenet_features needs a MONAI DenseNet, got {type(model).__name__}")
    return layers.flatten(layers.pool(layers.relu(model.features(x))))


class DenseNetFeatureExtractor(nn.Module):
    """A DenseNet used as a fixed feature extractor: ``forward(x)`` is :func:`densenet_features`."""

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.densenet = densenet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return densenet_features(self.densenet, x)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

_DENSE_LAYER_KEY = re.compile(
    r"^(.*\.denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def _rename_resnet(key: str) -> str:
    return key  # MONAI's ResNet uses torchvision's names when built as in _build_resnet


def _rename_densenet(key: str) -> str:
    # torchvision: features.denseblockB.denselayerN.norm1.* (old files: norm.1.*); MONAI: ...denselayerN.layers.norm1.*
    key = _DENSE_LAYER_KEY.sub(r"\1.layers.\2\3.\4", key)
    return "class_layers.out." + key[len("classifier."):] if key.startswith("classifier.") else key


def _rename_inception(key: str) -> str:
    # Cadene / timm: features.<i>.* and last_linear.*
    if key.startswith("features."):
        return "blocks." + key[len("features."):]
    if key.startswith("last_linear."):
        return "fc." + key[len("last_linear."):]
    return key


def _build_resnet(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        from monai.networks.nets import resnet18, resnet50

        factory = {18: resnet18, 50: resnet50}[depth]
        # 2-D, 7×7 stride-2 stem and bias-free 1×1 projection shortcuts: torchvision's layout.
        return factory(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, conv1_t_size=7,
                       conv1_t_stride=2, shortcut_type="B", bias_downsample=False)
    return build


def _build_densenet121(num_classes: int, in_channels: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)


def _build_inceptionv4(num_classes: int, in_channels: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
    return InceptionV4(num_classes, in_channels, width=width, dropout=dropout)


def _build_fusion(num_classes: int, in_channels: int, width: float = 1.0, n_clinical: int = 0, hidden: int = 0,
                  dropout: float = 0.0) -> nn.Module:
    backbone = InceptionV4(None, in_channels, width=width)
    return FusionNet(backbone, n_clinical=n_clinical, num_classes=num_classes, hidden=hidden, dropout=dropout)


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the library knows about one architecture: how to build it, load ImageNet weights, explain it."""

    name: str
    paper: str
    input_size: int
    build: Callable[..., nn.Module]
    rename: Callable[[str], str]       # key in the ImageNet file → key in this network
    first_conv: str                    # weight adapted when in_channels != 3
    head: tuple[str, ...]              # key prefixes of the classifier head (not taken from ImageNet)
    cam_target: str                    # layer whose activation the CAM weights
    cam_fc: str | None                 # linear layer applied per position (None: Grad-CAM only)
    options: tuple[str, ...] = field(default=())


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec for spec in [
        ArchitectureSpec("resnet50", "Peng 2019", 224, _build_resnet(50), _rename_resnet, "conv1.weight",
                         ("fc.",), "layer4", "fc"),
        ArchitectureSpec("resnet18", "smaller ResNet for fast demo training", 224, _build_resnet(18),
                         _rename_resnet, "conv1.weight", ("fc.",), "layer4", "fc"),
        ArchitectureSpec("densenet121", "Zhang 2020", 224, _build_densenet121, _rename_densenet,
                         "features.conv0.weight", ("class_layers.out.",), "class_layers.relu", "class_layers.out"),
        ArchitectureSpec("inceptionv4", "Quan 2024", 299, _build_inceptionv4, _rename_inception,
                         "blocks.0.conv.weight", ("fc.",), "blocks", "fc", ("width", "dropout")),
        ArchitectureSpec("fusion", "Quan 2024 (image + clinical)", 299, _build_fusion,
                         lambda key: "backbone." + _rename_inception(key), "backbone.blocks.0.conv.weight",
                         ("backbone.fc.", "image_head.", "clinical_head.", "mlp."), "backbone.blocks", "image_head",
                         ("width", "n_clinical", "hidden", "dropout")),
    ]
}


def _spec(architecture: str) -> ArchitectureSpec:
    try:
        return ARCHITECTURES[architecture]
    except (KeyError, TypeError):
        raise InputError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}") from None


def build_network(architecture: str, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """A freshly initialised network from the registry (see the module table).

    Options: ``inceptionv4`` takes ``width`` and ``dropout``; ``fusion`` takes ``width``,
    ``n_clinical``, ``hidden`` and ``dropout`` (see :class:`FusionNet`); the others none.
    """
    spec = _spec(architecture)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise InputError(f"architecture {architecture!r} has no option(s) {unknown}; "
                         f"it takes {list(spec.options) or 'none'}")
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{label} must be a positive integer, got {value!r}")
    return spec.build(num_classes, in_channels, **options)


def cam_layers(architecture: str, **options: Any) -> tuple[str, str | None]:
    """``(target_layers, fc_layers)`` for ``monai.visualize.CAM`` (the target alone serves GradCAM).

    ``fc`` is ``None`` where plain CAM does not apply (a fusion network with an MLP head,
    ``hidden > 0``): use Grad-CAM on the target layer then.
    """
    spec = _spec(architecture)
    if architecture == "fusion" and options.get("hidden", 0):
        return spec.cam_target, None
    return spec.cam_target, spec.cam_fc


# --------------------------------------------------------------------------------------
# ImageNet weights from a local file
# --------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did with each tensor of the file."""

    path: str
    architecture: str
    loaded: list[str] = field(default_factory=list)    # network keys filled from the file
    adapted: list[str] = field(default_factory=list)   # first convolution re-shaped for in_channels
    skipped: list[str] = field(default_factory=list)   # file keys of the ImageNet classifier, not used
    kept: list[str] = field(default_factory=list)      # network keys left as they were (head, BN counters)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.path} into {self.architecture}"]
        if self.adapted:
            parts.append(f"adapted first convolution {self.adapted}")
        if self.skipped:
            parts.append(f"skipped ImageNet classifier {self.skipped}")
        head = [k for k in self.kept if not k.endswith("num_batches_tracked")]
        if head:
            parts.append(f"{len(head)} head tensor(s) keep their initialisation")
        return "; ".join(parts)


def _listing(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', …' if len(keys) > limit else ''})"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"pretrained weights file {path} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: the file is unusable
        raise InputError(f"pretrained weights file {path} cannot be read as a PyTorch state dict "
                         f"({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(f"pretrained weights file {path} holds {type(obj).__name__}, not a non-empty state dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise InputError(f"pretrained weights file {path}: entries that are not named tensors: {_listing(bad)}")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB kernel ``(O, 3, kh, kw)`` → ``(O, in_channels, kh, kw)``: the RGB sum spread evenly.

    Every input channel gets ``sum_rgb(w) / in_channels``, so an image repeated on all input
    channels gives exactly the response the RGB network gives to that grey image as RGB.
    """
    return weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels


def load_pretrained(model: nn.Module, path: str | Path, architecture: str) -> LoadReport:
    """Load ImageNet weights from a local torchvision-layout state dict (never downloads).

    Keys are mapped onto the MONAI / local modules (``ArchitectureSpec.rename``); every network
    tensor outside the classifier head must come from the file with its exact shape, except
    the first convolution when ``in_channels`` is not 3 (RGB kernel averaged, see
    :func:`_adapt_first_conv`) and BatchNorm ``num_batches_tracked`` counters, which old files
    lack. The ImageNet classifier is loaded only when its shape fits (1000 classes) and is
    otherwise skipped and reported. Anything else — a missing or unreadable file, keys with no
    place in the network, network keys absent from the file, other shape mismatches — raises
    :class:`InputError` naming the file and listing the keys.
    """
    spec = _spec(architecture)
    path = Path(path)
    source = _read_state_dict(path)
    target = model.state_dict()
    report = LoadReport(str(path), architecture)
    values: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for file_key, tensor in source.items():
        key = spec.rename(file_key)
        is_head = key.startswith(spec.head)
        if key not in target:
            if is_head:
                report.skipped.append(key)
            else:
                unexpected.append(file_key)
        elif tensor.shape == target[key].shape:
            values[key] = tensor
        elif is_head:
            report.skipped.append(key)
        elif (key == spec.first_conv and tensor.ndim == 4 and tensor.shape[1] == 3
              and tensor.shape[0] == target[key].shape[0] and tensor.shape[2:] == target[key].shape[2:]):
            values[key] = _adapt_first_conv(tensor, target[key].shape[1])
            report.adapted.append(f"{key}: 3 → {target[key].shape[1]} input channels")
        else:
            mismatched.append(f"{key} file {tuple(tensor.shape)} vs network {tuple(target[key].shape)}")
    missing = [k for k in target if k not in values and not k.startswith(spec.head)
               and not k.endswith("num_batches_tracked")]
    if unexpected or missing or mismatched:
        problems = []
        if unexpected:
            problems.append(f"file keys with no place in the network: {_listing(unexpected)}")
        if missing:
            problems.append(f"network keys absent from the file: {_listing(missing)}")
        if mismatched:
            problems.append(f"shape mismatches: {_listing(mismatched, 3)}")
        raise InputError(f"pretrained weights file {path} does not fit architecture {architecture!r}: "
                         + "; ".join(problems))
    report.loaded = sorted(values)
    report.kept = [k for k in target if k not in values]
    model.load_state_dict({**target, **values}, strict=True)
    logger.info(report.summary())
    return report


# --------------------------------------------------------------------------------------
# Freezing (transfer learning)
# --------------------------------------------------------------------------------------


def freeze_layers(model: nn.Module, n_frozen: int | str) -> list[str]:
    """Freeze the first parameters of ``model`` in registration order; unfreeze the rest.

    ``n_frozen`` is either a **stage name** — every parameter up to and including the last one
    under that module prefix is frozen (ResNet: ``"layer3"`` freezes conv1, bn1, layer1–3;
    DenseNet: ``"features.denseblock3"``; InceptionV4: ``"blocks.17"``) — or an **integer
    count of parameter tensors** (weights and biases counted separately; not Keras layers). For
    Peng 2019 use :data:`PENG2019_FROZEN_STAGE`. Returns the frozen parameter names. Frozen
    BatchNorm layers still update their running statistics in ``train()`` mode; call
    :func:`freeze_batchnorm_statistics` after ``model.train()`` to stop that (as Keras does).
    """
    names = [name for name, _ in model.named_parameters()]
    if isinstance(n_frozen, bool) or not isinstance(n_frozen, (int, str)):
        raise InputError(f"n_frozen must be a stage name or a parameter count, got {n_frozen!r}")
    if isinstance(n_frozen, int):
        if not 0 <= n_frozen <= len(names):
            raise InputError(f"n_frozen={n_frozen} parameter tensors, but {type(model).__name__} has {len(names)}")
        cut = n_frozen
    else:
        hits = [i for i, name in enumerate(names) if name == n_frozen or name.startswith(n_frozen + ".")]
        if not hits:
            stages = list(dict.fromkeys(name.split(".")[0] for name in names))
            raise InputError(f"freeze stage {n_frozen!r} names no parameters of {type(model).__name__}; "
                             f"top-level stages are {stages} (dotted sub-modules such as 'layer3.1' also work)")
        cut = hits[-1] + 1
    for i, (_, param) in enumerate(model.named_parameters()):
        param.requires_grad_(i >= cut)
    logger.info("froze %d of %d parameter tensors of %s", cut, len(names), type(model).__name__)
    return names[:cut]


def freeze_batchnorm_statistics(model: nn.Module) -> int:
    """Put every BatchNorm whose parameters are all frozen in eval mode; returns how many.

    Call after each ``model.train()``: frozen layers then normalise with their (ImageNet)
    running statistics instead of the batch's, and do not update them.
    """
    count = 0
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
            module.eval()
            count += 1
    return count


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values (all, or only those that require gradients)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def architectures() -> tuple[str, ...]:
    """Names accepted by :func:`build_network`."""
    return tuple(ARCHITECTURES)
