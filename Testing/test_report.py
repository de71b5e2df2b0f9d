"""Display orientation: slices are shown as Slicer shows them (radiological convention)."""

from __future__ import annotations

import numpy as np
import pytest

from TACEResponseLib.imaging.phantoms import make_phantom
from TACEResponseLib.imaging.views import display_plane


@pytest.mark.parametrize("rotation", [(0, 0, 0), (10, -8, 25), (0, 0, 180)])
def test_axial_display_has_patient_right_on_screen_left_and_anterior_on_top(rotation):
    case = make_phantom("CR", shape_kji=(40, 96, 96), rotation_deg=rotation, seed=1, tumour_radius_mm=(6, 7))
    reference = case.reference
    axis = reference.array_axis_for("axial")
    # mark the patient's right-anterior quadrant in RAS, independently of the grid
    k, j, i = np.meshgrid(*(np.arange(n) for n in reference.shape_kji), indexing="ij")
    ras = reference.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1)).reshape(*reference.shape_kji, 3)
    right_anterior = ((ras[..., 0] > 15) & (ras[..., 1] > 15)).astype(np.uint8)
    plane = display_plane(right_anterior, reference, axis, reference.shape_kji[axis] // 2 if axis == 0 else 48)
    rows, cols = np.nonzero(plane.image)
    height, width = plane.image.shape
    assert cols.mean() < width / 2, "patient's right must be on the left of the screen"
    assert rows.mean() < height / 2, "anterior must be at the top of the screen"
