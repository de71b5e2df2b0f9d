"""Top-level functions the engine tests send to Dask workers (they import this module by name)."""

from __future__ import annotations

import os
import signal
import time

from TACEResponseLib.core.errors import InputError


def make_state(threads, tag: str) -> dict:
    """A worker's state: who built it, with how many threads."""
    return {"tag": tag, "pid": os.getpid(), "threads": threads, "built": time.time()}


def square(state: dict, x: int, fail_on: int = -1):
    if x == fail_on:
        raise InputError(f"case {x}: refused on purpose")
    if x == -2:
        raise ZeroDivisionError("a bug")
    return {"pid": state["pid"], "threads": state["threads"], "tag": state["tag"], "built": state["built"], "value": x * x}


def die_on(state: dict, x: int, doomed: int):
    """Kill this worker process when given ``doomed`` (every time it is tried)."""
    if x == doomed:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return x


def states_built() -> int:
    """How many states this worker process holds (run on every worker with ``client.run``)."""
    from TACEResponseLib.core import tasks

    return len(tasks._STATE)
