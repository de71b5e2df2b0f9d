"""batch, evaluate and extract-features on Dask as a user runs them: on a cluster started with
``dask scheduler`` / ``dask worker`` (``--scheduler``, ``--scheduler-file``) and on a 2-worker local
cluster, each giving exactly what the same command gives in one process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from TACEResponseLib.cli import main
from TACEResponseLib.imaging.phantoms import make_cohort

REPO = Path(__file__).resolve().parents[1]
N_CASES = 6


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    return make_cohort(N_CASES, tmp_path_factory.mktemp("cohort"), shape_kji=(36, 64, 64), seed=700,
                       tumour_radius_mm=(8.0, 11.0))


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A scheduler and two worker processes started as the README says (`dask scheduler`, `dask worker`)."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "Testing")]),
           "DASK_LOGGING__DISTRIBUTED": "warning"}
    processes = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                  env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 120
        while not scheduler_file.is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert scheduler_file.is_file(), "the scheduler did not start"
        processes.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", "--scheduler-file",
                                           str(scheduler_file), "--nworkers", "2", "--nthreads", "1", "--host",
                                           "127.0.0.1", "--no-dashboard", "--local-directory", str(folder)],
                                          env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(scheduler_file=str(scheduler_file)) as client:
            client.wait_for_workers(2, timeout=180)
        yield json.loads(scheduler_file.read_text())["address"], scheduler_file
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _probabilities(rows: list[dict]) -> dict[str, list[float]]:
    return {r["case_id"]: [float(r[f"p_{c}"]) for c in ("CR", "PR", "SD", "PD")] for r in rows}


def test_batch_on_an_existing_cluster_by_its_address(small_cohort, random_bundle, dask_cluster, tmp_path):
    from distributed import Client

    import task_helpers

    address, _ = dask_cluster
    common = ["batch", "--manifest", str(small_cohort), "--bundle", str(random_bundle.path), "--device", "cpu",
              "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "cluster"), "--scheduler", address]) == 0
    assert main([*common, "--output", str(tmp_path / "here"), "--workers", "0"]) == 0
    on_cluster, here = _csv(tmp_path / "cluster" / "summary.csv"), _csv(tmp_path / "here" / "summary.csv")
    assert [r["status"] for r in on_cluster] == ["ok"] * N_CASES
    assert [r["case_id"] for r in on_cluster] == [r["case_id"] for r in here]
    for case_id, values in _probabilities(here).items():
        assert _probabilities(on_cluster)[case_id] == pytest.approx(values, abs=1e-6)
    assert len(list((tmp_path / "cluster").glob("cases/*/heatmap.nrrd"))) == N_CASES
    with Client(address) as client:  # the model lives in the cluster's worker processes, built there
        built = client.run(task_helpers.states_built)
    assert len(built) == 2 and sum(built.values()) >= 1


def test_evaluate_on_an_existing_cluster_by_its_scheduler_file(small_cohort, random_bundle, dask_cluster, tmp_path):
    _, scheduler_file = dask_cluster
    common = ["evaluate", "--manifest", str(small_cohort), "--bundle", str(random_bundle.path), "--device", "cpu",
              "--no-progress", "--bootstrap", "20"]
    assert main([*common, "--output", str(tmp_path / "cluster"), "--scheduler-file", str(scheduler_file)]) == 0
    assert main([*common, "--output", str(tmp_path / "here"), "--workers", "0"]) == 0
    on_cluster = _csv(tmp_path / "cluster" / "predictions.csv")
    assert len(on_cluster) == N_CASES
    for case_id, values in _probabilities(_csv(tmp_path / "here" / "predictions.csv")).items():
        assert _probabilities(on_cluster)[case_id] == pytest.approx(values, abs=1e-6)
    report = json.loads((tmp_path / "cluster" / "report.json").read_text())
    assert report["metrics"]["n_cases"] == N_CASES and not report["failed_cases"]
    # the per-case results are kept: a rerun predicts nothing and reports the same numbers
    results = sorted((tmp_path / "cluster").glob("cases/*/result.json"))
    assert len(results) == N_CASES and not list((tmp_path / "cluster").glob("cases/*/heatmap.nrrd"))
    stamps = [p.stat().st_mtime_ns for p in results]
    assert main([*common, "--output", str(tmp_path / "cluster"), "--scheduler-file", str(scheduler_file)]) == 0
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert _csv(tmp_path / "cluster" / "predictions.csv") == on_cluster


def test_extract_features_on_a_two_worker_local_cluster(small_cohort, tmp_path, capsys):
    common = ["survival", "extract-features", "--manifest", str(small_cohort), "--device", "cpu", "--size", "32",
              "--fov-mm", "60", "--no-progress"]
    (tmp_path / "cluster").mkdir()
    (tmp_path / "here").mkdir()
    assert main([*common, "--output", str(tmp_path / "cluster" / "features.csv"), "--workers", "2",
                 "--no-dashboard"]) == 0
    assert main([*common, "--output", str(tmp_path / "here" / "features.csv"), "--workers", "0"]) == 0
    on_cluster = pd.read_csv(tmp_path / "cluster" / "features.csv", index_col="case_id")
    here = pd.read_csv(tmp_path / "here" / "features.csv", index_col="case_id")
    assert on_cluster.shape == (N_CASES, 2 * 1024) and list(on_cluster.index) == list(here.index)
    np.testing.assert_allclose(on_cluster.to_numpy(), here.to_numpy(), rtol=1e-4, atol=1e-4)  # fp32, other thread counts
    assert len(list((tmp_path / "cluster" / "feature_cache").glob("*.npz"))) == N_CASES  # written by the workers
    capsys.readouterr()
    assert main([*common, "--output", str(tmp_path / "cluster" / "features.csv"), "--workers", "2"]) == 0
    assert f"({N_CASES} from cache)" in capsys.readouterr().out
