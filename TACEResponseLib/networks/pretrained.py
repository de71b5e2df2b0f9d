"""ImageNet weights from a local file, and freezing for transfer learning.

ImageNet weights are never downloaded: :func:`load_pretrained` reads a local state dict in
torchvision layout (Cadene/timm for InceptionV4) and maps its keys onto the networks of
:mod:`.architectures`. :func:`freeze_layers` freezes a network up to a named stage (Peng
2019 froze the whole convolutional base).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.networks.architectures import architecture_spec

logger = logging.getLogger(__name__)

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
    spec = architecture_spec(architecture)
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


def freeze_layers(model: nn.Module, n_frozen: int | str) -> list[str]:
    """Freeze the first parameters of ``model`` in registration order; unfreeze the rest.

    ``n_frozen`` is either a **stage name** — every parameter up to and including the last one
    under that module prefix is frozen (ResNet: ``"layer3"`` freezes conv1, bn1, layer1–3;
    DenseNet: ``"features.denseblock3"``; InceptionV4: ``"blocks.17"``) — or an **integer
    count of parameter tensors** (weights and biases counted separately; not MATLAB or Keras layers). For
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
