"""Run a command in the background without blocking the caller (Qt-free, testable).

The Slicer module runs the prediction as ``PythonSlicer -m TACEResponseLib.cli predict …``
so Slicer's GUI never freezes and a Cancel really stops the work. :class:`BackgroundRun`

- starts the command in its own process group / session (``start_new_session`` on POSIX,
  ``CREATE_NEW_PROCESS_GROUP`` on Windows), so the whole tree can be stopped;
- reads stdout and stderr on two daemon threads into a queue, so :meth:`BackgroundRun.poll`
  never blocks (the GUI calls it from a QTimer);
- parses the CLI's JSON progress lines ``{"progress": 0.0…1.0, "stage": "…"}``;
- on :meth:`BackgroundRun.cancel` sends SIGTERM to the group, then SIGKILL after a grace
  period (Windows: ``taskkill /T /F``), so grandchildren die too;
- lets the command write into a private staging folder (``{output}`` in the arguments) that
  is moved into place, or handed to the caller, only when the command succeeded; a failed or
  cancelled run leaves nothing partial behind;
- turns the CLI's ``error: <message>`` line into a clear message for the user.

:class:`WorkerProcess` is the warm alternative the module uses: one long-lived
``tace-response worker`` process (:mod:`TACEResponseLib.cli.worker`) that keeps the models
loaded between requests. A :class:`BackgroundRun` given a worker sends its command there
instead of starting a process, with the same progress, errors, staging folder and cancel: a
cancel kills the worker's whole process group, and the next request starts a new worker, as
it does after a crash. The worker exits when its caller closes it (or exits) or after an idle
timeout.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Mapping, Sequence

logger = logging.getLogger(__name__)

OUTPUT_PLACEHOLDER = "{output}"
INPUTS_PLACEHOLDER = "{inputs}"
ERROR_PREFIX = "error: "
_WINDOWS = os.name == "nt"
_CREATE_NO_WINDOW = 0x08000000


class RunState(str, Enum):
    """Life cycle of one background run."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclass(frozen=True)
class Progress:
    """One progress report of the command: fraction done (0…1) and the stage name."""

    fraction: float
    stage: str


@dataclass
class RunUpdate:
    """What :meth:`BackgroundRun.poll` learnt since the previous poll."""

    state: RunState
    fraction: float | None = None
    stage: str | None = None
    progressed: bool = False
    lines: list[str] = field(default_factory=list)
    error: str | None = None
    output_dir: Path | None = None

    @property
    def finished(self) -> bool:
        return self.state.finished


# --- parsing -----------------------------------------------------------------------------------
def parse_progress_line(line: str) -> Progress | None:
    """A :class:`Progress` from a JSON progress line, or None for any other line."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or "progress" not in data:
        return None
    try:
        fraction = min(max(float(data["progress"]), 0.0), 1.0)
    except (TypeError, ValueError):
        return None
    return Progress(fraction, str(data.get("stage", "")))


def extract_error(stderr_lines: Sequence[str], returncode: int | None) -> str:
    """The message to show for a failed run.

    The CLI reports user errors as one ``error: <message>`` line (exit status 2); that message
    is returned as is. Otherwise: a signal, the last line of a traceback, or the exit status.
    """
    lines = [line.rstrip() for line in stderr_lines if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX):].strip()
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the prediction process was stopped by {name}{hint}"
    if lines:
        last = lines[-1].strip()
        if any(line.startswith("Traceback") for line in lines):
            return f"the prediction process failed unexpectedly: {last} (details in the log)"
        return f"the prediction process exited with status {returncode}: {last}"
    return f"the prediction process exited with status {returncode} without a message"


# --- commands ----------------------------------------------------------------------------------
def inside_slicer() -> bool:
    """True inside the 3D Slicer application (GUI or ``--no-main-window``), False elsewhere
    (plain Python, pytest on the slicer-core wheel)."""
    slicer = sys.modules.get("slicer")
    return getattr(slicer, "app", None) is not None


def python_slicer_executable(in_slicer: bool | None = None, slicer_home: str | os.PathLike | None = None,
                             which=None) -> str:
    """The Python that runs the CLI: Slicer's ``PythonSlicer`` inside Slicer, this Python outside.

    Inside Slicer ``sys.executable`` is set to ``PythonSlicer`` looked up on PATH (or to "" when
    it is not there), so it cannot serve as a fallback; ``PythonSlicer`` is looked up on PATH,
    then in ``<Slicer home>/bin``, and its absence is an error, as in Slicer's own
    ``slicer.util._executePythonModule``. Outside Slicer it is the running interpreter.
    """
    in_slicer = inside_slicer() if in_slicer is None else in_slicer
    name = "PythonSlicer.exe" if _WINDOWS else "PythonSlicer"
    found = (which or shutil.which)("PythonSlicer")
    if found:
        return found
    if not in_slicer:
        return sys.executable
    if slicer_home is None:
        slicer_home = getattr(getattr(sys.modules.get("slicer"), "app", None), "slicerHome", None)
    candidate = Path(slicer_home) / "bin" / name if slicer_home else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    from TACEResponseLib.core.errors import TACEResponseError

    raise TACEResponseError(f"PythonSlicer executable not found on PATH or in {candidate or '<Slicer home>/bin'}; "
                            "the prediction runs in Slicer's own Python launcher. Reinstall 3D Slicer or start it "
                            "through its launcher")


def library_parent() -> Path:
    """The folder that contains the ``TACEResponseLib`` package (put on the child's PYTHONPATH)."""
    return Path(__file__).resolve().parents[2]


def library_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child Python that imports TACEResponseLib and reports progress promptly."""
    env = dict(os.environ if base is None else base)
    paths = [str(library_parent())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.setdefault("MPLBACKEND", "Agg")
    return env


def cli_command(arguments: Sequence[str], python: str | None = None) -> list[str]:
    """``[python, -m, TACEResponseLib.cli, *arguments]`` (the ``tace-response`` tool)."""
    return [python or python_slicer_executable(), "-m", "TACEResponseLib.cli", *map(str, arguments)]


# --- the warm worker ---------------------------------------------------------------------------
def worker_command(python: str | None = None, idle_timeout: float = 1800.0) -> list[str]:
    """``[python, -m, TACEResponseLib.cli, worker, --idle-timeout, S, --parent-pid, PID]``: a worker that exits
    when this process is gone (even if a launcher stands between them, or another process holds its stdin)."""
    return cli_command(["worker", "--idle-timeout", repr(float(idle_timeout)), "--parent-pid", str(os.getpid())],
                       python)


class WorkerJob:
    """One request running in a :class:`WorkerProcess`, seen through the parts of ``subprocess.Popen``
    that :class:`BackgroundRun` uses (``pid``, ``poll``, ``wait``, ``kill``)."""

    def __init__(self, worker: "WorkerProcess", request_id: str, lines: queue.Queue) -> None:
        self.worker, self.request_id, self.lines = worker, request_id, lines
        self.exit_status: int | None = None
        self.process = worker.process
        self.pid = self.process.pid

    def poll(self) -> int | None:
        if self.exit_status is not None:
            return self.exit_status
        return self.process.poll()  # the worker died during the request: its status

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.01)
        return int(self.poll())  # type: ignore[arg-type]

    def kill(self) -> None:
        self.process.kill()

    def settled(self) -> bool:
        """Everything of this request was read: its exit message, or the dead worker's last output."""
        if self.exit_status is not None:
            return True
        return self.process.poll() is not None and not any(t.is_alive() for t in self.worker.readers)


class WorkerProcess:
    """One ``tace-response worker`` process kept alive between requests (started on the first).

    ``submit(argv, lines)`` sends one request and returns its :class:`WorkerJob`; the request's
    output arrives in ``lines`` as ``("stdout"|"stderr", line)``. One request at a time. A dead
    worker (cancelled, crashed, timed out idle) is replaced by a new one on the next request.
    """

    def __init__(self, command: Sequence[str] | None = None, *, python: str | None = None,
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 idle_timeout: float = 1800.0) -> None:
        self.command = list(command) if command is not None else worker_command(python, idle_timeout)
        self.env = library_environment(env) if command is None else (dict(env) if env is not None else None)
        self.cwd = str(cwd) if cwd is not None else None
        self.process: subprocess.Popen | None = None
        self.readers: list[threading.Thread] = []
        self.job: WorkerJob | None = None
        self.starts = 0
        self._lock = threading.Lock()
        self._counter = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> "WorkerProcess":
        """Start the worker unless it runs (a dead one is replaced)."""
        if self.alive:
            return self
        if self.process is not None:
            logger.info("the prediction worker %s ended (status %s); starting a new one", self.process.pid,
                        self.process.returncode)
        kwargs: dict = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", errors="replace", bufsize=1, env=self.env, cwd=self.cwd)
        if _WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | _CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # cancel kills the worker's whole group
        logger.info("starting the prediction worker: %s", " ".join(self.command))
        self.process = subprocess.Popen(self.command, **kwargs)
        self.starts += 1
        self.job = None
        self.readers = [threading.Thread(target=self._read, args=(name, stream, self.process), daemon=True,
                                         name=f"tace-worker-{name}-{self.process.pid}")
                        for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))]
        for thread in self.readers:
            thread.start()
        return self

    def submit(self, argv: Sequence[str], lines: queue.Queue) -> WorkerJob:
        """Send one request (``tace-response`` arguments); its lines go to ``lines``."""
        with self._lock:
            if self.job is not None and not self.job.settled() and self.alive:
                raise RuntimeError("the prediction worker is busy")
            self.start()
            self._counter += 1
            job = WorkerJob(self, f"{os.getpid()}-{self._counter}", lines)
            self.job = job
        try:
            self.process.stdin.write(json.dumps({"id": job.request_id, "argv": [str(a) for a in argv]}) + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError) as exc:  # it died just now: the job reports its status
            logger.warning("could not send the request to the prediction worker: %s", exc)
        return job

    def close(self, timeout: float = 2.0) -> None:
        """Let the worker exit (its stdin closes), then make sure it did (process group killed)."""
        if self.process is None:
            return
        try:
            self.process.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_process_group(self.process, grace=0.5)
        if not _WINDOWS and _group_alive(self.process.pid):  # a helper it started outlived it
            kill_process_group(self.process, grace=0.5)
        for thread in self.readers:
            thread.join(0.5)

    def __del__(self) -> None:  # best effort: never leave a worker behind
        try:
            if self.process is not None and self.process.poll() is None:
                kill_process_group(self.process, grace=0.0)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _read(self, name: str, stream, process: subprocess.Popen) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._route(name, line.rstrip("\r\n"), process)
        except (OSError, ValueError):
            pass
        finally:
            job = self.job
            if job is not None and job.process is process:
                job.lines.put((name, None))

    def _route(self, name: str, line: str, process: subprocess.Popen) -> None:
        job = self.job if self.job is not None and self.job.process is process else None
        message = None
        if name == "stdout":
            try:
                message = json.loads(line)
            except ValueError:
                message = None
        if not isinstance(message, dict):  # raw output (stderr, or a stray line): the running request's log
            if job is not None and job.exit_status is None:
                job.lines.put(("stderr", line))
            else:
                logger.info("[worker %s] %s", process.pid, line)
            return
        if "ready" in message:
            return
        if job is None or message.get("id") != job.request_id:
            if message.get("err"):
                logger.info("[worker %s] %s", process.pid, message["err"])
            return
        if "exit" in message:
            try:
                job.exit_status = int(message["exit"])
            except (TypeError, ValueError):
                job.exit_status = 1
            job.lines.put(("stdout", None))
        elif "out" in message:
            job.lines.put(("stdout", str(message["out"])))
        elif "err" in message:
            job.lines.put(("stderr", str(message["err"])))


def kill_process_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the process group of ``proc`` (its own session), SIGKILL after ``grace`` s (Windows: taskkill)."""
    if _WINDOWS:
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, creationflags=_CREATE_NO_WINDOW, check=False)
        if proc.poll() is None:
            proc.kill()
        return
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.5)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.02)
        if proc.poll() is not None and not _group_alive(pgid):
            break
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- the runner --------------------------------------------------------------------------------
def _remove_tree(path: Path, attempts: int = 5) -> None:
    """Delete a folder; retried briefly because Windows keeps files of just-killed processes locked."""
    for attempt in range(attempts):
        if not path.exists():
            return
        shutil.rmtree(path, ignore_errors=attempt < attempts - 1)
        if path.exists():
            time.sleep(0.05 * (attempt + 1))


def _group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies waiting for a reaper do not count on Linux)."""
    proc = Path("/proc")
    if sys.platform.startswith("linux") and proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class BackgroundRun:
    """One command run in the background in a private work folder; poll it, cancel it.

    ``command`` may contain ``{output}`` (the staging folder the command writes into) and
    ``{inputs}`` (a folder the caller fills before :meth:`start`). With a ``worker``, ``command``
    is the ``tace-response`` arguments only, sent to that :class:`WorkerProcess`. When the command exits with
    status 0 and every file of ``required_outputs`` exists in the staging folder, the run
    succeeded: the staging folder is moved to ``destination`` (if given) or left for the caller
    to read (:attr:`output_dir`) and delete with :meth:`cleanup`. Otherwise the work folder is
    deleted (unless ``keep_work_dir``), so nothing partial remains.
    """

    def __init__(
        self,
        command: Sequence[str] = (),
        *,
        destination: str | os.PathLike | None = None,
        required_outputs: Sequence[str] = ("result.json",),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        work_root: str | os.PathLike | None = None,
        grace_period: float = 1.0,
        pipe_grace: float = 0.5,
        keep_work_dir: bool = False,
        max_log_lines: int = 2000,
        worker: WorkerProcess | None = None,
    ) -> None:
        self.worker = worker
        self.work_dir = Path(tempfile.mkdtemp(prefix="tace-run-", dir=work_root))
        self.inputs_dir = self.work_dir / "inputs"
        self.staging_dir = self.work_dir / "output.partial"
        self.inputs_dir.mkdir()
        self.staging_dir.mkdir()
        self.command = self._substitute(command)
        self.destination = Path(destination) if destination is not None else None
        self.required_outputs = tuple(required_outputs)
        self.env = dict(env) if env is not None else None
        self.cwd = str(cwd) if cwd is not None else None
        self.grace_period = float(grace_period)
        self.pipe_grace = float(pipe_grace)
        self.keep_work_dir = keep_work_dir
        self.state = RunState.PENDING
        self.fraction: float = 0.0
        self.stage: str = ""
        self.error: str | None = None
        self.returncode: int | None = None
        self.output_dir: Path | None = None
        self.log: deque[str] = deque(maxlen=max_log_lines)
        self.stderr: deque[str] = deque(maxlen=200)
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._exit_seen: float | None = None

    # -- life cycle ------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.started_at

    def _substitute(self, command: Sequence[str]) -> list[str]:
        return [str(a).replace(OUTPUT_PLACEHOLDER, str(self.staging_dir)).replace(INPUTS_PLACEHOLDER, str(self.inputs_dir))
                for a in command]

    def start(self, command: Sequence[str] | None = None) -> "BackgroundRun":
        """Launch the command (or ``command``, when it is only known after the inputs were written)."""
        if self.state is not RunState.PENDING:
            raise RuntimeError(f"run already {self.state.value}")
        if command is not None:
            self.command = self._substitute(command)
        if not self.command:
            raise ValueError("no command to run")
        if self.worker is not None:
            logger.info("requesting from the worker: %s", " ".join(self.command))
            try:
                self._proc = self.worker.submit(self.command, self._queue)  # type: ignore[assignment]
            except OSError as exc:
                self._fail(f"could not start the prediction worker {self.worker.command[0]!r}: {exc.strerror or exc}")
                return self
            self.started_at = time.monotonic()
            self.state = RunState.RUNNING
            return self
        kwargs: dict = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", errors="replace", bufsize=1, env=self.env, cwd=self.cwd)
        if _WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | _CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # own session and process group: pgid == pid
        logger.info("starting: %s", " ".join(self.command))
        try:
            self._proc = subprocess.Popen(self.command, **kwargs)
        except OSError as exc:
            self._fail(f"could not start {self.command[0]!r}: {exc.strerror or exc}")
            return self
        self.started_at = time.monotonic()
        self.state = RunState.RUNNING
        for name, stream in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
            thread = threading.Thread(target=self._read, args=(name, stream), name=f"tace-{name}-{self.pid}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _read(self, name: str, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):  # stream closed while reading (cancel)
            pass
        finally:
            self._queue.put((name, None))

    def _drain(self, update: RunUpdate) -> None:
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is None:
                continue
            if name == "stdout":
                progress = parse_progress_line(line)
                if progress is not None:
                    self.fraction, self.stage = progress.fraction, progress.stage
                    update.progressed = True
                    continue
            else:
                self.stderr.append(line)
            self.log.append(line)
            update.lines.append(line)
            logger.info("[%s] %s", self.pid, line)

    def poll(self) -> RunUpdate:
        """New output and progress since the last call; finishes the run when the process has exited."""
        update = RunUpdate(self.state)
        self._drain(update)
        if self.state is RunState.RUNNING and self._proc is not None:
            returncode = self._proc.poll()
            if returncode is not None:
                now = time.monotonic()
                self._exit_seen = self._exit_seen or now
                readers_done = self._readers_done()
                if readers_done or now - self._exit_seen > self.pipe_grace:
                    if not readers_done:  # something the command started still holds its pipes
                        logger.warning("process %s exited but its children keep running; stopping them", self.pid)
                        self._kill_tree(grace=0.2)
                    self._join_readers(0.5)
                    self._drain(update)
                    self._finish(returncode)
        update.state, update.fraction, update.stage = self.state, self.fraction, self.stage
        update.error, update.output_dir = self.error, self.output_dir
        return update

    def wait(self, timeout: float | None = None, interval: float = 0.01) -> RunUpdate:
        """Block until the run finished (or ``timeout`` seconds passed); for scripts and tests."""
        deadline = None if timeout is None else time.monotonic() + timeout
        lines: list[str] = []
        progressed = False
        while True:
            update = self.poll()
            lines += update.lines
            progressed |= update.progressed
            if update.finished or self.state is RunState.PENDING or (deadline and time.monotonic() > deadline):
                update.lines, update.progressed = lines, progressed
                return update
            time.sleep(interval)

    def cancel(self) -> None:
        """Stop the whole process tree (SIGTERM, then SIGKILL after the grace period) and clean up."""
        if self.state is RunState.PENDING:
            self.state = RunState.CANCELLED
            self.finished_at = time.monotonic()
            self._discard()
            return
        if self.state is not RunState.RUNNING:
            return
        logger.info("cancelling process %s", self.pid)
        self._kill_tree(grace=self.grace_period)
        self.returncode = self._proc.poll() if self._proc is not None else None
        self._join_readers(0.5)
        self._drain(RunUpdate(self.state))
        self.state = RunState.CANCELLED
        self.error = None
        self.finished_at = time.monotonic()
        self._discard()

    def cleanup(self) -> None:
        """Delete the work folder (inputs, and the outputs if they were not moved to a destination)."""
        if self.state is RunState.RUNNING:
            self.cancel()
        if not self.keep_work_dir:
            _remove_tree(self.work_dir)
            if self.output_dir is not None and self.output_dir == self.staging_dir:
                self.output_dir = None

    def __del__(self) -> None:  # best effort: never leave a process behind
        try:
            if self.state is RunState.RUNNING and self._proc is not None and self._proc.poll() is None:
                self._kill_tree(grace=0.0)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- internals -------------------------------------------------------------------------
    def _readers_done(self) -> bool:
        if isinstance(self._proc, WorkerJob):
            return self._proc.settled()
        return not any(t.is_alive() for t in self._threads)

    def _join_readers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _finish(self, returncode: int) -> None:
        self.returncode = returncode
        self.finished_at = time.monotonic()
        if returncode != 0:
            self._fail(extract_error(list(self.stderr), returncode))
            return
        missing = [name for name in self.required_outputs if not (self.staging_dir / name).exists()]
        if missing:
            self._fail(f"the prediction process finished without writing {', '.join(missing)}")
            return
        try:
            self.output_dir = self._move_into_place()
        except OSError as exc:
            self._fail(f"could not move the results to {self.destination}: {exc}")
            return
        self.state = RunState.SUCCEEDED
        logger.info("process %s finished in %.1f s", self.pid, self.elapsed)

    def _move_into_place(self) -> Path:
        if self.destination is None:
            return self.staging_dir
        destination = self.destination
        destination.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if destination.exists():
            old = destination.with_name(f".{destination.name}.old-{os.getpid()}-{int(time.time() * 1000)}")
            os.replace(destination, old)
        shutil.move(str(self.staging_dir), str(destination))
        if old is not None:
            _remove_tree(old)
        if not self.keep_work_dir:
            _remove_tree(self.work_dir)
        return destination

    def _fail(self, message: str) -> None:
        self.state = RunState.FAILED
        self.error = message
        self.finished_at = time.monotonic()
        logger.warning("background run failed: %s", message)
        self._discard()

    def _discard(self) -> None:
        _remove_tree(self.staging_dir)
        if not self.keep_work_dir:
            _remove_tree(self.work_dir)
        self.output_dir = None

    def _kill_tree(self, grace: float) -> None:
        if self._proc is None:
            return
        if isinstance(self._proc, WorkerJob):  # the worker and whatever it started; the next request starts another
            kill_process_group(self._proc.process, grace)
            return
        if _WINDOWS:
            self._kill_tree_windows()
        else:
            self._kill_tree_posix(grace)
        try:
            self._proc.wait(timeout=max(grace, 0.5))
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=1.0)

    def _descendants(self) -> list:
        """Children that may have left the process group (psutil, when installed)."""
        try:
            import psutil  # noqa: PLC0415 - optional
        except ImportError:
            return []
        try:
            return psutil.Process(self._proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def _kill_tree_posix(self, grace: float) -> None:
        pgid = self._proc.pid  # start_new_session: the leader's pid is the group id
        strays = self._descendants()

        def signal_group(sig: int) -> bool:
            try:
                os.killpg(pgid, sig)
                return True
            except (ProcessLookupError, PermissionError):
                return False

        if not signal_group(signal.SIGTERM):
            return
        for process in strays:
            try:
                process.terminate()
            except Exception:  # noqa: BLE001 - already gone
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self._proc.poll() is not None and not _group_alive(pgid):
                break  # leader exited and nothing of the group runs any more
            time.sleep(0.02)
        if _group_alive(pgid):
            signal_group(signal.SIGKILL)
        for process in strays:
            try:
                process.kill()
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _kill_tree_windows(self) -> None:
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._proc.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, creationflags=_CREATE_NO_WINDOW, check=False)
        if self._proc.poll() is None:
            self._proc.kill()
