"""A client of a running ``tace-response web`` launcher without a browser, for the attack tests.

It speaks what the page speaks: HTTP with basic authentication then the cookie, the session start,
the session request (``/s/<id>/paraview/``), uploads, and wslink over the proxied websocket (msgpack
messages cut into chunks, each with wslink's 12-byte header: message id, offset, total size; a
``wslink.hello`` with the session key, then ``rpc`` calls). Also: the launcher as a subprocess, and the
memory and command line of its session processes (Linux ``/proc``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import secrets
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = "TACE_WEB_READY"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- the launcher as a user starts it ---------------------------------------------------------------
@dataclass
class Launcher:
    """``tace-response web`` running as a subprocess (its output in ``log``)."""

    process: subprocess.Popen
    url: str
    root: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def session_pids(self) -> list[int]:
        """The session processes this launcher started (its children running the session module)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if parent == self.pid and b"TACEResponseLib.frontend.web.session" in command:
                pids.append(int(entry.name))
        return sorted(pids)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_launcher(root: Path, *arguments: str, timeout: float = 90.0, env: dict | None = None) -> Launcher:
    """``python -m TACEResponseLib.cli web --port 0 ARGUMENTS`` with its temporary folders under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"launcher-{secrets.token_hex(3)}.log"
    environment = dict(os.environ, TMPDIR=str(root), PYTHONUNBUFFERED="1", **(env or {}))
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "TACEResponseLib.cli", "web", "--port", "0", *arguments],
                                   stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=root,
                                   start_new_session=True)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = log.read_text(errors="replace")
        match = re.search(rf"{READY} (\S+)", text)
        if match:
            return Launcher(process, match.group(1).rstrip("/"), root, log)
        if process.poll() is not None:
            raise RuntimeError(f"tace-response web exited with {process.returncode}:\n{text[-3000:]}")
        time.sleep(0.1)
    process.kill()
    raise TimeoutError(f"{READY} not printed after {timeout} s:\n{log.read_text()[-3000:]}")


def started_under(root: Path) -> list[int]:
    """Processes whose environment names ``root`` as their TMPDIR: a server's sessions and their workers."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"TMPDIR={root}".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def memory_mb(pid: int, field_name: str = "VmRSS") -> float:
    """A process's resident memory (``VmRSS``) or its peak (``VmHWM``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field_name)


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")


# --- wslink ---------------------------------------------------------------------------------------
def wslink_chunk(payload: bytes, message_id: int | None = None, offset: int = 0, total: int | None = None) -> bytes:
    """One wslink chunk: header (id, offset, total size; little-endian uint32) + content."""
    message_id = secrets.randbits(32) if message_id is None else message_id
    total = len(payload) if total is None else total
    return struct.pack("<III", message_id, offset, total) + payload


@dataclass
class WslinkClient:
    """A wslink connection through the launcher's websocket proxy."""

    ws: object
    client_id: str = ""
    _count: itertools.count = field(default_factory=itertools.count)

    async def send(self, message: dict) -> None:
        import msgpack

        await self.ws.send_bytes(wslink_chunk(msgpack.packb(message)))

    async def receive(self, rpc_id: str, timeout: float = 30.0) -> dict:
        """The answer to ``rpc_id`` (other messages, e.g. state pushes, are skipped)."""
        import msgpack
        from aiohttp import WSMsgType

        pending: dict[int, bytearray] = {}
        end = time.monotonic() + timeout
        while True:
            message = await asyncio.wait_for(self.ws.receive(), timeout=max(0.1, end - time.monotonic()))
            if message.type != WSMsgType.BINARY:
                raise ConnectionError(f"websocket: {message.type.name} {message.data!r} {message.extra!r}")
            message_id, offset, total = struct.unpack("<III", message.data[:12])
            buffer = pending.setdefault(message_id, bytearray(total))
            content = message.data[12:]
            buffer[offset:offset + len(content)] = content
            if offset + len(content) >= total:
                decoded = msgpack.unpackb(bytes(pending.pop(message_id)), strict_map_key=False)
                if isinstance(decoded, dict) and decoded.get("id") == rpc_id:
                    return decoded

    async def hello(self, secret: str) -> dict:
        rpc_id = "system:c0:0"
        await self.send({"wslink": "1.0", "id": rpc_id, "method": "wslink.hello", "args": [{"secret": secret}]})
        answer = await self.receive(rpc_id)
        self.client_id = str((answer.get("result") or {}).get("clientID", ""))
        return answer

    async def call(self, method: str, *args, timeout: float = 60.0, **kwargs) -> dict:
        rpc_id = f"rpc:{self.client_id}:{next(self._count)}"
        await self.send({"wslink": "1.0", "id": rpc_id, "method": method, "args": list(args), "kwargs": kwargs})
        return await self.receive(rpc_id, timeout)

    async def state(self) -> dict:
        return (await self.call("trame.state.get"))["result"]["state"]
