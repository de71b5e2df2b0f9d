"""One task per case: a cohort's cases run in this process or on a Dask cluster (``dask.distributed``).

``batch``, ``evaluate`` and ``extract-features`` hand their cases to :func:`run_cases`: a
picklable top-level function ``function(state, *task.args)`` per case, and a
:class:`WorkerSetup` that builds ``state`` (a model) once per process. Where they run is a
:class:`ClusterOptions`:

- ``workers=0`` (and any run of a single case without ``--scheduler``): in this process, one
  case after another, no cluster;
- default: an embedded ``LocalCluster`` of worker *processes* sized from this machine (one
  Dask thread each, so one case at a time per process; the cores shared out as the network's
  CPU threads, workers × threads ≤ cores);
- ``scheduler="tcp://HOST:PORT"`` or ``scheduler_file=...``: an existing cluster (``dask scheduler``
  / ``dask worker``, or SLURM/PBS through dask-jobqueue). Each worker process runs one case at
  a time and gives the network its ``--nthreads`` (or ``threads``) threads.

Faults: a worker process that dies (SIGKILL, out of memory) takes its case with it; Dask runs
that case again on another worker, and after ``distributed.scheduler.allowed-failures`` deaths
the case is reported failed with the reason (never lost). An exception inside a case is
caught in the worker and becomes a failed :class:`CaseOutcome` with its message. Losing the
scheduler itself stops the run with a :class:`TACEResponseError` (a rerun resumes: callers keep
finished cases on disk).

Dask is imported only when a cluster is used, so the Slicer module never imports it; where it
is not installed, the default runs in this process with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from TACEResponseLib.core.errors import InputError, TACEResponseError

logger = logging.getLogger(__name__)

#: memory a worker process is planned with when the machine is sized (a model + one case's volumes)
WORKER_MEMORY_BYTES = 2 << 30
#: where the embedded cluster's dashboard listens (this computer only; a busy port gives another)
DASHBOARD_ADDRESS = "127.0.0.1:8787"


# --- where the cases run ----------------------------------------------------------------------
def usable_cores() -> int:
    """The processors this process may run on (its CPU affinity, e.g. a SLURM allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def physical_memory() -> int | None:
    """This machine's memory in bytes (None when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class ClusterOptions:
    """Where a cohort's cases run.

    Args:
        workers: worker processes of the embedded ``LocalCluster`` (``None``: sized from this
            machine, one per core, fewer when memory is short; ``0``: in this process, no cluster).
        threads: CPU threads of the network per worker (default: cores ÷ workers on the embedded cluster, the
            worker's ``--nthreads`` on an existing one).
        scheduler: address of an existing cluster's scheduler, ``tcp://HOST:PORT``.
        scheduler_file: the JSON file ``dask scheduler --scheduler-file`` wrote.
        dashboard: serve the embedded cluster's dashboard (its address is logged).
    """

    workers: int | None = None
    threads: int | None = None
    scheduler: str | None = None
    scheduler_file: str | None = None
    dashboard: bool = True

    def __post_init__(self) -> None:
        for name in ("workers", "threads"):
            value = getattr(self, name)
            low = 0 if name == "workers" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InputError(f"--{name}: expected a whole number ≥ {low}, got {value!r}")
        if self.scheduler is not None and not str(self.scheduler).strip():
            raise InputError("--scheduler: empty; give the scheduler's address, e.g. tcp://HOST:8786")
        if self.scheduler and self.scheduler_file:
            raise InputError("--scheduler and --scheduler-file both given; give one of them")
        if self.scheduler_file is not None and not Path(self.scheduler_file).is_file():
            raise InputError(f"--scheduler-file {self.scheduler_file}: does not exist (dask scheduler --scheduler-file "
                             "writes it when the scheduler starts)")
        if self.external and self.workers is not None:
            raise InputError("--workers sizes the local cluster; an existing cluster (--scheduler, --scheduler-file) "
                             "has its own workers: leave --workers out")

    @property
    def external(self) -> bool:
        """True when the cases go to an existing cluster."""
        return bool(self.scheduler or self.scheduler_file)

    @property
    def in_process(self) -> bool:
        return self.workers == 0 and not self.external

    def local_plan(self, n_tasks: int) -> tuple[int, int]:
        """``(worker processes, threads each)`` of the embedded cluster for ``n_tasks`` cases."""
        cores = usable_cores()
        workers = self.workers
        if workers is None:
            memory = physical_memory()
            workers = cores if memory is None else max(1, min(cores, memory // WORKER_MEMORY_BYTES))
        workers = max(1, min(workers, n_tasks))
        threads = self.threads or max(1, cores // workers)
        if workers * threads > cores:
            logger.warning("%d workers × %d threads is more than the %d cores this process may use: they will "
                           "compete for them", workers, threads, cores)
        return workers, threads

    def describe(self) -> str:
        if self.scheduler:
            return f"the Dask cluster at {self.scheduler}"
        if self.scheduler_file:
            return f"the Dask cluster of {self.scheduler_file}"
        if self.in_process:
            return "this process"
        return "a local Dask cluster"


IN_PROCESS = ClusterOptions(workers=0)


# --- what runs on a worker ---------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerSetup:
    """What each process builds once before its first case: ``factory(threads, *args)`` (e.g. a
    model on its device with ``threads`` CPU threads; ``threads`` is None in the calling process,
    which keeps its own setting). ``factory`` must be a top-level function (sent by reference).

    ``local`` is an already-built state for a run in this process; it is never sent to workers.
    """

    factory: Callable[..., Any]
    args: tuple = ()
    local: Any = field(default=None, compare=False, repr=False)

    def __reduce__(self):
        return (WorkerSetup, (self.factory, self.args))

    def token(self, threads: int | None) -> str:
        return hashlib.sha256(pickle.dumps((self.factory, self.args, threads))).hexdigest()


@dataclass(frozen=True)
class CaseTask:
    """One case: its id (for messages, the progress bar and the dashboard) and the function's arguments."""

    case_id: str
    args: tuple = ()


@dataclass(frozen=True)
class CaseFailed:
    """What a case function returns when it handled its own failure (wrote the case's error file):
    the case counts as failed with ``message``, and the caller need not record it again."""

    message: str
    kind: str = ""


@dataclass
class CaseOutcome:
    """What became of one case: ``status`` ``ok`` (``value`` = what the function returned) or
    ``failed`` (``error`` = the message); ``seconds`` the case's own compute (the model setup
    excluded); ``worker`` the process that ran it (``host:pid``); ``setup_s`` the time this case's
    process spent building its state first (None when it was already built); ``handled``: the
    function recorded the failure itself (it returned :class:`CaseFailed`)."""

    case_id: str
    status: str
    value: Any = None
    error: str = ""
    error_type: str = ""
    seconds: float = 0.0
    worker: str = ""
    pid: int = 0
    setup_s: float | None = None
    handled: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


#: the state built in this process, by setup token (only the latest is kept: one model per process)
_STATE: dict[str, Any] = {}
#: one case at a time per process (a worker with several Dask threads queues its cases here)
_RUN_LOCK = threading.Lock()


def _worker_threads() -> int | None:
    """On a Dask worker, its ``--nthreads`` (the cores it was given); None in a plain process."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def _state(setup: WorkerSetup, threads: int | None) -> tuple[Any, float | None]:
    if setup.local is not None:
        return setup.local, None
    token = setup.token(threads)
    if token in _STATE:
        return _STATE[token], None
    _STATE.clear()  # a new model replaces the previous one (long-lived workers of an existing cluster)
    started = time.perf_counter()
    _STATE[token] = setup.factory(threads, *setup.args)
    return _STATE[token], time.perf_counter() - started


def run_task(function: Callable[..., Any], setup: WorkerSetup, task: CaseTask, threads: int | None,
             on_worker: bool = False) -> CaseOutcome:
    """Run one case where this is called (a worker or this process); every exception becomes a
    failed outcome with its message (an unexpected one is logged with its traceback)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with _RUN_LOCK:
        setup_s = None
        started = time.perf_counter()
        try:
            if on_worker and threads is None:
                threads = _worker_threads()
            state, setup_s = _state(setup, threads)
            started = time.perf_counter()
            value = function(state, *task.args)
            seconds = time.perf_counter() - started
            if isinstance(value, CaseFailed):
                return CaseOutcome(task.case_id, "failed", error=value.message, error_type=value.kind, seconds=seconds,
                                   worker=worker, pid=os.getpid(), setup_s=setup_s, handled=True)
            return CaseOutcome(task.case_id, "ok", value, seconds=seconds, worker=worker, pid=os.getpid(),
                               setup_s=setup_s)
        except Exception as exc:  # noqa: BLE001 - a case's failure is its row, never the run's end
            if not isinstance(exc, (TACEResponseError, OSError)):
                logger.exception("case %s: unexpected error", task.case_id)
            message = str(exc) if isinstance(exc, (TACEResponseError, OSError)) else f"{type(exc).__name__}: {exc}"
            return CaseOutcome(task.case_id, "failed", error=message or type(exc).__name__,
                               error_type=type(exc).__name__, seconds=time.perf_counter() - started, worker=worker,
                               pid=os.getpid(), setup_s=setup_s)


def _run_on_worker(function: Callable[..., Any], setup: WorkerSetup, task: CaseTask, threads: int | None) -> CaseOutcome:
    return run_task(function, setup, task, threads, on_worker=True)


# --- the driver ----------------------------------------------------------------------------------
class CaseProgress:
    """A progress bar of cases: done / failed / remaining and the rate (tqdm, on stderr)."""

    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.total, self.done, self.failed = total, 0, 0
        self.bar = tqdm(total=total, unit="case", desc=label, disable=not enabled, dynamic_ncols=True)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"done {self.done}, failed {self.failed}, "
                                 f"remaining {self.total - self.done - self.failed}", refresh=False)

    def update(self, outcome: CaseOutcome) -> None:
        if outcome.ok:
            self.done += 1
        else:
            self.failed += 1
        self._postfix()
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def run_cases(
    function: Callable[..., Any],
    tasks: Sequence[CaseTask],
    setup: WorkerSetup,
    cluster: ClusterOptions | None = None,
    *,
    label: str = "cases",
    progress_bar: bool = True,
) -> Iterator[CaseOutcome]:
    """Run ``function(state, *task.args)`` for every task; yield each :class:`CaseOutcome` as it finishes.

    Args:
        function: a picklable top-level function; ``state`` is what ``setup`` built in its process.
        tasks: one per case.
        setup: builds the per-process state (a model) once per process.
        cluster: where they run (default: the embedded local cluster sized from the machine).
        label: the progress bar's name (also the tasks' name on the dashboard).
        progress_bar: show done / failed / remaining and the rate on stderr.

    Raises:
        InputError: the cluster cannot be reached (a bad address, a missing scheduler file).
        TACEResponseError: the scheduler was lost during the run (finished cases stay finished).
    """
    tasks = list(tasks)
    if not tasks:
        return
    cluster = cluster or ClusterOptions()
    if not cluster.external and (cluster.in_process or len(tasks) == 1 or not _dask_available(cluster)):
        progress = CaseProgress(len(tasks), label, progress_bar)
        try:
            for task in tasks:
                outcome = run_task(function, setup, task, cluster.threads)
                progress.update(outcome)
                yield outcome
        finally:
            progress.close()
        return
    with _client(cluster, len(tasks)) as (client, threads):
        yield from _run_on_cluster(client, function, setup, tasks, threads, label, progress_bar)


def _dask_available(cluster: ClusterOptions) -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        if cluster.workers is not None:
            raise InputError("--workers: the cases run on Dask, which is not installed in this Python; install it "
                             "(pip install dask distributed; in Slicer: slicer.util.pip_install('dask distributed')) "
                             "or give --workers 0 to run them in this process") from None
        logger.warning("Dask (dask, distributed) is not installed here: the cases run one after another in this "
                       "process; install it for parallel workers")
        return False
    return True


@contextlib.contextmanager
def _client(cluster: ClusterOptions, n_tasks: int):
    """A connected ``distributed.Client`` and the CPU threads to ask each worker for."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(f"{cluster.describe()}: Dask is not installed in this Python "
                         "(pip install dask distributed)") from None
    if cluster.external:
        client = _connect(Client, cluster)
        try:
            info = client.scheduler_info()
            served = "dashboard" in (info.get("services") or {})
            logger.info("running on %s (%d worker(s) now); dashboard: %s", cluster.describe(),
                        len(info.get("workers", {})), client.dashboard_link if served else "not served")
            yield client, cluster.threads
        finally:
            client.close()
        return
    workers, threads = cluster.local_plan(n_tasks)
    started = time.perf_counter()
    import dask

    # worker-saturation 1.0: a worker holds only the case it runs, so a worker that dies takes no
    # queued bystander with it (Dask counts a death against every case on that worker); the cost
    # is one scheduler round trip (~10 ms) between cases. Port 8787 busy: another port is taken,
    # and logged below.
    with warnings.catch_warnings(), dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                             dashboard_address=DASHBOARD_ADDRESS if cluster.dashboard else None,
                             silence_logs=logging.WARNING)
    try:
        client = Client(local)
        try:
            logger.info("local Dask cluster: %d worker process(es) × %d thread(s), started in %.1f s; "
                        "dashboard: %s", workers, threads, time.perf_counter() - started,
                        client.dashboard_link if cluster.dashboard else "off")
            yield client, threads
        finally:
            client.close()
    finally:
        local.close()


def _connect(client_class, cluster: ClusterOptions):
    if cluster.scheduler_file:
        path = Path(cluster.scheduler_file)
        if not path.is_file():
            raise InputError(f"--scheduler-file {path}: does not exist (dask scheduler --scheduler-file {path} "
                             "writes it when the scheduler starts)")
        where, kwargs = f"--scheduler-file {path}", {"scheduler_file": str(path)}
    else:
        address = str(cluster.scheduler).strip()
        where, kwargs = f"--scheduler {address}", {"address": address}
    try:
        return client_class(**kwargs)  # waits distributed.comm.timeouts.connect (30 s) for the scheduler
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"{where}: cannot connect to the Dask scheduler ({exc})") from None


def _run_on_cluster(client, function, setup: WorkerSetup, tasks: list[CaseTask], threads: int | None,
                    label: str, progress_bar: bool) -> Iterator[CaseOutcome]:
    from distributed import CancelledError, KilledWorker, as_completed

    run = uuid.uuid4().hex[:8]
    futures = {client.submit(_run_on_worker, function, setup, task, threads, pure=False,
                             key=f"{label}-{n}-{run}"): task for n, task in enumerate(tasks)}
    progress = CaseProgress(len(tasks), label, progress_bar)
    try:
        for future in as_completed(futures):
            task = futures.pop(future)
            try:
                outcome = future.result()
            except KilledWorker as exc:
                outcome = CaseOutcome(task.case_id, "failed", error_type="KilledWorker", error=(
                    "the worker process running this case died each time it was tried (killed, or out of memory); "
                    f"last on {getattr(exc, 'last_worker', None) and exc.last_worker.address or 'a worker'}"))
            except CancelledError:
                raise TACEResponseError(f"{label}: the Dask scheduler was lost before case {task.case_id} finished; "
                                        "rerun the same command to resume (finished cases are kept)") from None
            except Exception as exc:  # noqa: BLE001 - the cluster could not run it: the case's row says why
                outcome = CaseOutcome(task.case_id, "failed", error=f"{type(exc).__name__}: {exc}",
                                      error_type=type(exc).__name__)
            progress.update(outcome)
            yield outcome
    finally:
        progress.close()
        for future in futures:  # stopped early: let the cluster drop what has not run
            future.cancel()
