"""InceptionV4 (Szegedy 2017) in plain torch and the image + clinical fusion network (Quan 2024).

Module and parameter names follow Cadene's pretrained-models / timm port (``features.<i>`` →
``blocks.<i>`` and ``last_linear`` → ``fc`` here), so their ImageNet state dict loads through
:func:`TACEResponseLib.networks.pretrained.load_pretrained`. ``width`` scales every
convolution's output channels; 1.0 is the published network (1536 pooled features).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from TACEResponseLib.core.errors import InputError

logger = logging.getLogger(__name__)

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
