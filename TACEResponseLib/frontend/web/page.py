"""The page of a session: Slicer's slice views in the middle, Slicer's segment editor on the left,
the TACEResponse panel (case, model, form, Predict, results, downloads) on the right.

Element ids (``tace-…``) are what the browser tests and the upload script use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer.app.ui import SegmentEditorUI
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

from TACEResponseLib.frontend.web import assess_view

STATIC_DIR = Path(__file__).with_name("static")
#: trame module serving the upload script beside the page
STATIC_MODULE = {"serve": {"__tace_web": str(STATIC_DIR)}, "scripts": ["__tace_web/tace_web.js"]}
PANEL_WIDTH = 430


def field_state(item) -> dict[str, Any]:
    """A clinical form field as the page draws it (label with unit, accepted range as hint)."""
    unit = f" ({item.unit})" if item.unit else ""
    low = "" if item.minimum is None else f"{item.minimum:g}"
    high = "" if item.maximum is None else f"{item.maximum:g}"
    hint = f"accepted {low}–{high}{unit}" if (low or high) else ""
    if item.training_range:
        hint += f"; training range {item.training_range[0]:g}–{item.training_range[1]:g}"
    return {"name": item.name, "label": f"{item.title}{unit}", "hint": hint.strip("; "),
            "levels": list(item.levels) if item.levels else None, "used_by": " and ".join(item.sources)}


def _upload_button(label: str, kind: str, input_id: str, icon: str, directory: bool = False) -> None:
    accept = "" if directory or kind == "image" else ".seg.nrrd,.nrrd,.nii,.nii.gz,.mha"
    html.Input(type="file", id=input_id, multiple=kind == "image", accept=accept or None,
               webkitdirectory=directory or None, style="display: none;",
               change=f"window.taceWeb.upload($event.target.files, '{kind}', upload_limits)"
                      ".then((r) => { $event.target.value = ''; if (r) trigger('tace_uploaded', [r]); })")
    v3.VBtn(label, prepend_icon=icon, variant="tonal", size="small", classes="mr-1 mb-1",
            click=f"window.document.getElementById('{input_id}').click()", disabled=("busy",))


def build(session) -> SinglePageWithDrawerLayout:
    """Lay out the page of ``session`` (a :class:`~.session.WebSession`)."""
    server = session.server
    with SinglePageWithDrawerLayout(server, full_height=True, width=330) as layout:
        layout.root.theme = "dark"
        layout.title.set_text("TACEResponse")
        with layout.toolbar:
            html.Span("{{ case_title }}", classes="text-subtitle-1 ml-2", id="tace-case-title")
            v3.VSpacer()
            v3.VSelect(v_model=("layout",), items=("layouts",), density="compact", hide_details=True,
                       style="max-width: 170px;", classes="mx-2", label="Layout")
            v3.VChip("research use only", color="orange", size="small", classes="mx-2")
        with layout.drawer:
            editor_ui = SegmentEditorUI()
        session.editor_logic.set_ui(editor_ui)
        layout.footer.hide()
        with layout.content:
            with html.Div(style="display: flex; height: calc(100vh - 64px);"):
                with html.Div(style="flex: 1; position: relative; min-width: 0;", id="tace-views",
                              __events=[("drop_prevent", "drop.prevent"), ("dragover_prevent", "dragover.prevent")],
                              drop_prevent="window.taceWeb.upload($event.dataTransfer.files, "
                                           "window.taceWeb.kindOf($event.dataTransfer.files), upload_limits)"
                                           ".then((r) => r && trigger('tace_uploaded', [r]))",
                              dragover_prevent="$event.dataTransfer.dropEffect = 'copy'"):
                    session.layout_manager.initialize_layout_grid(layout)
                with html.Div(style=f"width: {PANEL_WIDTH}px; overflow-y: auto; border-left: 1px solid #444;",
                              classes="pa-3", id="tace-panel"):
                    _case_section(session)
                    _inputs_section(session)
                    _predict_section(session)
                    _results_section()
                    assess_view.section(session)
    return layout


def _case_section(session) -> None:
    html.Div("Case", classes="text-overline")
    html.Div("{{ case_note }}", v_if=("case_note",), classes="text-caption text-orange mb-1", id="tace-case-note")
    _upload_button("Open images", "image", "tace-image-input", "mdi-folder-open")
    _upload_button("DICOM folder", "image", "tace-dicom-input", "mdi-folder-multiple-image", directory=True)
    _upload_button("Segmentation", "segmentation", "tace-segmentation-input", "mdi-shape")
    html.Div("NRRD, NIfTI, MHA or DICOM; drop files on the views to open them. Max "
             "{{ Math.round((upload_limits.max_file_bytes || 0) / 1e6) }} MB per file.",
             classes="text-caption text-medium-emphasis")


def _inputs_section(session) -> None:
    v3.VDivider(classes="my-2")
    html.Div("Model", classes="text-overline")
    v3.VSelect(v_model=("model",), items=("models",), density="compact", hide_details=True, id="tace-model",
               disabled=("busy",))
    html.Div("{{ model_info }}", classes="text-caption mt-1")
    v3.VAlert(text=("model_warning",), v_if=("model_warning",), type="warning", density="compact",
              variant="tonal", classes="my-1 text-caption", id="tace-model-warning")
    v3.VSelect(v_model=("nomogram",), items=("nomograms",), label="Survival nomogram", density="compact",
               hide_details=True, classes="mt-2", id="tace-nomogram", disabled=("busy",))
    html.Div("Volumes", classes="text-overline mt-2")
    with html.Div(v_for="selector in phase_selectors", key="selector.phase"):
        v3.VSelect(label=("selector.label",), items=("volumes",), density="compact", hide_details=True,
                   classes="mb-1", model_value=("phase_nodes[selector.phase]",), disabled=("busy",),
                   update_modelValue="phase_nodes = {...phase_nodes, [selector.phase]: $event}")
    html.Div("Clinical values", v_if=("clinical_fields.length",), classes="text-overline mt-2")
    html.Div("{{ clinical_note }}", v_if=("clinical_note",), classes="text-caption text-orange")
    with html.Div(v_for="field in clinical_fields", key="field.name"):
        v3.VSelect(v_if=("field.levels",), label=("field.label",), items=("field.levels",), density="compact",
                   model_value=("clinical_values[field.name]",), hint=("field.hint",), persistent_hint=True,
                   update_modelValue="clinical_values = {...clinical_values, [field.name]: $event}",
                   classes="mb-1", disabled=("busy",))
        v3.VTextField(v_else=True, label=("field.label",), type="number", density="compact",
                      model_value=("clinical_values[field.name]",), hint=("field.hint",), persistent_hint=True,
                      update_modelValue="clinical_values = {...clinical_values, [field.name]: $event}",
                      classes="mb-1", disabled=("busy",))


def _predict_section(session) -> None:
    v3.VDivider(classes="my-2")
    with html.Div(classes="d-flex align-center"):
        v3.VBtn("Predict", id="tace-predict", color="primary", click=session.predict,
                disabled=("busy || blockers.length > 0",), classes="mr-2")
        v3.VBtn("Cancel", id="tace-cancel", click=session.cancel, disabled=("!busy",), variant="outlined")
    with html.Ul(v_if=("blockers.length && !busy",), classes="text-caption text-medium-emphasis mt-1 ml-4",
                 id="tace-blockers"):
        html.Li("{{ b }}", v_for="b in blockers", key="b")
    v3.VProgressLinear(model_value=("progress",), height=6, color="orange", classes="mt-2", id="tace-progress",
                       v_show=("busy",))
    html.Div("{{ busy ? stage + ' ' + progress + ' %' : status }}", classes="text-caption mt-1", id="tace-status")
    v3.VAlert(text=("error",), v_if=("error",), type="error", density="compact", variant="tonal",
              classes="mt-1 text-caption", id="tace-error")


def _results_section() -> None:
    with html.Div(v_if=("result",), id="tace-result"):
        v3.VDivider(classes="my-2")
        html.Div("Result", classes="text-overline")
        v3.VAlert(text=("result.warning",), v_if=("result.warning",), type="warning", density="compact",
                  variant="tonal", classes="mb-2 text-caption", id="tace-result-warning", style="white-space: pre-line;")
        with v3.VCard(v_for="(tumour, t) in result.tumours", key="t", variant="outlined", classes="mb-2 pa-2"):
            with html.Div(classes="d-flex align-baseline"):
                html.Span("{{ tumour.label }}", classes="text-body-2 mr-2")
                html.Span("{{ tumour.headline }}", classes="text-h5 font-weight-bold tace-result-class",
                          id=("`tace-result-class-${t}`",))
            html.Div("{{ tumour.detail }}", classes="text-caption", style="white-space: pre-line;")
            with html.Div(v_for="bar in tumour.bars", key="bar.name", classes="d-flex align-center"):
                html.Span("{{ bar.name }}", style="width: 90px;", classes="text-caption",
                          **{":class": "bar.predicted ? 'font-weight-bold' : ''"})
                v3.VProgressLinear(model_value=("bar.percent",), height=10, color=("bar.predicted ? 'orange' : 'blue'",),
                                   classes="flex-grow-1 mx-1")
                html.Span("{{ bar.percent }} %", style="width: 52px; text-align: right; white-space: nowrap;", classes="text-caption")
            with html.Div(v_if=("tumour.orr",), classes="d-flex align-center"):
                html.Span("{{ tumour.orr.name }}", style="width: 90px;", classes="text-caption")
                v3.VProgressLinear(model_value=("tumour.orr.percent",), height=10, color="green",
                                   classes="flex-grow-1 mx-1")
                html.Span("{{ tumour.orr.percent }} %", style="width: 52px; text-align: right; white-space: nowrap;", classes="text-caption")
        html.Div("{{ result.patient_text }}", v_if=("result.patient_text",), classes="text-body-2 mb-1",
                 id="tace-patient")
        with html.Div(v_if=("result.not_assessable.length",), classes="text-caption text-medium-emphasis mb-1",
                      id="tace-not-assessable"):
            html.Div("Not assessable:")
            html.Div("{{ line }}", v_for="line in result.not_assessable", key="line", classes="ml-2")
        v3.VDataTable(headers=("result.headers",), items=("result.rows",), density="compact",
                      hide_default_footer=True, classes="text-caption mb-2", id="tace-result-table",
                      style="white-space: nowrap;",  # one line per row; the table scrolls sideways
                      items_per_page=-1,
                      row_props=("(row) => row.item.assessed ? {} : {class: 'text-disabled'}",))
        html.Div("{{ result.risk_text }}", classes="text-body-2", id="tace-risk")
        html.Div("{{ result.survival_text }}", classes="text-caption mb-1")
        html.Img(v_if=("result.figures.nomogram",), src=("result.figures.nomogram",), style="width: 100%;",
                 id="tace-nomogram-figure", alt="nomogram with the patient's points")
        html.Img(v_if=("result.figures.survival",), src=("result.figures.survival",), style="width: 100%;",
                 id="tace-survival-figure", alt="predicted survival curve")
        html.Div("Heatmap layer", classes="text-overline mt-2")
        with html.Div(classes="d-flex align-center"):
            v3.VSwitch(v_model=("heatmap_visible",), label="show", density="compact", hide_details=True,
                       color="orange", id="tace-heatmap-visible", classes="mr-2")
            v3.VSelect(v_model=("heatmap_colormap",), items=("colormaps",), density="compact", hide_details=True,
                       style="max-width: 120px;")
        v3.VSlider(v_model=("heatmap_opacity",), min=0, max=1, step=0.05, label="opacity", density="compact",
                   hide_details=True)
        html.Div("{{ result.status }}", classes="text-caption text-medium-emphasis")
        html.Div("Download", classes="text-overline mt-2")
        with html.Div(classes="d-flex flex-wrap"):
            for kind, label in (("json", "JSON"), ("csv", "CSV"), ("nrrd", "Heatmap NRRD"), ("mrb", "Slicer scene"),
                                ("dicom", "DICOM")):
                v3.VBtn(label, id=f"tace-download-{kind}", size="small", variant="tonal", classes="mr-1 mb-1",
                        prepend_icon="mdi-download",
                        click=f"utils.download(result.case_id + '{_suffix(kind)}', "
                              f"trigger('tace_download', ['{kind}']), 'application/octet-stream')")


def _suffix(kind: str) -> str:
    from TACEResponseLib.frontend.web.results import DOWNLOADS

    return DOWNLOADS[kind][0]
