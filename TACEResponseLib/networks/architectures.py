"""Response networks of the three reproduced papers: what each is, how to build it, how to explain it.

============  ==============================================  =========  ======================
name          network                                         input      paper
============  ==============================================  =========  ======================
resnet50      MONAI ``resnet50`` laid out like torchvision's  224×224    Peng 2019 (TACE)
resnet18      MONAI ``resnet18`` laid out like torchvision's  224×224    smaller, for fast demos
densenet121   MONAI ``DenseNet121``                           224×224    Zhang 2020 (survival)
inceptionv4   :class:`InceptionV4` (plain torch, ``width``)   299×299    Quan 2024 (HAIC)
fusion        :class:`FusionNet`: InceptionV4 + clinical      299×299    Quan 2024 (HAIC)
alexnet       :class:`AlexNet` laid out like torchvision's   224×224    Quan 2024's candidates
============  ==============================================  =========  ======================

No torchvision (it cannot be imported here) and no download. Every network is 2-D, takes
``(N, in_channels, H, W)`` and returns ``(N, num_classes)`` logits; :func:`cam_layers` names
the layers ``monai.visualize.CAM``/``GradCAM`` need; :class:`ArchitectureSpec` says how an
ImageNet file's keys map onto each network. Importing this module does not import torch (the
builders do), so the prediction path can name layers without it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from TACEResponseLib.core.errors import InputError

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

#: Peng 2019 trained in MATLAB (Deep Learning Toolbox) and froze "layers 1–174" of its ResNet50.
#: MATLAB's ``resnet50`` layer graph has 177 layers, the last three being ``fc1000``, its softmax
#: and the classification output, so layers 1–174 end at the global average pooling: the whole
#: convolutional base is frozen and only the new classifier is trained. Here that is
#: ``freeze_layers(model, "layer4")``: conv1, bn1 and layer1–layer4 (159 parameter tensors)
#: frozen, ``fc`` trained.
PENG2019_FROZEN_STAGE = "layer4"


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


def _build_resnet(depth: int) -> Callable[..., "nn.Module"]:
    def build(num_classes: int, in_channels: int) -> "nn.Module":
        from monai.networks.nets import resnet18, resnet50

        factory = {18: resnet18, 50: resnet50}[depth]
        # 2-D, 7×7 stride-2 stem and bias-free 1×1 projection shortcuts: torchvision's layout.
        return factory(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, conv1_t_size=7,
                       conv1_t_stride=2, shortcut_type="B", bias_downsample=False)
    return build


def _build_densenet121(num_classes: int, in_channels: int) -> "nn.Module":
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)


def _build_inceptionv4(num_classes: int, in_channels: int, width: float = 1.0, dropout: float = 0.0) -> "nn.Module":
    from TACEResponseLib.networks.inception import InceptionV4

    return InceptionV4(num_classes, in_channels, width=width, dropout=dropout)


def _build_alexnet(num_classes: int, in_channels: int, dropout: float = 0.5) -> "nn.Module":
    from torch import nn

    class AlexNet(nn.Module):
        """Krizhevsky et al. 2012 in torchvision's layout (``features``, ``avgpool``, ``classifier``), so
        torchvision's ImageNet file loads; no in-place ReLU, so Grad-CAM's hooks see every activation."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
                nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)).flatten(1))

    return AlexNet()


def _build_fusion(num_classes: int, in_channels: int, width: float = 1.0, n_clinical: int = 0, hidden: int = 0,
                  dropout: float = 0.0) -> "nn.Module":
    from TACEResponseLib.networks.inception import FusionNet, InceptionV4

    backbone = InceptionV4(None, in_channels, width=width)
    return FusionNet(backbone, n_clinical=n_clinical, num_classes=num_classes, hidden=hidden, dropout=dropout)


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the library knows about one architecture: how to build it, load ImageNet weights, explain it."""

    name: str
    paper: str
    input_size: int
    build: Callable[..., "nn.Module"]
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
        # the classifier is three fully connected layers, not a linear head on pooled features: Grad-CAM only
        ArchitectureSpec("alexnet", "Quan 2024's candidates (Krizhevsky 2012)", 224, _build_alexnet, lambda key: key,
                         "features.0.weight", ("classifier.6.",), "features", None, ("dropout",)),
    ]
}


def architecture_spec(architecture: str) -> ArchitectureSpec:
    try:
        return ARCHITECTURES[architecture]
    except (KeyError, TypeError):
        raise InputError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}") from None


def build_network(architecture: str, num_classes: int, in_channels: int = 3, **options: Any) -> "nn.Module":
    """A freshly initialised network from the registry (see the module table).

    Options: ``inceptionv4`` takes ``width`` and ``dropout``; ``fusion`` takes ``width``,
    ``n_clinical``, ``hidden`` and ``dropout`` (see :class:`FusionNet`); ``alexnet`` takes
    ``dropout``; the others none.
    """
    spec = architecture_spec(architecture)
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
    spec = architecture_spec(architecture)
    if architecture == "fusion" and options.get("hidden", 0):
        return spec.cam_target, None
    return spec.cam_target, spec.cam_fc


def architectures() -> tuple[str, ...]:
    """Names accepted by :func:`build_network`."""
    return tuple(ARCHITECTURES)
