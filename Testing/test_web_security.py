"""Attacks on ``tace-response web``, each run against a real launcher (the command as a user starts it,
a subprocess with its own session processes), issue 22's security items 1–9.

A client without a browser (:mod:`web_client`) plays the attacker: it logs in, starts sessions,
uploads, speaks wslink over the proxied websocket, opens raw sockets. Where an attack costs the
server something, the cost is measured (memory of the session process, latency of another user,
how long connections are held) and printed, and the test holds it to a bound the unprotected
launcher passed by far. Linux only (``/proc``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
aiohttp = pytest.importorskip("aiohttp")
if not Path("/proc/self/status").is_file():
    pytest.skip("the attack tests read /proc (Linux)", allow_module_level=True)

from web_client import WslinkClient, basic, command_line, memory_mb, start_launcher, wslink_chunk  # noqa: E402

from TACEResponseLib.cli import main  # noqa: E402
from TACEResponseLib.frontend.web import auth  # noqa: E402

pytestmark = pytest.mark.slow
USERS = {"alice": "pw-alice", "bob": "pw-bob", "carol": "pw-carol", "dave": "pw-dave", "erin": "pw-erin"}
MB = 1024 * 1024


def _users(folder: Path) -> Path:
    path = folder / "users"
    for name, password in USERS.items():
        auth.add_user(path, name, password)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One launcher with small limits: 2 MB per upload and per session, 3 files, images of at most
    64 million voxels / 128 MB decoded, 2 sessions per user."""
    root = tmp_path_factory.mktemp("attacks")
    launcher = start_launcher(root, "--users", str(_users(root)), "--no-demo", "--device", "cpu",
                              "--session-timeout", "3", "--max-sessions", "6", "--max-sessions-per-user", "2",
                              "--max-upload-mb", "2", "--max-session-upload-mb", "2", "--max-upload-files", "3",
                              "--max-image-megavoxels", "64", "--max-image-mb", "128",
                              "--max-connections-per-address", "40")
    yield launcher
    launcher.stop()
    assert not list(root.glob("tace-web-*")), "the launcher left session folders behind"
    assert not _descendants(launcher.pid), "processes of the launcher are still running"


def _descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _run(coroutine):
    return asyncio.run(coroutine)


def _client(**connector) -> aiohttp.ClientSession:
    """An HTTP client keeping the launcher's cookie (aiohttp keeps none for an IP address by default)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(**connector) if connector else None,
                                 cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _start_session(http, server, user: str) -> str:
    response = await http.post(server.url + "/sessions", headers={**basic(user, USERS[user]), "Origin": server.url},
                               allow_redirects=False)
    assert response.status == 303, (response.status, await response.text())
    return response.headers["Location"].split("/")[2]


async def _connect(http, server, sid: str, user: str, origin: str | None = None) -> WslinkClient:
    info = await (await http.post(f"{server.url}/s/{sid}/paraview/", headers=basic(user, USERS[user]))).json()
    ws = await http.ws_connect(f"{server.url.replace('http', 'ws')}/s/{sid}/ws",
                               headers={**basic(user, USERS[user]), "Origin": origin or server.url}, max_msg_size=0)
    client = WslinkClient(ws)
    answer = await client.hello(info["secret"])
    assert "result" in answer, answer
    return client


def _session_pid(server, sid: str) -> int:
    for pid in server.session_pids():
        if os.readlink(f"/proc/{pid}/cwd").endswith(sid):
            return pid
    raise LookupError(sid)


async def _upload(http, server, sid: str, user: str, name: str, body, batch: str = "b1", **headers) -> tuple[int, dict]:
    response = await http.post(f"{server.url}/s/{sid}/upload", params={"kind": "image", "batch": batch, "name": name},
                               data=body, headers={**basic(user, USERS[user]), **headers})
    text = await response.text()
    return response.status, (await response.json() if response.content_type == "application/json" else {"text": text})


async def _open_upload(client: WslinkClient, batch: str, names: list[str], timeout: float = 120) -> dict:
    await client.call("trame.trigger", "tace_uploaded", [{"kind": "image", "batch": batch, "names": names}], {},
                      timeout=timeout)
    return await client.state()


def _gzip_bomb(sizes=(1024, 1024, 1024)) -> bytes:
    """~1 MB of gzip NRRD declaring (and holding) 1024³ uint8 zeros: 1 GiB decoded."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(16 * MB)
    total = sizes[0] * sizes[1] * sizes[2]
    data = b"".join(compressor.compress(zeros) for _ in range(total // len(zeros))) + compressor.flush()
    header = f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {' '.join(map(str, sizes))}\nspacings: 1 1 1\nencoding: gzip\n\n"
    return header.encode() + data


# --- items 1 and 2 (+ 9: no traceback): one session of alice's ------------------------------------------
def test_uploads_cannot_read_server_files_or_decode_bombs_and_the_page_sees_no_paths(server, tmp_path):
    users_file = server.root / "users"

    async def attack():
        async with _client() as http:
            sid = await _start_session(http, server, "alice")
            pid = _session_pid(server, sid)
            folder = next(server.root.glob(f"tace-web-*/{sid}"))
            # no session folder, id or key on any command line of the launcher's processes
            key = (await (await http.post(f"{server.url}/s/{sid}/paraview/", headers=basic("alice", USERS["alice"])))
                   .json())["secret"]
            for process in [server.pid, *_descendants(server.pid)]:
                line = command_line(process)
                assert sid not in line and str(folder) not in line and key not in line, line
            client = await _connect(http, server, sid, "alice")
            before = await client.state()
            # a detached header pointing at /etc/passwd, named .nrrd so that it passes the type check
            size = len(Path("/etc/passwd").read_bytes())
            nhdr = (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 {size // 16}\nspacings: 1 1 1\nencoding: raw\n"
                    "data file: /etc/passwd\n\n")
            assert (await _upload(http, server, sid, "alice", "ct.nhdr", nhdr.encode()))[0] == 415
            assert (await _upload(http, server, sid, "alice", "evil.nrrd", nhdr.encode()))[0] == 200
            state = await _open_upload(client, "b1", ["evil.nrrd"])
            assert "only self-contained images" in state["error"], state["error"]
            assert state["volumes"] == before["volumes"] and state["case_title"] == before["case_title"]
            assert "/" not in state["error"].split(":")[0] and str(server.root) not in state["error"]
            # the users file (password hashes) through a MetaImage header
            mha = (f"ObjectType = Image\nNDims = 3\nDimSize = 4 4 2\nElementSpacing = 1 1 1\nElementType = MET_UCHAR\n"
                   f"ElementDataFile = {users_file}\n")
            assert (await _upload(http, server, sid, "alice", "evil.mha", mha.encode(), batch="b2"))[0] == 200
            state = await _open_upload(client, "b2", ["evil.mha"])
            assert "only self-contained images" in state["error"] and str(users_file) not in state["error"]
            # item 9: a failing call answers without traceback or exception text
            answer = await client.call("trame.trigger", "tace_uploaded", [1, 2, 3], {})
            assert "error" in answer and "trace" not in str(answer) and "Traceback" not in str(answer), answer
            # item 2: ~1 MB declaring 1024³ voxels
            bomb = _gzip_bomb()
            assert len(bomb) < 2 * MB
            assert (await _upload(http, server, sid, "alice", "bomb.nrrd", bomb, batch="b3"))[0] == 200
            rss, peak = memory_mb(pid), memory_mb(pid, "VmHWM")
            started = time.perf_counter()
            state = await _open_upload(client, "b3", ["bomb.nrrd"])
            took = time.perf_counter() - started
            grown, peak_grown = memory_mb(pid) - rss, memory_mb(pid, "VmHWM") - peak
            print(f"\nitem 2: the 1 MB bomb declaring 1024³ voxels: session {rss:.0f} MB → +{grown:.0f} MB "
                  f"(peak +{peak_grown:.0f} MB), refused in {took:.2f} s: {state['error']}")
            assert "1024 × 1024 × 1024 voxels" in state["error"] and "more than the" in state["error"]
            assert peak_grown < 100, f"the session's peak memory grew by {peak_grown:.0f} MB"
            await client.ws.close()
            # item 3 on the same session: websocket frames of 13 bytes declaring 1 GiB each
            client = await _connect(http, server, sid, "alice")
            rss = memory_mb(pid)
            closed_after = None
            for n in range(3):
                try:
                    await client.ws.send_bytes(wslink_chunk(b"x", total=1 << 30))
                    message = await asyncio.wait_for(client.ws.receive(), timeout=5)
                except (ConnectionError, RuntimeError, asyncio.TimeoutError):
                    message = None
                if client.ws.closed or (message is not None and message.type in (aiohttp.WSMsgType.CLOSE,
                                                                                aiohttp.WSMsgType.CLOSED)):
                    closed_after = n + 1
                    break
            await asyncio.sleep(1.0)
            grown = memory_mb(pid) - rss
            print(f"item 3: frames of 13 bytes declaring 1 GiB: the launcher closed the websocket after "
                  f"{closed_after} frame(s); session memory +{grown:.0f} MB (close code {client.ws.close_code})")
            assert closed_after == 1 and client.ws.close_code == 1009 and grown < 50
            # a frame larger than the cap is refused from its header, and a normal session still works
            client = await _connect(http, server, sid, "alice")
            try:
                await client.ws.send_bytes(wslink_chunk(bytes(5 * MB)))
                message = await asyncio.wait_for(client.ws.receive(), timeout=10)
                assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            except ConnectionError:
                pass  # the launcher closed it while the frame was still being sent
            client = await _connect(http, server, sid, "alice")
            assert (await client.state())["case_title"] == before["case_title"]
            await client.ws.close()

    _run(attack())


# --- item 4: brute force, event-loop stall, user enumeration ---------------------------------------------
def test_wrong_passwords_are_rate_limited_hashed_off_the_event_loop_and_timed_alike(server):
    async def attack():
        async with _client() as alice, _client(local_addr=("127.0.0.2", 0)) as attacker, \
                _client(local_addr=("127.0.0.4", 0)) as prober:
            # alice logs in from 127.0.0.1; her cookie is all her later requests carry
            assert (await alice.get(server.url + "/", headers=basic("alice", USERS["alice"]))).status == 200

            async def alice_latency(count: int = 15) -> list[float]:
                times = []
                for _ in range(count):
                    started = time.perf_counter()
                    response = await alice.get(server.url + "/")
                    await response.read()
                    assert response.status == 200
                    times.append(time.perf_counter() - started)
                    await asyncio.sleep(0.05)
                return times

            quiet = await alice_latency()
            # 19 wrong passwords at once from 19 addresses, each for another name: all hashed at once
            flooders = [_client(local_addr=(f"127.0.1.{n}", 0)) for n in range(1, 20)]
            wrong = [c.get(server.url + "/", headers=basic(f"user{n}", "guess")) for n, c in enumerate(flooders)]
            flood = asyncio.gather(*wrong)
            await asyncio.sleep(0.05)
            busy = await alice_latency()
            statuses = [r.status for r in await flood]
            for client in flooders:
                await client.close()
            assert statuses == [401] * 19
            print(f"\nitem 4: alice's latency {statistics.median(quiet) * 1000:.1f} ms quiet, "
                  f"{statistics.median(busy) * 1000:.1f} ms (max {max(busy) * 1000:.0f}) during 19 concurrent wrong "
                  "passwords from 19 addresses")
            assert max(busy) < 0.5, f"the event loop stalled: {max(busy):.2f} s"
            # 300 wrong passwords for carol from one address, 8 at a time: locked out after 5
            codes: dict[int, int] = {}
            slots = asyncio.Semaphore(8)

            async def guess(n: int) -> None:
                async with slots:
                    response = await attacker.get(server.url + "/", headers=basic("carol", f"guess{n}"))
                    codes[response.status] = codes.get(response.status, 0) + 1

            started = time.perf_counter()
            await asyncio.gather(*(guess(n) for n in range(300)))
            took = time.perf_counter() - started
            print(f"item 4: 300 wrong passwords for carol, 8 at a time: {codes} in {took:.1f} s")
            assert codes == {401: 5, 429: 295}
            locked = await attacker.get(server.url + "/", headers=basic("carol", USERS["carol"]))
            assert locked.status == 429 and int(locked.headers["Retry-After"]) > 800  # even the right password
            # the lockout is per user and per address: alice logs in from another address meanwhile
            async with _client() as other:
                assert (await other.get(server.url + "/", headers=basic("alice", USERS["alice"]))).status == 200
            # a wrong password costs the same for a name that does not exist
            async def timing(name: str) -> float:
                times = []
                for _ in range(4):  # below the per-user lockout
                    begin = time.perf_counter()
                    await (await prober.get(server.url + "/", headers=basic(name, "wrong"))).read()
                    times.append(time.perf_counter() - begin)
                return statistics.median(times)

            known, unknown = await timing("erin"), await timing("nobody")
            print(f"item 4: a wrong password takes {known * 1000:.0f} ms for a known name, {unknown * 1000:.0f} ms "
                  "for an unknown one")
            assert 0.5 < unknown / known < 2.0

    _run(attack())


# --- item 5: slowloris ---------------------------------------------------------------------------------
def test_half_sent_requests_cannot_hold_the_server(server):
    host, port = server.url.split("//")[1].split(":")
    sockets, refused = [], 0
    started = time.perf_counter()
    for _ in range(1100):
        connection = socket.socket()
        connection.bind(("127.0.0.5", 0))
        connection.settimeout(5)
        try:
            connection.connect((host, int(port)))
            connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        except OSError:
            refused += 1
            connection.close()
            continue
        sockets.append(connection)

    async def legit() -> tuple[int, float]:
        async with _client() as http:
            begin = time.perf_counter()
            response = await http.get(server.url + "/", headers=basic("bob", USERS["bob"]))
            return response.status, time.perf_counter() - begin

    status, latency = _run(legit())
    assert status == 200 and latency < 2.0

    def open_count() -> int:
        alive = 0
        for connection in sockets:
            connection.setblocking(False)
            try:
                alive += connection.recv(1 << 16, socket.MSG_PEEK) != b"" and 0  # data = the 503 answer, then close
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return alive

    held_at_start = open_count()
    while open_count() and time.perf_counter() - started < 60:
        time.sleep(0.5)
    held_for = time.perf_counter() - started
    for connection in sockets:
        connection.close()
    print(f"\nitem 5: 1100 half-sent requests from one address: {held_at_start} held, the rest refused at once; all "
          f"closed after {held_for:.1f} s; another user's request meanwhile: {status} in {latency * 1000:.0f} ms")
    assert held_at_start <= 40 and held_for < 20


# --- item 6: parallel uploads --------------------------------------------------------------------------
def test_parallel_uploads_cannot_pass_the_session_quota(server):
    async def attack():
        async with _client() as http:
            sid = await _start_session(http, server, "bob")
            folder = next(server.root.glob(f"tace-web-*/{sid}"))
            page = await _connect(http, server, sid, "bob")  # a session lives while its page is connected

            async def slow_body():
                for _ in range(9):
                    yield b"x" * 100_000
                    await asyncio.sleep(0.2)

            async def one(n: int) -> int:
                return (await _upload(http, server, sid, "bob", f"part{n}.nrrd", slow_body(), batch="p",
                                      **{"Content-Length": "900000"}))[0]

            statuses = await asyncio.gather(*(one(n) for n in range(12)))
            # the uploads (the session's own files, e.g. a warm-up's phantom while its spare warms, are not)
            stored = [p for p in (folder / "uploads").rglob("*") if p.is_file()]
            stored_bytes = sum(p.stat().st_size for p in stored)
            print(f"\nitem 6: 12 parallel 0.9 MB uploads against 2 MB / 3 files: {sorted(statuses)}, "
                  f"{len(stored)} files, {stored_bytes / 1e6:.1f} MB stored")
            assert statuses.count(200) == 2 and stored_bytes <= 2 * MB and len(stored) == 2
            status, body = await _upload(http, server, sid, "bob", "chunked.nrrd", slow_body(), batch="q")
            assert status == 411, (status, body)
            # item 9: an overlong file name is a 400, not a 500
            status, body = await _upload(http, server, sid, "bob", "a" * 300 + ".nrrd", b"x", batch="q")
            assert status == 400 and "longer than" in body["error"]
            await page.ws.close()

    _run(attack())


# --- item 7: hosts, origins, sessions only on a POST -----------------------------------------------------
def test_other_hosts_and_origins_are_refused_and_a_get_starts_no_session(server):
    async def attack():
        async with _client() as http:
            auth_alice = basic("alice", USERS["alice"])
            before = len(server.session_pids())
            page = await http.get(server.url + "/", headers=auth_alice)
            assert page.status == 200 and "tace-start" in await page.text()
            assert (await http.get(server.url + "/sessions", headers=auth_alice)).status == 405
            assert len(server.session_pids()) == before, "a GET started a session"
            rebound = await http.get(server.url + "/", headers={**auth_alice, "Host": "evil.example"})
            assert rebound.status == 421
            foreign = await http.post(server.url + "/sessions", headers={**auth_alice, "Origin": "http://evil.example"},
                                      allow_redirects=False)
            assert foreign.status == 403
            sid = await _start_session(http, server, "alice")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await _connect(http, server, sid, "alice", origin="http://evil.example")
            assert refused.value.status == 403
            upload = await http.post(f"{server.url}/s/{sid}/upload", params={"kind": "image", "name": "x.nrrd"},
                                     data=b"x", headers={**auth_alice, "Origin": "http://evil.example"})
            assert upload.status == 403
            client = await _connect(http, server, sid, "alice")  # the page's own origin
            assert "case_title" in await client.state()
            await client.ws.close()

    _run(attack())


# --- item 8: a network address needs TLS --------------------------------------------------------------------
def test_a_network_address_without_tls_is_refused(tmp_path, capsys):
    users = _users(tmp_path)
    assert main(["web", "--host", "0.0.0.0", "--port", "0", "--users", str(users)]) == 2
    error = capsys.readouterr().err
    assert "without TLS" in error and "--behind-tls-proxy" in error


# --- item 9: sessions per user, logout, password change, session lifetime, token expiry -----------------------
def test_sessions_per_user_logout_and_a_new_password_end_logins_and_sessions(server):
    async def attack():
        async with _client() as dave, _client() as bob:
            pages, pids = [], []
            for _ in range(2):
                sid = await _start_session(dave, server, "dave")
                pages.append(await _connect(dave, server, sid, "dave"))
                pids.append(_session_pid(server, sid))
            third = await dave.post(server.url + "/sessions", headers={"Origin": server.url}, allow_redirects=False)
            assert third.status == 429 and "2 sessions" in await third.text()
            sid = await _start_session(bob, server, "bob")  # another user still gets one
            bob_page = await _connect(bob, server, sid, "bob")
            bob_pid = _session_pid(server, sid)
            # bob logs out (the page at /logout posts its form): his cookie no longer logs in, and the session
            # it opened ends though its page is open
            assert 'action="/logout"' in await (await bob.get(server.url + "/logout")).text()
            assert Path(f"/proc/{bob_pid}").exists() and (await bob.get(server.url + "/")).status == 200, \
                "a GET /logout must change nothing"
            assert (await bob.post(server.url + "/logout", headers={"Origin": server.url})).status == 200
            assert (await bob.get(server.url + "/")).status == 401
            await _wait(lambda: not Path(f"/proc/{bob_pid}").exists(), 15, "bob's session to end")
            # a new password for dave ends his logins and his sessions
            assert (await dave.get(server.url + "/")).status == 200
            auth.add_user(server.root / "users", "dave", "a new password")
            await _wait(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 20, "dave's sessions to end")
            assert (await dave.get(server.url + "/")).status == 401
            for page in [*pages, bob_page]:
                await page.ws.close()

    _run(attack())


async def _wait(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def test_behind_a_tls_proxy_cookies_are_secure_and_sessions_and_logins_expire(tmp_path):
    """Another launcher: --behind-tls-proxy, sessions of at most ~10 s, logins idle for at most 3 s."""
    launcher = start_launcher(tmp_path, "--users", str(_users(tmp_path)), "--no-demo", "--device", "cpu",
                              "--behind-tls-proxy", "--max-session-hours", str(10 / 3600), "--login-idle-minutes",
                              "0.05", "--session-timeout", "3")
    try:
        async def scenario():
            async with _client() as http:
                page = await http.get(launcher.url + "/", headers=basic("erin", USERS["erin"]))
                cookie = page.headers["Set-Cookie"]
                assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert page.headers["Strict-Transport-Security"].startswith("max-age=")
                token = {"Cookie": f"tace_web_auth={page.cookies['tace_web_auth'].value}"}  # as the proxy passes it
                assert (await http.get(launcher.url + "/", headers=token)).status == 200
                await asyncio.sleep(3.5)
                assert (await http.get(launcher.url + "/", headers=token)).status == 401  # idle too long
                sid = await _start_session(http, launcher, "erin")
                began = time.monotonic()
                pid = _session_pid(launcher, sid)
                client = await _connect(http, launcher, sid, "erin")  # in use: it still ends at its lifetime
                await _wait(lambda: not Path(f"/proc/{pid}").exists(), 40, "the session's lifetime")
                lived = time.monotonic() - began
                print(f"\nitem 9: a session limited to 10 s ended {lived:.1f} s after it was ready, while in use")
                assert lived < 16
                await client.ws.close()
                # behind a proxy the address is the one the proxy saw (X-Forwarded-For)
                for n in range(6):
                    await http.get(launcher.url + "/", headers={**basic("erin", "wrong"),
                                                                "X-Forwarded-For": "203.0.113.9"})
                other_user = await http.get(launcher.url + "/", headers={**basic("bob", USERS["bob"]),
                                                                         "X-Forwarded-For": "203.0.113.9"})
                assert other_user.status == 200  # erin is locked, not the address: 6 < 20
                erin = await http.get(launcher.url + "/", headers={**basic("erin", USERS["erin"]),
                                                                   "X-Forwarded-For": "198.51.100.7"})
                assert erin.status == 429  # erin herself is locked out, from any address

        _run(scenario())
    finally:
        launcher.stop()


def test_https_on_the_launchers_own_certificate(tmp_path):
    """--tls-cert/--tls-key: HTTPS, Secure cookies, and a TLS handshake that never comes is dropped."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate to test HTTPS with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    launcher = start_launcher(tmp_path, "--users", str(_users(tmp_path)), "--no-demo", "--tls-cert", str(cert),
                              "--tls-key", str(key))
    try:
        assert launcher.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False

        async def scenario():
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
                page = await http.get(launcher.url + "/", headers=basic("alice", USERS["alice"]))
                assert page.status == 200 and "Secure" in page.headers["Set-Cookie"]
                plain = launcher.url.replace("https://", "http://")
                with pytest.raises(aiohttp.ClientError):
                    await http.get(plain + "/", headers=basic("alice", USERS["alice"]))

        _run(scenario())
        host, port = launcher.url.split("//")[1].split(":")
        silent = socket.create_connection((host, int(port)))  # connects, never says hello
        silent.settimeout(30)
        began = time.perf_counter()
        assert silent.recv(1) == b""
        assert time.perf_counter() - began < 15
        silent.close()
    finally:
        launcher.stop()
