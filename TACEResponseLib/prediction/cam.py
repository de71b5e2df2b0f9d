"""Where the network looked: class activation maps, and putting them back into the volume.

CAM (Zhou 2016) for networks ending in global average pooling + one linear layer comes from
the *same* forward pass that gives the probabilities: a hook keeps the last feature maps
``F`` (N, C, h, w) and the map of class ``c`` is ``Σ_k W[c, k] · F[k]`` with ``W`` the head
weights (bias left out, as in the paper). Grad-CAM (``monai.visualize.GradCAM``) is the
option for any network, and the only one for a fusion network with an MLP head.

:func:`project_to_volume` inverts each patch's crop/resample exactly: every voxel of the
patch's slice is mapped through the inverse of ``PatchProvenance.patch_to_ijk`` to patch
coordinates and the upsampled map is sampled there. Voxels outside every patch are 0; where
patches overlap the larger value is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.patches import PatchProvenance

logger = logging.getLogger(__name__)


def _module(model, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise InputError(f"network {type(model).__name__} has no layer {name!r} for CAM") from None


@dataclass
class ForwardWithCam:
    """Logits of one forward pass and the per-class CAMs ``(N, classes, h, w)`` from it."""

    logits: "object"
    cams: "object"


def forward_with_cam(model, images, target_layer: str, fc_layer: str, clinical=None) -> ForwardWithCam:
    """One forward pass returning logits and CAMs (features × head weights, no second pass)."""
    import torch

    captured: list[torch.Tensor] = []
    handle = _module(model, target_layer).register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        logits = model(images) if clinical is None else model(images, clinical)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise InputError(f"layer {target_layer!r} ran {len(captured)} times in one forward pass; cannot make a CAM")
    features = captured[0]
    fc = _module(model, fc_layer)
    weight = getattr(fc, "weight", None)
    if weight is None or weight.ndim != 2 or weight.shape[1] != features.shape[1]:
        raise InputError(f"layer {fc_layer!r} is not a linear head over the {features.shape[1]} channels of {target_layer!r}")
    cams = torch.einsum("kc,nchw->nkhw", weight.to(features.dtype), features)
    return ForwardWithCam(logits, cams)


class _BoundClinical:
    """Wraps a network so that ``forward(x)`` passes fixed clinical factors (GradCAM calls model(x))."""

    def __new__(cls, model, clinical):
        import torch

        class Bound(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = model

            def forward(self, x):
                return self.inner(x) if clinical is None else self.inner(x, clinical)

        return Bound()


def grad_cam(model, images, target_layer: str, class_indices: Sequence[int], clinical=None):
    """Grad-CAM maps ``(N, H, W)`` (raw, upsampled to the patch size) via ``monai.visualize.GradCAM``."""
    import warnings

    import torch
    from monai.visualize import GradCAM

    maps = []
    with torch.enable_grad(), warnings.catch_warnings():
        # the input needs no gradient; PyTorch warns that the backward hook fires on outputs, as intended
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for n in range(images.shape[0]):
            bound = _BoundClinical(model, None if clinical is None else clinical[n:n + 1])
            cam = GradCAM(nn_module=bound, target_layers=f"inner.{target_layer}", postprocessing=lambda x: x)
            maps.append(cam(images[n:n + 1], class_idx=int(class_indices[n]))[0, 0].detach())
    return torch.stack(maps)


def upsample(cams, size: int):
    """Bilinear (align_corners=False) upsampling of ``(N, h, w)`` maps to ``(N, size, size)``."""
    import torch.nn.functional as F

    if cams.shape[-1] == size and cams.shape[-2] == size:
        return cams
    return F.interpolate(cams[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def normalise(maps: np.ndarray) -> np.ndarray:
    """ReLU then divide by the maximum over all given maps (relative strength between patches kept)."""
    maps = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    peak = float(maps.max()) if maps.size else 0.0
    return maps / peak if peak > 0 else maps


def project_to_volume(maps: np.ndarray, provenance: Sequence[PatchProvenance], reference: Volume,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Put patch maps ``(N, S, S)`` back onto ``reference``'s voxel grid (max where they overlap).

    For every voxel of a patch's slice inside the patch footprint, the patch coordinates are
    ``patch_to_ijk⁻¹ · ijk`` and the map is sampled there bilinearly: the exact inverse of
    how the patch was cut.
    """
    from scipy.ndimage import map_coordinates

    heat = np.zeros(reference.shape_kji, np.float32) if out is None else out
    for patch_map, prov in zip(maps, provenance):
        size = patch_map.shape[-1]
        inverse = np.linalg.inv(prov.patch_to_ijk)
        axis = prov.slice_axis
        rows_axis, cols_axis = (a for a in (0, 1, 2) if a != axis)
        # footprint of the patch in the slice (continuous pixel coordinates → integer range)
        corners = np.array([[u, v, 0, 1] for u in (-0.5, size - 0.5) for v in (-0.5, size - 0.5)]) @ prov.patch_to_ijk.T
        r_lo, r_hi = corners[:, 2 - rows_axis].min(), corners[:, 2 - rows_axis].max()
        c_lo, c_hi = corners[:, 2 - cols_axis].min(), corners[:, 2 - cols_axis].max()
        rows = np.arange(max(int(np.ceil(r_lo)), 0), min(int(np.floor(r_hi)), reference.shape_kji[rows_axis] - 1) + 1)
        cols = np.arange(max(int(np.ceil(c_lo)), 0), min(int(np.floor(c_hi)), reference.shape_kji[cols_axis] - 1) + 1)
        if rows.size == 0 or cols.size == 0:
            continue
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        ijk = np.zeros((4, rr.size))
        ijk[2 - rows_axis] = rr.ravel()
        ijk[2 - cols_axis] = cc.ravel()
        ijk[2 - axis] = prov.slice_index
        ijk[3] = 1.0
        u, v = (inverse @ ijk)[:2]
        inside = (u >= -0.5) & (u <= size - 0.5) & (v >= -0.5) & (v <= size - 0.5)
        values = np.zeros(rr.size, np.float32)
        values[inside] = map_coordinates(np.asarray(patch_map, np.float32), [v[inside], u[inside]], order=1, mode="nearest")
        where: list = [slice(None)] * 3
        where[axis] = prov.slice_index
        where[rows_axis] = slice(int(rows[0]), int(rows[-1]) + 1)
        where[cols_axis] = slice(int(cols[0]), int(cols[-1]) + 1)
        region = heat[tuple(where)]
        np.maximum(region, values.reshape(rr.shape), out=region)
    return heat
