"""The page of a session: Slicer's views in the middle, Slicer's segment editor on the left (a drawer
that folds away on narrow screens), the TACEResponse panel on the right.

The panel scrolls (case, model, inputs, the result's details) above a bar that never scrolls away:
Predict, Cancel, the progress beside them, and the result's summary with its badges (research use,
unreliable, extrapolated survival, inputs changed). At 1024×768 the image and Predict stay visible.

Element ids (``tace-…``) are what the browser tests and the upload script use.
"""

from __future__ import annotations

from pathlib import Path

from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_slicer.app.ui import SegmentEditorUI
from trame_vuetify.ui.vuetify3 import VAppLayout

from TACEResponseLib.frontend.web import assess_view
from TACEResponseLib.frontend.web.results import DOWNLOADS, STALE_TEXT, field_state  # noqa: F401 - field_state: page API

STATIC_DIR = Path(__file__).with_name("static")
#: trame module serving the upload script and the page's style sheet
STATIC_MODULE = {"serve": {"__tace_web": str(STATIC_DIR)}, "scripts": ["__tace_web/tace_web.js"],
                 "styles": ["__tace_web/tace_web.css"]}
#: shown by the browser before any script has loaded, removed once the page's app is there
LOADING_HTML = (
    '<div id="tace-loading" style="position:fixed;inset:0;z-index:9999;display:flex;flex-direction:column;'
    'align-items:center;justify-content:center;background:#121212;color:#ddd;font:16px sans-serif">'
    '<div style="width:48px;height:48px;border:5px solid #444;border-top-color:#ffa726;border-radius:50%;'
    'animation:tace-spin 1s linear infinite"></div><div style="margin-top:16px">Opening TACEResponse…</div>'
    '<style>@keyframes tace-spin{to{transform:rotate(360deg)}}</style></div>'
    '<script>new MutationObserver(function(_m, o){if(document.querySelector(".v-application .tace-main")){'
    'var e=document.getElementById("tace-loading");if(e)e.remove();o.disconnect();}})'
    '.observe(document.documentElement,{childList:true,subtree:true});</script>')
DRAWER_WIDTH = 300
#: below this width (Vuetify's "lg" breakpoint) the segment editor is a drawer over the views, opened with
#: the menu button
WIDE_SCREEN = 1280
APP_BAR_HEIGHT = 48


def _upload_button(label: str, kind: str, input_id: str, icon: str, directory: bool = False) -> None:
    accept = "" if directory or kind == "image" else ".seg.nrrd,.nrrd,.nii,.nii.gz,.mha"
    html.Input(type="file", id=input_id, multiple=kind == "image", accept=accept or None,
               webkitdirectory=directory or None, style="display: none;",
               change=f"window.taceWeb.upload($event.target.files, '{kind}', upload_limits)"
                      ".then((r) => { $event.target.value = ''; if (r) trigger('tace_uploaded', [r]); })")
    v3.VBtn(label, prepend_icon=icon, variant="tonal", size="small", classes="mr-1 mb-1",
            click=f"window.document.getElementById('{input_id}').click()", disabled=("busy",))


def build(session) -> VAppLayout:
    """Lay out the page of ``session`` (a :class:`~.session.WebSession`)."""
    server = session.server
    layout = VAppLayout(server, full_height=True, theme="dark")
    with layout:
        client.ClientStateChange(value="result_serial", change="window.taceWeb.showResult()")
        with v3.VAppBar(density="compact", height=APP_BAR_HEIGHT, flat=True, classes="tace-app-bar"):
            v3.VAppBarNavIcon(click="editor_drawer = !editor_drawer", id="tace-editor-toggle",
                              title="Segment editor")
            html.Span("TACEResponse", classes="text-subtitle-1 font-weight-medium mr-3 tace-brand")
            with html.Div(classes="tace-case-header", id="tace-case-header"):
                html.Div("{{ case_title }}", classes="tace-case-title", id="tace-case-title")
                html.Div("{{ case_identity }}", v_if=("case_identity",), classes="tace-case-identity",
                         id="tace-case-identity", title=("case_identity",))
            v3.VSpacer()
            _window_level_controls()
            _undo_redo(session)
            v3.VSelect(v_model=("layout",), items=("layouts",), density="compact", hide_details=True,
                       variant="plain", style="max-width: 160px;", classes="mx-1 tace-layout", id="tace-layout",
                       title="Slicer's view layouts")
            v3.VChip("research use only", color="orange", size="small", classes="mx-2 tace-research-chip")
            # the launcher's log-out page (its button ends the log-in and the sessions it opened)
            v3.VBtn("Log out", v_if=("logout_link",), href="/logout", variant="text", size="small",
                    prepend_icon="mdi-logout", id="tace-logout", title="Log out of TACEResponse")
        # open on wide screens, a drawer over the views below WIDE_SCREEN (None: Vuetify decides by width)
        with v3.VNavigationDrawer(v_model=("editor_drawer", None), width=DRAWER_WIDTH, location="left",
                                  mobile_breakpoint="lg", id="tace-editor-drawer", classes="tace-editor-drawer"):
            session.editor_ui = SegmentEditorUI()
        with v3.VMain():
            with html.Div(classes="tace-main"):
                with html.Div(classes="tace-views", id="tace-views",
                              __events=[("drop_prevent", "drop.prevent"), ("dragover_prevent", "dragover.prevent")],
                              drop_prevent="window.taceWeb.upload($event.dataTransfer.files, "
                                           "window.taceWeb.kindOf($event.dataTransfer.files), upload_limits)"
                                           ".then((r) => r && trigger('tace_uploaded', [r]))",
                              dragover_prevent="$event.dataTransfer.dropEffect = 'copy'"):
                    session.layout_manager.initialize_layout_grid(layout)
                with html.Div(classes="tace-panel", id="tace-panel"):
                    with html.Div(classes="tace-panel-scroll pa-3", id="tace-panel-scroll"):
                        _case_section()
                        _inputs_section()
                        _results_section()
                        assess_view.section(session)
                    _action_bar(session)
        _figure_dialog()
    return layout


def _undo_redo(session) -> None:
    """Undo / redo of the segment editor (its own undo stack), always in the app bar."""
    with html.Div(classes="d-flex align-center mx-1", id="tace-undo-redo"):
        for name, icon, signal, enabled in (("Undo", "mdi-undo", "undo_clicked", "SegmentEditorState__can_undo"),
                                            ("Redo", "mdi-redo", "redo_clicked", "SegmentEditorState__can_redo")):
            v3.VBtn(icon=icon, size="small", variant="text", title=f"{name} (segment editor)",
                    id=f"tace-{name.lower()}", disabled=(f"!{enabled}",),
                    click=lambda signal=signal: getattr(session.editor_ui, signal)())


def _window_level_controls() -> None:
    with html.Div(v_if=("window_presets.length",), classes="d-flex align-center mx-1", id="tace-window-presets",
                  title="Window/level presets (left-drag in a view adjusts it; double-click resets)"):
        v3.VIcon("mdi-contrast-box", size="small", classes="mr-1")
        with v3.VBtnToggle(v_model=("window_preset",), density="compact", variant="outlined", divided=True,
                           mandatory=False, classes="tace-presets"):
            v3.VBtn("{{ preset }}", v_for="preset in window_presets", key="preset", value=("preset",), size="small",
                    click="trigger('tace_window_preset', [preset])", id=("`tace-preset-${preset}`",))


def _case_section() -> None:
    html.Div("Case", classes="text-overline")
    html.Div("{{ case_note }}", v_if=("case_note",), classes="text-caption text-orange mb-1", id="tace-case-note")
    _upload_button("Open images", "image", "tace-image-input", "mdi-folder-open")
    _upload_button("DICOM folder", "image", "tace-dicom-input", "mdi-folder-multiple-image", directory=True)
    _upload_button("Segmentation", "segmentation", "tace-segmentation-input", "mdi-shape")
    html.Div("NRRD, NIfTI, MHA or DICOM; drop files on the views to open them. Max "
             "{{ Math.round((upload_limits.max_file_bytes || 0) / 1e6) }} MB per file.",
             classes="text-caption text-medium-emphasis")


def _inputs_section() -> None:
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
    with html.Div(v_for="field in clinical_fields", key="field.name", id=("`tace-field-${field.name}`",),
                  classes=("field.outside ? 'tace-field-outside' : ''",)):
        v3.VSelect(v_if=("field.levels",), label=("field.label",), items=("field.levels",), density="compact",
                   model_value=("clinical_values[field.name]",), hint=("field.hint",), persistent_hint=True,
                   update_modelValue="clinical_values = {...clinical_values, [field.name]: $event}",
                   classes="mb-1", disabled=("busy",))
        v3.VTextField(v_else=True, label=("field.label",), type="number", density="compact",
                      model_value=("clinical_values[field.name]",),
                      hint=("field.outside ? '⚠ ' + field.outside + ' (' + field.hint + ')' : field.hint",),
                      persistent_hint=True, base_color=("field.outside ? 'orange' : undefined",),
                      color=("field.outside ? 'orange' : undefined",),
                      prepend_inner_icon=("field.outside ? 'mdi-alert' : undefined",),
                      update_modelValue="clinical_values = {...clinical_values, [field.name]: $event}",
                      classes="mb-1", disabled=("busy",))


def _action_bar(session) -> None:
    """Predict, Cancel, the progress beside them and the result's summary: always in view."""
    with html.Div(classes="tace-action-bar pa-2", id="tace-action-bar"):
        with html.Div(classes="d-flex align-center"):
            v3.VBtn("Predict", id="tace-predict", color="primary", click=session.predict,
                    disabled=("busy || blockers.length > 0",), classes="mr-2")
            v3.VBtn("Cancel", id="tace-cancel", click=session.cancel, disabled=("!busy",), variant="outlined",
                    classes="mr-2")
            with html.Div(v_if=("busy",), classes="d-flex align-center tace-progress", id="tace-progress"):
                # determinate: an animated spinner would keep the browser drawing while the CPU predicts
                v3.VProgressCircular(model_value=("progress",), size=30, width=3, color="orange")
                html.Span("{{ progress }} % {{ stage }}", classes="text-caption ml-2", id="tace-stage")
        html.Div("{{ status }}", v_if=("!busy && status",), classes="text-caption mt-1 tace-status", id="tace-status")
        with html.Ul(v_if=("blockers.length && !busy",), classes="text-caption text-medium-emphasis mt-1 ml-4 tace-blockers",
                     id="tace-blockers"):
            html.Li("{{ b }}", v_for="b in blockers", key="b")
        v3.VAlert(text=("error",), v_if=("error",), type="error", density="compact", variant="tonal",
                  classes="mt-1 text-caption", id="tace-error")
        _summary()


def _summary() -> None:
    with html.Div(v_if=("result",), classes=("stale ? 'tace-summary tace-summary-stale' : 'tace-summary'",),
                  id="tace-summary", click="window.taceWeb.showResult()", title="Click for the details"):
        html.Div("⟳ {{ stale_text }}", v_if=("stale",), classes="tace-stale-note", id="tace-stale")
        with html.Div(classes=("stale ? 'tace-stale' : ''",), id="tace-summary-body"):
            _summary_body()


def _summary_body() -> None:
    """The summary's content (greyed while stale; the note above it is not)."""
    with html.Div(classes="d-flex align-baseline flex-wrap"):
        html.Span("{{ result.summary.headline }}", classes="text-h4 font-weight-bold mr-2", id="tace-summary-class")
        html.Span("{{ result.summary.description }}"
                  "{{ result.summary.percent != null ? ' · ' + result.summary.percent + ' %' : '' }}",
                  classes="text-body-2 mr-2")
        html.Span("{{ result.summary.scope }}", classes="text-caption text-medium-emphasis")
    with html.Div(v_if=("result.survival",), classes="text-body-2", id="tace-summary-survival"):
        html.Span("{{ result.survival.risk_text }}", classes="mr-2")
        with html.Span(v_for="s in result.survival.at", key="s.label", classes="mr-2 tace-survival-number"):
            html.Span("{{ s.label }}: {{ s.percent }} %")
            html.Span("⚠", v_if=("result.survival.extrapolated",), classes="text-orange ml-1",
                      title=("result.survival.extrapolated",))
    with html.Div(classes="d-flex flex-wrap mt-1", id="tace-badges"):
        v3.VChip("SYNTHETIC model", v_if=("result.synthetic",), color="orange", size="x-small", label=True,
                 classes="mr-1 mb-1", id="tace-badge-synthetic", title=("result.synthetic",))
        v3.VChip("unreliable", v_if=("result.unreliable",), color="red", size="x-small", label=True,
                 prepend_icon="mdi-alert-octagon", classes="mr-1 mb-1", id="tace-badge-unreliable",
                 title=("result.unreliable && result.unreliable.sentence",))
        v3.VChip("survival extrapolated", v_if=("result.survival && result.survival.extrapolated",),
                 color="orange", size="x-small", label=True, prepend_icon="mdi-alert", classes="mr-1 mb-1",
                 id="tace-badge-extrapolated", title=("result.survival && result.survival.extrapolated",))
        v3.VChip("{{ result.warnings.length }} warning(s)", v_if=("result.warnings.length",), color="orange",
                 size="x-small", label=True, classes="mr-1 mb-1", id="tace-badge-warnings")


def _results_section() -> None:
    with html.Div(v_if=("result",), id="tace-result"):
        v3.VDivider(classes="my-2")
        html.Div("Result", classes="text-overline")
        v3.VAlert(text=("'⟳ ' + stale_text",), v_if=("stale",), type="info", density="compact", variant="tonal",
                  classes="mb-2 text-caption tace-stale-alert", id="tace-result-stale")
        with html.Div(classes=("stale ? 'tace-stale' : ''",), id="tace-result-body"):
            _result_body()


def _result_body() -> None:
    """The result's details (greyed while stale; the alert above them is not)."""
    v3.VAlert(text=("result.synthetic",), v_if=("result.synthetic",), type="warning", density="compact",
              variant="tonal", classes="mb-2 text-caption", id="tace-result-warning")
    with v3.VAlert(v_if=("result.unreliable",), type="error", density="compact", variant="tonal",
                   classes="mb-2 text-caption", id="tace-unreliable"):
        html.Div("{{ result.unreliable.sentence }}", classes="font-weight-medium", id="tace-unreliable-sentence")
        with html.Details(classes="mt-1", id="tace-unreliable-details"):
            html.Summary("Details")
            html.Div("{{ line }}", v_for="line in result.unreliable.details", key="line", classes="ml-2 mt-1")
    with v3.VAlert(v_if=("result.warnings.length",), type="warning", density="compact", variant="tonal",
                   classes="mb-2 text-caption", id="tace-warnings"):
        html.Div("{{ w }}", v_for="w in result.warnings", key="w")
    html.Div("{{ result.patient_text }}", v_if=("result.patient_text && (result.rows.length > 1 || "
                                                 "result.skipped.length)",),
             classes="text-body-2 mb-1", id="tace-patient")
    _tumour_table()
    _selected_tumour()
    _survival_section()
    html.Div("Heatmap layer", classes="text-overline mt-2")
    with html.Div(classes="d-flex align-center"):
        v3.VSwitch(v_model=("heatmap_visible",), label="show", density="compact", hide_details=True,
                   color="orange", id="tace-heatmap-visible", classes="mr-2")
        v3.VSelect(v_model=("heatmap_colormap",), items=("colormaps",), density="compact", hide_details=True,
                   style="max-width: 120px;", id="tace-heatmap-colormap")
    v3.VSlider(v_model=("heatmap_opacity",), min=0, max=1, step=0.05, label="opacity", density="compact",
               hide_details=True)
    html.Div("{{ result.status }}", classes="text-caption text-medium-emphasis")
    html.Div("Download", classes="text-overline mt-2")
    with html.Div(classes="d-flex flex-wrap"):
        for kind, label in (("json", "JSON"), ("csv", "CSV"), ("nrrd", "Heatmap NRRD"), ("mrb", "Slicer scene"),
                            ("dicom", "DICOM")):
            v3.VBtn(label, id=f"tace-download-{kind}", size="small", variant="tonal", classes="mr-1 mb-1",
                    prepend_icon="mdi-download", disabled=("!downloads_ready",),
                    click=f"utils.download(result.case_id + '{DOWNLOADS[kind][0]}', "
                          f"trigger('tace_download', ['{kind}']), 'application/octet-stream')")


def _tumour_table() -> None:
    """One compact row per tumour; a click jumps the views to it and shows its probabilities."""
    html.Div("Tumours — click a row to go to it", v_if=("result.rows.length > 1 || result.skipped.length",),
             classes="text-caption text-medium-emphasis")
    with html.Div(classes="tace-table-box", id="tace-tumour-table-box"):
        with html.Table(classes="tace-table", id="tace-tumour-table"):
            with html.Thead():
                with html.Tr():
                    for title, tip in (("Tumour", "segment and island number (largest = #1)"),
                                       ("Class", "predicted mRECIST response"),
                                       ("P", "probability of that class"), ("ml", "volume in millilitres"),
                                       ("Flags", "unreliable: unlike the training data; patient: used for the "
                                                 "patient's answer")):
                        html.Th(title, title=tip)
            with html.Tbody():
                with html.Tr(v_for="row in result.rows", key="row.key", id=("`tace-row-${row.key}`",),
                             classes=("row.index === selected_tumour ? 'tace-row tace-row-selected' : 'tace-row'",),
                             click="selected_tumour = row.index; trigger('tace_jump', [row.key])",
                             title=("row.title",)):
                    html.Td("{{ row.short }}", classes="tace-cell-label")
                    html.Td("{{ row.cls }}", classes="font-weight-bold")
                    html.Td("{{ row.percent }} %")
                    html.Td("{{ row.volume }}")
                    with html.Td():
                        html.Span("{{ flag }}", v_for="flag in row.flags", key="flag",
                                  classes=("flag === 'unreliable' ? 'tace-flag tace-flag-bad' : 'tace-flag'",))
    with html.Details(v_if=("result.skipped.length",), classes="mt-1 text-caption", id="tace-not-assessable"):
        html.Summary("{{ result.skipped.length }} tumour(s) not assessable")
        with html.Table(classes="tace-table tace-table-skipped"):
            with html.Tbody():
                with html.Tr(v_for="row in result.skipped", key="row.key", id=("`tace-row-${row.key}`",),
                             classes="tace-row text-medium-emphasis", click="trigger('tace_jump', [row.key])",
                             title=("row.reason",)):
                    html.Td("{{ row.label }}", classes="tace-cell-label")
                    html.Td("{{ row.volume }} ml")
                    html.Td("{{ row.reason }}", classes="tace-cell-reason")


def _selected_tumour() -> None:
    with v3.VCard(v_if=("result.tumours[selected_tumour]",), variant="outlined", classes="my-2 pa-2",
                  id="tace-tumour-card"):
        with html.Div(classes="d-flex align-baseline"):
            html.Span("{{ result.tumours[selected_tumour].label }}", classes="text-body-2 mr-2")
            html.Span("{{ result.tumours[selected_tumour].headline }}",
                      classes="text-h5 font-weight-bold tace-result-class", id="tace-result-class-0")
        html.Div("{{ result.tumours[selected_tumour].detail }}", classes="text-caption", style="white-space: pre-line;")
        with html.Div(v_for="bar in result.tumours[selected_tumour].bars", key="bar.name", classes="d-flex align-center"):
            html.Span("{{ bar.name }}", style="width: 90px;", classes="text-caption",
                      **{":class": "bar.predicted ? 'font-weight-bold' : ''"})
            v3.VProgressLinear(model_value=("bar.percent",), height=10, color=("bar.predicted ? 'orange' : 'blue'",),
                               classes="flex-grow-1 mx-1")
            html.Span("{{ bar.percent }} %", style="width: 52px; text-align: right; white-space: nowrap;",
                      classes="text-caption")
        with html.Div(v_if=("result.tumours[selected_tumour].orr",), classes="d-flex align-center"):
            html.Span("{{ result.tumours[selected_tumour].orr.name }}", style="width: 90px;", classes="text-caption")
            v3.VProgressLinear(model_value=("result.tumours[selected_tumour].orr.percent",), height=10, color="green",
                               classes="flex-grow-1 mx-1")
            html.Span("{{ result.tumours[selected_tumour].orr.percent }} %",
                      style="width: 52px; text-align: right; white-space: nowrap;", classes="text-caption")


def _survival_section() -> None:
    with html.Div(v_if=("result.survival",), id="tace-survival"):
        html.Div("Survival (nomogram)", classes="text-overline mt-2")
        html.Div("{{ result.survival.risk_text }}", classes="text-body-2", id="tace-risk")
        with html.Div(classes="text-body-2", id="tace-survival-numbers"):
            with html.Span(v_for="s in result.survival.at", key="s.label", classes="mr-3 tace-survival-number"):
                html.Span("{{ s.label }}: ")
                html.B("{{ s.percent }} %")
                html.Span("⚠ extrapolated", v_if=("result.survival.extrapolated",), classes="text-orange ml-1")
        v3.VAlert(text=("result.survival.extrapolated",), v_if=("result.survival.extrapolated",), type="warning",
                  density="compact", variant="tonal", classes="my-1 text-caption", id="tace-extrapolated")
        html.Div("{{ w }}", v_for="w in result.survival.warnings", key="w", classes="text-caption text-orange")
        with html.Div(classes="d-flex flex-wrap mt-1"):
            for name, alt in (("nomogram", "nomogram with the patient's points"), ("survival", "predicted survival curve")):
                html.Img(v_if=(f"result.figures.{name}",), src=(f"result.figures.{name}",), alt=alt,
                         id=f"tace-{name}-figure", classes="tace-figure-thumb",
                         title="Click to open full size", click=f"figure_open = '{name}'")


def _figure_dialog() -> None:
    with v3.VDialog(model_value=("!!figure_open",), update_modelValue="figure_open = $event ? figure_open : ''",
                    fullscreen=True, id="tace-figure-dialog"):
        with v3.VCard(classes="tace-figure-card"):
            with v3.VToolbar(density="compact"):
                v3.VToolbarTitle("{{ figure_open === 'nomogram' ? 'Nomogram with the patient\\'s points' : "
                                 "'Predicted survival' }}")
                v3.VBtn(icon="mdi-close", click="figure_open = ''", id="tace-figure-close")
            with html.Div(classes="tace-figure-full-box"):
                html.Img(v_if=("figure_open && result && result.figures[figure_open]",),
                         src=("result.figures[figure_open]",), classes="tace-figure-full", id="tace-figure-full")
