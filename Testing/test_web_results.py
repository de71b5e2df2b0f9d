"""What the web page shows, without a browser: numbers in round units, the clinical fields' hints and
training-range marks, the result's summary, badges, compact rows and warnings, the views' orientation
letters and slice numbers, the heatmap's colour bar, and the warm-up request of the prediction worker.
The browser tests (``test_web.py``) show the same on the page."""

from __future__ import annotations

import numpy as np

from TACEResponseLib.frontend.panel.form import ClinicalField
from TACEResponseLib.frontend.web.results import (
    UNRELIABLE_SENTENCE,
    extrapolation_text,
    field_state,
    limits_text,
    outside_training,
    result_page,
    round_limit,
)
from TACEResponseLib.prediction.results import (
    NotAssessableTumour,
    PatientPrediction,
    PredictionResult,
    TumourPrediction,
)

CLASSES = ["CR", "PR", "SD", "PD"]


def test_limits_in_round_units():
    assert [round_limit(v) for v in (153.2, 8.31, 2.574, 0.0123, 10000, -5.5, 0, 4.54)] == \
        ["153", "8.3", "2.6", "0.012", "10 000", "−5.5", "0", "4.5"]
    assert limits_text(8.31, 153.2, "U/L") == "8.3–153 U/L"
    assert limits_text(0, None) == "≥ 0" and limits_text(None, 40, "cm") == "≤ 40 cm" and limits_text(None, None) == ""


def test_categorical_fields_show_their_levels_not_codes():
    bclc = ClinicalField("BCLC", levels={"C": 2.0, "A": 0.0, "B": 1.0}, label="BCLC stage", training_range=(0.0, 1.0))
    shown = field_state(bclc, "B")
    assert shown["levels"] == ["A", "B", "C"]  # in code order
    assert shown["hint"] == "levels A, B, C; training data: A, B"
    assert "0" not in shown["hint"] and not shown["outside"]


def test_a_number_outside_the_training_range_marks_its_field():
    alt = ClinicalField("ALT", minimum=0, maximum=10000, label="ALT (U/L)", training_range=(8.31, 153.2))
    assert field_state(alt, 48)["outside"] == "" and field_state(alt, "")["outside"] == ""
    assert field_state(alt, "abc")["outside"] == ""  # not a number: Predict's blockers say so
    shown = field_state(alt, 400)
    assert shown["hint"] == "accepted 0–10 000 U/L; training range 8.3–153 U/L"
    assert shown["outside"] == "ALT 400 U/L is outside the training range 8.3–153 U/L"
    size = ClinicalField("tumour_size", unit="cm", training_range=(2.57, 4.54))
    assert outside_training(size, 1) == "tumour_size 1 cm is outside the training range 2.6–4.5 cm"
    assert field_state(size, 3)["label"] == "tumour_size (cm)"


def test_the_demo_nomograms_extrapolation_is_worded_from_its_own_ranges():
    from TACEResponseLib.frontend.panel.form import nomogram_fields
    from TACEResponseLib.networks.catalog import read_survival_registry

    path = read_survival_registry()[0].model_file()
    fields = nomogram_fields(path)
    alt = next(f for f in fields if f.name == "ALT")
    low, high = alt.training_range
    value = 3 * high
    text = extrapolation_text({"extrapolated": ["ALT", "signature"], "values": {"ALT": value, "signature": 0.9}}, fields)
    assert f"ALT {value:g}" in text and limits_text(low, high) in text and "signature 0.9 is outside" in text
    assert text.endswith("so it may be far off.")
    assert extrapolation_text({"extrapolated": []}, fields) == ""


def _tumour(island, probabilities, cls, volume, unlike=None, reasons=()):
    from TACEResponseLib.networks.trust import TumourTrust

    trust = TumourTrust(views=1, unlike_training=unlike, reasons=list(reasons), ood_score=9.0, ood_threshold=5.0) \
        if unlike is not None else None
    return TumourPrediction("Segment_1", "Tumour", CLASSES, probabilities, cls, None, [], [], island=island,
                            volume_ml=volume, trust=trust)


def test_multifocal_result_summary_rows_badge_and_folded_tumours():
    tumours = [_tumour(1, [0.1, 0.7, 0.1, 0.1], "PR", 40.0, unlike=False),
               _tumour(2, [0.05, 0.05, 0.1, 0.8], "PD", 3.25, unlike=True, reasons=["median 310 HU, above training"]),
               _tumour(4, [0.6, 0.2, 0.1, 0.1], "CR", 0.14, unlike=False)]
    specks = [NotAssessableTumour("Segment_1", "Tumour", "too_small", "0.02 ml, below the 0.1 ml minimum", island=3,
                                  volume_ml=0.02)]
    patient = PatientPrediction("target_lesions", "the two largest", ["Tumour #1", "Tumour #2"], [0.9, 0.1], CLASSES,
                                [0.1, 0.6, 0.1, 0.2], "PR", 0.7, 6)
    result = PredictionResult("case9", "demo", "0" * 64, True, "SYNTHETIC demo model", "cpu", tumours,
                              not_assessable=specks, patient=patient)
    shown = result_page(result)
    assert shown["summary"] == {"headline": "PR", "description": "partial response", "percent": 60,
                                "scope": "Patient (2 of 3 assessed tumours)"}
    rows = shown["rows"]
    assert [(r["short"], r["cls"], r["percent"], r["volume"]) for r in rows] == \
        [("#1", "PR", 70, "40.0"), ("#2", "PD", 80, "3.2"), ("#4", "CR", 60, "0.1")]
    assert [r["flags"] for r in rows] == [["patient"], ["unreliable", "patient"], []]
    assert [r["key"] for r in rows] == ["t0", "t1", "t2"] and shown["skipped"][0]["key"] == "s0"
    unreliable = shown["unreliable"]
    assert unreliable["sentence"] == UNRELIABLE_SENTENCE and unreliable["tumours"] == ["Tumour #2"]
    assert "median 310 HU" in unreliable["details"][0] and "feature distance 9" in unreliable["details"][0]
    assert shown["synthetic"] == "SYNTHETIC demo model" and shown["survival"] is None
    # the tumour card leaves the patient line and the count of specks to their own places
    assert all("Patient:" not in t["detail"] and "not assessable" not in t["detail"] for t in shown["tumours"])


def test_survival_block_carries_the_extrapolation_beside_the_numbers():
    result = PredictionResult("case10", "demo", "0" * 64, False, "", "cpu", [_tumour(None, [0.1, 0.7, 0.1, 0.1], "PR", 9)])
    result.survival = {"survival_times": [12.0, 24.0], "survival": [0.004, 0.0], "time_unit": "months",
                       "risk_group": "high", "total_points": 310.0, "extrapolated": ["ALT"], "values": {"ALT": 400.0},
                       "warnings": ["outside the training range (points extrapolated): ALT", "another caveat"]}
    alt = ClinicalField("ALT", label="ALT (U/L)", training_range=(8.31, 153.2))
    block = result_page(result, fields=[alt])["survival"]
    assert block["at"] == [{"label": "12 months", "percent": 0}, {"label": "24 months", "percent": 0}]
    assert block["extrapolated"].startswith("ALT 400 U/L is outside the training range 8.3–153 U/L")
    assert block["warnings"] == ["another caveat"]  # the extrapolation is worded once, above
    assert block["risk_text"].startswith("High risk group")


# --- the views ----------------------------------------------------------------------------------------
def test_orientation_letters_follow_the_slice_matrix():
    from TACEResponseLib.frontend.web.viewer import direction_letters, edge_letters

    axial = np.diag([-1.0, 1.0, 1.0, 1.0])  # Slicer's axial: patient right on the screen's left
    assert edge_letters(axial) == {"right": "L", "left": "R", "top": "A", "bottom": "P"}
    coronal = np.array([[-1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    assert edge_letters(coronal) == {"right": "L", "left": "R", "top": "S", "bottom": "I"}
    angle = np.radians(30)
    assert direction_letters([np.cos(angle), np.sin(angle), 0]) == "RA"  # oblique: two letters
    assert direction_letters([np.cos(np.radians(10)), np.sin(np.radians(10)), 0]) == "R"


def test_slice_number_from_the_volume_grid():
    from TACEResponseLib.frontend.web.viewer import slice_number

    ijk_to_ras = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 80.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    axial = np.diag([-1.0, 1.0, 1.0, 1.0])
    axial[:3, 3] = (ijk_to_ras @ [10, 20, 7, 1])[:3]  # the view through voxel k = 7
    assert slice_number(axial, ras_to_ijk, (64, 64, 30)) == (8, 30)
    oblique = axial.copy()
    oblique[:3, :3] = np.array([[np.cos(0.3), 0, np.sin(0.3)], [0, 1, 0], [-np.sin(0.3), 0, np.cos(0.3)]])
    assert slice_number(oblique, ras_to_ijk, (64, 64, 30)) is None
    outside = axial.copy()
    outside[2, 3] = -100.0
    assert slice_number(outside, ras_to_ijk, (64, 64, 30)) is None


def test_colour_bar_is_the_colour_maps_own_gradient():
    from matplotlib import colormaps

    from TACEResponseLib.frontend.web.viewer import colormap_gradient

    gradient = colormap_gradient("viridis", stops=3)
    low, high = (tuple(int(v * 255) for v in colormaps["viridis"](x)[:3]) for x in (0.0, 1.0))
    assert gradient.startswith("linear-gradient(to top, ") and f"rgb{low} 0%".replace(" ", "") in gradient.replace(" ", "")
    assert f"rgb{high} 100%".replace(" ", "") in gradient.replace(" ", "")


# --- the warm-up --------------------------------------------------------------------------------------
def test_warm_up_request_matches_the_models_phases_and_valid_clinical_values(tmp_path):
    from TACEResponseLib.frontend.panel import collect_inputs
    from TACEResponseLib.frontend.panel.models import model_choices, nomogram_after_model_change
    from TACEResponseLib.frontend.web.prewarm import warm_up_request, warm_up_value
    from TACEResponseLib.imaging.segmentation import read_segmentation
    from TACEResponseLib.imaging.volume_io import read_volume

    model = model_choices()[0].model
    inputs = collect_inputs(model=model, nomogram=nomogram_after_model_change(model, None))
    request = warm_up_request(inputs.card, inputs.model, inputs.nomogram, inputs.survival_phases,
                              inputs.clinical_fields, tmp_path, "cpu")
    assert [p.name.split("_")[-1].split(".")[0] for p in request.image_paths] == inputs.phase_names
    assert sorted(request.survival_images) == sorted(set(inputs.survival_phases) - set(inputs.phase_names))
    for item in inputs.clinical_fields:  # every value is one Predict would accept
        item.check(request.clinical[item.name])
        if item.training_range and not item.levels:
            assert item.training_range[0] <= float(request.clinical[item.name]) <= item.training_range[1]
    mask = read_segmentation(request.segmentation_path).mask(request.segment)
    assert np.count_nonzero(mask.array) > 100, "the phantom has a tumour to predict"
    assert read_volume(request.image_paths[0]).shape_kji == (64, 96, 96)
    assert "--clinical" in request.cli_arguments("{output}")
    assert warm_up_value(ClinicalField("x", minimum=0.0, maximum=None)) == 1.0
    assert warm_up_value(ClinicalField("y", levels={"A": 0.0, "B": 1.0, "C": 2.0}, training_range=(1.0, 2.0))) == "B"
