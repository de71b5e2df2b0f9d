"""Peng 2019's patch transforms: flips and 90°/180°/270° rotations, exact pixel permutations of a square patch.

Training augments with them (:mod:`TACEResponseLib.training.augmentation`) and prediction
repeats them at test time for the uncertainty of each tumour
(:meth:`TACEResponseLib.prediction.predictor.Predictor.forward`), so both use this one list.
"""

from __future__ import annotations

import numpy as np

from TACEResponseLib.core.errors import InputError

#: exact pixel permutations of a square patch (last two axes): Peng's flips and 90°, 180°, 270° rotations
#: (180° = both flips)
TRANSFORMS = ("identity", "flip_lr", "flip_ud", "rot90", "rot270", "rot180")


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
