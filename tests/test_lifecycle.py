"""Start, shutdown, failure and client death: no hang, no process left behind."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from parsl_rcylon import (
    ExecutorBroken,
    ExecutorShutdown,
    RadicalCylonExecutor,
    StartupError,
    WorkerLost,
    WorkerPool,
    cylon_app,
)

from .conftest import wait_for_no_processes

pytestmark = pytest.mark.integration


@cylon_app(ranks=2)
def nap(ctx, seconds):
    time.sleep(seconds)
    return ctx.comm.allreduce(ctx.rank)


@cylon_app(ranks=2)
def die_on_rank_1(ctx):
    ctx.comm.Barrier()
    if ctx.rank == 1:
        os._exit(9)
    time.sleep(30)
    return "unreachable"


def _start(tmp_path: Path, **kwargs) -> RadicalCylonExecutor:
    ex = RadicalCylonExecutor(label=kwargs.pop("label", "life"), **kwargs)
    ex.run_dir = str(tmp_path)
    ex.start()
    return ex


def test_shutdown_fails_running_tasks_and_leaves_nothing(tmp_path):
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    ex = _start(tmp_path, worker_ranks=2)
    sid = ex.session_id
    ours = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
    assert ours, "the executor started no process of its own in this client"
    assert ex.submit(nap.func, {"ranks": 2}, 0).result(timeout=60) == 1
    running = ex.submit(nap.func, {"ranks": 2}, 120)
    queued = ex.submit(nap.func, {"ranks": 2}, 1)
    time.sleep(1)
    ex.shutdown()
    for fut in (running, queued):
        with pytest.raises(ExecutorShutdown, match="shut down"):
            fut.result(timeout=5)
    with pytest.raises(ExecutorShutdown):
        ex.submit(nap.func, {"ranks": 2}, 0)
    assert wait_for_no_processes(sid, timeout=10) == []
    _, alive = psutil.wait_procs(ours, timeout=10)  # RP's proxy fork and our guard carry no session id
    assert alive == [], [(p.pid, p.cmdline()) for p in alive]
    # every RP artifact stays under the run directory
    assert (tmp_path / "life" / "sandbox").is_dir()
    assert any(p.name.startswith("rp.session.") for p in (tmp_path / "life").iterdir())
    print(f"shutdown took {ex.timings['shutdown']:.1f} s")


def test_worker_death_fails_its_tasks_and_a_replacement_runs_the_next(tmp_path):
    ex = _start(tmp_path, worker_ranks=2)
    sid = ex.session_id
    try:
        fut = ex.submit(die_on_rank_1.func, {"ranks": 2})
        with pytest.raises(WorkerLost, match=r"lost its worker life.default.worker.000: .*rank 1 \(pid \d+ on "):
            fut.result(timeout=120)
        t0 = time.monotonic()
        assert ex.submit(nap.func, {"ranks": 2}, 0).result(timeout=120) == 1
        print(f"replacement worker ran the next task {time.monotonic() - t0:.1f} s after the loss")
    finally:
        ex.shutdown()
    assert wait_for_no_processes(sid, timeout=10) == []


def test_worker_start_failure_raises_with_its_stderr(tmp_path):
    broken = tmp_path / "broken"
    (broken / "mpi4py").mkdir(parents=True)
    (broken / "mpi4py" / "__init__.py").write_text(
        "raise ImportError('mpi4py deliberately broken by the test')\n")
    pool = WorkerPool(name="default", ranks=2, environment={"PYTHONPATH": str(broken)})
    ex = RadicalCylonExecutor(label="broken", pools=[pool], start_timeout=240)
    ex.run_dir = str(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(StartupError) as info:
        ex.start()
    elapsed = time.monotonic() - t0
    assert "mpi4py deliberately broken by the test" in str(info.value)
    assert "broken.default.worker.000" in str(info.value)
    assert elapsed < 200, f"start() should fail as soon as the worker fails, took {elapsed:.0f} s"
    sid = ex.session_id
    assert sid and wait_for_no_processes(sid, timeout=10) == []


def test_killed_client_leaves_no_process_behind(tmp_path):
    script = Path(__file__).with_name("lifecycle_client.py")
    home, cwd, run_dir = tmp_path / "home", tmp_path / "cwd", tmp_path / "runinfo"
    for d in (home, cwd):
        d.mkdir()
    env = dict(os.environ, HOME=str(home),
               PYTHONPATH=os.pathsep.join([str(script.parent.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=str(cwd))
    sid = None
    lines = []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("SESSION "):
                sid = line.split()[1]
                break
        assert sid, "client did not start:\n" + "".join(lines[-40:])
        # What the client started that has no session id on it: RP's proxy
        # fork of the client among them.
        descendants = psutil.Process(proc.pid).children(recursive=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    killed_at = time.monotonic()
    left = wait_for_no_processes(sid, timeout=60)
    assert left == [], f"still running {time.monotonic() - killed_at:.0f} s after SIGKILL: {left}"
    _, alive = psutil.wait_procs(descendants, timeout=max(1.0, 60 - (time.monotonic() - killed_at)))
    assert alive == [], f"the client's own children outlived it: {[(p.pid, p.cmdline()) for p in alive]}"
    print(f"all processes of {sid} ended {time.monotonic() - killed_at:.0f} s after SIGKILL")
    # nothing of Radical Pilot, PSI/J or radical.utils in the user's home or working directory
    assert sorted(p.name for p in home.iterdir()) == []
    assert sorted(p.name for p in cwd.iterdir()) == []


def test_a_client_killed_while_its_session_opens_leaves_no_process_behind(tmp_path):
    # RP's proxy fork of the client is made inside rp.Session(), before the session is the executor's to
    # close; the guard has watched since before it, and ends it and the session's bridges.
    script = Path(__file__).with_name("lifecycle_client.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(script.parent.parent), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "client.out"
    with out.open("w") as stdout:  # a file, not a pipe: a fork left alive would hold a pipe open
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / "runinfo"), "--die-in-session"],
                              stdout=stdout, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path), timeout=240)
    text = out.read_text()
    assert proc.returncode == -signal.SIGKILL, text
    lines = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith(("SESSION", "CHILDREN")))
    sid, children = lines["SESSION"].strip(), [int(pid) for pid in lines["CHILDREN"].split()]
    assert children, "RP's proxy fork of the client was not among its children"
    left = []
    for pid in children:
        try:
            left.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=30)
    outlived = []
    for proc in alive:  # the test's own leftovers, when it fails
        with contextlib.suppress(psutil.Error):
            outlived.append((proc.pid, proc.cmdline()))
            proc.kill()
    assert alive == [], f"the client's children outlived it: {outlived}"
    assert wait_for_no_processes(sid, timeout=30) == []


def test_a_lost_pilot_fails_every_pending_task_at_once_and_a_new_executor_starts(tmp_path):
    from parsl_rcylon import PilotLost

    ex = _start(tmp_path / "first", worker_ranks=2, label="lost")
    sid = ex.session_id
    try:
        assert ex.submit(nap.func, {"ranks": 2}, 0).result(timeout=60) == 1
        running = ex.submit(nap.func, {"ranks": 2}, 300)
        queued = [ex.submit(nap.func, {"ranks": 2}, 0) for _ in range(3)]
        time.sleep(1)
        t0 = time.monotonic()
        ex._own.runtime._pmgr.cancel_pilots()  # as the batch system ending the job would
        # The running task's ranks die with the pilot: it may fail as soon as their PIDs are gone.
        with pytest.raises((WorkerLost, ExecutorBroken)):
            running.result(timeout=60)
        for fut in queued:
            with pytest.raises(ExecutorBroken, match="pilot .* is (CANCELED|DONE|FAILED)") as info:
                fut.result(timeout=60)
            assert isinstance(info.value.__cause__, PilotLost)
        print(f"pending tasks failed {time.monotonic() - t0:.1f} s after the pilot was cancelled")
        with pytest.raises(ExecutorBroken, match="pilot .* is"):
            ex.submit(nap.func, {"ranks": 2}, 0).result(timeout=10)
    finally:
        ex.shutdown()
    assert wait_for_no_processes(sid, timeout=15) == []
    again = _start(tmp_path / "second", worker_ranks=2, label="again")
    try:
        assert again.submit(nap.func, {"ranks": 2}, 0).result(timeout=60) == 1
    finally:
        again.shutdown()
