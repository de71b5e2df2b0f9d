"""The module file run by Slicer's own Python: CTest's loader, the parameter-node wrapper, the logic.

Each test runs ``TACEResponse/TACEResponse.py`` in a fresh Python where ``slicer.testing``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` and ``slicer.i18n`` are Slicer
5.10.0's own files (vendored under ``Testing/slicer_python``, see ``Testing/slicer_app.py`` for
what is real and what stands in for C++), ``slicer.util`` is Slicer's (from slicer-core) and the MRML
classes are slicer-core's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import slicer_app
from TACEResponseLib.frontend import panel, selftest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def stock_slicer_missing() -> list[str]:
    """Import names of the runtime requirements that a stock Slicer 5.10 does not ship."""
    shipped = {name.lower() for name in json.loads((REPO / "Testing" / "data" /
                                                    "slicer_python_packages.json").read_text())["packages"]}
    return sorted(module for module, project in panel.REQUIRED_PACKAGES.items() if project.lower() not in shipped)


def _run(body: str, **options):
    completed = slicer_app.run_python(body, **options)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    return completed


def test_the_ctest_entry_passes_on_a_stock_slicer_and_skips_what_it_cannot_run(tmp_path):
    """``py_TACEResponse`` as CMake's slicer_add_python_unittest runs it (Slicer v5.10.0
    CMake/SlicerMacroPythonTesting.cmake:75-96: ``slicer.testing.runUnitTest([<build dir>, <module dir>],
    "TACEResponse")``), with every package a stock Slicer lacks unimportable. runUnitTest loads the
    module's TestCase classes with ``unittest.TestLoader().loadTestsFromName`` and runs each ``test_*``
    method on its own (``runTest`` is never called): a test whose packages are missing must be reported
    as skipped by unittest, the others must pass, and runUnitTest must not raise (its exitFailure)."""
    missing = stock_slicer_missing()
    assert {"torch", "monai", "pandas", "matplotlib", "slicerio"} <= set(missing)
    completed = _run(f"""
        import slicer.testing
        slicer.testing.runUnitTest([{str(tmp_path)!r}, {str(REPO / 'TACEResponse')!r}], "TACEResponse")
        print("runUnitTest returned")
    """, blocked=missing)
    assert "runUnitTest returned" in completed.stdout
    outcomes = dict(re.findall(r"^(test_\w+) \(TACEResponseLib\.frontend\.slicer_selftest\.TACEResponseTest\.\w+\) "
                               r"\.\.\. .*?(ok|skipped|ERROR|FAIL)", completed.stderr, re.M | re.S))
    assert set(outcomes) == set(selftest.SELF_TEST_NEEDS), completed.stderr[-3000:]
    for name, needs in selftest.SELF_TEST_NEEDS.items():
        expected = "skipped" if set(needs) & set(missing) else "ok"
        assert outcomes[name] == expected, (name, completed.stderr[-3000:])
    assert re.search(r"^OK \(skipped=\d+\)$", completed.stderr, re.M)
    assert "No test is defined" not in completed.stderr, "a base TestCase class of the module is loaded as a test"


def test_the_default_reference_volume_is_one_the_selector_lists():
    """``slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")`` includes labelmaps (a subclass); the
    reference selector hides child types (``showChildNodeTypes`` false in TACEResponse.ui) and hidden
    nodes (qMRMLSortFilterProxyModel.cxx:229-321, Slicer v5.10.0), so the default must be a node it lists."""
    _run("""
        sys.path.append(str(slicer_app.MODULE_DIR))
        import numpy as np
        import TACEResponse
        from TACEResponseLib.frontend import mrml, panel
        from TACEResponseLib.imaging.geometry import Volume
        scene = slicer.mrmlScene
        grid = Volume(np.zeros((4, 5, 6), np.int16), np.eye(4), "grid")
        labelmap = mrml.volume_to_node(grid, scene, "tumour labelmap", labelmap=True)  # first in the scene
        hidden = mrml.volume_to_node(grid, scene, "hidden CT")
        hidden.SetHideFromEditors(True)
        ct = mrml.volume_to_node(grid, scene, "arterial CT")
        assert slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")[0] is labelmap
        logic = TACEResponse.TACEResponseLogic()
        p = logic.getParameterNode()
        logic.setDefaultInputs(p)
        assert p.referenceVolume is ct, p.referenceVolume.GetName()
        assert [n.GetName() for n in panel.REFERENCE_SELECTOR.nodes(scene)] == ["arterial CT"]
    """)


def test_every_parameter_is_classified_and_every_input_changes_the_key():
    """The inputs key is derived from INPUT_PARAMETERS; every field of the real @parameterNodeWrapper class
    is an input, a run setting, a display setting or an output, and changing any input — also the voxels
    of a volume or the painted segment — changes the key, while display and output fields do not."""
    _run("""
        sys.path.append(str(slicer_app.MODULE_DIR))
        import numpy as np
        import TACEResponse
        from TACEResponseLib.frontend import mrml, panel, selftest
        fields = set(TACEResponse.TACEResponseParameterNode.allParameters)
        groups = [panel.INPUT_PARAMETERS, panel.RUN_SETTINGS, panel.DISPLAY_PARAMETERS, panel.OUTPUT_PARAMETERS,
                  panel.ASSESS_PARAMETERS]
        assert sorted(n for g in groups for n in g) == sorted(fields), sorted(fields ^ {n for g in groups for n in g})
        nodes = selftest.load_phantom_nodes(slicer.mrmlScene)
        logic = TACEResponse.TACEResponseLogic()
        p = logic.getParameterNode()
        with slicer.util.NodeModify(p):
            p.referenceVolume, p.segmentationNode, p.segmentId = nodes.reference, nodes.segmentation, nodes.segment_id
        other = mrml.volume_to_node(mrml.volume_from_node(nodes.reference), slicer.mrmlScene, "other")
        changes = {"referenceVolume": other, "phaseVolumes": {"portal": nodes.phases["portal"]},
                   "segmentationNode": None, "segmentId": "other", "modelName": "m", "modelPath": "/m",
                   "survivalEnabled": not p.survivalEnabled, "nomogramPath": "/n.json", "clinicalValues": '{"ALT": 1}',
                   "device": "cpu", "splitIslands": not p.splitIslands, "minIslandMl": 1.5,
                   "patientRule": "volume_weighted", "testTimeViews": 2}
        assert set(changes) == set(panel.INPUT_PARAMETERS)
        for name, value in changes.items():
            before, old = logic.inputsKey(p), getattr(p, name)
            setattr(p, name, value)
            assert logic.inputsKey(p) != before, name
            setattr(p, name, old)
            assert logic.inputsKey(p) == before, name
        for name, value in {"keepTemporaryFiles": True, "heatmapVisible": False, "heatmapOpacity": 0.9,
                            "heatmapColormap": "jet", "resultTableNode": slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")}.items():
            before = logic.inputsKey(p)
            setattr(p, name, value)
            assert logic.inputsKey(p) == before, name
        before = logic.inputsKey(p)
        array = slicer.util.arrayFromVolume(nodes.reference)
        array[0, 0, 0] += 100
        slicer.util.arrayFromVolumeModified(nodes.reference)  # the voxels of the reference changed
        assert logic.inputsKey(p) != before
        before = logic.inputsKey(p)
        nodes.reference.SetSpacing(2.0, 2.0, 2.0)  # its geometry changed
        assert logic.inputsKey(p) != before
        before = logic.inputsKey(p)
        segment = nodes.segmentation.GetSegmentation().GetSegment(nodes.segment_id)
        segment.GetRepresentation("Binary labelmap").Modified()  # what a Segment Editor stroke does
        assert logic.inputsKey(p) != before
        print("ok")
    """)


def test_an_observer_step_that_needs_a_missing_package_reports_and_runs_again():
    """The heatmap colour table needs matplotlib, which a stock Slicer lacks: from the parameter-node
    observer the step must report the problem (not raise) and run again once the package is there."""
    _run("""
        sys.path.append(str(slicer_app.MODULE_DIR))
        import numpy as np
        import TACEResponse
        from TACEResponseLib.frontend import mrml, panel
        from TACEResponseLib.imaging.geometry import Volume
        heatmap = mrml.volume_to_node(Volume(np.zeros((4, 5, 6), np.float32), np.eye(4), "heat"), slicer.mrmlScene, "heat")
        logic = TACEResponse.TACEResponseLogic()
        p = logic.getParameterNode()
        p.heatmapNode = heatmap
        step = panel.RetriedStep("heatmap display")
        key = (p.heatmapNode, p.heatmapVisible, p.heatmapOpacity, p.heatmapColormap)
        problem = step.run(key, lambda: logic.updateHeatmapDisplay(p))
        assert "matplotlib" in problem and "Install dependencies" in problem, problem
        assert slicer.mrmlScene.GetFirstNodeByName("TACEResponse inferno") is None
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_Block"]  # "Install dependencies"
        assert step.run(key, lambda: logic.updateHeatmapDisplay(p)) == ""  # the same key runs again
        assert heatmap.GetDisplayNode().GetColorNode().GetName() == "TACEResponse inferno"
        calls = []
        assert step.run(key, lambda: calls.append(1)) == "" and calls == []  # done once per key
    """, blocked=["matplotlib"])
