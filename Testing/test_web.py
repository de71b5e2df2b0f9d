"""``tace-response web`` in a real browser: Debian's chromium driven by Playwright.

One ``tace-response web`` server (a subprocess: the command as a user starts it, with its spare
session) serves the whole module; each test page gets its own session process from it. Page A (the
SYNTHETIC demo case, 1920×1080, later 1024×768) is shared by the tests in file order:

* the page: a loading indicator in the first HTML; Slicer's view bar (name, orientation, slice
  position and number), orientation letters, W/L shown; the whole editor toolbar; a 2-D brush in mm;
* window/level by left-drag and by the CT presets; a Paint stroke, undone and redone;
* Cancel mid-prediction leaves no result; Predict: progress beside the button, the summary in view
  without scrolling, heatmap pixels only over the tumour, its colour bar, the nomogram full size;
* stale results: a stroke, a clinical value or another volume greys the result ("inputs changed"),
  undoing them makes it current again; a survival value outside the training range is marked on the
  field and beside the survival numbers;
* downloads agree with the page and the .mrb loads in slicer-core; 1024×768 still shows the image
  and Predict;
* page B: two sessions keep their data apart; NRRD, DICOM and a real DICOM series (patient, study and
  series shown) uploaded; its folder goes when its page closes;
* page C: a real multifocal liver (LiTS volume 117, 70 islands) uploaded: one compact row per tumour,
  the not-assessable ones folded, a row click jumps the views to that tumour's largest slice, which
  shows its label; the "unreliable" badge; Slicer's Four-Up layout with its views fitted and the
  3-D view reset;
* uploads are limited in type and size (in the page and by the server).

Screenshots of the pages go to ``build/web-test`` (the README's picture to ``$TACE_WEB_SCREENSHOT``).
Skipped, with the reason, where chromium or Playwright is missing (``make test`` installs both
where it can).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SHOTS = REPO / "build" / "web-test"
#: where the page screenshot with a prediction goes (README: Resources/Screenshots/web_page.png)
SCREENSHOT = Path(os.environ.get("TACE_WEB_SCREENSHOT", SHOTS / "web_page.png"))
SESSION_TIMEOUT = 4  # s a session lives on after its page closed
MAX_UPLOAD_MB = 8
WIDE = {"width": 1920, "height": 1080}
SMALL = {"width": 1024, "height": 768}

if not Path(CHROMIUM).is_file():
    pytest.skip(f"chromium is not installed ({CHROMIUM} missing; Debian: apt-get install chromium); "
                "the browser tests of tace-response web are skipped", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")

from web_client import started_under  # noqa: E402


# --- the server and the browser -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``tace-response web --port 0`` with its session folders under a temporary root."""
    root = tmp_path_factory.mktemp("web")
    log = root / "server.log"
    env = dict(os.environ, TMPDIR=str(root), PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "TACEResponseLib.cli", "web", "--port", "0", "--encoder", "png",
             "--session-timeout", str(SESSION_TIMEOUT), "--max-upload-mb", str(MAX_UPLOAD_MB), "--device", "cpu"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        line = _wait_for_line(log, "TACE_WEB_READY", process, 60)
        yield {"url": line.split()[-1], "root": root, "log": log, "process": process, "started": started}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert not list(root.glob("tace-web-*")), "the launcher left session folders behind"
    _poll(lambda: not started_under(root), 15, "the sessions and their workers to end")


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def demo(server, browser):
    """Session A: a page on the demo case, shared by the tests below in file order."""
    _wait_for_line(server["log"], "spare session", server["process"], 120)  # the page gets a running session
    context = browser.new_context(viewport=WIDE, accept_downloads=True)
    page = context.new_page()
    opened = time.perf_counter()
    page.goto(server["url"])  # the launcher's start page: its script asks for a session (a POST)
    view = _wait_for_view(page)
    yield {"page": page, "view": view, "context": context, "first_view_s": time.perf_counter() - opened,
           "session": _session_folder(server, page), "start_html": page.request.get(server["url"]).text(),
           "session_html": page.request.get(page.url).text()}
    context.close()


def _wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in log.read_text(errors="replace").splitlines():
            if text in line:
                return line
        if process.poll() is not None:
            raise RuntimeError(f"tace-response web exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} not printed after {timeout} s:\n{log.read_text()[-3000:]}")


def _wait_for_view(page, name: str = "Red"):
    page.wait_for_function("() => { const i = document.querySelector('img.image-display-area');"
                           " return i && i.src.startsWith('blob:') && i.naturalWidth > 100; }", timeout=120_000)
    view = _view(page, name)
    _stable(view)
    return view


def _view(page, name: str = "Red"):
    """The streamed image area of a view, found by the name in its bar."""
    title = "3-D view" if name in ("1", "ThreeD") else f"{name} view"
    return page.locator(f".layout-grid-item:has(.tace-view-name[title='{title}']) .remote-controlled-area").first


def _session_folder(server, page) -> Path:
    sid = re.search(r"/s/([0-9a-f]{32})/", page.url).group(1)
    (folder,) = server["root"].glob(f"tace-web-*/{sid}")
    return folder


def _grab(locator) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


def _image(locator) -> np.ndarray:
    """The view's streamed image without the page's overlays (bar, letters, slider)."""
    locator.page.add_style_tag(content=".tace-hide-overlays .tace-view-bar, .tace-hide-overlays .tace-letter, "
                                       ".tace-hide-overlays .tace-wl-text, .tace-hide-overlays .tace-slice-slider, "
                                       ".tace-hide-overlays .tace-colour-bar, .tace-hide-overlays .tace-brush-text "
                                       "{ visibility: hidden; }")
    locator.page.evaluate("() => document.body.classList.add('tace-hide-overlays')")
    try:
        return _grab(locator)
    finally:
        locator.page.evaluate("() => document.body.classList.remove('tace-hide-overlays')")


def _stable(locator, timeout: float = 30.0) -> np.ndarray:
    """A screenshot once two in a row are identical (the stream has settled)."""
    previous, end = _image(locator), time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.4)
        current = _image(locator)
        if current.shape == previous.shape and np.array_equal(current, previous):
            return current
        previous = current
    raise TimeoutError("the view never settled")


def _poll(condition, timeout: float, what: str, interval: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if isinstance(value, np.ndarray) or value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def _state(page, key: str):
    return page.evaluate(f"window.trame.state.get({json.dumps(key)})")


def _set_state(page, key: str, value) -> None:
    page.evaluate(f"window.trame.state.set({json.dumps(key)}, {json.dumps(value)})")


def _info(page, name: str = "Red") -> dict:
    return (_state(page, "view_info") or {}).get(name) or {}


def _in_viewport(page, locator) -> bool:
    box, size = locator.bounding_box(), page.viewport_size
    return box is not None and box["y"] >= 0 and box["x"] >= 0 and box["y"] + box["height"] <= size["height"] \
        and box["x"] + box["width"] <= size["width"]


def tumour_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels of the tumour segment's fill and outline: the only colour over the grey CT when the
    heatmap layer is off and no effect draws a cursor."""
    return image.max(axis=-1) - image.min(axis=-1) > 30


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _same_shape(a: np.ndarray, b: np.ndarray) -> bool:
    """Two masks alike but for at most 1 % of their union (the brush's outline may linger in one)."""
    return (a ^ b).sum() <= 0.01 * (a | b).sum()


def _effect_button(page, icon: str):
    return page.locator(f"nav button:has(i.{icon})").first


def _wait_result(page, timeout: float = 180) -> None:
    _poll(lambda: (not _state(page, "busy") and (_state(page, "result") or {}).get("figures")) or _state(page, "error"),
          timeout=timeout, what="the result and its figures", interval=0.2)
    assert not _state(page, "error"), _state(page, "error")


def _shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path))
    return path


# --- page A: the demo case --------------------------------------------------------------------------
def test_page_opens_on_the_demo_case_with_slicers_view_basics(server, demo):
    from TACEResponseLib.demo.case import DEMO_CASE
    from TACEResponseLib.imaging.phantoms import make_phantom

    page = demo["page"]
    spare = re.search(r"spare session ([0-9a-f]{8}) ready", server["log"].read_text()).group(1)
    assert re.search(r"/s/([0-9a-f]{32})/", page.url).group(1).startswith(spare), "the page did not get the spare"
    # an indicator before any script: the start page's spinner, then the session page's own
    assert 'class="spin"' in demo["start_html"].split("<script", 1)[0], "no indicator on the start page"
    assert 'id="tace-loading"' in demo["session_html"].split("<script", 1)[0], "no indicator before the first script"
    assert not page.locator("#tace-logout").count(), "no users: nothing to log out of"
    assert "demo_case" in page.locator("#tace-case-title").inner_text()
    assert "SYNTHETIC" in page.locator("#tace-case-note").inner_text()
    assert "synthetic" in page.locator("#tace-model-warning").inner_text().lower()
    assert _state(page, "blockers") == [], _state(page, "blockers")
    assert not page.locator("#tace-predict").is_disabled()
    assert tumour_pixels(_image(demo["view"])).sum() > 500, "the demo tumour is not in the view"
    # Slicer's Red view: its name, orientation, slice position and number, letters, W/L
    reference = make_phantom(DEMO_CASE["response"], seed=DEMO_CASE["seed"]).reference
    _poll(lambda: _info(page).get("slice"), 10, "the slice number")
    info = _info(page)
    assert info["orientation"] == "Axial" and info["letters"] == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    number, count = map(int, re.fullmatch(r"slice (\d+) / (\d+)", info["slice"]).groups())
    assert count == reference.shape_kji[0] and 1 <= number <= count
    assert re.fullmatch(r"S: -?\d+\.\d mm", info["offset"])
    assert info["wl"] == "W 350  L 40"  # a CT in HU opens with Slicer's CT-Abdomen preset
    red = page.locator(".layout-grid-item:has(.tace-view-name[title='Red view'])")
    assert red.locator(".tace-letter-left").inner_text() == "R" and red.locator(".tace-letter-top").inner_text() == "A"
    assert f"slice {number} / {count}" in red.locator(".tace-view-bar").inner_text()
    # the whole editor toolbar is visible, and the brush is a 2-D one sized in mm
    drawer = page.locator("#tace-editor-drawer").bounding_box()
    buttons = page.locator("#tace-editor-drawer .v-card-item button")
    assert buttons.count() >= 9
    for n in range(buttons.count()):
        box = buttons.nth(n).bounding_box()
        assert box and box["x"] >= drawer["x"] and box["x"] + box["width"] <= drawer["x"] + drawer["width"] + 0.5
    assert _state(page, "PaintEffectState__use_sphere_brush") is False
    from trame_slicer.segmentation import BrushDiameterMode

    assert _state(page, "PaintEffectState__brush_diameter_mode") == BrushDiameterMode.Absolute.value
    print(f"\nfirst view: {demo['first_view_s']:.1f} s after the page was opened")


def test_window_level_by_left_drag_and_presets(demo):
    page, view = demo["page"], demo["view"]
    before, image_before = _info(page)["wl"], _stable(view)
    box = view.bounding_box()
    x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.7
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y - 80, steps=12)  # right: wider window; up: higher level (Slicer's directions)
    page.mouse.up()
    _poll(lambda: _info(page)["wl"] != before, 20, "the W/L to change")
    window, level = map(float, re.fullmatch(r"W (\S+)\s+L (\S+)", _info(page)["wl"]).groups())
    assert window > 350 and level > 40, _info(page)["wl"]
    _poll(lambda: np.abs(_image(view) - image_before).mean() > 1, 20, "the image to change with the W/L")
    page.locator("#tace-preset-Liver").click()
    _poll(lambda: _info(page)["wl"] == "W 150  L 90", 10, "the liver preset")
    page.locator("#tace-preset-Abdomen").click()
    _poll(lambda: _info(page)["wl"] == "W 350  L 40", 10, "the abdomen preset")
    _poll(lambda: np.array_equal(_image(view), image_before), 20, "the abdomen preset's image: the first one again")


def _paint_stroke(page, view, tumour: np.ndarray) -> None:
    """A Paint stroke from the tumour's centre to past its right edge; back to No tool once it shows."""
    rows, cols = np.nonzero(tumour)
    box = view.bounding_box()
    row, end = int(rows.mean()), int(min(cols.max() + 40, box["width"] - 5))
    y = float(box["y"] + row)
    x0, x1 = float(box["x"] + cols.mean()), float(box["x"] + end)
    assert not tumour_pixels(_stable(view))[row, end - 8], "the stroke must end outside the tumour"
    _effect_button(page, "mdi-brush").click()
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move(x1, y, steps=25)
    page.mouse.up()
    # the view's mouse events are streamed after the button's click: wait for the stroke (its end painted)
    # before No tool
    _poll(lambda: tumour_pixels(_image(view))[row, end - 8], 30, "the painted stroke")
    _effect_button(page, "mdi-cursor-default").click()  # navigation: no brush cursor over the view
    _poll(lambda: "Paint" not in (_state(page, "SegmentEditorState__active_effect_name") or ""), 10, "No tool")


def test_paint_stroke_grows_the_tumour_and_undo_redo_work(demo):
    page, view = demo["page"], demo["view"]
    before = _stable(view)
    tumour = tumour_pixels(before)
    _effect_button(page, "mdi-brush").click()
    caption = page.locator(".tace-brush-text").first.inner_text()
    assert re.fullmatch(r"2-D brush, \d+ mm diameter", caption), caption
    _effect_button(page, "mdi-cursor-default").click()
    _paint_stroke(page, view, tumour)
    after = _stable(view)
    grown = tumour_pixels(after) & ~_dilate(tumour, 2)
    assert grown.sum() > 100, "the stroke did not add to the tumour"
    assert np.nonzero(grown)[1].max() >= np.nonzero(tumour)[1].max() + 20, "the stroke did not reach past the edge"
    page.locator("#tace-undo").click()
    _poll(lambda: _same_shape(tumour_pixels(_image(view)), tumour), 20, "the undo")
    page.locator("#tace-redo").click()
    _poll(lambda: _same_shape(tumour_pixels(_image(view)), tumour_pixels(after)), 20, "the redo")
    assert _state(page, "blockers") == []


def test_cancel_mid_prediction_leaves_no_result(server, demo):
    page, view = demo["page"], demo["view"]
    _poll(lambda: _state(page, "worker_ready"), 180, "the warm prediction worker")
    before = _stable(view)
    workers = _workers(server["root"])
    page.locator("#tace-predict").click()
    page.locator("#tace-cancel").click()  # as soon as it is enabled: the warm prediction takes a second or two
    _poll(lambda: not _state(page, "busy"), timeout=30, what="the run to stop")
    runs = demo["session"] / "runs"
    assert "Cancelled" in page.locator("#tace-status").inner_text()
    assert _state(page, "result") is None and page.locator("#tace-result").count() == 0
    # the cancel ended the worker; the session loads the model again (a warm-up run it removes when done)
    _poll(lambda: _state(page, "worker_ready"), 180, "the worker warm again")
    assert not list(runs.glob("tace-run-*")), "the cancelled run left files"
    assert not (demo["session"] / "result").exists()
    gone = [pid for pid in workers if not Path(f"/proc/{pid}/cmdline").exists()]
    assert len(gone) == 1, f"the cancel should end this session's worker, and only it: {gone} of {workers}"
    assert np.array_equal(_stable(view), before), "the view changed although the run was cancelled"


def _workers(root: Path) -> list[int]:
    """The prediction workers (``tace-response worker``) of the sessions of the server under ``root``."""
    return [pid for pid in started_under(root) if b"worker" in _read(Path(f"/proc/{pid}/cmdline"))]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_predict_shows_progress_summary_heatmap_colour_bar_and_nomogram(demo):
    page, view = demo["page"], demo["view"]
    _poll(lambda: _state(page, "worker_ready"), 180, "the worker to be warm again after the cancel")
    page.locator("#tace-panel-scroll").evaluate("e => e.scrollTop = 0")  # the result lands below the form
    page.locator("#tace-predict").click()
    _poll(lambda: page.locator("#tace-progress").is_visible(), 20, "the progress")
    progress, predict = page.locator("#tace-progress").bounding_box(), page.locator("#tace-predict").bounding_box()
    assert abs((progress["y"] + progress["height"] / 2) - (predict["y"] + predict["height"] / 2)) < 10, "not beside Predict"
    assert progress["x"] > predict["x"] + predict["width"]
    _wait_result(page)
    headline = page.locator("#tace-summary-class").inner_text().strip()
    assert headline in ("CR", "PR", "SD", "PD")
    assert _in_viewport(page, page.locator("#tace-summary")), "the summary is not in view"
    assert _in_viewport(page, page.locator("#tace-predict"))
    assert page.locator("#tace-badge-synthetic").is_visible()
    assert page.locator("#tace-result-class-0").inner_text().strip() == headline  # the single tumour = the patient
    assert "risk group" in page.locator("#tace-risk").inner_text()
    _poll(lambda: _in_viewport(page, page.locator("#tace-result-warning")), 10, "the result scrolled into view")
    assert _state(page, "heatmap_visible") is True
    with_heat = _stable(view)
    assert page.locator(".tace-colour-bar").first.is_visible()
    gradient = page.locator(".tace-colour-bar-scale").first.evaluate("e => getComputedStyle(e).backgroundImage")
    from matplotlib import colormaps

    top = tuple(int(v * 255) for v in colormaps["inferno"](1.0)[:3])
    assert f"rgb({top[0]}, {top[1]}, {top[2]}) 100%" in gradient, gradient
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    _shot(page, "result_1920x1080.png")
    page.locator("#tace-heatmap-visible").click()  # the heatmap layer off: CT + tumour only
    _poll(lambda: _state(page, "heatmap_visible") is False, timeout=10, what="the switch")
    _poll(lambda: not np.array_equal(_image(view), with_heat), timeout=20, what="the view without the heatmap")
    without = _stable(view)
    assert page.locator(".tace-colour-bar").count() == 0, "a colour bar without a heatmap"
    heat = np.abs(with_heat - without).sum(axis=-1) > 30
    tumour = tumour_pixels(without)
    assert tumour.sum() > 500 and heat.sum() > 100, "no heatmap pixels in the view"
    outside = heat & ~_dilate(tumour, 2)
    assert outside.sum() <= 0.005 * heat.sum(), f"{outside.sum()} of {heat.sum()} heatmap pixels lie outside the tumour"
    page.locator("#tace-heatmap-visible").click()
    _poll(lambda: _state(page, "heatmap_visible") is True, timeout=10, what="the switch back")
    # the nomogram opens full size
    thumb = page.locator("#tace-nomogram-figure")
    thumb.scroll_into_view_if_needed()
    small = thumb.bounding_box()["width"]
    thumb.click()
    full = page.locator("#tace-figure-full")
    _poll(lambda: full.count() and full.bounding_box()["width"] > 2.5 * small, 10, "the nomogram full size")
    natural = full.evaluate("e => [e.naturalWidth, e.getBoundingClientRect().width]")
    assert natural[1] >= min(natural[0], WIDE["width"]) * 0.6, natural
    _shot(page, "nomogram_1920x1080.png")
    page.locator("#tace-figure-close").click()
    _poll(lambda: page.locator("#tace-figure-full").count() == 0, 10, "the dialog to close")
    demo["headline"] = headline


def _is_stale(page) -> bool:
    return bool(_state(page, "stale")) and "tace-stale" in (page.locator("#tace-summary-body").get_attribute("class") or "")


def test_stale_result_greyed_on_any_change_and_current_again_after_undo(demo):
    page, view = demo["page"], demo["view"]
    assert not _is_stale(page)
    # the segment: a stroke makes the result stale; its undo brings the predicted tumour back
    _paint_stroke(page, view, tumour_pixels(_stable(view)))
    _poll(lambda: _is_stale(page), 20, "the result to go stale after a stroke")
    stale_note = page.locator("#tace-stale")
    assert stale_note.is_visible() and "inputs changed — run Predict again" in stale_note.inner_text()
    assert _in_viewport(page, stale_note)
    _shot(page, "stale_1920x1080.png")
    page.locator("#tace-undo").click()
    _poll(lambda: not _is_stale(page), 20, "the result to be current after the undo")
    # a clinical value
    values = dict(_state(page, "clinical_values"))
    _set_state(page, "clinical_values", {**values, "tumour_size": float(values["tumour_size"]) + 1})
    _poll(lambda: _is_stale(page), 20, "stale after a clinical value changed")
    _set_state(page, "clinical_values", values)
    _poll(lambda: not _is_stale(page), 20, "current with the value back")
    # the image: the portal volume (the survival signature's) replaced by the arterial one
    phases = dict(_state(page, "phase_nodes"))
    _set_state(page, "phase_nodes", {**phases, "portal": phases["arterial"]})
    _poll(lambda: _is_stale(page), 20, "stale after another volume was chosen")
    _set_state(page, "phase_nodes", phases)
    _poll(lambda: not _is_stale(page), 20, "current with the volume back")


def test_survival_value_outside_the_training_range_is_marked(demo):
    from TACEResponseLib.survival.model import load_survival_model

    page = demo["page"]
    model = load_survival_model(Path(_state(page, "nomogram")))
    low, high = model.variables["ALT"].training_range
    values = dict(_state(page, "clinical_values"))
    outside = round(high * 3)
    _set_state(page, "clinical_values", {**values, "ALT": outside})
    field = page.locator("#tace-field-ALT")
    _poll(lambda: "tace-field-outside" in (field.get_attribute("class") or ""), 10, "the ALT field marked")
    assert "outside the training range" in field.inner_text() and str(outside) in field.inner_text()
    page.locator("#tace-predict").click()
    _poll(lambda: _state(page, "busy"), 10, "the prediction to start")
    _wait_result(page)
    survival = _state(page, "result")["survival"]
    assert "ALT" in survival["extrapolated_names"]
    assert page.locator("#tace-badge-extrapolated").is_visible()
    numbers = page.locator("#tace-survival-numbers")
    assert numbers.locator("text=⚠ extrapolated").count() == len(survival["at"]) > 0
    assert "ALT" in page.locator("#tace-extrapolated").inner_text() and str(outside) in page.locator("#tace-extrapolated").inner_text()
    page.locator("#tace-extrapolated").scroll_into_view_if_needed()
    _shot(page, "extrapolated_1920x1080.png")
    _set_state(page, "clinical_values", values)
    _poll(lambda: _is_stale(page), 20, "stale once ALT is back in range")
    demo["headline"] = page.locator("#tace-summary-class").inner_text().strip()


def test_downloads_agree_and_the_scene_loads_in_slicer_core(demo, tmp_path):
    from TACEResponseLib.frontend.mrml import (
        HEATMAP_ATTRIBUTE,
        create_headless_scene,
        read_result_from_scene,
        segment_mask_from_node,
        volume_from_node,
    )
    from TACEResponseLib.imaging.volume_io import read_volume

    page = demo["page"]
    files = {}
    for kind in ("json", "csv", "nrrd", "mrb"):
        with page.expect_download(timeout=60_000) as download:
            page.locator(f"#tace-download-{kind}").click()
        files[kind] = tmp_path / download.value.suggested_filename
        download.value.save_as(files[kind])
    result = json.loads(files["json"].read_text())
    assert result["tumours"][0]["predicted_class"] == demo["headline"]
    import csv

    with open(files["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    tumour_rows = [r for r in rows if not r["tumour"].startswith("patient")]
    assert len(tumour_rows) == len(result["tumours"]) + len(result.get("not_assessable") or [])
    assert tumour_rows[0]["predicted"] == demo["headline"]
    heatmap = read_volume(files["nrrd"])
    assert heatmap.array.max() > 0

    context = create_headless_scene()
    scene = context.scene
    assert scene.ReadFromMRB(str(files["mrb"])), "slicer-core could not read the downloaded scene"
    (loaded,) = read_result_from_scene(scene)
    assert loaded.tumours[0].predicted_class == demo["headline"]
    heat_nodes = [n for n in scene.GetNodesByClass("vtkMRMLScalarVolumeNode") if n.GetAttribute(HEATMAP_ATTRIBUTE)]
    assert len(heat_nodes) == 1
    reference = scene.GetNodeByID(heat_nodes[0].GetAttribute(HEATMAP_ATTRIBUTE + ".Reference"))
    assert reference is not None and reference.IsA("vtkMRMLScalarVolumeNode"), "the heatmap names the volume it overlays"
    (segmentation,) = list(scene.GetNodesByClass("vtkMRMLSegmentationNode"))
    heat = volume_from_node(heat_nodes[0]).array
    from TACEResponseLib.prediction.cam import heatmap_values

    # the file stores uint8 levels (255 = the strongest activation); the scene's node holds the same in [0, 1]
    assert np.allclose(heat, heatmap_values(heatmap).array, atol=1e-6)
    # the tumour on the heatmap's own grid (the box of the reference grid the patches cover)
    mask = segment_mask_from_node(segmentation, result["tumours"][0]["segment_id"], heat_nodes[0]).array > 0
    assert (heat > 0).sum() > 100 and not ((heat > 0) & ~mask).any(), "heatmap voxels outside the tumour segment"
    scene.Clear(1)


def test_1024_by_768_still_shows_the_image_and_predict(demo):
    page, view = demo["page"], demo["view"]
    page.set_viewport_size(SMALL)
    _poll(lambda: not page.locator("#tace-editor-drawer").is_visible() or
          page.locator("#tace-editor-drawer").bounding_box()["x"] < -100, 10, "the editor folded away")
    image = _stable(view)
    box = view.bounding_box()
    assert box["width"] >= 500 and box["height"] >= 500, box
    assert tumour_pixels(image).sum() > 200, "the tumour is not visible at 1024×768"
    assert _in_viewport(page, page.locator("#tace-predict")) and _in_viewport(page, page.locator("#tace-summary"))
    _shot(page, "result_1024x768.png")
    page.locator("#tace-editor-toggle").click()  # the editor comes back over the views
    _poll(lambda: page.locator("#tace-editor-drawer").bounding_box()["x"] >= -1, 10, "the editor drawer")
    assert page.locator("nav button:has(i.mdi-brush)").first.is_visible()
    _shot(page, "editor_1024x768.png")
    page.keyboard.press("Escape")
    page.set_viewport_size(WIDE)


# --- page B: a second session, uploads ----------------------------------------------------------------
def test_two_sessions_keep_their_data_apart_and_dicom_shows_its_identity(server, browser, demo, realdata, tmp_path):
    page_a = demo["page"]
    context = browser.new_context(viewport=WIDE)
    page_b = context.new_page()
    page_b.goto(server["url"])
    view_b = _wait_for_view(page_b)
    session_b = _session_folder(server, page_b)
    assert session_b != demo["session"]
    assert _state(page_b, "result") is None and page_b.locator("#tace-result").count() == 0
    assert _state(page_a, "result") is not None
    tumour_b = tumour_pixels(_stable(view_b)).sum()
    _set_state(page_a, "heatmap_visible", False)
    tumour_a = tumour_pixels(_stable(demo["view"])).sum()
    assert tumour_b < tumour_a, "B shows A's painted stroke"
    from TACEResponseLib.imaging.phantoms import make_phantom
    from TACEResponseLib.imaging.volume_io import write_volume

    small = make_phantom("SD", shape_kji=(40, 64, 72), spacing_ijk=(2.0, 2.0, 2.5), seed=3)
    upload = write_volume(small.phases["arterial"], tmp_path / "uploaded_ct.nrrd")
    page_b.locator("#tace-image-input").set_input_files(str(upload))
    _poll(lambda: "uploaded_ct" in page_b.locator("#tace-case-title").inner_text(), timeout=60, what="B's upload")
    assert len(_state(page_b, "volumes")) == 1
    _poll(lambda: _info(page_b).get("slice", "").endswith(f"/ {small.reference.shape_kji[0]}"), 10, "B's slice count")
    # a DICOM series whose files have no suffix (recognised by content) opens as one volume
    from test_io import _write_dicom_series

    series = tmp_path / "series"
    series.mkdir()
    portal = small.phases["portal"]
    _write_dicom_series(portal.with_array(np.round(portal.array).astype(np.int16)), series)  # DICOM stores integers
    for n, path in enumerate(sorted(series.iterdir())):
        path.rename(series / f"IM{n:04d}")
    page_b.locator("#tace-image-input").set_input_files(sorted(str(p) for p in series.iterdir()))
    _poll(lambda: page_b.locator("#tace-case-title").inner_text().strip() == "IM0000", timeout=60, what="B's DICOM")
    assert not _state(page_b, "error"), _state(page_b, "error")
    assert len(_state(page_b, "volumes")) == 1
    # a real scanner's series (Siemens, JPEG 2000): its study and series in the title bar
    import pydicom

    folder = realdata("totalseg") / "example_ct_dicom"
    header = pydicom.dcmread(str(sorted(folder.iterdir())[0]), stop_before_pixels=True)
    page_b.locator("#tace-dicom-input").set_input_files(str(folder))
    _poll(lambda: page_b.locator("#tace-case-title").inner_text().strip() == folder.name, 90, "the real series")
    identity = page_b.locator("#tace-case-identity").inner_text()
    date = str(header.StudyDate)
    assert f"Study {date[:4]}-{date[4:6]}-{date[6:]}" in identity, identity
    assert f"{header.SeriesDescription} ({header.Modality})" in identity, identity
    _shot(page_b, "dicom_1920x1080.png")
    assert "demo_case" in page_a.locator("#tace-case-title").inner_text()
    assert len(_state(page_a, "volumes")) == 2
    _set_state(page_a, "heatmap_visible", True)
    context.close()
    _poll(lambda: not session_b.exists(), timeout=SESSION_TIMEOUT + 30, what="B's folder to be removed")
    assert demo["session"].exists()


# --- page C: a real multifocal liver ---------------------------------------------------------------
@pytest.fixture(scope="module")
def lits_case(realdata, tmp_path_factory):
    """LiTS volume 117 as test_realdata_liver.py writes it (axial LPS, 1.4 mm), its 70 tumour islands."""
    import SimpleITK as sitk
    from scipy.ndimage import label

    from TACEResponseLib.imaging.geometry import Volume, ijk_to_ras_from
    from TACEResponseLib.imaging.volume_io import write_volume

    folder = realdata("lits117")
    image = sitk.PermuteAxes(sitk.ReadImage(str(folder / "img_117.mrc")), [2, 1, 0])
    labels = sitk.PermuteAxes(sitk.ReadImage(str(folder / "lab_117.mrc")), [2, 1, 0])
    ct = sitk.GetArrayFromImage(image).astype(np.float32)
    tumour = (sitk.GetArrayFromImage(labels) == 2).astype(np.uint8)
    matrix = ijk_to_ras_from([1.4] * 3, np.diag([-1.0, -1.0, 1.0]), [90.0, 120.0, -40.0])
    out = tmp_path_factory.mktemp("lits")
    islands, count = label(tumour > 0, structure=np.ones((3, 3, 3), bool))
    return {"image": write_volume(Volume(ct, matrix, "lits117"), out / "lits117.nrrd"),
            "labelmap": write_volume(Volume(tumour, matrix, "tumour"), out / "lits117_tumour.nrrd"),
            "islands": islands, "count": count, "matrix": matrix}


@pytest.fixture(scope="module")
def lits_page(server, browser, lits_case, demo):
    context = browser.new_context(viewport=WIDE, accept_downloads=True)
    page = context.new_page()
    page.goto(server["url"])
    _wait_for_view(page)
    page.locator("#tace-image-input").set_input_files(str(lits_case["image"]))
    _poll(lambda: "lits117" in page.locator("#tace-case-title").inner_text(), 60, "the LiTS CT")
    page.locator("#tace-segmentation-input").set_input_files(str(lits_case["labelmap"]))
    _poll(lambda: "Opened segmentation" in (_state(page, "status") or ""), 60, "the LiTS segmentation")
    yield page
    context.close()


def _largest_slice(islands: np.ndarray, island: int) -> int:
    """The axial slice (k, 0-based) with most voxels of one island, by scipy's labelling."""
    return int(np.argmax((islands == island).reshape(islands.shape[0], -1).sum(axis=1)))


def test_multifocal_liver_rows_jump_labels_and_unreliable_badge(lits_page, lits_case):
    page = lits_page
    _set_state(page, "nomogram", "")  # response only: this CT has no portal phase or clinical values
    _poll(lambda: _state(page, "blockers") == [], 20, "Predict enabled")
    _poll(lambda: _state(page, "worker_ready"), 180, "the warm worker")
    page.locator("#tace-predict").click()
    _poll(lambda: _state(page, "busy"), 10, "the prediction to start")
    _poll(lambda: not _state(page, "busy") and _state(page, "result"), 180, "the result")
    with page.expect_download(timeout=60_000) as download:
        page.locator("#tace-download-json").click()
    result = json.loads(Path(download.value.path()).read_text())
    assessed, skipped = result["tumours"], result["not_assessable"]
    assert len(assessed) + len(skipped) == lits_case["count"] == 70
    rows = page.locator("#tace-tumour-table tbody tr")
    assert rows.count() == len(assessed) > 1
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())] == \
        [t["predicted_class"] for t in assessed]
    table = page.locator("#tace-tumour-table-box")
    assert table.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), "the table is wider than the panel"
    assert [h.inner_text() for h in page.locator("#tace-tumour-table th").all()] == ["Tumour", "Class", "P", "ml", "Flags"]
    folded = page.locator("#tace-not-assessable")
    assert f"{len(skipped)} tumour(s) not assessable" in folded.inner_text()
    assert not folded.evaluate("e => e.open") and not page.locator("#tace-row-s0").is_visible()
    # the badge, one plain sentence, the details folded
    odd = [t for t in assessed if (t.get("trust") or {}).get("unlike_training")]
    assert odd, "the demo model sees this real CT as unlike its SYNTHETIC training data"
    assert page.locator("#tace-badge-unreliable").is_visible() and _in_viewport(page, page.locator("#tace-badge-unreliable"))
    assert page.locator("#tace-unreliable-sentence").inner_text().startswith("Unreliable:")
    assert not page.locator("#tace-unreliable-details").evaluate("e => e.open")
    # a row click: the views go to that tumour's largest slice, which shows its label
    _set_state(page, "heatmap_visible", False)
    view = _view(page)
    index = min(3, len(assessed) - 1)
    island = assessed[index]["island"]
    sizes = np.bincount(lits_case["islands"].ravel())[1:]
    scipy_island = int(np.argsort(-sizes, kind="stable")[island - 1]) + 1  # numbered by size, largest = #1
    expected = _largest_slice(lits_case["islands"], scipy_island)
    rows.nth(index).click()
    _poll(lambda: _info(page).get("slice", "").startswith(f"slice {expected + 1} /"), 20, "the jump to the tumour")
    image = _stable(view)
    label = (image[..., 0] > 200) & (image[..., 1] > 170) & (image[..., 2] < 110)  # the labels' yellow text
    assert label.sum() > 20, "no tumour label in the view"
    assert "tace-row-selected" in rows.nth(index).get_attribute("class")
    assert page.locator("#tace-tumour-card").inner_text().startswith(assessed[index]["segment_name"])
    _shot(page, "multifocal_1920x1080.png")
    folded.locator("summary").click()
    scipy_island = int(np.argsort(-sizes, kind="stable")[skipped[0]["island"] - 1]) + 1
    expected = _largest_slice(lits_case["islands"], scipy_island)
    page.locator("#tace-row-s0").click()
    _poll(lambda: _info(page).get("slice", "").startswith(f"slice {expected + 1} /"), 20, "the jump to a folded tumour")


def test_four_up_layout_views_fitted_and_3d_reset(lits_page, lits_case):
    page = lits_page
    page.locator(".tace-layout .v-field").click()
    page.locator(".v-list-item", has_text="Four-Up").click()
    _poll(lambda: page.locator(".tace-view-name").count() == 4, 20, "four views")
    assert sorted(page.locator(".tace-view-name").all_inner_texts()) == ["1", "G", "R", "Y"]
    # Slicer's arrangement: Red and 3-D on top, Yellow and Green below
    titles = {"R": "Red view", "Y": "Yellow view", "G": "Green view", "1": "3-D view"}
    boxes = {n: page.locator(f".tace-view-name[title='{t}']").bounding_box() for n, t in titles.items()}
    assert boxes["R"]["y"] == boxes["1"]["y"] < boxes["Y"]["y"] == boxes["G"]["y"]
    assert boxes["R"]["x"] == boxes["Y"]["x"] < boxes["1"]["x"] == boxes["G"]["x"]
    _poll(lambda: all(_info(page, n).get("letters") for n in ("Yellow", "Green")), 20, "the new views' annotations")
    for name in ("Yellow", "Green"):
        letters = _info(page, name)["letters"]
        assert (letters["top"], letters["bottom"]) == ("S", "I")
    assert {_info(page, "Yellow")["letters"]["left"], _info(page, "Yellow")["letters"]["right"]} == {"A", "P"}
    assert (_info(page, "Green")["letters"]["left"], _info(page, "Green")["letters"]["right"]) == ("R", "L")
    for name in ("Red", "Yellow", "Green"):
        image = _stable(_view(page, name))
        bright = np.flatnonzero((image.max(axis=-1) > 40).any(axis=0))
        left, right = bright[0], image.shape[1] - 1 - bright[-1]
        rows = np.flatnonzero((image.max(axis=-1) > 40).any(axis=1))
        assert abs(int(left) - int(right)) <= 4, f"{name}: the image is not centred ({left} / {right})"
        assert rows[-1] - rows[0] >= 0.9 * image.shape[0] or bright[-1] - bright[0] >= 0.9 * image.shape[1], \
            f"{name}: the image does not fill the view"
    three_d = _stable(_view(page, "1"))
    assert (np.abs(three_d - three_d[2, 2]).sum(axis=-1) > 60).mean() > 0.05, "the 3-D view shows nothing"
    _shot(page, "four_up_1920x1080.png")


# --- page A again: uploads ---------------------------------------------------------------------------
def test_uploads_are_limited_in_type_and_size(server, demo, tmp_path):
    page = demo["page"]
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    page.locator("#tace-image-input").set_input_files(str(text))
    _poll(lambda: "not an accepted image file" in (_state(page, "error") or ""), timeout=20, what="the type refusal")
    # files dropped on the views go through the same checks
    page.evaluate("""() => { const data = new DataTransfer();
        data.items.add(new File(['not an image'], 'dropped.txt', {type: 'text/plain'}));
        document.getElementById('tace-views').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true})); }""")
    _poll(lambda: "dropped.txt: not an accepted image file" in (_state(page, "error") or ""), timeout=20,
          what="the refusal of the dropped file")
    large = tmp_path / "large.nrrd"
    with open(large, "wb") as handle:
        handle.truncate((MAX_UPLOAD_MB + 1) * 1024 * 1024)
    page.locator("#tace-image-input").set_input_files(str(large))
    _poll(lambda: "allowed per file" in (_state(page, "error") or ""), timeout=20, what="the size refusal")
    assert "demo_case" in page.locator("#tace-case-title").inner_text()
    # the server refuses too, whatever the page does
    base = page.url
    refused = page.request.post(base + "upload?kind=image&batch=x&name=notes.txt", data=b"x" * 200)
    assert refused.status == 415 and "not an accepted" in refused.json()["error"]
    refused = page.request.post(base + "upload?kind=image&batch=x&name=big.nrrd", data=large.read_bytes())
    assert refused.status == 413
    assert not list((demo["session"] / "uploads").rglob("*.*"))
