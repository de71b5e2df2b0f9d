"""Helpers shared by the benchmark scripts: timing, a table printer, atomic JSON results."""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from TACEResponseLib.core.files import write_json_atomic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def time_call(function: Callable[[], object], repeats: int = 3, warmup: int = 0) -> tuple[float, object]:
    """Median wall time (s) over ``repeats`` calls, and the last result."""
    result = None
    for _ in range(warmup):
        result = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def machine() -> dict:
    """What the numbers were measured on: CPU model, processors usable, memory, OS, Python."""
    import os

    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    memory = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"processor": model, "cpus": cpus, "memory_gib": memory, "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def save_results(name: str, payload: dict) -> Path:
    return write_json_atomic(RESULTS / f"{name}.json", {"machine": machine(), **payload})
