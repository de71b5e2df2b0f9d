"""DenseNet-121 as a fixed feature extractor (Zhang 2020): 1024 pooled features per image.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from TACEResponseLib.core.errors import InputError

logger = logging.getLogger(__name__)

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
