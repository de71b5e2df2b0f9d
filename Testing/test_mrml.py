"""MRML adapter on real MRML classes (slicer-core): nodes ↔ volumes, segments, storage."""

from __future__ import annotations

import numpy as np
import pytest

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import grid_offset
from TACEResponseLib.imaging.volume_io import read_volume, write_volume
from TACEResponseLib.imaging.segmentation import write_segmentation
from TACEResponseLib.frontend.mrml import load_volume_node, save_volume_node, segment_mask_from_node, segmentation_to_node, volume_from_node, volume_to_node


def test_nrrd_to_node_to_nrrd_round_trip_is_exact(oblique_case, mrml, tmp_path):
    volume = oblique_case.phases["arterial"]
    path = write_volume(volume, tmp_path / "in.nrrd")
    node = load_volume_node(path, mrml.scene)  # Slicer's own reader
    from_node = volume_from_node(node)
    np.testing.assert_array_equal(from_node.array, volume.array)
    # Slicer's reader rebuilds the matrix from spacing × unit directions: equal to double rounding
    np.testing.assert_allclose(from_node.ijk_to_ras, volume.ijk_to_ras, rtol=0, atol=1e-12)
    out = read_volume(save_volume_node(node, tmp_path / "out.nrrd"))  # Slicer's own writer
    np.testing.assert_array_equal(out.array, volume.array)
    np.testing.assert_allclose(out.ijk_to_ras, volume.ijk_to_ras, atol=1e-12)
    # and through our own writer into a node we built
    built = volume_to_node(volume, mrml.scene, "built")
    np.testing.assert_array_equal(volume_from_node(built).ijk_to_ras, volume.ijk_to_ras)


def test_segment_from_node_matches_library_mask(oblique_case, mrml):
    reference = volume_to_node(oblique_case.phases["arterial"], mrml.scene, "arterial")
    seg_node = segmentation_to_node(oblique_case.segmentation, mrml.scene)
    segment = oblique_case.segmentation.segments[0]
    assert seg_node.GetSegmentation().GetSegment(segment.id).GetName() == segment.name
    by_id = segment_mask_from_node(seg_node, segment.id, reference)
    by_name = segment_mask_from_node(seg_node, segment.name, reference)
    expected = oblique_case.segmentation.mask(segment.id)
    np.testing.assert_array_equal(by_id.array, expected.array)
    np.testing.assert_array_equal(by_name.array, expected.array)
    np.testing.assert_allclose(by_id.ijk_to_ras, expected.ijk_to_ras)


def test_seg_nrrd_written_here_loads_in_slicers_storage_node(oblique_case, mrml, tmp_path):
    import slicer

    path = write_segmentation(oblique_case.segmentation, tmp_path / "t.seg.nrrd")
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    storage = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segment = oblique_case.segmentation.segments[0]
    assert node.GetSegmentation().GetSegment(segment.id).GetName() == segment.name
    reference = volume_to_node(oblique_case.phases["arterial"], mrml.scene, "arterial")
    mask = segment_mask_from_node(node, segment.id, reference)
    np.testing.assert_array_equal(mask.array, oblique_case.segmentation.mask(segment.id).array)
    del slicer


def test_parent_linear_transform_is_applied(axial_case, mrml):
    import slicer

    node = volume_to_node(axial_case.phases["arterial"], mrml.scene, "ct")
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = [10.0, -5.0, 2.5]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    node.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(volume_from_node(node).ijk_to_ras, shift @ axial_case.phases["arterial"].ijk_to_ras)


def test_segment_errors(axial_case, mrml):
    reference = volume_to_node(axial_case.phases["arterial"], mrml.scene, "arterial")
    seg_node = segmentation_to_node(axial_case.segmentation, mrml.scene)
    with pytest.raises(InputError, match="'Liver' not found.*Tumour"):
        segment_mask_from_node(seg_node, "Liver", reference)
    seg_node.GetSegmentation().AddEmptySegment("Empty", "Empty")
    with pytest.raises(InputError, match="'Empty' is empty"):
        segment_mask_from_node(seg_node, "Empty", reference)


def test_prediction_nodes_keep_reference_geometry_and_survive_an_mrb(random_bundle, oblique_case, mrml, tmp_path):
    from TACEResponseLib.prediction.predictor import Predictor
    from TACEResponseLib.frontend.mrml import create_headless_scene, predict_nodes, read_result_from_scene, show_prediction

    reference = volume_to_node(oblique_case.phases["arterial"], mrml.scene, "arterial")
    seg_node = segmentation_to_node(oblique_case.segmentation, mrml.scene)
    result, nodes = predict_nodes(Predictor(random_bundle, device="cpu"), [reference], seg_node)
    assert result.tumours[0].segment_id == oblique_case.tumours[0].segment_id
    heat = volume_from_node(nodes.heatmap_node)
    # a box-sized heatmap on the full-size reference: the node keeps the box's own geometry (a box of the
    # reference grid), so Slicer overlays each voxel where it came from in RAS
    full = volume_from_node(reference)
    assert heat.shape_kji != full.shape_kji and grid_offset(heat, full).tolist() == result.heatmap_box_kji[0]
    np.testing.assert_array_equal(heat.ijk_to_ras, result.heatmap.ijk_to_ras)
    np.testing.assert_array_equal(heat.array, result.heatmap.array)
    hot = np.argwhere(heat.array > 0.5)
    mask = segment_mask_from_node(seg_node, result.tumours[0].segment_id, reference).array
    inside = mask[tuple((hot + grid_offset(heat, full)).T)]
    assert hot.size and inside.mean() > 0.95, "hot heatmap voxels must land on the tumour of the reference"
    assert nodes.table_node.GetNumberOfRows() == len(result.tumours)
    assert nodes.table_node.GetTable().GetColumnByName("P(CR)").GetValue(0) == pytest.approx(result.tumours[0].probabilities[0])
    # a second run updates the same nodes instead of adding new ones
    count = mrml.scene.GetNumberOfNodes()
    show_prediction(mrml.scene, result, result.heatmap, reference, output_nodes=nodes)
    assert mrml.scene.GetNumberOfNodes() == count

    mrb = tmp_path / "scene.mrb"
    assert mrml.scene.WriteToMRB(str(mrb))
    loaded = create_headless_scene()
    assert loaded.scene.ReadFromMRB(str(mrb))
    heat_node = next(loaded.scene.GetNthNodeByClass(n, "vtkMRMLScalarVolumeNode")
                     for n in range(loaded.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))
                     if loaded.scene.GetNthNodeByClass(n, "vtkMRMLScalarVolumeNode").GetAttribute("TACEResponse.Heatmap"))
    reloaded = volume_from_node(heat_node)
    np.testing.assert_allclose(reloaded.array, result.heatmap.array)
    np.testing.assert_allclose(reloaded.ijk_to_ras, heat.ijk_to_ras, atol=1e-9)
    (back,) = read_result_from_scene(loaded.scene)
    assert back.tumours[0].probabilities == result.tumours[0].probabilities
    assert heat_node.GetDisplayNode().GetColorNode().GetName() == "TACEResponse inferno"
    loaded.scene.Clear(1)


def test_reading_a_segment_leaves_no_node_behind(axial_case, mrml):
    reference = volume_to_node(axial_case.phases["arterial"], mrml.scene, "arterial")
    seg_node = segmentation_to_node(axial_case.segmentation, mrml.scene)
    before = mrml.scene.GetNumberOfNodes()
    for _ in range(3):
        segment_mask_from_node(seg_node, "Tumour", reference)
    assert mrml.scene.GetNumberOfNodes() == before
