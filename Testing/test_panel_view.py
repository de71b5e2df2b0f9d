"""What the panel shows, through the class the module fills it with (PanelView), on the real .ui
rendered offscreen (Testing/render_panel.py): a multifocal case that does not bury the panel, a
click that centres the slice views on a tumour, a stale result greyed, and every warning where the
number is (an unreliable tumour, survival numbers from values outside the training range)."""

from __future__ import annotations

import types

import numpy as np
import pytest
from scipy.ndimage import label as connected

from TACEResponseLib.frontend import panel, selftest
from TACEResponseLib.networks.trust import TumourTrust
from TACEResponseLib.prediction.results import NotAssessableTumour, PatientPrediction, PredictionResult, TumourPrediction

CLASSES = ["CR", "PR", "SD", "PD"]


@pytest.fixture(scope="module")
def qapp():
    from render_panel import application

    return application()


def multifocal_result(assessable: int, not_assessable: int, unreliable: tuple[int, ...] = (), survival=None):
    """A hand-made result (a DISPLAY TEST, not a prediction) with islands numbered by size as a prediction numbers them."""
    rng = np.random.default_rng(assessable * 100 + not_assessable)
    tumours = []
    for n in range(assessable):
        p = rng.dirichlet([1, 1, 1, 1]).tolist()
        trust = TumourTrust(views=6, spread=[0.02] * 4, entropy=1.0, max_entropy=1.39, ood_score=9.0 if n in unreliable
                            else 2.0, ood_threshold=5.7, unlike_training=n in unreliable,
                            reasons=["feature distance 9 > threshold 5.7"] if n in unreliable else [])
        tumours.append(TumourPrediction("Segment_1", "Tumour", CLASSES, p, CLASSES[int(np.argmax(p))], p[0] + p[1], [p],
                                        [{"slice_axis": 0, "slice_index": 10}], island=n + 1,
                                        volume_ml=100.0 / (n + 1), trust=trust))
    skipped = [NotAssessableTumour("Segment_1", "Tumour", "no_square" if n % 3 else "below_min_volume", f"reason {n}",
                                   island=assessable + n + 1, volume_ml=0.04) for n in range(not_assessable)]
    patient = PatientPrediction("target_lesions", "the two largest", [t.label for t in tumours[:2]], [0.5, 0.5],
                                CLASSES, tumours[0].probabilities, tumours[0].predicted_class, 0.5, 2)
    return PredictionResult(case_id="DISPLAY TEST (not a prediction)", bundle_id="display-test@0",
                            bundle_sha256="0" * 64, synthetic_model=True, warning="SYNTHETIC display test",
                            device="cpu", tumours=tumours, not_assessable=skipped, patient=patient, survival=survival)


def rendered(result, tmp_path, name, **options):
    from PySide6.QtGui import QImage
    from render_panel import render

    png, ui = render(result, tmp_path / f"{name}.png", **options)
    return QImage(str(png)).height(), ui


# --- 10. a multifocal case ---------------------------------------------------------------------------------
def test_a_multifocal_case_does_not_bury_the_panel(qapp, tmp_path):
    """70 islands (15 assessable, 55 not): the panel stays as tall as for 11, the not-assessable ones
    are one greyed summary row, and the heatmap and survival controls stay where they are."""
    height_10, ui_10 = rendered(multifocal_result(10, 1), tmp_path, "eleven")  # the same lines of text above
    y_heatmap_10 = ui_10.heatmapFrame.mapTo(ui_10.root, ui_10.heatmapFrame.rect().topLeft()).y()
    height_70, ui = rendered(multifocal_result(15, 55), tmp_path, "seventy")
    table = ui.resultsTable
    assert table.rowCount() == 1 + 15 + 1, "patient, 15 tumours, one summary row"
    summary = table.rowCount() - 1
    assert table.item(summary, 0).text() == "55 not assessable" and "▸" in table.item(summary, 1).text()
    assert table.item(summary, 0).foreground().color().getRgb()[:3] == panel.GREY
    row_height = table.verticalHeader().defaultSectionSize()
    assert table.height() <= table.horizontalHeader().height() + panel.MAX_VISIBLE_ROWS * row_height + 2 * table.frameWidth() + 2
    assert height_70 == height_10, "more tumours must not make the panel taller"
    assert ui.heatmapFrame.mapTo(ui.root, ui.heatmapFrame.rect().topLeft()).y() == y_heatmap_10
    assert ui.heatmapFrame.mapTo(ui.root, ui.heatmapFrame.rect().topLeft()).y() < 1300
    # a click on the summary row unfolds the 55, greyed, and keeps them in sight; a second click folds them
    ui.view.clicked(summary)
    assert table.rowCount() == 17 + 55
    assert all(table.item(r, 0).foreground().color().getRgb()[:3] == panel.GREY for r in range(17, 72))
    assert table.rowAt(1) == summary, "the unfolded rows are scrolled into view"
    ui.view.clicked(summary)
    assert table.rowCount() == 17


def test_a_click_on_a_tumour_row_centres_the_slice_views_on_it(mrml):
    """Through the logic the module calls (ParameterNodeLogic.jumpToTumour): the slice views' centre is the
    mean position of the tumour's voxels, computed here from the phantom's own label (scipy, 26-connected,
    numbered by size as predictions number islands)."""
    from TACEResponseLib.frontend.mrml import segmentation_to_node, volume_to_node
    from TACEResponseLib.imaging.phantoms import make_phantom
    from TACEResponseLib.imaging.segmentation import Segmentation

    case = make_phantom("PD", shape_kji=(48, 96, 96), seed=7, satellites_in_segment=True, rotation_deg=(0, 10, 20))
    mask = case.segmentation.mask(case.tumours[0].segment_id).array > 0
    reference = volume_to_node(case.reference, mrml.scene, "ct")
    segmentation = segmentation_to_node(Segmentation.from_masks(case.reference, {"Tumour": mask}), mrml.scene, "seg")
    slices = [mrml.scene.AddNewNodeByClass("vtkMRMLSliceNode", name) for name in ("Red", "Yellow")]
    slices[1].SetOrientationToSagittal()
    labels, count = connected(mask, structure=np.ones((3, 3, 3), bool))
    assert count >= 2, "the phantom should have satellites"
    sizes = np.bincount(labels.ravel())[1:]
    order = sorted(range(count), key=lambda n: (-int(sizes[n]), n))
    logic = panel.ParameterNodeLogic()
    logic.initLogic(mrml.scene)
    p = types.SimpleNamespace(segmentationNode=segmentation, segmentId=segmentation.GetSegmentation().GetNthSegmentID(0),
                              referenceVolume=reference, splitIslands=True, minIslandMl=0.0)
    result = multifocal_result(count, 0)
    for number in (1, count):
        kji = np.argwhere(labels == order[number - 1] + 1).mean(axis=0)
        expected = (case.reference.ijk_to_ras @ np.array([kji[2], kji[1], kji[0], 1.0]))[:3]
        assert logic.jumpToTumour(p, result, p.segmentId, number)
        for node in slices:
            centre = [node.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
            assert np.allclose(centre, expected, atol=1e-6), (number, node.GetName(), centre, expected)
    assert not logic.jumpToTumour(p, result, p.segmentId, count + 1), "an island no longer there"


# --- issue 22: stale results and every warning -----------------------------------------------------------------
def test_a_changed_input_greys_the_result_until_apply_runs_again(qapp, tmp_path):
    _, ui = rendered(multifocal_result(3, 2), tmp_path, "fresh")
    assert not ui.staleResultLabel.isVisible() and ui.resultsTable.isEnabled() and ui.probabilitiesFrame.isEnabled()
    view = ui.view
    view.set_inputs_key("a clinical value changed")
    view.update_controls(panel.PanelInputs())
    assert ui.staleResultLabel.isVisible() and "Inputs changed — run Apply again" in ui.staleResultLabel.text()
    for name in ("predictedClassLabel", "probabilitiesFrame", "resultsTable", "survivalGroupBox", "reliabilityFrame"):
        assert not getattr(ui, name).isEnabled(), name
    assert ui.exportReportButton.isEnabled() and ui.heatmapFrame.isEnabled()
    view.set_inputs_key("inputs")  # changed back: the result is current again
    view.update_controls(panel.PanelInputs())
    assert not ui.staleResultLabel.isVisible() and ui.probabilitiesFrame.isEnabled()
    # a new run: stale until its result arrives, then current for the inputs it started with
    view.set_inputs_key("new inputs")
    view.started("new inputs", "Predicting…")
    view.finished(multifocal_result(3, 2))
    view.update_controls(panel.PanelInputs())
    assert not view.stale


def test_an_unreliable_tumour_gets_a_badge_a_plain_sentence_and_folded_details(qapp, tmp_path):
    _, ui = rendered(multifocal_result(3, 0, unreliable=(0,)), tmp_path, "unreliable")
    assert ui.reliabilityFrame.isVisible() and ui.reliabilityBadgeLabel.text() == "UNRELIABLE"
    assert ui.reliabilitySentenceLabel.text() == panel.UNRELIABLE_SENTENCE
    assert not ui.reliabilityDetailsLabel.isVisible(), "details folded"
    assert "feature distance 9 > threshold 5.7" in ui.reliabilityDetailsLabel.text()
    ui.reliabilityDetailsButton.setChecked(True)
    ui.view.show_reliability_details(True)
    assert ui.reliabilityDetailsLabel.isVisible()
    assert "unreliable" in ui.resultsTable.item(1, 4).text(), "flagged in its table row"
    ui.view.tumour_index = 1
    ui.view.show_result(ui.view.result, "tumour 2", lambda: "inputs")
    assert not ui.reliabilityFrame.isVisible(), "a tumour like the training data gets no badge"


def test_survival_from_a_value_outside_the_training_range_says_so_beside_the_number(qapp, tmp_path):
    from render_panel import display_test_case

    case = display_test_case(tmp_path)
    fields = case["clinical_fields"]
    alt = next(f for f in fields if f.name == "ALT")
    low, high = alt.training_range
    survival = {**case["result"].survival, "extrapolated": ["ALT"],
                "values": {**case["result"].survival["values"], "ALT": 4 * high}}
    result = case.pop("result")
    result.survival = survival
    case["clinical_values"] = {**case["clinical_values"], "ALT": 4 * high}
    _, ui = rendered(result, tmp_path, "extrapolated", **case)
    text = ui.survivalWarningLabel.text()
    assert ui.survivalWarningLabel.isVisible() and f"ALT = {4 * high:g}" in text and f"{low:g}–{high:g}" in text
    assert ui.survivalWarningLabel.parent() is ui.survivalSummaryLabel.parent(), "beside the survival numbers"
    row = ui.view.clinical.rows["ALT"]
    assert row.label.text().startswith("⚠") and "extrapolated" in row.widget.toolTip()
    assert row.widget.styleSheet() == panel.OUT_OF_RANGE_STYLE
    ui.view.clinical.show({**case["clinical_values"], "ALT": (low + high) / 2})  # back inside: unmarked
    assert row.label.text() == "ALT (U/L):" and row.widget.styleSheet() == ""


class _Parameters(types.SimpleNamespace):
    """The parameter-node fields as the wrapper gives them (StartModify/EndModify for NodeModify)."""

    def StartModify(self):
        return 0

    def EndModify(self, was):
        pass


@pytest.mark.slow
def test_a_prediction_does_not_make_its_own_result_stale(mrml, tmp_path):
    """Apply writes the inputs, runs the CLI, shows the heatmap over the reference and stores the output
    nodes: none of it may change the inputs key it started with, or every result would be shown as stale."""
    import sys

    model = panel.model_choices()[0].model
    nodes = selftest.load_phantom_nodes(mrml.scene, phases=[p.name for p in panel.load_card(model).inputs])
    p = _Parameters(referenceVolume=nodes.reference, phaseVolumes={}, segmentationNode=nodes.segmentation,
                    segmentId=nodes.segment_id, modelName=model, modelPath="", survivalEnabled=False, nomogramPath="",
                    clinicalValues="{}", device="cpu", keepTemporaryFiles=False, splitIslands=True, minIslandMl=0.05,
                    patientRule="target_lesions", testTimeViews=2, heatmapVisible=True, heatmapOpacity=0.5,
                    heatmapColormap="inferno", heatmapNode=None, resultTableNode=None, survivalTableNode=None,
                    survivalChartNode=None)
    logic = panel.ParameterNodeLogic()
    logic.initLogic(mrml.scene, temporary_path=str(tmp_path), python=lambda: sys.executable)
    before = logic.inputsKey(p)
    result = logic.processParameterNode(p, timeout=300)
    assert p.resultTableNode is not None and p.heatmapNode is not None and result.tumours
    assert logic.inputsKey(p) == before
    logic.session.close()
