"""Where the network looked: class activation maps, and putting them back into the volume.

CAM (Zhou 2016) for networks ending in global average pooling + one linear layer comes from
the *same* forward pass that gives the probabilities: the backend returns the last feature
maps ``F`` (N, C, h, w) beside the logits (:mod:`TACEResponseLib.networks.backends`) and the
map of class ``c`` is ``Σ_k W[c, k] · F[k]`` with ``W`` the head weights (bias left out, as in
the paper; :func:`class_maps`, numpy, so no torch is needed). Grad-CAM
(``monai.visualize.GradCAM``) is the option for any network, and the only one for a fusion
network with an MLP head.

:func:`project_to_volume` inverts each patch's crop/resample exactly: every voxel of the
patch's slice is mapped through the inverse of ``PatchProvenance.patch_to_ijk`` to patch
coordinates and the upsampled map is sampled there. Voxels outside every patch are 0; where
patches overlap the larger value is kept. The heatmap only covers the box of the patches'
footprints (:func:`footprint_box`): a volume whose origin is the box's first reference voxel,
stored as ``uint8`` (255 = the case's strongest activation, :func:`write_heatmap`), which
Slicer overlays in RAS on the full reference volume.
"""

from __future__ import annotations

import logging
from pathlib import Path
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


def class_maps(features: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Per-class CAMs ``(N, classes, h, w)`` = head weights ``(classes, C)`` × features ``(N, C, h, w)``."""
    head = np.asarray(head, np.float32)
    if head.ndim != 2 or features.ndim != 4 or head.shape[1] != features.shape[1]:
        raise InputError(f"CAM head of shape {head.shape} does not fit features of shape {features.shape}")
    n, c, h, w = features.shape
    flat = np.asarray(features, np.float32).reshape(n, c, h * w)
    return np.matmul(head[None], flat).reshape(n, head.shape[0], h, w)


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of 1-D linear interpolation, sampled as PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)`` samples."""
    source = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(int), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    fraction = source - low
    weights = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, low), 1.0 - fraction)
    np.add.at(weights, (rows, high), fraction)
    return weights


def upsample(cams, size: int):
    """Bilinear (align_corners=False) upsampling of ``(N, h, w)`` maps to ``(N, size, size)``
    (numpy arrays with numpy, tensors with torch)."""
    if cams.shape[-1] == size and cams.shape[-2] == size:
        return cams
    if isinstance(cams, np.ndarray):
        rows = _bilinear_weights(cams.shape[-2], size)
        cols = _bilinear_weights(cams.shape[-1], size)
        return (rows @ np.asarray(cams, np.float64) @ cols.T).astype(np.float32)
    import torch.nn.functional as F

    return F.interpolate(cams[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def normalise(maps: np.ndarray) -> np.ndarray:
    """ReLU then divide by the maximum over all given maps (relative strength between patches kept)."""
    maps = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    peak = float(maps.max()) if maps.size else 0.0
    return maps / peak if peak > 0 else maps


def _footprint(prov: PatchProvenance, shape_kji: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Reference voxel rows and columns of a patch's slice inside its footprint (None: outside the grid)."""
    size = prov.size
    axis = prov.slice_axis
    rows_axis, cols_axis = (a for a in (0, 1, 2) if a != axis)
    # footprint of the patch in the slice (continuous pixel coordinates → integer range)
    corners = np.array([[u, v, 0, 1] for u in (-0.5, size - 0.5) for v in (-0.5, size - 0.5)]) @ prov.patch_to_ijk.T
    r_lo, r_hi = corners[:, 2 - rows_axis].min(), corners[:, 2 - rows_axis].max()
    c_lo, c_hi = corners[:, 2 - cols_axis].min(), corners[:, 2 - cols_axis].max()
    rows = np.arange(max(int(np.ceil(r_lo)), 0), min(int(np.floor(r_hi)), shape_kji[rows_axis] - 1) + 1)
    cols = np.arange(max(int(np.ceil(c_lo)), 0), min(int(np.floor(c_hi)), shape_kji[cols_axis] - 1) + 1)
    if rows.size == 0 or cols.size == 0 or not 0 <= prov.slice_index < shape_kji[axis]:
        return None
    return rows, cols


def footprint_box(provenance: Sequence[PatchProvenance], reference: Volume) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` reference voxel box (``kji``, hi exclusive) holding every patch's footprint."""
    los, his = [], []
    for prov in provenance:
        found = _footprint(prov, reference.shape_kji)
        if found is None:
            continue
        rows, cols = found
        rows_axis, cols_axis = (a for a in (0, 1, 2) if a != prov.slice_axis)
        lo, hi = np.zeros(3, int), np.zeros(3, int)
        lo[prov.slice_axis], hi[prov.slice_axis] = prov.slice_index, prov.slice_index + 1
        lo[rows_axis], hi[rows_axis] = rows[0], rows[-1] + 1
        lo[cols_axis], hi[cols_axis] = cols[0], cols[-1] + 1
        los.append(lo)
        his.append(hi)
    if not los:
        return np.zeros(3, int), np.ones(3, int)
    return np.min(los, axis=0), np.max(his, axis=0)


def project_to_volume(maps: np.ndarray, provenance: Sequence[PatchProvenance], reference: Volume,
                      out: np.ndarray | None = None, origin_kji: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Put patch maps ``(N, S, S)`` back onto ``reference``'s voxel grid (max where they overlap).

    For every voxel of a patch's slice inside the patch footprint, the patch coordinates are
    ``patch_to_ijk⁻¹ · ijk`` and the map is sampled there bilinearly: the exact inverse of
    how the patch was cut. ``out`` may be a box of the grid whose first voxel is reference voxel
    ``origin_kji`` (e.g. :func:`footprint_box`); it must hold the footprints.
    """
    from scipy.ndimage import map_coordinates

    heat = np.zeros(reference.shape_kji, np.float32) if out is None else out
    origin = np.asarray(origin_kji, int)
    for patch_map, prov in zip(maps, provenance):
        size = patch_map.shape[-1]
        inverse = np.linalg.inv(prov.patch_to_ijk)
        axis = prov.slice_axis
        rows_axis, cols_axis = (a for a in (0, 1, 2) if a != axis)
        found = _footprint(prov, reference.shape_kji)
        if found is None:
            continue
        rows, cols = found
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
        where[axis] = prov.slice_index - origin[axis]
        where[rows_axis] = slice(int(rows[0]) - origin[rows_axis], int(rows[-1]) + 1 - origin[rows_axis])
        where[cols_axis] = slice(int(cols[0]) - origin[cols_axis], int(cols[-1]) + 1 - origin[cols_axis])
        region = heat[tuple(where)]
        np.maximum(region, values.reshape(rr.shape), out=region)
    return heat


#: heatmap levels stored in ``heatmap.nrrd`` (uint8: 255 = the case's strongest activation)
HEATMAP_LEVELS = 255


def quantised(heat: np.ndarray) -> np.ndarray:
    """Heat in [0, 1] rounded to the levels ``heatmap.nrrd`` stores (float32 ``k / 255``), so the
    heatmap in memory and the one read back from the file are the same numbers."""
    levels = np.rint(np.clip(heat, 0.0, 1.0) * HEATMAP_LEVELS).astype(np.uint8)
    return levels.astype(np.float32) / np.float32(HEATMAP_LEVELS)


def heatmap_values(volume: Volume) -> Volume:
    """A heatmap with values in [0, 1]: integer volumes (``heatmap.nrrd`` as written) are divided by 255."""
    if np.issubdtype(volume.array.dtype, np.integer):
        return Volume(volume.array.astype(np.float32) / np.float32(HEATMAP_LEVELS), volume.ijk_to_ras,
                      volume.name, dict(volume.metadata))
    return volume


def write_heatmap(heatmap: Volume, path) -> Path:
    """``heatmap.nrrd``: the heatmap's box as uint8 (255 = 1.0), its geometry the box's own."""
    from TACEResponseLib.imaging.volume_io import write_volume

    levels = np.rint(np.clip(heatmap.array, 0.0, 1.0) * HEATMAP_LEVELS).astype(np.uint8)
    return write_volume(Volume(levels, heatmap.ijk_to_ras, heatmap.name, heatmap.metadata), path)


def read_heatmap(path) -> Volume:
    """A heatmap written by :func:`write_heatmap` (or any scalar volume), values in [0, 1]."""
    from TACEResponseLib.imaging.volume_io import read_volume

    return heatmap_values(read_volume(path))
