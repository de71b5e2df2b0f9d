"""The background runner with a fake CLI: progress, success, clear errors, cancel of the whole tree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from TACEResponseLib.core.errors import TACEResponseError
from TACEResponseLib.frontend import process
from TACEResponseLib.frontend.process import BackgroundRun, RunState, extract_error, parse_progress_line

FAKE_CLI = textwrap.dedent(r'''
    import json, os, signal, subprocess, sys, time
    mode, out, marker = sys.argv[1], sys.argv[2], sys.argv[3]

    def progress(fraction, stage):
        print(json.dumps({"progress": fraction, "stage": stage}), flush=True)

    progress(0.0, "reading")
    print("a log line that is not JSON", flush=True)
    progress(0.25, "patches")
    if mode == "ok":
        progress(0.9, "writing")
        with open(os.path.join(out, "heatmap.nrrd"), "w") as f:
            f.write("heat")
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"case_id": "fake", "mode": mode}, f)
        progress(1.0, "done")
        sys.exit(0)
    if mode == "user_error":
        print("INFO tace-response: reading images", file=sys.stderr, flush=True)
        print("error: segment 'Tumour' is empty; draw the tumour first", file=sys.stderr, flush=True)
        sys.exit(2)
    if mode == "crash":
        raise RuntimeError("CUDA exploded")
    if mode == "no_result":
        sys.exit(0)
    if mode == "stubborn":  # ignores SIGTERM, and so does the grandchild it starts
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # a grandchild that would write the marker later, a partial output now, then a long "forward pass"
    subprocess.Popen([sys.executable, "-c",
                      "import sys, time; time.sleep(1.5); open(sys.argv[1], 'w').write('late')", marker])
    with open(os.path.join(out, "partial.txt"), "w") as f:
        f.write("half")
    progress(0.45, "forward")
    time.sleep(60)
''')


@pytest.fixture()
def fake_cli(tmp_path):
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_CLI)
    marker = tmp_path / "grandchild_marker.txt"

    def command(mode: str) -> list[str]:
        return [sys.executable, str(script), mode, "{output}", str(marker)]

    command.marker = marker
    return command


def _poll_until(run: BackgroundRun, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        update = run.poll()
        if update.progressed:
            seen.append((update.fraction, update.stage))
        if predicate(update):
            return update, seen
        time.sleep(0.01)
    raise AssertionError(f"condition not reached in {timeout} s: state {run.state}, log {list(run.log)}")


def test_progress_is_parsed_and_success_moves_the_output_into_place(fake_cli, tmp_path):
    destination = tmp_path / "case_result"
    run = BackgroundRun(fake_cli("ok"), destination=destination, required_outputs=("result.json", "heatmap.nrrd"),
                        work_root=tmp_path).start()
    stages = []
    while not (update := run.poll()).finished:
        if update.progressed:
            stages.append(update.stage)
        time.sleep(0.01)
    assert update.state is RunState.SUCCEEDED, update.error
    assert run.returncode == 0
    assert (update.fraction, update.stage) == (1.0, "done")
    assert stages == sorted(stages, key=["reading", "patches", "writing", "done"].index)  # in order, maybe merged
    assert update.output_dir == destination
    assert json.loads((destination / "result.json").read_text())["mode"] == "ok"
    assert "a log line that is not JSON" in run.log  # non-progress output is kept for the log
    assert not any('"progress"' in line for line in run.log)
    assert not run.work_dir.exists()  # inputs and staging removed


def test_success_without_destination_is_read_in_place_then_cleaned_up(fake_cli, tmp_path):
    run = BackgroundRun(fake_cli("ok"), work_root=tmp_path).start()
    update = run.wait(timeout=30)
    assert update.state is RunState.SUCCEEDED
    assert (update.output_dir / "result.json").is_file()
    assert update.output_dir.parent == run.work_dir
    run.cleanup()
    assert not run.work_dir.exists()


def test_user_error_line_becomes_the_message(fake_cli, tmp_path):
    run = BackgroundRun(fake_cli("user_error"), work_root=tmp_path).start()
    update = run.wait(timeout=30)
    assert update.state is RunState.FAILED
    assert run.returncode == 2
    assert update.error == "segment 'Tumour' is empty; draw the tumour first"
    assert not run.work_dir.exists()  # nothing partial is left


def test_crash_gives_the_exception_line_not_the_traceback(fake_cli, tmp_path):
    run = BackgroundRun(fake_cli("crash"), work_root=tmp_path).start()
    update = run.wait(timeout=30)
    assert update.state is RunState.FAILED
    assert "RuntimeError: CUDA exploded" in update.error
    assert "Traceback" not in update.error and "File " not in update.error
    assert any(line.startswith("Traceback") for line in run.log)  # the details stay in the log


def test_exit_0_without_result_is_a_failure(fake_cli, tmp_path):
    destination = tmp_path / "never"
    run = BackgroundRun(fake_cli("no_result"), destination=destination, work_root=tmp_path).start()
    update = run.wait(timeout=30)
    assert update.state is RunState.FAILED
    assert "result.json" in update.error
    assert not destination.exists() and not run.work_dir.exists()


def test_failed_run_keeps_a_previous_result_and_success_replaces_it(fake_cli, tmp_path):
    destination = tmp_path / "case"
    destination.mkdir()
    (destination / "result.json").write_text('{"old": true}')
    BackgroundRun(fake_cli("user_error"), destination=destination, work_root=tmp_path).start().wait(timeout=30)
    assert json.loads((destination / "result.json").read_text()) == {"old": True}
    BackgroundRun(fake_cli("ok"), destination=destination, work_root=tmp_path).start().wait(timeout=30)
    assert json.loads((destination / "result.json").read_text())["mode"] == "ok"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".case")) == []  # old copy removed


@pytest.mark.parametrize("mode", ["slow", "stubborn"])
def test_cancel_stops_the_process_tree_within_2_s_and_leaves_nothing(fake_cli, tmp_path, mode):
    destination = tmp_path / "case_result"
    run = BackgroundRun(fake_cli(mode), destination=destination, work_root=tmp_path, grace_period=1.0).start()
    update, _ = _poll_until(run, lambda u: u.stage == "forward")
    assert (run.staging_dir / "partial.txt").exists()  # the partial output exists before the cancel
    pid = run.pid
    started = time.monotonic()
    run.cancel()
    took = time.monotonic() - started
    assert took < 2.0, f"cancel took {took:.2f} s"
    assert run.state is RunState.CANCELLED and run.poll().state is RunState.CANCELLED
    assert not run.work_dir.exists() and not destination.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))  # the grandchild would have written by now
    assert not fake_cli.marker.exists(), "the grandchild survived the cancel"


def test_poll_does_not_block_while_the_command_runs(fake_cli, tmp_path):
    run = BackgroundRun(fake_cli("slow"), work_root=tmp_path).start()
    try:
        _poll_until(run, lambda u: u.stage == "forward")
        started = time.monotonic()
        for _ in range(20):
            assert run.poll().state is RunState.RUNNING
        assert time.monotonic() - started < 0.2
    finally:
        run.cancel()


def test_a_missing_executable_is_a_clear_failure(tmp_path):
    run = BackgroundRun([str(tmp_path / "no-such-python"), "-c", "pass"], work_root=tmp_path).start()
    assert run.state is RunState.FAILED
    assert "no-such-python" in run.error
    assert not run.work_dir.exists()


def test_parse_progress_line():
    assert parse_progress_line('{"progress": 0.45, "stage": "forward"}') == process.Progress(0.45, "forward")
    assert parse_progress_line('  {"progress": 1.7, "stage": "done"}\n') == process.Progress(1.0, "done")
    for line in ("", "progress 0.5", '{"stage": "x"}', '{"progress": "soon"}', "[1, 2]", "{not json}"):
        assert parse_progress_line(line) is None, line


def test_extract_error_cases():
    assert extract_error(["INFO x", "error: bad input", "trailing noise"], 2) == "bad input"
    killed = extract_error([], -9)
    assert "SIGKILL" in killed and "memory" in killed
    assert "status 3" in extract_error(["something odd"], 3)
    assert "without a message" in extract_error([], 1)


def test_cli_command_runs_the_library_from_anywhere(tmp_path):
    """The environment makes TACEResponseLib importable for the child whatever its working folder."""
    command = process.cli_command(["--help"], python=sys.executable)
    assert command[:3] == [sys.executable, "-m", "TACEResponseLib.cli"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    completed = subprocess.run(command, cwd=tmp_path, env=process.library_environment(env), capture_output=True,
                               text=True, encoding="utf-8", timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "predict" in completed.stdout


def test_python_slicer_executable_prefers_pythonslicer(monkeypatch):
    monkeypatch.setattr(process.shutil, "which", lambda name: "/opt/Slicer/bin/PythonSlicer" if name == "PythonSlicer" else None)
    assert process.python_slicer_executable() == "/opt/Slicer/bin/PythonSlicer"
    assert process.python_slicer_executable(in_slicer=True) == "/opt/Slicer/bin/PythonSlicer"
    monkeypatch.setattr(process.shutil, "which", lambda name: None)
    assert process.python_slicer_executable(in_slicer=False) == sys.executable


def test_inside_slicer_a_missing_pythonslicer_is_an_error_not_this_python(monkeypatch, tmp_path):
    """Inside Slicer sys.executable is PythonSlicer itself (or "" when it is missing): never a fallback."""
    monkeypatch.setattr(process.shutil, "which", lambda name: None)
    with pytest.raises(TACEResponseError, match=r"PythonSlicer executable not found.*" + re.escape(str(tmp_path))):
        process.python_slicer_executable(in_slicer=True, slicer_home=tmp_path)
    launcher = tmp_path / "bin" / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    launcher.parent.mkdir()
    launcher.write_text("")
    assert process.python_slicer_executable(in_slicer=True, slicer_home=tmp_path) == str(launcher)


def test_inside_slicer_is_told_by_slicer_app(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(app=None))  # slicer-core: no application
    assert not process.inside_slicer()
    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(app=types.SimpleNamespace(slicerHome="/x")))
    assert process.inside_slicer()
    monkeypatch.setattr(process.shutil, "which", lambda name: None)
    with pytest.raises(TACEResponseError, match="PythonSlicer"):
        process.python_slicer_executable()


def test_library_environment_puts_the_library_first():
    env = process.library_environment({"PYTHONPATH": "/elsewhere"})
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert Path(paths[0], "TACEResponseLib", "frontend", "process.py").is_file()
    assert paths[1] == "/elsewhere"
    assert env["PYTHONUNBUFFERED"] == "1"
