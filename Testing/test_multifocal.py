"""Several tumours per case on SYNTHETIC phantoms: rows for every island, the patient rule, the
island options, warnings and failures that leave no trace, batch rows and resume by content."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from TACEResponseLib.cli import main
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.phantoms import make_cohort, make_phantom
from TACEResponseLib.imaging.segmentation import Segmentation
from TACEResponseLib.imaging.tumours import IslandRule, patient_tumours, tumour_rois
from TACEResponseLib.imaging.volume_io import write_volume
from TACEResponseLib.prediction.predictor import Predictor, patient_prediction


@pytest.fixture(scope="module")
def multifocal():
    """One segment: the main tumour and its PD satellites (islands), plus a one-voxel speck."""
    case = make_phantom("PD", shape_kji=(48, 96, 96), seed=7, satellites_in_segment=True)
    mask = case.segmentation.mask(case.tumours[0].segment_id).array > 0
    speck = np.zeros_like(mask)
    speck[2, 5, 5] = True
    segmentation = Segmentation.from_masks(case.reference, {"Tumour": mask | speck})
    return case, segmentation


def test_every_island_gets_a_row_and_small_ones_say_why(random_bundle, multifocal):
    case, segmentation = multifocal
    result = Predictor(random_bundle, device="cpu").predict([case.phases["arterial"]], segmentation)
    rois = tumour_rois(segmentation, case.reference)
    assert len(result.tumours) + len(result.not_assessable) == len(rois) >= 3
    speck = [t for t in result.not_assessable if t.reason == "below_min_volume"]
    voxel_ml = float(np.prod(case.reference.spacing)) / 1000
    assert len(speck) == 1 and speck[0].volume_ml == pytest.approx(voxel_ml)
    assert "below the minimum tumour volume of 0.05 ml" in speck[0].detail
    assert speck[0].island == len(rois)  # numbered by size: the speck is the last
    whole = Predictor(random_bundle, device="cpu", islands=IslandRule(split=False)).predict(
        [case.phases["arterial"]], segmentation)
    assert len(whole.tumours) == 1 and not whole.not_assessable and whole.tumours[0].island is None


def test_patient_rules(random_bundle, multifocal):
    case, segmentation = multifocal
    result = Predictor(random_bundle, device="cpu").predict([case.phases["arterial"]], segmentation)
    tumours = result.tumours
    largest = sorted(tumours, key=lambda t: -t.volume_ml)[:2]
    assert result.patient.tumours == [t.label for t in largest] and result.patient.rule == "target_lesions"
    pooled = np.concatenate([t.patch_probabilities for t in largest]).mean(axis=0)
    np.testing.assert_allclose(result.patient.probabilities, pooled, atol=1e-12)
    weighted = patient_prediction(tumours, "volume_weighted", [0, 1])
    volumes = np.array([t.volume_ml for t in tumours])
    expected = (volumes[:, None] * np.array([t.probabilities for t in tumours])).sum(0) / volumes.sum()
    np.testing.assert_allclose(weighted.probabilities, expected, atol=1e-12)
    assert weighted.objective_response_probability == pytest.approx(expected[:2].sum())
    assert patient_tumours([1.0, 5.0, 3.0, 5.0]) == [1, 3]
    with pytest.raises(InputError, match="patient rule"):
        patient_tumours([1.0], "median")


def test_no_assessable_tumour_lists_every_reason(random_bundle, axial_case):
    mask = np.zeros(axial_case.reference.shape_kji, bool)
    mask[30, 40:42, 40:42] = True
    mask[10, 60:63, 10:13] = True
    segmentation = Segmentation.from_masks(axial_case.reference, {"Tumour": mask})
    with pytest.raises(InputError) as error:
        Predictor(random_bundle, device="cpu", islands=IslandRule(min_island_ml=0.0)).predict(
            [axial_case.phases["arterial"]], segmentation, case_id="c9")
    message = str(error.value)
    assert message.startswith("case c9: no tumour can be assessed (2 tumour(s))")
    assert "Tumour #1: the largest square inside the ROI is 4.5 mm" in message and "Tumour #2:" in message


def test_ct_model_given_a_non_hu_image_warns(random_bundle, axial_case):
    image = axial_case.phases["arterial"]
    mr_like = image.with_array((image.array.astype(np.float32) + 1100.0) / 8.0)  # 0…~400, no air or fat
    result = Predictor(random_bundle, device="cpu").predict([mr_like], axial_case.segmentation)
    assert len(result.warnings) == 1 and "do not look like CT Hounsfield units" in result.warnings[0]
    plain = Predictor(random_bundle, device="cpu").predict([image], axial_case.segmentation)
    assert plain.warnings == []


def test_phase_constant_inside_the_tumour_or_outside_its_field_of_view(tmp_path):
    from conftest import make_random_bundle

    bundle = make_random_bundle(tmp_path / "two", inputs=("arterial", "portal"))
    case = make_phantom("SD", shape_kji=(40, 80, 80), seed=2, phases=["arterial", "portal"])
    arterial, portal = case.phases["arterial"], case.phases["portal"]
    mask = case.segmentation.mask(case.tumours[0].segment_id).array > 0
    flat = portal.array.copy()
    flat[mask] = 100
    result_error = None
    try:
        Predictor(bundle, device="cpu").predict([arterial, portal.with_array(flat)], case.segmentation)
    except InputError as exc:
        result_error = str(exc)
    assert result_error and "phase 'portal' is constant inside the tumour (every voxel 100)" in result_error
    shifted = Volume(portal.array, portal.ijk_to_ras.copy(), "portal")
    centre = np.argwhere(mask).mean(axis=0)  # move the portal grid so that it ends inside the tumour
    shifted.ijk_to_ras[:3, 3] += portal.ijk_to_ras[:3, :3] @ np.array([centre[2] + 2, 0, 0])
    with pytest.raises(InputError, match="field of view of phase 'portal'"):
        Predictor(bundle, device="cpu").predict([arterial, shifted], case.segmentation)


def test_failed_predict_leaves_the_previous_result_and_result_is_finite(random_bundle, axial_case, tmp_path, capsys):
    paths = axial_case.write(tmp_path / "case")
    out = tmp_path / "out"
    args = ["predict", "--image", str(paths["phases"]["arterial"]), "--segmentation", str(paths["segmentation"]),
            "--bundle", str(random_bundle.path), "--output", str(out), "--device", "cpu"]
    assert main(args) == 0
    text = (out / "result.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    result = json.loads(text)
    assert result["inputs_sha256"] and result["patient"]["tumours"]
    heat = (out / "heatmap.nrrd").read_bytes()
    blank = tmp_path / "blank.nrrd"
    write_volume(axial_case.reference.with_array(np.zeros(axial_case.reference.shape_kji, np.int16)), blank)
    assert main(args[:2] + [str(blank)] + args[3:]) == 2
    assert "blank" in capsys.readouterr().err
    assert (out / "result.json").read_text() == text and (out / "heatmap.nrrd").read_bytes() == heat
    assert sorted(p.name for p in out.iterdir()) == ["heatmap.nrrd", "result.json"]


def test_batch_rows_per_tumour_and_resume_keyed_on_content(random_bundle, tmp_path):
    manifest = make_cohort(2, tmp_path / "cohort", shape_kji=(36, 64, 64), seed=71, tumour_radius_mm=(8.0, 11.0), classes=("PD",),
                           satellites_in_segment=True)
    out = tmp_path / "out"
    base = ["batch", "--manifest", str(manifest), "--bundle", str(random_bundle.path), "--output", str(out),
            "--device", "cpu", "--no-progress"]
    assert main(base + ["--rows", "tumour"]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("cases/*/result.json")}
    assert len(rows) == sum(len(r["tumours"]) + len(r["not_assessable"]) for r in results.values()) > 2
    assert {r["patient_target"] for r in rows} == {"yes", "no"} or all(r["patient_target"] == "yes" for r in rows)
    first = next(iter(csv.DictReader(open(manifest))))
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("cases/*/result.json")}
    assert main(base) == 0  # nothing changed: nothing predicted again; one row per case now
    assert {p: p.stat().st_mtime_ns for p in out.glob("cases/*/result.json")} == stamp
    case_rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(case_rows) == 2 and all(r["patient_tumours"] for r in case_rows)
    image = manifest.parent / first["arterial"]
    volume_bytes = bytearray(image.read_bytes())
    volume_bytes[-1] ^= 0x01  # the input changed: its case must be predicted again, the other kept
    image.write_bytes(bytes(volume_bytes))
    assert main(base) == 0
    changed = {p for p in out.glob("cases/*/result.json") if p.stat().st_mtime_ns != stamp[p]}
    assert [p.parent.name for p in changed] == [first["case_id"]]


def test_training_records_the_tumour_rule_and_prediction_uses_it(tmp_path):
    from TACEResponseLib.imaging.patches import PatchSpec
    from TACEResponseLib.training.config import TrainingConfig
    from TACEResponseLib.training.train import train

    manifest = make_cohort(4, tmp_path / "cohort", shape_kji=(36, 64, 64), seed=80, tumour_radius_mm=(8.0, 11.0))
    config = TrainingConfig(architecture="resnet18", patch_spec=PatchSpec(size=32), epochs=1, batch_size=4,
                            validation_fraction=0.0, balance=False, augment=False, n_bootstrap=0, seed=1,
                            islands=IslandRule(split=False, min_island_ml=0.2), patient_rule="volume_weighted")
    result = train(manifest, tmp_path / "bundle", config, progress_bar=False)
    assert result.bundle.card.tumour_rule == {"split": False, "min_island_ml": 0.2, "patient_rule": "volume_weighted"}
    predictor = Predictor(result.bundle.path, device="cpu")
    assert predictor.islands == IslandRule(split=False, min_island_ml=0.2) and predictor.patient_rule == "volume_weighted"
    assert Predictor(result.bundle.path, device="cpu", patient_rule="target_lesions").patient_rule == "target_lesions"


def test_table_panel_and_export_show_not_assessable_rows(random_bundle, multifocal, mrml, tmp_path):
    from TACEResponseLib.frontend import panel
    from TACEResponseLib.frontend.mrml import show_prediction

    case, segmentation = multifocal
    result = Predictor(random_bundle, device="cpu").predict([case.phases["arterial"]], segmentation)
    nodes = show_prediction(mrml.scene, result, result.heatmap)
    table = nodes.table_node.GetTable()
    n_rows = len(result.tumours) + len(result.not_assessable)
    assert table.GetNumberOfRows() == n_rows
    last = n_rows - 1
    assert table.GetColumnByName("Predicted").GetValue(last) == "not assessable"
    assert table.GetColumnByName("Reason").GetValue(last) == result.not_assessable[-1].detail
    assert np.isnan(table.GetColumnByName("P(CR)").GetValue(last))
    used = [table.GetColumnByName("Tumour").GetValue(r) for r in range(n_rows)
            if table.GetColumnByName("Patient answer").GetValue(r) == "yes"]
    assert used == result.patient.tumours

    view = panel.result_view(result)
    assert view.patient_text.startswith(f"Patient: {result.patient.predicted_class}")
    assert ", ".join(result.patient.tumours) in view.patient_text and view.patient_text in view.detail
    assert view.not_assessable == [f"{t.label}: {t.detail}" for t in result.not_assessable]

    # the panel's table: a row per predicted tumour, the not-assessable ones folded into one greyed row
    folded = panel.result_table_rows(result)
    assert [r.kind for r in folded] == ["patient"] + ["tumour"] * len(result.tumours) + ["summary"]
    assert folded[-1].cells[0] == f"{len(result.not_assessable)} not assessable" and folded[-1].greyed
    unfolded = panel.result_table_rows(result, expanded=True)[len(folded):]
    assert [(r.cells[0], r.greyed) for r in unfolded] == [(t.label, True) for t in result.not_assessable]

    rows = panel.result_rows(result)
    assert rows[0]["tumour"].startswith("patient (") and rows[-1]["predicted"] == "not assessable"
    assert len(rows) == 1 + n_rows
    # every tumour row has its own volume; the patient row claims none (not a 0.0 ml tumour)
    assert "volume_ml" not in rows[0]
    assert [r["volume_ml"] for r in rows[1:]] == pytest.approx(
        [t.volume_ml for t in result.tumours] + [t.volume_ml for t in result.not_assessable], abs=1e-3)
