"""The tumours of a case: each segment, and each island of a segment, as a mask on the reference grid.

One rule for prediction, training, evaluation and survival: a segment made of several
separate islands (26-connected components) is one tumour per island of at least
``min_island_ml`` millilitres, largest first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, bounding_box
from TACEResponseLib.imaging.segmentation import Segmentation, segment_mask_on

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IslandRule:
    """How a segment becomes tumours: one per island (``split``) of at least ``min_island_ml`` ml,
    or the whole segment as one tumour. The default is the rule of every prediction."""

    split: bool = True
    min_island_ml: float = 0.05


#: the whole segment as one tumour, islands merged
WHOLE_SEGMENT = IslandRule(split=False)


@dataclass
class TumourROI:
    """One tumour to predict: a segment, or one island of it (islands numbered by size)."""

    segment_id: str
    segment_name: str
    mask: Volume
    island: int | None = None

    @property
    def label(self) -> str:
        return self.segment_name if self.island is None else f"{self.segment_name} #{self.island}"


def tumour_rois(
    segmentation: Segmentation,
    reference: Volume,
    segments: Sequence[str] | None = None,
    islands: IslandRule = IslandRule(),
) -> list[TumourROI]:
    """Masks on the reference grid for the chosen segments (all when ``None``).

    With ``islands.split`` a segment made of several separate islands (26-connected
    components) becomes one tumour per island of at least ``islands.min_island_ml``
    millilitres, largest first; smaller specks are ignored with a log message.
    """
    from scipy.ndimage import label

    chosen = list(segments) if segments else [s.id for s in segmentation.segments]
    if not chosen:
        raise InputError(f"segmentation {segmentation.name!r} has no segments; draw the tumour first")
    voxel_ml = float(np.prod(reference.spacing)) / 1000.0
    rois: list[TumourROI] = []
    for key in chosen:
        segment = segmentation.find(key)
        mask = segment_mask_on(segmentation, key, reference)
        if not islands.split:
            rois.append(TumourROI(segment.id, segment.name, mask))
            continue
        lo, hi = bounding_box(mask.array > 0)  # label only the segment's box: fast on large volumes
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        labels, count = label(mask.array[box] > 0, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(labels.ravel())[1:]
        keep = [n + 1 for n in np.argsort(-sizes) if sizes[n] * voxel_ml >= islands.min_island_ml]
        keep = keep or [int(np.argmax(sizes)) + 1]  # only specks: keep the largest, patches will judge its size
        if len(keep) < count:
            logger.info("segment %s: ignoring %d island(s) smaller than %.2f ml", segment.name, count - len(keep),
                        islands.min_island_ml)
        if len(keep) <= 1 and len(keep) == count:
            rois.append(TumourROI(segment.id, segment.name, mask))
            continue
        for number, value in enumerate(keep, start=1):
            island = np.zeros(mask.shape_kji, np.uint8)
            island[box] = labels == value
            rois.append(TumourROI(segment.id, segment.name, mask.with_array(island), number if len(keep) > 1 else None))
    return rois
