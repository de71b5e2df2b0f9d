"""The page's "Assess response" view: visits taken from the open case, one after the other, then assessed.

A session shows one case at a time, so a visit is *captured*: the open case's reference volume (the arterial
phase), an optional pre-contrast volume and the tumour segmentation are copied out of the scene
(:func:`~TACEResponseLib.frontend.assess.visit_from_nodes`) — first as the baseline, then each follow-up
after its images and segmentation were opened. "Assess" runs
:func:`~TACEResponseLib.assessment.series.assess_series` (the path of ``tace-response assess``) in a worker
thread and shows the response per criterion, each follow-up's flags and the overlays with the calipers
drawn. Element ids (``tace-assess-…``) are what the browser test uses.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import shutil

from trame.app.asynchronous import create_task
from trame.widgets import html
from trame.widgets import vuetify3 as v3

from TACEResponseLib.core.errors import TACEResponseError

logger = logging.getLogger(__name__)

#: what a pre-contrast volume's name says
PRECONTRAST_WORDS = re.compile(r"pre.?contrast|\bpre\b|native|unenhanced|non.?contrast|plain", re.IGNORECASE)


class AssessView:
    """The assess state of one session (its captured visits) and its actions."""

    def __init__(self, session) -> None:
        self.session = session
        self.visits: list = []
        session.state.update({"assess_visits": [], "assess_precontrast": "", "assess_new_lesion": False,
                              "assess_busy": False, "assess_error": "", "assess_result": None})
        session.state.change("volumes")(self.on_volumes)

    def on_volumes(self, volumes=None, **_) -> None:
        """A case was opened: its pre-contrast volume is the one named so (pre, native, unenhanced), if any."""
        names = [v for v in (volumes or [])[1:] if PRECONTRAST_WORDS.search(str(v.get("title", "")))]
        self.session.state.assess_precontrast = names[0]["value"] if names else ""

    def _push(self, **values) -> None:
        with self.session.state:
            self.session.state.update(values)

    def capture(self, baseline: bool = False) -> None:
        """The open case as the baseline (starting again) or as the next follow-up."""
        from TACEResponseLib.frontend.assess import VisitNodes, visit_from_nodes

        session = self.session
        reference = session.inputs().reference
        name = "baseline" if baseline or not self.visits else f"followup{len(self.visits)}"
        nodes = VisitNodes(name, reference, session.segmentation_node, session.node(session.state.assess_precontrast),
                           bool(session.state.assess_new_lesion) and name != "baseline")
        try:
            visit = visit_from_nodes(nodes)
        except TACEResponseError as exc:
            self._push(assess_error=str(exc))
            return
        self.visits = [visit] if name == "baseline" else [*self.visits, visit]
        listed = [{"name": v.name, "detail": f"{v.sources['arterial']}"
                   + (f" + pre-contrast {v.precontrast.name}" if v.precontrast is not None else "")
                   + f", {v.sources['segmentation']}" + (" — new lesion seen" if v.new_lesion else "")}
                  for v in self.visits]
        self._push(assess_visits=listed, assess_error="", assess_result=None, assess_new_lesion=False)

    def capture_baseline(self) -> None:
        self.capture(baseline=True)

    def capture_followup(self) -> None:
        self.capture(baseline=False)

    def clear(self) -> None:
        self.visits = []
        self._push(assess_visits=[], assess_result=None, assess_error="")

    def run(self) -> None:
        if len(self.visits) < 2 or self.session.state.assess_busy:
            return
        self._push(assess_busy=True, assess_error="", assess_result=None)
        create_task(self._run())

    async def _run(self) -> None:
        from TACEResponseLib.assessment.outputs import write_assessment
        from TACEResponseLib.assessment.series import assess_series

        try:
            folder = self.session.folder / "assessment"
            shutil.rmtree(folder, ignore_errors=True)
            assessment = await asyncio.to_thread(assess_series, list(self.visits))
            files = await asyncio.to_thread(write_assessment, assessment, folder)
            self._push(assess_result=result_page(assessment, files))
        except TACEResponseError as exc:
            self._push(assess_error=str(exc))
        except Exception as exc:  # noqa: BLE001 - the page must hear about any failure
            logger.exception("the assessment failed")
            self._push(assess_error=f"the assessment failed: {exc}")
        finally:
            self._push(assess_busy=False)


def result_page(assessment, files: dict) -> dict:
    """What the page shows of an assessment: summary lines, the responses table, the overlays."""
    from TACEResponseLib.assessment.criteria import format_change
    from TACEResponseLib.assessment.outputs import summary_lines

    rows = [{"visit": v.name, "criterion": name, "category": r.category,
             "change": format_change(r.change_from_baseline, r.change_from_baseline_sd),
             "from_nadir": format_change(r.change_from_nadir, r.change_from_nadir_sd),
             "near": ("could be " + "/".join(r.could_be)) if r.near_threshold else ""}
            for v in assessment.followups for name, r in v.responses.items()]
    overlays = []
    for key, path in files.items():
        if key.startswith("overlay:"):
            _, visit, lesion = key.split(":", 2)
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            overlays.append({"title": f"{visit} — {lesion}", "src": f"data:image/png;base64,{data}"})
    headers = [{"title": t, "key": k} for t, k in (("Visit", "visit"), ("Criterion", "criterion"),
                                                   ("Response", "category"), ("vs baseline", "change"),
                                                   ("vs nadir", "from_nadir"), ("Near threshold", "near"))]
    return {"lines": summary_lines(assessment), "rows": rows, "headers": headers, "overlays": overlays,
            "categories": {v.name: {n: r.category for n, r in v.responses.items()} for v in assessment.followups},
            "synthetic": assessment.synthetic}


def section(session) -> None:
    """The view's part of the page (under the prediction's results)."""
    view = session.assess
    v3.VDivider(classes="my-2")
    html.Div("Assess response", classes="text-overline")
    html.Div("Open each visit (arterial phase as the reference, its tumour segmentation), then take it as the "
             "baseline or the next follow-up.", classes="text-caption text-medium-emphasis")
    v3.VSelect(v_model=("assess_precontrast",), items=("[{title: 'no pre-contrast image', value: ''}, ...volumes]",),
               label="Pre-contrast volume of this visit", density="compact", hide_details=True, classes="mt-1",
               id="tace-assess-precontrast", disabled=("assess_busy",))
    v3.VCheckbox(v_model=("assess_new_lesion",), label="New lesion seen at this follow-up", density="compact",
                 hide_details=True, id="tace-assess-new-lesion", disabled=("assess_busy",))
    with html.Div(classes="d-flex flex-wrap"):
        v3.VBtn("Use as baseline", id="tace-assess-baseline", size="small", variant="tonal", classes="mr-1 mb-1",
                click=view.capture_baseline, disabled=("assess_busy",))
        v3.VBtn("Add as follow-up", id="tace-assess-followup", size="small", variant="tonal", classes="mr-1 mb-1",
                click=view.capture_followup, disabled=("assess_busy || !assess_visits.length",))
        v3.VBtn("Clear", id="tace-assess-clear", size="small", variant="text", classes="mb-1", click=view.clear,
                disabled=("assess_busy",))
    with html.Ul(classes="text-caption ml-4", id="tace-assess-visits"):
        html.Li("{{ v.name }}: {{ v.detail }}", v_for="v in assess_visits", key="v.name")
    v3.VBtn("Assess", id="tace-assess-run", color="primary", size="small", click=view.run, classes="mt-1",
            loading=("assess_busy",), disabled=("assess_busy || assess_visits.length < 2",))
    v3.VAlert(text=("assess_error",), v_if=("assess_error",), type="error", density="compact", variant="tonal",
              classes="mt-1 text-caption", id="tace-assess-error")
    with html.Div(v_if=("assess_result",), id="tace-assess-result", classes="mt-2"):
        html.Div("{{ line }}", v_for="line in assess_result.lines", key="line", classes="text-caption")
        v3.VDataTable(headers=("assess_result.headers",), items=("assess_result.rows",), density="compact",
                      hide_default_footer=True, items_per_page=-1, classes="text-caption my-1",
                      id="tace-assess-table", style="white-space: nowrap;")
        with html.Div(v_for="o in assess_result.overlays", key="o.title"):
            html.Img(src=("o.src",), alt=("o.title",), style="width: 100%;", classes="tace-assess-overlay")
