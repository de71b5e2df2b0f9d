"""The launcher's spare session, without starting real sessions: a page gets the spare (waiting for it
while it starts), two pages at once get it only once, a spare that failed is not handed out, the spare
ends with the launcher, the next one starts a while after a page took one; a spare taken by the start page's POST becomes that user's (unreachable before,
counted against the user's cap, ended by the user's log-out) and its lifetime starts then. The browser
test (``test_web.py``) opens its first page on a real spare, the attack tests (``test_web_security.py``)
run against a launcher that keeps one."""

from __future__ import annotations

import asyncio
import base64

import pytest

pytest.importorskip("aiohttp", reason="the web extra (aiohttp) is not installed")

from TACEResponseLib.frontend.web import auth  # noqa: E402
from TACEResponseLib.frontend.web.launcher import Launcher, Session, WebOptions  # noqa: E402


def _launcher(tmp_path, **options) -> Launcher:
    return Launcher(WebOptions(work_root=tmp_path, spare_sessions=1, **options))


async def _fake_spare(launcher: Launcher, name: str, ready: bool = False) -> Session:
    folder = launcher.root / name
    folder.mkdir()
    session = Session(name, None, folder, key="k")
    session.process = await asyncio.create_subprocess_exec("sleep", "30", start_new_session=True)
    if ready:
        session.port = 9  # never connected to here
        session.ready.set()
    launcher.spare = session
    return session


def test_a_page_waits_for_the_starting_spare_and_two_pages_get_it_once(tmp_path, monkeypatch):
    launcher = _launcher(tmp_path, spare_refill_delay=0.5)
    started = []
    monkeypatch.setattr(launcher, "_start_spare", lambda: started.append(True))  # no real session process

    async def scenario():
        spare = await _fake_spare(launcher, "a" * 32)
        first = asyncio.create_task(launcher._claim_spare("alice", None))
        second = asyncio.create_task(launcher._claim_spare("bob", None))
        await asyncio.sleep(0.2)
        assert not first.done() and not second.done(), "a page must wait for the spare that is starting"
        spare.port = 12345
        spare.ready.set()
        claimed = await first, await second
        assert claimed == (spare, None)  # the first page gets it, the second starts its own session
        assert spare.user == "alice" and launcher.sessions[spare.id] is spare and launcher.spare is None
        assert started == [], "the next spare leaves the CPU to the page just opened for a while"
        await asyncio.sleep(0.7)
        assert started == [True], "a new spare starts behind the claimed one"
        await launcher.end_session(spare)

    asyncio.run(scenario())


def test_a_failed_or_ended_spare_is_not_handed_out_and_the_spare_ends_with_the_launcher(tmp_path, monkeypatch):
    launcher = _launcher(tmp_path)
    monkeypatch.setattr(launcher, "_start_spare", lambda: None)

    async def scenario():
        spare = await _fake_spare(launcher, "b" * 32)
        spare.error = "the session process exited"
        spare.ready.set()
        assert await launcher._claim_spare("alice", None) is None
        spare.error = None
        spare.process.kill()
        await spare.process.wait()
        assert await launcher._claim_spare("alice", None) is None
        running = await _fake_spare(launcher, "c" * 32)
        await launcher._stop(launcher.app)
        assert running.process.returncode is not None and not running.folder.exists()
        assert launcher.options.spare_sessions == 0, "no spare starts while the launcher stops"

    asyncio.run(scenario())


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_start_pages_post_gives_the_spare_to_its_user_under_that_users_cap_and_log_out(tmp_path, monkeypatch):
    from aiohttp.test_utils import TestClient, TestServer

    users = auth.add_user(tmp_path / "users", "alice", "pw-a")
    auth.add_user(users, "bob", "pw-b")
    launcher = _launcher(tmp_path, users_file=users, max_sessions_per_user=1)
    monkeypatch.setattr(launcher, "_start_spare", lambda: None)

    async def scenario():
        async with TestClient(TestServer(launcher.app)) as alice, TestClient(TestServer(launcher.app)) as bob:
            spare = await _fake_spare(launcher, "d" * 32, ready=True)
            origin = {"Origin": f"http://{bob.host}:{bob.port}"}
            # nobody reaches a spare before a page was given it
            peek = await bob.post(f"/s/{spare.id}/paraview/", headers={**_basic("bob", "pw-b"), **origin})
            assert peek.status == 404
            origin = {"Origin": f"http://{alice.host}:{alice.port}"}
            assert (await alice.get("/", headers=_basic("alice", "pw-a"))).status == 200  # the start page; the cookie
            started = await alice.post("/sessions", headers=origin, allow_redirects=False)
            assert started.status == 303 and started.headers["Location"] == f"/s/{spare.id}/"
            assert spare.user == "alice" and spare.login is not None and launcher.sessions[spare.id] is spare
            info = await alice.post(f"/s/{spare.id}/paraview/", headers=origin)
            assert info.status == 200 and (await info.json())["secret"] == "k"
            again = await alice.post("/sessions", headers=origin, allow_redirects=False)
            assert again.status == 429, "the spare counts against its user's sessions"
            assert (await alice.post("/logout", headers=origin)).status == 200
            assert spare.process.returncode is not None and not spare.folder.exists(), \
                "the user's log-out ends the spare that user was given"

    asyncio.run(scenario())


def test_a_spares_lifetime_starts_when_a_page_gets_it(tmp_path, monkeypatch):
    launcher = _launcher(tmp_path, session_lifetime=1.0)
    monkeypatch.setattr(launcher, "_start_spare", lambda: None)

    async def scenario():
        spare = await _fake_spare(launcher, "e" * 32, ready=True)
        living = asyncio.create_task(launcher._live(spare))
        await asyncio.sleep(2.5)
        assert spare.process.returncode is None, "a spare nobody has yet must not reach its lifetime"
        assert await launcher._claim_spare("alice", None) is spare
        await asyncio.sleep(0.5)
        assert spare.process.returncode is None, "its lifetime counts from the claim"
        await asyncio.wait_for(living, timeout=5)
        assert spare.process.returncode is not None and spare.id not in launcher.sessions

    asyncio.run(scenario())
