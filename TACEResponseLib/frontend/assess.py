"""The Slicer side of response assessment ("Assess response"): MRML nodes in, MRML nodes out. Qt-free.

:func:`assess_nodes` takes each visit's arterial volume node, optional pre-contrast volume node and
segmentation node, runs :func:`~TACEResponseLib.assessment.series.assess_series` (the path the command line
takes) and shows the result as nodes a Slicer user knows:

- one **markup line** (``vtkMRMLMarkupsLineNode``) per target lesion and visit, on the longest axial viable
  diameter. Dragging either end re-measures: the line's length replaces the measured diameter of that
  lesion and visit (mRECIST), every follow-up is classified again, the line turns magenta and the tables
  say "manual";
- a **responses table** (one row per follow-up and criterion: category, sums, changes with their SD,
  near-threshold flag) holding the whole assessment as JSON in an attribute (saved with the scene), and a
  **lesions table** (each target at each visit: its match, diameters, volumes, manual or measured);
- the derived **viable segments** (and the iodised oil found) added to each visit's segmentation node, named
  "<tumour segment> viable", so they can be corrected in the Segment Editor: the next run uses them as
  drawn unless asked to derive them again.

Works in Slicer and, headless, on the slicer-core wheel's real MRML classes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from TACEResponseLib.assessment.criteria import CRITERIA
from TACEResponseLib.assessment.matching import check_same_space, parse_pairs
from TACEResponseLib.assessment.outputs import summary_lines
from TACEResponseLib.assessment.series import AssessmentOptions, SeriesAssessment, Visit, assess_series, classify
from TACEResponseLib.assessment.viable import OIL_COLOR, OIL_TAG, VIABLE_COLOR, VIABLE_OF_TAG, VIABLE_SUFFIX
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.frontend import mrml

logger = logging.getLogger(__name__)

ATTRIBUTE = "TACEResponse.Assessment"          # on the responses table: the assessment JSON
LINE_VISIT, LINE_TARGET = ATTRIBUTE + ".Visit", ATTRIBUTE + ".Target"
LINE_MANUAL = ATTRIBUTE + ".Manual"
MEASURED_COLOR, MANUAL_COLOR = (0.22, 1.0, 0.08), (1.0, 0.17, 0.84)


@dataclass
class VisitNodes:
    """One visit in the scene: its arterial volume, optional pre-contrast volume and tumour segmentation;
    ``new_lesion``: the user saw a new lesion; ``matches``: the user's pairs (baseline lesion → lesion)."""

    name: str
    arterial: Any
    segmentation: Any
    precontrast: Any = None
    new_lesion: bool = False
    matches: dict[str, str | None] = field(default_factory=dict)


@dataclass
class AssessmentNodes:
    """What an assessment shows in the scene, and the assessment itself (re-classified when a line moves)."""

    assessment: SeriesAssessment | None = None
    responses_table: Any = None
    lesions_table: Any = None
    lines: dict[tuple[str, str], Any] = field(default_factory=dict)   # (visit, target) → line node
    observers: list[tuple[Any, int]] = field(default_factory=list)
    updating: bool = False
    on_change: Any = None      # called after a line moved and everything was updated

    def line(self, visit: str, target: str):
        return self.lines.get((visit, target))


def drawn(segmentation_node, segment_id: str) -> bool:
    """True when the segment has at least one voxel (read from its shared labelmap layer, no export)."""
    from vtk.util.numpy_support import vtk_to_numpy

    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    layer = segment.GetRepresentation("Binary labelmap")
    scalars = layer.GetPointData().GetScalars() if layer is not None else None
    return scalars is not None and bool(np.any(vtk_to_numpy(scalars) == segment.GetLabelValue()))


def visit_from_nodes(nodes: VisitNodes) -> Visit:
    """A visit's nodes as library inputs; segments with nothing drawn (an empty viable segment: no viable
    tumour) kept as empty segments."""
    from TACEResponseLib.imaging.segmentation import Segment

    if nodes.arterial is None or nodes.segmentation is None:
        raise InputError(f"{nodes.name}: choose its arterial volume and its segmentation")
    arterial = mrml.volume_from_node(nodes.arterial, f"{nodes.name}: arterial volume")
    ids = mrml.segment_ids(nodes.segmentation)
    present = [i for i in ids if drawn(nodes.segmentation, i)]
    if not present:
        raise InputError(f"{nodes.name}: no tumour in the segmentation {nodes.segmentation.GetName()!r}; outline the "
                         "target lesions in every visit")
    segmentation = mrml.segmentation_from_node(nodes.segmentation, nodes.arterial, present)
    top = max(int(layer.max()) for layer in segmentation.layers)
    for segment_id in ids:
        vtk_segment = nodes.segmentation.GetSegmentation().GetSegment(segment_id)
        if segment_id not in present:
            top += 1  # a label no voxel holds: the segment is empty
            segmentation.segments.append(Segment(segment_id, vtk_segment.GetName(), top))
        segment = segmentation.find(segment_id)
        for tag in (VIABLE_OF_TAG, OIL_TAG):
            value = mrml.segment_tag(vtk_segment, tag)
            if value:
                segment.tags[tag] = value
    precontrast = mrml.volume_from_node(nodes.precontrast, f"{nodes.name}: pre-contrast volume") \
        if nodes.precontrast is not None else None
    return Visit(nodes.name, arterial, segmentation, precontrast, nodes.new_lesion, dict(nodes.matches),
                 {"arterial": nodes.arterial.GetName(), "segmentation": nodes.segmentation.GetName()})


def _drop_viable_segments(segmentation_node) -> None:
    """Remove the viable and oil segments an earlier run wrote (to derive them again)."""
    segmentation = segmentation_node.GetSegmentation()
    names = mrml.segment_names(segmentation_node)
    for segment_id in mrml.segment_ids(segmentation_node):
        segment = segmentation.GetSegment(segment_id)
        if (mrml.segment_tag(segment, VIABLE_OF_TAG) or mrml.segment_tag(segment, OIL_TAG)
                or any(segment.GetName() == f"{n}{VIABLE_SUFFIX}" for n in names)):
            segmentation.RemoveSegment(segment_id)


def prepare_visits(visits: list[VisitNodes], derive_again: bool = False) -> list[Visit]:
    """The visits' nodes as library inputs (main thread: reads MRML). With ``derive_again`` the viable and
    oil segments of an earlier run are removed first, so they are derived anew."""
    if len(visits) < 2:
        raise InputError("choose a baseline and at least one follow-up")
    for nodes in visits[1:]:  # another patient's grid: said before any segment is exported onto it
        if nodes.arterial is not None and visits[0].arterial is not None:
            check_same_space(mrml.volume_from_node(visits[0].arterial), mrml.volume_from_node(nodes.arterial),
                             nodes.name)
    if derive_again:
        for nodes in visits:
            if nodes.segmentation is not None:
                _drop_viable_segments(nodes.segmentation)
    return [visit_from_nodes(nodes) for nodes in visits]


def show_assessment(scene, visits: list[VisitNodes], assessment: SeriesAssessment,
                    outputs: AssessmentNodes | None = None) -> AssessmentNodes:
    """An assessment into the scene (main thread): viable segments, markup lines, tables."""
    outputs = outputs or AssessmentNodes()
    remove_observers(outputs)
    outputs.assessment = assessment
    for nodes, visit in zip(visits, assessment.visits):
        write_viable_segments(nodes.segmentation, visit)
    show_lines(scene, outputs)
    update_tables(scene, outputs)
    return outputs


def assess_nodes(scene, visits: list[VisitNodes], options: AssessmentOptions = AssessmentOptions(),
                 outputs: AssessmentNodes | None = None, derive_again: bool = False) -> AssessmentNodes:
    """Assess the visits (baseline first) and show the result in ``scene`` (module docstring), all at once.
    Viable segments already in a segmentation are used as drawn, unless ``derive_again``."""
    return show_assessment(scene, visits, assess_series(prepare_visits(visits, derive_again), options), outputs)


class AssessmentRun:
    """:func:`assess_nodes` with the computation in a worker thread, so Slicer's GUI stays live: the nodes are
    read (:meth:`__init__`) and written (:meth:`show`) on the calling thread, only
    :func:`~TACEResponseLib.assessment.series.assess_series` (numpy, SciPy, SimpleITK: no MRML) runs beside it."""

    def __init__(self, scene, visits: list[VisitNodes], options: AssessmentOptions = AssessmentOptions(),
                 derive_again: bool = False) -> None:
        import threading

        self.scene, self.visits = scene, visits
        inputs = prepare_visits(visits, derive_again)
        self.result: SeriesAssessment | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, args=(inputs, options), name="tace-assess", daemon=True)
        self.thread.start()

    def _work(self, inputs: list[Visit], options: AssessmentOptions) -> None:
        try:
            self.result = assess_series(inputs, options)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there by show()
            self.error = exc

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def show(self, outputs: AssessmentNodes | None = None, timeout: float | None = None) -> AssessmentNodes:
        """Wait for the worker (``timeout`` s; None: as long as it takes), then show its result; its error
        (e.g. an InputError about a visit) is raised here."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError("the assessment is still running")
        if self.error is not None:
            raise self.error
        return show_assessment(self.scene, self.visits, self.result, outputs)


def visits_from(parameters) -> list[VisitNodes]:
    """The visits the panel's fields name (``assessBaselineVolume``, ``assessFollowup1Segmentation`` …, as in
    the module's parameter node): the baseline, then each follow-up with a volume or a segmentation chosen,
    with the user's lesion pairs (``assessMatches1``: "Tumour_1=Segment_3; Tumour_2=")."""
    def field(name: str):
        return getattr(parameters, name, None)

    visits = [VisitNodes("baseline", field("assessBaselineVolume"), field("assessBaselineSegmentation"),
                         field("assessBaselinePrecontrast"))]
    for n in (1, 2):
        volume, segmentation = field(f"assessFollowup{n}Volume"), field(f"assessFollowup{n}Segmentation")
        if volume is None and segmentation is None:
            continue
        pairs = parse_pairs(field(f"assessMatches{n}") or "", f"follow-up {n}: lesion pairs")
        visits.append(VisitNodes(f"followup{n}", volume, segmentation, field(f"assessFollowup{n}Precontrast"),
                                 bool(field(f"assessNewLesion{n}")), pairs))
    return visits


def jump_to_first_target(scene, outputs: AssessmentNodes) -> None:
    """Centre the slice views on the first target lesion's baseline line."""
    assessment = outputs.assessment
    node = outputs.line(assessment.baseline.name, assessment.targets[0]) if assessment and assessment.targets else None
    if node is not None:
        ends = [np.array(node.GetNthControlPointPositionWorld(n)) for n in range(2)]
        mrml.jump_slices(scene, (ends[0] + ends[1]) / 2)


# --- viable segments written back ------------------------------------------------------------------------
def write_viable_segments(segmentation_node, visit) -> list[str]:
    """Add each derived viable part to the segmentation node as "<tumour segment> viable" (tagged with the
    tumour segment's id), and the iodised oil found as "Iodised oil"; viable segments given (drawn by the
    user) are left as they are. Returns the ids added."""
    from TACEResponseLib.assessment.viable import paste
    from TACEResponseLib.imaging.geometry import crop
    from TACEResponseLib.imaging.segmentation import Segmentation

    segmentation = segmentation_node.GetSegmentation()
    reference = visit.arterial
    groups: dict[str, tuple[str, list]] = {}
    for lesion in visit.lesions:
        if lesion.viable_tumour.source == "derived":
            groups.setdefault(lesion.segment_id, (lesion.segment_name, []))[1].append(lesion)
    wanted = [(f"{name}{VIABLE_SUFFIX}", [m.viable_tumour.mask for m in lesions], VIABLE_COLOR, VIABLE_OF_TAG, tumour)
              for tumour, (name, lesions) in groups.items()]
    oil = [m.viable_tumour.oil for m in visit.lesions if m.viable_tumour.oil is not None and m.viable_tumour.oil.array.any()]
    if oil:
        wanted.append(("Iodised oil", oil, OIL_COLOR, OIL_TAG, "1"))
    added = []
    for name, masks, color, tag, value in wanted:
        old = segmentation.GetSegmentIdBySegmentName(name)
        if old:
            segmentation.RemoveSegment(old)
        lo = np.min([np.asarray(m.metadata["crop_offset_kji"]) for m in masks], axis=0)
        hi = np.max([np.asarray(m.metadata["crop_offset_kji"]) + np.asarray(m.shape_kji) for m in masks], axis=0)
        union = np.zeros(tuple(int(v) for v in hi - lo), bool)
        for mask in masks:
            union |= paste(mask, reference, lo, union.shape)
        if union.any():  # through the one segmentation → node path (labelmap import)
            written = Segmentation.from_masks(crop(reference, lo, hi), {name: union})
            written.segments[0].id = f"{value}_viable" if tag == VIABLE_OF_TAG else "iodised_oil"
            mrml.segmentation_to_node(written, segmentation_node.GetScene(), node=segmentation_node)
            segment_id = segmentation.GetSegmentIdBySegmentName(name)
        else:  # nothing viable: an empty segment says so, and can be drawn in
            segment_id = segmentation.AddEmptySegment("", name, list(color))
        segment = segmentation.GetSegment(segment_id)
        segment.SetColor(*color)
        segment.SetTag(tag, value)
        added.append(segment_id)
    return added


# --- markup lines -------------------------------------------------------------------------------------
def show_lines(scene, outputs: AssessmentNodes) -> None:
    """One line node per target lesion and visit on its viable caliper (created or moved), observed."""
    import slicer
    import vtk

    assessment = outputs.assessment
    wanted = set()
    outputs.updating = True
    try:
        for visit in assessment.visits:
            for target in assessment.targets:
                lesion = assessment.target_at(visit, target)
                caliper = lesion.viable_caliper if lesion is not None else None
                key = (visit.name, target)
                if caliper is None:
                    continue
                wanted.add(key)
                node = outputs.lines.get(key)
                if node is None or node.GetScene() is None:
                    node = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"{target} {visit.name} viable")
                    node.CreateDefaultDisplayNodes()
                    node.SetAttribute(LINE_VISIT, visit.name)
                    node.SetAttribute(LINE_TARGET, target)
                    outputs.lines[key] = node
                node.RemoveAllControlPoints()
                node.AddControlPointWorld(vtk.vtkVector3d(*caliper.start_ras))
                node.AddControlPointWorld(vtk.vtkVector3d(*caliper.end_ras))
                manual = lesion.manual_viable is not None
                node.SetAttribute(LINE_MANUAL, "1" if manual else "0")
                display = node.GetDisplayNode()
                if display is not None:
                    display.SetSelectedColor(*(MANUAL_COLOR if manual else MEASURED_COLOR))
                    display.SetColor(*(MANUAL_COLOR if manual else MEASURED_COLOR))
        for key in [k for k in outputs.lines if k not in wanted]:
            node = outputs.lines.pop(key)
            if node.GetScene() is not None:
                scene.RemoveNode(node)
    finally:
        outputs.updating = False
    for node in outputs.lines.values():
        for event in (slicer.vtkMRMLMarkupsNode.PointModifiedEvent, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent):
            tag = node.AddObserver(event, lambda caller, _event, o=outputs: line_moved(o, caller))
            outputs.observers.append((node, tag))


def remove_observers(outputs: AssessmentNodes) -> None:
    for node, tag in outputs.observers:
        node.RemoveObserver(tag)
    outputs.observers.clear()


def line_moved(outputs: AssessmentNodes, node) -> None:
    """A line was moved (an end dragged): its length becomes that lesion's viable diameter at that visit."""
    if outputs.updating or outputs.assessment is None or node.GetNumberOfControlPoints() != 2:
        return
    ends = [np.array(node.GetNthControlPointPositionWorld(n)) for n in range(2)]
    visit, target = node.GetAttribute(LINE_VISIT), node.GetAttribute(LINE_TARGET)
    lesion = outputs.assessment.target_at(next(v for v in outputs.assessment.visits if v.name == visit), target)
    if lesion is None:
        return
    if lesion.manual_viable is not None and np.allclose(ends[0], lesion.manual_viable.start_ras, atol=1e-4) \
            and np.allclose(ends[1], lesion.manual_viable.end_ras, atol=1e-4):
        return  # the same line: nothing moved
    outputs.assessment.set_manual_viable(visit, target, ends[0], ends[1])
    outputs.updating = True
    try:
        node.SetAttribute(LINE_MANUAL, "1")
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(*MANUAL_COLOR)
            display.SetColor(*MANUAL_COLOR)
    finally:
        outputs.updating = False
    update_tables(node.GetScene(), outputs)
    if outputs.on_change is not None:
        outputs.on_change()


def reset_manual(scene, outputs: AssessmentNodes) -> None:
    """Forget every line moved by hand: the measured calipers back, classified again."""
    if outputs.assessment is None:
        return
    remove_observers(outputs)
    outputs.assessment.clear_manual()
    classify(outputs.assessment)
    show_lines(scene, outputs)
    update_tables(scene, outputs)


# --- tables -------------------------------------------------------------------------------------------
def response_rows(assessment: SeriesAssessment) -> list[tuple[str, list, str]]:
    """The responses table's columns: one row per follow-up and criterion."""
    rows = [(visit.name, visit.responses[name]) for visit in assessment.followups for name in CRITERIA]

    def pct(value):
        return None if value is None else round(100 * value, 2)

    return [("Visit", [v for v, _ in rows], "string"), ("Criterion", [r.criterion for _, r in rows], "string"),
            ("Response", [r.category for _, r in rows], "string"),
            ("Sum", [round(r.total, 3) for _, r in rows], "double"), ("Unit", [r.unit for _, r in rows], "string"),
            ("Change from baseline %", [pct(r.change_from_baseline) for _, r in rows], "double"),
            ("± SD %", [pct(r.change_from_baseline_sd) for _, r in rows], "double"),
            ("Change from nadir %", [pct(r.change_from_nadir) for _, r in rows], "double"),
            ("Nadir visit", [r.nadir_visit for _, r in rows], "string"),
            ("Near threshold", ["could be " + "/".join(r.could_be) if r.near_threshold else "" for _, r in rows],
             "string"),
            ("New lesion", ["yes" if r.new_lesion else "" for _, r in rows], "string"),
            ("Measured", ["manual" if r.manual else "automatic" for _, r in rows], "string")]


def lesion_rows(assessment: SeriesAssessment) -> list[tuple[str, list, str]]:
    """The lesions table's columns: each target lesion at each visit (matched lesion, diameters, volumes)."""
    rows = []
    for visit in assessment.visits:
        for target in assessment.targets:
            lesion = assessment.target_at(visit, target)
            match = visit.matching.matches[[m.baseline for m in visit.matching.matches].index(target)] \
                if visit.matching else None
            rows.append((visit.name, target, lesion, match))
    return [("Visit", [r[0] for r in rows], "string"), ("Target", [r[1] for r in rows], "string"),
            ("Lesion here", [r[2].label if r[2] else "not found" for r in rows], "string"),
            ("Matched by", [r[3].source + (f" ({r[3].overlap:.2f})" if r[3].source == "overlap" else "")
                            if r[3] else "baseline" for r in rows], "string"),
            ("Viable diameter mm", [round(r[2].viable_diameter_mm, 2) if r[2] else 0.0 for r in rows], "double"),
            ("Measured", ["manual" if r[2] and r[2].manual_viable else "automatic" for r in rows], "string"),
            ("Perpendicular mm", [round(r[2].viable.perpendicular_mm, 2) if r[2] else 0.0 for r in rows], "double"),
            ("Whole diameter mm", [round(r[2].whole.length_mm, 2) if r[2] else 0.0 for r in rows], "double"),
            ("Viable ml", [round(r[2].viable_tumour.viable_ml, 3) if r[2] else 0.0 for r in rows], "double"),
            ("Viable %", [round(100 * r[2].viable_tumour.fraction, 1) if r[2] else 0.0 for r in rows], "double"),
            ("Oil ml", [round(r[2].viable_tumour.oil_ml, 3) if r[2] else 0.0 for r in rows], "double")]


def update_tables(scene, outputs: AssessmentNodes) -> None:
    """Fill (creating them the first time) the responses and lesions table nodes."""
    assessment = outputs.assessment
    if outputs.responses_table is None or outputs.responses_table.GetScene() is None:
        outputs.responses_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "Response assessment")
    if outputs.lesions_table is None or outputs.lesions_table.GetScene() is None:
        outputs.lesions_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "Response assessment lesions")
    mrml.fill_table_node(outputs.responses_table, response_rows(assessment))
    mrml.fill_table_node(outputs.lesions_table, lesion_rows(assessment))
    outputs.responses_table.SetAttribute(ATTRIBUTE, json.dumps(assessment.to_dict()))


def summary(assessment: SeriesAssessment) -> str:
    """The panel's text: the response per criterion at each follow-up and the flags to look at."""
    return "\n".join(summary_lines(assessment))
