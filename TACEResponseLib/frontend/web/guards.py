"""What the launcher of ``tace-response web`` holds every connection to: connections and their
headers (:class:`ConnectionGuard`), websocket messages (:class:`WslinkGate`), and which hosts and
origins may reach it (:class:`HostRules`).

* **Connections** (against slowloris: many half-sent requests holding every connection). The
  listening socket's protocol factory wraps aiohttp's request handler: a connection beyond the
  total or per-address cap is answered 503 and closed at once, and a connection whose first
  request's headers are not complete within the header timeout is closed. After the first
  request aiohttp's keep-alive timeout closes idle connections (set short), and the upload handler
  times out a body that stops arriving.
* **Websocket messages** (against a 13-byte frame declaring a 1 GiB message: wslink's un-chunker
  allocates what a chunk header declares). The proxy reads wslink's chunk header (message id,
  offset, total size; little-endian uint32) of every client frame and closes the connection on a
  message larger than the cap, a chunk outside its message, or too many unfinished messages, before
  the frame reaches the session process.
* **Hosts and origins** (against DNS rebinding and cross-site pages): requests must name an allowed
  host; a websocket or a state-changing request whose ``Origin`` is another site is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

logger = logging.getLogger(__name__)

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 45\r\n\r\nToo many connections; try again in a moment.\n")


@dataclass(frozen=True)
class ConnectionLimits:
    """Caps and timeouts of the launcher's connections (seconds, counts)."""

    max_connections: int = 512
    max_connections_per_address: int = 64   # not applied behind a proxy (every connection is the proxy's)
    header_timeout: float = 10.0             # the first request's headers must be complete by then
    keepalive_timeout: float = 15.0          # an idle connection between requests is closed after this
    body_timeout: float = 30.0               # an upload that sends nothing for this long is dropped


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's request handler behind a gate: admitted or refused at once, closed when its first
    request's headers take too long."""

    def __init__(self, guard: "ConnectionGuard", handler: asyncio.Protocol) -> None:
        self._guard, self._handler = guard, handler
        self._address: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        if not self._guard.admit(address):
            transport.write(_BUSY)
            transport.close()
            return
        self._address = address
        self._timer = asyncio.get_running_loop().call_later(self._guard.limits.header_timeout, self._too_slow)
        self._handler.connection_made(transport)

    def _too_slow(self) -> None:
        self._timer = None
        self._guard.timed_out += 1
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._address is None:
            return
        if self._timer is not None:
            self._head = (self._head + data)[-(1 << 16):]
            if b"\r\n\r\n" in self._head:
                self._timer.cancel()
                self._timer = None
                self._head = b""
        self._handler.data_received(data)

    def eof_received(self):
        return self._handler.eof_received() if self._address is not None else None

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._address is not None:
            self._guard.release(self._address)
            self._address = None
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._address is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._address is not None:
            self._handler.resume_writing()


@dataclass
class ConnectionGuard:
    """Counts open connections in total and per address."""

    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    per_address: bool = True
    open: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    timed_out: int = 0

    @property
    def total(self) -> int:
        return sum(self.open.values())

    def admit(self, address: str) -> bool:
        if self.total >= self.limits.max_connections or (
                self.per_address and self.open.get(address, 0) >= self.limits.max_connections_per_address):
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                logger.warning("connection from %s refused: %d open (%d from it); %d refused so far", address,
                               self.total, self.open.get(address, 0), self.refused)
            return False
        self.open[address] = self.open.get(address, 0) + 1
        return True

    def release(self, address: str) -> None:
        left = self.open.get(address, 0) - 1
        if left > 0:
            self.open[address] = left
        else:
            self.open.pop(address, None)

    def wrap(self, handler: asyncio.Protocol) -> asyncio.Protocol:
        return _GuardedProtocol(self, handler)


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site, its connections made through a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, **kwargs) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            lambda: self.guard.wrap(server()), self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self.guard.limits.header_timeout if self._ssl_context else None)

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]


# --- websocket messages -------------------------------------------------------------------------------
_WSLINK_HEADER = struct.Struct("<III")  # message id, offset of this chunk, total size of the message


@dataclass(frozen=True)
class WebsocketLimits:
    """What a browser may send a session over its websocket."""

    max_message_bytes: int = 8 << 20     # one wslink message (all its chunks)
    max_frame_bytes: int = 4 << 20       # one websocket frame (wslink's own chunk size is 4 MiB)
    max_pending_messages: int = 8        # messages begun and not finished
    max_websockets_per_session: int = 4


class WslinkGate:
    """Checks each binary frame a client sends as a wslink chunk; :meth:`problem` says why one may not pass."""

    def __init__(self, limits: WebsocketLimits) -> None:
        self.limits = limits
        self.pending: dict[int, list[int]] = {}  # message id → [total, received]

    def problem(self, frame: bytes) -> str | None:
        if len(frame) < _WSLINK_HEADER.size:
            return "a frame shorter than wslink's chunk header"
        message_id, offset, total = _WSLINK_HEADER.unpack_from(frame)
        content = len(frame) - _WSLINK_HEADER.size
        if total > self.limits.max_message_bytes:
            return f"a message of {total:,} bytes, more than the {self.limits.max_message_bytes:,} allowed"
        state = self.pending.get(message_id)
        if state is None:
            if len(self.pending) >= self.limits.max_pending_messages:
                return f"more than {self.limits.max_pending_messages} unfinished messages"
            state = self.pending[message_id] = [total, 0]
        if state[0] != total or offset + content > total:
            return "a chunk outside its message"
        state[1] += content
        if state[1] >= total:
            del self.pending[message_id]
        return None


# --- hosts and origins --------------------------------------------------------------------------------
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(value: str) -> str:
    """``name`` of ``name``, ``name:port``, ``[v6]:port`` (lower case)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass
class HostRules:
    """The host names requests may carry (DNS rebinding: another name resolving to this server is refused)."""

    allowed: set[str]
    trust_forwarded: bool = False

    @classmethod
    def for_address(cls, bind: str, extra: list[str] | tuple[str, ...] = (), trust_forwarded: bool = False) -> "HostRules":
        """Loopback names, the bound address, this machine's names when every interface is bound, and ``extra``."""
        allowed = set(_LOOPBACK_NAMES) | {_hostname(h) for h in extra if h.strip()}
        if bind not in ("0.0.0.0", "::", ""):
            allowed.add(_hostname(bind))
        else:
            allowed |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return cls(allowed, trust_forwarded)

    def request_host(self, request: web.Request) -> str:
        forwarded = request.headers.get("X-Forwarded-Host", "") if self.trust_forwarded else ""
        return (forwarded.split(",")[0].strip() or request.headers.get("Host", "")).lower()

    def host_problem(self, request: web.Request) -> str | None:
        host = _hostname(self.request_host(request))
        if host not in self.allowed:
            return f"host {host!r} is not one this server answers to"
        return None

    def origin_problem(self, request: web.Request) -> str | None:
        """Why the request's ``Origin`` (when it sends one) is not this server's own."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        parts = urlsplit(origin)
        if origin == "null" or not parts.netloc:
            return "a request from an opaque origin"
        host = self.request_host(request)
        host_port = urlsplit(f"//{host}").port if host else None
        try:
            origin_port = parts.port
        except ValueError:
            return f"a request from a malformed origin ({origin})"
        # the same name; the same port too when the Host header names one (a proxy may send the name only)
        if (parts.hostname or "") != _hostname(host) or (host_port is not None and origin_port != host_port):
            return f"a request from another site ({origin})"
        return None
