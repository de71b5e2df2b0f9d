"""Tumour patches: the published sampling rules, provenance that maps back exactly, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, ijk_to_ras_from, rotation_matrix
from TACEResponseLib.imaging.patches import PatchSpec, extract_patches, largest_square


def _mask(case) -> Volume:
    return case.segmentation.mask(case.tumours[0].segment_id)


def _slice_roi_centroid_ras(mask: Volume, axis: int, index: int) -> np.ndarray:
    """ROI centroid in RAS of one slice, computed from voxel indices (independent of patches.py)."""
    kji = np.argwhere(mask.array > 0)
    kji = kji[kji[:, axis] == index]
    return mask.ijk_to_ras_points(kji[:, ::-1].astype(float)).mean(axis=0)


def _brute_force_largest_h(plane: np.ndarray, row_mm: float, col_mm: float) -> int:
    best = 0
    rows, cols = plane.shape
    for h in range(1, rows + 1):
        w = max(1, int(round(h * row_mm / col_mm)))
        if any(plane[r:r + h, c:c + w].all() for r in range(rows - h + 1) for c in range(cols - w + 1)):
            best = h
    return best


@pytest.mark.parametrize("strategy", ["largest_slice", "centroid"])
def test_patch_centres_land_on_the_roi_in_ras_for_an_oblique_anisotropic_volume(oblique_case, strategy):
    mask = _mask(oblique_case)
    reference = oblique_case.phases["arterial"]
    patches = extract_patches([reference], mask, PatchSpec(strategy=strategy, fov_mm=60.0))
    voxel = float(reference.spacing.max())
    for prov in patches.provenance:
        truth = _slice_roi_centroid_ras(mask, prov.slice_axis, prov.slice_index)
        assert np.linalg.norm(prov.center_ras - truth) <= voxel, (prov.center_ras, truth)
        # the patch plane is the slice: its normal is the slice axis direction
        normal = np.cross(prov.corners_ras[1] - prov.corners_ras[0], prov.corners_ras[2] - prov.corners_ras[0])
        slice_dir = reference.direction[:, 2 - prov.slice_axis]
        assert abs(abs(normal @ slice_dir) / np.linalg.norm(normal) - 1) < 1e-9
    if strategy == "centroid":
        (prov,) = patches.provenance
        side = np.linalg.norm(prov.corners_ras[1] - prov.corners_ras[0])
        assert side == pytest.approx(60.0, rel=1e-9)


def test_largest_slice_squares_are_inside_the_roi_and_square_in_mm(oblique_case):
    mask = _mask(oblique_case)
    patches = extract_patches([oblique_case.phases["arterial"]], mask)
    assert len(patches) == 3
    for prov in patches.provenance:
        plane = np.take(mask.array, prov.slice_index, axis=prov.slice_axis)
        r0, c0, h, w = (int(v) for v in prov.box)
        assert plane[r0:r0 + h, c0:c0 + w].all()
        # square in mm within one pixel of rounding, although pixels are not square
        assert abs(prov.side_mm[0] - prov.side_mm[1]) <= max(oblique_case.reference.spacing[:2])
        edges = prov.corners_ras
        assert np.linalg.norm(edges[1] - edges[0]) == pytest.approx(prov.side_mm[1])
        assert np.linalg.norm(edges[2] - edges[0]) == pytest.approx(prov.side_mm[0])


def test_patch_pixels_equal_the_image_at_their_ras_position(axial_case):
    """Sampling through provenance agrees with an independent RAS → IJK lookup."""
    reference = axial_case.phases["arterial"]
    spec = PatchSpec(strategy="centroid", size=32, fov_mm=40.0, normalization="window", window=(-1000, 1000))
    patches = extract_patches([reference], _mask(axial_case), spec)
    prov = patches.provenance[0]
    rng = np.random.default_rng(0)
    for u, v in rng.integers(0, 32, size=(25, 2)):
        ras = (prov.patch_to_ras @ np.array([u, v, 0, 1.0]))[:3]
        i, j, k = reference.ras_to_ijk_points(ras[None])[0]
        from scipy.ndimage import map_coordinates

        value = map_coordinates(reference.array.astype(float), [[k], [j], [i]], order=1)[0]
        expected = np.clip((value + 1000) / 2000, 0, 1)
        assert patches.images[0, 0, v, u] == pytest.approx(expected, abs=1e-4)


def test_centroid_patch_is_z_scored_within_the_roi(axial_case):
    reference = axial_case.phases["portal"]
    mask = _mask(axial_case)
    spec = PatchSpec(strategy="centroid", normalization="zscore", size=64, fov_mm=20.0)
    patch = extract_patches([reference], mask, spec).images[0, 0]
    roi = reference.array[mask.array > 0]
    centre_value = patch[31:33, 31:33].mean() * roi.std() + roi.mean()
    # the centre of a 20 mm field inside the tumour must be tumour intensity, not liver
    assert abs(centre_value - np.median(roi)) < 3 * roi.std()
    assert abs(patch.mean()) < 3.0


def test_multiphase_channels_follow_phase_order(axial_case):
    arterial, portal = axial_case.phases["arterial"], axial_case.phases["portal"]
    mask = _mask(axial_case)
    spec = PatchSpec(size=32)
    both = extract_patches([arterial, portal], mask, spec)
    assert both.images.shape == (3, 2, 32, 32)
    assert both.channel_names == ["arterial", "portal"]
    only_arterial = extract_patches([arterial], mask, spec)
    only_portal = extract_patches([portal], mask, spec)
    np.testing.assert_array_equal(both.images[:, 0], only_arterial.images[:, 0])
    np.testing.assert_array_equal(both.images[:, 1], only_portal.images[:, 0])
    repeated = only_arterial.images
    assert repeated.shape[1] == 3 and np.array_equal(repeated[:, 0], repeated[:, 2])


def test_neighbour_channels_are_adjacent_slices(axial_case):
    arterial = axial_case.phases["arterial"]
    mask = _mask(axial_case)
    spec = PatchSpec(size=32, single_phase_channels="neighbours")
    patches = extract_patches([arterial], mask, spec)
    prov = patches.provenance[0]
    shifted = Volume(np.roll(arterial.array, 1, axis=prov.slice_axis), arterial.ijk_to_ras, "shifted")
    again = extract_patches([shifted], mask, PatchSpec(size=32))
    # channel 0 (slice s-1) equals the centre channel of the image shifted by one slice
    np.testing.assert_allclose(patches.images[0, 0], again.images[0, 0], atol=1e-6)
    assert not np.allclose(patches.images[0, 0], patches.images[0, 1])


@st.composite
def _blob_masks(draw):
    depth = draw(st.integers(3, 7))
    rows, cols = draw(st.integers(12, 26)), draw(st.integers(12, 26))
    spacing = (draw(st.floats(0.5, 2.0)), draw(st.floats(0.5, 2.0)), draw(st.floats(1.0, 4.0)))
    mask = np.zeros((depth, rows, cols), np.uint8)
    rr, cc = np.mgrid[0:rows, 0:cols]
    for k in range(depth):
        for _ in range(draw(st.integers(0, 3))):
            r, c = draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))
            a, b = draw(st.floats(1.5, 9.0)), draw(st.floats(1.5, 9.0))
            mask[k][((rr - r) / a) ** 2 + ((cc - c) / b) ** 2 <= 1] = 1
    return mask, spacing


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_blob_masks())
def test_property_largest_slice_patches(blob):
    mask_array, spacing = blob
    if not mask_array.any():
        return
    volume = Volume(np.zeros(mask_array.shape, np.float32), ijk_to_ras_from(spacing, rotation_matrix([0, 0, 17])))
    mask = volume.with_array(mask_array)
    spec = PatchSpec(size=16, min_square_mm=0.1)
    col_mm, row_mm = spacing[0], spacing[1]
    try:
        patches = extract_patches([volume], mask, spec)
    except InputError:  # refused only if no slice holds any box that is square in mm
        assert all(_brute_force_largest_h(plane.astype(bool), row_mm, col_mm) == 0 for plane in mask_array)
        return
    areas = mask_array.reshape(mask_array.shape[0], -1).sum(axis=1).astype(int)
    largest = int(np.argmax(areas))
    fitting = [k for k in range(len(areas)) if _brute_force_largest_h(mask_array[k].astype(bool), row_mm, col_mm)]
    present = [k for k in fitting if k != largest]
    nearest = sorted(present, key=lambda k: (abs(k - largest), -areas[k], k))[: spec.n_slices - 1]
    expected = ([largest] if largest in fitting else []) + nearest
    if largest not in fitting:  # the largest slice holds no square: the next nearest one is used instead
        expected = sorted(fitting, key=lambda k: (abs(k - largest), -areas[k], k))[: spec.n_slices]
    assert [p.slice_index for p in patches.provenance] == expected
    for prov in patches.provenance:
        plane = mask_array[prov.slice_index]
        r0, c0, h, w = (int(v) for v in prov.box)
        assert plane[r0:r0 + h, c0:c0 + w].all(), "a patch pixel lies outside the ROI"
        assert h == _brute_force_largest_h(plane.astype(bool), row_mm, col_mm), "square is not the largest"
        # every output pixel centre maps inside the box (continuous IJK)
        uv = np.array([[u, v, 0, 1] for u in (0, spec.size - 1) for v in (0, spec.size - 1)], float)
        ijk = uv @ prov.patch_to_ijk.T
        assert np.all((ijk[:, 1] >= r0 - 0.5) & (ijk[:, 1] <= r0 + h - 0.5))
        assert np.all((ijk[:, 0] >= c0 - 0.5) & (ijk[:, 0] <= c0 + w - 0.5))


def test_largest_square_on_a_disc_is_inscribed():
    rr, cc = np.mgrid[0:101, 0:101]
    disc = (rr - 50) ** 2 + (cc - 50) ** 2 <= 40**2
    r0, c0, h, w = largest_square(disc, (1.0, 1.0))
    assert h == w and abs(h - 40 * np.sqrt(2)) <= 2  # inscribed square side = r·√2
    assert abs(r0 + (h - 1) / 2 - 50) <= 0.5 and abs(c0 + (w - 1) / 2 - 50) <= 0.5


def test_errors_name_the_problem(axial_case):
    reference = axial_case.phases["arterial"]
    mask = _mask(axial_case)
    with pytest.raises(InputError, match="Tumour.*empty"):
        extract_patches([reference], mask.with_array(np.zeros_like(mask.array)), label="Tumour")
    tiny = np.zeros_like(mask.array)
    tiny[30, 40:43, 40:43] = 1  # 3×3 pixels of 1.5 mm = 4.5 mm < 8 mm
    with pytest.raises(InputError, match=r"largest square inside the ROI is 4\.5 mm.*minimum of 8 mm"):
        extract_patches([reference], mask.with_array(tiny), PatchSpec(min_square_mm=8.0))
    moved = Volume(reference.array, reference.ijk_to_ras + _shift(5.0), "portal")
    with pytest.raises(InputError, match="portal.*not on the reference volume's grid"):
        extract_patches([reference, moved], mask)
    nan = reference.array.astype(np.float32).copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        extract_patches([reference.with_array(nan)], mask)


def _shift(mm: float) -> np.ndarray:
    shift = np.zeros((4, 4))
    shift[0, 3] = mm
    return shift


@pytest.mark.parametrize("strategy", ["largest_slice", "centroid"])
def test_case_patches_from_the_working_region_equal_whole_volume_patches(oblique_case, strategy):
    from TACEResponseLib.imaging.geometry import resample_to_reference
    from TACEResponseLib.imaging.patches import patches_for_case

    reference = oblique_case.phases["arterial"]
    portal = oblique_case.phases["portal"]
    shifted = Volume(portal.array, portal.ijk_to_ras + _shift(0.37), "portal")  # another grid: must be resampled
    mask = _mask(oblique_case)
    spec = PatchSpec(strategy=strategy, size=48, fov_mm=40.0)
    (region_patches,) = patches_for_case([reference, shifted], [mask], spec)
    whole = extract_patches([reference, resample_to_reference(shifted, reference)], mask, spec)
    for a, b in zip(region_patches.provenance, whole.provenance):
        assert a.slice_index == b.slice_index and a.box == pytest.approx(b.box, abs=1e-9)
        np.testing.assert_allclose(a.patch_to_ijk, b.patch_to_ijk, atol=1e-9)
        np.testing.assert_allclose(a.patch_to_ras, b.patch_to_ras, atol=1e-9)
    np.testing.assert_allclose(region_patches.images[:, 0], whole.images[:, 0], atol=1e-6)  # same pixels, float rounding
    np.testing.assert_allclose(region_patches.images[:, 1], whole.images[:, 1], atol=1e-4)
