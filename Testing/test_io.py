"""Readers and writers: NRRD / NIfTI / DICOM geometry (LPS↔RAS), .seg.nrrd, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, ijk_to_ras_from, rotation_matrix
from TACEResponseLib.imaging.segmentation import Segmentation, read_segmentation, segment_mask_on, write_segmentation
from TACEResponseLib.imaging.volume_io import read_volume, write_volume


def _oblique_volume(dtype=np.int16) -> Volume:
    rng = np.random.default_rng(3)
    array = rng.integers(-1000, 1500, size=(7, 20, 24)).astype(dtype)
    matrix = ijk_to_ras_from([0.71, 0.83, 2.5], rotation_matrix([12, -7, 31]), [-101.25, 37.5, -280.125])
    return Volume(array, matrix, "ct")


def test_nrrd_round_trip_is_exact(tmp_path):
    volume = _oblique_volume()
    back = read_volume(write_volume(volume, tmp_path / "ct.nrrd"))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_array_equal(back.ijk_to_ras, volume.ijk_to_ras)


def test_nifti_round_trip_keeps_geometry(tmp_path):
    volume = _oblique_volume()
    back = read_volume(write_volume(volume, tmp_path / "ct.nii.gz"))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-5)  # NIfTI stores float32


def test_ras_is_lps_flipped_in_the_file(tmp_path):
    """The file stores LPS; an independent read with SimpleITK shows the flip."""
    volume = _oblique_volume()
    path = write_volume(volume, tmp_path / "ct.nrrd")
    image = sitk.ReadImage(str(path))
    voxel = (3, 5, 2)  # i, j, k
    lps = np.array(image.TransformIndexToPhysicalPoint(voxel))
    ras = volume.ijk_to_ras_points(np.array([voxel]))[0]
    np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-9)


def _write_dicom_series(volume: Volume, folder):
    import locale

    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the locale to "C", too
    try:
        _write_slices(volume, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(volume: Volume, folder):
    image = sitk.GetImageFromArray(volume.array)
    lps = np.diag([-1, -1, 1]) @ volume.ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    direction = lps / spacing
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((np.diag([-1, -1, 1]) @ volume.ijk_to_ras[:3, 3]).tolist())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.4242.1"
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        tags = {
            "0008|0060": "CT", "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL", "0020|000e": series_uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.4242", "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1), "0018|0050": f"{spacing[2]:.6f}",
            "0008|0018": f"{series_uid}.{k + 1}", "0028|1052": "0", "0028|1053": "1",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_geometry_is_converted_to_ras(tmp_path):
    volume = _oblique_volume()
    folder = tmp_path / "dicom"
    folder.mkdir()
    _write_dicom_series(volume, folder)
    back = read_volume(folder)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)


def test_seg_nrrd_keeps_segment_names_labels_and_layers(tmp_path):
    grid = _oblique_volume()
    a = np.zeros(grid.shape_kji, bool)
    a[2:5, 4:10, 5:12] = True
    b = np.zeros(grid.shape_kji, bool)
    b[3:6, 8:14, 10:20] = True  # overlaps a → second layer
    c = np.zeros(grid.shape_kji, bool)
    c[0:2, 15:19, 1:4] = True
    segmentation = Segmentation.from_masks(grid, {"Tumour": a, "Necrosis": b, "Satellite": c})
    assert [s.layer for s in segmentation.segments] == [0, 1, 0]
    back = read_segmentation(write_segmentation(segmentation, tmp_path / "t.seg.nrrd"))
    assert [(s.id, s.name, s.label_value, s.layer) for s in back.segments] == [
        (s.id, s.name, s.label_value, s.layer) for s in segmentation.segments
    ]
    np.testing.assert_array_equal(back.ijk_to_ras, grid.ijk_to_ras)
    for name, mask in {"Tumour": a, "Necrosis": b, "Satellite": c}.items():
        np.testing.assert_array_equal(back.mask(name).array.astype(bool), mask)


def test_plain_labelmap_becomes_segments(tmp_path):
    grid = _oblique_volume()
    labels = np.zeros(grid.shape_kji, np.uint8)
    labels[1:3, 2:6, 2:6] = 2
    labels[4:6, 10:15, 10:15] = 5
    back = read_segmentation(write_volume(grid.with_array(labels), tmp_path / "labels.nrrd"))
    assert [s.name for s in back.segments] == ["Label_2", "Label_5"]
    assert back.mask("Label_5").array.sum() == (labels == 5).sum()


def test_segment_errors_name_the_problem(tmp_path):
    grid = _oblique_volume()
    empty = Segmentation.from_masks(grid, {"Tumour": np.zeros(grid.shape_kji, bool)})
    with pytest.raises(InputError, match="'Tumour'.*empty"):
        segment_mask_on(empty, "Tumour", grid)
    with pytest.raises(InputError, match="'Liver' not found.*Tumour"):
        empty.find("Liver")


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "broken.nrrd"
    bad.write_text("this is not an image")
    with pytest.raises(InputError, match="broken.nrrd.*cannot be read"):
        read_volume(bad)
    with pytest.raises(InputError, match="missing.nrrd.*does not exist"):
        read_volume(tmp_path / "missing.nrrd")
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path)


def test_two_dimensional_and_nan_files_are_refused(tmp_path):
    flat = Volume(np.zeros((1, 16, 16), np.float32), np.eye(4), "flat")
    with pytest.raises(InputError, match="flat.nrrd.*2-D"):
        read_volume(write_volume(flat, tmp_path / "flat.nrrd"))
    nan = Volume(np.full((4, 6, 6), np.nan, np.float32), np.eye(4), "nan")
    with pytest.raises(InputError, match="nan.nrrd.*NaN"):
        read_volume(write_volume(nan, tmp_path / "nan.nrrd"))


@pytest.mark.parametrize("name, data_name", [("ct.nhdr", "ct.raw.gz"), ("ct.mhd", "ct.zraw")])
def test_detached_header_names_its_data_file_after_itself(tmp_path, name, data_name):
    """A header and its data file keep their final names (not a temporary one) and a second write
    replaces both, leaving nothing else in the folder."""
    volume = _oblique_volume()
    for _ in range(2):
        back = read_volume(write_volume(volume, tmp_path / name))
    np.testing.assert_array_equal(back.array, volume.array)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, data_name])
    assert data_name in (tmp_path / name).read_text()


@pytest.mark.parametrize("name", ["out.nrrd", "out.nhdr"])
def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch, name):
    volume = _oblique_volume()

    def failing_write(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(RuntimeError):
        write_volume(volume, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os

    path = write_volume(_oblique_volume(), tmp_path / "ct.nrrd")
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_reading_dicom_keeps_the_process_locale(tmp_path):
    """GDCM switches the C locale to "C"; afterwards Python would read and print text as ASCII."""
    import locale

    folder = tmp_path / "dicom"
    folder.mkdir()
    _write_dicom_series(_oblique_volume(), folder)
    before = locale.getpreferredencoding(False)
    assert before.upper().replace("-", "") == "UTF8", "the test needs a UTF-8 locale to start from"
    read_volume(folder)
    assert locale.getpreferredencoding(False) == before


def test_reading_keeps_simpleitks_buffer_without_a_copy(tmp_path):
    import gc

    import SimpleITK as sitk

    from TACEResponseLib.imaging.sanity import check_scan

    array = np.random.default_rng(1).normal(0, 300, (12, 20, 24)).astype(np.float32)
    path = write_volume(Volume(array, np.diag([0.8, 0.8, 2.0, 1.0]), "ct"), tmp_path / "ct.nrrd", compress=False)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    image = volume.array.base.image  # the array is the image's own buffer, which it keeps alive
    assert volume.array.ctypes.data == sitk.GetArrayViewFromImage(image).ctypes.data
    gc.collect()
    volume.array[0, 0, 0] = 42.0  # writable, like any array the reader gave before
    assert sitk.GetArrayViewFromImage(image)[0, 0, 0] == 42.0 and float(volume.array.sum()) == pytest.approx(
        float(array.sum()) - float(array[0, 0, 0]) + 42.0, rel=1e-4)
    # values unchecked only on request, and then check_scan (the predictor's) still refuses NaN
    array[3, 4, 5] = np.nan
    spoilt = write_volume(Volume(array, np.eye(4), "spoilt"), tmp_path / "spoilt.nrrd", compress=False)
    with pytest.raises(InputError, match="NaN"):
        read_volume(spoilt)
    unchecked = read_volume(spoilt, check_values=False)
    with pytest.raises(InputError, match="1 voxels are NaN or infinite"):
        check_scan(unchecked, label="spoilt")
