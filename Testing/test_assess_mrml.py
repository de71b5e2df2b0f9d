"""The "Assess response" logic on slicer-core's real MRML: markup lines per target lesion and visit,
re-measured when an end is dragged, the tables, and the viable segments written back into each visit's
segmentation node and read back as drawn (SYNTHETIC treatment series)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from TACEResponseLib.assessment.series import AssessmentOptions  # noqa: E402
from TACEResponseLib.core.errors import InputError  # noqa: E402
from TACEResponseLib.frontend import mrml  # noqa: E402
from TACEResponseLib.frontend.assess import (  # noqa: E402
    LINE_MANUAL,
    VisitNodes,
    assess_nodes,
    drawn,
    reset_manual,
)


def _table(node) -> list[dict[str, str]]:
    table = node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    return [{names[c]: table.GetValue(r, c).ToString() for c in range(len(names))} for r in range(table.GetNumberOfRows())]


@pytest.fixture(scope="module")
def scene_visits(treatment_series):
    context = mrml.create_headless_scene()
    visits = []
    for visit in treatment_series:
        arterial = mrml.volume_to_node(visit.phases["arterial"], context.scene, f"{visit.name} arterial")
        pre = mrml.volume_to_node(visit.phases["precontrast"], context.scene, f"{visit.name} pre-contrast")
        seg = mrml.segmentation_to_node(visit.segmentation, context.scene, f"{visit.name} tumour")
        visits.append(VisitNodes(visit.name, arterial, seg, pre))
    yield context.scene, visits
    context.scene.Clear(1)


@pytest.fixture(scope="module")
def shown(scene_visits):
    scene, visits = scene_visits
    return assess_nodes(scene, visits)


def test_a_line_per_target_and_visit_on_the_measured_caliper(shown):
    assessment = shown.assessment
    assert sorted(shown.lines) == sorted((v.name, t) for v in assessment.visits for t in ("Tumour_1", "Tumour_2"))
    for (visit_name, target), node in shown.lines.items():
        visit = next(v for v in assessment.visits if v.name == visit_name)
        lesion = assessment.target_at(visit, target)
        ends = [np.array(node.GetNthControlPointPositionWorld(n)) for n in range(2)]
        assert node.GetLineLengthWorld() == pytest.approx(lesion.viable.length_mm, abs=1e-3)
        assert ends[0][2] == pytest.approx(ends[1][2], abs=1e-3)  # on an axial plane
        assert np.allclose(ends[0], lesion.viable.longest.start_ras, atol=1e-3)
        assert node.GetAttribute(LINE_MANUAL) == "0"


def test_the_tables_give_the_known_categories(shown):
    rows = _table(shown.responses_table)
    assert {(r["Visit"], r["Criterion"]): r["Response"] for r in rows} == {
        ("followup1", "mRECIST"): "PR", ("followup1", "RECIST 1.1"): "SD", ("followup1", "EASL"): "PR",
        ("followup1", "volumetric"): "PR", ("followup2", "mRECIST"): "PD", ("followup2", "RECIST 1.1"): "SD",
        ("followup2", "EASL"): "PD", ("followup2", "volumetric"): "PD"}
    lesions = _table(shown.lesions_table)
    assert [(r["Visit"], r["Target"], r["Lesion here"]) for r in lesions][:4] == [
        ("baseline", "Tumour_1", "Tumour_1"), ("baseline", "Tumour_2", "Tumour_2"),
        ("followup1", "Tumour_1", "Tumour_1"), ("followup1", "Tumour_2", "Tumour_2")]
    stored = json.loads(shown.responses_table.GetAttribute("TACEResponse.Assessment"))
    assert stored["kind"] == "tace-response-assessment" and stored["targets"] == ["Tumour_1", "Tumour_2"]


def test_the_viable_segments_are_written_into_each_segmentation(scene_visits, shown):
    _, visits = scene_visits
    names = mrml.segment_names(visits[1].segmentation)
    assert {"Tumour_1 viable", "Tumour_2 viable", "Tumour_3 viable", "Iodised oil"} <= set(names)
    segmentation = visits[1].segmentation.GetSegmentation()
    viable_id = segmentation.GetSegmentIdBySegmentName("Tumour_1 viable")
    assert mrml.segment_tag(segmentation.GetSegment(viable_id), "TACEResponse.ViableOf") == "Tumour_1"
    # exported onto the arterial grid it holds exactly the voxels measured
    mask = mrml.segment_mask_from_node(visits[1].segmentation, viable_id, visits[1].arterial)
    lesion = shown.assessment.target_at(shown.assessment.visits[1], "Tumour_1")
    assert int(mask.array.sum()) == lesion.viable_tumour.viable_voxels
    assert not drawn(visits[1].segmentation, segmentation.GetSegmentIdBySegmentName("Tumour_3 viable"))


def test_dragging_a_line_end_re_measures_and_says_manual(scene_visits, shown):
    scene, _ = scene_visits
    node = shown.line("followup1", "Tumour_1")
    before = {r["Criterion"]: float(r["Sum"]) for r in _table(shown.responses_table) if r["Visit"] == "followup1"}
    measured = node.GetLineLengthWorld()
    start = np.array(node.GetNthControlPointPositionWorld(0))
    changed = []
    shown.on_change = lambda: changed.append(True)
    node.SetNthControlPointPositionWorld(1, *(start + np.array([0.0, 30.0, 0.0])))  # what a drag ends with
    rows = {r["Criterion"]: r for r in _table(shown.responses_table) if r["Visit"] == "followup1"}
    assert float(rows["mRECIST"]["Sum"]) == pytest.approx(before["mRECIST"] - measured + 30.0, abs=1e-3)
    assert rows["mRECIST"]["Measured"] == "manual" and rows["EASL"]["Measured"] == "automatic"
    assert float(rows["EASL"]["Sum"]) == pytest.approx(before["EASL"])
    assert rows["mRECIST"]["Response"] == "SD"  # 30 + 10.6 of 55.4 mm: not a 30 % decrease any more
    assert node.GetAttribute(LINE_MANUAL) == "1" and changed
    lesions = {(r["Visit"], r["Target"]): r for r in _table(shown.lesions_table)}
    assert lesions[("followup1", "Tumour_1")]["Measured"] == "manual"
    assert float(lesions[("followup1", "Tumour_1")]["Viable diameter mm"]) == pytest.approx(30.0, abs=0.01)
    stored = json.loads(shown.responses_table.GetAttribute("TACEResponse.Assessment"))
    manual = next(m for m in stored["visits"][1]["lesions"] if m["label"] == "Tumour_1")["manual_viable"]
    assert manual["manual"] is True and manual["length_mm"] == pytest.approx(30.0, abs=1e-3)
    reset_manual(scene, shown)
    assert shown.line("followup1", "Tumour_1").GetLineLengthWorld() == pytest.approx(measured, abs=1e-3)
    assert {r["Criterion"]: float(r["Sum"]) for r in _table(shown.responses_table)
            if r["Visit"] == "followup1"} == pytest.approx(before)


def test_a_viable_segment_corrected_in_the_editor_is_used_as_drawn(scene_visits, shown):
    """Erase the written-back viable segment of Tumour_1 at follow-up 1 (as the Segment Editor would):
    the next run uses it (no viable tumour there), keeps the other given segments, and says so."""
    scene, visits = scene_visits
    segmentation = visits[1].segmentation.GetSegmentation()
    viable_id = segmentation.GetSegmentIdBySegmentName("Tumour_1 viable")
    segmentation.RemoveSegment(viable_id)
    segmentation.AddEmptySegment(viable_id, "Tumour_1 viable", [1.0, 0.35, 0.1])
    again = assess_nodes(scene, visits[:2], AssessmentOptions(register=False), outputs=shown)
    lesion = again.assessment.target_at(again.assessment.visits[1], "Tumour_1")
    assert lesion.viable_tumour.source == "given" and lesion.viable_tumour.viable_voxels == 0
    assert again.line("followup1", "Tumour_1") is None  # nothing viable to measure there
    other = again.assessment.target_at(again.assessment.visits[1], "Tumour_2")
    assert other.viable_tumour.source == "given" and other.viable_tumour.viable_voxels > 0
    # derived again on request: the editor's change is replaced by the derivation
    fresh = assess_nodes(scene, visits[:2], AssessmentOptions(register=False), outputs=again, derive_again=True)
    lesion = fresh.assessment.target_at(fresh.assessment.visits[1], "Tumour_1")
    assert lesion.viable_tumour.source == "derived" and lesion.viable_tumour.viable_voxels > 0


def test_a_followup_segmentation_with_nothing_drawn_is_one_clear_error(scene_visits):
    scene, visits = scene_visits
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    mrml.add_tumour_segment(empty)
    bad = VisitNodes("followup1", visits[1].arterial, empty)
    with pytest.raises(InputError, match="followup1: no tumour in the segmentation 'empty'"):
        assess_nodes(scene, [visits[0], bad], AssessmentOptions(register=False))


def test_the_panel_runs_the_assessment_beside_the_gui_and_shows_it(scene_visits):
    """What the module's Assess button does: the visits named by its parameter fields, measured in a worker
    thread, shown on the calling thread; a visit's error surfaces where the result is taken."""
    from types import SimpleNamespace

    from TACEResponseLib.frontend.assess import AssessmentRun, visits_from

    scene, visits = scene_visits
    fields = SimpleNamespace(assessBaselineVolume=visits[0].arterial, assessBaselineSegmentation=visits[0].segmentation,
                             assessBaselinePrecontrast=visits[0].precontrast, assessFollowup1Volume=visits[2].arterial,
                             assessFollowup1Segmentation=visits[2].segmentation, assessFollowup1Precontrast=None,
                             assessNewLesion1=True, assessFollowup2Volume=None, assessFollowup2Segmentation=None,
                             assessMatches1="Tumour_3=; Tumour_2=Tumour_2")
    chosen = visits_from(fields)
    assert [(v.name, v.new_lesion, v.precontrast is None) for v in chosen] == [("baseline", False, False),
                                                                                ("followup1", True, True)]
    assert chosen[1].matches == {"Tumour_3": None, "Tumour_2": "Tumour_2"}
    run = AssessmentRun(scene, chosen, AssessmentOptions(register=False))
    shown = run.show(timeout=120)
    assert {r["Response"] for r in _table(shown.responses_table)} == {"PD"}  # the new lesion the user saw
    pairs = {m.baseline: (m.followup, m.source) for m in shown.assessment.visits[1].matching.matches}
    assert pairs == {"Tumour_1": ("Tumour_1", "overlap"), "Tumour_2": ("Tumour_2", "user"), "Tumour_3": (None, "user")}
    assert "Tumour_3" in shown.assessment.visits[1].candidate_new_lesions  # not paired: listed for the reader
    assert not run.running
    fields.assessMatches1 = "Tumour_1"
    with pytest.raises(InputError, match="follow-up 1: lesion pairs: 'Tumour_1' is not BASELINE_LESION=FOLLOWUP"):
        visits_from(fields)
    fields.assessMatches1, fields.assessFollowup1Segmentation = "", None
    with pytest.raises(InputError, match="followup1: choose its arterial volume and its segmentation"):
        AssessmentRun(scene, visits_from(fields))
    far = visits[2].arterial.GetScene().AddNewNodeByClass("vtkMRMLScalarVolumeNode", "elsewhere")
    far.Copy(visits[2].arterial)
    far.SetOrigin(0.0, 0.0, 900.0)
    with pytest.raises(InputError, match="followup1: its image does not overlap the baseline's in space"):
        AssessmentRun(scene, [visits[0], VisitNodes("followup1", far, visits[2].segmentation)])
    run = AssessmentRun(scene, chosen, AssessmentOptions(register=False, targets=("Tumour_9",)))
    with pytest.raises(InputError, match="target 'Tumour_9': no such lesion at baseline"):
        run.show(timeout=120)  # raised in the worker, handed over here
