"""Test bodies shared by the Slicer self-test (``TACEResponseTest``) and pytest on slicer-core.

Each ``check_*`` function takes the MRML scene to work in (``slicer.mrmlScene`` inside Slicer,
a headless scene from :func:`TACEResponseLib.frontend.mrml.create_headless_scene` under pytest) and
raises AssertionError with a message when an outcome is wrong. Data are SYNTHETIC phantoms
(:mod:`.phantoms`); expectations come from the phantom's own ground truth or from values the
code computed, never from numbers copied out of the code under test.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from TACEResponseLib.frontend import panel
from TACEResponseLib.imaging.patches import PatchSpec
from TACEResponseLib.networks.bundle import BundleCard, PhaseInput
from TACEResponseLib.networks.clinical import ClinicalFactor

logger = logging.getLogger(__name__)


#: import names each self-test of ``TACEResponseTest`` needs beyond what a stock 3D Slicer ships
#: (numpy, scipy, SimpleITK, VTK, Qt): the module skips a test with a message when they are missing,
#: so ``py_TACEResponse`` passes on a Slicer without the prediction's packages
#: (Testing/test_runtime_requirements.py runs the dependency-free bodies with those packages blocked).
SELF_TEST_NEEDS: dict[str, tuple[str, ...]] = {
    "test_apply_blockers": (),
    "test_case_inputs_round_trip": ("slicerio", "nrrd"),
    "test_survival_phase_inputs": ("pandas", "slicerio", "nrrd"),
    "test_cancel_stops_process_tree": (),
    "test_cli_error_is_reported": ("torch", "monai", "pandas", "matplotlib", "slicerio", "nrrd"),
    "test_parameter_node_round_trip": (),
    "test_segment_choice": (),
    "test_prediction": ("torch", "monai", "pandas", "matplotlib", "slicerio", "nrrd"),
    "test_prediction_with_survival": ("torch", "monai", "pandas", "matplotlib", "slicerio", "nrrd"),
}


def missing_for_self_test(name: str) -> list[str]:
    """Packages a self-test needs that are not installed (empty: run it)."""
    return panel.dependency_status(SELF_TEST_NEEDS.get(name, tuple(panel.REQUIRED_PACKAGES)))


OUTPUT_CLASSES = ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode", "vtkMRMLPlotChartNode",
                  "vtkMRMLPlotSeriesNode")


def data_node_ids(scene) -> set[str]:
    """IDs of the nodes a prediction could leave behind (volumes, segmentations, tables, plots)."""
    return {scene.GetNthNodeByClass(n, cls).GetID() for cls in OUTPUT_CLASSES
            for n in range(scene.GetNumberOfNodesByClass(cls))}


def check(condition: Any, message: str) -> None:
    """``assert`` that survives ``python -O`` and reads well in Slicer's test log."""
    if not condition:
        raise AssertionError(message)


@dataclass
class PhantomNodes:
    """A SYNTHETIC phantom case loaded into a scene: one volume node per phase, the segmentation node."""

    case: Any
    reference: Any
    phases: dict[str, Any]
    segmentation: Any
    segment_id: str


def load_phantom_nodes(scene, response: str = "PR", shape_kji: tuple[int, int, int] = (40, 64, 64),
                       spacing_ijk: tuple[float, float, float] = (1.5, 1.5, 2.0),
                       rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0), seed: int = 3,
                       modality: str = "CT", phases: list[str] | None = None) -> PhantomNodes:
    """Make a phantom and put its phases and tumour segmentation into ``scene`` as MRML nodes."""
    from TACEResponseLib.frontend.mrml import segmentation_to_node, volume_to_node
    from TACEResponseLib.imaging.phantoms import make_phantom

    case = make_phantom(response, modality=modality, shape_kji=shape_kji, spacing_ijk=spacing_ijk,
                        rotation_deg=rotation_deg, seed=seed, phases=phases)
    phases = {name: volume_to_node(volume, scene, f"{case.case_id}_{name}") for name, volume in case.phases.items()}
    segmentation = segmentation_to_node(case.segmentation, scene, f"{case.case_id} tumour")
    return PhantomNodes(case, next(iter(phases.values())), phases, segmentation, case.segmentation.segments[0].id)


def two_phase_card(phases: tuple[str, ...] = ("arterial", "portal")) -> BundleCard:
    """A model card (no weights) needing two CT phases and one clinical factor, for input checks."""
    return BundleCard(name="input-check", version="0", architecture="resnet18", class_names=["CR", "PR", "SD", "PD"],
                      inputs=[PhaseInput(p) for p in phases], patch_spec=PatchSpec(size=64),
                      clinical_factors=[ClinicalFactor("ALT", "U/L", 0.0, 500.0)],
                      training_data={"synthetic": True})


BCLC_FIELD = panel.ClinicalField("BCLC", levels={"A": 0.0, "B": 1.0, "C": 2.0}, label="BCLC stage",
                                 training_range=(0.0, 2.0), sources=["nomogram"])


def complete_inputs(nodes: PhantomNodes, card: BundleCard | None = None) -> panel.PanelInputs:
    """Inputs with every requirement of ``card`` met from the phantom's nodes."""
    card = card or two_phase_card(tuple(nodes.phases))
    fields = panel.clinical_fields(card, [BCLC_FIELD])
    return panel.PanelInputs(
        reference=nodes.phases[card.inputs[0].name],
        phase_volumes={p.name: nodes.phases[p.name] for p in card.inputs[1:]},
        segmentation=nodes.segmentation, segment_id=nodes.segment_id, model="input-check", card=card,
        clinical_fields=fields, clinical_values={"ALT": 42.0, "BCLC": "B"})


def check_apply_blockers(scene) -> None:
    """Every reason Apply is blocked is reported alone, naming the input, on a real phantom scene."""
    nodes = load_phantom_nodes(scene)
    good = complete_inputs(nodes)
    check(panel.apply_blockers(good) == [], f"complete inputs should not block Apply: {panel.apply_blockers(good)}")
    check([f.name for f in good.clinical_fields] == ["ALT", "BCLC"],
          f"form fields = model factors, then nomogram variables; got {[f.name for f in good.clinical_fields]}")

    empty_id = nodes.segmentation.GetSegmentation().AddEmptySegment("selftest_empty", "Not drawn yet")
    other_phase = good.phase_names[1]
    replace = dataclasses.replace
    cases = {
        "no model": (replace(good, model=""), "model"),
        "no reference": (replace(good, reference=None), good.phase_names[0]),
        "phase missing": (replace(good, phase_volumes={}), other_phase),
        "same volume twice": (replace(good, phase_volumes={other_phase: good.reference}), good.reference.GetName()),
        "no segmentation": (replace(good, segmentation=None, segment_id=""), "segmentation"),
        "no segment": (replace(good, segment_id=""), nodes.segmentation.GetName()),
        "empty segment": (replace(good, segment_id=empty_id,
                                  segment_problem=panel.segment_problem(nodes.segmentation, empty_id)), "Not drawn yet"),
        "clinical missing": (replace(good, clinical_values={"BCLC": "B"}), "ALT"),
        "clinical out of range": (replace(good, clinical_values={"ALT": 900.0, "BCLC": "B"}), "900"),
        "clinical not a number": (replace(good, clinical_values={"ALT": "high", "BCLC": "B"}), "high"),
        "unknown category": (replace(good, clinical_values={"ALT": 42.0, "BCLC": "D"}), "BCLC"),
        "missing packages": (replace(good, missing_packages=["monai"]), "monai"),
    }
    for label, (inputs, named) in cases.items():
        blockers = panel.apply_blockers(inputs)
        check(len(blockers) == 1, f"{label}: expected exactly one blocker, got {blockers}")
        check(named in blockers[0], f"{label}: the blocker should name {named!r}: {blockers[0]!r}")
    check(panel.segment_problem(nodes.segmentation, nodes.segment_id) is None,
          "the phantom's drawn tumour segment must not be reported empty")
    nodes.segmentation.GetSegmentation().RemoveSegment(empty_id)


def check_case_inputs_round_trip(scene, folder: str | Path) -> None:
    """Files written for the background process hold the nodes' voxels and world geometry exactly."""
    from TACEResponseLib.imaging.segmentation import read_segmentation
    from TACEResponseLib.imaging.volume_io import read_volume

    nodes = load_phantom_nodes(scene, "SD", shape_kji=(36, 56, 48), spacing_ijk=(0.9, 1.3, 2.5),
                               rotation_deg=(12.0, -9.0, 27.0), seed=11)  # oblique, anisotropic
    inputs = complete_inputs(nodes)
    request = panel.write_case_inputs(folder, inputs, device="cpu")
    check(len(request.image_paths) == len(inputs.phase_names), f"one file per phase: {request.image_paths}")
    for name, path in zip(inputs.phase_names, request.image_paths):
        expected = nodes.case.phases[name]
        written = read_volume(path)
        check(np.array_equal(written.array, expected.array), f"{name}: voxels changed on the way to {path}")
        check(np.allclose(written.ijk_to_ras, expected.ijk_to_ras, atol=1e-6),
              f"{name}: geometry changed on the way to {path}:\n{written.ijk_to_ras}\n!=\n{expected.ijk_to_ras}")
    segmentation = read_segmentation(request.segmentation_path)  # cropped to the segment, as Slicer writes it
    from TACEResponseLib.imaging.segmentation import segment_mask_on

    reference = nodes.case.phases[inputs.phase_names[0]]
    mask = segment_mask_on(segmentation, nodes.segment_id, reference)
    expected_mask = nodes.case.segmentation.mask(nodes.segment_id)
    check(np.array_equal(mask.array, expected_mask.array), "the tumour mask changed on the way to the .seg.nrrd")
    check(segmentation.layers[0].size < expected_mask.array.size, "the .seg.nrrd should hold the segment's box only")
    arguments = request.cli_arguments("OUT")
    images = [arguments[i + 1] for i, a in enumerate(arguments) if a == "--image"]
    check(images == [str(p) for p in request.image_paths], f"images must reach the CLI in the model's order: {images}")
    check(f"ALT={42.0!r}" in arguments and "BCLC=B" in arguments, f"clinical values missing in {arguments}")
    check(arguments[-1] == "--progress", "the CLI must be asked for JSON progress lines")


def check_cancel_stops_process_tree(folder: str | Path, python: str | None = None) -> None:
    """Cancel stops a running background process and its child within 2 s and leaves no work folder."""
    import sys

    from TACEResponseLib.frontend.process import BackgroundRun, RunState

    folder = Path(folder)
    marker = folder / "grandchild_was_here.txt"
    child = ("import subprocess, sys, time\n"
             "print('{\"progress\": 0.1, \"stage\": \"reading\"}', flush=True)\n"
             "subprocess.Popen([sys.executable, '-c', 'import sys, time; time.sleep(1.5); open(sys.argv[1], \"w\").close()', "
             f"{str(marker)!r}])\n"
             "open(sys.argv[1] + '/partial.txt', 'w').close()\n"
             "time.sleep(60)\n")
    run = BackgroundRun([python or sys.executable, "-c", child, "{output}"], work_root=folder).start()
    deadline = time.monotonic() + 20
    while run.poll().stage != "reading" and time.monotonic() < deadline:
        time.sleep(0.02)
    check(run.stage == "reading", f"the process never reported progress (state {run.state.value}, log {list(run.log)})")
    started = time.monotonic()
    run.cancel()
    took = time.monotonic() - started
    logger.info("cancel took %.2f s", took)
    check(run.state is RunState.CANCELLED, f"state after cancel: {run.state.value}")
    check(took < 2.0, f"cancel took {took:.2f} s")
    check(not run.work_dir.exists(), f"cancel left {run.work_dir}")
    time.sleep(max(0.0, 1.8 - (time.monotonic() - started)))
    check(not marker.exists(), "the grandchild survived the cancel and wrote its file")


def check_prediction_run_reports_cli_error(scene, folder: str | Path, python: str | None = None) -> None:
    """A user error inside the CLI (unknown model) comes back as its one-line message; nothing is left."""
    nodes = load_phantom_nodes(scene)
    before = data_node_ids(scene)
    inputs = panel.PanelInputs(reference=nodes.reference, segmentation=nodes.segmentation, segment_id=nodes.segment_id,
                               model="no-such-model-xyz")
    run = panel.PredictionRun(inputs, device="cpu", python=python, work_root=folder).start()
    update = run.wait(timeout=120)
    check(update.state.value == "failed", f"expected a failed run, got {update.state.value}: {list(run.run.log)[-5:]}")
    check("no-such-model-xyz" in (update.error or ""), f"the message should name the model: {update.error!r}")
    check("Traceback" not in (update.error or ""), f"a user error must not show a traceback: {update.error!r}")
    check(not run.work_dir.exists(), f"a failed run left {run.work_dir}")
    check(data_node_ids(scene) == before, f"a failed run added nodes: {data_node_ids(scene) - before}")


def inputs_for_model(scene, model: str) -> panel.PanelInputs:
    """A phantom with the bundle's modality and phases in ``scene``, and complete inputs for the bundle."""
    card = panel.load_card(model)
    nodes = load_phantom_nodes(scene, modality=card.inputs[0].modality, phases=[p.name for p in card.inputs])
    inputs = panel.PanelInputs(reference=nodes.phases[card.inputs[0].name],
                               phase_volumes={p.name: nodes.phases[p.name] for p in card.inputs[1:]},
                               segmentation=nodes.segmentation, segment_id=nodes.segment_id, model=str(model), card=card)
    check(panel.apply_blockers(inputs) == [], f"inputs should be complete: {panel.apply_blockers(inputs)}")
    return inputs


def check_cancel_prediction_run(scene, folder: str | Path, model: str, python: str | None = None) -> None:
    """Cancel during a real prediction stops it within 2 s; no work folder, no output node is left."""
    import os

    inputs = inputs_for_model(scene, model)
    before = data_node_ids(scene)
    run = panel.PredictionRun(inputs, device="cpu", python=python, work_root=folder).start()
    deadline = time.monotonic() + 120
    while not (update := run.poll()).finished and not update.stage and time.monotonic() < deadline:
        time.sleep(0.02)
    check(update.state.value == "running", f"the prediction should be running, it {update.state.value}: {update.error}")
    started = time.monotonic()
    run.cancel()
    took = time.monotonic() - started
    logger.info("cancel of a running prediction took %.2f s (stage %s)", took, update.stage)
    check(run.run.state.value == "cancelled", f"state after cancel: {run.run.state.value}")
    check(took < 2.0, f"cancel took {took:.2f} s")
    check(not run.work_dir.exists(), f"cancel left {run.work_dir}")
    check(data_node_ids(scene) == before, f"cancel left nodes: {data_node_ids(scene) - before}")
    if os.name != "nt":
        try:
            os.kill(run.run.pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        check(not alive, f"process {run.run.pid} still exists after cancel")


def check_prediction_run(scene, folder: str | Path, model: str, python: str | None = None) -> None:
    """Apply's whole path with a real bundle (registered name or folder): inputs written, CLI run in the background with progress,
    result and heatmap read back onto the reference geometry, MRML output nodes created."""
    from TACEResponseLib.frontend.mrml import node_ijk_to_world, show_prediction, volume_from_node

    inputs = inputs_for_model(scene, model)
    run = panel.PredictionRun(inputs, device="cpu", python=python, work_root=folder).start()
    stages = []
    deadline = time.monotonic() + 300
    while not (update := run.poll()).finished and time.monotonic() < deadline:
        if update.progressed:
            stages.append(update.stage)
        time.sleep(0.05)
    check(update.state.value == "succeeded", f"prediction {update.state.value}: {update.error} {list(run.run.log)[-5:]}")
    check(stages, "no progress line was received while the prediction ran")
    result, heatmap = run.read_result()
    run.cleanup()
    check(not run.work_dir.exists(), f"cleanup left {run.work_dir}")
    for tumour in result.tumours:
        total = float(np.sum(tumour.probabilities))
        check(abs(total - 1.0) < 1e-4, f"{tumour.label}: probabilities sum to {total}")
    reference = volume_from_node(inputs.reference)
    from TACEResponseLib.imaging.geometry import grid_offset, in_grid

    offset = grid_offset(heatmap, reference)
    check(offset is not None and offset.tolist() == result.heatmap_box_kji[0],
          "the heatmap must lie on a box of the reference volume's grid, where result.json says")
    from TACEResponseLib.frontend.mrml import segment_mask_from_node

    tumour = segment_mask_from_node(inputs.segmentation, inputs.segment_id, inputs.reference).array > 0
    hot = in_grid(heatmap, reference) > 0.5
    check(hot.any(), "the heatmap has no hot voxel")
    inside = float(tumour[hot].mean())
    check(inside >= 0.95, f"only {inside:.0%} of the hot heatmap voxels lie inside the tumour")
    outputs = show_prediction(scene, result, heatmap, inputs.reference)
    check(np.allclose(node_ijk_to_world(outputs.heatmap_node), heatmap.ijk_to_ras, atol=1e-6),
          "the heatmap node must keep the heatmap box's geometry (Slicer overlays it in RAS)")
    rows = outputs.table_node.GetTable().GetNumberOfRows()
    check(rows == len(result.tumours), f"table has {rows} rows for {len(result.tumours)} tumours")
    view = panel.result_view(result)
    check(view.headline == result.tumours[0].predicted_class, "the headline must be the predicted class")


def check_demo_model_prediction(scene, folder: str | Path, python: str | None = None) -> str:
    """The module's main job with the first registered model (the bundled SYNTHETIC demo model).

    The extension ships that model, so its absence is a packaging defect, not a reason to skip.
    """
    choices = panel.model_choices()
    check(bool(choices), "no model is registered in Resources/Models.json; the demo bundle is missing")
    check_prediction_run(scene, folder, choices[0].model, python=python)
    return choices[0].model


def check_survival_phase_inputs(scene, folder: str | Path, nomogram: str | Path | None = None) -> None:
    """A survival model needing a phase the response model does not take: its own selector
    ("portal (survival)"), a blocker naming it until chosen, and its file passed as --survival-image.

    ``nomogram`` defaults to the registered demo survival model (arterial + portal signature).
    """
    from TACEResponseLib.imaging.volume_io import read_volume
    from TACEResponseLib.networks.catalog import resolve_survival_model

    nomogram = Path(nomogram) if nomogram is not None else resolve_survival_model("TACEResponse-demo-synthetic-survival")
    needed = panel.survival_phases(nomogram)
    check(len(needed) >= 2, f"the survival model should need two phases, it needs {needed}")
    card = two_phase_card((needed[0],))  # the response model takes the reference phase only
    specs = panel.phase_selectors(card, needed)
    check([(s.phase, s.label, s.survival_only) for s in specs]
          == [(p, f"{p} (survival):", True) for p in needed[1:]],
          f"one '(survival)' selector per phase the response model does not take: {specs}")
    check(panel.phase_selectors(two_phase_card(tuple(needed)), needed) == panel.phase_selectors(two_phase_card(tuple(needed))),
          "a survival phase that is a model input must not get a second selector")

    nodes = load_phantom_nodes(scene, phases=list(needed))
    fields = panel.clinical_fields(card, panel.nomogram_fields(nomogram))
    values = {f.name: (next(iter(f.levels)) if f.levels else (f.training_range[0] + f.training_range[1]) / 2
                       if f.training_range else 50.0) for f in fields}
    values["ALT"] = 42.0  # the card's factor (range 0-500) and, when it has it, the nomogram's
    inputs = panel.PanelInputs(reference=nodes.phases[needed[0]], phase_volumes={}, segmentation=nodes.segmentation,
                               segment_id=nodes.segment_id, model="input-check", card=card, clinical_fields=fields,
                               clinical_values=values, nomogram=nomogram, survival_phases=needed)
    blockers = panel.apply_blockers(inputs)
    check(len(blockers) == len(needed) - 1 and all(f"'{p}' (survival)" in b for p, b in zip(needed[1:], blockers)),
          f"each missing survival phase should block Apply, named: {blockers}")
    inputs.phase_volumes = {needed[1]: inputs.reference}
    blockers = panel.apply_blockers(inputs)
    check(len(blockers) == 1 and inputs.reference.GetName() in blockers[0] and "(survival)" in blockers[0],
          f"the reference chosen again as a survival phase should be refused: {blockers}")
    inputs.phase_volumes = {p: nodes.phases[p] for p in needed[1:]}
    check(panel.apply_blockers(inputs) == [], f"complete inputs should not block: {panel.apply_blockers(inputs)}")

    request = panel.write_case_inputs(folder, inputs, device="cpu")
    check(len(request.image_paths) == 1, f"only the model's input is a --image: {request.image_paths}")
    check(sorted(request.survival_images) == sorted(needed[1:]), f"survival images written: {request.survival_images}")
    for phase, path in request.survival_images.items():
        written = read_volume(path)
        expected = nodes.case.phases[phase]
        check(np.array_equal(written.array, expected.array) and np.allclose(written.ijk_to_ras, expected.ijk_to_ras,
                                                                            atol=1e-6),
              f"{phase} (survival): voxels or geometry changed on the way to {path}")
    arguments = request.cli_arguments("OUT")
    given = [arguments[i + 1] for i, a in enumerate(arguments) if a == "--survival-image"]
    check(given == [f"{p}={request.survival_images[p]}" for p in needed[1:]], f"--survival-image arguments: {given}")
    check(arguments[arguments.index("--nomogram") + 1] == str(nomogram), "the nomogram must reach the CLI")


def demo_inputs_with_survival(scene) -> panel.PanelInputs:
    """The panel's default flow: the first registered model with its registered survival model,
    a phantom with every phase both need, and clinical values inside the accepted ranges."""
    card_model = panel.model_choices()[0].model
    nomogram = panel.default_nomogram(card_model)
    check(nomogram is not None, f"model {card_model} has no registered survival model")
    card = panel.load_card(card_model)
    survival = panel.survival_phases(nomogram)
    phases = list(dict.fromkeys([p.name for p in card.inputs] + survival))
    nodes = load_phantom_nodes(scene, modality=card.inputs[0].modality, phases=phases)
    fields = panel.clinical_fields(card, panel.nomogram_fields(nomogram))
    values = {f.name: (next(iter(f.levels)) if f.levels else (f.training_range[0] + f.training_range[1]) / 2
                       if f.training_range else (f.minimum + f.maximum) / 2) for f in fields}
    inputs = panel.PanelInputs(reference=nodes.phases[card.inputs[0].name],
                               phase_volumes={p: nodes.phases[p] for p in phases[1:]},
                               segmentation=nodes.segmentation, segment_id=nodes.segment_id, model=card_model,
                               card=card, clinical_fields=fields, clinical_values=values, nomogram=nomogram,
                               survival_phases=survival)
    check(panel.apply_blockers(inputs) == [], f"inputs should be complete: {panel.apply_blockers(inputs)}")
    return inputs


def check_demo_prediction_with_survival(scene, folder: str | Path, python: str | None = None) -> None:
    """The default demo flow with its survival model: result, survival read-out, survival table and
    chart nodes, and the panel's own plot scene showing a copy of that chart."""
    from TACEResponseLib.frontend.mrml import PanelPlotScene, show_prediction

    inputs = demo_inputs_with_survival(scene)
    run = panel.PredictionRun(inputs, device="cpu", python=python, work_root=folder).start()
    update = run.wait(timeout=300)
    check(update.state.value == "succeeded", f"prediction {update.state.value}: {update.error} {list(run.run.log)[-5:]}")
    result, heatmap = run.read_result()
    run.cleanup()
    check(bool(result.survival), "the default flow should give a survival estimate")
    outputs = show_prediction(scene, result, heatmap, inputs.reference)
    check(outputs.survival_chart_node is not None and outputs.survival_table_node is not None,
          "the survival estimate should give a survival table and chart node")
    panel_plot = PanelPlotScene()
    view = panel_plot.show(outputs.survival_chart_node)
    shown = view.GetScene().GetNodeByID(view.GetPlotChartNodeID())
    check(shown is not None and shown.GetTitle() == outputs.survival_chart_node.GetTitle(),
          "the panel's plot view must show the survival chart")
    series = shown.GetNthPlotSeriesNode(0)
    check(series.IsXColumnRequired() and series.GetTableNode().GetNumberOfRows() ==
          outputs.survival_table_node.GetNumberOfRows(), "the panel's copy must plot the survival curve against time")
    check(scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode") == 0 or
          all(scene.GetNthNodeByClass(n, "vtkMRMLPlotViewNode").GetLayoutName() != view.GetLayoutName()
              for n in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode"))),
          "the panel's plot view must not be in the application's scene")


def check_segment_choice(scene) -> None:
    """Choosing a segmentation selects its first segment (its first tumour segment when it has one
    coded so, as a DICOM SEG listing the liver first); a chosen segment is kept; a segment id left
    over from another segmentation is replaced; a deliberate "None" stays."""
    from TACEResponseLib.frontend.mrml import add_tumour_segment, segment_ids, tumour_segment_ids

    first = load_phantom_nodes(scene, seed=3).segmentation
    second = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "second")
    second_ids = [add_tumour_segment(second, "A"), add_tumour_segment(second, "B")]
    choice = panel.SegmentChoice()
    picked = choice.update(first, segment_ids(first), "")
    check(picked == segment_ids(first)[0], f"choosing a segmentation should select its first segment, got {picked!r}")
    check(choice.update(second, segment_ids(second), picked) == second_ids[0],
          "a segment id of another segmentation must be replaced by this one's first segment")
    check(choice.update(second, segment_ids(second), second_ids[1]) == second_ids[1], "a chosen segment is kept")
    check(choice.update(second, segment_ids(second), "") == "", "'None' chosen on the same segmentation stays")
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    check(choice.update(empty, segment_ids(empty), "") == "", "an empty segmentation has nothing to select")
    drawn = add_tumour_segment(empty)
    check(choice.update(empty, segment_ids(empty), "", segment_added=True) == drawn,
          "the first segment drawn into an empty segmentation is selected")
    check(choice.update(empty, segment_ids(empty), "Tumour", segment_names=["Tumour"]) == drawn,
          "a segment named by a script stands for its id")
    check(choice.update(None, [], drawn) == "", "no segmentation, no segment")
    # a segmentation from a DICOM SEG that lists the liver first starts on its tumour
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "dicom seg")
    liver = seg.GetSegmentation().AddEmptySegment("", "Liver", [0.8, 0.4, 0.3])
    seg.GetSegmentation().GetSegment(liver).SetTag(
        "TerminologyEntry", "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
        "~SCT^10200004^Liver~^^~^^~^^~^^")
    mass = add_tumour_segment(seg, "Mass")
    check(tumour_segment_ids(seg) == [mass], f"only the Mass segment is a tumour, got {tumour_segment_ids(seg)}")
    check(choice.update(seg, segment_ids(seg), drawn, preferred=tumour_segment_ids(seg)) == mass,
          "a DICOM SEG listing the liver first should start on its tumour segment")
    check(choice.update(seg, segment_ids(seg), liver, preferred=tumour_segment_ids(seg)) == liver,
          "the liver, chosen on purpose, is kept")


def parameter_state(p) -> dict[str, Any]:
    """The parameter node's inputs and settings as plain values (nodes by name), to compare a saved
    scene with its reloaded copy."""
    names = ("segmentId", "modelName", "modelPath", "survivalEnabled", "nomogramPath", "clinicalValues", "device",
             "keepTemporaryFiles", "heatmapVisible", "heatmapOpacity", "heatmapColormap")
    state: dict[str, Any] = {name: getattr(p, name) for name in names}
    for name in ("referenceVolume", "segmentationNode"):
        node = getattr(p, name)
        state[name] = node.GetName() if node is not None else None
    state["phaseVolumes"] = {k: v.GetName() if v is not None else None for k, v in p.phaseVolumes.items()}
    return state
