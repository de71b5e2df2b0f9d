"""``tace-response worker``: one long-lived process that runs sub-commands on request.

The Slicer module keeps one worker alive while it is in use
(:class:`~TACEResponseLib.frontend.process.WorkerProcess`), so the second prediction of a
session pays neither the imports nor the model load: the worker keeps each model's
:class:`~TACEResponseLib.prediction.predictor.Predictor` (network, backend engine) between
requests, and the volumes of the last request while their files are unchanged (the module
writes an unchanged volume node once per session). Protocol, one JSON object per line:

- stdin, from the caller: ``{"id": "r1", "argv": ["predict", "--image", …]}`` — exactly the
  arguments ``tace-response`` takes;
- stdout, to the caller: ``{"ready": PID}`` once, then per request every line the command
  writes, ``{"id": "r1", "out": "…"}`` (its stdout, e.g. the ``--progress`` lines) or
  ``{"id": "r1", "err": "…"}`` (its stderr: log lines, the ``error: …`` line), and last
  ``{"id": "r1", "exit": STATUS}`` (the status ``tace-response`` would exit with).

Requests run one at a time. The worker exits when its stdin closes (the caller quit, or
Slicer exited — even while a request runs), when the process that started it is gone (its parent
changed, or ``--parent-pid`` no longer runs: checked every second, for the case where another
process still holds the write end of its stdin), or after ``--idle-timeout`` seconds without a
request. Cancelling a request means killing the worker's process group; the caller starts
a new worker for the next request. Output that libraries write straight to file descriptor 1
is sent to stderr, so it cannot break the protocol.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence, TextIO

from TACEResponseLib.cli.common import Command, number


class _Relay(io.TextIOBase):
    """A text stream whose complete lines become ``{"id": …, <kind>: line}`` protocol messages."""

    def __init__(self, kind: str, emit: Callable[[dict], None], current: Callable[[], str | None]) -> None:
        super().__init__()
        self.kind, self._emit, self._current = kind, emit, current
        self._buffer = ""
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += str(text)
            *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._emit({"id": self._current(), self.kind: line.rstrip("\r")})
        return len(text)

    def flush(self) -> None:
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._emit({"id": self._current(), self.kind: rest})


#: this process's parent when the module was first imported (before the worker's slow imports): a parent that
#: dies while they run is still noticed
STARTED_UNDER = os.getppid()


def exit_with_helpers(status: int = 0) -> None:
    """End this worker at once, and the processes it started: they share its process group when it leads one
    (the Slicer module starts it in a session of its own). A helper forked while another thread held a lock
    (an import, a thread pool) may never finish on its own; it must not outlive the worker."""
    if os.name != "nt" and os.getpgid(0) == os.getpid():
        for pid in group_members(os.getpid()):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
    os._exit(status)


def group_members(pgid: int) -> list[int]:
    """The running processes of process group ``pgid`` (Linux: read from /proc; elsewhere none known)."""
    members = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(entry.parent.name))
    return members


def parent_gone(started_under: int, parent_pid: int | None = None) -> bool:
    """True when the process that started this one is gone: this process's parent is no longer
    ``started_under`` (it died and this one was re-parented), or ``parent_pid`` no longer runs.
    POSIX only (on Windows a parent's pid says nothing after it exits): False there."""
    if os.name == "nt":
        return False
    if os.getppid() != started_under:
        return True
    if parent_pid and parent_pid != started_under:
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # runs, under another user
            return False
    return False


def watch_parent(parent_pid: int | None = None, interval: float = 1.0,
                 exit: Callable[[int], None] = exit_with_helpers) -> threading.Thread:
    """A daemon thread that ends this process (``exit(0)``) once :func:`parent_gone`."""

    def watch() -> None:
        while not parent_gone(STARTED_UNDER, parent_pid):
            time.sleep(interval)
        sys.__stderr__.write("the process that started this worker is gone; the worker exits\n")
        exit(0)

    thread = threading.Thread(target=watch, name="tace-worker-parent", daemon=True)
    thread.start()
    return thread


def serve(run: Callable[[Sequence[str]], int], idle_timeout: float | None = None,
          stdin: TextIO | None = None, parent_pid: int | None = None) -> int:
    """Answer requests from ``stdin`` with ``run(argv)`` until it closes, the process that started this
    one is gone (:func:`watch_parent`; ``parent_pid``: the caller, when a launcher stands between), or
    ``idle_timeout`` s pass without a request."""
    stdin = stdin or sys.stdin
    watch_parent(parent_pid)
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)  # the protocol's own descriptor
    os.dup2(2, 1)  # whatever a library prints on descriptor 1 goes to stderr
    lock = threading.Lock()
    state: dict[str, str | None] = {"id": None}

    def emit(message: dict) -> None:
        with lock:
            channel.write(json.dumps(message, ensure_ascii=False) + "\n")
            channel.flush()

    import logging

    previous = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    sys.stdout = _Relay("out", emit, lambda: state["id"])
    sys.stderr = _Relay("err", emit, lambda: state["id"])
    for handler in logging.getLogger().handlers:  # log lines of a request belong to it
        if isinstance(handler, logging.StreamHandler) and handler.stream in previous:
            handler.setStream(sys.stderr)
    requests: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stdin:
            requests.put(line)
        exit_with_helpers(0)  # the caller is gone: stop now, even in the middle of a request

    threading.Thread(target=read, name="tace-worker-stdin", daemon=True).start()
    emit({"ready": os.getpid()})
    while True:
        try:
            line = requests.get(timeout=idle_timeout)
        except queue.Empty:
            sys.stdout.flush()
            sys.stderr.flush()
            exit_with_helpers(0)  # idle: end with the helpers
        try:
            request = json.loads(line)
            request_id, argv = str(request["id"]), [str(a) for a in request["argv"]]
        except (ValueError, KeyError, TypeError) as exc:
            emit({"id": None, "err": f"error: unreadable request ({exc}): {line.strip()[:200]}"})
            continue
        state["id"] = request_id
        try:
            status = int(run(argv) or 0)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - a bug in one request must not end the worker
            sys.stderr.write(traceback.format_exc())
            status = 1
        sys.stdout.flush()
        sys.stderr.flush()
        emit({"id": request_id, "exit": status})
        state["id"] = None


def cmd_worker(args: argparse.Namespace) -> int:
    """Serve ``tace-response`` requests on stdin/stdout, models kept loaded between them.

    ``args.tool`` is the tool's ``main`` (:func:`TACEResponseLib.cli.main`), which runs each request:
    the parser hands it over, so this module does not import the package that registers it."""
    from TACEResponseLib.cli import case_commands
    from TACEResponseLib.prediction import case

    case_commands.WARM_PREDICTORS = {}  # keep each model loaded between requests
    case.READ_CACHE = {}  # and the last request's volumes, while their files are unchanged
    return serve(args.tool, idle_timeout=args.idle_timeout or None, parent_pid=args.parent_pid)


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--idle-timeout", type=number(float, 0, 1e7, zero="never"), default=1800.0, metavar="SECONDS",
                   help="exit after this many seconds without a request (default 1800)")
    p.add_argument("--parent-pid", type=number(int, 1, 2**31 - 1), default=None, metavar="PID",
                   help="exit when this process is gone, as when this worker's own parent is (the caller, when a "
                        "launcher such as PythonSlicer stands between)")


COMMANDS = [
    Command("worker", cmd_worker, _worker_args,
            "serve requests (JSON lines on stdin/stdout) with models kept loaded: the Slicer module's warm worker",
            hidden=True),
]
