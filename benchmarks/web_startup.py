"""How fast ``tace-response web`` shows the demo case in a browser, and predicts it.

Runs the command (``--port 0``), waits until its spare session is ready and its prediction worker warm
(what a page opened on a running server gets), then, per run, opens a page in Debian's chromium
(Playwright) and records:

* page opened → the loading indicator painted (the first contentful paint of the first document that
  paints: the launcher's start page with its spinner, which asks for a session with a POST, or the
  session's page, whose HTML starts with its own indicator) and → the first streamed slice image;
* Predict click (2 s after the first image: a reader looks before clicking) → the class shown in the
  result summary, and → the nomogram figure shown (demo case, demo survival model: the survival step
  included);
* the resident memory of the page's session process and its prediction worker.

Beside it, in the same run: the Slicer module's warm Apply on the same demo case with the same
nomogram and clinical values (:class:`~TACEResponseLib.frontend.panel.run.PredictionSession` on a
headless scene with its warm worker, as benchmarks/predict.py times the module), once right after
each page's Predict, so that both see the same load on the machine; and the page without a spare
session (``--spare-sessions 0``: the session starts when the page asks).
Targets (issue 22, "Speed"): 22a first image ≤ 3 s; 22b indicator ≤ 0.1 s; 22c Predict → class ≤ 1.5 ×
the module's second Apply. Prints a table, writes benchmarks/results/web_startup.json.

    python benchmarks/web_startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, print_table, save_results

sys.path.insert(0, str(REPO / "Testing"))
from web_client import started_under  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
FIRST_IMAGE = ("() => { const i = document.querySelector('img.image-display-area');"
               " return i && i.src.startsWith('blob:') && i.naturalWidth > 100; }")
#: run in every document of the tab before its own scripts: keeps (in the tab's sessionStorage, shared by
#: the start page and the session's page) when the tab's first document started to load and the earliest
#: first contentful paint of any of its documents, both in ms since the epoch
PAINT_RECORDER = """(() => {
    if (!sessionStorage.getItem('tace_opened')) sessionStorage.setItem('tace_opened', String(performance.timeOrigin));
    new PerformanceObserver((list) => { for (const entry of list.getEntries()) {
        if (entry.name !== 'first-contentful-paint') continue;
        const at = performance.timeOrigin + entry.startTime;
        if (at < Number(sessionStorage.getItem('tace_painted') || Infinity)) sessionStorage.setItem('tace_painted', String(at));
    } }).observe({type: 'paint', buffered: true});
})();"""
#: run in the session's page: the time (ms since the epoch) of the click on Predict, taken by the page itself,
#: and of the first frame drawn after the result's class appeared (what the reader sees), so the figure holds
#: neither Playwright's checks before its click nor its polling after it
CLICK_TO_CLASS_RECORDER = """(() => {
    document.addEventListener('click', (event) => {
        if (event.target.closest && event.target.closest('#tace-predict')) { window.__tace_clicked = Date.now(); window.__tace_shown = null; }
    }, true);
    new MutationObserver(() => {
        if (window.__tace_clicked && !window.__tace_shown && !window.__tace_pending && document.querySelector('#tace-summary-class')) {
            window.__tace_pending = true;
            requestAnimationFrame(() => { window.__tace_shown = Date.now(); window.__tace_pending = false; });
        }
    }).observe(document, {childList: true, subtree: true});
})();"""
CLICK_TO_CLASS_S = "() => window.__tace_shown && (window.__tace_shown - window.__tace_clicked) / 1000"
INDICATOR_S = "() => (Number(sessionStorage.getItem('tace_painted')) - Number(sessionStorage.getItem('tace_opened'))) / 1000"
#: before this branch (benchmarks/results/web_startup.json of main, 3 runs on this machine): page opened →
#: first view 8.23 s (no indicator before it: a blank tab), Predict → class 11.07 s
BEFORE = {"page_to_first_image_s": 8.23, "predict_to_class_s": 11.07}


def process_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return total / 1024


def descendants(pid: int) -> list[int]:
    """``pid``'s children and theirs (the session processes and their prediction workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        try:
            children = [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            children = []
        found += children
        queue += children
    return found


class Server:
    """``tace-response web`` in a subprocess, its log read for the launcher's lines."""

    def __init__(self, *extra: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tace-web-bench-"))
        self.log = self.root / "server.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                # pages closed end their sessions 5 s later: the runs do not fill the --max-sessions places
                [sys.executable, "-m", "TACEResponseLib.cli", "web", "--port", "0", "--device", "cpu",
                 "--session-timeout", "5", "--max-sessions", "8", *extra],
                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, TMPDIR=str(self.root), PYTHONUNBUFFERED="1"))
        self.url = self.wait_for("TACE_WEB_READY", 1).split()[-1]

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if text in line]

    def wait_for(self, text: str, count: int, timeout: float = 300) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = self.lines(text)
            if len(found) >= count:
                return found[count - 1]
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} ×{count} not logged after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> list[int]:
        """Stop the command; returns the processes of its sessions still running 10 s later (then ended)."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        end, left = time.monotonic() + 10, []
        while time.monotonic() < end:
            left = started_under(self.root)
            if not left:
                break
            time.sleep(0.5)
        for pid in left:
            print(f"web_startup: process {pid} of a session outlived the command; ending it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
        return left


def browser_floor_s(browser) -> float:
    """The browser's own floor for the same measure: page opened → first contentful paint of a one-line
    static page from a local server (Python's http.server), with the same recorder."""
    import http.server
    import threading

    class OneLine(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"<!doctype html><html><body><p>loading</p></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OneLine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        context = browser.new_context(viewport={"width": 1920, "height": 1080})
        context.add_init_script(PAINT_RECORDER)
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/", wait_until="load")
        page.wait_for_function("() => sessionStorage.getItem('tace_painted')", timeout=30_000)
        floor = page.evaluate(INDICATOR_S)
        context.close()
        return floor
    finally:
        server.shutdown()


def page_run(browser, server: Server, predict: bool) -> dict:
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    context.add_init_script(PAINT_RECORDER)
    context.add_init_script(CLICK_TO_CLASS_RECORDER)
    page = context.new_page()
    try:
        opened = time.perf_counter()
        page.goto(server.url, wait_until="commit")
        page.wait_for_function(FIRST_IMAGE, timeout=180_000, polling=20)
        row = {"page_to_first_image_s": time.perf_counter() - opened, "indicator_s": page.evaluate(INDICATOR_S)}
        if predict:
            page.wait_for_function("() => window.trame.state.get('worker_ready')", timeout=300_000)
            row["session_and_worker_rss_mb"] = page_session_rss_mb(server.process.pid)
            time.sleep(2.0)  # a reader looks at the image before Predict (the page has finished loading)
            clicked = time.perf_counter()
            page.locator("#tace-predict").click()
            page.wait_for_selector("#tace-summary-class", timeout=300_000)
            row["predict_to_class_playwright_s"] = time.perf_counter() - clicked
            page.wait_for_function(CLICK_TO_CLASS_S, timeout=30_000)
            row["predict_to_class_s"] = page.evaluate(CLICK_TO_CLASS_S)
            page.wait_for_selector("#tace-nomogram-figure", timeout=300_000)
            row["predict_to_nomogram_s"] = time.perf_counter() - clicked
            row["page_state_timings"] = page.evaluate("() => window.trame.state.get('predict_timings')")
        return row
    finally:
        context.close()


class SlicerApply:
    """The Slicer module's Apply on the demo case with the web page's inputs (both phases, the demo
    survival model, the demo patient's values): :class:`~TACEResponseLib.frontend.panel.run.PredictionSession`
    on a headless scene with its warm worker, as benchmarks/predict.py times the module's Apply."""

    def __init__(self) -> None:
        from TACEResponseLib.demo.case import DEMO_CASE, demo_clinical_values
        from TACEResponseLib.frontend import panel
        from TACEResponseLib.frontend.mrml import create_headless_scene, segmentation_to_node, volume_to_node
        from TACEResponseLib.frontend.panel.models import model_choices, nomogram_after_model_change
        from TACEResponseLib.imaging.phantoms import make_phantom

        case = make_phantom(DEMO_CASE["response"], seed=DEMO_CASE["seed"], case_id=DEMO_CASE["case_id"])
        self.context = create_headless_scene()
        scene = self.context.scene
        nodes = {p: volume_to_node(v, scene, f"{case.case_id}_{p}") for p, v in case.phases.items()}
        segmentation = segmentation_to_node(case.segmentation, scene, "tumour")
        model = model_choices()[0].model
        nomogram = nomogram_after_model_change(model, None)
        fields = panel.collect_inputs(model=model, nomogram=nomogram).clinical_fields
        clinical = demo_clinical_values(case)
        self.inputs = panel.collect_inputs(nodes["arterial"], {"portal": nodes["portal"]}, segmentation,
                                           case.segmentation.segments[0].id, model,
                                           {f.name: clinical[f.name] for f in fields}, nomogram)
        self.session = panel.PredictionSession(scene, python=sys.executable, work_root=tempfile.mkdtemp())
        self.first_apply_s = self.apply()

    def apply(self) -> float:
        start = time.perf_counter()
        self.session.process(self.inputs, "cpu", timeout=600)
        return time.perf_counter() - start

    def close(self) -> None:
        self.session.close()
        self.context.scene.Clear(1)


def page_session_rss_mb(launcher_pid: int) -> float:
    """Resident memory (MB) of the page's session process (the launcher's oldest child; the newer one
    is the spare) and of its prediction worker."""
    children = [int(c) for c in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()]
    started = {pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]) for pid in children}
    oldest = min(started, key=started.get)
    return process_rss_mb([oldest, *descendants(oldest)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        print("web_startup: chromium is not installed (Debian: apt-get install chromium); skipped")
        return
    load_before = os.getloadavg()
    cache = tempfile.mkdtemp(prefix="tace-web-bench-cache-")  # graphs exported by this run, removed at its end
    os.environ.setdefault("TACERESPONSE_CACHE", cache)
    try:
        measure(args.runs, chromium, load_before)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def measure(runs: int, chromium: str, load_before) -> None:
    from playwright.sync_api import sync_playwright

    slicer = SlicerApply()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        server = Server()
        try:
            rows = []
            for n in range(runs):  # each page gets the spare, once it is ready and its model loaded
                server.wait_for("spare session", 1)
                server.wait_for("prediction worker warm", n + 1)
                time.sleep(1.0)  # the spare's warm-up has let go of the CPU
                row = {"run": n + 1, **page_run(browser, server, predict=True)}
                time.sleep(1.0)
                row["slicer_second_apply_s"] = slicer.apply()  # right after: the same load on the machine
                row["ratio"] = row["predict_to_class_s"] / row["slicer_second_apply_s"]
                # what the page adds to the worker's own time for the case (inputs written, the click and the
                # summary on their way, the page drawing it)
                row["outside_worker_s"] = row["predict_to_class_s"] - row["page_state_timings"]["case_in_worker_s"]
                rows.append(row)
        finally:
            left_over = server.stop()
            slicer.close()
        floors = [browser_floor_s(browser) for _ in range(runs)]
        cold = Server("--spare-sessions", "0")
        try:
            cold_rows = [page_run(browser, cold, predict=False) for _ in range(runs)]
        finally:
            left_over += cold.stop()
        browser.close()
    columns = ["run", "indicator_s", "page_to_first_image_s", "predict_to_class_s", "outside_worker_s",
               "predict_to_nomogram_s", "slicer_second_apply_s", "ratio", "session_and_worker_rss_mb"]
    median = {"run": "median", **{c: statistics.median(r[c] for r in rows) for c in columns[1:]}}
    print("tace-response web, a page opened on a running server (its spare session ready):")
    print_table(rows + [median], columns)
    no_spare = {c: statistics.median(r[c] for r in cold_rows) for c in ("indicator_s", "page_to_first_image_s")}
    print(f"\nwithout a spare session (--spare-sessions 0): indicator {no_spare['indicator_s']:.2f} s, first image "
          f"{no_spare['page_to_first_image_s']:.2f} s")
    ratio = median["ratio"]
    floor = statistics.median(floors)
    print(f"the browser's floor (a one-line static page, same measure): {floor:.2f} s; the indicator ÷ floor = "
          f"{median['indicator_s'] / floor:.2f}")
    print(f"Slicer module, same case and inputs: first Apply {slicer.first_apply_s:.2f} s, warm Apply (each right after "
          f"the page's Predict) {median['slicer_second_apply_s']:.2f} s; web Predict → class ÷ warm Apply = {ratio:.2f} "
          f"(median of the runs' ratios)")
    print(f"before this change: first view {BEFORE['page_to_first_image_s']} s, Predict → class "
          f"{BEFORE['predict_to_class_s']} s")
    targets = {
        "22a": {"measured": median["page_to_first_image_s"], "goal": 3.0,
                "what": "tace-response web: seconds from opening the page to the first slice image (demo case, "
                        f"spare session ready; {no_spare['page_to_first_image_s']:.1f} s without one, "
                        f"{BEFORE['page_to_first_image_s']} s before)"},
        "22b": {"measured": median["indicator_s"], "goal": 0.1,
                "what": "tace-response web: seconds from opening the page to the loading indicator painted (first "
                        f"contentful paint); the browser's own floor, a one-line static page from a local server, "
                        f"{floor:.2f} s on this machine (ours ÷ floor {median['indicator_s'] / floor:.2f})"},
        "22c": {"measured": ratio, "goal": 1.5,
                "what": f"tace-response web: Predict → class shown with the nomogram ({median['predict_to_class_s']:.2f} s, "
                        f"{median['outside_worker_s']:.2f} s of it outside the worker's own time for the case; "
                        f"{BEFORE['predict_to_class_s']} s before) ÷ the Slicer module's warm second Apply on the same "
                        f"case, measured right after it ({median['slicer_second_apply_s']:.2f} s)"},
    }
    load_after = os.getloadavg()
    per_run = {"22a": "page_to_first_image_s", "22b": "indicator_s", "22c": "ratio"}
    for key, target in targets.items():
        target["met"] = bool(target["measured"] <= target["goal"])
        if not target["met"]:
            runs = ", ".join(f"{r[per_run[key]]:.2f}" for r in rows)
            target["why"] = (f"runs {runs}; 1-min load average {load_before[0]:.1f} at the start and {load_after[0]:.1f} at "
                             "the end of the run on 2 cores")
    path = save_results("web_startup", {"runs": rows, "median": median, "without_spare": {"runs": cold_rows,
                                        "median": no_spare}, "slicer_first_apply_s": slicer.first_apply_s,
                                        "before": BEFORE, "processes_left_over": left_over,
                                        "browser_floor_s": {"runs": floors, "median": floor},
                                        "load_average": {"before": load_before, "after": load_after},
                                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "targets": targets})
    print(f"results: {path}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
