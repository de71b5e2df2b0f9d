"""Peng 2019's augmentation: flips and 90°/180°/270° rotations, and class balancing by augmented copies.

Every transform is an exact pixel permutation of a square patch, so labels and intensities
are unchanged.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from TACEResponseLib.imaging.transforms import TRANSFORMS, augment  # noqa: F401 - re-exported: the one list

logger = logging.getLogger(__name__)

# --- augmentation -------------------------------------------------------------------------------------
BALANCE_TRANSFORMS = (1, 2, 3, 4, 5)


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
