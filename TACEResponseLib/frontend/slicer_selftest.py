"""The module's Slicer self-test (``TACEResponseTest``, run by Slicer's "Reload and Test" and by
CTest as ``py_TACEResponse``). Only Slicer imports this file; the module file re-exports the class.

The test bodies are shared with pytest (:mod:`TACEResponseLib.frontend.selftest`). A test whose
Python packages are missing (a stock Slicer before 'Install dependencies') is skipped with a
message (:data:`~TACEResponseLib.frontend.selftest.SELF_TEST_NEEDS`); the Qt/MRML checks run on
any Slicer 5.10 or later.

CTest does not call :meth:`TACEResponseTest.runTest`: ``slicer.testing.runUnitTest`` loads the class
with ``unittest.TestLoader().loadTestsFromName("TACEResponse")`` (Slicer v5.10.0
Base/Python/slicer/testing.py:25), which runs every ``test_*`` method on its own, after ``setUp``.
So the skip is raised in :meth:`setUp`, where unittest records it as a skip; "Reload and Test" calls
``runTest``, which runs the same ``setUp`` and shows the skip message instead.
"""

import os
import sys
import tempfile
import unittest

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from TACEResponseLib.frontend import mrml, panel, process, selftest


def _module():
    """The loaded module file (TACEResponse.py), for its logic class and support check."""
    return sys.modules["TACEResponse"]


def _logic():
    return _module().TACEResponseLogic()


class TACEResponseTest(ScriptedLoadableModuleTest):
    """Slicer self-test. The bodies are shared with pytest (``TACEResponseLib/frontend/selftest.py``).

    A test whose Python packages are missing (a stock Slicer before 'Install dependencies') is
    skipped with a message; the Qt/MRML checks run on any Slicer 5.10 or later.
    """

    def setUp(self):
        """Skip a test whose Python packages are missing (unittest records the skip), else clear the scene."""
        self.prepare(self._testMethodName)

    def prepare(self, name):
        problem = _module().SUPPORT_PROBLEM
        if problem is not None:
            raise unittest.SkipTest(f"TACE Response self-test skipped: {problem}")
        missing = selftest.missing_for_self_test(name)
        if missing:
            raise unittest.SkipTest(f"{name} skipped: Python package(s) {', '.join(missing)} not installed "
                                    "(click 'Install dependencies' in the module)")
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Slicer's "Reload and Test": every test, each after setUp; a skipped one says why."""
        for test in (self.test_apply_blockers, self.test_case_inputs_round_trip, self.test_survival_phase_inputs,
                     self.test_cancel_stops_process_tree, self.test_cli_error_is_reported,
                     self.test_parameter_node_round_trip, self.test_segment_choice, self.test_prediction,
                     self.test_prediction_with_survival):
            try:
                self.prepare(test.__name__)
            except unittest.SkipTest as skip:
                self.delayDisplay(str(skip))
                continue
            test()

    def test_apply_blockers(self):
        self.delayDisplay("Apply blockers on a synthetic phantom")
        selftest.check_apply_blockers(slicer.mrmlScene)

    def test_case_inputs_round_trip(self):
        self.delayDisplay("Input files for the background process")
        with tempfile.TemporaryDirectory() as folder:
            selftest.check_case_inputs_round_trip(slicer.mrmlScene, folder)

    def test_survival_phase_inputs(self):
        self.delayDisplay("Phases only the survival model needs: selector, blocker, --survival-image")
        with tempfile.TemporaryDirectory() as folder:
            selftest.check_survival_phase_inputs(slicer.mrmlScene, folder)

    def test_cancel_stops_process_tree(self):
        self.delayDisplay("Cancel stops the background process tree")
        with tempfile.TemporaryDirectory() as folder:
            selftest.check_cancel_stops_process_tree(folder, python=process.python_slicer_executable())

    def test_cli_error_is_reported(self):
        self.delayDisplay("A user error in the background process is reported as a message")
        with tempfile.TemporaryDirectory() as folder:
            selftest.check_prediction_run_reports_cli_error(slicer.mrmlScene, folder,
                                                            python=process.python_slicer_executable())

    def test_segment_choice(self):
        self.delayDisplay("Choosing a segmentation selects its first segment")
        selftest.check_segment_choice(slicer.mrmlScene)

    def test_parameter_node_round_trip(self):
        self.delayDisplay("Parameter node survives saving and loading the scene")
        nodes = selftest.load_phantom_nodes(slicer.mrmlScene)
        logic = _logic()
        p = logic.getParameterNode()
        self.assertIs(logic.getParameterNode(), p, "one wrapper per parameter node")
        with slicer.util.NodeModify(p):
            p.referenceVolume, p.phaseVolumes = nodes.phases["arterial"], {"portal": nodes.phases["portal"]}
            p.segmentationNode, p.segmentId = nodes.segmentation, nodes.segment_id
            p.modelName, p.device, p.heatmapColormap = "selftest-model", "cpu", mrml.HEATMAP_COLORMAPS[-1]
            p.heatmapOpacity, p.heatmapVisible, p.survivalEnabled = 0.3, False, False
            p.nomogramPath, p.clinicalValues = "/no/such/nomogram.json", panel.dump_clinical_values({"ALT": 42.0})
        expected = selftest.parameter_state(p)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "scene.mrb")
            self.assertTrue(slicer.util.saveScene(path))
            slicer.mrmlScene.Clear()
            slicer.util.loadScene(path)
        self.assertEqual(selftest.parameter_state(_logic().getParameterNode()), expected)

    def test_prediction(self):
        self.delayDisplay("Prediction with the bundled demo model on a synthetic phantom (logic.process)")
        model = _module().TACEResponseLogic.defaultModel()
        self.assertTrue(model, "no model is registered in Resources/Models.json; the demo bundle is missing")
        inputs = selftest.inputs_for_model(slicer.mrmlScene, model)
        logic = _logic()
        result = logic.process(inputs.reference, inputs.segmentation, inputs.segment_id, model=model,
                               phaseVolumes=inputs.phase_volumes, device="cpu", timeout=300)
        self.assertEqual(logic.outputNodes.table_node.GetTable().GetNumberOfRows(), len(result.tumours))
        self.assertIsNotNone(logic.outputNodes.heatmap_node)
        self.delayDisplay(f"Prediction with {model} passed")

    def test_prediction_with_survival(self):
        self.delayDisplay("The default flow with the survival model: result, survival chart in the panel")
        with tempfile.TemporaryDirectory() as folder:
            selftest.check_demo_prediction_with_survival(slicer.mrmlScene, folder,
                                                         python=process.python_slicer_executable())
        # the panel shows a loaded result with its survival chart (the widget path of the same nodes)
        widget = slicer.modules.taceresponse.widgetRepresentation().self()
        widget.initializeParameterNode()  # the scene was cleared: its parameter node is a new one
        inputs = selftest.demo_inputs_with_survival(slicer.mrmlScene)
        p = widget.logic.getParameterNode()
        with slicer.util.NodeModify(p):
            p.referenceVolume, p.segmentationNode, p.segmentId = inputs.reference, inputs.segmentation, inputs.segment_id
            p.phaseVolumes, p.modelName, p.modelPath = dict(inputs.phase_volumes), inputs.model, ""
            p.nomogramPath, p.survivalEnabled, p.device = str(inputs.nomogram), True, "cpu"
            p.clinicalValues = panel.dump_clinical_values(inputs.clinical_values)
        widget.logic.processParameterNode(p, timeout=300)
        widget.refreshResults()
        self.assertNotIn("results", widget.view.problems, "the results could not be shown")
        viewNode = widget.ui.survivalPlotWidget.mrmlPlotViewNode()
        self.assertIsNotNone(viewNode, "the panel's plot widget shows no plot view node")
        self.assertIsNot(viewNode.GetScene(), slicer.mrmlScene, "the panel's plot view must be in its own scene")
        self.assertEqual(viewNode.GetScene().GetNodeByID(viewNode.GetPlotChartNodeID()).GetTitle(),
                         p.survivalChartNode.GetTitle())
        self.delayDisplay("Survival chart shown")
