"""The engine under batch, evaluate and extract-features: one task per case, in this process or on Dask."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import task_helpers
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.tasks import IN_PROCESS, CaseTask, ClusterOptions, WorkerSetup, run_cases, usable_cores

REPO = Path(__file__).resolve().parents[1]


def _tasks(n: int, **kwargs) -> list[CaseTask]:
    return [CaseTask(f"c{x}", (x, *kwargs.values())) for x in range(n)]


def test_in_this_process_each_case_runs_once_the_state_is_built_once_and_failures_are_outcomes():
    setup = WorkerSetup(task_helpers.make_state, ("in-process",))
    outcomes = list(run_cases(task_helpers.square, _tasks(5, fail_on=3), setup, IN_PROCESS, progress_bar=False))
    assert [o.case_id for o in outcomes] == [f"c{x}" for x in range(5)]
    failed = [o for o in outcomes if not o.ok]
    assert [o.case_id for o in failed] == ["c3"] and "refused on purpose" in failed[0].error
    assert failed[0].error_type == "InputError"
    ok = [o for o in outcomes if o.ok]
    assert [o.value["value"] for o in ok] == [0, 1, 4, 16]
    assert {o.value["pid"] for o in ok} == {os.getpid()} and {o.pid for o in outcomes} == {os.getpid()}
    built = {o.value["built"] for o in ok}
    assert len(built) == 1, "the state was built more than once in one process"
    # an unexpected exception is a failed case too (type and message), not the end of the run
    (bug,) = run_cases(task_helpers.square, [CaseTask("bug", (-2,))], setup, IN_PROCESS, progress_bar=False)
    assert not bug.ok and bug.error == "ZeroDivisionError: a bug"


def test_a_single_case_does_not_start_a_cluster(monkeypatch):
    import distributed

    monkeypatch.setattr(distributed, "LocalCluster", lambda *a, **k: pytest.fail("a cluster for one case"))
    (outcome,) = run_cases(task_helpers.square, _tasks(1), WorkerSetup(task_helpers.make_state, ("one",)),
                           ClusterOptions(), progress_bar=False)
    assert outcome.ok and outcome.pid == os.getpid()


def test_cluster_options_refuse_what_cannot_work(tmp_path):
    with pytest.raises(InputError, match="--workers sizes the local cluster"):
        ClusterOptions(workers=2, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(InputError, match="give one of them"):
        ClusterOptions(scheduler="tcp://127.0.0.1:8786", scheduler_file=__file__)
    with pytest.raises(InputError, match="does not exist"):
        ClusterOptions(scheduler_file=str(tmp_path / "scheduler.json"))
    with pytest.raises(InputError, match="--workers"):
        ClusterOptions(workers=-1)
    with pytest.raises(InputError, match="--threads"):
        ClusterOptions(threads=0)
    cores = usable_cores()
    workers, threads = ClusterOptions().local_plan(n_tasks=1000)
    assert 1 <= workers <= cores and workers * threads <= cores
    assert ClusterOptions(workers=8).local_plan(n_tasks=3)[0] == 3, "no more workers than cases"
    assert ClusterOptions(workers=1).local_plan(n_tasks=10) == (1, cores)


def test_an_unreachable_scheduler_is_a_clear_error():
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(InputError, match=r"--scheduler tcp://127.0.0.1:9: cannot connect"):
            list(run_cases(task_helpers.square, _tasks(2), WorkerSetup(task_helpers.make_state, ("x",)),
                           ClusterOptions(scheduler="tcp://127.0.0.1:9"), progress_bar=False))


def test_two_worker_processes_each_build_the_state_once():
    setup = WorkerSetup(task_helpers.make_state, ("local",))
    outcomes = list(run_cases(task_helpers.square, _tasks(12, fail_on=5), setup,
                              ClusterOptions(workers=2, dashboard=False), progress_bar=False))
    assert sorted(o.case_id for o in outcomes) == sorted(f"c{x}" for x in range(12))
    assert [o.case_id for o in outcomes if not o.ok] == ["c5"]
    pids = {o.pid for o in outcomes}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    builds = [o for o in outcomes if o.setup_s is not None]
    assert sorted(o.pid for o in builds) == sorted(pids), "each worker process builds its state exactly once"
    ok = [o for o in outcomes if o.ok]
    assert {o.value["threads"] for o in ok} == {max(1, usable_cores() // 2)}
    assert sorted(o.value["value"] for o in ok) == sorted(x * x for x in range(12) if x != 5)
    assert all(o.worker.endswith(f":{o.pid}") for o in outcomes)


def test_a_case_that_kills_its_worker_every_time_is_a_failed_outcome_and_the_others_finish():
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        outcomes = list(run_cases(task_helpers.die_on, [CaseTask(f"c{x}", (x, 2)) for x in range(6)],
                                  WorkerSetup(task_helpers.make_state, ("doomed",)),
                                  ClusterOptions(workers=2, dashboard=False), progress_bar=False))
    assert sorted(o.case_id for o in outcomes) == [f"c{x}" for x in range(6)]
    (dead,) = [o for o in outcomes if not o.ok]
    assert dead.case_id == "c2" and dead.error_type == "KilledWorker"
    assert "died each time it was tried" in dead.error
    assert sorted(o.value for o in outcomes if o.ok) == [0, 1, 3, 4, 5]


def test_nothing_on_the_slicer_side_imports_dask_when_imported():
    """The Slicer module and what it imports load without Dask (it is imported only when a cluster runs)."""
    code = ("import sys, json\n"
            "import TACEResponseLib.frontend.panel, TACEResponseLib.frontend.process, TACEResponseLib.frontend.mrml\n"
            "import TACEResponseLib.frontend.slicer_batch, TACEResponseLib.prediction.batch\n"
            "import TACEResponseLib.training.evaluation, TACEResponseLib.survival.deep_features\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
    for path in sorted((REPO / "TACEResponse").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("dask", "distributed") for n in names), f"{path} imports Dask"
