"""The warm worker: one process answers request after request; cancel, crash, close and the caller's
death end it; progress, errors and staging behave as for a one-shot process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from TACEResponseLib.frontend import process
from TACEResponseLib.frontend.process import BackgroundRun, RunState, WorkerProcess

FAKE_WORKER = textwrap.dedent(r'''
    import json, os, signal, subprocess, sys, time
    from TACEResponseLib.cli.worker import serve

    calls = []

    def run(argv):
        mode, out, marker = argv
        calls.append(mode)
        def progress(fraction, stage):
            print(json.dumps({"progress": fraction, "stage": stage}), flush=True)
        progress(0.0, "reading")
        print(f"request {len(calls)} in process {os.getpid()}", flush=True)
        os.write(1, b"a library writing to descriptor 1\n")
        if mode == "ok":
            with open(os.path.join(out, "heatmap.nrrd"), "w") as f:
                f.write("heat")
            with open(os.path.join(out, "result.json"), "w") as f:
                json.dump({"request": len(calls), "pid": os.getpid()}, f)
            progress(1.0, "done")
            return 0
        if mode == "helper":  # leaves a process of its own running, as a library's forked helper may
            helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            with open(os.path.join(out, "heatmap.nrrd"), "w") as f:
                f.write("heat")
            with open(os.path.join(out, "result.json"), "w") as f:
                json.dump({"helper": helper.pid}, f)
            return 0
        if mode == "user_error":
            print("error: segment 'Tumour' is empty; draw the tumour first", file=sys.stderr, flush=True)
            return 2
        if mode == "exception":
            raise RuntimeError("CUDA exploded")
        if mode == "die":
            print("about to crash", file=sys.stderr, flush=True)
            os._exit(7)
        if mode == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c",
                          "import sys, time; time.sleep(1.5); open(sys.argv[1], 'w').write('late')", marker])
        with open(os.path.join(out, "partial.txt"), "w") as f:
            f.write("half")
        progress(0.45, "forward")
        time.sleep(60)
        return 0

    serve(run, idle_timeout=float(os.environ.get("FAKE_IDLE", "0")) or None)
''')


@pytest.fixture()
def fake_worker(tmp_path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    marker = tmp_path / "grandchild_marker.txt"
    workers = []

    def make(idle: float = 0.0) -> WorkerProcess:
        env = process.library_environment({**os.environ, "FAKE_IDLE": str(idle)})
        worker = WorkerProcess([sys.executable, str(script)], env=env)
        workers.append(worker)
        return worker

    def command(mode: str) -> list[str]:
        return [mode, "{output}", str(marker)]

    make.command, make.marker = command, marker
    yield make
    for worker in workers:
        worker.close()


def _run(worker, fake, mode, tmp_path, **kwargs) -> BackgroundRun:
    return BackgroundRun(fake.command(mode), work_root=tmp_path, worker=worker,
                         required_outputs=("result.json", "heatmap.nrrd"), **kwargs).start()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_one_worker_answers_request_after_request(fake_worker, tmp_path):
    worker = fake_worker()
    outcomes = []
    for n in range(3):
        destination = tmp_path / f"case{n}"
        run = BackgroundRun(fake_worker.command("ok"), destination=destination, work_root=tmp_path, worker=worker,
                            required_outputs=("result.json", "heatmap.nrrd")).start()
        update = run.wait(timeout=30)
        assert update.state is RunState.SUCCEEDED, (update.error, list(run.log))
        assert update.progressed and (update.fraction, update.stage) == (1.0, "done")
        assert not any('"progress"' in line for line in run.log)
        # a library writing on descriptor 1 (the fake does) does not break the protocol
        outcomes.append(json.loads((destination / "result.json").read_text()))
        assert not run.work_dir.exists()
    assert [o["request"] for o in outcomes] == [1, 2, 3], "the same process, keeping its state, served every request"
    assert {o["pid"] for o in outcomes} == {worker.pid} and worker.starts == 1


def test_errors_are_reported_and_the_worker_stays_warm(fake_worker, tmp_path):
    worker = fake_worker()
    failed = _run(worker, fake_worker, "user_error", tmp_path).wait(timeout=30)
    assert failed.state is RunState.FAILED and failed.error == "segment 'Tumour' is empty; draw the tumour first"
    crashed = _run(worker, fake_worker, "exception", tmp_path).wait(timeout=30)
    assert crashed.state is RunState.FAILED
    assert "RuntimeError: CUDA exploded" in crashed.error and "details in the log" in crashed.error
    ok = _run(worker, fake_worker, "ok", tmp_path)
    assert ok.wait(timeout=30).state is RunState.SUCCEEDED
    assert json.loads((ok.output_dir / "result.json").read_text())["request"] == 3 and worker.starts == 1
    ok.cleanup()


@pytest.mark.parametrize("mode", ["slow", "stubborn"])
def test_cancel_kills_the_worker_tree_within_2_s_and_the_next_request_starts_a_new_one(fake_worker, tmp_path, mode):
    worker = fake_worker()
    destination = tmp_path / "case_result"
    run = BackgroundRun(fake_worker.command(mode), destination=destination, work_root=tmp_path, worker=worker,
                        grace_period=1.0).start()
    deadline = time.monotonic() + 30
    while run.poll().stage != "forward" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (run.staging_dir / "partial.txt").exists()
    pid = worker.pid
    started = time.monotonic()
    run.cancel()
    took = time.monotonic() - started
    assert took < 2.0, f"cancel took {took:.2f} s"
    assert run.state is RunState.CANCELLED and not run.work_dir.exists() and not destination.exists()
    assert _gone(pid) and not worker.alive
    time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
    assert not fake_worker.marker.exists(), "the grandchild survived the cancel"
    again = _run(worker, fake_worker, "ok", tmp_path)
    assert again.wait(timeout=30).state is RunState.SUCCEEDED
    assert worker.starts == 2 and worker.pid != pid
    assert json.loads((again.output_dir / "result.json").read_text())["request"] == 1  # a fresh process
    again.cleanup()


def test_a_crashed_worker_fails_the_run_clearly_and_is_restarted(fake_worker, tmp_path):
    worker = fake_worker()
    first = _run(worker, fake_worker, "ok", tmp_path)
    assert first.wait(timeout=30).state is RunState.SUCCEEDED
    first.cleanup()
    pid = worker.pid
    crashed = _run(worker, fake_worker, "die", tmp_path).wait(timeout=30)
    assert crashed.state is RunState.FAILED
    assert "status 7" in crashed.error and any("about to crash" in line for line in crashed.lines)
    assert _gone(pid) or not worker.alive
    after = _run(worker, fake_worker, "ok", tmp_path)
    assert after.wait(timeout=30).state is RunState.SUCCEEDED and worker.starts == 2
    after.cleanup()


def test_the_worker_exits_when_closed_or_idle(fake_worker, tmp_path):
    worker = fake_worker()
    run = _run(worker, fake_worker, "ok", tmp_path)
    assert run.wait(timeout=30).state is RunState.SUCCEEDED
    run.cleanup()
    pid = worker.pid
    worker.close()
    assert _gone(pid)
    idle = fake_worker(idle=0.5)
    run = _run(idle, fake_worker, "ok", tmp_path)
    assert run.wait(timeout=30).state is RunState.SUCCEEDED
    run.cleanup()
    deadline = time.monotonic() + 10
    while idle.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not idle.alive and idle.process.returncode == 0


CALLER = textwrap.dedent(r'''
    import sys, time
    from TACEResponseLib.frontend.process import BackgroundRun, WorkerProcess, library_environment
    worker = WorkerProcess([sys.executable, sys.argv[1]], env=library_environment())
    run = BackgroundRun(["slow", "{output}", sys.argv[2]], worker=worker, work_root=sys.argv[3]).start()
    while run.poll().stage != "forward":
        time.sleep(0.01)
    print(worker.pid, flush=True)
    time.sleep(60)
''')


def test_the_worker_exits_with_its_caller_even_mid_request(tmp_path):
    """Slicer killed while a prediction runs: the worker's stdin closes and it stops at once."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    caller = subprocess.Popen([sys.executable, "-c", CALLER, str(script), str(tmp_path / "m"), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, env=process.library_environment())
    try:
        worker_pid = int(caller.stdout.readline())
        caller.kill()
        caller.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not _gone(worker_pid) and time.monotonic() < deadline:
            try:  # reap it if it became our zombie (it is not our child, so this only ever returns quickly)
                os.waitpid(worker_pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        assert _gone(worker_pid) or _zombie(worker_pid), "the worker outlived the process that started it"
    finally:
        if caller.poll() is None:
            caller.kill()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_the_real_worker_keeps_the_model_between_predictions(tmp_path, random_bundle):
    """``tace-response worker`` runs predict requests; the second one finds the model loaded."""
    from TACEResponseLib.imaging.phantoms import make_phantom
    from TACEResponseLib.imaging.segmentation import write_segmentation
    from TACEResponseLib.imaging.volume_io import write_volume
    from TACEResponseLib.prediction.results import PredictionResult

    case = make_phantom("PR", shape_kji=(40, 80, 80), seed=2)
    image = write_volume(case.phases["arterial"], tmp_path / "a.nrrd", compress=False)
    segmentation = write_segmentation(case.segmentation, tmp_path / "t.seg.nrrd")
    worker = WorkerProcess(python=sys.executable, env=dict(os.environ))
    try:
        results = []
        for n in range(2):
            argv = ["predict", "--image", str(image), "--segmentation", str(segmentation), "--bundle",
                    str(random_bundle.path), "--output", "{output}", "--device", "cpu", "--progress"]
            run = BackgroundRun(argv, work_root=tmp_path, worker=worker).start()
            update = run.wait(timeout=300)
            assert update.state is RunState.SUCCEEDED, (update.error, list(run.log)[-5:])
            results.append((PredictionResult.load_json(run.output_dir / "result.json"), list(run.log)))
            run.cleanup()
        (first, first_log), (second, second_log) = results
        assert worker.starts == 1
        assert first.tumours[0].probabilities == second.tumours[0].probabilities
        assert "network" in first.timings and "network" not in second.timings, "the second request reloaded the model"
        assert any("runs on" in line for line in first_log) and not any("runs on" in line for line in second_log)
    finally:
        worker.close()


PARENT = textwrap.dedent(r'''
    import os, subprocess, sys, time
    from TACEResponseLib.frontend.process import library_environment, worker_command
    stdin = int(sys.argv[1])  # the test holds this pipe's write end too: no end of file when this process dies
    command = worker_command(sys.executable, idle_timeout=0)  # 0: never idle out; only the parent can end it
    worker = subprocess.Popen(command + sys.argv[2:], stdin=stdin, stdout=subprocess.PIPE, env=library_environment(),
                              start_new_session=True)
    print(worker.pid, worker.stdout.readline().decode().strip(), flush=True)
    time.sleep(120)
''')


def _wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _gone(pid) or _zombie(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(os.name == "nt", reason="a parent's pid is watched on POSIX only")
@pytest.mark.parametrize("how", ["stdin-closed", "parent-killed", "caller-pid-gone"])
def test_the_real_worker_exits_when_stdin_closes_or_its_parent_goes(tmp_path, how):
    """``tace-response worker`` as the Slicer module starts it: it ends when its stdin closes, when its parent is
    killed while another process still holds its stdin, and when the caller named by --parent-pid goes."""
    read_end, write_end = os.pipe()
    caller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    extra = ["--parent-pid", str(caller.pid)] if how == "caller-pid-gone" else []
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(read_end), *extra], stdout=subprocess.PIPE,
                              text=True, pass_fds=(read_end,), env=process.library_environment())
    os.close(read_end)
    worker_pid = None
    try:
        pid, ready = parent.stdout.readline().split(" ", 1)
        worker_pid = int(pid)
        assert json.loads(ready) == {"ready": worker_pid}
        time.sleep(1.5)  # a few rounds of the parent check: it stays while its parent and caller run
        assert not _gone(worker_pid) and not _zombie(worker_pid)
        if how == "stdin-closed":
            os.close(write_end)
            write_end = None
        elif how == "parent-killed":
            parent.kill()
            parent.wait(timeout=10)
        else:
            caller.kill()
            caller.wait(timeout=10)
        assert _wait_gone(worker_pid), f"the worker outlived its {how.replace('-', ' ')}"
    finally:
        for started in (parent, caller):
            if started.poll() is None:
                started.kill()
                started.wait(timeout=10)
        if write_end is not None:
            os.close(write_end)
        if worker_pid is not None and not _wait_gone(worker_pid, 0.1):
            os.kill(worker_pid, 9)


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
@pytest.mark.parametrize("how", ["stdin-closed", "idle"])
def test_the_processes_a_worker_started_end_with_it(fake_worker, tmp_path, how):
    """A helper process the worker left running (a library's fork) ends when the worker does."""
    worker = fake_worker(idle=1.0 if how == "idle" else 0.0)
    run = BackgroundRun(fake_worker.command("helper"), work_root=tmp_path, worker=worker,
                        destination=tmp_path / "kept", required_outputs=("result.json",)).start()
    assert run.wait(timeout=30).state is RunState.SUCCEEDED
    helper = json.loads((tmp_path / "kept" / "result.json").read_text())["helper"]
    assert not _gone(helper)
    if how == "stdin-closed":
        worker.process.stdin.close()  # the caller went away (not WorkerProcess.close, which kills the group)
    assert worker.process.wait(timeout=15) == 0
    try:
        assert _wait_gone(helper), "the worker's helper outlived it"
    finally:
        if not _wait_gone(helper, 0.1):
            os.kill(helper, 9)
