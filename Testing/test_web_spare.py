"""The launcher's spare session, without starting real sessions: a page gets the spare (waiting for it
while it starts), two pages at once get it only once, a spare that failed is not handed out, and the
spare ends with the launcher. The browser test (``test_web.py``) opens its first page on a real spare."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("aiohttp", reason="the web extra (aiohttp) is not installed")

from TACEResponseLib.frontend.web.launcher import Launcher, Session, WebOptions  # noqa: E402


def _launcher(tmp_path) -> Launcher:
    return Launcher(WebOptions(work_root=tmp_path, spare_sessions=1))


async def _fake_spare(launcher: Launcher, name: str) -> Session:
    folder = launcher.root / name
    folder.mkdir()
    session = Session(name, None, folder, key="k")
    session.process = await asyncio.create_subprocess_exec("sleep", "30", start_new_session=True)
    launcher.spare = session
    return session


def test_a_page_waits_for_the_starting_spare_and_two_pages_get_it_once(tmp_path, monkeypatch):
    launcher = _launcher(tmp_path)
    started = []
    monkeypatch.setattr(launcher, "_start_spare", lambda: started.append(True))  # no real session process

    async def scenario():
        spare = await _fake_spare(launcher, "a" * 32)
        first = asyncio.create_task(launcher._claim_spare("alice"))
        second = asyncio.create_task(launcher._claim_spare("bob"))
        await asyncio.sleep(0.2)
        assert not first.done() and not second.done(), "a page must wait for the spare that is starting"
        spare.port = 12345
        spare.ready.set()
        claimed = await first, await second
        assert claimed == (spare, None)  # the first page gets it, the second starts its own session
        assert spare.user == "alice" and launcher.sessions[spare.id] is spare and launcher.spare is None
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
        assert await launcher._claim_spare("alice") is None
        spare.error = None
        spare.process.kill()
        await spare.process.wait()
        assert await launcher._claim_spare("alice") is None
        running = await _fake_spare(launcher, "c" * 32)
        await launcher._stop(launcher.app)
        assert running.process.returncode is not None and not running.folder.exists()
        assert launcher.options.spare_sessions == 0, "no spare starts while the launcher stops"

    asyncio.run(scenario())
