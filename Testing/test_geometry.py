"""Geometry: IJK↔RAS, resampling between oblique / anisotropic grids, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, check_volume, ijk_to_ras_from, resample_to_reference, rotation_matrix


def _linear_field(volume: Volume, coeffs=(0.7, -1.3, 2.1), offset=5.0) -> Volume:
    k, j, i = np.meshgrid(*(np.arange(n) for n in volume.shape_kji), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    ras = volume.ijk_to_ras_points(ijk)
    values = ras @ np.asarray(coeffs) + offset
    return volume.with_array(values.reshape(volume.shape_kji).astype(np.float64))


def test_derived_spacing_direction_origin():
    rotation = rotation_matrix([10, 20, 30])
    matrix = ijk_to_ras_from([0.7, 0.9, 2.5], rotation, [1, 2, 3])
    volume = Volume(np.zeros((4, 5, 6)), matrix)
    np.testing.assert_allclose(volume.spacing, [0.7, 0.9, 2.5])
    np.testing.assert_allclose(volume.direction, rotation, atol=1e-12)
    np.testing.assert_allclose(volume.origin, [1, 2, 3])
    points = np.random.default_rng(0).uniform(-5, 5, size=(20, 3))
    np.testing.assert_allclose(volume.ras_to_ijk_points(volume.ijk_to_ras_points(points)), points, atol=1e-10)


def test_axial_axis_found_on_oblique_and_permuted_grids():
    # k runs along S: axial slices are array axis 0
    assert Volume(np.zeros((3, 4, 5)), ijk_to_ras_from([1, 1, 1], rotation_matrix([15, -10, 20]))).array_axis_for("axial") == 0
    # a grid whose j axis points along S (coronal acquisition stored with i, j, k = R, S, A)
    permuted = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], float)
    volume = Volume(np.zeros((3, 4, 5)), ijk_to_ras_from([1, 1, 1], permuted))
    assert volume.array_axis_for("axial") == 1
    assert volume.array_axis_for("coronal") == 0


def test_resampling_labelmap_onto_its_own_geometry_is_exact(oblique_case):
    mask = oblique_case.segmentation.mask(oblique_case.tumours[0].segment_id)
    # a tiny perturbation of the matrix makes the ITK path run instead of the shortcut
    jittered = Volume(mask.array, mask.ijk_to_ras + 1e-8, "mask")
    out = resample_to_reference(jittered, mask, interpolation="nearest")
    assert out.array.dtype == mask.array.dtype
    np.testing.assert_array_equal(out.array, mask.array)


def test_linear_resampling_between_oblique_anisotropic_grids_matches_physical_field():
    moving = Volume(np.zeros((30, 40, 36)), ijk_to_ras_from([1.1, 0.8, 2.5], rotation_matrix([8, -14, 33]), [-14, -16, -30]), "moving")
    moving = _linear_field(moving)
    reference = Volume(np.zeros((20, 25, 25)), ijk_to_ras_from([1.3, 1.3, 1.7], np.eye(3), [-12, -12, -14]), "reference")
    out = resample_to_reference(moving, reference, interpolation="linear", default_value=np.nan)
    expected = _linear_field(reference).array
    # compare where the reference voxel centre lies between moving voxel centres (ITK clamps
    # in the last half voxel at the border, which is not interpolation)
    k, j, i = np.meshgrid(*(np.arange(n) for n in reference.shape_kji), indexing="ij")
    ras = reference.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    moving_ijk = moving.ras_to_ijk_points(ras)
    upper = np.array(moving.shape_kji[::-1]) - 1
    inside = np.all((moving_ijk > 1e-6) & (moving_ijk < upper - 1e-6), axis=1).reshape(reference.shape_kji)
    assert inside.mean() > 0.5, "reference should lie mostly inside the moving volume"
    assert np.all(np.isfinite(out.array[inside]))
    # trilinear interpolation of a linear field is exact (up to float32 casting)
    np.testing.assert_allclose(out.array[inside], expected[inside], atol=2e-3 * np.abs(expected).max())
    assert np.allclose(out.ijk_to_ras, reference.ijk_to_ras)


def test_non_overlapping_phases_are_refused():
    a = Volume(np.zeros((10, 10, 10), np.float32), ijk_to_ras_from([1, 1, 1], origin=[0, 0, 0]), "arterial")
    b = Volume(np.zeros((10, 10, 10), np.float32), ijk_to_ras_from([1, 1, 1], origin=[500, 0, 0]), "portal")
    with pytest.raises(InputError, match="portal.*arterial.*overlap"):
        resample_to_reference(b, a)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((1, 20, 20)), "2-D"),
        (np.zeros((20, 20)), "3-D"),
        (np.where(np.eye(8)[None].repeat(4, 0) > 0, np.nan, 0.0), "NaN"),
    ],
)
def test_check_volume_rejects_bad_volumes(array, message):
    volume = Volume(array, np.eye(4), "CT")
    with pytest.raises(InputError, match=message):
        check_volume(volume)


def test_singular_matrix_is_refused():
    with pytest.raises(InputError, match="singular"):
        Volume(np.zeros((2, 2, 2)), np.zeros((4, 4)), "bad")


def test_resampling_only_the_part_the_reference_reaches_gives_the_same_voxels():
    """resample_to_reference crops the moving volume to the reference's reach before ITK sees it; the
    result must equal ITK resampling the whole moving volume (linear and nearest, at borders too)."""
    import SimpleITK as sitk

    from TACEResponseLib.imaging.geometry import support_box, to_sitk_image

    rng = np.random.default_rng(4)
    moving = Volume(rng.normal(0, 100, (40, 60, 56)).astype(np.float32),
                    ijk_to_ras_from([0.9, 0.8, 2.0], rotation_matrix([6, -9, 21]), [-20, -25, -40]), "moving")
    references = [  # inside, across the moving volume's border, and a thin box like a tumour's region
        Volume(np.zeros((10, 12, 14)), ijk_to_ras_from([1.1, 1.1, 1.5], np.eye(3), [-5, -5, -10]), "inside"),
        Volume(np.zeros((16, 30, 30)), ijk_to_ras_from([1.3, 1.3, 2.2], rotation_matrix([0, 0, 12]), [-30, -40, -50]),
               "border"),
        Volume(np.zeros((3, 20, 22)), ijk_to_ras_from([0.7, 0.7, 1.0], np.eye(3), [0, 0, -2]), "slab"),
    ]
    for reference in references:
        lo, hi = support_box(moving, reference)
        assert np.prod(hi - lo) < np.prod(moving.shape_kji)
        for interpolation, kind in (("linear", sitk.sitkLinear), ("nearest", sitk.sitkNearestNeighbor)):
            out = resample_to_reference(moving, reference, interpolation=interpolation, default_value=-999)
            resampler = sitk.ResampleImageFilter()
            resampler.SetReferenceImage(to_sitk_image(reference.with_array(np.zeros(reference.shape_kji, np.uint8))))
            resampler.SetInterpolator(kind)
            resampler.SetDefaultPixelValue(-999)
            whole = sitk.GetArrayFromImage(resampler.Execute(to_sitk_image(moving)))
            np.testing.assert_array_equal(out.array, whole, err_msg=f"{reference.name} {interpolation}")


def test_value_range_sees_nan_and_infinity():
    from TACEResponseLib.imaging.geometry import value_range

    array = np.random.default_rng(0).normal(size=(20, 300, 301)).astype(np.float32)
    assert value_range(array, block_bytes=4096) == (float(array.min()), float(array.max()))
    assert value_range(array[:, ::3, 1:]) == (float(array[:, ::3, 1:].min()), float(array[:, ::3, 1:].max()))
    for bad in (np.nan, np.inf, -np.inf):
        spoilt = array.copy()
        spoilt[13, 200, 7] = bad
        low, high = value_range(spoilt, block_bytes=4096)
        assert not (np.isfinite(low) and np.isfinite(high))
        with pytest.raises(InputError, match="1 voxels are NaN or infinite"):
            check_volume(Volume(spoilt, np.eye(4), "spoilt"))
