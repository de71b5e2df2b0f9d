"""benchmarks/targets.py: every results file's speed targets merged into targets.json, and the docs page
table made from it (the committed files agree with each other)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _targets_module():
    spec = importlib.util.spec_from_file_location("bench_targets", REPO / "benchmarks" / "targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


targets = _targets_module()
MACHINE = {"processor": "CPU X", "cpus": 2, "memory_gib": 8.0, "os": "Linux", "python": "3.11.7"}


def _write(folder: Path, name: str, payload: dict) -> None:
    (folder / name).write_text(json.dumps(payload), encoding="utf-8")


def _target(measured: float, goal: float, met: bool, what: str = "x") -> dict:
    return {"measured": measured, "goal": goal, "met": met, "what": what}


def test_every_results_file_is_merged_and_the_later_measurement_of_a_target_wins(tmp_path):
    _write(tmp_path, "predict.json", {"machine": MACHINE, "measured_at": "2026-01-01T10:00:00+0000",
                                      "load_average": {"before": [3.5, 2, 1]},
                                      "targets": {"3a": _target(0.3, 2.5, True), "1": _target(1.9, 1.5, False),
                                                  "5": _target(0.5, 0.9, False, "old batch")}})
    _write(tmp_path, "cohort.json", {"machine": MACHINE, "measured_at": "2026-01-02T10:00:00+0000",
                                     "targets": {"5": _target(0.95, 0.9, True, "dask cohort")}})
    _write(tmp_path, "patches.json", {"machine": MACHINE, "rows": []})  # no targets: ignored
    _write(tmp_path, "targets.json", {"targets": {"9": _target(1, 1, True)}})  # the output itself: ignored
    collected = targets.collect(tmp_path)
    assert list(collected["targets"]) == ["1", "3a", "5"]  # the issue's order, not the files'
    five = collected["targets"]["5"]
    assert (five["what"], five["source"], five["also_in"], five["met"]) == ("dask cohort", "cohort.json",
                                                                            ["predict.json"], True)
    assert collected["targets"]["1"]["machine"] == MACHINE
    assert collected["targets"]["1"]["load_average"]["before"][0] == 3.5
    assert collected["missing"] == ["2a", "2b", "3b", "3c", "4a", "4b"]
    assert (collected["met"], collected["of"]) == (2, 3)
    table = targets.markdown(collected)
    assert "| 1 | 1.9 | 1.5 | **no** |" in table and "| 5 | 0.95 | 0.9 | yes | dask cohort |" in table
    assert "CPU X, 2 CPUs" in table and "load average 3.5" in table and "Not measured: 2a, 2b" in table
    # the same target measured earlier in a file read later does not replace the newer one
    _write(tmp_path, "zz_old.json", {"machine": MACHINE, "measured_at": "2025-01-01T00:00:00+0000",
                                     "targets": {"5": _target(0.1, 0.9, False)}})
    again = targets.collect(tmp_path)["targets"]["5"]
    assert again["measured"] == 0.95 and again["also_in"] == ["predict.json", "zz_old.json"]


@pytest.mark.parametrize("bad", [{"measured": 1.0, "goal": 1.5, "met": "yes", "what": "x"},
                                 {"measured": None, "goal": 1.5, "met": True, "what": "x"},
                                 {"measured": float("nan"), "goal": 1.5, "met": True, "what": "x"},
                                 {"measured": 1.0, "goal": 1.5, "met": True}])
def test_a_malformed_target_is_refused_with_its_file_and_key(tmp_path, bad):
    _write(tmp_path, "predict.json", {"targets": {"2b": bad}})
    with pytest.raises(targets.TargetsError, match=r"predict\.json: target '2b'"):
        targets.collect(tmp_path)


def test_main_writes_targets_json_and_the_docs_page_block(tmp_path, monkeypatch):
    _write(tmp_path, "networks.json", {"machine": MACHINE, "measured_at": "t",
                                       "targets": {"4a": _target(0.9, 0.85, True, "resnet50")}})
    readme = tmp_path / "benchmarks.md"
    readme.write_text(f"intro\n{targets.BEGIN}\nold table\n{targets.END}\nrest\n", encoding="utf-8")
    monkeypatch.setattr(targets, "PAGE", readme)
    assert targets.main(["--results", str(tmp_path), "--docs"]) == 0
    written = json.loads((tmp_path / "targets.json").read_text(encoding="utf-8"))
    assert written["targets"]["4a"]["source"] == "networks.json"
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text and "| 4a | 0.9 | 0.85 | yes | resnet50 |" in text
    assert text.startswith("intro\n") and text.endswith(f"{targets.END}\nrest\n")


def test_the_committed_targets_and_docs_table_are_the_committed_measurements():
    collected = targets.collect(targets.RESULTS)
    committed = json.loads((targets.RESULTS / targets.TARGETS_FILE).read_text(encoding="utf-8"))
    fix = "run `python benchmarks/targets.py --docs` after changing benchmarks/results"
    assert committed == json.loads(json.dumps(collected)), fix
    readme = targets.PAGE.read_text(encoding="utf-8")
    block = readme[readme.index(targets.BEGIN) + len(targets.BEGIN):readme.index(targets.END)]
    assert block.strip() == targets.markdown(collected).strip(), fix
