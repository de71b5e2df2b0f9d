"""DICOM SEG as a segmentation, stacked acquisitions, and the DICOM reader's pixel checks.

SEGs are written by highdicom from masks on a CT series written with pydicom (oblique and
anisotropic); the real one is the liver SEG pydicom-data ships (see realdata.py). Expected masks
are the ones written; the real SEG's are decoded here by pydicom alone, frame by frame.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_helpers import write_ct_series, write_seg
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.segmentation import read_segmentation, segment_mask_on, write_segmentation
from TACEResponseLib.imaging.tumours import tumour_rois
from TACEResponseLib.imaging.volume_io import read_volume

SHAPE = (10, 36, 44)


def _oblique_grid(spacing=(0.7, 0.9, 2.5), degrees=20.0) -> np.ndarray:
    """IJK→RAS of an oblique, anisotropic grid (rotation about a tilted axis)."""
    theta = np.radians(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(theta / 2), -np.sin(theta / 2)], [0, np.sin(theta / 2), np.cos(theta / 2)]])
    matrix = np.eye(4)
    matrix[:3, :3] = tilt @ rotation @ np.diag(spacing)
    matrix[:3, 3] = (-20.0, 15.0, -40.0)
    return matrix


def _masks(shape=SHAPE):
    k, j, i = np.indices(shape)
    liver = ((i - 20) ** 2 / 300 + (j - 18) ** 2 / 200 + (k - 5) ** 2 / 16) < 1
    mass = ((i - 24) ** 2 + (j - 18) ** 2) < 30
    mass &= (k >= 3) & (k <= 6)                     # inside the liver: the segments overlap
    vein = (np.abs(i - 10) < 2) & (np.abs(j - 10) < 2) & (k >= 2) & (k <= 7)
    return {"Liver": liver, "Mass": mass, "Portal vein": vein}


TYPES = {"Liver": ("10200004", "Liver"), "Mass": ("4147007", "Mass"), "Portal vein": ("32764006", "Portal vein")}


@pytest.fixture(scope="module")
def ct_and_seg(tmp_path_factory):
    """A CT series (oblique, anisotropic) and a SEG of three overlapping segments written from it."""
    root = tmp_path_factory.mktemp("seg")
    rng = np.random.default_rng(3)
    array = rng.integers(900, 1300, size=SHAPE).astype(np.int16)
    grid = _oblique_grid()
    datasets = write_ct_series(root / "ct", array, grid, series_uid="1.2.826.0.1.3680043.8.498.10")
    masks = _masks()
    write_seg(root / "seg" / "1-1.dcm", datasets, masks, types=TYPES)
    return root, array, grid, masks, datasets


def test_seg_round_trip_reads_back_every_segment_on_the_image_grid(ct_and_seg):
    root, array, grid, masks, _ = ct_and_seg
    image = read_volume(root / "ct")
    np.testing.assert_array_equal(image.array, array.astype(np.int32) - 1024)
    np.testing.assert_allclose(image.ijk_to_ras, grid, atol=1e-4)
    segmentation = read_segmentation(root / "seg")  # a folder holding one SEG
    assert [(s.id, s.name) for s in segmentation.segments] == [("1", "Liver"), ("2", "Mass"), ("3", "Portal vein")]
    assert len(segmentation.layers) >= 2  # Mass overlaps the liver: another layer
    for segment_id, name in (("1", "Liver"), ("2", "Mass"), ("3", "Portal vein")):
        placed = segment_mask_on(segmentation, segment_id, image).array.astype(bool)
        np.testing.assert_array_equal(placed, masks[name], err_msg=name)


def test_segments_are_chosen_by_number_label_or_code_and_blank_means_the_tumours(ct_and_seg):
    root, *_ = ct_and_seg
    segmentation = read_segmentation(root / "seg" / "1-1.dcm")
    assert segmentation.default_segment_ids() == ["2"]
    assert segmentation.find("2").name == "Mass"
    assert segmentation.find("Portal vein").id == "3"
    assert segmentation.find("SCT:4147007").id == "2" and segmentation.find("10200004").id == "1"
    image = read_volume(root / "ct")
    rois = tumour_rois(segmentation, image)  # blank: tumours only, never the liver or the vein
    assert {roi.segment_name for roi in rois} == {"Mass"}
    assert sum(roi.voxels for roi in rois) == int(_masks()["Mass"].sum())


def test_a_seg_with_no_tumour_segment_asks_for_one(realdata):
    segmentation = read_segmentation(realdata("pydicom_data") / "liver.dcm")
    with pytest.raises(InputError, match="no tumour segment.*1 \\(Liver"):
        segmentation.default_segment_ids()


def test_the_real_liver_seg_is_placed_where_its_frames_say(realdata):
    """pydicom-data's liver SEG (3 frames of 512², BINARY): each frame's mask and plane position, decoded by
    pydicom alone, must land at the voxels of the segmentation grid that hold that position."""
    path = realdata("pydicom_data") / "liver.dcm"
    segmentation = read_segmentation(path)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.astype(bool)
    mask = segmentation.mask("Liver")
    assert mask.array.sum() == frames.sum() > 100000
    for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float) * [-1, -1, 1]
        ijk = np.round(mask.ras_to_ijk_points([position])[0]).astype(int)
        assert ijk[0] == 0 and ijk[1] == 0
        np.testing.assert_array_equal(mask.array[ijk[2]], frames[n])
    spacing = [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    np.testing.assert_allclose(mask.spacing[:2], spacing[::-1], atol=1e-6)


def test_seg_saved_as_seg_nrrd_keeps_names_and_codes(ct_and_seg, tmp_path):
    root, *_ = ct_and_seg
    segmentation = read_segmentation(root / "seg")
    back = read_segmentation(write_segmentation(segmentation, tmp_path / "s.seg.nrrd"))
    assert [s.name for s in back.segments] == ["Liver", "Mass", "Portal vein"]
    assert "SCT^4147007^Mass" in back.find("Mass").terminology


# --- stacked acquisitions, the SEG's acquisition, overlap ------------------------------------------
@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """One series stacking two contrast acquisitions at the same positions, and a SEG drawn on the second."""
    root = tmp_path_factory.mktemp("stacked")
    grid = _oblique_grid(degrees=0.0)
    arterial = np.full(SHAPE, 1100, np.int16)
    portal = np.full(SHAPE, 1200, np.int16)
    uid = "1.2.826.0.1.3680043.8.498.20"
    write_ct_series(root / "ct", arterial, grid, series_uid=uid, acquisition=1, name_prefix="1-")
    second = write_ct_series(root / "ct", portal, grid, series_uid=uid, acquisition=2, name_prefix="2-")
    write_seg(root / "seg.dcm", second, {"Mass": _masks()["Mass"]})
    return root, uid


def test_a_series_stacking_two_acquisitions_is_split_and_each_is_choosable(stacked):
    root, uid = stacked
    with pytest.raises(InputError, match=f"{uid}@1.*acquisition 1.*{uid}@2"):
        read_volume(root / "ct")
    first = read_volume(f"{root / 'ct'}#{uid}@1")
    second = read_volume(f"{root / 'ct'}#2")
    assert first.array.shape == second.array.shape == SHAPE
    assert (np.unique(first.array), np.unique(second.array)) == ([76], [176])
    assert second.metadata["acquisition"] == "2"


def test_acquisitions_without_a_number_are_split_by_content_time(tmp_path):
    grid = _oblique_grid(degrees=0.0)
    uid = "1.2.826.0.1.3680043.8.498.30"
    write_ct_series(tmp_path, np.full(SHAPE, 1000, np.int16), grid, series_uid=uid, content_time="101500", name_prefix="a")
    write_ct_series(tmp_path, np.full(SHAPE, 1300, np.int16), grid, series_uid=uid, content_time="101540", name_prefix="b")
    assert np.unique(read_volume(f"{tmp_path}#{uid}@101540").array).tolist() == [276]


def test_the_segs_acquisition_is_the_default_image(stacked):
    from TACEResponseLib.imaging.dicom import image_for_references, read_dicom_series

    root, uid = stacked
    segmentation = read_segmentation(root / "seg.dcm")
    references = segmentation.metadata["referenced_instances"]
    image = read_dicom_series(root / "ct", read_file=read_volume, referenced_instances=set(references))
    assert image.metadata["acquisition"] == "2"
    assert image_for_references(root / "ct", references) == f"{root / 'ct'}#{uid}@2"
    assert image_for_references(root / "ct", ["1.2.3.4"]) == str(root / "ct")  # no match: the folder, as given


def test_a_seg_of_another_series_is_accepted_only_where_it_overlaps_the_image(stacked, ct_and_seg, tmp_path):
    root, uid = stacked
    elsewhere = _oblique_grid(degrees=0.0)
    elsewhere[:3, 3] += (0.0, 0.0, 500.0)
    far = write_ct_series(tmp_path / "far", np.zeros(SHAPE, np.int16), elsewhere, frame_of_reference="1.2.826.0.1.3680043.8.498.2")
    write_seg(tmp_path / "far.dcm", far, {"Mass": _masks()["Mass"]})
    image = read_volume(f"{root / 'ct'}#{uid}@1")
    with pytest.raises(InputError, match=f"does not overlap.*references series {far[0].SeriesInstanceUID}.*{uid}"):
        segment_mask_on(read_segmentation(tmp_path / "far.dcm"), "Mass", image)
    other = segment_mask_on(read_segmentation(root / "seg.dcm"), "Mass", image)  # drawn on acquisition 2, same place
    np.testing.assert_array_equal(other.array.astype(bool), _masks()["Mass"])


def test_fractional_seg_is_thresholded_at_one_half_with_a_warning(ct_and_seg, tmp_path, caplog):
    root, array, grid, masks, datasets = ct_and_seg
    probability = np.where(masks["Mass"], 0.8, 0.0).astype(np.float32)
    probability[masks["Liver"] & ~masks["Mass"]] = 0.3  # below one half: not the tumour
    write_seg(tmp_path / "f.dcm", datasets, {}, fractional={"Mass": probability})
    segmentation = read_segmentation(tmp_path / "f.dcm")
    assert segmentation.metadata["segmentation_type"] == "FRACTIONAL"
    assert any("thresholded at 0.5" in w for w in segmentation.metadata["warnings"])
    placed = segment_mask_on(segmentation, "Mass", read_volume(root / "ct")).array.astype(bool)
    np.testing.assert_array_equal(placed, masks["Mass"])


# --- the reader's pixels ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,intercept,slope", [(np.int16, -1024, 1), (np.uint16, -1024, 1), (np.uint16, 0, 1),
                                                   (np.int16, 0, 2)])
def test_uncompressed_series_decode_exactly_as_simpleitk(tmp_path, dtype, intercept, slope):
    rng = np.random.default_rng(5)
    stored = rng.integers(0, 3000, size=(4, 20, 24)).astype(dtype)
    write_ct_series(tmp_path, stored, _oblique_grid(), intercept=intercept, slope=slope)
    volume = read_volume(tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sorted(str(p) for p in tmp_path.iterdir()))
    expected = sitk.GetArrayFromImage(reader.Execute())
    assert volume.array.dtype == expected.dtype
    np.testing.assert_array_equal(volume.array, expected)


def test_truncated_pixel_data_are_refused_not_zero_padded(tmp_path):
    datasets = write_ct_series(tmp_path / "series", np.zeros((3, 16, 16), np.int16), _oblique_grid())
    bomb = datasets[0]
    bomb.Rows = bomb.Columns = 4096
    bomb.PixelData = bytes(64)
    bomb.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match=r"truncated pixel data.*4096 × 4096.*33554432 bytes, the file holds 64"):
        read_volume(tmp_path / "bomb.dcm")
    bomb.save_as(tmp_path / "series" / "1-001.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match="truncated pixel data"):
        read_volume(tmp_path / "series")
    whole = (tmp_path / "series" / "1-002.dcm").read_bytes()
    (tmp_path / "series" / "1-001.dcm").write_bytes(whole[:-100])  # the file ends inside its pixels
    with pytest.raises(InputError, match="truncated pixel data"):
        read_volume(tmp_path / "series")


def test_predict_takes_a_seg_and_the_acquisition_it_references_from_a_folder_of_two(tmp_path, random_bundle, capsys):
    """`predict --image FOLDER --segmentation SEG`: the folder stacks two acquisitions; the tumour segment of
    the SEG (not its liver) is predicted, on the acquisition the SEG's frames reference."""
    import json

    from TACEResponseLib.cli import main

    shape = (16, 64, 64)
    k, j, i = np.indices(shape)
    grid = np.diag([0.8, 0.8, 2.0, 1.0])
    mass = ((i - 32) ** 2 + (j - 30) ** 2 + ((k - 8) * 2.5) ** 2) < 14 ** 2
    liver = ((i - 30) ** 2 / 700 + (j - 30) ** 2 / 600 + (k - 8) ** 2 / 60) < 1
    uid = "1.2.826.0.1.3680043.8.498.40"
    noise = np.random.default_rng(1).normal(0, 15, shape)
    first = (np.where(mass, 1150, np.where(liver, 1080, 900)) + noise).astype(np.int16)
    write_ct_series(tmp_path / "ct", first, grid, series_uid=uid, acquisition=1, name_prefix="1-")
    second = write_ct_series(tmp_path / "ct", first + 100, grid, series_uid=uid, acquisition=2, name_prefix="2-")
    write_seg(tmp_path / "seg.dcm", second, {"Liver": liver, "Mass": mass}, types=TYPES)
    assert main(["predict", "--image", str(tmp_path / "ct"), "--segmentation", str(tmp_path / "seg.dcm"),
                 "--bundle", str(random_bundle.path), "--device", "cpu", "--output", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    # it ran at all: the folder alone is refused as holding two acquisitions, so the SEG chose one
    assert {t["segment_name"] for t in result["tumours"]} == {"Mass"} and result["case_id"] == "ct"
    capsys.readouterr()


def test_a_manifest_row_with_a_seg_reads_the_acquisition_the_seg_references(stacked, tmp_path):
    from TACEResponseLib.imaging.manifest import read_manifest

    root, uid = stacked
    (tmp_path / "m.csv").write_text(f"case_id,arterial,segmentation,label\nc1,{root / 'ct'},{root / 'seg.dcm'},PR\n")
    (row,) = read_manifest(tmp_path / "m.csv", ["arterial"])
    assert str(row.images[0]) == f"{root / 'ct'}#{uid}@2" and row.segment is None  # blank: the SEG's tumours
    assert np.unique(read_volume(row.images[0]).array).tolist() == [176]
