"""The input scaling a network's weights were trained with: the one place it is chosen and applied.

ImageNet weights expect each channel of a ``[0, 1]`` image standardised with ImageNet's
per-channel mean and SD (``(x − mean) / std``; RGB mean 0.485, 0.456, 0.406, SD 0.229,
0.224, 0.225). A network trained from random initialisation on ``[0, 1]`` patches takes them
as they are. The scaling is stored in the model card (``input_scaling``) and applied by
:func:`scale_inputs` wherever patches meet a network: training, evaluation, prediction and its
CAM, and deep-feature extraction. A card without the field is read as ``none`` — what every
bundle written before the field existed was trained with — so old bundles predict as before.

Patches z-scored inside the ROI (Zhang 2020's deep features) are already standardised
(mean 0, SD 1), which is what ImageNet standardisation produces from a ``[0, 1]`` image, so
they take no further scaling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord

logger = logging.getLogger(__name__)

#: ImageNet's per-channel (R, G, B) mean and SD of images scaled to [0, 1]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALINGS = ("auto", "imagenet", "none")
#: patch normalisations whose values lie in [0, 1] (ImageNet scaling applies to these)
UNIT_RANGE_NORMALIZATIONS = ("window", "percentile", "roi_percentile")


@dataclass
class InputScaling(JsonRecord):
    """``(x − mean[c]) / std[c]`` per channel c, or nothing (``name == "none"``)."""

    name: str = "none"
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def applies(self) -> bool:
        return self.name != "none"


NO_SCALING = InputScaling("none", note="patches go into the network as normalised (no ImageNet standardisation)")


def imagenet_scaling(in_channels: int) -> InputScaling:
    """ImageNet's mean/SD for ``in_channels`` channels: RGB for 3, otherwise the mean over R, G, B on every
    channel (the first convolution of such a network is the RGB kernel averaged)."""
    if in_channels == 3:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    else:
        mean = [float(np.mean(IMAGENET_MEAN))] * in_channels
        std = [float(np.mean(IMAGENET_STD))] * in_channels
    return InputScaling("imagenet", [round(m, 6) for m in mean], [round(s, 6) for s in std],
                        "ImageNet per-channel standardisation of [0, 1] patches: (x - mean) / std")


def resolve_input_scaling(choice: str, pretrained: bool, normalizations: Sequence[str], in_channels: int) -> InputScaling:
    """The scaling for a network: ``auto`` = ImageNet with ImageNet weights on ``[0, 1]`` patches, else none.

    Raises:
        InputError: ``imagenet`` asked for z-scored patches (already standardised) or an unknown choice.
    """
    if choice not in SCALINGS:
        raise InputError(f"input scaling must be one of {', '.join(SCALINGS)}, got {choice!r}")
    unit_range = all(n in UNIT_RANGE_NORMALIZATIONS for n in normalizations)
    if choice == "imagenet" and not unit_range:
        raise InputError(f"input scaling 'imagenet' standardises [0, 1] patches, but the patches are normalised "
                         f"{list(normalizations)}; z-scored patches are already standardised — use 'none'")
    if choice == "imagenet" or (choice == "auto" and pretrained and unit_range):
        return imagenet_scaling(in_channels)
    if choice == "auto" and pretrained:
        return InputScaling("none", note="z-scored patches are already standardised (mean 0, SD 1) as ImageNet "
                                         "inputs are; no further scaling")
    return NO_SCALING


def scaling_of(value: Any) -> InputScaling:
    """The scaling a card or settings field holds: missing / ``"none"`` → none; a mapping → that scaling."""
    if value is None or value == "none":
        return NO_SCALING
    if isinstance(value, InputScaling):
        return value
    if isinstance(value, dict):
        scaling = InputScaling.from_dict(value, source="input_scaling")
        if scaling.applies and (not scaling.mean or len(scaling.mean) != len(scaling.std)
                                or not all(s > 0 for s in scaling.std)):
            raise InputError(f"input_scaling: mean and std must be lists of the same length with std > 0, got "
                             f"{scaling.mean} and {scaling.std}")
        return scaling
    raise InputError(f"input_scaling must be 'none' or a mapping with mean and std, got {value!r}")


def scale_inputs(images: Any, scaling: Any) -> Any:
    """Apply ``scaling`` to patches ``(N, C, H, W)`` (numpy array or torch tensor); returns a new array.

    Raises:
        InputError: the scaling has a different number of channels than the patches.
    """
    scaling = scaling_of(scaling)
    if not scaling.applies:
        return images
    channels = images.shape[1]
    if len(scaling.mean) != channels:
        raise InputError(f"input scaling has {len(scaling.mean)} channel(s) but the patches have {channels}")
    if isinstance(images, np.ndarray):
        mean = np.asarray(scaling.mean, np.float32)[None, :, None, None]
        std = np.asarray(scaling.std, np.float32)[None, :, None, None]
        return ((images - mean) / std).astype(np.float32)
    import torch

    mean = torch.tensor(scaling.mean, dtype=images.dtype, device=images.device)[None, :, None, None]
    std = torch.tensor(scaling.std, dtype=images.dtype, device=images.device)[None, :, None, None]
    return (images - mean) / std
