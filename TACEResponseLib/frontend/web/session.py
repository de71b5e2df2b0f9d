"""One browser session of ``tace-response web``: its own MRML scene, Slicer views and segment editor.

Started by the launcher as ``python -m TACEResponseLib.frontend.web.session`` (one process per
page, bound to 127.0.0.1, with the session key and folder the launcher made; ``--spare`` when it is
started ahead of its page). Everything the page does goes through the library's existing paths:

* the case: NRRD / NIfTI / DICOM read by :mod:`TACEResponseLib.imaging.volume_io`, put into MRML by
  :mod:`TACEResponseLib.frontend.mrml`; the demo case is the SYNTHETIC phantom ``tace-response
  demo`` predicts; a DICOM series names its patient, study and series in the title bar;
* the views: :mod:`.viewer` (Slicer's layouts, letters, slice numbers, window/level, fitting, labels);
* the tumour: trame-slicer's segment editor (Slicer's own effects, undo/redo, a 2-D brush in mm);
* the model, the clinical form and why Predict is disabled: :mod:`TACEResponseLib.frontend.panel`;
* Predict: :class:`~TACEResponseLib.frontend.panel.run.PredictionSession`, the warm worker the Slicer
  module keeps (loaded with the model before the first Predict, :mod:`.prewarm`), polled from the
  event loop, so the page never blocks and Cancel kills the run;
* the outputs: :func:`~TACEResponseLib.frontend.mrml.show_prediction` (heatmap as the slice views'
  foreground layer, table nodes, survival chart) and :mod:`.results` (summary, warnings, rows,
  figures, downloads); the result is marked stale as soon as any input differs from the ones it was
  computed from (the segment compared by its voxels, so an undo makes it current again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

T_START = time.perf_counter()

import numpy as np  # noqa: E402
from trame.app import TrameApp  # noqa: E402
from trame.app.asynchronous import create_task  # noqa: E402
from trame.decorators import change  # noqa: E402
from trame_slicer import module as trame_slicer_module  # noqa: E402
from trame_slicer.app.logic import SegmentEditorLogic  # noqa: E402
from trame_slicer.core import LayoutManager, SlicerApp  # noqa: E402
from trame_slicer.rca_view import register_rca_factories  # noqa: E402
from trame_slicer.segmentation import (  # noqa: E402
    BrushDiameterMode,
    SegmentationEffectErase,
    SegmentationEffectNoTool,
    SegmentationEffectPaint,
)

from TACEResponseLib.core.errors import InputError, TACEResponseError  # noqa: E402
from TACEResponseLib.core.files import safe_file_name  # noqa: E402
from TACEResponseLib.frontend import mrml  # noqa: E402
from TACEResponseLib.frontend.panel.form import phase_selectors  # noqa: E402
from TACEResponseLib.frontend.panel.inputs import (  # noqa: E402
    PanelInputs,
    SegmentProblemCache,
    apply_blockers,
    collect_inputs,
)
from TACEResponseLib.frontend.panel.models import (  # noqa: E402
    describe_card,
    model_choices,
    model_warning,
    nomogram_after_model_change,
)
from TACEResponseLib.frontend.panel.run import PredictionSession  # noqa: E402
from TACEResponseLib.frontend.process import RunState  # noqa: E402
from TACEResponseLib.frontend.web import page  # noqa: E402
from TACEResponseLib.frontend.web.assess_view import AssessView  # noqa: E402
from TACEResponseLib.frontend.web.results import (  # noqa: E402
    DOWNLOADS,
    STALE_TEXT,
    dicom_identity,
    download_file,
    field_state,
    result_page,
    survival_figures,
)
from TACEResponseLib.frontend.web.session_setup import (  # noqa: E402
    READY_PREFIX,
    WARM_PREFIX,
    client_text,
    prepare_session_process,
)
from TACEResponseLib.frontend.web.tumours import (  # noqa: E402
    segment_centre_ras,
    segment_fingerprint,
    start_segment_id,
    tumour_places,
)
from TACEResponseLib.frontend.web.uploads import read_upload_batch, read_upload_segmentation, stored_name  # noqa: E402
from TACEResponseLib.frontend.web.viewer import LAYOUT_NAMES, Viewer, colormap_gradient, slicer_layouts  # noqa: E402

logger = logging.getLogger(__name__)

LAYOUTS = LAYOUT_NAMES
#: seconds a session started for a waiting page lets the page load before it loads the model
WARM_UP_DELAY_S = 8.0
#: the 2-D brush the Paint and Erase effects start with: diameter in mm (slider range 1–50 mm)
BRUSH_DIAMETER_MM = 10.0


class WebSession(TrameApp):
    """The trame app of one session (one scene, one page state)."""

    def __init__(self, server=None) -> None:
        super().__init__(server)
        cli = self.server.cli
        cli.add_argument("--session-dir", required=True, help="this session's private folder (removed at its end)")
        cli.add_argument("--image", action="append", default=[], help="open this CT/MR (file or DICOM folder)")
        cli.add_argument("--segmentation", default=None, help="tumour segmentation of --image (.seg.nrrd, labelmap)")
        cli.add_argument("--no-demo", action="store_true", help="start empty instead of on the SYNTHETIC demo case")
        cli.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
        cli.add_argument("--encoder", default=None, help="view streaming: jpeg (default), png, webp")
        cli.add_argument("--upload-limits", default="{}", help="JSON limits the page checks before uploading")
        cli.add_argument("--spare", action="store_true",
                         help="a spare session started before its page: not ended for want of a page until one "
                              "has connected (it ends with the launcher)")
        cli.add_argument("--logout-link", action="store_true", help="users log in: the page links to the log-out")
        self.args, _ = cli.parse_known_args()
        self.folder = Path(self.args.session_dir)
        self.device = self.args.device
        self.server.enable_module(trame_slicer_module)
        self.server.enable_module(page.STATIC_MODULE)

        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        self.editor = self.slicer_app.segmentation_editor
        self.viewer = Viewer(self.server, self.slicer_app)
        register_rca_factories(self.slicer_app.view_manager, self.server, rca_encoder=self.args.encoder,
                               slice_view_ui_f=self.viewer.slice_overlay, three_d_view_ui_f=self.viewer.threed_overlay)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        # every view made now, before the page is built (a view made while it is built puts its UI into the
        # page a second time) and before any segmentation is shown (a view made later draws its segments
        # without their fill opacity)
        self.layout_manager.register_layout_dict(slicer_layouts(), lazy_initialization=True)
        for name in LAYOUTS:
            self.layout_manager.create_layout_views_if_needed(name)
        self.layout_manager.set_layout(LAYOUTS[0])
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)

        self.segmentation_node = None
        self.predictions = PredictionSession(self.scene, python=sys.executable, work_root=self._subfolder("runs"))
        self.segment_problems = SegmentProblemCache()
        self.result = None
        self._result_key: tuple | None = None  # what the shown result was computed from
        self._result_segment: tuple[str, str] | None = None  # (segment id, fingerprint) of the shown result
        self._segment_check: asyncio.TimerHandle | None = None
        self._warm_up_task: asyncio.Task | None = None
        self._predict_task: asyncio.Task | None = None
        self._cancel_requested = False
        self._serving = False  # the server runs (warm-ups start only then)
        self._clock: dict[str, float] = {}  # when each step of the last Predict ended (perf_counter)
        self._tumour_places: dict[str, list[float]] = {}  # table row key → RAS (mm)
        self._nomogram_used: Path | None = None
        self._is_ct: dict[str, bool] = {}
        models = model_choices()
        self.state.update({
            "trame__title": "TACEResponse",
            "case_title": "No case open", "case_note": "", "case_identity": "",
            "volumes": [], "phase_selectors": [], "phase_nodes": {},
            "models": [{"title": m.title, "value": m.model} for m in models],
            "model": models[0].model if models else "", "model_info": "", "model_warning": "",
            "nomograms": [], "nomogram": "",
            "clinical_fields": [], "clinical_values": {}, "clinical_note": "",
            "blockers": [], "busy": False, "progress": 0, "stage": "", "status": "", "error": "",
            "result": None, "result_serial": 0, "downloads_ready": False, "stale": False, "stale_text": STALE_TEXT, "selected_tumour": 0,
            "figure_open": "", "editor_drawer": None, "worker_ready": False, "predict_timings": {},
            "heatmap_visible": True, "heatmap_opacity": 0.5, "heatmap_colormap": "inferno",
            "colormaps": list(mrml.HEATMAP_COLORMAPS), "layouts": list(LAYOUTS), "layout": LAYOUTS[0],
            "upload_limits": json.loads(self.args.upload_limits or "{}"), "downloads": list(DOWNLOADS),
            "logout_link": bool(self.args.logout_link),
            "brush_caption": f"2-D brush, {BRUSH_DIAMETER_MM:g} mm diameter",
        })
        self.assess = AssessView(self)
        self.ui = page.build(self)
        self.editor_logic.set_ui(self.editor_ui)
        self._brush_defaults()
        self.editor.segmentation_modified.connect(lambda *_: self.on_segment_edited())
        self.editor.active_effect_name_changed.connect(self.on_effect)
        self.on_effect(self.editor.get_active_effect_name())
        for name, handler in (("tace_uploaded", self.on_uploaded), ("tace_download", self.download),
                              ("tace_jump", self.jump), ("tace_window_preset", self.window_preset)):
            self.server.trigger(name)(handler)
        self.ctrl.on_server_ready.add(self._ready)
        self.ctrl.on_server_bind.add(self._bind_routes)
        self.ctrl.on_server_exited.add(self._exited)
        self.on_model(self.state.model)
        self.open_start_case()

    # -- the segment editor ---------------------------------------------------------------------------
    def _brush_defaults(self) -> None:
        """Paint and Erase start with a 2-D brush (Slicer's default, not a sphere) sized in mm."""
        from trame_server.utils.typed_state import TypedState
        from trame_slicer.app.ui import PaintEffectState

        brush = TypedState(self.state, PaintEffectState)
        brush.data.use_sphere_brush = False
        brush.data.brush_diameter_mode = BrushDiameterMode.Absolute
        slider = brush.data.brush_diameter_slider
        slider.min_value, slider.max_value, slider.step, slider.value = 1, 50, 1, BRUSH_DIAMETER_MM
        for effect_type in (SegmentationEffectPaint, SegmentationEffectErase):
            effect = self.editor.get_effect(effect_type)
            if effect is not None:
                effect.set_use_sphere_brush(False)
                effect.set_brush_diameter(BRUSH_DIAMETER_MM, BrushDiameterMode.Absolute)
        self.state.brush_effects = [SegmentationEffectPaint.get_effect_name(), SegmentationEffectErase.get_effect_name()]

    @change("PaintEffectState__brush_diameter_slider__SliderState__value", "PaintEffectState__use_sphere_brush")
    def on_brush(self, **_) -> None:
        from trame_server.utils.typed_state import TypedState
        from trame_slicer.app.ui import PaintEffectState

        brush = TypedState(self.state, PaintEffectState).data
        shape = "3-D sphere" if brush.use_sphere_brush else "2-D brush"
        self.state.brush_caption = f"{shape}, {brush.brush_diameter_slider.value:g} mm diameter"

    def on_effect(self, name: str, *_) -> None:
        """Left-drag adjusts window/level only when no editing tool is active."""
        self.viewer.window_level_by_drag(name in ("", SegmentationEffectNoTool.get_effect_name()))
        self.viewer.render()  # the brush outline goes with its effect

    # -- case -----------------------------------------------------------------------------------
    def open_start_case(self) -> None:
        """What the command asked for: --image (+ --segmentation), else the SYNTHETIC demo case."""
        try:
            if self.args.image:
                from TACEResponseLib.imaging.segmentation import read_segmentation
                from TACEResponseLib.imaging.volume_io import read_volume

                volumes = [read_volume(path) for path in self.args.image]
                segmentation = read_segmentation(self.args.segmentation) if self.args.segmentation else None
                dicom = "series_uid" in volumes[0].metadata
                identity = dicom_identity(sorted(p for p in Path(self.args.image[0]).iterdir() if p.is_file())) \
                    if dicom and Path(self.args.image[0]).is_dir() else ""
                self.open_case(volumes, segmentation, volumes[0].name, identity=identity)
                self.dicom_source = self.args.image[0] if dicom else None
            elif not self.args.no_demo:
                self.open_demo_case()
        except TACEResponseError as exc:
            self.state.error = client_text(str(exc), self.folder)

    def open_demo_case(self) -> None:
        """The SYNTHETIC demo case of ``tace-response demo``, with its tumour and its patient's values."""
        from TACEResponseLib.demo.case import DEMO_CASE, demo_clinical_values
        from TACEResponseLib.imaging.phantoms import make_phantom

        case = make_phantom(DEMO_CASE["response"], seed=DEMO_CASE["seed"], case_id=DEMO_CASE["case_id"])
        # named "<case>_<phase>": the prediction takes its case id from the reference volume's name
        volumes = [v.with_array(v.array, name=f"{case.case_id}_{phase}") for phase, v in case.phases.items()]
        self.open_case(volumes, case.segmentation, f"{case.case_id} (SYNTHETIC phantom)",
                       note="SYNTHETIC demo case: a phantom, not a patient. Its clinical values are made up.",
                       clinical=demo_clinical_values(case))

    def open_case(self, volumes, segmentation=None, title: str = "case", note: str = "",
                  clinical: dict | None = None, identity: str = "") -> None:
        """Replace the scene with these volumes (first = reference) and a tumour segmentation
        (the given one, else an empty 'Tumour' segment to draw)."""
        self.predictions.cancel()
        self.editor.deactivate_effect()
        self.scene.Clear(0)
        self.predictions.output_nodes, self.result = None, None
        self._result_key, self._result_segment, self._tumour_places = None, None, {}
        self.dicom_source = None  # set by the callers that open a DICOM series
        nodes = []
        self._is_ct = {}
        for volume in volumes:
            node = mrml.volume_to_node(volume, self.scene, volume.name)
            self._is_ct[node.GetID()] = float(np.min(volume.array)) < -500  # CT in HU (air at −1000)
            if self._is_ct[node.GetID()]:
                self.viewer.apply_preset(node, "Abdomen")
            nodes.append(node)
        reference = nodes[0]
        self.slicer_app.display_manager.show_volume_in_slice_background(reference)
        self.slicer_app.display_manager.show_volume_in_slice_foreground(None)
        centre = None
        if segmentation is not None:
            centre = self._show_segmentation(segmentation, reference, f"{title} tumour")
        else:
            self.segmentation_node = self.editor.create_empty_segmentation_node()
            self.segmentation_node.SetName(f"{title} tumour")
            self.editor.set_active_segmentation(self.segmentation_node, reference)
            self.editor.set_active_segment_id(mrml.add_tumour_segment(self.segmentation_node))
        self.viewer.case_opened(reference, self._is_ct[reference.GetID()])
        if centre is not None:
            self.viewer.jump_to(centre)
        with self.state:
            self.state.case_title, self.state.case_note, self.state.case_identity = title, note, identity
            self.state.volumes = [{"title": n.GetName(), "value": n.GetID()} for n in nodes]
            self.state.result, self.state.error, self.state.status = None, "", f"Opened {title}."
            self.state.downloads_ready = False
            self.state.stale, self.state.selected_tumour = False, 0
            self.state.phase_nodes = self._assign_phases(nodes)
            # a new case starts with an empty form: the demo patient's made-up values never carry over
            self.state.clinical_values = dict(clinical or {})
            self.state.clinical_note = "SYNTHETIC demo patient's values" if clinical else ""
        self.on_model(self.state.model)

    def _assign_phases(self, nodes) -> dict[str, str]:
        """Reference = the first volume; other phases = the volume named like the phase ("portal",
        "case_portal"), if any."""
        phases = self._phase_names()
        assigned = {phases[0]: nodes[0].GetID()} if nodes else {}
        for name in phases[1:]:
            match = [n for n in nodes[1:] if n.GetName() == name or n.GetName().endswith(f"_{name}")]
            if match:
                assigned[name] = match[0].GetID()
        return assigned

    def _phase_names(self) -> list[str]:
        """The model's inputs (reference first), then the phases only the survival model needs."""
        inputs = self.inputs()
        names = inputs.phase_names or ["reference"]
        return names + [s.phase for s in phase_selectors(inputs.card, inputs.survival_phases) if s.survival_only]

    def node(self, node_id: str | None):
        return self.scene.GetNodeByID(node_id) if node_id else None

    # -- model, nomogram, form ------------------------------------------------------------------
    @change("model")
    def on_model(self, model, **_) -> None:
        nomogram = nomogram_after_model_change(model, self._nomogram_used)
        self._nomogram_used = nomogram
        from TACEResponseLib.networks.catalog import read_survival_registry

        choices = [{"title": "No survival nomogram", "value": ""}]
        choices += [{"title": entry.title, "value": str(entry.model_file())} for entry in read_survival_registry()]
        with self.state:
            self.state.nomograms = choices
            self.state.nomogram = str(nomogram) if nomogram is not None else ""
        self.on_form()
        self.start_warm_up()  # another model: loaded before it is needed

    @change("nomogram")
    def on_form(self, **_) -> None:
        """Phase selectors and clinical fields of the chosen model and nomogram (values kept)."""
        inputs = self.inputs()
        reference = (inputs.phase_names or ["reference"])[0]
        selectors = [{"phase": reference, "label": f"{reference} (reference):", "tooltip": ""}]
        selectors += [{"phase": s.phase, "label": s.label, "tooltip": s.tooltip}
                      for s in phase_selectors(inputs.card, inputs.survival_phases)]
        with self.state:
            self.state.model_info = describe_card(inputs.card)
            self.state.model_warning = model_warning(inputs.card)
            self.state.phase_selectors = selectors
        self.refresh_blockers(inputs)

    def inputs(self) -> PanelInputs:
        """What Predict needs, collected from the page state and the scene (as the Slicer panel does)."""
        chosen = dict(self.state.phase_nodes or {})
        nomogram = Path(self.state.nomogram) if self.state.nomogram else None
        inputs = collect_inputs(model=self.state.model, nomogram=nomogram)  # the card names the phases
        reference = (inputs.phase_names or ["reference"])[0]
        segment_id = (self.editor.get_active_segment_id() or "") if self.segmentation_node is not None else ""
        return collect_inputs(
            reference=self.node(chosen.get(reference)),
            phase_volumes={name: self.node(node_id) for name, node_id in chosen.items() if name != reference},
            segmentation=self.segmentation_node, segment_id=segment_id, model=self.state.model,
            clinical_values=dict(self.state.clinical_values or {}), nomogram=nomogram,
            segment_problem=self.segment_problems.get(self.segmentation_node, segment_id))

    @change("phase_nodes", "clinical_values")
    def refresh_blockers(self, inputs: PanelInputs | None = None, **_) -> None:
        """Why Predict is disabled, each field's training-range mark, and whether the result is stale."""
        inputs = inputs if isinstance(inputs, PanelInputs) else self.inputs()
        values = dict(self.state.clinical_values or {})
        self.push(blockers=apply_blockers(inputs),
                  clinical_fields=[field_state(f, values.get(f.name)) for f in inputs.clinical_fields])
        self.check_stale(inputs)

    # -- a result that no longer matches its inputs ----------------------------------------------
    def inputs_key(self, inputs: PanelInputs) -> tuple:
        """Everything a prediction depends on but the segment's voxels: model, nomogram, each phase's
        volume (node, voxels' modification, geometry), the segment chosen, the clinical values."""
        volumes = tuple(sorted((name, mrml.volume_node_state(node)) for name, node in
                               [("reference", inputs.reference), *inputs.phase_volumes.items()] if node is not None))
        clinical = []
        for item in inputs.clinical_fields:
            value = inputs.clinical_values.get(item.name)
            try:
                clinical.append((item.name, item.cli_value(value)))
            except (TACEResponseError, TypeError, ValueError):
                clinical.append((item.name, repr(value)))
        return (inputs.model, str(inputs.nomogram or ""), volumes, inputs.segment_id, tuple(clinical))

    def check_stale(self, inputs: PanelInputs | None = None, segment: bool = False) -> bool:
        """Grey the result (``stale``) when its inputs changed since Predict; ``segment``: compare the
        segment's voxels too (after an edit). Returns the stale flag."""
        if self.result is None or self._result_key is None:
            return False
        inputs = inputs or self.inputs()
        stale = self.inputs_key(inputs) != self._result_key
        if not stale and self._result_segment is not None and (segment or self.state.stale):
            segment_id, fingerprint = self._result_segment
            stale = segment_fingerprint(self.segmentation_node, segment_id) != fingerprint
        if stale != bool(self.state.stale):
            self.push(stale=stale)
            self.viewer.set_labels_current(not stale)
        return stale

    def on_segment_edited(self) -> None:
        """The segmentation changed: Predict's blockers now, the stale check a moment later (one check
        for a burst of edits: a stroke, an undo)."""
        self.refresh_blockers_soon()
        if self.result is None:
            return
        if self._segment_check is not None:
            self._segment_check.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.check_stale(segment=True)
            return
        self._segment_check = loop.call_later(0.3, lambda: self.check_stale(segment=True))

    def refresh_blockers_soon(self) -> None:
        try:
            asyncio.get_running_loop().call_soon(self.refresh_blockers)
        except RuntimeError:
            self.refresh_blockers()

    @change("phase_nodes")
    def on_reference(self, phase_nodes, **_) -> None:
        """A new reference volume: shown in the views, and the segmentation's reference geometry."""
        reference = self.node((phase_nodes or {}).get(self._phase_names()[0]))
        if reference is None or self.segmentation_node is None:
            return
        if self.editor.active_volume_node is not reference:
            self.editor.set_active_segmentation(self.segmentation_node, reference)
            self.slicer_app.display_manager.show_volume_in_slice_background(reference)
            self.viewer.case_opened(reference, self._is_ct.get(reference.GetID(), False))

    # -- display --------------------------------------------------------------------------------
    @change("heatmap_visible", "heatmap_opacity", "heatmap_colormap")
    def on_heatmap_display(self, heatmap_visible, heatmap_opacity, heatmap_colormap, **_) -> None:
        self.state.heatmap_gradient = colormap_gradient(heatmap_colormap)
        outputs = self.predictions.output_nodes
        if outputs is not None and outputs.heatmap_node is not None:
            mrml.set_heatmap_display(outputs.heatmap_node, bool(heatmap_visible), float(heatmap_opacity),
                                     heatmap_colormap)
            self.viewer.render()

    @change("layout")
    def on_layout(self, layout, **_) -> None:
        if layout in LAYOUTS:
            self.layout_manager.set_layout(layout)
            self.viewer.layout_changed()

    def window_preset(self, name: str) -> None:
        reference = self.node((self.state.phase_nodes or {}).get(self._phase_names()[0]))
        self.viewer.apply_preset(reference, name)

    def jump(self, key: str) -> None:
        """Views to the tumour of a table row ("t0", "s3"), fitted to the image."""
        place = self._tumour_places.get(str(key))
        if place is not None:
            self.viewer.jump_to(place)

    # -- prediction -----------------------------------------------------------------------------
    def predict(self) -> None:
        """Start ``tace-response predict`` on the session's warm worker; return at once."""
        if self.state.busy:  # (a warm-up run may be running: Predict waits for it)
            return
        inputs = self.inputs()
        blockers = apply_blockers(inputs)
        if blockers:
            self.state.update({"blockers": blockers, "status": "Predict is disabled: " + " ".join(blockers)})
            return
        self.state.update({"busy": True, "progress": 0, "stage": "starting", "error": "",
                           "status": "Predicting in the background…"})
        self._cancel_requested = False
        self._clock = {"clicked": time.perf_counter(), "clicked_epoch": time.time()}
        self._predict_task = create_task(self._predict(inputs))

    async def _predict(self, inputs: PanelInputs) -> None:
        if self._warm_up_task is not None and not self._warm_up_task.done():
            self.push(stage="loading the model")
            await asyncio.wait({self._warm_up_task})
        if self._cancel_requested:  # Cancel before the run started
            self.push(status="Cancelled: no result.", stage="cancelled", progress=0, busy=False)
            return
        self._clock["warm"] = time.perf_counter()
        try:
            self.predictions.start(inputs, self.device)
        except TACEResponseError as exc:
            self.push(error=str(exc), status="", busy=False)
            return
        self._clock["started"] = time.perf_counter()
        key, segment = self.inputs_key(inputs), (inputs.segment_id,
                                                 segment_fingerprint(inputs.segmentation, inputs.segment_id))
        await self._follow(inputs, key, segment)

    def cancel(self) -> None:
        self._cancel_requested = True
        self.predictions.cancel()

    async def _follow(self, inputs: PanelInputs, key: tuple, segment: tuple[str, str]) -> None:
        """Poll the run (never blocking the page); show the result when it succeeded."""
        run = self.predictions.run
        cancelled = False
        try:
            while True:
                update = self.predictions.poll()
                progress, stage = round(100 * update.fraction), update.stage or self.state.stage
                if (progress, stage) != (self.state.progress, self.state.stage):  # only news reaches the page
                    self.push(progress=progress, stage=stage)
                if update.finished:
                    self._clock["finished"] = time.perf_counter()
                    break
                await asyncio.sleep(0.05)
            if update.state is RunState.SUCCEEDED:
                await self._show(inputs, key, segment)
            elif update.state is RunState.CANCELLED:
                cancelled = True
                self.push(status="Cancelled: no result.", stage="cancelled", progress=0)
            else:
                self.push(error=update.error or "the prediction failed", status="", progress=0)
        except Exception as exc:  # noqa: BLE001 - the page must hear about any failure
            logger.exception("prediction could not be shown")
            self.push(error=f"the result could not be shown: {exc}", status="")
        finally:
            run.cleanup()
            self.push(busy=False)
        if cancelled:  # the cancel ended the worker: load the model again for the next Predict
            self.start_warm_up()

    async def _show(self, inputs: PanelInputs, key: tuple, segment: tuple[str, str]) -> None:
        """The page's summary and details first (nothing else queued before them on the way to the page);
        then the result into MRML (heatmap layer, tables, survival chart), its files kept for the
        downloads, the tumour labels, the views on the first tumour, the survival figures."""
        from TACEResponseLib.prediction.results import PredictionResult

        run = self.predictions.run
        folder = self._subfolder("result", fresh=True)
        shutil.copytree(run.run.output_dir, folder, dirs_exist_ok=True)
        result = PredictionResult.load_json(folder / "result.json")
        shown = result_page(result, {}, inputs.clinical_fields)
        clock = {**self._clock, "shown": time.perf_counter()}
        timings = {"waited_for_model_s": clock["warm"] - clock["clicked"], "inputs_written_s": clock["started"] - clock["warm"],
                   "worker_s": clock["finished"] - clock["started"], "read_and_shown_s": clock["shown"] - clock["finished"],
                   "total_s": clock["shown"] - clock["clicked"], "case_in_worker_s": result.timings.get("total", 0.0),
                   "received_epoch": clock["clicked_epoch"], "sent_epoch": time.time()}
        self.push(result=shown, result_serial=int(self.state.result_serial or 0) + 1, downloads_ready=False,
                  stale=False, selected_tumour=0,
                  progress=100, stage="done", predict_timings={k: round(v, 3) for k, v in timings.items()},
                  status=f"Done: {shown['summary']['scope']} {shown['summary']['headline']}.")
        await asyncio.sleep(0.05)  # sent before the views' new images queue up behind it
        result = self.predictions.show(inputs.reference, self.predictions.output_nodes, keep_files=True,
                                       opacity=float(self.state.heatmap_opacity), colormap=self.state.heatmap_colormap)
        mrml.set_heatmap_display(self.predictions.output_nodes.heatmap_node, bool(self.state.heatmap_visible),
                                 float(self.state.heatmap_opacity), self.state.heatmap_colormap)
        self.viewer.sync_layers()
        self.result, self._result_key, self._result_segment = result, key, segment
        self.push(downloads_ready=True)  # the summary went ahead of the files the downloads are made from
        self.check_stale()  # an input changed while it ran
        await self._label_tumours(inputs, result)
        first = self._tumour_places.get("t0") or next((t.heatmap_peak_ras for t in result.tumours
                                                       if t.heatmap_peak_ras), None)
        if first is not None:  # the views on the first tumour's largest slice: its patches, its heat, its label
            self.viewer.jump_to(first)
        figures = await asyncio.to_thread(survival_figures, result, inputs.nomogram, folder / "figures")
        if figures and self.result is result:
            self.push(result={**shown, "figures": result_page(result, figures, inputs.clinical_fields)["figures"]})

    async def _label_tumours(self, inputs: PanelInputs, result) -> None:
        """Where each tumour of the result is (table rows jump there) and its label in the views."""
        try:
            reference = mrml.volume_from_node(inputs.reference)
            segmentation = mrml.segmentation_from_node(inputs.segmentation, inputs.reference, [inputs.segment_id])
            places = await asyncio.to_thread(tumour_places, segmentation, reference, result.islands)
        except Exception as exc:  # noqa: BLE001 - labels are a help; the result stands without them
            logger.warning("tumour places not found: %s", exc)
            return
        self._tumour_places = {}
        labels = []
        for prefix, tumours in (("t", result.tumours), ("s", result.not_assessable)):
            for index, tumour in enumerate(tumours):
                place = places.get(tumour.label)
                if place is None and prefix == "t" and tumour.heatmap_peak_ras:
                    place = list(tumour.heatmap_peak_ras)
                if place is None:
                    continue
                self._tumour_places[f"{prefix}{index}"] = place
                short = f"#{tumour.island}" if tumour.island is not None else tumour.label
                labels.append((f"{short} {tumour.predicted_class if prefix == 't' else 'n/a'}", place))
        self.viewer.show_tumour_labels(labels)

    # -- the warm worker ------------------------------------------------------------------------
    def start_warm_up(self) -> None:
        """Load the chosen model into the prediction worker now (in the background), once the server runs."""
        if self._serving and (self._warm_up_task is None or self._warm_up_task.done()):
            self._warm_up_task = create_task(self._warm_up())

    async def _warm_up(self) -> None:
        """One prediction the page never shows: of the open case when Predict could run on it (its
        volume files are then written once and stay in the worker's read cache, as for the Slicer
        module's second Apply), else of a small SYNTHETIC phantom for the chosen models."""
        from TACEResponseLib.frontend.process import OUTPUT_PLACEHOLDER, BackgroundRun, library_environment
        from TACEResponseLib.frontend.web.prewarm import warm_up_request

        if self.state.busy:  # a Predict runs: it loads the model itself
            return
        started = time.perf_counter()
        self.push(worker_ready=False)
        what = "the open case"
        try:
            inputs = self.inputs()
            if not apply_blockers(inputs):
                run = self.predictions.start(inputs, self.device).run
            else:
                what = "a SYNTHETIC phantom"
                folder = self._subfolder("warm-up", fresh=True)
                request = await asyncio.to_thread(warm_up_request, inputs.card, inputs.model, inputs.nomogram,
                                                  inputs.survival_phases, inputs.clinical_fields, folder, self.device)
                if request is None:
                    return
                run = BackgroundRun(worker=self.predictions.warm_worker(), required_outputs=("result.json",),
                                    env=library_environment(None), work_root=folder)
                run.start(request.cli_arguments(OUTPUT_PLACEHOLDER))
            while not run.poll().finished:
                await asyncio.sleep(0.1)
            if run.error:
                logger.warning("warm-up prediction failed (the first Predict loads the model itself): %s", run.error)
            run.cleanup()  # nothing of it reaches the page
            print(f"{WARM_PREFIX} on {what} after {time.perf_counter() - started:.1f}s", flush=True)
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only makes the first Predict slower
            logger.warning("warm-up failed: %s", exc)
        finally:
            shutil.rmtree(self.folder / "warm-up", ignore_errors=True)
            self.push(worker_ready=True)

    def _subfolder(self, name: str, fresh: bool = False) -> Path:
        folder = self.folder / name
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def push(self, **values) -> None:
        """Set state and send it to the page now (tasks outside a trame callback must flush); an error
        shown names no place on the server."""
        if values.get("error"):
            values["error"] = client_text(values["error"], self.folder)
        with self.state:
            self.state.update(values)

    # -- downloads and uploads ------------------------------------------------------------------
    def download(self, kind: str):
        """The file of a download button, as a websocket attachment (``utils.download`` saves it)."""
        if self.result is None:
            return None
        if kind == "mrb":
            path = self._subfolder("download", fresh=True) / f"{safe_file_name(self.result.case_id)}.mrb"
            if not self.slicer_app.io_manager.write_scene(path):
                self.state.error = "the scene could not be written"
                return None
        elif kind == "dicom":
            path = self.dicom_download()
            if path is None:
                return None
        else:
            path = download_file(kind, self.result, self.folder / "result")
        return self.server.protocol.addAttachment(path.read_bytes())

    def dicom_download(self) -> Path | None:
        """The result's DICOM objects (SEG, parametric map, TID 1500 report, secondary captures) zipped; the case
        must have been opened from a DICOM series (its files are the objects' source)."""
        from TACEResponseLib.frontend.panel.dicom import export_dicom, zipped

        try:
            if not getattr(self, "dicom_source", None):
                raise InputError("DICOM results need a case opened from a DICOM series (tace-response web --image "
                                 "DICOM_FOLDER, or a DICOM series uploaded)")
            reference = mrml.volume_from_node(self.editor.active_volume_node)
            segmentation = mrml.segmentation_from_node(self.segmentation_node, self.editor.active_volume_node)
            heatmap = self.predictions.output_nodes.heatmap_node if self.predictions.output_nodes else None
            folder = self._subfolder("dicom", fresh=True)
            export_dicom(self.result, reference, mrml.volume_from_node(heatmap) if heatmap else None, segmentation,
                         self.dicom_source, folder)
            return zipped(folder, self._subfolder("download", fresh=True) / f"{safe_file_name(self.result.case_id)}"
                                                                              "_dicom.zip")
        except TACEResponseError as exc:
            self.state.error = str(exc)
            return None

    async def on_uploaded(self, upload: dict) -> None:
        """The page uploaded a batch into this session's folder: open it as the case or the tumour."""
        if not upload or upload.get("error"):
            self.push(error=(upload or {}).get("error") or "nothing was uploaded")
            return
        kind, batch = upload.get("kind"), stored_name(upload.get("batch", ""))
        folder = self.folder / "uploads" / str(kind) / batch
        if kind not in ("image", "segmentation") or not folder.is_dir():
            self.push(error="the upload was not found")
            return
        self.push(status=f"Reading {', '.join(upload.get('names', []))[:200]}…", error="")
        try:
            if kind == "image":
                volumes = await asyncio.to_thread(read_upload_batch, folder)
                identity = ""
                if "series_uid" in volumes[0].metadata:  # a DICOM series: named after what was uploaded
                    label = safe_file_name(upload.get("label") or "", fallback="DICOM_series")
                    volumes = [volumes[0].with_array(volumes[0].array, name=label)]
                    identity = await asyncio.to_thread(dicom_identity, sorted(p for p in folder.iterdir() if p.is_file()))
                self.open_case(volumes, None, volumes[0].name, identity=identity)
                if "series_uid" in volumes[0].metadata:  # its files kept: the source of DICOM results
                    self.dicom_source = shutil.move(str(folder), self._subfolder("dicom-source", fresh=True))
            else:
                self.load_segmentation(folder)
        except TACEResponseError as exc:
            self.push(error=str(exc), status="")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def load_segmentation(self, folder: Path) -> None:
        """Replace the tumour segmentation by an uploaded one (.seg.nrrd or labelmap)."""
        files = [p for p in folder.iterdir() if p.is_file()]
        if len(files) != 1:
            raise InputError(f"upload one segmentation file at a time ({len(files)} given)")
        reference = self.editor.active_volume_node
        if reference is None:
            raise InputError("open the case's images before its segmentation")
        segmentation = read_upload_segmentation(folder)
        self.editor.deactivate_effect()
        if self.segmentation_node is not None:
            self.scene.RemoveNode(self.segmentation_node)
        centre = self._show_segmentation(segmentation, reference, files[0].name.split(".")[0])
        if centre is not None:
            self.viewer.jump_to(centre)
        self.push(status=f"Opened segmentation {files[0].name}.")
        self.refresh_blockers()
        self.check_stale(segment=True)

    def _show_segmentation(self, segmentation, reference, name: str):
        """A segmentation into the scene and the editor, on its tumour segment (a DICOM SEG's tumour, not
        the liver it may list first); where that tumour is (RAS, mm: the views go there), or None."""
        self.segmentation_node = mrml.segmentation_to_node(segmentation, self.scene, name)
        self.editor.set_active_segmentation(self.segmentation_node, reference)
        ids = mrml.segment_ids(self.segmentation_node)
        start = start_segment_id(segmentation)
        if ids:
            self.editor.set_active_segment_id(start if start in ids else ids[0])
        return segment_centre_ras(segmentation, start)

    # -- life cycle -----------------------------------------------------------------------------
    def _bind_routes(self, wslink_server) -> None:
        """The page's HTML with a loading indicator that shows before any script has loaded (trame's
        own appears only after Vue has): the first thing a browser paints, within milliseconds."""
        from aiohttp import web

        index = Path(self.server._www or "") / "index.html"  # noqa: SLF001 - trame's client folder
        if not index.is_file():
            return
        text = index.read_text(encoding="utf-8")
        html_text = text.replace("<head>", "<head>" + page.LOADING_HTML, 1) if "<head>" in text else text

        async def index_page(_request):
            return web.Response(text=html_text, content_type="text/html",
                                headers={"Cache-Control": "no-cache, no-store, must-revalidate"})

        wslink_server.app.add_routes([web.get("/", index_page), web.get("/index.html", index_page)])

    def _ready(self, **_) -> None:
        if self.args.spare:
            create_task(self._keep_spare())
        print(f"{READY_PREFIX} port={self.server.port} after {time.perf_counter() - T_START:.1f}s", flush=True)
        create_task(self._watch_parent(os.getppid()))
        create_task(self._serve(0.0 if self.args.spare else WARM_UP_DELAY_S))

    async def _serve(self, delay: float) -> None:
        """Warm-ups from now on: a spare at once (no page waits for it); a session started for its page
        after the page had time to load (both on 2 cores would slow the first image)."""
        await asyncio.sleep(delay)
        self._serving = True
        self.start_warm_up()

    def _exited(self, **_) -> None:
        """The server stopped (its page closed long enough, or the launcher ended it): so does the worker."""
        self.predictions.close()

    async def _keep_spare(self) -> None:
        """A spare has no page yet: it must not end for want of one (wslink schedules that end right
        after this server started; the first page to connect and leave schedules it again)."""
        from wslink import server as wslink_server

        await asyncio.sleep(0)
        if wslink_server.ws_server is not None:
            wslink_server.ws_server.shutdown_cancel()

    async def _watch_parent(self, parent: int) -> None:
        """End with the launcher that started this session, even if it could not say so."""
        while os.getppid() == parent:
            await asyncio.sleep(2.0)
        logger.warning("the launcher (pid %s) is gone; this session ends", parent)
        self.predictions.close()
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv is not None:
        sys.argv[1:] = argv
    prepare_session_process()  # settings from the launcher (never on the command line), reading rules
    app = WebSession()
    app.server.start(open_browser=False)


if __name__ == "__main__":
    main()
