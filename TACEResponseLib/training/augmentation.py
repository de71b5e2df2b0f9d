"""Peng 2019's augmentation: flips and 90°/180°/270° rotations, and class balancing by augmented copies.

Every transform is an exact pixel permutation of a square patch, so labels and intensities
are unchanged.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError

logger = logging.getLogger(__name__)

# --- augmentation -------------------------------------------------------------------------------------
#: exact pixel permutations of a square patch (last two axes): Peng's flips and 90°, 180°, 270° rotations
#: (180° = both flips)
TRANSFORMS = ("identity", "flip_lr", "flip_ud", "rot90", "rot270", "rot180")


BALANCE_TRANSFORMS = (1, 2, 3, 4, 5)


def augment(patch, transform: int):
    """Apply transform number ``transform`` (index into :data:`TRANSFORMS`) to the last two axes.

    Works on numpy arrays and torch tensors; ``rot90`` turns counter-clockwise as numpy does.
    """
    if transform == 0:
        return patch
    if transform not in range(1, len(TRANSFORMS)):
        raise InputError(f"unknown augmentation transform {transform}; use 0–{len(TRANSFORMS) - 1}")
    turns = {3: 1, 4: -1, 5: 2}
    if isinstance(patch, np.ndarray):
        if transform == 1:
            return np.flip(patch, axis=-1)
        if transform == 2:
            return np.flip(patch, axis=-2)
        return np.rot90(patch, k=turns[transform], axes=(-2, -1))
    import torch

    if transform == 1:
        return torch.flip(patch, dims=(-1,))
    if transform == 2:
        return torch.flip(patch, dims=(-2,))
    if transform in turns:
        return torch.rot90(patch, k=turns[transform], dims=(-2, -1))


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
