"""The page's "Assess response" view in a real browser (Debian's chromium driven by Playwright, as
Testing/test_web.py does): the SYNTHETIC treatment series' baseline opened by ``tace-response web --image …
--segmentation …``, each follow-up uploaded through the page's own buttons and taken as a visit, then
assessed: the known categories per criterion, the candidate new lesion and the overlays on the page.

Skipped, with the reason, where chromium, Playwright or the web extra is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
#: the page with the assessment, for docs/assessment.md (Resources/Screenshots/assess_web.png)
SCREENSHOT = Path(os.environ.get("TACE_ASSESS_WEB_SCREENSHOT",
                                 Path(__file__).resolve().parents[1] / "build" / "web-test" / "assess_web.png"))

if not Path(CHROMIUM).is_file():
    pytest.skip(f"chromium is not installed ({CHROMIUM} missing; Debian: apt-get install chromium); the browser test "
                "of the assess view is skipped", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
pytestmark = pytest.mark.slow


def _poll(condition, timeout: float, what: str, interval: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def _state(page, key: str):
    return page.evaluate(f"window.trame.state.get({key!r})")


@pytest.fixture(scope="module")
def server(treatment_files, tmp_path_factory):
    """``tace-response web`` whose sessions open on the series' baseline (arterial, pre-contrast, segmentation)."""
    root = tmp_path_factory.mktemp("web_assess")
    log = root / "server.log"
    baseline = treatment_files["baseline"]
    command = [sys.executable, "-m", "TACEResponseLib.cli", "web", "--port", "0", "--encoder", "png", "--device", "cpu",
               "--session-timeout", "4", "--image", baseline["arterial"], "--image", baseline["precontrast"],
               "--segmentation", baseline["segmentation"]]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                   env=dict(os.environ, TMPDIR=str(root), PYTHONUNBUFFERED="1"))
    try:
        def ready():
            if process.poll() is not None:
                raise RuntimeError(f"tace-response web exited:\n{log.read_text()[-3000:]}")
            return next((line for line in log.read_text(errors="replace").splitlines() if "TACE_WEB_READY" in line), None)

        yield _poll(ready, 60, "the server").split()[-1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def page(server):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        tab = context.new_page()
        tab.goto(server)  # the launcher's start page, which asks for a session (a POST) once it has painted

        def session_page() -> bool:
            try:
                return tab.evaluate("() => !!(window.trame && window.trame.state)")
            except playwright_api.Error:  # the start page navigating to the session's page meanwhile
                return False

        _poll(session_page, 120, "the page")
        _poll(lambda: len(_state(tab, "volumes") or []) == 2, 120, "the baseline case")
        yield tab
        context.close()
        browser.close()


def _open_visit(page, files: dict) -> None:
    """Upload a visit's images (arterial first by name, then pre-contrast) and its segmentation with the page's buttons."""
    before = _state(page, "case_title")
    page.locator("#tace-image-input").set_input_files([files["arterial"], files["precontrast"]])
    _poll(lambda: _state(page, "case_title") != before and len(_state(page, "volumes")) == 2, 60, "the images")
    page.locator("#tace-segmentation-input").set_input_files(files["segmentation"])
    _poll(lambda: "Opened segmentation" in (_state(page, "status") or "") or _state(page, "error"), 60,
          "the segmentation")
    assert not _state(page, "error"), _state(page, "error")


def test_the_assess_view_gives_the_known_categories(page, treatment_files):
    # the baseline is the open case; its pre-contrast volume is recognised by name
    precontrast = _state(page, "assess_precontrast")
    assert precontrast and "precontrast" in next(v["title"] for v in _state(page, "volumes") if v["value"] == precontrast)
    page.locator("#tace-assess-baseline").click()
    _poll(lambda: len(_state(page, "assess_visits")) == 1, 30, "the baseline visit")
    assert page.locator("#tace-assess-run").is_disabled()  # one visit: nothing to compare yet
    for number, name in enumerate(("followup1", "followup2"), start=2):
        _open_visit(page, treatment_files[name])
        page.locator("#tace-assess-followup").click()
        _poll(lambda: len(_state(page, "assess_visits")) == number or _state(page, "assess_error"), 30, name)
        assert not _state(page, "assess_error"), _state(page, "assess_error")
    visits = _state(page, "assess_visits")
    assert [v["name"] for v in visits] == ["baseline", "followup1", "followup2"]
    assert all("pre-contrast" in v["detail"] for v in visits)
    page.locator("#tace-assess-run").click()
    _poll(lambda: _state(page, "assess_result") or _state(page, "assess_error"), 180, "the assessment")
    assert not _state(page, "assess_error"), _state(page, "assess_error")
    result = _state(page, "assess_result")
    assert result["categories"] == {
        "followup1": {"mRECIST": "PR", "RECIST 1.1": "SD", "EASL": "PR", "volumetric": "PR"},
        "followup2": {"mRECIST": "PD", "RECIST 1.1": "SD", "EASL": "PD", "volumetric": "PD"}}
    # what the page shows: the lines, the table, the overlays with their calipers
    text = page.locator("#tace-assess-result").inner_text()
    assert "followup2: lesion(s) matching no baseline lesion: New_1" in text
    assert page.locator("#tace-assess-table tbody tr").count() == 8
    overlays = page.locator("img.tace-assess-overlay")
    assert overlays.count() == 7  # two targets at three visits, and the unmatched nodule
    _poll(lambda: overlays.first.evaluate("img => img.complete && img.naturalWidth > 300"), 20, "the overlays")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.getElementById('tace-assess-result').scrollIntoView()")
    time.sleep(0.5)
    page.screenshot(path=str(SCREENSHOT))


def test_a_new_lesion_seen_by_the_user_makes_that_follow_up_progression(page):
    """The open case is follow-up 2: taken again with the new lesion ticked (after a fresh baseline)."""
    page.locator("#tace-assess-clear").click()
    _poll(lambda: _state(page, "assess_visits") == [], 20, "the cleared visits")
    page.locator("#tace-assess-baseline").click()  # follow-up 2 as a stand-in baseline: it has enhancing lesions
    _poll(lambda: len(_state(page, "assess_visits")) == 1, 30, "the baseline")
    page.locator("#tace-assess-new-lesion").click()
    _poll(lambda: _state(page, "assess_new_lesion") is True, 10, "the check box")
    page.locator("#tace-assess-followup").click()
    _poll(lambda: len(_state(page, "assess_visits")) == 2, 30, "the follow-up")
    assert "new lesion seen" in _state(page, "assess_visits")[1]["detail"]
    page.locator("#tace-assess-run").click()
    _poll(lambda: _state(page, "assess_result") or _state(page, "assess_error"), 180, "the assessment")
    assert not _state(page, "assess_error"), _state(page, "assess_error")
    assert set(_state(page, "assess_result")["categories"]["followup1"].values()) == {"PD"}
