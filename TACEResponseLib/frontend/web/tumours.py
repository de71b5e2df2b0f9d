"""Where the tumours of a web session are, and what its segment is: the views jump to a tumour's
largest cross-section, and a result is stale once the segment's voxels differ from the predicted ones.
"""

from __future__ import annotations

import hashlib

import numpy as np


def start_segment_id(segmentation) -> str | None:
    """The segment a newly opened segmentation starts on (active in the editor, so the one Predict uses,
    and centred in the views): its first tumour segment — of a DICOM SEG the first of type Mass, Tumor
    or Neoplasm, not the liver it may list first — else its first segment; None when it has none."""
    from TACEResponseLib.core.errors import InputError

    if not segmentation.segments:
        return None
    try:
        tumours = segmentation.default_segment_ids()
    except InputError:  # a DICOM SEG without a tumour segment: the reader chooses one in the editor
        tumours = []
    return tumours[0] if tumours else segmentation.segments[0].id


def segment_centre_ras(segmentation, segment_id: str | None = None) -> np.ndarray | None:
    """Centre (RAS, mm) of a segment's voxels (default: the first segment) of a library Segmentation, or
    None if empty."""
    if not segmentation.segments:
        return None
    mask = segmentation.mask(segment_id or segmentation.segments[0].id)
    kji = np.argwhere(np.asarray(mask.array) > 0)
    if not len(kji):
        return None
    i, j, k = kji[:, 2].mean(), kji[:, 1].mean(), kji[:, 0].mean()
    return (np.asarray(mask.ijk_to_ras) @ np.array([i, j, k, 1.0]))[:3]


def largest_slice_centre_ras(mask) -> list[float] | None:
    """Where a tumour is best seen: the centre (RAS, mm) of its largest cross-section (the image slice
    with most of its voxels, where the response network takes its patches); None when empty."""
    array = np.asarray(mask.array) > 0
    if not array.any():
        return None
    k = int(np.argmax(array.reshape(array.shape[0], -1).sum(axis=1)))
    ji = np.argwhere(array[k])
    centre = np.array([ji[:, 1].mean(), ji[:, 0].mean(), float(k), 1.0])
    return [float(v) for v in (np.asarray(mask.ijk_to_ras) @ centre)[:3]]


def tumour_places(segmentation, reference, islands: dict | None) -> dict[str, list[float]]:
    """Tumour label ("Tumour #3") → where it is best seen, split into islands by the rule the prediction
    used (its ``islands`` record), as the prediction numbers them."""
    from TACEResponseLib.imaging.tumours import IslandRule, tumour_rois

    rule = IslandRule(**{k: v for k, v in (islands or {}).items() if k in ("min_island_ml", "split")})
    return {roi.label: largest_slice_centre_ras(roi.mask) for roi in tumour_rois(segmentation, reference, None, rule)
            if roi.mask is not None}


def segment_fingerprint(segmentation_node, segment_id: str) -> str:
    """What a segment's voxels are, as a short digest: its mask cropped to its box, the box's place and
    the labelmap's geometry. Equal digests: the same tumour (an undo back to it included)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segmentation_node else None
    if segment is None:
        return "no segment"
    labelmap = segment.GetRepresentation("Binary labelmap")
    scalars = labelmap.GetPointData().GetScalars() if labelmap is not None else None
    if scalars is None:
        return "empty"
    x0, _x1, y0, _y1, z0, _z1 = labelmap.GetExtent()
    dims = labelmap.GetDimensions()
    mask = vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]) == segment.GetLabelValue()
    if not mask.any():
        return "empty"
    bounds = [np.flatnonzero(mask.any(axis=axes))[[0, -1]] for axes in ((1, 2), (0, 2), (0, 1))]
    box = mask[bounds[0][0]:bounds[0][1] + 1, bounds[1][0]:bounds[1][1] + 1, bounds[2][0]:bounds[2][1] + 1]
    matrix = vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr([matrix.GetElement(r, c) for r in range(3) for c in range(4)]).encode())
    digest.update(repr((x0 + int(bounds[2][0]), y0 + int(bounds[1][0]), z0 + int(bounds[0][0]), box.shape)).encode())
    digest.update(np.packbits(box).tobytes())
    return digest.hexdigest()
