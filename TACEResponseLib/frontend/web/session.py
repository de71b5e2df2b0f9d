"""One browser session of ``tace-response web``: its own MRML scene, Slicer views and segment editor.

Started by the launcher as ``python -m TACEResponseLib.frontend.web.session`` (one process per
page, bound to 127.0.0.1, with the session key and folder the launcher made). Everything the page
does goes through the library's existing paths:

* the case: NRRD / NIfTI / DICOM read by :mod:`TACEResponseLib.imaging.volume_io`, put into MRML by
  :mod:`TACEResponseLib.frontend.mrml`; the demo case is the SYNTHETIC phantom ``tace-response
  demo`` predicts;
* the tumour: trame-slicer's segment editor (Slicer's own effects) on a segmentation node;
* the model, the clinical form and why Predict is disabled: :mod:`TACEResponseLib.frontend.panel`;
* Predict: :class:`~TACEResponseLib.frontend.panel.run.PredictionRun`, the background process the
  Slicer module runs (``tace-response predict``), polled from the event loop, so the page never
  blocks and Cancel kills the process;
* the outputs: :func:`~TACEResponseLib.frontend.mrml.show_prediction` (heatmap as the slice views'
  foreground layer, table nodes, survival chart) and :mod:`.results` (page, figures, downloads).
"""

from __future__ import annotations

import asyncio
import json
import logging
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
    download_file,
    result_page,
    survival_figures,
)
from TACEResponseLib.frontend.web.session_setup import client_text, prepare_session_process  # noqa: E402
from TACEResponseLib.frontend.web.uploads import read_upload_batch, read_upload_segmentation, stored_name  # noqa: E402

logger = logging.getLogger(__name__)

READY_PREFIX = "TACE_WEB_SESSION_READY"
LAYOUTS = ("Axial Only", "Axial Primary", "Quad View")


def segment_centre_ras(segmentation) -> np.ndarray | None:
    """Centre (RAS, mm) of the first segment's voxels of a library Segmentation, or None if empty."""
    if not segmentation.segments:
        return None
    mask = segmentation.mask(segmentation.segments[0].id)
    kji = np.argwhere(np.asarray(mask.array) > 0)
    if not len(kji):
        return None
    i, j, k = kji[:, 2].mean(), kji[:, 1].mean(), kji[:, 0].mean()
    return (np.asarray(mask.ijk_to_ras) @ np.array([i, j, k, 1.0]))[:3]


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
        self.args, _ = cli.parse_known_args()
        self.folder = Path(self.args.session_dir)
        self.device = self.args.device
        self.server.enable_module(trame_slicer_module)
        self.server.enable_module(page.STATIC_MODULE)

        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        self.editor = self.slicer_app.segmentation_editor
        register_rca_factories(self.slicer_app.view_manager, self.server, rca_encoder=self.args.encoder)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUTS[0])
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)

        self.segmentation_node = None
        self.predictions = PredictionSession(self.scene, python=sys.executable, work_root=self._subfolder("runs"))
        self.segment_problems = SegmentProblemCache()
        self.result = None
        self._nomogram_used: Path | None = None
        models = model_choices()
        self.state.update({
            "trame__title": "TACEResponse",
            "case_title": "No case open", "case_note": "",
            "volumes": [], "phase_selectors": [], "phase_nodes": {},
            "models": [{"title": m.title, "value": m.model} for m in models],
            "model": models[0].model if models else "", "model_info": "", "model_warning": "",
            "nomograms": [], "nomogram": "",
            "clinical_fields": [], "clinical_values": {}, "clinical_note": "",
            "blockers": [], "busy": False, "progress": 0, "stage": "", "status": "", "error": "",
            "result": None, "heatmap_visible": True, "heatmap_opacity": 0.5, "heatmap_colormap": "inferno",
            "colormaps": list(mrml.HEATMAP_COLORMAPS), "layouts": list(LAYOUTS), "layout": LAYOUTS[0],
            "upload_limits": json.loads(self.args.upload_limits or "{}"), "downloads": list(DOWNLOADS),
        })
        self.assess = AssessView(self)
        self.ui = page.build(self)
        self.editor.segmentation_modified.connect(lambda *_: self.refresh_blockers())
        self.server.trigger("tace_uploaded")(self.on_uploaded)
        self.server.trigger("tace_download")(self.download)
        self.ctrl.on_server_ready.add(self._ready)
        self.on_model(self.state.model)
        self.open_start_case()

    # -- case -----------------------------------------------------------------------------------
    def open_start_case(self) -> None:
        """What the command asked for: --image (+ --segmentation), else the SYNTHETIC demo case."""
        try:
            if self.args.image:
                from TACEResponseLib.imaging.segmentation import read_segmentation
                from TACEResponseLib.imaging.volume_io import read_volume

                volumes = [read_volume(path) for path in self.args.image]
                segmentation = read_segmentation(self.args.segmentation) if self.args.segmentation else None
                self.open_case(volumes, segmentation, volumes[0].name)
                self.dicom_source = self.args.image[0] if "series_uid" in volumes[0].metadata else None
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
                  clinical: dict | None = None) -> None:
        """Replace the scene with these volumes (first = reference) and a tumour segmentation
        (the given one, else an empty 'Tumour' segment to draw)."""
        self.predictions.cancel()
        self.editor.deactivate_effect()
        self.scene.Clear(0)
        self.predictions.output_nodes, self.result = None, None
        self.dicom_source = None  # set by the callers that open a DICOM series
        nodes = []
        for volume in volumes:
            node = mrml.volume_to_node(volume, self.scene, volume.name)
            if float(np.min(volume.array)) < -500:  # CT in HU: Slicer's abdomen window
                mrml.set_window_level(node, 400, 40)
            nodes.append(node)
        reference = nodes[0]
        self.slicer_app.display_manager.show_volume_in_slice_background(reference)
        self.slicer_app.display_manager.show_volume_in_slice_foreground(None)
        if segmentation is not None:
            self.segmentation_node = mrml.segmentation_to_node(segmentation, self.scene, f"{title} tumour")
            self.editor.set_active_segmentation(self.segmentation_node, reference)
        else:
            self.segmentation_node = self.editor.create_empty_segmentation_node()
            self.segmentation_node.SetName(f"{title} tumour")
            self.editor.set_active_segmentation(self.segmentation_node, reference)
            self.editor.set_active_segment_id(mrml.add_tumour_segment(self.segmentation_node))
        self.slicer_app.display_manager.reset_views()
        centre = segment_centre_ras(segmentation) if segmentation is not None else None
        if centre is not None:
            mrml.jump_slices(self.scene, centre)
        with self.state:
            self.state.case_title, self.state.case_note = title, note
            self.state.volumes = [{"title": n.GetName(), "value": n.GetID()} for n in nodes]
            self.state.result, self.state.error, self.state.status = None, "", f"Opened {title}."
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
            self.state.clinical_fields = [page.field_state(f) for f in inputs.clinical_fields]
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
        self.push(blockers=apply_blockers(inputs if isinstance(inputs, PanelInputs) else self.inputs()))

    @change("phase_nodes")
    def on_reference(self, phase_nodes, **_) -> None:
        """A new reference volume: shown in the views, and the segmentation's reference geometry."""
        reference = self.node((phase_nodes or {}).get(self._phase_names()[0]))
        if reference is None or self.segmentation_node is None:
            return
        if self.editor.active_volume_node is not reference:
            self.editor.set_active_segmentation(self.segmentation_node, reference)
            self.slicer_app.display_manager.show_volume_in_slice_background(reference)

    # -- display --------------------------------------------------------------------------------
    @change("heatmap_visible", "heatmap_opacity", "heatmap_colormap")
    def on_heatmap_display(self, heatmap_visible, heatmap_opacity, heatmap_colormap, **_) -> None:
        outputs = self.predictions.output_nodes
        if outputs is not None and outputs.heatmap_node is not None:
            mrml.set_heatmap_display(outputs.heatmap_node, bool(heatmap_visible), float(heatmap_opacity),
                                     heatmap_colormap)

    @change("layout")
    def on_layout(self, layout, **_) -> None:
        if layout in LAYOUTS:
            self.layout_manager.set_layout(layout)

    # -- prediction -----------------------------------------------------------------------------
    def predict(self) -> None:
        """Start ``tace-response predict`` in the background on the chosen inputs; return at once."""
        if self.predictions.running:
            return
        inputs = self.inputs()
        blockers = apply_blockers(inputs)
        if blockers:
            self.state.update({"blockers": blockers, "status": "Predict is disabled: " + " ".join(blockers)})
            return
        try:
            self.predictions.start(inputs, self.device)
        except TACEResponseError as exc:
            self.push(error=str(exc), status="")
            return
        self.state.update({"busy": True, "progress": 0, "stage": "starting", "error": "",
                           "status": "Predicting in the background…"})
        create_task(self._follow(inputs))

    def cancel(self) -> None:
        self.predictions.cancel()

    async def _follow(self, inputs: PanelInputs) -> None:
        """Poll the run (never blocking the page); show the result when it succeeded."""
        run = self.predictions.run
        try:
            while True:
                update = self.predictions.poll()
                self.push(progress=round(100 * update.fraction), stage=update.stage or self.state.stage)
                if update.finished:
                    break
                await asyncio.sleep(0.1)
            if update.state is RunState.SUCCEEDED:
                await self._show(inputs)
            elif update.state is RunState.CANCELLED:
                self.push(status="Cancelled: no result.", stage="cancelled", progress=0)
            else:
                self.push(error=update.error or "the prediction failed", status="", progress=0)
        except Exception as exc:  # noqa: BLE001 - the page must hear about any failure
            logger.exception("prediction could not be shown")
            self.push(error=f"the result could not be shown: {exc}", status="")
        finally:
            run.cleanup()
            self.push(busy=False)

    def push(self, **values) -> None:
        """Set state and send it to the page now (tasks outside a trame callback must flush); an error
        shown names no place on the server."""
        if values.get("error"):
            values["error"] = client_text(values["error"], self.folder)
        with self.state:
            self.state.update(values)

    async def _show(self, inputs: PanelInputs) -> None:
        """The result into MRML (heatmap layer, tables, survival chart), its files kept for the
        downloads, the views on the heatmap's peak, and the page's result section."""
        run = self.predictions.run
        folder = self._subfolder("result", fresh=True)
        shutil.copytree(run.run.output_dir, folder, dirs_exist_ok=True)
        result = self.predictions.show(inputs.reference, self.predictions.output_nodes, keep_files=True,
                                       opacity=float(self.state.heatmap_opacity), colormap=self.state.heatmap_colormap)
        mrml.set_heatmap_display(self.predictions.output_nodes.heatmap_node, bool(self.state.heatmap_visible),
                                 float(self.state.heatmap_opacity), self.state.heatmap_colormap)
        peak = next((t.heatmap_peak_ras for t in result.tumours if t.heatmap_peak_ras), None)
        if peak is not None:
            mrml.jump_slices(self.scene, peak)
        self.result = result
        figures = await asyncio.to_thread(survival_figures, result, inputs.nomogram, folder / "figures")
        self.push(result=result_page(result, figures), progress=100, stage="done",
                  status=f"Done: {result.tumours[0].label} {result.tumours[0].predicted_class}."
                  if result.tumours else "Done.")

    def _subfolder(self, name: str, fresh: bool = False) -> Path:
        folder = self.folder / name
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

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
                if "series_uid" in volumes[0].metadata:  # a DICOM series: named after what was uploaded
                    label = safe_file_name(upload.get("label") or "", fallback="DICOM_series")
                    volumes = [volumes[0].with_array(volumes[0].array, name=label)]
                self.open_case(volumes, None, volumes[0].name)
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
        self.segmentation_node = mrml.segmentation_to_node(segmentation, self.scene, files[0].name.split(".")[0])
        self.editor.set_active_segmentation(self.segmentation_node, reference)
        centre = segment_centre_ras(segmentation)
        if centre is not None:
            mrml.jump_slices(self.scene, centre)
        self.push(status=f"Opened segmentation {files[0].name}.")
        self.refresh_blockers()

    def _ready(self, **_) -> None:
        print(f"{READY_PREFIX} port={self.server.port} after {time.perf_counter() - T_START:.1f}s", flush=True)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv is not None:
        sys.argv[1:] = argv
    prepare_session_process()  # settings from the launcher (never on the command line), reading rules
    app = WebSession()
    app.server.start(open_browser=False)


if __name__ == "__main__":
    main()
