"""A patient's series — baseline and follow-ups — measured, matched and classified by every criterion.

:func:`assess_series` is the one path the command line, the Slicer module and the web page take:

1. each visit: the tumours of its segmentation on its arterial image (one per island, as for prediction,
   :func:`~TACEResponseLib.imaging.tumours.tumour_rois`), the viable part of each (given or derived,
   :mod:`.viable`), calipers on true axial planes (:mod:`.calipers`) and volumes;
2. target lesions at baseline: up to ``max_targets`` (mRECIST: two intrahepatic) measurable lesions —
   longest axial diameter and longest viable diameter both ≥ ``min_target_mm`` (10 mm) — largest viable
   diameter first, unless the user names them;
3. each follow-up: a rigid registration onto the baseline and its lesions matched to the baseline's
   (:mod:`.matching`; the user's pairs override);
4. the responses (:func:`classify`): per criterion the sum over the targets, baseline and nadir, category,
   uncertainty and near-threshold flag (:mod:`.criteria`). A line moved by hand replaces the measured
   viable diameter (mRECIST) of that lesion and visit, marked as manual; :func:`classify` is re-run alone.

What it does not decide: whether an unmatched follow-up lesion is a new lesion (it is listed as a candidate;
the user marks a new lesion), and non-target progression. Both are the radiologist's call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from TACEResponseLib.assessment.calipers import AxialDiameters, Caliper, diameter_sd_mm, measure_axial
from TACEResponseLib.assessment.criteria import CRITERIA, Response, Sum, Uncertainty, respond
from TACEResponseLib.assessment.matching import (
    MIN_OVERLAP,
    Matching,
    Registration,
    check_same_space,
    match_lesions,
    register_rigid,
)
from TACEResponseLib.assessment.viable import (
    OIL_COLOR,
    OIL_TAG,
    VIABLE_COLOR,
    VIABLE_OF_TAG,
    VIABLE_SUFFIX,
    ViableRule,
    ViableTumour,
    derive_viable,
    given_viable,
    guess_ct,
    is_viable_segment,
    paste,
    viable_segment_for,
)
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.geometry import Volume, check_volume, crop, grid_offset, value_range_of
from TACEResponseLib.imaging.segmentation import SEG_TYPE_TAG, Segment, Segmentation, label_box, segment_box_on
from TACEResponseLib.imaging.tumours import IslandRule, TumourROI, tumour_rois

logger = logging.getLogger(__name__)

#: what the tool leaves to the radiologist (written into every result)
NOT_DECIDED = ("New lesions are the radiologist's call: follow-up lesions that match no baseline lesion are listed as "
               "candidates, and a new lesion counts only when the user marks it.",
               "Non-target lesions (and their unequivocal progression) are not assessed: the overall response also "
               "depends on them.")


@dataclass
class Visit:
    """One visit's inputs: the arterial image (the reference grid), an optional pre-contrast image, the tumour
    segmentation; ``new_lesion``: the user says a new lesion appeared; ``matches``: the user's pairs
    (baseline lesion → this visit's lesion, None: not present)."""

    name: str
    arterial: Volume
    segmentation: Segmentation
    precontrast: Volume | None = None
    new_lesion: bool = False
    matches: dict[str, str | None] = field(default_factory=dict)
    sources: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class AssessmentOptions(JsonRecord):
    """How a series is assessed (every value is written with the result)."""

    viable: ViableRule = ViableRule()
    uncertainty: Uncertainty = Uncertainty()
    max_targets: int = 2
    min_target_mm: float = 10.0
    targets: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    islands: IslandRule = IslandRule()
    register: bool = True
    modality: str = ""            # "CT" | "MR" | "" (from the image)
    min_overlap: float = MIN_OVERLAP

    def __post_init__(self) -> None:
        if isinstance(self.max_targets, bool) or not isinstance(self.max_targets, int) or self.max_targets < 1:
            raise InputError(f"at least one target lesion is needed (max_targets = {self.max_targets!r})")
        if self.modality not in ("", "CT", "MR"):
            raise InputError(f"modality must be CT or MR, got {self.modality!r}")


@dataclass
class LesionMeasurement(JsonRecord):
    """One lesion at one visit: whole-tumour and viable calipers, volumes, how its viable part was found."""

    label: str
    segment_id: str
    segment_name: str
    island: int | None
    volume_ml: float
    centroid_ras: tuple[float, float, float]
    whole: AxialDiameters
    viable: AxialDiameters
    viable_tumour: ViableTumour
    viable_boundary_ml: float = 0.0
    manual_viable: Caliper | None = None
    touches_edge: bool = False

    @property
    def enhancing(self) -> bool:
        return self.viable_tumour.viable_voxels > 0

    @property
    def viable_diameter_mm(self) -> float:
        return self.manual_viable.length_mm if self.manual_viable is not None else self.viable.length_mm

    @property
    def viable_caliper(self) -> Caliper | None:
        return self.manual_viable if self.manual_viable is not None else self.viable.longest

    json_derived = ("enhancing", "viable_diameter_mm", "whole_diameter_mm", "viable_product_mm2", "viable_ml")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "enhancing": self.enhancing, "viable_diameter_mm": round(self.viable_diameter_mm, 3),
                "whole_diameter_mm": round(self.whole.length_mm, 3), "viable_product_mm2": round(self.viable.product_mm2, 3),
                "viable_ml": round(self.viable_tumour.viable_ml, 4)}


@dataclass
class VisitResult(JsonRecord):
    """A visit measured (and, for a follow-up, matched and classified)."""

    name: str
    lesions: list[LesionMeasurement]
    sources: dict[str, object] = field(default_factory=dict)
    registration: Registration | None = None
    matching: Matching | None = None
    new_lesion: bool = False
    candidate_new_lesions: list[str] = field(default_factory=list)
    missing_targets: list[str] = field(default_factory=list)
    responses: dict[str, Response] = field(default_factory=dict)
    not_measured: list[dict[str, str]] = field(default_factory=list)
    arterial: Volume | None = field(default=None, metadata={"json": False})
    precontrast: Volume | None = field(default=None, metadata={"json": False})
    segmentation: Segmentation | None = field(default=None, metadata={"json": False})
    masks: dict[str, Volume] = field(default_factory=dict, metadata={"json": False})

    def lesion(self, label: str | None) -> LesionMeasurement | None:
        return next((m for m in self.lesions if m.label == label), None) if label is not None else None


@dataclass
class SeriesAssessment(JsonRecord):
    """The whole series: visits in order (baseline first), the target lesions, the options and criteria."""

    json_header = {"kind": "tace-response-assessment", "version": 1}
    json_derived = ("files",)  # what the command line adds: the files written beside it

    visits: list[VisitResult]
    targets: list[str]
    non_targets: list[dict[str, str]]
    options: AssessmentOptions
    criteria: dict[str, dict] = field(default_factory=lambda: {k: c.to_dict() for k, c in CRITERIA.items()})
    synthetic: bool = False
    not_decided: list[str] = field(default_factory=lambda: list(NOT_DECIDED))

    @property
    def baseline(self) -> VisitResult:
        return self.visits[0]

    @property
    def followups(self) -> list[VisitResult]:
        return self.visits[1:]

    def target_at(self, visit: VisitResult, target: str) -> LesionMeasurement | None:
        """The measurement of baseline target ``target`` at ``visit`` (None: not found there)."""
        if visit is self.baseline:
            return visit.lesion(target)
        return visit.lesion(visit.matching.followup_of(target)) if visit.matching else None

    def set_manual_viable(self, visit_name: str, target: str, start_ras, end_ras) -> LesionMeasurement:
        """Replace the measured viable diameter of a target at a visit by a line drawn by hand, and classify again."""
        visit = next((v for v in self.visits if v.name == visit_name), None)
        if visit is None:
            raise InputError(f"no visit {visit_name!r}; visits: {', '.join(v.name for v in self.visits)}")
        lesion = self.target_at(visit, target)
        if lesion is None:
            raise InputError(f"target {target!r} is not found at {visit_name}; nothing to measure by hand")
        lesion.manual_viable = Caliper.drawn(start_ras, end_ras)
        classify(self)
        return lesion

    def clear_manual(self) -> None:
        for visit in self.visits:
            for lesion in visit.lesions:
                lesion.manual_viable = None
        classify(self)


# --- measuring one visit --------------------------------------------------------------------------------
#: Slicer's / DICOM's terminology category of anatomy (liver, vessels …), as opposed to altered structures
ANATOMICAL_STRUCTURE = "123037004"
#: type code of the liver
LIVER_CODE = "10200004"


def _terminology(segment: Segment) -> list[str]:
    return (segment.terminology or "").split("~")


def _is_liver(segment: Segment) -> bool:
    if segment.name.strip().lower() in ("liver", "liver parenchyma"):
        return True
    parts = _terminology(segment)
    type_code = segment.tags.get(SEG_TYPE_TAG, "").split(" ", 1)[0]  # a DICOM SEG's "SCT:10200004"
    return (len(parts) > 2 and LIVER_CODE in parts[2]) or type_code.endswith(f":{LIVER_CODE}")  # its type is Liver


def _is_anatomy(segment: Segment) -> bool:
    """The segment's terminology category is an anatomical structure (an organ or vessel, not a lesion)."""
    parts = _terminology(segment)
    return len(parts) > 1 and ANATOMICAL_STRUCTURE in parts[1]


def tumour_segments(segmentation: Segmentation, chosen: Sequence[str] = ()) -> tuple[list[Segment], Segment | None]:
    """The tumour segments (``chosen``, else those a blank choice means — for a DICOM SEG its tumour segments,
    :meth:`~TACEResponseLib.imaging.segmentation.Segmentation.default_segment_ids` — that are neither viable or
    oil segments nor anatomy: the liver by name or type, any segment whose terminology category is an
    anatomical structure, such as vessels) and the liver segment, if any."""
    liver = next((s for s in segmentation.segments if _is_liver(s)), None)
    if chosen:
        return [segmentation.find(key) for key in chosen], liver
    names = [s.name for s in segmentation.segments]
    candidates = [segmentation.find(key) for key in segmentation.default_segment_ids()]
    tumours = [s for s in candidates if not is_viable_segment(s, names) and not s.tags.get(OIL_TAG)
               and s is not liver and not _is_anatomy(s)]
    return tumours, liver


def _centroid(roi: TumourROI) -> tuple[float, float, float]:
    kji = np.argwhere(roi.mask.array > 0).mean(axis=0)
    return tuple(round(float(v), 3) for v in roi.mask.ijk_to_ras_points(kji[::-1][None])[0])  # type: ignore[return-value]


def _boundary_ml(mask: Volume) -> float:
    from scipy.ndimage import binary_erosion

    present = mask.array > 0
    if not present.any():
        return 0.0
    inner = binary_erosion(present, border_value=0)
    return float((present & ~inner).sum()) * float(np.prod(mask.spacing)) / 1000.0


def measure_visit(visit: Visit, options: AssessmentOptions = AssessmentOptions()) -> VisitResult:
    """Every tumour of one visit measured (module docstring, step 1). InputError when the visit has none."""
    check_volume(visit.arterial, f"{visit.name}: arterial image")
    precontrast = visit.precontrast
    if precontrast is not None:
        check_volume(precontrast, f"{visit.name}: pre-contrast image")
        check_same_space(visit.arterial, precontrast, f"{visit.name}: pre-contrast image")
    segments, liver_segment = tumour_segments(visit.segmentation, options.segments)
    where = f"{visit.name} ({visit.sources.get('segmentation', visit.segmentation.name)})"
    if not segments:
        raise InputError(f"{where}: no tumour segment in the segmentation; outline the target lesions in every visit")
    rois = tumour_rois(visit.segmentation, visit.arterial, [s.id for s in segments], options.islands)
    usable = [r for r in rois if not r.excluded]
    if not usable:
        reasons = "; ".join(f"{r.label}: {r.excluded}" for r in rois)
        raise InputError(f"{where}: no tumour in the segmentation ({reasons}); outline the target lesions in every "
                         "visit (a fully necrotic lesion is still outlined: its viable part is then 0)")
    ct = {"CT": True, "MR": False}.get(options.modality, None)
    ct = guess_ct(visit.arterial) if ct is None else ct
    liver = segment_box_on(visit.segmentation, liver_segment.id, visit.arterial) if liver_segment is not None else None
    lesions, masks = [], {}
    for roi in usable:
        segment = visit.segmentation.find(roi.segment_id)
        given = viable_segment_for(visit.segmentation, segment)
        if given is not None:  # an empty viable segment: the tumour has no viable part (it is drawn as such)
            drawn = label_box(visit.segmentation.layers[given.layer], given.label_value) is not None
            viable = given_viable(roi, segment_box_on(visit.segmentation, given.id, visit.arterial) if drawn else None,
                                  visit.arterial, label=f"{roi.label} ({given.name})")
        else:
            viable = derive_viable(roi, visit.arterial, usable, options.viable, precontrast, ct, liver,
                                   label=f"{visit.name}: {roi.label}")
        lesions.append(LesionMeasurement(
            roi.label, roi.segment_id, roi.segment_name, roi.island, round(roi.volume_ml, 4), _centroid(roi),
            measure_axial(roi.mask), measure_axial(viable.mask, components=True), viable,
            round(_boundary_ml(viable.mask), 4), touches_edge=roi.touches_edge))
        masks[roi.label] = roi.mask
    not_measured = [{"lesion": r.label, "reason": str(r.excluded)} for r in rois if r.excluded]
    return VisitResult(visit.name, lesions, dict(visit.sources), new_lesion=visit.new_lesion, not_measured=not_measured,
                       arterial=visit.arterial, precontrast=precontrast, segmentation=visit.segmentation, masks=masks)


# --- targets --------------------------------------------------------------------------------------------
def choose_targets(baseline: VisitResult, options: AssessmentOptions) -> tuple[list[str], list[dict[str, str]]]:
    """Target lesions at baseline (module docstring, step 2) and every other lesion with why it is not one."""
    minimum = options.min_target_mm
    why: dict[str, str] = {}
    for lesion in baseline.lesions:
        if not lesion.enhancing:
            why[lesion.label] = "no arterially enhancing (viable) tumour"
        elif lesion.whole.length_mm < minimum - 1e-9:
            why[lesion.label] = f"longest axial diameter {lesion.whole.length_mm:.1f} mm < {minimum:g} mm"
        elif lesion.viable.length_mm < minimum - 1e-9:
            why[lesion.label] = f"longest viable diameter {lesion.viable.length_mm:.1f} mm < {minimum:g} mm"
    if options.targets:
        labels = {m.label for m in baseline.lesions}
        targets = []
        for key in options.targets:
            found = [m.label for m in baseline.lesions if key in (m.label, m.segment_id, m.segment_name)]
            if not found:
                raise InputError(f"target {key!r}: no such lesion at baseline; lesions: {', '.join(sorted(labels))}")
            for label in found:
                if label in why:
                    raise InputError(f"target {key!r} ({label}) cannot be a target lesion: {why[label]}")
                targets.append(label)
        targets = list(dict.fromkeys(targets))
        if len(targets) > options.max_targets:
            raise InputError(f"{len(targets)} target lesions named ({', '.join(targets)}); at most {options.max_targets}")
    else:
        eligible = sorted((m for m in baseline.lesions if m.label not in why),
                          key=lambda m: (-m.viable.length_mm, m.label))
        if not eligible:
            listed = "; ".join(f"{label}: {reason}" for label, reason in why.items())
            raise InputError(f"baseline: no measurable enhancing target lesion ({listed}); mRECIST and EASL need "
                             f"arterially enhancing lesions of at least {minimum:g} mm at baseline")
        targets = [m.label for m in eligible[:options.max_targets]]
    non_targets = [{"lesion": m.label, "reason": why.get(m.label, f"beyond the {options.max_targets} largest")}
                   for m in baseline.lesions if m.label not in targets]
    return targets, non_targets


# --- the series -----------------------------------------------------------------------------------------
def assess_series(visits: Sequence[Visit], options: AssessmentOptions = AssessmentOptions()) -> SeriesAssessment:
    """Baseline (first) and follow-ups (in order) assessed (module docstring). Everything is checked and
    computed before anything is returned; InputError names the visit and what is wrong."""
    if len(visits) < 2:
        raise InputError("a baseline and at least one follow-up visit are needed")
    names = [v.name for v in visits]
    if len(set(names)) != len(names):
        raise InputError(f"visit names must differ: {names}")
    baseline_visit = visits[0]
    for visit in visits[1:]:
        check_same_space(baseline_visit.arterial, visit.arterial, f"{visit.name}")
    results = [measure_visit(visit, options) for visit in visits]
    targets, non_targets = choose_targets(results[0], options)
    base = results[0]
    centroids_b = {m.label: np.asarray(m.centroid_ras) for m in base.lesions}
    for visit, result in zip(visits[1:], results[1:]):
        if options.register:
            result.registration = register_rigid(base.arterial, result.arterial)
        else:
            result.registration = Registration.identity("none (the visits are taken as already registered)")
        centroids_f = {m.label: np.asarray(m.centroid_ras) for m in result.lesions}
        result.matching = match_lesions(base.masks, base.arterial, result.masks, result.arterial, result.registration,
                                        visit.matches, (centroids_b, centroids_f), options.min_overlap)
        result.candidate_new_lesions = list(result.matching.unmatched_followup)
        result.missing_targets = [t for t in targets if result.matching.followup_of(t) is None]
    synthetic = any(bool(v.arterial.metadata.get("synthetic")) for v in visits)
    assessment = SeriesAssessment(results, targets, non_targets, options, synthetic=synthetic)
    classify(assessment)
    return assessment


def _sums(assessment: SeriesAssessment, visit: VisitResult) -> tuple[dict[str, Sum], bool]:
    """Per criterion, the sum over the targets at ``visit`` with its SD; and whether a hand-drawn line is in it."""
    u = assessment.options.uncertainty
    totals = {name: [0.0, 0.0] for name in CRITERIA}  # value, variance
    manual = False
    for target in assessment.targets:
        lesion = assessment.target_at(visit, target)
        if lesion is None:
            continue  # not found: counted as gone (listed in missing_targets)
        manual |= lesion.manual_viable is not None
        viable_sd = diameter_sd_mm(lesion.viable_caliper, u.reader_sd_mm)
        whole_sd = diameter_sd_mm(lesion.whole.longest, u.reader_sd_mm)
        long_, perp = lesion.viable.length_mm, lesion.viable.perpendicular_mm
        long_sd = diameter_sd_mm(lesion.viable.longest, u.reader_sd_mm)
        perp_sd = diameter_sd_mm(lesion.viable.perpendicular, u.reader_sd_mm)
        volume = lesion.viable_tumour.viable_ml
        parts = {"mRECIST": (lesion.viable_diameter_mm, viable_sd), "RECIST 1.1": (lesion.whole.length_mm, whole_sd),
                 "EASL": (long_ * perp, float(np.hypot(perp * long_sd, long_ * perp_sd))),
                 "volumetric": (volume, float(np.hypot(u.reader_volume_cv * volume, lesion.viable_boundary_ml / 2)))}
        for name, (value, sd) in parts.items():
            totals[name][0] += value
            totals[name][1] += sd ** 2
    return {name: Sum(value, float(np.sqrt(variance))) for name, (value, variance) in totals.items()}, manual


def classify(assessment: SeriesAssessment) -> None:
    """Every follow-up's response by every criterion, from the measurements as they stand (hand-drawn lines
    included): the sums, the nadir of the visits before it, the category and its near-threshold flag."""
    history: dict[str, list[tuple[str, Sum]]] = {name: [] for name in CRITERIA}
    z = assessment.options.uncertainty.z
    for visit in assessment.visits:
        sums, manual = _sums(assessment, visit)
        if visit is not assessment.baseline:
            visit.responses = {name: respond(criterion, history[name], sums[name], visit.new_lesion, z,
                                             manual=manual and name == "mRECIST")
                               for name, criterion in CRITERIA.items()}
        for name in CRITERIA:
            history[name].append((visit.name, sums[name]))


# --- the viable segments written back -------------------------------------------------------------------
def viable_segmentation(visit: VisitResult) -> Segmentation:
    """The visit's tumour segments with, for each, its viable segment ("<name> viable", tagged with the tumour
    segment's id) and the iodised oil found, on the box of the arterial grid that holds the tumours: open it
    in Slicer, correct the viable segments in the Segment Editor and give it back as the segmentation."""
    reference = visit.arterial
    boxes = [(np.asarray(m.metadata.get("crop_offset_kji", grid_offset(m, reference))), m) for m in visit.masks.values()]
    lo = np.maximum(np.min([b[0] for b in boxes], axis=0) - 2, 0)
    hi = np.minimum(np.max([b[0] + np.asarray(b[1].shape_kji) for b in boxes], axis=0) + 2, reference.shape_kji)
    grid = crop(reference, lo, hi)
    shape = grid.shape_kji

    def paint(target: np.ndarray, mask: Volume | None) -> None:
        if mask is not None:
            target |= paste(mask, reference, lo, shape)

    tumours: dict[str, np.ndarray] = {}
    viables: dict[str, np.ndarray] = {}
    oil = np.zeros(shape, bool)
    for lesion in visit.lesions:
        tumours.setdefault(lesion.segment_id, np.zeros(shape, bool))
        viables.setdefault(lesion.segment_id, np.zeros(shape, bool))
        paint(tumours[lesion.segment_id], visit.masks[lesion.label])
        paint(viables[lesion.segment_id], lesion.viable_tumour.mask)
        paint(oil, lesion.viable_tumour.oil)
    source = {s.id: s for s in visit.segmentation.segments}
    masks = {}
    for segment_id, mask in tumours.items():
        masks[source[segment_id].name] = mask
        masks[f"{source[segment_id].name}{VIABLE_SUFFIX}"] = viables[segment_id]
    if oil.any():
        masks["Iodised oil"] = oil
    out = Segmentation.from_masks(grid.with_array(np.zeros(shape, np.uint8)), masks, name=f"{visit.name}_viable")
    by_name = {s.name: s for s in visit.segmentation.segments}
    for segment in out.segments:
        if segment.name in by_name:
            original = by_name[segment.name]
            segment.id, segment.color, segment.terminology = original.id, original.color, original.terminology
        elif segment.name.endswith(VIABLE_SUFFIX):
            tumour = by_name[segment.name[:-len(VIABLE_SUFFIX)]]
            segment.id, segment.color = f"{tumour.id}_viable", VIABLE_COLOR
            segment.tags[VIABLE_OF_TAG] = tumour.id
        else:
            segment.id, segment.color = "iodised_oil", OIL_COLOR
            segment.tags[OIL_TAG] = "1"
    return out


def image_window(volume: Volume) -> tuple[float, float]:
    """Display window (low, high): CT's abdomen window (W 400, L 40 HU), else the 1st–99th percentile."""
    if guess_ct(volume):
        return -160.0, 240.0
    low, high = value_range_of(volume)
    sample = np.asarray(volume.array).ravel()[:: max(1, volume.array.size // 200_000)]
    p1, p99 = np.percentile(sample, [1, 99]) if sample.size else (low, high)
    return float(p1), float(max(p99, p1 + 1e-6))
