"""Segmentations: labelmap layers plus segments, read from and written to Slicer's ``.seg.nrrd``.

``.seg.nrrd`` files keep segment ids, names, label values, layers and colours; a plain
labelmap becomes one segment per label value. :func:`segment_mask_on` puts one segment onto
a reference volume's grid (nearest neighbour), which is how every consumer gets its mask.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path
from TACEResponseLib.imaging.geometry import (
    Volume,
    resample_to_reference,
    to_sitk_image,
)
from TACEResponseLib.imaging.volume_io import unreadable_image_error, volume_from_sitk

logger = logging.getLogger(__name__)

# --- segmentations ------------------------------------------------------------------------
@dataclass
class Segment:
    """One segment of a segmentation: its id, display name, label value and layer."""

    id: str
    name: str
    label_value: int
    layer: int = 0
    color: tuple[float, float, float] = (0.9, 0.3, 0.2)


@dataclass
class Segmentation:
    """Labelmap layers on one voxel grid plus the segments they hold (like a ``.seg.nrrd``)."""

    layers: list[np.ndarray]
    ijk_to_ras: np.ndarray
    segments: list[Segment]
    name: str = "Segmentation"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> Volume:
        """An empty volume with this segmentation's geometry."""
        return Volume(np.zeros(self.layers[0].shape, np.uint8), self.ijk_to_ras, self.name)

    def find(self, key: str) -> Segment:
        """Segment by id, else by name; the error lists what exists."""
        for segment in self.segments:
            if segment.id == key:
                return segment
        for segment in self.segments:
            if segment.name == key:
                return segment
        available = ", ".join(f"{s.id} ({s.name})" for s in self.segments) or "none"
        raise InputError(f"segment {key!r} not found in segmentation {self.name!r}; available: {available}")

    def mask(self, key: str) -> Volume:
        """Binary (uint8 0/1) mask of one segment on the segmentation's own grid."""
        segment = self.find(key)
        array = (self.layers[segment.layer] == segment.label_value).astype(np.uint8)
        return Volume(array, self.ijk_to_ras.copy(), segment.name, {"segment_id": segment.id})

    @classmethod
    def from_masks(
        cls,
        grid: Volume,
        masks: dict[str, np.ndarray],
        name: str = "Segmentation",
        colors: dict[str, tuple[float, float, float]] | None = None,
    ) -> "Segmentation":
        """Build from named boolean masks on ``grid``; overlapping masks go to extra layers."""
        layers: list[np.ndarray] = []
        segments: list[Segment] = []
        for index, (segment_name, mask) in enumerate(masks.items()):
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != grid.shape_kji:
                raise InputError(f"segment {segment_name!r}: mask shape {mask.shape} != grid {grid.shape_kji}")
            layer = next((n for n, existing in enumerate(layers) if not np.any(existing[mask])), None)
            if layer is None:
                layers.append(np.zeros(grid.shape_kji, np.uint8))
                layer = len(layers) - 1
            label = int(layers[layer].max()) + 1
            layers[layer][mask] = label
            color = (colors or {}).get(segment_name, _DEFAULT_COLORS[index % len(_DEFAULT_COLORS)])
            segments.append(Segment(f"Segment_{index + 1}", segment_name, label, layer, tuple(color)))
        if not layers:
            layers.append(np.zeros(grid.shape_kji, np.uint8))
        return cls(layers, grid.ijk_to_ras.copy(), segments, name)


_DEFAULT_COLORS = [(0.85, 0.32, 0.24), (0.95, 0.85, 0.15), (0.30, 0.70, 0.90), (0.55, 0.85, 0.35)]


def read_segmentation(path: str | os.PathLike) -> Segmentation:
    """Read a Slicer ``.seg.nrrd`` (segment metadata kept) or a plain labelmap file.

    A plain labelmap (no segment metadata) becomes one segment per label value, named
    ``Label_<value>`` so it can still be chosen by name.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: segmentation file does not exist")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise unreadable_image_error(path, exc) from None
    keys = set(image.GetMetaDataKeys())
    n_components = image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() == 4:  # some writers store layers as a 4th axis
        n_layers = image.GetSize()[3]
        layer_images = [sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, n]) for n in range(n_layers)]
    elif n_components > 1:
        layer_images = [sitk.VectorIndexSelectionCast(image, n) for n in range(n_components)]
    else:
        layer_images = [image]
    first = volume_from_sitk(layer_images[0], path.name.split(".")[0])
    layers = [sitk.GetArrayFromImage(img).astype(np.int32) for img in layer_images]

    segments: list[Segment] = []
    n = 0
    while f"Segment{n}_ID" in keys:
        get = lambda field: image.GetMetaData(f"Segment{n}_{field}") if f"Segment{n}_{field}" in keys else None  # noqa: E731
        color = tuple(float(c) for c in (get("Color") or "0.9 0.3 0.2").split()[:3])
        segments.append(
            Segment(
                id=get("ID") or f"Segment_{n}",
                name=get("Name") or get("ID") or f"Segment_{n}",
                label_value=int(get("LabelValue") or 1),
                layer=int(get("Layer") or 0),
                color=color,  # type: ignore[arg-type]
            )
        )
        n += 1
    if not segments:  # plain labelmap
        for value in np.unique(layers[0]):
            if value != 0:
                segments.append(Segment(f"Label_{int(value)}", f"Label_{int(value)}", int(value)))
    for segment in segments:
        if segment.layer >= len(layers):
            raise InputError(f"{path}: segment {segment.id} refers to layer {segment.layer}, file has {len(layers)}")
    return Segmentation(layers, first.ijk_to_ras, segments, path.name.split(".")[0], {"source": str(path)})


def write_segmentation(segmentation: Segmentation, path: str | os.PathLike) -> Path:
    """Write a ``.seg.nrrd`` that Slicer's Segmentations module reads (one file, 3-D or layered)."""
    import SimpleITK as sitk

    path = Path(path)
    if len(segmentation.layers) == 1:
        image = sitk.GetImageFromArray(segmentation.layers[0].astype(np.uint8))
    else:
        stacked = np.stack([layer.astype(np.uint8) for layer in segmentation.layers], axis=-1)
        image = sitk.GetImageFromArray(stacked, isVector=True)
    geometry = to_sitk_image(segmentation.grid)
    image.CopyInformation(geometry)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ConversionParameters", "")
    k, j, i = segmentation.layers[0].shape
    for n, segment in enumerate(segmentation.segments):
        layer = segmentation.layers[segment.layer] == segment.label_value
        extent = _extent_ijk(layer) if np.any(layer) else (0, -1, 0, -1, 0, -1)
        fields = {
            "ID": segment.id,
            "Name": segment.name,
            "NameAutoGenerated": "0",
            "Color": " ".join(f"{c:.6g}" for c in segment.color),
            "ColorAutoGenerated": "0",
            "LabelValue": str(segment.label_value),
            "Layer": str(segment.layer),
            "Extent": " ".join(str(e) for e in extent),
            "Tags": "Segmentation.Status:inprogress|",
        }
        for key, value in fields.items():
            image.SetMetaData(f"Segment{n}_{key}", value)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return path


def _extent_ijk(mask: np.ndarray) -> tuple[int, ...]:
    ks, js, is_ = (np.nonzero(np.any(mask, axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1)))
    return (int(is_[0]), int(is_[-1]), int(js[0]), int(js[-1]), int(ks[0]), int(ks[-1]))


def segment_mask_on(segmentation: Segmentation, segment: str, reference: Volume) -> Volume:
    """Binary mask of ``segment`` resampled (nearest) onto ``reference``'s grid; must not be empty."""
    own = segmentation.mask(segment)
    if not np.any(own.array):
        raise InputError(
            f"segment {segment!r} of {segmentation.name!r} is empty; draw the tumour in the Segment Editor first"
        )
    mask = own if reference.same_geometry(own) else resample_to_reference(own, reference, interpolation="nearest")
    if not np.any(mask.array):
        raise InputError(
            f"segment {segment!r} of {segmentation.name!r} lies outside the reference volume "
            f"{reference.name!r}; is it drawn on another image?"
        )
    mask.metadata.setdefault("segment_id", segmentation.find(segment).id)
    return mask
