"""Collect the speed targets of every benchmark result into benchmarks/results/targets.json.

Each ``benchmarks/results/*.json`` may carry a ``"targets"`` mapping, ``{"1": {"measured": …,
"goal": …, "met": …, "what": "…"}, …}``, keyed by the numbered targets of the speed issue and
their sub-targets (``2a``, ``3b`` …). This script merges whatever result files exist — it knows
no benchmark by name — adds to each target the machine, time and load average of the run that
measured it and the file it came from, and lists the targets nobody measured. When two files
measure the same target, the later measurement wins (the other file is named in ``also_in``).

``make benchmarks`` runs it after the benchmarks. ``--docs`` also rewrites the table between
the ``targets`` markers of docs/benchmarks.md (the user guide's benchmarks page) from the collected
file, so the guide shows the measured numbers (Testing/test_benchmark_targets.py checks that it does).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from TACEResponseLib.core.files import write_json_atomic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TARGETS_FILE = "targets.json"
#: the page of the user guide that shows the targets table
PAGE = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- targets:begin -->", "<!-- targets:end -->"

#: the speed issue's numbered targets and sub-targets, in its order (what a complete run measures)
EXPECTED = {
    "1": "one case, excluding file reading ÷ the bare forward",
    "2a": "reading ÷ SimpleITK ReadImage",
    "2b": "peak RSS ÷ a process that only reads",
    "3a": "CLI cold start to the first progress line (s)",
    "3b": "second Apply ÷ in-process compute, demo case",
    "3c": "second Apply ÷ in-process compute, 512×512×300",
    "4a": "ResNet50 at batch 3, fraction of the matmul rate",
    "4b": "DenseNet-121 at batch 3, fraction of the matmul rate",
    "5": "batch on one machine, 1 and 2 workers",
}
REQUIRED = {"measured": (int, float), "goal": (int, float), "met": bool, "what": str}


class TargetsError(ValueError):
    """A results file's ``targets`` mapping is not of the documented form."""


def _order(key: str) -> tuple:
    known = list(EXPECTED)
    return (known.index(key) if key in known else len(known), key)


def _check(key: str, target: Any, source: str) -> dict:
    if not isinstance(target, dict):
        raise TargetsError(f"{source}: target {key!r} is not a mapping")
    for field, kinds in REQUIRED.items():
        value = target.get(field)
        if not isinstance(value, kinds) or (field != "met" and isinstance(value, bool)):
            raise TargetsError(f"{source}: target {key!r} needs {field!r} of type "
                               f"{getattr(kinds, '__name__', 'number')}, got {value!r}")
    if not math.isfinite(float(target["measured"])):
        raise TargetsError(f"{source}: target {key!r} measured {target['measured']!r}")
    return dict(target)


def collect(results: Path = RESULTS) -> dict:
    """The targets of every ``*.json`` in ``results`` (except targets.json), merged."""
    merged: dict[str, dict] = {}
    machines: list[dict] = []
    for path in sorted(results.glob("*.json")):
        if path.name == TARGETS_FILE:
            continue
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise TargetsError(f"{path.name}: not JSON ({exc})") from None
        targets = payload.get("targets") if isinstance(payload, dict) else None
        if not targets:
            continue
        if not isinstance(targets, dict):
            raise TargetsError(f"{path.name}: 'targets' is not a mapping")
        machine = payload.get("machine")
        if machine and machine not in machines:
            machines.append(machine)
        for key, target in targets.items():
            entry = {**_check(str(key), target, path.name), "source": path.name, "machine": machine,
                     "measured_at": payload.get("measured_at"), "load_average": payload.get("load_average")}
            previous = merged.get(str(key))
            if previous is not None:
                newer = (entry["measured_at"] or "") > (previous["measured_at"] or "")
                keep, other = (entry, previous) if newer else (previous, entry)
                keep["also_in"] = sorted({*previous.get("also_in", []), *entry.get("also_in", []), other["source"]})
                entry = keep
            merged[str(key)] = entry
    ordered = {key: merged[key] for key in sorted(merged, key=_order)}
    return {"targets": ordered, "missing": [key for key in EXPECTED if key not in ordered], "machines": machines,
            "met": sum(t["met"] for t in ordered.values()), "of": len(ordered)}


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _machine(machine: dict | None) -> str:
    if not machine:
        return "unknown machine"
    return (f"{machine.get('processor', '?')}, {machine.get('cpus', '?')} CPUs, {machine.get('memory_gib', '?')} GiB, "
            f"{machine.get('os', '?')}, Python {machine.get('python', '?')}")


def markdown(collected: dict) -> str:
    """The guide's table of ``collected`` (measured, goal, met, what; the machine and load under it)."""
    lines = ["| target | measured | goal | met | what |", "|---|---|---|---|---|"]
    for key, target in collected["targets"].items():
        what = str(target["what"]).replace("|", "\\|")
        why = target.get("why")
        if why:
            what += f" — why not met: {why}".replace("|", "\\|")
        lines.append(f"| {key} | {_number(float(target['measured']))} | {_number(float(target['goal']))} | "
                     f"{'yes' if target['met'] else '**no**'} | {what} |")
    runs = {}
    for target in collected["targets"].values():
        load = (target.get("load_average") or {}).get("before")
        runs.setdefault(target["source"], (target.get("measured_at"), load))
    lines.append("")
    for machine in collected["machines"] or [None]:
        lines.append(f"Machine: {_machine(machine)}.")
    lines.append("Runs: " + "; ".join(
        f"`{source}` {when or '?'}" + (f" (1-min load average {load[0]:.1f} at its start)" if load else "")
        for source, (when, load) in runs.items()) + ".")
    if collected["missing"]:
        lines.append(f"Not measured: {', '.join(collected['missing'])}.")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with what lies between :data:`BEGIN` and :data:`END` replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise TargetsError(f"{PAGE.name} has no {BEGIN} … {END} block")
    return text[:start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the benchmarks' JSON files")
    parser.add_argument("--docs", action="store_true", help="rewrite the targets table of docs/benchmarks.md")
    args = parser.parse_args(argv)
    collected = collect(args.results)
    path = write_json_atomic(args.results / TARGETS_FILE, collected)
    table = markdown(collected)
    print(table)
    print(f"\n{collected['met']} of {collected['of']} targets met; written {path}")
    if args.docs:
        PAGE.write_text(replace_block(PAGE.read_text(encoding="utf-8"), table), encoding="utf-8")
        print(f"updated {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
