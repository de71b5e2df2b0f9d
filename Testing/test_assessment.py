"""Response assessment (issue 25): calipers against independent oracles, the published rules on their
boundaries, and the SYNTHETIC treatment series end to end through the library.

Oracles: analytic ellipsoids (the longest chord of the central axial section, from the ellipsoid's
quadric, at oblique orientations and anisotropic voxels: within one voxel diagonal), and SimpleITK's
LabelShapeStatisticsImageFilter per axial slice of real tumour masks (LiTS volume 117: its Feret diameter
is the largest distance between voxel centres, which the calipers must equal to the float). Thresholds in
the rule tests are the publications' numbers, typed here from the papers, not read from the code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from TACEResponseLib.assessment.calipers import measure_axial, plane_feret_diameters
from TACEResponseLib.assessment.criteria import CRITERIA, Sum, categorize, respond
from TACEResponseLib.assessment.series import AssessmentOptions, Visit, assess_series, viable_segmentation
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, ijk_to_ras_from, rotation_matrix
from TACEResponseLib.imaging.phantoms import COMPLETE_RESPONSE, TREATMENT_SERIES, make_treatment_series
from TACEResponseLib.imaging.segmentation import Segmentation

#: the publications' thresholds: (PR decrease from baseline, PD increase from nadir, PD absolute increase)
PUBLISHED = {"mRECIST": (0.30, 0.20, 0.0), "RECIST 1.1": (0.30, 0.20, 5.0), "EASL": (0.50, 0.25, 0.0),
             "volumetric": (0.65, 0.73, 0.0)}


# --- the oracle: analytic ellipsoids ------------------------------------------------------------------------
def ellipsoid_on_grid(shape, spacing, grid_degrees, semi_axes, axes_degrees, centre=(3.0, -2.0, 1.0)):
    """A voxelised ellipsoid and its analytic longest axial diameter and perpendicular diameter (mm)."""
    direction = rotation_matrix(grid_degrees)
    size = np.array(shape[::-1])
    matrix = ijk_to_ras_from(spacing, direction, -direction @ (np.asarray(spacing) * (size - 1) / 2))
    k, j, i = np.indices(shape)
    ras = np.stack([i, j, k], -1).reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
    rotation = rotation_matrix(axes_degrees)
    quadric = rotation @ np.diag(1.0 / np.asarray(semi_axes, float) ** 2) @ rotation.T
    offset = ras - np.asarray(centre)
    inside = np.einsum("ni,ij,nj->n", offset, quadric, offset) <= 1.0
    # every axial section is similar to the central one, the largest: its ellipse's axes
    small, large = np.linalg.eigvalsh(quadric[:2, :2])
    return Volume(inside.reshape(shape).astype(np.uint8), matrix), 2 / math.sqrt(small), 2 / math.sqrt(large)


@pytest.mark.parametrize("spacing, grid_degrees", [
    ((1.0, 1.0, 1.0), (0, 0, 0)),
    ((0.8, 0.8, 2.5), (0, 0, 30)),        # axial, rotated in plane, thick slices: the grid's own slices
    ((0.9, 1.3, 2.5), (15, -10, 25)),     # oblique and anisotropic: resliced onto axial planes
    ((1.5, 0.7, 1.1), (40, 20, 0)),
    ((0.7, 0.7, 0.7), (90, 0, 0)),         # a coronal acquisition: its j axis runs along S
])
def test_calipers_equal_the_analytic_ellipsoid_within_a_voxel_diagonal(spacing, grid_degrees):
    mask, longest, perpendicular = ellipsoid_on_grid((64, 80, 80), spacing, grid_degrees, (20, 11, 8), (20, 35, 50))
    measured = measure_axial(mask)
    diagonal = math.sqrt(sum(s * s for s in spacing))
    assert abs(measured.length_mm - longest) <= diagonal, (measured.length_mm, longest)
    assert abs(measured.perpendicular_mm - perpendicular) <= diagonal, (measured.perpendicular_mm, perpendicular)
    # the calipers lie on one axial plane and their ends are as far apart as they say
    for caliper in (measured.longest, measured.perpendicular):
        start, end = np.asarray(caliper.start_ras), np.asarray(caliper.end_ras)
        assert start[2] == pytest.approx(end[2], abs=1e-3)
        assert np.linalg.norm(end - start) == pytest.approx(caliper.length_mm, abs=1e-3)
    direction = np.subtract(measured.longest.end_ras, measured.longest.start_ras)
    across = np.subtract(measured.perpendicular.end_ras, measured.perpendicular.start_ras)
    assert abs(direction @ across) <= 1e-3 * np.linalg.norm(direction) * np.linalg.norm(across)


# --- the oracle: SimpleITK's Feret diameter on real tumour masks ---------------------------------------------
@pytest.fixture(scope="module")
def lits_islands(realdata):
    """The ten largest tumour islands of LiTS volume 117 (1.4 mm voxels, as Testing/test_realdata_liver.py reads it)."""
    from scipy.ndimage import label

    folder = realdata("lits117")
    labels = sitk.GetArrayFromImage(sitk.PermuteAxes(sitk.ReadImage(str(folder / "lab_117.mrc")), [2, 1, 0]))
    islands, count = label(labels == 2, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(islands.ravel())[1:]
    return [(islands == n + 1).astype(np.uint8) for n in np.argsort(-sizes)[:10]]


def _sitk_feret_per_slice(mask: np.ndarray, spacing_ij) -> list[float]:
    found = []
    for plane in mask:
        if not plane.any():
            continue
        image = sitk.GetImageFromArray(plane.astype(np.uint8))
        image.SetSpacing(tuple(float(s) for s in spacing_ij))
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.ComputeFeretDiameterOn()
        shape.Execute(image)
        found.append(shape.GetFeretDiameter(1))
    return found


@pytest.mark.parametrize("spacing, degrees", [((1.4, 1.4, 1.4), 0.0), ((0.8, 1.1, 2.0), 30.0)])
def test_calipers_equal_simpleitk_feret_diameters_on_real_tumours(lits_islands, spacing, degrees):
    """Per axial slice, the largest distance between voxel centres equals ITK's 2-D Feret diameter, on grids
    flipped (LPS stored as RAS) and rotated in plane with anisotropic voxels; the longest axial diameter is
    the largest of them plus one voxel's extent along it (≤ the in-plane voxel diagonal)."""
    direction = np.diag([-1.0, -1.0, 1.0]) @ rotation_matrix((0, 0, degrees))
    matrix = ijk_to_ras_from(spacing, direction, (90.0, 120.0, -40.0))
    for island in lits_islands:
        oracle = _sitk_feret_per_slice(island, spacing[:2])
        ours = [d for _, d in plane_feret_diameters(Volume(island, matrix))]
        assert ours == pytest.approx(oracle, abs=1e-6)
        measured = measure_axial(Volume(island, matrix))
        assert measured.longest.centre_to_centre_mm == pytest.approx(max(oracle), abs=1e-6)
        assert 0 < measured.length_mm - max(oracle) <= math.hypot(*spacing[:2]) + 1e-9


# --- the rules on their boundaries ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_each_criterion_on_its_boundaries(name):
    criterion = CRITERIA[name]
    pr, pd, absolute = PUBLISHED[name]
    baseline = 80.0
    assert categorize(criterion, baseline, baseline, baseline * (1 - pr))[0] == "PR"           # exactly −PR
    assert categorize(criterion, baseline, baseline, baseline * (1 - pr) + 0.01)[0] == "SD"    # just short of it
    nadir = 60.0
    assert categorize(criterion, baseline, nadir, max(nadir * (1 + pd), nadir + absolute))[0] == "PD"  # exactly +PD
    assert categorize(criterion, baseline, nadir, nadir * (1 + pd) - 0.01)[0] != "PD"
    # the nadir, not the baseline, is the reference for PD: 25 % below baseline yet PD
    low = 40.0
    current = max(low * (1 + pd), low + absolute)
    assert current < baseline and categorize(criterion, baseline, low, current)[0] == "PD"
    assert categorize(criterion, baseline, baseline, current)[0] in ("PR", "SD")
    assert categorize(criterion, baseline, baseline, 0.0)[0] == "CR"                          # nothing left
    assert categorize(criterion, baseline, baseline, 0.0, new_lesion=True)[0] == "PD"         # a new lesion wins
    assert categorize(criterion, baseline, 0.0, 1.0)[0] == "PD"                               # back after CR
    assert categorize(criterion, baseline, 0.0, 0.0)[0] == "CR"


def test_recist_needs_five_millimetres_over_the_nadir_and_mrecist_does_not():
    # 20 mm → 24 mm is +20 % but only +4 mm
    assert categorize(CRITERIA["RECIST 1.1"], 30.0, 20.0, 24.0)[0] == "SD"
    assert categorize(CRITERIA["RECIST 1.1"], 30.0, 20.0, 25.0)[0] == "PD"
    assert categorize(CRITERIA["mRECIST"], 30.0, 20.0, 24.0)[0] == "PD"


def test_floating_point_boundaries_are_exact_percentages():
    """Sums whose ratio is exactly 0.7 or 1.2 in decimal but not in binary keep their category."""
    for baseline in (33.3, 41.7, 17.9, 123.45):
        assert categorize(CRITERIA["mRECIST"], baseline, baseline, baseline * 7 / 10)[0] == "PR"
        assert categorize(CRITERIA["mRECIST"], baseline, baseline / 2, baseline / 2 * 12 / 10)[0] == "PD"


def test_nadir_is_the_smallest_earlier_sum_and_near_threshold_is_flagged():
    mrecist = CRITERIA["mRECIST"]
    history = [("baseline", Sum(50.0, 2.0)), ("followup1", Sum(30.0, 2.0)), ("followup2", Sum(34.0, 2.0))]
    response = respond(mrecist, history, Sum(37.0, 2.0))
    assert (response.nadir, response.nadir_visit) == (30.0, "followup1")
    assert response.category == "PD" and response.change_from_nadir == pytest.approx(37 / 30 - 1)
    sd = math.hypot(2.0 / 30.0, 37.0 / 30.0 * 2.0 / 30.0)
    assert response.change_from_nadir_sd == pytest.approx(sd)
    assert response.near_threshold and "SD" in response.could_be  # +23 % ± 2×11 % reaches below +20 %
    far = respond(mrecist, [("baseline", Sum(50.0, 0.5))], Sum(20.0, 0.5))
    assert far.category == "PR" and not far.near_threshold and far.could_be == []
    near = respond(mrecist, [("baseline", Sum(50.0, 2.0))], Sum(35.5, 2.0))  # −29 %: SD, within reach of PR
    assert near.category == "SD" and near.near_threshold and near.could_be == ["PR"]


# --- the treatment series end to end ---------------------------------------------------------------------------
def _truth_measure(state, pose_degrees, criterion: str) -> float:
    """The analytic value of one lesion at one visit (the ellipsoids the phantom drew)."""
    if criterion == "RECIST 1.1":
        semi = state.semi_axes_mm
    else:
        semi = state.viable_semi_axes_mm
    if min(semi) <= 0:
        return 0.0
    if criterion == "volumetric":
        return 4 / 3 * math.pi * np.prod(semi) / 1000.0
    rotation = rotation_matrix(pose_degrees)
    quadric = rotation @ np.diag(1.0 / np.asarray(semi, float) ** 2) @ rotation.T
    small, large = np.linalg.eigvalsh(quadric[:2, :2])
    longest, across = 2 / math.sqrt(small), 2 / math.sqrt(large)
    return longest * across if criterion == "EASL" else longest


def _truth_category(name: str, sums: list[float], new_lesion: bool = False) -> str:
    """The published rule applied to the truth: PD (new lesion, or the increase over the nadir), CR, PR, SD."""
    pr, pd, absolute = PUBLISHED[name]
    baseline, nadir, current = sums[0], min(sums[:-1]), sums[-1]
    if new_lesion or (current >= nadir * (1 + pd) and current - nadir >= absolute):
        return "PD"
    if current == 0:
        return "CR"
    return "PR" if current <= baseline * (1 - pr) else "SD"


@pytest.fixture(scope="module")
def assessed(treatment_series):
    visits = [Visit(v.name, v.phases["arterial"], v.segmentation, v.phases["precontrast"]) for v in treatment_series]
    return assess_series(visits)


def test_the_treatment_series_gets_the_known_categories(assessed, treatment_series):
    assert assessed.targets == ["Tumour_1", "Tumour_2"]  # Tumour_3 (7 mm) is below 10 mm
    assert [n["lesion"] for n in assessed.non_targets] == ["Tumour_3"]
    truth: dict[str, list[float]] = {name: [] for name in PUBLISHED}
    for visit, phantom in zip(assessed.visits, treatment_series):
        for name in PUBLISHED:
            truth[name].append(sum(_truth_measure(phantom.lesions[t], phantom.pose[1], name) for t in assessed.targets))
        if visit is assessed.baseline:
            continue
        for name in PUBLISHED:
            assert visit.responses[name].category == _truth_category(name, truth[name]), (visit.name, name)
    categories = {v.name: {n: r.category for n, r in v.responses.items()} for v in assessed.followups}
    assert categories == {"followup1": {"mRECIST": "PR", "RECIST 1.1": "SD", "EASL": "PR", "volumetric": "PR"},
                          "followup2": {"mRECIST": "PD", "RECIST 1.1": "SD", "EASL": "PD", "volumetric": "PD"}}
    # the new nodule of follow-up 2 is a candidate, not counted: that is the user's call
    assert assessed.visits[2].candidate_new_lesions == ["New_1"] and not assessed.visits[2].new_lesion
    assert assessed.visits[2].responses["mRECIST"].nadir_visit == "followup1"


def test_measured_diameters_and_volumes_match_the_phantom(assessed, treatment_series):
    for visit, phantom in zip(assessed.visits, treatment_series):
        diagonal = float(np.linalg.norm(visit.arterial.spacing))
        for target in assessed.targets:
            lesion = assessed.target_at(visit, target)
            state = phantom.lesions[target]
            assert abs(lesion.viable.length_mm - _truth_measure(state, phantom.pose[1], "mRECIST")) <= diagonal
            assert abs(lesion.whole.length_mm - _truth_measure(state, phantom.pose[1], "RECIST 1.1")) <= diagonal
            volume = _truth_measure(state, phantom.pose[1], "volumetric")
            assert lesion.viable_tumour.viable_ml == pytest.approx(volume, rel=0.15)
            if state.oil:  # oil found where it was put, and never counted as viable
                oil = sum(4 / 3 * math.pi * r ** 3 for *_, r in state.oil) / 1000.0
                assert lesion.viable_tumour.oil_ml == pytest.approx(oil, rel=0.35)


def test_registration_brings_the_followup_lesions_onto_the_baseline(assessed, treatment_series):
    for visit, phantom in zip(assessed.followups, treatment_series[1:]):
        truth = phantom.patient_to_ras()
        for name, centre in treatment_series[0].centres_ras.items():
            point = np.append(centre, 1.0)
            error = np.linalg.norm((visit.registration.baseline_to_followup @ point - truth @ point)[:3])
            assert error < 4.0, (visit.name, name, error)  # well inside the smallest lesion's radius
        assert [(m.baseline, m.followup) for m in visit.matching.matches] == \
            [("Tumour_1", "Tumour_1"), ("Tumour_2", "Tumour_2"), ("Tumour_3", "Tumour_3")]


def _ball(grid: Volume, centre, radius: float) -> Volume:
    k, j, i = np.indices(grid.shape_kji)
    ras = grid.ijk_to_ras_points(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(*grid.shape_kji, 3)
    return grid.with_array((np.linalg.norm(ras - np.asarray(centre), axis=-1) <= radius).astype(np.uint8))


def test_lesions_pair_by_overlap_then_by_distance_and_the_users_pairs_win():
    from TACEResponseLib.assessment.matching import Registration, match_lesions

    grid = Volume(np.zeros((30, 40, 40), np.uint8), ijk_to_ras_from((1.0, 1.0, 1.0)))
    base = {"A": _ball(grid, (10, 10, 15), 5), "B": _ball(grid, (28, 28, 15), 3)}
    follow = {"a": _ball(grid, (11, 10, 15), 4),     # A, shrunk and moved 1 mm: overlap
              "b": _ball(grid, (28, 35, 15), 2),     # B, 7 mm away and small: no overlap, near centroid
              "n": _ball(grid, (10, 30, 15), 3)}     # a lesion where none was
    centroids = ({k: np.argwhere(v.array)[:, ::-1].mean(0) for k, v in base.items()},
                 {k: np.argwhere(v.array)[:, ::-1].mean(0) for k, v in follow.items()})
    identity = Registration.identity("test")
    found = match_lesions(base, grid, follow, grid, identity, centroids=centroids)
    assert [(m.baseline, m.followup, m.source) for m in found.matches] == [("A", "a", "overlap"), ("B", "b", "centroid")]
    assert found.matches[0].overlap == pytest.approx(1.0) and found.unmatched_followup == ["n"]
    found = match_lesions(base, grid, follow, grid, identity, {"A": "n", "B": None}, centroids)
    assert [(m.baseline, m.followup, m.source) for m in found.matches] == [("A", "n", "user"), ("B", None, "user")]
    assert found.unmatched_followup == ["a", "b"]
    with pytest.raises(InputError, match="no follow-up lesion 'x'"):
        match_lesions(base, grid, follow, grid, identity, {"A": "x"})


def test_a_line_moved_by_hand_changes_mrecist_only_and_says_so(assessed):
    before = {n: r.total for n, r in assessed.visits[1].responses.items()}
    lesion = assessed.target_at(assessed.visits[1], "Tumour_1")
    start = np.asarray(lesion.viable.longest.start_ras)
    end = start + np.array([30.0, 0.0, 0.0])  # a 30-mm line: mRECIST sum +30 − measured
    try:
        assessed.set_manual_viable("followup1", "Tumour_1", start, end)
        after = assessed.visits[1].responses
        assert after["mRECIST"].total == pytest.approx(before["mRECIST"] - lesion.viable.length_mm + 30.0)
        assert after["mRECIST"].manual and not after["EASL"].manual
        assert after["EASL"].total == before["EASL"] and after["RECIST 1.1"].total == before["RECIST 1.1"]
        assert after["mRECIST"].category == "SD"  # 30 + 10.6 of 55.4: no longer a 30 % decrease
        # follow-up 2 is judged against the new nadir: by the published rule applied to the sums as they stand
        sums = [v.responses["mRECIST"].total if v.responses else v_total for v, v_total in
                zip(assessed.visits, (assessed.visits[1].responses["mRECIST"].baseline, None, None))]
        later = assessed.visits[2].responses["mRECIST"]
        assert later.category == _truth_category("mRECIST", sums) == "PR"  # no longer PD: +20 % over 40.6 not met
    finally:
        assessed.clear_manual()
    assert {n: r.total for n, r in assessed.visits[1].responses.items()} == before


def test_a_marked_new_lesion_is_progression_under_every_criterion(treatment_series):
    # measured once more with the user's mark at follow-up 2 and no registration (the visits overlap anyway)
    visits = [Visit(v.name, v.phases["arterial"], v.segmentation, v.phases["precontrast"], new_lesion=n == 2)
              for n, v in enumerate(treatment_series)]
    result = assess_series(visits, AssessmentOptions(register=False))
    assert {r.category for r in result.visits[2].responses.values()} == {"PD"}
    assert all(r.new_lesion and r.reason == "new lesion" for r in result.visits[2].responses.values())
    assert result.visits[1].responses["mRECIST"].category == "PR"


def test_complete_disappearance_of_enhancement(treatment_series):
    """No enhancing voxel left (oil in the scars): CR by mRECIST, EASL and volumetric; RECIST 1.1 sees the scar."""
    series = make_treatment_series({"baseline": TREATMENT_SERIES["baseline"], "followup1": COMPLETE_RESPONSE})
    visits = [Visit(v.name, v.phases["arterial"], v.segmentation, v.phases["precontrast"]) for v in series]
    result = assess_series(visits, AssessmentOptions(register=False))
    categories = {n: r.category for n, r in result.visits[1].responses.items()}
    assert categories == {"mRECIST": "CR", "RECIST 1.1": "SD", "EASL": "CR", "volumetric": "CR"}
    assert all(m.viable_tumour.viable_voxels == 0 and m.viable_tumour.oil_voxels > 0
               for m in result.visits[1].lesions if m.label != "Tumour_3")


def test_without_a_precontrast_image_the_arterial_image_alone_finds_the_same_viable_tumour(assessed, treatment_series):
    visit = treatment_series[1]
    alone = assess_series([Visit(v.name, v.phases["arterial"], v.segmentation) for v in treatment_series[:2]],
                          AssessmentOptions(register=False))
    for target in ("Tumour_1", "Tumour_2"):
        with_pre = assessed.target_at(assessed.visits[1], target)
        without = alone.target_at(alone.visits[1], target)
        assert "arterial vs" in without.viable_tumour.method and "minus pre-contrast" in with_pre.viable_tumour.method
        assert abs(without.viable.length_mm - with_pre.viable.length_mm) <= float(np.linalg.norm(visit.phases[
            "arterial"].spacing))


def test_the_viable_segment_written_back_is_read_back_as_given(assessed, treatment_series):
    """The derived viable segments, corrected by hand (a slab erased) and given back, are used as drawn."""
    written = viable_segmentation(assessed.visits[1])
    names = [s.name for s in written.segments]
    assert {"Tumour_1", "Tumour_1 viable", "Tumour_2 viable", "Iodised oil"} <= set(names)
    viable = next(s for s in written.segments if s.name == "Tumour_1 viable")
    layer = written.layers[viable.layer]
    voxels = np.argwhere(layer == viable.label_value)
    cut = np.median(voxels[:, 2])  # erase half of it along i
    edited = [layer.copy() for layer in written.layers]
    half = np.zeros_like(layer, bool)
    half[:, :, int(cut):] = True
    edited[viable.layer][(layer == viable.label_value) & half] = 0
    corrected = Segmentation(edited, written.ijk_to_ras, written.segments, written.name)
    visits = [Visit(v.name, v.phases["arterial"], v.segmentation, v.phases["precontrast"]) for v in treatment_series[:2]]
    visits[1] = Visit("followup1", visits[1].arterial, corrected, visits[1].precontrast)
    result = assess_series(visits, AssessmentOptions(register=False))
    lesion = result.target_at(result.visits[1], "Tumour_1")
    assert lesion.viable_tumour.source == "given"
    derived = assessed.target_at(assessed.visits[1], "Tumour_1")
    assert lesion.viable_tumour.viable_voxels < 0.75 * derived.viable_tumour.viable_voxels
    assert result.target_at(result.visits[1], "Tumour_2").viable_tumour.source == "given"


def test_default_tumour_segments_leave_out_anatomy_and_viable_segments():
    """A segmentation that also outlines the liver and a vessel (as HCC-TACE-Seg's DICOM SEGs do): only the
    lesion is a tumour, the liver is the parenchyma reference, the viable segment goes with its tumour."""
    from TACEResponseLib.assessment.series import tumour_segments
    from TACEResponseLib.imaging.segmentation import LIVER_TUMOUR_TERMINOLOGY

    anatomy = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~{}~^^~~^^~^^"
    grid = Volume(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    masks = {name: np.zeros((4, 4, 4), bool) for name in ("Liver", "Portal vein", "Mass", "Mass viable")}
    for n, mask in enumerate(masks.values()):
        mask[n, 0, 0] = True
    seg = Segmentation.from_masks(grid, masks, terminology={
        "Liver": anatomy.format("SCT^10200004^Liver"), "Portal vein": anatomy.format("SCT^32764006^Portal vein"),
        "Mass": LIVER_TUMOUR_TERMINOLOGY, "Mass viable": None})
    seg.segments[0].name = "Hepatic parenchyma"  # found by its type code, not its name
    tumours, liver = tumour_segments(seg)
    assert [s.name for s in tumours] == ["Mass"] and liver.name == "Hepatic parenchyma"
    assert [s.name for s in tumour_segments(seg, ["Portal vein"])[0]] == ["Portal vein"]  # the user's choice wins


# --- bad inputs: one clear message each ------------------------------------------------------------------------
def test_visits_that_do_not_overlap_in_space_are_refused(treatment_series):
    base, follow = treatment_series[0], treatment_series[1]
    far = follow.phases["arterial"].ijk_to_ras.copy()
    far[:3, 3] += (400.0, 0.0, 0.0)  # another patient's grid
    moved = Volume(follow.phases["arterial"].array, far, "followup1_arterial")
    seg = Segmentation(follow.segmentation.layers, far, follow.segmentation.segments, "followup1_tumour")
    with pytest.raises(InputError, match="does not overlap the baseline's in space"):
        assess_series([Visit("baseline", base.phases["arterial"], base.segmentation), Visit("followup1", moved, seg)])


def test_a_followup_with_no_tumour_is_refused(treatment_series):
    base, follow = treatment_series[0], treatment_series[1]
    empty = Segmentation([np.zeros_like(follow.segmentation.layers[0])], follow.segmentation.ijk_to_ras,
                         follow.segmentation.segments, "followup1_tumour")
    with pytest.raises(InputError, match=r"followup1 .*no tumour in the segmentation"):
        assess_series([Visit("baseline", base.phases["arterial"], base.segmentation),
                       Visit("followup1", follow.phases["arterial"], empty)])


def test_a_baseline_with_no_enhancing_tumour_is_refused():
    series = make_treatment_series({"baseline": COMPLETE_RESPONSE, "followup1": COMPLETE_RESPONSE})
    visits = [Visit(v.name, v.phases["arterial"], v.segmentation, v.phases["precontrast"]) for v in series]
    with pytest.raises(InputError, match="baseline: no measurable enhancing target lesion .*no arterially enhancing"):
        assess_series(visits, AssessmentOptions(register=False))
