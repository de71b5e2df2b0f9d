"""Batch prediction on a 2-worker local Dask cluster: broken cases are rows with their message, a worker
SIGKILLed halfway costs nothing, a SIGKILLed run resumes exactly, and a finished run re-run does no work."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from TACEResponseLib.imaging.segmentation import Segmentation, write_segmentation
from TACEResponseLib.imaging.phantoms import make_cohort

N_CASES = 30


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    manifest = make_cohort(N_CASES, folder, shape_kji=(36, 64, 64), seed=500, tumour_radius_mm=(8.0, 11.0))
    rows = list(csv.DictReader(open(manifest)))
    # three broken cases: a missing file, an unreadable file, an empty segment
    rows[4]["arterial"] = "does_not_exist.nrrd"
    (folder / "garbage.nrrd").write_text("NRRD0004\nthis is not an image\n")
    rows[11]["arterial"] = "garbage.nrrd"
    grid = make_cohort(1, None, shape_kji=(36, 64, 64), seed=999)[0].reference
    write_segmentation(Segmentation.from_masks(grid, {"Tumour": np.zeros(grid.shape_kji, bool)}), folder / "empty.seg.nrrd")
    rows[20]["segmentation"] = "empty.seg.nrrd"
    rows[20]["segment"] = "Segment_1"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, {rows[4]["case_id"]: "does not exist", rows[11]["case_id"]: "cannot be read",
                      rows[20]["case_id"]: "is empty"}


def _batch_command(manifest: Path, bundle: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "TACEResponseLib.cli", "batch", "--manifest", str(manifest), "--bundle", str(bundle),
            "--output", str(output), "--workers", "2", "--no-dashboard", "--no-progress"]


def _live_members(group: int) -> list[int]:
    """Processes of process group ``group`` still running (zombies waiting for init do not count)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def _summary(output: Path) -> list[dict]:
    return list(csv.DictReader(open(output / "summary.csv")))


def test_killed_batch_resumes_without_losing_or_duplicating_cases(cohort, random_bundle, tmp_path):
    manifest, broken = cohort
    output = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(_batch_command(manifest, random_bundle.path, output), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(output.glob("cases/*/result.json"))) < N_CASES // 2:
        if process.poll() is not None:
            pytest.fail("the batch finished before it could be killed; make the cohort slower")
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # the command only: its Dask workers must not outlive it
    process.wait()
    deadline = time.time() + 60
    while _live_members(process.pid) and time.time() < deadline:
        time.sleep(0.2)
    left = _live_members(process.pid)
    if left:
        os.killpg(process.pid, signal.SIGKILL)
    assert not left, f"worker processes outlived the killed command: {left}"
    finished_before = len(list(output.glob("cases/*/result.json")))
    assert 0 < finished_before < N_CASES

    rerun = subprocess.run(_batch_command(manifest, random_bundle.path, output), env=env, capture_output=True,
                           text=True, encoding="utf-8", timeout=300)
    assert rerun.returncode == 1, rerun.stderr  # 1 = finished, some cases failed
    assert f"{N_CASES} cases" in rerun.stdout and "already done" in rerun.stdout
    rows = _summary(output)
    assert len(rows) == N_CASES
    assert len({r["case_id"] for r in rows}) == N_CASES
    failed = {r["case_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert set(failed) == set(broken)
    for case_id, words in broken.items():
        assert words in failed[case_id]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == N_CASES - 3
    for row in ok:
        probabilities = [float(row[f"p_{c}"]) for c in ("CR", "PR", "SD", "PD")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert not list(output.glob("cases/*/.*.tmp*")), "stale temporary files left behind"
    # a third run has nothing left to do (the broken cases failed on inputs that did not change)
    again = subprocess.run(_batch_command(manifest, random_bundle.path, output), env=env, capture_output=True,
                           text=True, encoding="utf-8", timeout=300)
    assert f"0 predicted now, {N_CASES - 3} already done, 0 failed, 3 failed before" in again.stdout
    assert _summary(output) == rows


def _check_rows(rows: list[dict], broken: dict[str, str]) -> None:
    assert len(rows) == N_CASES and len({r["case_id"] for r in rows}) == N_CASES
    failed = {r["case_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert set(failed) == set(broken)
    for case_id, words in broken.items():
        assert words in failed[case_id]
    for row in rows:
        assert float(row["seconds"]) >= 0, f"case {row['case_id']}: no time recorded"
        if row["status"] == "ok":
            assert float(row["seconds"]) > 0
            assert sum(float(row[f"p_{c}"]) for c in ("CR", "PR", "SD", "PD")) == pytest.approx(1.0, abs=1e-5)
            assert 0 < float(row["read_seconds"]) <= float(row["seconds"])


def test_a_worker_killed_halfway_costs_nothing_and_a_rerun_does_no_work(cohort, random_bundle, tmp_path, monkeypatch):
    """2 worker processes, 30 cases (3 broken); one worker SIGKILLed after 10 cases: every case is
    reported once, the summary has 30 rows, the model was built once per worker process."""
    from TACEResponseLib.core.tasks import ClusterOptions
    from TACEResponseLib.prediction.batch import run_batch

    manifest, broken = cohort
    output = tmp_path / "out"
    reports: list[dict] = []
    killed: list[int] = []

    def on_case(report: dict) -> None:
        reports.append(report)
        if len(reports) == 10:
            killed.append(report["pid"])
            os.kill(report["pid"], signal.SIGKILL)  # it has already taken its next case

    summary = run_batch(manifest, random_bundle.path, output, cluster=ClusterOptions(workers=2, dashboard=False),
                        device="cpu", progress_bar=False, on_case=on_case)
    assert (summary.total, summary.done, summary.failed, summary.skipped) == (N_CASES, N_CASES - 3, 3, 0)
    assert sorted(r["case_id"] for r in reports) == sorted(r["case_id"] for r in _summary(output))
    assert killed and killed[0] != os.getpid()
    assert all(r["pid"] != killed[0] for r in reports[10:]), "a case was reported by the killed worker"
    pids = {r["pid"] for r in reports}
    assert os.getpid() not in pids and len(pids) >= 2
    builds = sorted(r["pid"] for r in reports if r["setup_s"] is not None)
    assert builds == sorted(pids), "each worker process loads the model once, not once per case"
    rows = _summary(output)
    _check_rows(rows, broken)
    assert not list(output.glob("cases/*/.*.tmp*")), "stale temporary files left behind"

    # a rerun does no work: no cluster, no case, no file rewritten
    import distributed

    monkeypatch.setattr(distributed, "LocalCluster", lambda *a, **k: pytest.fail("a cluster started for no work"))
    stamps = {p: p.stat().st_mtime_ns for p in output.glob("cases/*/*.json")}
    again = run_batch(manifest, random_bundle.path, output, cluster=ClusterOptions(workers=2, dashboard=False),
                      device="cpu", progress_bar=False, on_case=lambda r: pytest.fail(f"{r['case_id']} ran again"))
    assert (again.done, again.failed, again.skipped, again.failed_before) == (0, 0, N_CASES - 3, 3)
    assert {p: p.stat().st_mtime_ns for p in output.glob("cases/*/*.json")} == stamps
    assert _summary(output) == rows


def test_slicer_batch_script_writes_scenes(random_bundle, tmp_path):
    """The --python-script entry point runs as a plain file (as Slicer runs it) and writes .mrb scenes."""
    from TACEResponseLib.frontend.mrml import create_headless_scene, read_result_from_scene

    manifest = make_cohort(2, tmp_path / "cohort", shape_kji=(36, 64, 64), seed=42, tumour_radius_mm=(8.0, 11.0))
    script = Path(__file__).resolve().parents[1] / "TACEResponseLib" / "frontend" / "slicer_batch.py"
    run = subprocess.run([sys.executable, str(script), "--manifest", str(manifest), "--bundle", str(random_bundle.path),
                          "--output", str(tmp_path / "out"), "--device", "cpu", "--scenes"],
                         capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert run.returncode == 0, run.stderr
    scenes = sorted((tmp_path / "out").glob("cases/*/scene.mrb"))
    assert len(scenes) == 2
    context = create_headless_scene()
    assert context.scene.ReadFromMRB(str(scenes[0]))
    assert context.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    (result,) = read_result_from_scene(context.scene)
    assert result.case_id == "case0042"
    context.scene.Clear(1)


def test_a_rerun_follows_the_inputs_content_and_the_bundle_not_the_file_names(random_bundle, tmp_path):
    """In this process (``--workers 0``): a renamed copy of an image is the same input (skipped); one
    voxel edited makes that case run again (alone); other weights make every case run again."""
    from TACEResponseLib.core.tasks import IN_PROCESS
    from TACEResponseLib.imaging.volume_io import read_volume, write_volume
    from TACEResponseLib.prediction.batch import run_batch

    from conftest import make_random_bundle

    manifest = make_cohort(3, tmp_path / "cohort", shape_kji=(36, 64, 64), seed=60, tumour_radius_mm=(8.0, 11.0))
    output = tmp_path / "out"
    first = run_batch(manifest, random_bundle.path, output, cluster=IN_PROCESS, device="cpu", progress_bar=False)
    assert (first.done, first.skipped) == (3, 0)
    rows = list(csv.DictReader(open(manifest)))
    folder = manifest.parent
    renamed = folder / "renamed_copy.nrrd"
    renamed.write_bytes((folder / rows[0]["arterial"]).read_bytes())
    rows[0]["arterial"] = renamed.name
    volume = read_volume(folder / rows[1]["arterial"])
    edited = volume.array.copy()
    edited[0, 0, 0] += 7
    write_volume(type(volume)(edited, volume.ijk_to_ras), folder / "edited.nrrd")
    rows[1]["arterial"] = "edited.nrrd"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ran: list[str] = []
    second = run_batch(manifest, random_bundle.path, output, cluster=IN_PROCESS, device="cpu", progress_bar=False,
                       on_case=lambda r: ran.append(r["case_id"]))
    assert ran == [rows[1]["case_id"]] and (second.done, second.skipped) == (1, 2)
    other = make_random_bundle(tmp_path / "other", seed=1)
    third = run_batch(manifest, other.path, output, cluster=IN_PROCESS, device="cpu", progress_bar=False)
    assert (third.done, third.skipped) == (3, 0)
    summary = _summary(output)
    assert [r["status"] for r in summary] == ["ok"] * 3
    assert all(r["case_id"] for r in summary) and len(summary) == 3
