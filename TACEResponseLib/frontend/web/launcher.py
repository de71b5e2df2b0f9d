"""The session manager of ``tace-response web``: one server process per browser page, behind one port.

A trame process holds one MRML scene and one page state, shared by every browser connected to it.
So that one person's images, segmentation and results are never visible to another, each page
gets its own session process (:mod:`.session`), bound to 127.0.0.1 on a random port, protected by
a random key, and working in its own folder. The launcher

* binds 127.0.0.1 by default; any other address needs a users file (:mod:`.auth`: HTTP basic
  authentication, then an HttpOnly cookie that expires, ends at a logout and when the password
  changes; failed passwords are rate-limited per user and per address) and TLS (``--tls-cert``),
  or ``--behind-tls-proxy`` when a reverse proxy terminates HTTPS (cookies are then ``Secure``);
* answers only requests naming an allowed host, and refuses websockets and state-changing requests
  from another origin (:mod:`.guards`: DNS rebinding, cross-site pages);
* serves a start page at ``/`` that asks for a session with a POST (``/sessions``: a link or an
  image elsewhere cannot start one), then sends the browser to ``/s/<id>/`` (128-bit random id);
  a session belongs to the user who opened it; sessions are capped in total and per user and live
  at most a set time;
* proxies the session's page, static files and websocket; each websocket message the browser sends
  is checked against wslink's chunk header before it reaches the session (size, pending messages);
* answers the page's session request (``/s/<id>/paraview/``) with the websocket address and the
  session key, so the key never appears in a URL;
* receives uploads (``POST /s/<id>/upload``) straight into the session folder, reserving the
  session's quota before streaming and checking type, size and count while streaming (:mod:`.uploads`);
* gives each session process its folder, key and limits on its standard input, never on its
  command line (:mod:`.session_setup`);
* caps connections in total and per address and closes connections whose headers do not arrive
  in time (:class:`~.guards.ConnectionGuard`); sends no traceback or server path to a client;
* removes the session folder when the session process ends (it ends by itself a set time after
  its page closed), and every folder and process when the launcher stops;
* keeps ``spare_sessions`` (the command's default: 1) session started ahead of its page, so that the
  start page's POST gets a session already running, its case loaded and its prediction worker warm
  (the spare becomes the user's, with that user's caps, log-in and lifetime, only when claimed); the
  next spare starts a while after (``spare_refill_delay``), leaving the CPU to the page just opened.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
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

from aiohttp import ClientError, ClientSession, WSCloseCode, WSMsgType, web

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.frontend.web.auth import Login, LoginPolicy, Logins, read_users
from TACEResponseLib.frontend.web.guards import (
    ConnectionGuard,
    ConnectionLimits,
    GuardedSite,
    HostRules,
    WebsocketLimits,
    WslinkGate,
    is_loopback,
)
from TACEResponseLib.frontend.web.session_setup import READY_PREFIX, SETTINGS_FLAG, WARM_PREFIX, settings_line
from TACEResponseLib.frontend.web.uploads import UploadLimits, UploadQuota, name_problem, stored_name, upload_problem

logger = logging.getLogger(__name__)

LAUNCHER_READY = "TACE_WEB_READY"
COOKIE = "tace_web_auth"
USER = web.RequestKey("tace_user", object)  # the logged-in user (None: no users file)
LOGIN = web.RequestKey("tace_login", object)  # the request's Login (None: no users file)
NEW_TOKEN = web.RequestKey("tace_new_token", str)
_PROXY_HEADERS = ("Content-Type", "Cache-Control", "Last-Modified", "ETag")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                     "X-Frame-Options": "DENY"}


@dataclass
class WebOptions:
    """How ``tace-response web`` serves (see the command's ``--help``)."""

    host: str = "127.0.0.1"
    port: int = 8080
    users_file: Path | None = None
    session_arguments: list[str] = field(default_factory=list)
    max_sessions: int = 4
    max_sessions_per_user: int = 2
    session_timeout: int = 60
    session_lifetime: float = 12 * 3600.0
    start_timeout: float = 180.0
    limits: UploadLimits = field(default_factory=UploadLimits)
    work_root: Path | None = None
    python: str = sys.executable
    tls_cert: Path | None = None
    tls_key: Path | None = None
    behind_tls_proxy: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    login: LoginPolicy = field(default_factory=LoginPolicy)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    websocket: WebsocketLimits = field(default_factory=WebsocketLimits)
    spare_sessions: int = 0  # the command's default is 1 (--spare-sessions)
    #: seconds after a page took the spare before the next one starts: starting it (the session process, then
    #: its worker's model and warm-up run) takes 10-15 s of CPU, which the page just opened — loading, and
    #: often its first Predict — would otherwise share on a small server
    spare_refill_delay: float = 20.0

    @property
    def secure(self) -> bool:
        """The browser reaches the launcher over HTTPS (its own, or a proxy's)."""
        return self.tls_cert is not None or self.behind_tls_proxy


def check_serving(options: WebOptions) -> dict[str, str] | None:
    """The users allowed in (None: loopback only, no login); InputError when serving a network
    without a users file or without TLS, or with half a TLS configuration."""
    if bool(options.tls_cert) != bool(options.tls_key):
        raise InputError("--tls-cert and --tls-key go together")
    network = not is_loopback(options.host)
    if network and options.users_file is None:
        raise InputError(f"serving on {options.host} would let anyone on the network in: give --users FILE "
                         "(create it with --add-user NAME), or keep the default --host 127.0.0.1 and put an "
                         "authenticating reverse proxy in front")
    if network and not options.secure:
        raise InputError(f"serving on {options.host} without TLS would send passwords, cookies and images in clear "
                         "text over the network: give --tls-cert PEM --tls-key PEM, or --behind-tls-proxy when a "
                         "reverse proxy in front of it serves HTTPS")
    if options.users_file is not None:
        return read_users(options.users_file)
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
    quota: UploadQuota | None = None
    login: Login | None = None     # the login that opened it (its logout ends the session)
    websockets: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


START_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TACEResponse</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px system-ui,sans-serif;display:flex;align-items:center;justify-content:center;height:90vh;
color:#ddd;background:#121212}}
.spin{{width:28px;height:28px;border:4px solid #444;border-top-color:#ffa726;border-radius:50%;
animation:r 1s linear infinite;margin:0 auto 12px}} @keyframes r{{to{{transform:rotate(360deg)}}}}</style>
</head><body><div style="text-align:center"><div class="spin"></div>
<p id="tace-starting">Starting your TACEResponse session… (research use only)</p>
<form id="tace-start" method="post" action="/sessions"><noscript><button type="submit">Start a session</button>
</noscript></form>{logout}
<script nonce="{nonce}">/* asked for after this page's first paint (a frame's callback, then a task), so the
spinner shows at once even when a spare session answers before the page would paint; a tab opened in the
background draws no frames, so it asks after 200 ms at the latest */
let asked = false;
const ask = () => {{ if (!asked) {{ asked = true; document.getElementById("tace-start").submit(); }} }};
requestAnimationFrame(() => setTimeout(ask, 0));
setTimeout(ask, 200);</script>
</div></body></html>
"""
LOGOUT_FORM = '<form method="post" action="/logout"><button type="submit">Log out</button></form>'
LOGOUT_PAGE = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>TACEResponse: log out</title></head>'
               '<body><p>Log out of TACEResponse: your log-in and the sessions it opened end.</p>'
               f'{LOGOUT_FORM}</body></html>')


class Launcher:
    """The aiohttp application: hosts and origins, authentication, sessions, proxying, uploads, clean-up."""

    def __init__(self, options: WebOptions) -> None:
        self.options = options
        check_serving(options)
        self.logins = Logins(options.users_file, options.login) if options.users_file is not None else None
        self.hosts = HostRules.for_address(options.host, options.allowed_hosts, trust_forwarded=options.behind_tls_proxy)
        self.guard = ConnectionGuard(options.connections, per_address=not options.behind_tls_proxy)
        self.root = Path(tempfile.mkdtemp(prefix="tace-web-", dir=options.work_root))
        os.chmod(self.root, 0o700)
        self.sessions: dict[str, Session] = {}
        self.spare: Session | None = None  # started before its page (given to the next page that asks)
        self._refill: asyncio.TimerHandle | None = None  # the next spare's start, after a page took one
        self.http: ClientSession | None = None
        self._housekeeper: asyncio.Task | None = None
        self.app = web.Application(middlewares=[self._errors, self._hosts_and_origins, self._authenticate],
                                   client_max_size=1024 ** 2)
        self.app.add_routes([
            web.get("/", self.start_page),
            web.post("/sessions", self.new_session),
            web.get("/logout", self.logout_page),
            web.post("/logout", self.logout),
            web.post("/s/{sid}/paraview/", self.connection_info),
            web.post("/s/{sid}/upload", self.upload),
            web.get("/s/{sid}/ws", self.websocket),
            web.get("/s/{sid}", self.to_slash),
            web.get("/s/{sid}/{tail:.*}", self.static),
        ])
        self.app.on_response_prepare.append(self._security_headers)
        self.app.on_startup.append(self._start)
        self.app.on_cleanup.append(self._stop)

    @property
    def users(self) -> dict[str, str] | None:
        return self.logins.users if self.logins is not None else None

    # -- life cycle -----------------------------------------------------------------------------
    async def _start(self, _app) -> None:
        self.http = ClientSession(auto_decompress=False)
        self._housekeeper = asyncio.get_running_loop().create_task(self._housekeep())
        self._start_spare()

    async def _stop(self, _app) -> None:
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        spare, self.spare, self.options.spare_sessions = self.spare, None, 0
        if self._refill is not None:
            self._refill.cancel()
        ending = list(self.sessions.values()) + ([spare] if spare is not None else [])
        await asyncio.gather(*(self.end_session(s) for s in ending), return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        if self.logins is not None:
            self.logins.close()
        shutil.rmtree(self.root, ignore_errors=True)

    async def _housekeep(self) -> None:
        """End the sessions whose login ended (a logout, a new password, the user removed)."""
        while True:
            await asyncio.sleep(2.0)
            if self.logins is None:
                continue
            self.logins.refresh()
            for session in list(self.sessions.values()):
                if session.login is not None and not self.logins.still_valid(session.login):
                    logger.info("session %s ended: its login ended", session.id[:8])
                    await self.end_session(session)

    # -- every request --------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler):
        """No traceback, exception text or server path to a client: those go to the log."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:  # noqa: BLE001 - logged here, answered without details
            logger.exception("%s %s failed", request.method, request.path)
            return web.Response(status=500, text="Internal error (its details are in the server's log).")

    @web.middleware
    async def _hosts_and_origins(self, request: web.Request, handler):
        problem = self.hosts.host_problem(request)
        if problem:
            logger.warning("refused %s %s: %s (allowed: %s; add more with --allowed-host)", request.method,
                           request.path, problem, ", ".join(sorted(self.hosts.allowed)))
            return web.Response(status=421, text="This server does not answer to that host name.")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        if websocket or request.method not in _SAFE_METHODS:
            problem = self.hosts.origin_problem(request)
            if problem:
                logger.warning("refused %s %s: %s", request.method, request.path, problem)
                return web.Response(status=403, text="Requests from other sites are not accepted.")
        return await handler(request)

    async def _security_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if self.options.secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")

    # -- authentication -------------------------------------------------------------------------
    def client_address(self, request: web.Request) -> str:
        """The browser's address (behind a proxy: the last address the proxy added to X-Forwarded-For)."""
        if self.options.behind_tls_proxy:
            forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
            if forwarded:
                return forwarded[-1]
        return request.remote or ""

    def _challenge(self, text: str = "Log in to use TACEResponse.") -> web.Response:
        return web.Response(status=401, text=text,
                            headers={"WWW-Authenticate": 'Basic realm="TACEResponse", charset="UTF-8"'})

    @web.middleware
    async def _authenticate(self, request: web.Request, handler):
        if self.logins is None:
            request[USER], request[LOGIN] = None, None
            return await handler(request)
        token = request.cookies.get(COOKIE)
        user = self.logins.user_of(token)
        if user is None:
            credentials = _basic_credentials(request.headers.get("Authorization", ""))
            if credentials is None:
                return self._challenge()
            name, password = credentials
            address = self.client_address(request)
            right, wait = await self.logins.log_in(name, password, address)
            if wait > 0:
                logger.warning("log-in of %r from %s refused: locked out for %.0f s more", name[:64], address, wait)
                return web.Response(status=429, headers={"Retry-After": str(int(wait) + 1)},
                                    text=f"Too many wrong passwords; try again in {wait / 60:.0f} minutes.")
            if not right:
                logger.info("wrong password for %r from %s", name[:64], address)
                return self._challenge("Wrong user name or password.")
            token = self.logins.issue(name)
            request[NEW_TOKEN] = token
            user = name
        request[USER], request[LOGIN] = user, self.logins.tokens.get(token or "")
        response = await handler(request)
        if request.get(NEW_TOKEN) and isinstance(response, web.StreamResponse) and not response.prepared:
            response.set_cookie(COOKIE, request[NEW_TOKEN], httponly=True, samesite="Strict", secure=self.options.secure,
                                path="/", max_age=int(self.options.login.token_lifetime))
        return response

    async def logout_page(self, request: web.Request) -> web.Response:
        """``GET /logout``: a page with the log-out button (a GET itself changes nothing)."""
        return web.Response(text=LOGOUT_PAGE, content_type="text/html", headers={
            "Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'; form-action 'self'"})

    async def logout(self, request: web.Request) -> web.Response:
        """``POST /logout``: the login's token ends, and with it the sessions it opened."""
        login = request.get(LOGIN)
        if self.logins is not None:
            self.logins.logout(request.cookies.get(COOKIE))
            for session in [s for s in self.sessions.values() if login is not None and s.login is login]:
                await self.end_session(session)
        response = web.Response(text="Logged out. Close this tab (the browser may still remember the password until "
                                     "it is closed).", content_type="text/plain")
        response.del_cookie(COOKIE, path="/")
        return response

    def _session(self, request: web.Request) -> Session:
        session = self.sessions.get(request.match_info["sid"])
        if session is None or session.user != request[USER]:
            raise web.HTTPNotFound(text="This session has ended (sessions end a while after their page closes). "
                                        "Open the start page again for a new one.")
        return session

    # -- sessions -------------------------------------------------------------------------------
    async def start_page(self, request: web.Request) -> web.Response:
        """``/``: a page that asks for a session with a POST (a GET starts nothing)."""
        nonce = secrets.token_urlsafe(12)
        page = START_PAGE.format(nonce=nonce, logout=LOGOUT_FORM if self.logins is not None else "")
        return web.Response(text=page, content_type="text/html", headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
                                       "form-action 'self'; frame-ancestors 'none'"})

    async def new_session(self, request: web.Request) -> web.StreamResponse:
        """``POST /sessions`` (from the start page): start a session process and send the browser to it."""
        user = request[USER]
        if len(self.sessions) >= self.options.max_sessions:
            return web.Response(status=503, text=f"All {self.options.max_sessions} sessions are in use; "
                                                  "try again when one has ended.")
        mine = sum(1 for s in self.sessions.values() if s.user == user)
        if user is not None and mine >= self.options.max_sessions_per_user:
            return web.Response(status=429, text=f"You have {mine} sessions open, the most one user may have; close "
                                                  "a page (its session ends a minute later) and try again.")
        spare = await self._claim_spare(user, request.get(LOGIN))
        if spare is not None:
            return web.Response(status=303, headers={"Location": f"/s/{spare.id}/"})
        session = self._new_session(user, request.get(LOGIN))
        self.sessions[session.id] = session
        asyncio.get_running_loop().create_task(self._run_session(session))
        await asyncio.wait_for(session.ready.wait(), timeout=self.options.start_timeout + 5)
        if session.error:
            return web.Response(status=500, text="The session could not start (the server's log says why).")
        return web.Response(status=303, headers={"Location": f"/s/{session.id}/"})

    def _new_session(self, user, login: Login | None) -> Session:
        """A session (its private folder made, not yet started)."""
        sid = secrets.token_hex(16)
        folder = self.root / sid
        folder.mkdir(mode=0o700)
        return Session(sid, user, folder, secrets.token_urlsafe(32), quota=UploadQuota(self.options.limits),
                       login=login)

    def _start_spare(self) -> None:
        """Start a spare session unless one runs, spares are off, or every session is in use."""
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        if self.spare is None and self.options.spare_sessions > 0 and len(self.sessions) < self.options.max_sessions:
            self.spare = self._new_session(None, None)
            asyncio.get_running_loop().create_task(self._run_session(self.spare, spare=True))

    async def _claim_spare(self, user, login: Login | None) -> Session | None:
        """The spare session for this page (it becomes the user's; a new spare starts after
        ``spare_refill_delay``), waiting for it when it is still starting (it is ahead of any session
        started now); None when there is none."""
        spare = self.spare
        if spare is not None and not spare.ready.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(spare.ready.wait()), timeout=self.options.start_timeout)
        if spare is None or spare is not self.spare or not spare.ready.is_set() or spare.error \
                or spare.process is None or spare.process.returncode is not None:
            return None
        self.spare = None
        spare.user, spare.login, spare.started = user, login, time.monotonic()  # its lifetime starts now
        self.sessions[spare.id] = spare
        logger.info("spare session %s given to a page (user %s)", spare.id[:8], user)
        if self._refill is None:
            self._refill = asyncio.get_running_loop().call_later(self.options.spare_refill_delay, self._start_spare)
        return spare

    async def _run_session(self, session: Session, spare: bool = False) -> None:
        command = [self.options.python, "-m", "TACEResponseLib.frontend.web.session", "--host", "127.0.0.1",
                   "--port", "0", "--server", "--timeout", str(self.options.session_timeout), SETTINGS_FLAG,
                   *self.options.session_arguments, *(["--spare"] if spare else [])]
        env = dict(os.environ, PYTHONUNBUFFERED="1", TRAME_SERVER="1")
        env.pop("TACERESPONSE_TRUST_DETACHED_HEADERS", None)  # never for other people's files
        env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        try:
            session.process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True, cwd=session.folder)
            assert session.process.stdin is not None
            settings = settings_line(session.folder, session.key, self.options.limits, logout=self.logins is not None)
            session.process.stdin.write(settings.encode())
            await session.process.stdin.drain()
            session.process.stdin.close()
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
                await self._live(session)
            await asyncio.wait_for(reader, timeout=5)
        except Exception as exc:  # noqa: BLE001 - a session that fails must not stop the launcher
            session.error = session.error or str(exc)
            session.ready.set()
            logger.exception("session %s failed", session.id[:8])
        finally:
            await self.end_session(session)
            if self.spare is session:  # a spare that failed or ended before a page took it
                self.spare = None

    async def _live(self, session: Session) -> None:
        """Until the session process ends, or its lifetime (counted from when a page got it) is over."""
        lifetime = self.options.session_lifetime
        while session.process.returncode is None:
            unclaimed = session is self.spare
            left = lifetime if unclaimed else lifetime - (time.monotonic() - session.started)
            if left <= 0:
                logger.info("session %s reached its lifetime of %.0f s", session.id[:8], lifetime)
                await self.end_session(session)
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.process.wait(), timeout=left)

    async def _read_output(self, session: Session) -> None:
        assert session.process is not None and session.process.stdout is not None
        last: list[str] = []
        async for raw in session.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            last = (last + [line])[-20:]
            if line.startswith(READY_PREFIX) and not session.ready.is_set():
                session.port = int(line.split("port=")[1].split()[0])
                session.ready.set()
            elif line.startswith(WARM_PREFIX):
                what = "spare session" if session is self.spare else "session"
                logger.info("%s %s: prediction worker warm (%s)", what, session.id[:8], line.split(None, 1)[-1])
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
        """The session's websocket, each message from the browser checked before it is passed on."""
        session = self._session(request)
        limits = self.options.websocket
        if session.websockets >= limits.max_websockets_per_session:
            return web.Response(status=429, text="Too many connections to this session.")
        # the frame cap makes aiohttp refuse a larger frame from its header, before reading it
        client = web.WebSocketResponse(max_msg_size=limits.max_frame_bytes + 12, autoping=True, heartbeat=30)
        await client.prepare(request)
        session.websockets += 1
        gate = WslinkGate(limits)
        try:
            async with self.http.ws_connect(f"ws://127.0.0.1:{session.port}/ws", max_msg_size=0) as upstream:
                async def from_browser() -> None:
                    async for message in client:
                        if message.type != WSMsgType.BINARY:
                            break  # wslink speaks binary only: text (or an error) ends the connection
                        problem = gate.problem(message.data)
                        if problem:
                            logger.warning("session %s: websocket closed: %s", session.id[:8], problem)
                            await client.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=b"message refused")
                            break
                        await upstream.send_bytes(message.data)
                    await upstream.close()

                async def to_browser() -> None:
                    async for message in upstream:
                        if message.type == WSMsgType.BINARY:
                            await client.send_bytes(message.data)
                        elif message.type == WSMsgType.TEXT:
                            await client.send_str(message.data)
                        else:
                            break
                    await client.close()

                await asyncio.gather(from_browser(), to_browser(), return_exceptions=True)
        except ClientError as exc:
            logger.warning("session %s: websocket proxy: %s", session.id[:8], exc)
        finally:
            session.websockets -= 1
            await client.close()
        return client

    # -- uploads ----------------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        """``POST /s/<id>/upload?kind=image|segmentation&batch=B&name=N``: the body is the file.

        The declared size and one file are reserved in the session's quota before any byte is read
        (parallel uploads cannot pass the caps together); a body that stops arriving is dropped."""
        session = self._session(request)
        if session.quota is None:
            session.quota = UploadQuota(self.options.limits)
        kind, name, batch_name = (request.query.get(key, "") for key in ("kind", "name", "batch"))
        if kind not in ("image", "segmentation"):
            return _refuse(400, upload_problem(name, kind) or "bad upload")
        problem = name_problem(name) or name_problem(batch_name)
        if problem:
            return _refuse(400, problem)
        declared = request.content_length
        if declared is None:
            return _refuse(411, f"{name}: the upload must state its size (Content-Length)")
        problem = session.quota.reserve(name, declared)
        if problem:
            return _refuse(413, problem)
        target = session.folder / "uploads" / kind / stored_name(batch_name) / stored_name(name)
        size, head, stored = 0, b"", None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                while True:
                    chunk = await asyncio.wait_for(request.content.readany(), self.options.connections.body_timeout)
                    if not chunk:
                        break
                    if len(head) < 132:
                        head += chunk[:132]
                        problem = upload_problem(name, kind, head) if len(head) >= 132 else None
                        if problem:
                            raise _Refused(415, problem)
                    size += len(chunk)
                    if size > declared:
                        raise _Refused(400, f"{name}: more bytes than the upload stated")
                    handle.write(chunk)
            if size < declared:
                raise _Refused(400, f"{name}: the upload ended after {size} of {declared} bytes")
            problem = upload_problem(name, kind, head)
            if problem:
                raise _Refused(415, problem)
            stored = size
        except _Refused as refused:
            return _refuse(refused.status, refused.message)
        except asyncio.TimeoutError:
            return _refuse(408, f"{name}: nothing arrived for {self.options.connections.body_timeout:.0f} s")
        except OSError as exc:
            logger.warning("session %s: upload of %r not stored: %s", session.id[:8], name[:80], exc)
            return _refuse(507, f"{name}: the server could not store the file")
        finally:
            session.quota.settle(declared, stored)
            if stored is None:
                target.unlink(missing_ok=True)
        return web.json_response({"name": target.name, "bytes": size, "batch": stored_name(batch_name), "kind": kind})


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """``(name, password)`` of an HTTP basic Authorization header, or None."""
    if not header.startswith("Basic "):
        return None
    try:
        name, sep, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (name, password) if sep else None


def serve(options: WebOptions, ready=print) -> None:
    """Run the launcher until interrupted; ``ready(line)`` gets the address once it listens."""
    launcher = Launcher(options)

    async def main() -> None:
        runner = web.AppRunner(launcher.app, handle_signals=False, access_log=None,
                               keepalive_timeout=options.connections.keepalive_timeout)
        await runner.setup()
        ssl_context = None
        if options.tls_cert is not None:
            import ssl

            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(str(options.tls_cert), str(options.tls_key))
        site = GuardedSite(runner, options.host, options.port, launcher.guard, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise InputError(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc} (another "
                             "program uses the port? choose another with --port)") from None
        host = options.host if ":" not in options.host else f"[{options.host}]"
        ready(f"{LAUNCHER_READY} {'https' if ssl_context else 'http'}://{host}:{site.bound_port}/")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
