"""How long ``tace-response web`` takes to show the demo case in a browser, and to predict it.

Each run starts the command afresh (``--port 0``), opens the page in Debian's chromium (Playwright)
and records: command start → the launcher listens; page opened → first streamed slice view (this
includes starting the page's session process: imports, Slicer scene, SYNTHETIC demo case);
command start → first view; the session process's resident memory; Predict click → class shown (``tace-response predict`` in the
background, with the demo survival model). Prints a table and writes
benchmarks/results/web_startup.json.

    python benchmarks/web_startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, save_results

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def session_rss_mb(launcher_pid: int) -> float:
    """Resident memory (MB) of the launcher's children: the page's session process."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    total = 0
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def one_run(browser, predict: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix="tace-web-bench-"))
    log = root / "server.log"
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "TACEResponseLib.cli", "web", "--port", "0", "--device", "cpu"],
                                   stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, TMPDIR=str(root)))
    try:
        url = None
        while url is None:
            if process.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            lines = [line for line in log.read_text().splitlines() if line.startswith("TACE_WEB_READY")]
            url = lines[0].split()[-1] if lines else None
            time.sleep(0.05)
        listening = time.perf_counter() - started
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        opened = time.perf_counter()
        page.goto(url)
        page.wait_for_function("() => { const i = document.querySelector('img.image-display-area');"
                               " return i && i.src.startsWith('blob:') && i.naturalWidth > 100; }", timeout=180_000)
        row = {"listening_s": listening, "page_to_view_s": time.perf_counter() - opened,
               "command_to_view_s": time.perf_counter() - started, "session_rss_mb": session_rss_mb(process.pid)}
        if predict:
            clicked = time.perf_counter()
            page.locator("#tace-predict").click()
            page.wait_for_selector(".tace-result-class", timeout=300_000)
            row["predict_to_class_s"] = time.perf_counter() - clicked
        page.close()
        return row
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        print("web_startup: chromium is not installed (Debian: apt-get install chromium); skipped")
        return
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        rows = [dict(run=n + 1, **one_run(browser, predict=True)) for n in range(args.runs)]
        browser.close()
    columns = ["run", "listening_s", "page_to_view_s", "command_to_view_s", "predict_to_class_s", "session_rss_mb"]
    median = {"run": "median", **{c: statistics.median(r[c] for r in rows) for c in columns[1:]}}
    print_table(rows + [median], columns)
    print(f"results: {save_results('web_startup', {'runs': rows, 'median': median})}")


if __name__ == "__main__":
    main()
