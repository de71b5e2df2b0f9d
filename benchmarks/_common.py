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


def save_results(name: str, payload: dict) -> Path:
    payload = {"machine": {"python": platform.python_version(), "processor": platform.processor(),
                           "cpus": __import__("os").cpu_count()}, **payload}
    return write_json_atomic(RESULTS / f"{name}.json", payload)
