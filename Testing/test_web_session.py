"""A web session's logic without a browser: opening a case from the command line, the phases it
assigns, why Predict is disabled, a segmentation opened from an upload batch, and the model form.

The session is built in this process (trame server not started); the browser tests
(``test_web.py``) cover the page itself.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")


@pytest.fixture(scope="module")
def case_files(tmp_path_factory, axial_case):
    folder = tmp_path_factory.mktemp("case")
    paths = axial_case.write(folder)
    return paths


def _session(monkeypatch, tmp_path, *arguments):
    from trame.app import get_server

    from TACEResponseLib.frontend.web.session import WebSession

    import shlex

    # trame reads its arguments from TRAME_ARGS when run under pytest (it ignores pytest's argv)
    monkeypatch.setenv("TRAME_ARGS", shlex.join(["--session-dir", str(tmp_path), *arguments]))
    return WebSession(server=get_server(f"tace-test-{len(arguments)}-{tmp_path.name}", client_type="vue3"))


def test_image_from_the_command_line_with_an_empty_tumour_segment(monkeypatch, tmp_path, case_files, axial_case):
    session = _session(monkeypatch, tmp_path, "--image", case_files["phases"]["arterial"])
    state = session.state
    from pathlib import Path

    assert state.case_title == Path(case_files["phases"]["arterial"]).name.split(".")[0]
    assert [v["title"] for v in state.volumes] == [state.case_title]
    reference = session.node(state.phase_nodes["arterial"])
    assert np.allclose(session.node(state.volumes[0]["value"]).GetSpacing(), reference.GetSpacing())
    # the demo survival model needs the portal phase, which this case was not given; the segment is empty
    blockers = " ".join(state.blockers)
    assert "Segment 'Tumour' is empty" in blockers
    assert "portal" in blockers
    state.nomogram = ""
    session.on_form()
    assert all("portal" not in b for b in state.blockers)
    # an uploaded segmentation replaces the empty one and unblocks Predict
    batch = tmp_path / "uploads" / "segmentation" / "b1"
    batch.mkdir(parents=True)
    from TACEResponseLib.imaging.segmentation import write_segmentation

    write_segmentation(axial_case.segmentation, batch / "tumour.seg.nrrd")
    session.load_segmentation(batch)
    assert session.state.blockers == [], session.state.blockers
    inputs = session.inputs()
    assert inputs.reference is reference and inputs.segment_problem is None
    assert session.segmentation_node.GetSegmentation().GetNumberOfSegments() == len(axial_case.segmentation.segments)


def test_demo_case_assigns_phases_and_fills_the_synthetic_patient(monkeypatch, tmp_path):
    from TACEResponseLib.demo.case import DEMO_CLINICAL

    session = _session(monkeypatch, tmp_path)
    state = session.state
    names = {v["value"]: v["title"] for v in state.volumes}
    assert {phase: names[node] for phase, node in state.phase_nodes.items()} == \
        {"arterial": "demo_case_arterial", "portal": "demo_case_portal"}
    assert state.blockers == [], state.blockers
    assert {name: state.clinical_values[name] for name in DEMO_CLINICAL} == DEMO_CLINICAL
    state.clinical_values = {**state.clinical_values, "ALT": "-5"}
    session.refresh_blockers()
    assert any("ALT" in b and "outside the accepted range" in b for b in state.blockers)
    # another case opened after the demo starts with an empty form (made-up values never carry over)
    from TACEResponseLib.imaging.phantoms import make_phantom

    other = make_phantom("SD", shape_kji=(32, 48, 48), seed=2)
    session.open_case([other.phases["arterial"]], None, "other_case")
    assert state.clinical_values == {} and state.clinical_note == ""
    assert any(b.startswith("Enter clinical factor") for b in state.blockers)
    assert any("Segment 'Tumour' is empty" in b for b in state.blockers)


def test_a_shown_result_goes_stale_on_any_input_change_and_back(monkeypatch, tmp_path):
    """The rule behind the greyed result: model, nomogram, volumes, segment voxels and clinical values;
    putting an input back as it was makes the result current again (the segment by its content)."""
    from TACEResponseLib.frontend.web.tumours import segment_fingerprint

    session = _session(monkeypatch, tmp_path)
    state = session.state
    inputs = session.inputs()
    session.result = "a result shown on the page"
    session._result_key = session.inputs_key(inputs)
    session._result_segment = (inputs.segment_id, segment_fingerprint(inputs.segmentation, inputs.segment_id))
    assert not session.check_stale(segment=True)
    # the segment edited (as the editor's effects do, with its undo stack): stale; undone: current again
    editor = session.editor
    array = editor.get_segment_labelmap(inputs.segment_id, as_numpy_array=True).copy()
    outside = tuple(int(v) for v in np.argwhere(array == 0)[len(array) // 2])
    array[outside] = 1
    editor.active_segment_modifier.set_segment_labelmap(inputs.segment_id, array)
    assert session.check_stale(segment=True) and state.stale
    editor.undo_stack.undo()
    assert not session.check_stale(segment=True) and not state.stale
    # a clinical value, and back
    values = dict(state.clinical_values)
    state.clinical_values = {**values, "ALT": values["ALT"] + 1}
    assert session.check_stale()
    state.clinical_values = values
    assert not session.check_stale()
    # another volume for a phase, and back
    phases = dict(state.phase_nodes)
    state.phase_nodes = {**phases, "portal": phases["arterial"]}
    assert session.check_stale()
    state.phase_nodes = phases
    assert not session.check_stale()
    # the nomogram
    state.nomogram = ""
    assert session.check_stale()


def test_a_dicom_seg_listing_the_liver_first_opens_on_its_tumour(monkeypatch, tmp_path, axial_case):
    """A DICOM SEG often lists the liver before the tumour: the editor starts on the tumour (the segment
    Predict uses) and the views on the tumour's centre, not the liver's; the series' patient is in the title."""
    pytest.importorskip("highdicom", reason="highdicom is not installed")
    from dicom_helpers import write_ct_series, write_seg

    arterial = axial_case.phases["arterial"]
    stored = np.round(arterial.array).astype(np.int16)
    source = write_ct_series(tmp_path / "ct", stored, arterial.ijk_to_ras, intercept=0.0, patient_id="HCC_042")
    tumour = axial_case.segmentation.layers[0] == axial_case.segmentation.segments[0].label_value
    liver = np.zeros_like(tumour)
    liver[:16, 20:70, 20:70] = True  # the upper slices: away from the tumour
    batch = tmp_path / "uploads" / "segmentation" / "b1"
    write_seg(batch / "seg.dcm", source, {"Liver": liver, "Tumour": tumour}, types={"Liver": ("10200004", "Liver")})

    def centre_s(mask) -> float:  # superior coordinate (mm) of a mask's voxel centroid
        k, j, i = np.argwhere(mask).mean(axis=0)
        return float((arterial.ijk_to_ras @ np.array([i, j, k, 1.0]))[2])

    assert abs(centre_s(tumour) - centre_s(liver)) > 10.0, "the test needs the two centres apart"
    session = _session(monkeypatch, tmp_path, "--image", str(tmp_path / "ct"))
    session.load_segmentation(batch)
    names = dict(zip(*(f(session.segmentation_node) for f in (_segment_ids, _segment_names))))
    assert names[session.editor.get_active_segment_id()] == "Tumour"
    assert session.inputs().segment_problem is None
    red = next(v for v in session.viewer.slice_views(visible_only=False) if v.get_singleton_tag() == "Red")
    spacing_s = float(np.linalg.norm(arterial.ijk_to_ras[:3, 2]))
    assert abs(red.get_view_node().GetSliceOffset() - centre_s(tumour)) <= spacing_s / 2 + 1e-3
    assert "Patient HCC_042" in session.state.case_identity  # --image DICOM_FOLDER, as after an upload


def _segment_ids(node):
    from TACEResponseLib.frontend.mrml import segment_ids

    return segment_ids(node)


def _segment_names(node):
    from TACEResponseLib.frontend.mrml import segment_names

    return segment_names(node)


def test_the_page_links_to_the_log_out_only_when_users_log_in(monkeypatch, tmp_path):
    """The launcher tells a session whether users log in (``--logout-link`` from its settings); only then
    does the title bar offer "Log out", which opens the launcher's log-out page."""
    with_users = _session(monkeypatch, tmp_path / "a", "--no-demo", "--logout-link")
    assert with_users.state.logout_link is True
    link = re.search(r'<VBtn[^>]*id="tace-logout"[^>]*>', with_users.ui.html)
    assert link and 'href="/logout"' in link.group(0) and 'v-if="logout_link"' in link.group(0)
    assert _session(monkeypatch, tmp_path / "b", "--no-demo").state.logout_link is False
