"""``tace-response web`` in a real browser: Debian's chromium driven by Playwright.

One ``tace-response web`` server (a subprocess: the command as a user starts it) serves the whole
module; each test page gets its own session process from it. Covered: the page opens on the
SYNTHETIC demo case; a stroke of Slicer's Paint effect grows the tumour; Cancel mid-prediction
leaves no result; Predict shows the class and switches the heatmap layer on, and a screenshot of
the slice view with the layer on and off shows heatmap pixels only over the tumour; the JSON, CSV,
heatmap NRRD and .mrb downloads agree with the page, and the .mrb loads back in slicer-core with
the heatmap inside the segment; two sessions keep their data apart, and a session's folder goes
when its page closes; uploads are limited in type and size (in the page and by the server).

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
#: where the page screenshot with a prediction goes (README: Resources/Screenshots/web_page.png)
SCREENSHOT = Path(os.environ.get("TACE_WEB_SCREENSHOT", REPO / "build" / "web-test" / "web_page.png"))
SESSION_TIMEOUT = 4  # s a session lives on after its page closed
MAX_UPLOAD_MB = 8

if not Path(CHROMIUM).is_file():
    pytest.skip(f"chromium is not installed ({CHROMIUM} missing; Debian: apt-get install chromium); "
                "the browser tests of tace-response web are skipped", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")


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


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def demo(server, browser):
    """Session A: a page on the demo case, shared by the tests below in file order."""
    context = browser.new_context(viewport={"width": 1500, "height": 900}, accept_downloads=True)
    page = context.new_page()
    opened = time.perf_counter()
    page.goto(server["url"])
    view = _wait_for_view(page)
    yield {"page": page, "view": view, "context": context, "first_view_s": time.perf_counter() - opened,
           "session": _session_folder(server, page)}
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


def _wait_for_view(page):
    page.wait_for_function("() => { const i = document.querySelector('img.image-display-area');"
                           " return i && i.src.startsWith('blob:') && i.naturalWidth > 100; }", timeout=120_000)
    view = page.locator(".remote-controlled-area").first
    _stable(view)
    return view


def _session_folder(server, page) -> Path:
    sid = re.search(r"/s/([0-9a-f]{32})/", page.url).group(1)
    (folder,) = server["root"].glob(f"tace-web-*/{sid}")
    return folder


def _grab(locator) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


def _stable(locator, timeout: float = 30.0) -> np.ndarray:
    """A screenshot once two in a row are identical (the stream has settled)."""
    previous, end = _grab(locator), time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.4)
        current = _grab(locator)
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


def _effect_button(page, icon: str):
    return page.locator(f"nav button:has(i.{icon})").first


# --- tests (in file order: they share session A) ---------------------------------------------------
def test_page_opens_on_the_demo_case(server, demo):
    page = demo["page"]
    assert "demo_case" in page.locator("#tace-case-title").inner_text()
    assert "SYNTHETIC" in page.locator("#tace-case-note").inner_text()
    assert "synthetic" in page.locator("#tace-model-warning").inner_text().lower()
    assert _state(page, "blockers") == [], _state(page, "blockers")
    assert not page.locator("#tace-predict").is_disabled()
    view = _grab(demo["view"])
    assert tumour_pixels(view).sum() > 500, "the demo tumour is not in the view"
    first = time.perf_counter() - server["started"]
    print(f"\nfirst view: {demo['first_view_s']:.1f} s after the page was opened, {first:.1f} s after the command started")


def test_paint_stroke_grows_the_tumour(demo):
    page, view = demo["page"], demo["view"]
    before = _stable(view)
    tumour = tumour_pixels(before)
    rows, cols = np.nonzero(tumour)
    box = view.bounding_box()
    y = float(box["y"] + rows.mean())
    x0, x1 = float(box["x"] + cols.mean()), float(box["x"] + min(cols.max() + 40, box["width"] - 5))
    _effect_button(page, "mdi-brush").click()
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move(x1, y, steps=25)
    page.mouse.up()
    _poll(lambda: tumour_pixels(_grab(view)).sum() > tumour.sum() + 100, timeout=30, what="the painted stroke")
    _effect_button(page, "mdi-cursor-default").click()  # navigation: no brush cursor over the view
    _poll(lambda: _state(page, "SegmentEditorState__active_effect_name") != "Paint", timeout=10, what="No tool")
    after = _stable(view)
    grown = tumour_pixels(after) & ~_dilate(tumour, 2)
    grown_cols = np.nonzero(grown)[1]
    assert grown.sum() > 100, "the stroke did not add to the tumour"
    assert grown_cols.max() >= cols.max() + 20, "the stroke did not reach past the tumour's edge"
    assert _state(page, "blockers") == []


def test_cancel_mid_prediction_leaves_no_result(demo):
    page, view = demo["page"], demo["view"]
    before = _stable(view)
    page.locator("#tace-predict").click()
    _poll(lambda: _state(page, "busy"), timeout=20, what="the prediction to start")
    runs = demo["session"] / "runs"
    _poll(lambda: any(runs.glob("tace-run-*/inputs/*.nrrd")), timeout=20, what="the run's inputs")
    time.sleep(0.5)
    page.locator("#tace-cancel").click()
    _poll(lambda: not _state(page, "busy"), timeout=30, what="the run to stop")
    assert "Cancelled" in page.locator("#tace-status").inner_text()
    assert _state(page, "result") is None and page.locator("#tace-result").count() == 0
    assert not list(runs.glob("tace-run-*")), "the cancelled run left files"
    assert not (demo["session"] / "result").exists()
    predict = subprocess.run(["pgrep", "-f", f"TACEResponseLib.cli predict.*{demo['session']}"], capture_output=True)
    assert predict.returncode == 1, "the prediction process still runs"
    assert np.array_equal(_stable(view), before), "the view changed although the run was cancelled"


def test_predict_shows_class_and_heatmap_only_over_the_tumour(demo):
    page, view = demo["page"], demo["view"]
    page.locator("#tace-predict").click()
    seen = set()

    def done():
        seen.add(_state(page, "progress"))
        return page.locator(".tace-result-class").count() > 0 or _state(page, "error")

    _poll(done, timeout=180, what="the result", interval=0.2)
    assert not _state(page, "error"), _state(page, "error")
    assert any(0 < (p or 0) < 100 for p in seen), f"no progress seen between 0 and 100: {sorted(seen)}"
    headline = page.locator("#tace-result-class-0").inner_text().strip()
    assert headline in ("CR", "PR", "SD", "PD")
    assert "SYNTHETIC" in page.locator("#tace-result-warning").inner_text().upper()
    assert page.locator("#tace-nomogram-figure").count() == 1 and page.locator("#tace-survival-figure").count() == 1
    assert "risk group" in page.locator("#tace-risk").inner_text()
    assert _state(page, "heatmap_visible") is True
    with_heat = _stable(view)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.locator("#tace-result").evaluate("e => e.scrollIntoView()")  # the panel shows the result
    page.screenshot(path=str(SCREENSHOT))
    page.locator("#tace-heatmap-visible").click()  # the heatmap layer off: CT + tumour only
    _poll(lambda: _state(page, "heatmap_visible") is False, timeout=10, what="the switch")
    without = _poll(lambda: (lambda im: im if not np.array_equal(im, with_heat) else None)(_grab(view)),
                    timeout=20, what="the view without the heatmap")
    without = _stable(view)
    heat = np.abs(with_heat - without).sum(axis=-1) > 30
    tumour = tumour_pixels(without)
    assert tumour.sum() > 500
    assert heat.sum() > 100, "no heatmap pixels in the view"
    outside = heat & ~_dilate(tumour, 2)
    assert outside.sum() <= 0.005 * heat.sum(), f"{outside.sum()} of {heat.sum()} heatmap pixels lie outside the tumour"
    page.locator("#tace-heatmap-visible").click()
    _poll(lambda: _state(page, "heatmap_visible") is True, timeout=10, what="the switch back")
    demo["headline"] = headline


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


def test_two_sessions_keep_their_data_apart(server, browser, demo, tmp_path):
    page_a = demo["page"]
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page_b = context.new_page()
    page_b.goto(server["url"])
    view_b = _wait_for_view(page_b)
    session_b = _session_folder(server, page_b)
    assert session_b != demo["session"]
    # B sees the untouched demo case: no stroke, no result, its own state
    assert _state(page_b, "result") is None and page_b.locator("#tace-result").count() == 0
    assert _state(page_a, "result") is not None
    tumour_b = tumour_pixels(_stable(view_b)).sum()
    tumour_a = tumour_pixels(_stable(demo["view"])).sum()
    assert tumour_b < tumour_a, "B shows A's painted stroke"
    # an upload into B changes B only
    from TACEResponseLib.imaging.phantoms import make_phantom
    from TACEResponseLib.imaging.volume_io import write_volume

    small = make_phantom("SD", shape_kji=(40, 64, 72), spacing_ijk=(2.0, 2.0, 2.5), seed=3)
    upload = write_volume(small.phases["arterial"], tmp_path / "uploaded_ct.nrrd")
    page_b.locator("#tace-image-input").set_input_files(str(upload))
    _poll(lambda: "uploaded_ct" in page_b.locator("#tace-case-title").inner_text(), timeout=60, what="B's upload")
    assert len(_state(page_b, "volumes")) == 1
    # a DICOM series whose files have no suffix (recognised by content) opens as one volume
    from test_io import _write_dicom_series

    series = tmp_path / "series"
    series.mkdir()
    portal = small.phases["portal"]
    _write_dicom_series(portal.with_array(np.round(portal.array).astype(np.int16)), series)  # DICOM stores integers
    files = sorted(series.iterdir())
    for n, path in enumerate(files):
        path.rename(series / f"IM{n:04d}")
    page_b.locator("#tace-image-input").set_input_files(sorted(str(p) for p in series.iterdir()))
    _poll(lambda: page_b.locator("#tace-case-title").inner_text().strip() == "IM0000", timeout=60,
          what="B's DICOM upload")
    assert not _state(page_b, "error"), _state(page_b, "error")
    assert len(_state(page_b, "volumes")) == 1
    assert "demo_case" in page_a.locator("#tace-case-title").inner_text()
    assert len(_state(page_a, "volumes")) == 2
    context.close()
    _poll(lambda: not session_b.exists(), timeout=SESSION_TIMEOUT + 30, what="B's folder to be removed")
    assert demo["session"].exists()


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
