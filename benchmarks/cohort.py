"""Cohort throughput on Dask: cases/minute of ``batch`` in one process and on a local Dask cluster
with 1 and 2 worker processes (workers × threads ≤ processors), the speed-up beside the ideal,
and Dask's per-task overhead (an empty task) beside one case's compute.

Target 5 of the speed issue: cases/minute with 2 workers × 1 thread ≥ 0.9 × the ideal, twice the
rate of one 1-thread process (two independent workers with nothing shared). Each configuration
runs the same SYNTHETIC phantoms with the same ResNet50 (224 px, random weights with calibrated
statistics) on the same engine; times are medians over rounds run interleaved. Rates are counted
from the call (cluster start-up and model loading included, paid once per run) and in the steady
state (from the moment every worker has finished its first case to the last case: what a cohort
of thousands sees); the target is the steady state.

Prints tables and writes benchmarks/results/cohort.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import calibrated_bundle, print_table, save_results

from TACEResponseLib.core.tasks import IN_PROCESS, CaseTask, ClusterOptions, WorkerSetup, run_cases, usable_cores
from TACEResponseLib.imaging.phantoms import make_cohort
from TACEResponseLib.prediction.batch import run_batch


def nothing(threads):
    """An empty worker state (the overhead measurement loads no model)."""
    return None


def empty_task(state, n: int) -> int:
    return n


def run_config(manifest: Path, bundle, output: Path, cluster: ClusterOptions) -> dict:
    """One batch of the cohort into a fresh ``output``: wall and steady-state rates."""
    finished: list[float] = []
    workers: set[int] = set()
    start = time.perf_counter()
    summary = run_batch(manifest, bundle.path, output, cluster=cluster, device="cpu", progress_bar=False,
                        on_case=lambda report: (finished.append(time.perf_counter()), workers.add(report["pid"])))
    wall = time.perf_counter() - start
    if summary.failed or summary.done != summary.total:
        raise RuntimeError(f"{output}: {summary.failed} case(s) failed; see {summary.summary_csv}")
    n_workers = max(1, len(workers))
    steady = finished[n_workers - 1:]  # from the moment every worker has finished its first case
    steady_rate = 60 * (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else float("nan")
    import csv

    with open(summary.summary_csv, newline="", encoding="utf-8") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    return {"seconds": wall, "first_case_after_s": finished[0] - start, "steady_cases_per_minute": steady_rate,
            "case_compute_s": statistics.median(seconds), "worker_processes": n_workers}


def task_overhead(n_tasks: int, rounds: int) -> dict:
    """Dask's cost of one task on a 2-worker local cluster: the round trip of one empty task
    (submit → result, one after another) and the amortised cost in a burst of ``n_tasks``."""
    from distributed import Client, LocalCluster

    import cohort  # the workers import the empty task by this module's name (benchmarks/ is on their path)
    from TACEResponseLib.core.tasks import _run_on_worker

    empty, setup = cohort.empty_task, WorkerSetup(cohort.nothing)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) \
            as cluster, Client(cluster) as client:
        client.submit(_run_on_worker, empty, setup, CaseTask("warm", (0,)), 1, pure=False).result()
        round_trips = []
        for n in range(rounds):
            started = time.perf_counter()
            client.submit(_run_on_worker, empty, setup, CaseTask(f"e{n}", (n,)), 1, pure=False).result()
            round_trips.append(time.perf_counter() - started)
    # the burst goes through the same driver as a cohort (its own cluster start-up timed apart)
    started = time.perf_counter()
    outcomes = list(run_cases(empty, [CaseTask(f"e{n}", (n,)) for n in range(n_tasks)], setup,
                              ClusterOptions(workers=2, dashboard=False), label="empty", progress_bar=False))
    burst = time.perf_counter() - started
    assert all(o.ok for o in outcomes)
    started = time.perf_counter()
    list(run_cases(empty, [CaseTask("one", (0,)), CaseTask("two", (1,))], setup,
                   ClusterOptions(workers=2, dashboard=False), label="empty", progress_bar=False))
    startup = time.perf_counter() - started  # a cluster for two empty tasks ≈ its start-up and shut-down
    return {"round_trip_s": statistics.median(round_trips), "burst_tasks": n_tasks, "burst_s": burst,
            "cluster_start_and_stop_s": startup,
            "amortised_per_task_s": max(0.0, burst - startup) / max(1, n_tasks - 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = usable_cores()
    half = max(1, cores // 2)
    configs = {
        "single process": IN_PROCESS,
        "single process, 1 thread": ClusterOptions(workers=0, threads=1),
        "Dask, 1 worker": ClusterOptions(workers=1, threads=cores, dashboard=False),
        "Dask, 2 workers": ClusterOptions(workers=2, threads=half, dashboard=False),
    }
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["TACERESPONSE_CACHE"] = str(folder / "cache")  # graphs exported by this run
        manifest = make_cohort(args.cases, folder / "cohort", seed=100, shape_kji=(96, 128, 128))
        bundle = calibrated_bundle(folder / "resnet50", "resnet50", 224, ["arterial"])
        run_config(manifest, bundle, folder / "warm", IN_PROCESS)  # the graph exported and checked once, before timing
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        for round_ in range(args.rounds):
            for name, cluster in configs.items():
                runs[name].append(run_config(manifest, bundle, folder / f"{name}-{round_}".replace(" ", "_"), cluster))
        overhead = task_overhead(200, 30)
    rows = []
    for name, cluster in configs.items():
        keys = runs[name][0].keys()
        row = {"configuration": name, "workers": cluster.workers or 0,
               "threads": cluster.threads or cores, "cases": args.cases,
               **{k: statistics.median(r[k] for r in runs[name]) for k in keys if k != "worker_processes"}}
        row["cases_per_minute"] = 60 * args.cases / row["seconds"]
        rows.append(row)
    by = {row["configuration"]: row for row in rows}
    ideal = 2 * by["single process, 1 thread"]["cases_per_minute"]
    ideal_steady = 2 * by["single process, 1 thread"]["steady_cases_per_minute"]
    two, one = by["Dask, 2 workers"], by["Dask, 1 worker"]
    two["ideal_cases_per_minute"], two["ideal_steady_cases_per_minute"] = ideal, ideal_steady
    print(f"\nCohort of {args.cases} phantoms (96×128×128), ResNet50 224 px, {cores} processors; medians of "
          f"{args.rounds} rounds")
    print_table(rows, ["configuration", "workers", "threads", "cases", "seconds", "first_case_after_s",
                       "cases_per_minute", "steady_cases_per_minute", "ideal_cases_per_minute", "case_compute_s"])
    speed_up = {"two_over_one_worker": two["cases_per_minute"] / one["cases_per_minute"],
                "two_workers_over_single_process": two["cases_per_minute"] / by["single process"]["cases_per_minute"],
                "ideal_over_one_worker": ideal / one["cases_per_minute"],
                "two_workers_of_ideal": two["cases_per_minute"] / ideal,
                "two_workers_of_ideal_steady": two["steady_cases_per_minute"] / ideal_steady}
    print(f"2 workers ÷ 1 worker = {speed_up['two_over_one_worker']:.2f} (ideal {speed_up['ideal_over_one_worker']:.2f}); "
          f"2 workers ÷ single process = {speed_up['two_workers_over_single_process']:.2f}; "
          f"2 workers ÷ ideal = {speed_up['two_workers_of_ideal']:.2f} "
          f"(steady state {speed_up['two_workers_of_ideal_steady']:.2f})")
    compute = by["single process"]["case_compute_s"]
    print(f"\nDask per task: {overhead['round_trip_s'] * 1e3:.1f} ms round trip of an empty task, "
          f"{overhead['amortised_per_task_s'] * 1e3:.1f} ms amortised in a burst of {overhead['burst_tasks']}; "
          f"a case computes {compute:.2f} s (overhead {overhead['round_trip_s'] / compute:.1%} of it); "
          f"a local cluster starts and stops in {overhead['cluster_start_and_stop_s']:.1f} s")
    targets = {
        "5": {"measured": speed_up["two_workers_of_ideal_steady"], "goal": 0.9,
              "what": f"cohort of {args.cases} cases on a local Dask cluster, steady state (a cohort of thousands; "
                      f"the run's start-up excluded): cases/minute with 2 workers × {half} thread(s) ÷ the ideal (twice "
                      f"one 1-thread process): {two['steady_cases_per_minute']:.0f} of {ideal_steady:.0f}; counted "
                      f"from the call ({args.cases} cases, cluster start-up and model loading included): single "
                      f"process {by['single process']['cases_per_minute']:.0f}, 1 worker {one['cases_per_minute']:.0f}, "
                      f"2 workers {two['cases_per_minute']:.0f}, ideal {ideal:.0f} cases/min; an empty task costs "
                      f"{overhead['round_trip_s'] * 1e3:.0f} ms beside {compute:.2f} s of compute per case"},
    }
    for target in targets.values():
        target["met"] = bool(target["measured"] >= target["goal"])
    print("\ntarget  measured  goal   met")
    for key, target in targets.items():
        print(f"{key:<7} {target['measured']:8.3f}  {target['goal']:<5}  {target['met']}")
    path = save_results("cohort", {"rows": rows, "speed_up": speed_up, "task_overhead": overhead,
                                   "load_average": {"before": load_before, "after": os.getloadavg()},
                                   "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "targets": targets})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
