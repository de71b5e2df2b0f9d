"""The session manager of ``tace-response web``: one server process per browser page, behind one port.

A trame process holds one MRML scene and one page state, shared by every browser connected to it.
So that one person's images, segmentation and results are never visible to another, each page
that opens ``/`` gets its own session process (:mod:`.session`), bound to 127.0.0.1 on a random
port, protected by a random key, and working in its own folder. The launcher

* binds 127.0.0.1 by default; any other address needs a users file (:mod:`.auth`: HTTP basic
  authentication, then an HttpOnly cookie), so there is no anonymous remote access;
* redirects ``/`` to ``/s/<id>/`` (128-bit random id) and proxies that page, its static files and
  its websocket to the session process; a session belongs to the user who opened it;
* answers the page's session request (``/s/<id>/paraview/``) with the websocket address and the
  session key, so the key never appears in a URL;
* receives uploads (``POST /s/<id>/upload``) straight into the session folder, checking type,
  size and count while streaming (:mod:`.uploads`);
* removes the session folder when the session process ends (it ends by itself a set time after
  its page closed), and every folder and process when the launcher stops;
* keeps ``spare_sessions`` (the command's default: 1) session started ahead of its page, so that a
  page opened gets a session already running, its case loaded and its prediction worker warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientSession, WSMsgType, web
from aiohttp import ClientError

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.frontend.web.auth import read_users, verify_password
from TACEResponseLib.frontend.web.uploads import UploadLimits, stored_name, upload_problem

logger = logging.getLogger(__name__)

READY_PREFIX = "TACE_WEB_SESSION_READY"
LAUNCHER_READY = "TACE_WEB_READY"
COOKIE = "tace_web_auth"
USER = web.RequestKey("tace_user", object)  # the logged-in user (None: no users file)
NEW_TOKEN = web.RequestKey("tace_new_token", str)
_PROXY_HEADERS = ("Content-Type", "Cache-Control", "Last-Modified", "ETag")


@dataclass
class WebOptions:
    """How ``tace-response web`` serves (see the command's ``--help``)."""

    host: str = "127.0.0.1"
    port: int = 8080
    users_file: Path | None = None
    session_arguments: list[str] = field(default_factory=list)
    max_sessions: int = 4
    session_timeout: int = 60
    start_timeout: float = 180.0
    limits: UploadLimits = field(default_factory=UploadLimits)
    work_root: Path | None = None
    python: str = sys.executable
    tls_cert: Path | None = None
    tls_key: Path | None = None
    spare_sessions: int = 0  # the command's default is 1 (--spare-sessions)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serving(options: WebOptions) -> dict[str, str] | None:
    """The users allowed in (None: loopback only, no login); InputError when serving a network
    without a users file, or with half a TLS configuration."""
    if bool(options.tls_cert) != bool(options.tls_key):
        raise InputError("--tls-cert and --tls-key go together")
    if options.users_file is not None:
        return read_users(options.users_file)
    if not is_loopback(options.host):
        raise InputError(f"serving on {options.host} would let anyone on the network in: give --users FILE "
                         "(create it with --add-user NAME), or keep the default --host 127.0.0.1 and put an "
                         "authenticating reverse proxy in front")
    return None


@dataclass
class Session:
    """One session process and its folder."""

    id: str
    user: str | None
    folder: Path
    key: str
    process: asyncio.subprocess.Process | None = None
    port: int | None = None
    started: float = field(default_factory=time.monotonic)
    uploaded_bytes: int = 0
    uploaded_files: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


class Launcher:
    """The aiohttp application: authentication, sessions, proxying, uploads, clean-up."""

    def __init__(self, options: WebOptions) -> None:
        self.options = options
        self.users = check_serving(options)
        self.root = Path(tempfile.mkdtemp(prefix="tace-web-", dir=options.work_root))
        os.chmod(self.root, 0o700)
        self.sessions: dict[str, Session] = {}
        self.tokens: dict[str, str] = {}  # cookie token → user
        self.spare: Session | None = None  # started before its page (given to the next page opened)
        self.http: ClientSession | None = None
        self.app = web.Application(middlewares=[self._authenticate], client_max_size=1024 ** 2)
        self.app.add_routes([
            web.get("/", self.new_session),
            web.post("/s/{sid}/paraview/", self.connection_info),
            web.post("/s/{sid}/upload", self.upload),
            web.get("/s/{sid}/ws", self.websocket),
            web.get("/s/{sid}", self.to_slash),
            web.get("/s/{sid}/{tail:.*}", self.static),
        ])
        self.app.on_startup.append(self._start)
        self.app.on_cleanup.append(self._stop)

    # -- life cycle -----------------------------------------------------------------------------
    async def _start(self, _app) -> None:
        self.http = ClientSession(auto_decompress=False)
        self._start_spare()

    async def _stop(self, _app) -> None:
        spare, self.spare, self.options.spare_sessions = self.spare, None, 0
        ending = list(self.sessions.values()) + ([spare] if spare is not None else [])
        await asyncio.gather(*(self.end_session(s) for s in ending), return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- authentication -------------------------------------------------------------------------
    @web.middleware
    async def _authenticate(self, request: web.Request, handler):
        if self.users is None:
            request[USER] = None
            return await handler(request)
        token = request.cookies.get(COOKIE)
        user = self.tokens.get(token or "")
        if user is None:
            user = self._basic_user(request.headers.get("Authorization", ""))
            if user is None:
                return web.Response(status=401, text="Log in to use TACEResponse.",
                                    headers={"WWW-Authenticate": 'Basic realm="TACEResponse", charset="UTF-8"'})
            token = secrets.token_urlsafe(32)
            self.tokens[token] = user
            request[NEW_TOKEN] = token
        request[USER] = user
        response = await handler(request)
        if request.get(NEW_TOKEN) and isinstance(response, web.StreamResponse) and not response.prepared:
            response.set_cookie(COOKIE, request[NEW_TOKEN], httponly=True, samesite="Strict",
                                secure=self.options.tls_cert is not None, path="/")
        return response

    def _basic_user(self, header: str) -> str | None:
        import base64
        import binascii

        if not header.startswith("Basic "):
            return None
        try:
            name, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        encoded = self.users.get(name) if self.users else None
        return name if encoded is not None and verify_password(password, encoded) else None

    def _session(self, request: web.Request) -> Session:
        session = self.sessions.get(request.match_info["sid"])
        if session is None or session.user != request[USER]:
            raise web.HTTPNotFound(text="This session has ended (sessions end a while after their page closes). "
                                        "Open the start page again for a new one.")
        return session

    # -- sessions -------------------------------------------------------------------------------
    def _start_spare(self) -> None:
        """Start a spare session unless one runs, spares are off, or every session is in use."""
        if self.spare is None and self.options.spare_sessions > 0 and len(self.sessions) < self.options.max_sessions:
            sid = secrets.token_hex(16)
            folder = self.root / sid
            folder.mkdir(mode=0o700)
            self.spare = Session(sid, None, folder, secrets.token_urlsafe(32))
            asyncio.get_running_loop().create_task(self._run_session(self.spare, spare=True))

    async def _claim_spare(self, user) -> Session | None:
        """The spare session for this page (it becomes the user's; a new spare starts), waiting for it when
        it is still starting (it is ahead of any session started now); None when there is none."""
        spare = self.spare
        if spare is not None and not spare.ready.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(spare.ready.wait()), timeout=self.options.start_timeout)
        if spare is None or spare is not self.spare or not spare.ready.is_set() or spare.error \
                or spare.process is None or spare.process.returncode is not None:
            return None
        self.spare, spare.user, spare.started = None, user, time.monotonic()
        self.sessions[spare.id] = spare
        self._start_spare()
        return spare

    async def new_session(self, request: web.Request) -> web.StreamResponse:
        """``/``: start a session process for this page and send the browser to it."""
        if len(self.sessions) >= self.options.max_sessions:
            return web.Response(status=503, text=f"All {self.options.max_sessions} sessions are in use; "
                                                  "try again when one has ended.")
        spare = await self._claim_spare(request[USER])
        if spare is not None:
            return web.Response(status=302, headers={"Location": f"/s/{spare.id}/"})
        sid = secrets.token_hex(16)
        folder = self.root / sid
        folder.mkdir(mode=0o700)
        session = Session(sid, request[USER], folder, secrets.token_urlsafe(32))
        self.sessions[sid] = session
        asyncio.get_running_loop().create_task(self._run_session(session))
        await asyncio.wait_for(session.ready.wait(), timeout=self.options.start_timeout + 5)
        if session.error:
            return web.Response(status=500, text=f"The session could not start: {session.error}")
        return web.Response(status=302, headers={"Location": f"/s/{sid}/"})

    async def _run_session(self, session: Session, spare: bool = False) -> None:
        key_file = session.folder / "session.key"
        key_file.write_text(session.key)
        os.chmod(key_file, 0o600)
        command = [self.options.python, "-m", "TACEResponseLib.frontend.web.session", "--host", "127.0.0.1",
                   "--port", "0", "--server", "--timeout", str(self.options.session_timeout),
                   "--authKeyFile", str(key_file), "--session-dir", str(session.folder),
                   "--upload-limits", json.dumps(self.options.limits.to_client()), *self.options.session_arguments,
                   *(["--spare"] if spare else [])]
        env = dict(os.environ, PYTHONUNBUFFERED="1", TRAME_SERVER="1")
        env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        try:
            session.process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
            reader = asyncio.get_running_loop().create_task(self._read_output(session))
            try:
                await asyncio.wait_for(asyncio.shield(session.ready.wait()), timeout=self.options.start_timeout)
            except asyncio.TimeoutError:
                session.error = f"no answer within {self.options.start_timeout:.0f} s"
                session.ready.set()
            if session.error:
                logger.warning("session %s did not start: %s", session.id[:8], session.error)
            else:
                logger.info("%s %s ready on port %s (user %s)", "spare session" if spare else "session",
                            session.id[:8], session.port, session.user)
                await session.process.wait()
            await asyncio.wait_for(reader, timeout=5)
        except Exception as exc:  # noqa: BLE001 - a session that fails must not stop the launcher
            session.error = session.error or str(exc)
            session.ready.set()
            logger.exception("session %s failed", session.id[:8])
        finally:
            await self.end_session(session)
            if self.spare is session:  # a spare that failed or ended before its page came
                self.spare = None

    async def _read_output(self, session: Session) -> None:
        assert session.process is not None and session.process.stdout is not None
        last: list[str] = []
        async for raw in session.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            last = (last + [line])[-20:]
            if line.startswith(READY_PREFIX) and not session.ready.is_set():
                session.port = int(line.split("port=")[1].split()[0])
                session.ready.set()
            elif line.startswith("TACE_WEB_SESSION_WARM"):
                logger.info("%s %s: prediction worker warm (%s)", "spare session" if session.user is None and
                            session is self.spare else "session", session.id[:8], line.split(None, 1)[-1])
            elif "Traceback" in line or line.startswith(("ERROR", "error:")):
                logger.warning("[session %s] %s", session.id[:8], line)
            else:
                logger.debug("[session %s] %s", session.id[:8], line)
        if not session.ready.is_set():
            session.error = "the session process exited: " + (" | ".join(last[-5:]) or "no output")
            session.ready.set()

    async def end_session(self, session: Session) -> None:
        """Stop the session process (if it still runs) and remove its folder."""
        process = session.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=5)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self.sessions.pop(session.id, None) is not None:
            logger.info("session %s ended; its folder is removed", session.id[:8])
            self._start_spare()  # a place became free
        shutil.rmtree(session.folder, ignore_errors=True)

    # -- the page ---------------------------------------------------------------------------------
    async def to_slash(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": f"/s/{request.match_info['sid']}/"})

    async def connection_info(self, request: web.Request) -> web.Response:
        """The trame client asks where its server is: the proxied websocket, and the session key."""
        session = self._session(request)
        scheme = "wss" if request.secure or request.headers.get("X-Forwarded-Proto") == "https" else "ws"
        return web.json_response({"sessionURL": f"{scheme}://USE_HOST/s/{session.id}/ws", "secret": session.key,
                                  "id": session.id})

    async def static(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        url = f"http://127.0.0.1:{session.port}/{request.match_info['tail']}"
        try:
            async with self.http.get(url, params=request.query, headers={"Accept-Encoding": "identity"}) as upstream:
                body = await upstream.read()
                headers = {k: upstream.headers[k] for k in _PROXY_HEADERS if k in upstream.headers}
                return web.Response(status=upstream.status, body=body, headers=headers)
        except ClientError:
            raise web.HTTPBadGateway(text="The session process does not answer.") from None

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        client = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await client.prepare(request)
        try:
            async with self.http.ws_connect(f"ws://127.0.0.1:{session.port}/ws", max_msg_size=0) as upstream:
                async def pump(source, target) -> None:
                    async for message in source:
                        if message.type == WSMsgType.BINARY:
                            await target.send_bytes(message.data)
                        elif message.type == WSMsgType.TEXT:
                            await target.send_str(message.data)
                        elif message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                            break
                    await target.close()

                await asyncio.gather(pump(client, upstream), pump(upstream, client), return_exceptions=True)
        except ClientError as exc:
            logger.warning("session %s: websocket proxy: %s", session.id[:8], exc)
        finally:
            await client.close()
        return client

    # -- uploads ----------------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        """``POST /s/<id>/upload?kind=image|segmentation&batch=B&name=N``: the body is the file."""
        session = self._session(request)
        limits = self.options.limits
        kind, name = request.query.get("kind", ""), request.query.get("name", "")
        batch = stored_name(request.query.get("batch", ""))
        if session.uploaded_files >= limits.max_files:
            return _refuse(413, f"{name}: more than {limits.max_files} files uploaded in this session")
        declared = request.content_length
        if declared is not None and declared > limits.max_file_bytes:
            return _refuse(413, f"{name}: {declared / 1e6:.0f} MB is more than the {limits.max_file_bytes / 1e6:.0f} MB "
                                "allowed per file")
        target = session.folder / "uploads" / kind / batch / stored_name(name)
        if kind not in ("image", "segmentation"):
            return _refuse(400, upload_problem(name, kind) or "bad upload")
        target.parent.mkdir(parents=True, exist_ok=True)
        size, head = 0, b""
        try:
            with open(target, "wb") as handle:
                async for chunk in request.content.iter_chunked(1 << 20):
                    if len(head) < 132:
                        head += chunk[:132]
                        problem = upload_problem(name, kind, head) if len(head) >= 132 else None
                        if problem:
                            raise _Refused(415, problem)
                    size += len(chunk)
                    if size > limits.max_file_bytes:
                        raise _Refused(413, f"{name}: more than the {limits.max_file_bytes / 1e6:.0f} MB allowed per file")
                    if session.uploaded_bytes + size > limits.max_session_bytes:
                        raise _Refused(413, f"{name}: this session's uploads would pass "
                                            f"{limits.max_session_bytes / 1e6:.0f} MB")
                    handle.write(chunk)
            problem = upload_problem(name, kind, head)
            if problem:
                raise _Refused(415, problem)
        except _Refused as refused:
            target.unlink(missing_ok=True)
            return _refuse(refused.status, refused.message)
        session.uploaded_bytes += size
        session.uploaded_files += 1
        return web.json_response({"name": target.name, "bytes": size, "batch": batch, "kind": kind})


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def serve(options: WebOptions, ready=print) -> None:
    """Run the launcher until interrupted; ``ready(line)`` gets the address once it listens."""
    launcher = Launcher(options)

    async def main() -> None:
        runner = web.AppRunner(launcher.app, handle_signals=False, access_log=None)
        await runner.setup()
        ssl_context = None
        if options.tls_cert is not None:
            import ssl

            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(str(options.tls_cert), str(options.tls_key))
        site = web.TCPSite(runner, options.host, options.port, ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # the real port when --port 0
        host = options.host if ":" not in options.host else f"[{options.host}]"
        ready(f"{LAUNCHER_READY} {'https' if ssl_context else 'http'}://{host}:{port}/")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
