"""Segmentation files as Slicer writes and reads them.

Round trips between this project's reader/writer, Slicer's own C++ storage node
(``vtkMRMLSegmentationStorageNode`` of the slicer-core wheel) and slicerio, on files Slicer
wrote (slicerio's package data: a chest CT segmentation saved by 3D Slicer, one layer and two
overlapping layers) and on files Slicer's writer makes here in their own geometry (cropped to
the segments, shifted, finer than the image, several layers). Expected masks come from
Slicer's own export of each segment onto the image (``ExportSegmentsToLabelmapNode``), never
from this project's code. Also the labelmap kinds a user may bring instead: values other than
1, float labelmaps, probability maps, and a segmentation that misses the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import nrrd
import numpy as np
import pytest

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.frontend.mrml import (
    add_tumour_segment,
    load_volume_node,
    segment_mask_from_node,
    segment_tag,
    segmentation_from_node,
    segmentation_to_node,
    volume_to_node,
)
from TACEResponseLib.imaging.geometry import Volume, ijk_to_ras_from, rotation_matrix
from TACEResponseLib.imaging.segmentation import (
    LIVER_TUMOUR_COLOR,
    LIVER_TUMOUR_TERMINOLOGY,
    TERMINOLOGY_TAG,
    Segmentation,
    read_segmentation,
    segment_mask_on,
    write_segmentation,
)
from TACEResponseLib.imaging.volume_io import read_volume, write_volume

DATA = Path(__file__).resolve().parent / "data"


def slicerio_data(name: str) -> Path:
    """A file of slicerio's package data (files written by 3D Slicer)."""
    import slicerio

    path = Path(slicerio.__file__).parent / "data" / name
    assert path.is_file(), f"slicerio no longer ships {name}"
    return path


def load_with_slicer(scene, path: Path):
    """A segmentation node read by Slicer's own storage node."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", path.name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


def save_with_slicer(scene, node, path: Path, crop: bool = True) -> Path:
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetCropToMinimumExtent(crop)
    storage.SetFileName(str(path))
    assert storage.WriteData(node), f"Slicer could not write {path}"
    return path


def node_segment_ids(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def ball_masks(grid: Volume, balls: dict[str, tuple[tuple[float, float, float], float]]) -> dict[str, np.ndarray]:
    k, j, i = np.indices(grid.shape_kji)
    ras = grid.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1)).reshape(*grid.shape_kji, 3)
    return {name: np.linalg.norm(ras - np.asarray(centre), axis=-1) < radius for name, (centre, radius) in balls.items()}


@pytest.fixture()
def oblique_image():
    return Volume(np.zeros((30, 40, 50), np.int16),
                  ijk_to_ras_from((1.0, 1.2, 2.0), rotation_matrix((5.0, -3.0, 10.0)), (-20.0, -30.0, -25.0)), "image")


# --- files written by 3D Slicer ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Segmentation.seg.nrrd", "SegmentationOverlapping.seg.nrrd"])
def test_slicer_written_files_match_slicers_own_reader(mrml, name):
    path = slicerio_data(name)
    image_path = slicerio_data("CTChest4.nrrd")
    ours = read_segmentation(path)
    node = load_with_slicer(mrml.scene, path)
    image_node = load_volume_node(image_path, mrml.scene)
    image = read_volume(image_path)
    assert [s.id for s in ours.segments] == node_segment_ids(node)
    for segment in ours.segments:
        vtk_segment = node.GetSegmentation().GetSegment(segment.id)
        assert segment.name == vtk_segment.GetName()
        assert segment.terminology == segment_tag(vtk_segment, TERMINOLOGY_TAG)
        np.testing.assert_allclose(segment.color, vtk_segment.GetColor(), atol=1e-5)
        expected = segment_mask_from_node(node, segment.id, image_node).array
        np.testing.assert_array_equal(segment_mask_on(ours, segment.id, image).array, expected, err_msg=segment.name)


def test_overlapping_layers_keep_both_segments_where_they_overlap():
    ours = read_segmentation(slicerio_data("SegmentationOverlapping.seg.nrrd"))
    assert len(ours.layers) == 2
    sphere = ours.mask("overlapping sphere").array.astype(bool)
    others = [ours.mask(s.id).array.astype(bool) for s in ours.segments if s.name != "overlapping sphere"]
    overlap = sum(int((sphere & other).sum()) for other in others)
    assert sphere.any() and overlap > 0, "the file's sphere should overlap other segments (that is why it has 2 layers)"


def test_label_values_other_than_one_in_a_slicer_file():
    ours = read_segmentation(slicerio_data("Segmentation.seg.nrrd"))
    lung = ours.find("right lung")
    assert lung.label_value != 1
    np.testing.assert_array_equal(ours.mask("right lung").array, (ours.layers[lung.layer] == lung.label_value))


# --- Slicer's writer here: cropped, shifted, finer, several layers -------------------------------
def test_cropped_shifted_finer_segmentation_lands_where_slicer_puts_it(mrml, tmp_path, oblique_image):
    fine = Volume(np.zeros((40, 50, 60), np.uint8), ijk_to_ras_from((0.5, 0.5, 0.75), None, (-5.0, -10.0, -8.0)))
    masks = ball_masks(fine, {"Tumour": ((5.0, 2.0, 3.0), 6.0), "Satellite": ((9.0, 2.0, 3.0), 4.0)})
    node = segmentation_to_node(Segmentation.from_masks(fine, masks), mrml.scene, "fine")
    path = save_with_slicer(mrml.scene, node, tmp_path / "fine.seg.nrrd", crop=True)
    header = nrrd.read_header(str(path))
    assert header["kinds"] == ["list", "domain", "domain", "domain"], "two overlapping segments → two layers"
    assert header["Segmentation_ReferenceImageExtentOffset"] != "0 0 0", "Slicer cropped the file to the segments"
    assert tuple(header["sizes"][1:]) < fine.shape_kji[::-1]
    ours = read_segmentation(path)
    image_node = volume_to_node(oblique_image, mrml.scene, "image")
    for segment in ours.segments:
        expected = segment_mask_from_node(node, segment.id, image_node).array
        assert expected.any()
        np.testing.assert_array_equal(segment_mask_on(ours, segment.id, oblique_image).array, expected)


def test_written_here_reads_in_slicer_and_slicerio_with_layers_and_terminology(mrml, tmp_path, oblique_image):
    import slicerio

    masks = ball_masks(oblique_image, {"Tumour": ((0.0, 0.0, 0.0), 8.0), "Necrosis": ((2.0, 0.0, 0.0), 4.0),
                                       "Satellite": ((-10.0, 6.0, 4.0), 3.0)})
    segmentation = Segmentation.from_masks(oblique_image, masks, terminology=LIVER_TUMOUR_TERMINOLOGY)
    segmentation.segments[1].terminology = None
    segmentation.segments[2].tags = {"Origin": "test"}
    path = write_segmentation(segmentation, tmp_path / "ours.seg.nrrd")
    assert nrrd.read_header(str(path))["kinds"] == ["list", "domain", "domain", "domain"]

    node = load_with_slicer(mrml.scene, path)
    image_node = volume_to_node(oblique_image, mrml.scene, "image")
    for segment, (name, mask) in zip(segmentation.segments, masks.items()):
        vtk_segment = node.GetSegmentation().GetSegment(segment.id)
        assert vtk_segment.GetName() == name
        np.testing.assert_array_equal(segment_mask_from_node(node, segment.id, image_node).array, mask)
    tumour = node.GetSegmentation().GetSegment(segmentation.segments[0].id)
    assert segment_tag(tumour, TERMINOLOGY_TAG) == LIVER_TUMOUR_TERMINOLOGY
    assert segment_tag(node.GetSegmentation().GetSegment(segmentation.segments[2].id), "Origin") == "test"

    read_by_slicerio = slicerio.read_segmentation(str(path))
    for segment, mask in zip(segmentation.segments, masks.values()):
        np.testing.assert_array_equal(slicerio.segment_mask(read_by_slicerio, segment.id).transpose(2, 1, 0), mask)
    back = read_segmentation(path)
    assert [(s.id, s.name, s.layer, s.label_value, s.terminology, s.tags) for s in back.segments] == [
        (s.id, s.name, s.layer, s.label_value, s.terminology, s.tags) for s in segmentation.segments]


def test_slicerio_written_file_reads_here(tmp_path, oblique_image):
    import slicerio

    from TACEResponseLib.imaging.geometry import LPS_TO_RAS

    masks = ball_masks(oblique_image, {"a": ((0.0, 0.0, 0.0), 6.0), "b": ((3.0, 0.0, 0.0), 5.0)})
    data = slicerio.create_segmentation(oblique_image.shape_kji[::-1], LPS_TO_RAS @ oblique_image.ijk_to_ras)
    for name, mask in masks.items():
        slicerio.add_segment(data, mask.transpose(2, 1, 0), {"id": f"id_{name}", "name": name})
    slicerio.write_segmentation(str(tmp_path / "sio.seg.nrrd"), data)
    ours = read_segmentation(tmp_path / "sio.seg.nrrd")
    assert len(ours.layers) == 2
    np.testing.assert_allclose(ours.ijk_to_ras, oblique_image.ijk_to_ras, atol=1e-9)
    for name, mask in masks.items():
        np.testing.assert_array_equal(segment_mask_on(ours, name, oblique_image).array, mask)


# --- terminology -----------------------------------------------------------------------------------
def test_liver_tumour_terminology_is_an_entry_of_slicers_default_lists():
    from slicerio.segmentation import terminology_entry_from_string

    codes = json.loads((DATA / "slicer_terminology_codes.json").read_text(encoding="utf-8"))
    entry = terminology_entry_from_string(LIVER_TUMOUR_TERMINOLOGY)
    assert entry["contextName"] == codes["category_type_context"]
    category = codes["categories"]["^".join(entry["category"][:2])]
    assert category["meaning"] == entry["category"][2]
    kind = category["types"]["^".join(entry["type"][:2])]
    assert kind["meaning"] == entry["type"][2]
    assert entry["anatomicContextName"] == codes["anatomic_context"]
    assert codes["anatomic_regions"]["^".join(entry["anatomicRegion"][:2])] == entry["anatomicRegion"][2] == "Liver"
    assert np.allclose(np.array(kind["rgb"]) / 255.0, LIVER_TUMOUR_COLOR), "Slicer's recommended colour for the type"


def test_new_tumour_segment_and_phantoms_carry_the_terminology(mrml, tmp_path, axial_case):
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    segment_id = add_tumour_segment(node)
    segment = node.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "Tumour" and segment_tag(segment, TERMINOLOGY_TAG) == LIVER_TUMOUR_TERMINOLOGY
    assert all(s.terminology == LIVER_TUMOUR_TERMINOLOGY for s in axial_case.segmentation.segments)
    # through a node and back onto the reference grid (what the panel writes for the background process)
    reference = volume_to_node(axial_case.phases["arterial"], mrml.scene, "arterial")
    seg_node = segmentation_to_node(axial_case.segmentation, mrml.scene)
    again = segmentation_from_node(seg_node, reference)
    assert [s.terminology for s in again.segments] == [s.terminology for s in axial_case.segmentation.segments]
    path = write_segmentation(again, tmp_path / "panel.seg.nrrd")
    assert LIVER_TUMOUR_TERMINOLOGY in nrrd.read_header(str(path))["Segment0_Tags"]


# --- labelmaps users bring instead ------------------------------------------------------------------
def test_plain_labelmap_with_values_other_than_one(tmp_path, oblique_image):
    labels = np.zeros(oblique_image.shape_kji, np.int16)
    labels[5:9, 10:15, 10:16] = 3
    labels[15:18, 20:26, 30:34] = 7
    back = read_segmentation(write_volume(oblique_image.with_array(labels), tmp_path / "labels.nii.gz"))
    assert [(s.name, s.label_value) for s in back.segments] == [("Label_3", 3), ("Label_7", 7)]
    np.testing.assert_array_equal(back.mask("Label_7").array, labels == 7)
    assert back.find("7").name == "Label_7", "a plain labelmap's segment can be chosen by its label value"


def test_float_labelmap_with_whole_values_is_a_labelmap(tmp_path, oblique_image):
    labels = np.zeros(oblique_image.shape_kji, np.float32)
    labels[5:9, 10:15, 10:16] = 2.0
    back = read_segmentation(write_volume(oblique_image.with_array(labels), tmp_path / "float.nrrd"))
    assert [s.name for s in back.segments] == ["Label_2"] and np.issubdtype(back.layers[0].dtype, np.integer)
    np.testing.assert_array_equal(segment_mask_on(back, "Label_2", oblique_image).array, labels == 2.0)


@pytest.mark.parametrize("value, message", [(0.37, "non-integer values.*0.37.*probability map"),
                                            (np.nan, "NaN or infinite"), (-2.0, "negative")])
def test_probability_maps_and_bad_values_are_refused(tmp_path, oblique_image, value, message):
    labels = np.zeros(oblique_image.shape_kji, np.float32)
    labels[5:9, 10:15, 10:16] = 1.0
    labels[6, 11, 11] = value
    path = write_volume(oblique_image.with_array(labels), tmp_path / "map.nrrd") if np.isfinite(value) else \
        _write_raw_nrrd(tmp_path / "map.nrrd", labels, oblique_image)
    with pytest.raises(InputError, match=rf"map\.nrrd.*{message}"):
        read_segmentation(path)


def _write_raw_nrrd(path: Path, array: np.ndarray, grid: Volume) -> Path:
    """A NRRD that write_volume refuses to write (NaN voxels), written with pynrrd."""
    from TACEResponseLib.imaging.geometry import LPS_TO_RAS

    lps = LPS_TO_RAS @ grid.ijk_to_ras
    nrrd.write(str(path), array.transpose(2, 1, 0), {"space": "left-posterior-superior",
                                                      "space directions": lps[:3, :3].T, "space origin": lps[:3, 3]})
    return path


def test_segmentation_that_misses_the_image_is_a_clear_error(oblique_image):
    far = Volume(np.zeros((10, 10, 10), np.uint8), ijk_to_ras_from((1.0, 1.0, 1.0), None, (400.0, 400.0, 400.0)))
    mask = np.zeros(far.shape_kji, bool)
    mask[3:6, 3:6, 3:6] = True
    segmentation = Segmentation.from_masks(far, {"Tumour": mask}, name="elsewhere")
    with pytest.raises(InputError, match=r"'Tumour' of 'elsewhere' does not overlap the image 'image'.*RAS"):
        segment_mask_on(segmentation, "Tumour", oblique_image)


def test_segment_smaller_than_an_image_voxel_is_a_clear_error(oblique_image):
    tiny = Volume(np.zeros((9, 9, 9), np.uint8), ijk_to_ras_from((0.05, 0.05, 0.05), None, (0.33, 0.41, 0.27)))
    mask = np.zeros(tiny.shape_kji, bool)
    mask[4, 4, 4] = True
    segmentation = Segmentation.from_masks(tiny, {"Speck": mask}, name="speck")
    with pytest.raises(InputError, match=r"'Speck'.*covers no voxel centre.*smaller than one"):
        segment_mask_on(segmentation, "Speck", oblique_image)


def test_project_files_of_the_old_vector_kind_are_refused_with_the_reason(tmp_path):
    """Earlier versions of this project wrote layers as a SimpleITK vector image (NRRD kind 'vector')."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.zeros((4, 5, 6, 2), np.uint8), isVector=True)
    for key, value in {"Segment0_ID": "Segment_1", "Segment0_Name": "Tumour", "Segment0_LabelValue": "1",
                       "Segment0_Layer": "0"}.items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(tmp_path / "old.seg.nrrd"))
    assert nrrd.read_header(str(tmp_path / "old.seg.nrrd"))["kinds"][0] == "vector"
    with pytest.raises(InputError, match=r"old\.seg\.nrrd: not a segmentation file Slicer can read.*kinds"):
        read_segmentation(tmp_path / "old.seg.nrrd")


def test_predict_with_a_slicer_cropped_seg_nrrd_gives_the_full_grid_result(mrml, tmp_path, axial_case, random_bundle):
    """`tace-response predict` on the segmentation Slicer saves cropped to its segments (its own grid,
    shifted by ReferenceImageExtentOffset) gives the same tumours and probabilities as on the full grid."""
    from TACEResponseLib.cli import main
    from TACEResponseLib.prediction.results import PredictionResult

    image = write_volume(axial_case.phases["arterial"], tmp_path / "arterial.nrrd")
    full = write_segmentation(axial_case.segmentation, tmp_path / "full.seg.nrrd")
    node = segmentation_to_node(axial_case.segmentation, mrml.scene, "tumour")
    cropped = save_with_slicer(mrml.scene, node, tmp_path / "cropped.seg.nrrd", crop=True)
    assert nrrd.read_header(str(cropped))["Segmentation_ReferenceImageExtentOffset"] != "0 0 0"
    segment = axial_case.segmentation.segments[0].id
    results = []
    for name, path in (("full", full), ("cropped", cropped)):
        code = main(["predict", "--image", str(image), "--segmentation", str(path), "--segment", segment,
                     "--bundle", str(random_bundle.path), "--output", str(tmp_path / name), "--device", "cpu"])
        assert code == 0
        results.append(PredictionResult.load_json(tmp_path / name / "result.json"))
    assert [t.label for t in results[0].tumours] == [t.label for t in results[1].tumours]
    for a, b in zip(results[0].tumours, results[1].tumours):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
        assert a.volume_ml == pytest.approx(b.volume_ml)


def test_segment_box_is_the_whole_grid_mask_cropped(oblique_image, oblique_case):
    """segment_box_on gives the segment's box of the reference grid (no full-size array) with exactly
    the voxels segment_mask_on puts on the whole grid: same grid, and a cropped/shifted/finer file grid."""
    from TACEResponseLib.imaging.geometry import grid_offset, in_grid
    from TACEResponseLib.imaging.segmentation import label_box, segment_box_on

    segmentation = oblique_case.segmentation
    reference = oblique_case.reference
    finer = Segmentation.from_masks(
        Volume(np.zeros((60, 80, 100), np.uint8),
               ijk_to_ras_from((0.5, 0.6, 1.0), rotation_matrix((5.0, -3.0, 10.0)), (-10.0, -15.0, -12.0))),
        {"Blob": _ball((60, 80, 100), (30, 40, 50), 12)})
    for seg, image in ((segmentation, reference), (finer, oblique_image)):
        for segment in seg.segments:
            box = segment_box_on(seg, segment.id, image)
            whole = segment_mask_on(seg, segment.id, image)
            offset = grid_offset(box, image)
            assert offset is not None and offset.tolist() == box.metadata["crop_offset_kji"]
            np.testing.assert_array_equal(in_grid(box, image), whole.array)
            assert box.array.sum() == whole.array.sum() > 0 and box.array.size < whole.array.size
    layer = np.zeros((7, 8, 9), np.uint8)
    layer[2:4, 5, 1:8] = 3
    assert [v.tolist() for v in label_box(layer, 3, slab=2)] == [[2, 5, 1], [4, 6, 8]]
    assert label_box(layer, 1) is None


def _ball(shape, centre, radius):
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2
