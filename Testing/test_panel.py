"""The panel's Qt-free logic: state machine, enabled controls, Apply blockers on a real phantom
scene, clinical form, results text, report export, dependency check and install plan."""

from __future__ import annotations

import sys
import csv
import importlib.util
import math
import os
import types
from pathlib import Path

import numpy as np
import pytest

from TACEResponseLib.frontend import panel, selftest
from TACEResponseLib.survival.model import nomogram_figure
from TACEResponseLib.frontend.panel.state import PanelEvent, PanelState
from TACEResponseLib.prediction.results import PredictionResult, TumourPrediction

REPO = Path(__file__).resolve().parents[1]

# --- state machine --------------------------------------------------------------------------------
# the specification: (state, event) -> next state; every other pair is refused
EXPECTED = {
    ("idle", "start"): "running", ("idle", "input_changed"): "idle",
    ("running", "succeed"): "done", ("running", "fail"): "failed", ("running", "cancel"): "cancelled",
    ("running", "input_changed"): "running",
    ("done", "start"): "running", ("failed", "start"): "running", ("cancelled", "start"): "running",
    ("done", "input_changed"): "idle", ("failed", "input_changed"): "idle", ("cancelled", "input_changed"): "idle",
}


@pytest.mark.parametrize("state", list(PanelState))
@pytest.mark.parametrize("event", list(PanelEvent))
def test_every_transition_follows_the_specification(state, event):
    machine = panel.PanelStateMachine(state)
    expected = EXPECTED.get((state.value, event.value))
    if expected is None:
        with pytest.raises(panel.InvalidTransition):
            machine.handle(event)
        assert machine.state is state
    else:
        assert machine.handle(event).value == expected


def test_a_typical_session():
    machine = panel.PanelStateMachine()
    machine.start()
    machine.fail("Prediction failed: segment is empty")
    assert machine.message.endswith("segment is empty")
    machine.input_changed()
    assert machine.state is PanelState.IDLE and machine.message == ""
    machine.start()
    machine.cancel()
    machine.start()
    machine.succeed("Done.")
    assert (machine.state, machine.message) == (PanelState.DONE, "Done.")


class FakeWidget:
    def __init__(self):
        self.enabled, self.visible, self.text = None, None, None

    def setEnabled(self, value):
        self.enabled = bool(value)

    def setVisible(self, value):
        self.visible = bool(value)

    def setText(self, value):
        self.text = value


def _fake_ui():
    names = {n for group in panel.CONTROL_GROUPS.values() for n in group}
    return types.SimpleNamespace(**{n: FakeWidget() for n in names | {"progressFrame", "stageLabel", "applyBlockersLabel",
                                                                      "staleResultLabel"}})


@pytest.mark.parametrize("state", list(PanelState))
@pytest.mark.parametrize("has_result", [False, True])
@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("stale", [False, True])
def test_enabled_controls_per_state(state, has_result, blocked, stale):
    blockers = ["Choose a segment."] if blocked else []
    ui, inputs = _fake_ui(), [FakeWidget(), FakeWidget()]
    panel.apply_control_states(ui, panel.control_states(state, has_result=has_result, blockers=blockers, stale=stale),
                               inputs)
    running = state is PanelState.RUNNING
    for group, names in panel.CONTROL_GROUPS.items():
        expected = {"apply": not running and not blocked, "cancel": running,
                    "results": has_result and not running,
                    "result_values": has_result and not running and not stale}.get(group, not running)
        for name in names:
            assert getattr(ui, name).enabled is expected, (group, name)
    assert all(w.enabled is not running for w in inputs)
    assert ui.progressFrame.visible is running and ui.stageLabel.visible is running
    assert ui.applyBlockersLabel.visible is (blocked and not running)
    shown = has_result and stale and not running
    assert ui.staleResultLabel.visible is shown and (ui.staleResultLabel.text == panel.STALE_RESULT_TEXT) is shown


def test_every_engine_stage_has_a_label():
    from TACEResponseLib.prediction.predictor import STAGES

    for stage in STAGES:
        assert stage in panel.STAGE_LABELS, stage
    assert panel.stage_text("forward", 0.454).endswith("45 %")
    assert panel.stage_text(None, None).endswith("0 %")


# --- Apply blockers and input files on a real phantom scene (shared with Slicer's self-test) ------
def test_apply_blockers_on_a_phantom_scene(mrml):
    selftest.check_apply_blockers(mrml.scene)


def test_input_files_keep_voxels_and_oblique_geometry(mrml, tmp_path):
    selftest.check_case_inputs_round_trip(mrml.scene, tmp_path)


def test_blocked_inputs_are_refused_when_writing(mrml, tmp_path):
    nodes = selftest.load_phantom_nodes(mrml.scene)
    inputs = selftest.complete_inputs(nodes)
    inputs.clinical_values = {"BCLC": "B"}
    with pytest.raises(panel.InputError, match="ALT"):
        panel.write_case_inputs(tmp_path, inputs)
    assert list(tmp_path.iterdir()) == []


def test_blockers_text():
    assert panel.blockers_text([]) == ""
    text = panel.blockers_text(["Choose a model.", "Choose a segment."])
    assert text.splitlines() == ["Apply is disabled:", "• Choose a model.", "• Choose a segment."]


# --- clinical form ------------------------------------------------------------------------------
def test_spinbox_has_a_not_set_value_below_the_range():
    item = panel.ClinicalField("AFP", "ng/mL", 0.0, 2000.0)
    config = panel.spinbox_config(item)
    assert config.maximum == 2000.0 and config.unset == config.minimum < 0.0
    assert config.suffix == " ng/mL" and "0–2000 ng/mL" in config.tooltip
    assert panel.spinbox_value(config, config.unset) is None
    assert panel.spinbox_value(config, 0.0) == 0.0
    assert config.single_step <= (item.maximum - item.minimum) / 50


def test_categorical_field_accepts_labels_and_codes_and_passes_labels_to_the_cli():
    item = panel.clinical_fields(None, [selftest.BCLC_FIELD])[0]
    assert item.check("C") == 2.0 and item.check(1) == 1.0
    assert item.cli_value(2) == "C" and item.cli_value("A") == "A"
    with pytest.raises(panel.InputError, match="BCLC"):
        item.check("D")


def test_numeric_cli_value_round_trips_exactly():
    item = panel.ClinicalField("ALT", "U/L", 0.0, 500.0)
    value = 1 / 3
    assert float(item.cli_value(value)) == value
    with pytest.raises(panel.InputError, match="outside"):
        item.check(math.nextafter(500.0, 1000.0))


def _display_nomogram():
    """A nomogram with made-up coefficients (display/mechanics only)."""
    from TACEResponseLib.survival.nomogram import Nomogram, NomogramVariable

    return Nomogram(name="display", variables=[
        NomogramVariable("ALT", 0.01, 60.0, 5.0, 400.0),
        NomogramVariable("BCLC", 0.7, 1.0, 0.0, 2.0, levels={"A": 0.0, "B": 1.0, "C": 2.0}),
        NomogramVariable("signature", 1.2, 0.0, -2.0, 2.0)],
        points_per_lp=20.0, baseline_times=[6.0, 12.0, 24.0, 36.0], baseline_cumulative_hazard=[0.1, 0.3, 0.5, 0.7],
        risk_cutoff=0.0)


def test_nomogram_file_gives_the_form_its_clinical_variables(tmp_path):
    from TACEResponseLib.survival.model import load_survival_model

    path = _display_nomogram().save_json(tmp_path / "nomogram.json")
    model = load_survival_model(path)
    fields = panel.clinical_fields(None, panel.nomogram_fields(path))
    assert [f.name for f in fields] == model.clinical_variables == ["ALT", "BCLC"]  # the signature is computed
    for item in fields:
        spec = model.variables[item.name]
        assert item.training_range == tuple(spec.training_range)
        assert (item.minimum, item.maximum) == (spec.valid_range or (None, None))
        assert bool(item.levels) == bool(spec.levels)
        assert item.sources == ["nomogram"]
    assert "extrapolates" in panel.spinbox_config(fields[0]).tooltip
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(panel.InputError, match="broken.json"):
        panel.nomogram_fields(tmp_path / "broken.json")
    with pytest.raises(panel.InputError, match="does not exist"):
        panel.nomogram_fields(tmp_path / "missing.json")


def test_model_factor_and_nomogram_variable_of_the_same_name_merge():
    card = selftest.two_phase_card()
    nomogram = [panel.ClinicalField("ALT", "", 0.0, 10000.0, training_range=(5.0, 400.0), sources=["nomogram"]),
                selftest.BCLC_FIELD]
    fields = panel.clinical_fields(card, nomogram)
    assert [(f.name, f.sources) for f in fields] == [("ALT", ["model", "nomogram"]), ("BCLC", ["nomogram"])]
    assert (fields[0].minimum, fields[0].maximum) == (card.clinical_factors[0].minimum, card.clinical_factors[0].maximum)
    assert fields[0].training_range == (5.0, 400.0)


def test_nomogram_figure_marks_the_patient(tmp_path):
    from TACEResponseLib.survival.model import load_survival_model

    path = _display_nomogram().save_json(tmp_path / "nomogram.json")
    survival = load_survival_model(path).patient({"ALT": 80.0, "BCLC": "B", "signature": 0.4})
    png = nomogram_figure(path, survival, tmp_path / "figure.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    risk, text = panel.survival_texts(survival)
    assert survival["risk_group"].capitalize() in risk and f"{survival['total_points']:.0f} nomogram points" in risk
    for time, value in zip(survival["survival_times"], survival["survival"]):
        assert f"{time:g} months: {round(100 * value)} %" in text


def test_clinical_values_json_is_robust():
    assert panel.parse_clinical_values(panel.dump_clinical_values({"ALT": 42.0, "BCLC": "B"})) == {"ALT": 42.0, "BCLC": "B"}
    assert panel.parse_clinical_values("not json") == {} and panel.parse_clinical_values("[1]") == {}
    assert panel.parse_clinical_values(None) == {}


# --- results ------------------------------------------------------------------------------------
def display_result(survival: dict | None = None) -> PredictionResult:
    """A hand-made result (a display test, not a prediction)."""
    rng = np.random.default_rng(4)
    tumours = []
    for index in range(2):
        probabilities = rng.dirichlet(np.ones(4)).tolist()
        classes = ["CR", "PR", "SD", "PD"]
        tumours.append(TumourPrediction(
            segment_id=f"Segment_{index + 1}", segment_name=f"Tumour_{index + 1}", class_names=classes,
            probabilities=probabilities, predicted_class=classes[int(np.argmax(probabilities))],
            objective_response_probability=probabilities[0] + probabilities[1], patch_probabilities=[probabilities],
            provenance=[{"slice_axis": 0, "slice_index": 20}], volume_ml=12.5 + index))
    return PredictionResult(case_id="display test", bundle_id="display@0", bundle_sha256="0" * 64, synthetic_model=True,
                            warning="Research use only — synthetic demo model.", device="cpu", tumours=tumours,
                            timings={"total": 2.5}, survival=survival)


def test_result_view_reports_the_computed_numbers():
    survival = {"risk_group": "high", "total_points": 142.4, "survival_times": [12.0, 24.0],
                "survival": [0.81, 0.55], "time_unit": "months"}
    result = display_result(survival)
    for index, tumour in enumerate(result.tumours):
        view = panel.result_view(result, index)
        best = int(np.argmax(tumour.probabilities))
        assert view.headline == tumour.class_names[best]
        assert [b[1] for b in view.bars] == [round(100 * p) for p in tumour.probabilities]
        assert [b[2] for b in view.bars] == [i == best for i in range(4)]
        assert view.orr[1] == round(100 * (tumour.probabilities[0] + tumour.probabilities[1]))
        assert view.tumour_index == index and view.tumours == ["Tumour_1", "Tumour_2"]
    assert view.warning == result.warning
    assert "High risk" in view.risk_text and "142 nomogram points" in view.risk_text
    assert "12 months: 81 %" in view.survival_text and "24 months: 55 %" in view.survival_text
    plain = panel.result_view(display_result(None))
    assert "No nomogram" in plain.risk_text and plain.survival_text == ""


def test_export_report_writes_csv_png_and_pdf(tmp_path, axial_case):
    result = display_result({"risk_group": "low", "total_points": 80.0, "survival_times": [12.0], "survival": [0.9]})
    reference = axial_case.phases["arterial"]
    mask = axial_case.segmentation.mask(axial_case.tumours[0].segment_id)
    heatmap = reference.with_array(mask.array.astype(np.float32) * 0.8)
    for tumour in result.tumours:
        tumour.provenance = [{"slice_axis": 0, "slice_index": int(np.argmax(mask.array.sum(axis=(1, 2))))}]
    files = panel.export_report(result, tmp_path, reference=reference, heatmap=heatmap, mask=mask)
    assert sorted(f.suffix for f in files) == [".csv", ".pdf", ".png"]
    with open(files[0], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["tumour"] for r in rows] == [t.label for t in result.tumours]
    for row, tumour in zip(rows, result.tumours):
        assert [float(row[f"P({c})"]) for c in tumour.class_names] == pytest.approx(tumour.probabilities, abs=1e-6)
        assert row["risk_group"] == "low" and float(row["S(12 months)"]) == 0.9
        assert row["synthetic_model"] == "True"
    png, pdf = (next(f for f in files if f.suffix == suffix) for suffix in (".png", ".pdf"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"


# --- dependencies ---------------------------------------------------------------------------------
def test_dependency_status_sees_what_is_installed():
    assert panel.dependency_status() == [m for m in panel.REQUIRED_PACKAGES if importlib.util.find_spec(m) is None]


def test_a_missing_module_is_reported_and_planned(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("monai", "nrrd") else real(name, *a))
    missing = panel.dependency_status()
    assert missing == ["monai", "nrrd"]
    lines = panel.runtime_requirements(REPO / "runtime-requirements.txt")
    plan = panel.install_plan(missing, pytorch_utils_available=True)
    assert [(s.package, s.method) for s in plan] == [("monai", "pip"), ("pynrrd", "pip")]
    assert [s.requirement for s in plan] == [lines["monai"], lines["pynrrd"]]
    assert "monai" in panel.dependency_message(missing)


def test_torch_goes_through_pytorch_utils_when_the_extension_is_there():
    lines = panel.runtime_requirements(REPO / "runtime-requirements.txt")
    with_extension = panel.install_plan(["monai", "torch"], pytorch_utils_available=True, requirements=lines)
    assert [(s.package, s.method) for s in with_extension] == [("torch", "pytorch_utils"), ("monai", "pip")]
    assert "torch" + with_extension[0].requirement == lines["torch"], "PyTorchUtils takes the version part only"
    without = panel.install_plan(["torch"], pytorch_utils_available=False, requirements=lines)
    assert (without[0].method, without[0].requirement) == ("pip", lines["torch"])
    assert "PyTorch extension" in panel.install_summary(with_extension)


def test_pytorch_utils_detection(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "PyTorchUtils" else None)
    assert panel.pytorch_utils_available()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert not panel.pytorch_utils_available()


# --- the whole Apply path with the real CLI (random-weight bundle: mechanics, not a prediction) ----
@pytest.fixture(scope="module")
def two_phase_bundle(tmp_path_factory):
    from conftest import make_random_bundle

    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "two_phase", seed=1, inputs=("arterial", "portal"))


@pytest.mark.slow
def test_prediction_run_end_to_end_with_the_real_cli(mrml, tmp_path, two_phase_bundle):
    selftest.check_prediction_run(mrml.scene, tmp_path, str(two_phase_bundle.path))


@pytest.mark.slow
def test_cancel_of_a_real_prediction(mrml, tmp_path, two_phase_bundle):
    selftest.check_cancel_prediction_run(mrml.scene, tmp_path, str(two_phase_bundle.path))


@pytest.mark.slow
def test_cli_user_error_reaches_the_panel(mrml, tmp_path):
    selftest.check_prediction_run_reports_cli_error(mrml.scene, tmp_path)


@pytest.mark.slow
def test_self_test_prediction_body_with_the_bundled_demo_model(mrml, tmp_path):
    """TACEResponseTest.test_prediction's body, on slicer-core with real MRML nodes."""
    model = selftest.check_demo_model_prediction(mrml.scene, tmp_path, python=sys.executable)
    assert model == "TACEResponse-demo-synthetic-ct"


@pytest.mark.slow
def test_default_flow_with_the_survival_model_fills_the_plot_view(mrml, tmp_path):
    """TACEResponseTest.test_prediction_with_survival's body: the demo model with its registered survival
    model gives a survival chart, shown by the module's own plot view node (not in Slicer's main layout)."""
    selftest.check_demo_prediction_with_survival(mrml.scene, tmp_path, python=sys.executable)


@pytest.mark.slow
def test_prediction_session_is_the_logics_explicit_process(mrml, tmp_path):
    """What TACEResponseLogic.process(referenceVolume, segmentationNode, segmentId, …) runs, on slicer-core."""
    from TACEResponseLib.core.errors import InputError

    model = panel.model_choices()[0].model
    nodes = selftest.load_phantom_nodes(mrml.scene, modality=panel.load_card(model).inputs[0].modality,
                                        phases=[p.name for p in panel.load_card(model).inputs])
    session = panel.PredictionSession(mrml.scene, python=sys.executable, work_root=tmp_path)
    inputs = panel.collect_inputs(nodes.reference, {}, nodes.segmentation, nodes.segment_id, model)
    result = session.process(inputs, "cpu", timeout=300)
    table = session.output_nodes.table_node
    assert table.GetTable().GetNumberOfRows() == len(result.tumours) and result.survival is None
    assert panel.result_view(result).headline == result.tumours[0].predicted_class
    # the run's files are removed; the session keeps the volumes it wrote (and its worker) for the next Apply
    assert list(tmp_path.iterdir()) == [session.files.folder]
    written = {path: path.stat().st_mtime_ns for path in session.files.folder.iterdir()}
    worker = session.worker.pid
    again = session.process(inputs, "cpu", timeout=300, output_nodes=session.output_nodes)
    assert session.output_nodes.table_node is table and again.tumours[0].predicted_class == result.tumours[0].predicted_class
    assert session.worker.pid == worker and session.worker.starts == 1, "the second Apply reuses the warm worker"
    assert {path: path.stat().st_mtime_ns for path in session.files.folder.iterdir()} == written, \
        "an unchanged volume is not written again"
    assert again.tumours[0].probabilities == result.tumours[0].probabilities
    session.close()
    assert list(tmp_path.iterdir()) == [] and session.worker is None
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    with pytest.raises(InputError, match="Choose a segmentation"):
        session.process(panel.collect_inputs(nodes.reference, {}, None, "", model), "cpu")
    with pytest.raises(InputError, match="no-such-model"):
        session.process(panel.collect_inputs(nodes.reference, {}, nodes.segmentation, nodes.segment_id,
                                             "no-such-model"), "cpu")


def test_island_settings_reach_the_background_prediction():
    """The panel's Advanced island settings become the CLI's options; unset, the model's rule applies."""
    from TACEResponseLib.frontend.panel.run import PredictionRequest

    plain = PredictionRequest([Path("a.nrrd")], Path("t.seg.nrrd"), "Segment_1", "demo")
    arguments = plain.cli_arguments("OUT")
    assert "--min-island-ml" not in arguments and "--no-split-islands" not in arguments
    assert "--patient-rule" not in arguments
    merged = PredictionRequest([Path("a.nrrd")], Path("t.seg.nrrd"), "Segment_1", "demo",
                               islands=panel.IslandRule(split=False, min_island_ml=0.5), patient_rule="volume_weighted")
    arguments = merged.cli_arguments("OUT")
    assert arguments[arguments.index("--min-island-ml") + 1] == "0.5"
    assert "--no-split-islands" in arguments
    assert arguments[arguments.index("--patient-rule") + 1] == "volume-weighted"
    assert arguments[-1] == "--progress"
    from TACEResponseLib.cli import build_parser

    parsed = build_parser().parse_args([*arguments[:-1], "--progress"])
    assert parsed.no_split_islands and parsed.min_island_ml == 0.5 and parsed.patient_rule == "volume-weighted"


def test_test_time_views_reach_the_background_prediction():
    """The Advanced section's test-time views become ``--tta``; unset, the CLI's default applies; out of range
    is refused before anything runs."""
    from TACEResponseLib.cli import build_parser
    from TACEResponseLib.core.errors import InputError
    from TACEResponseLib.frontend.panel.run import PredictionRequest

    plain = PredictionRequest([Path("a.nrrd")], Path("t.seg.nrrd"), "Segment_1", "demo")
    assert "--tta" not in plain.cli_arguments("OUT")
    off = PredictionRequest([Path("a.nrrd")], Path("t.seg.nrrd"), "Segment_1", "demo", tta=1)
    arguments = off.cli_arguments("OUT")
    assert arguments[arguments.index("--tta") + 1] == "1" and arguments[-1] == "--progress"
    assert build_parser().parse_args(arguments).tta == 1
    inputs = panel.collect_inputs(None, {}, None, "", "", tta=3)
    assert inputs.tta == 3
    with pytest.raises(InputError, match="test-time augmentation views must be 1"):
        PredictionRequest([Path("a.nrrd")], Path("t.seg.nrrd"), "Segment_1", "demo", tta=9).cli_arguments("OUT")
