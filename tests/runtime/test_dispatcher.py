"""The dispatcher against real rank processes over its authenticated channel: a rank that dies or goes
silent fails its tasks; a failed task's stuck ranks are cancelled, then their worker replaced; walltimes;
shutdown and a broken dispatcher fail tasks with errors of their own."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parsl_rcylon.errors import ExecutorBroken, ExecutorShutdown, TaskTimeout, WorkerLost
from parsl_rcylon.resources import ResourceSpec
from parsl_rcylon.runtime.client.dispatcher import Dispatcher
from parsl_rcylon.runtime.wire.channel import ENV_CHANNEL
from parsl_rcylon.runtime.wire.task import Task

FAKE_RANK = str(Path(__file__).with_name("fake_rank.py"))


def start_rank(dispatcher: Dispatcher, worker: str = "w", rank: int = 0, size: int = 1,
               mode: str = "sit") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **{ENV_CHANNEL: dispatcher.channel_file})
    return subprocess.Popen([sys.executable, FAKE_RANK, dispatcher.address, worker, str(rank), str(size), mode],
                            stdout=subprocess.PIPE, text=True, env=env)


def expect_line(proc: subprocess.Popen, prefix: str) -> str:
    line = proc.stdout.readline().strip()
    assert line.startswith(prefix), f"expected {prefix!r} from the rank, got {line!r}"
    return line


def task(uid: str, spec: ResourceSpec, name: str, **options) -> Task:
    """A plain app's call as the executor builds it (a ``walltime`` option is resolved into its spec)."""
    return Task.build(uid, name, False, options, spec)


@pytest.fixture
def dispatcher(request, tmp_path):
    d = Dispatcher(tmp_path, heartbeat_period=0.5, rank_timeout=getattr(request, "param", 120.0),
                   cancel_grace=1.0)
    d.start()
    procs = []
    d.test_ranks = procs  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        d.stop()


def one_rank(dispatcher, mode="sit", worker="w"):
    dispatcher.expect_worker(worker, size=1)
    proc = start_rank(dispatcher, worker, mode=mode)
    dispatcher.test_ranks.append(proc)
    dispatcher.wait_ready(30, lambda: None)
    return proc


def _submit_and_wait_running(proc, dispatcher, uid="t1", **extra):
    fut = dispatcher.submit(task(uid, ResourceSpec(ranks=1), "stuck", **extra), b"payload")
    assert expect_line(proc, "TASK") == f"TASK {uid}"
    return fut


def test_a_rank_whose_process_exits_fails_its_task(dispatcher):
    proc = one_rank(dispatcher)
    fut = _submit_and_wait_running(proc, dispatcher)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(WorkerLost, match=rf"lost its worker w: rank 0 \(pid {proc.pid} on .*\) exited"):
        fut.result(timeout=10)
    with pytest.raises(ExecutorBroken, match="no MPI worker is left") as info:
        dispatcher.submit(task("t2", ResourceSpec(ranks=1), "later"), b"").result(timeout=10)
    assert isinstance(info.value.__cause__, WorkerLost)


@pytest.mark.parametrize("dispatcher", [2.0], indirect=True)
def test_a_rank_that_stops_answering_fails_its_task(dispatcher):
    proc = one_rank(dispatcher)
    fut = _submit_and_wait_running(proc, dispatcher)
    proc.send_signal(signal.SIGSTOP)  # alive, but silent
    try:
        with pytest.raises(WorkerLost, match=r"rank 0 \(pid \d+ on .*\) has not answered for \d+ s"):
            fut.result(timeout=20)
    finally:
        proc.send_signal(signal.SIGCONT)


def test_a_busy_rank_that_answers_is_left_alone(dispatcher):
    proc = one_rank(dispatcher)
    fut = _submit_and_wait_running(proc, dispatcher)
    with pytest.raises(TimeoutError):
        fut.result(timeout=3)  # six heartbeats answered: still running
    assert dispatcher.stats()["default"]["running"] == 1


def test_results_come_back(dispatcher):
    one_rank(dispatcher, mode="answer")
    futs = [dispatcher.submit(task(f"t{i}", ResourceSpec(ranks=1), f"app{i}"), b"") for i in range(20)]
    assert [f.result(timeout=10) for f in futs] == [f"app{i}" for i in range(20)]


def test_walltimes_of_finished_tasks_are_not_kept(dispatcher):
    """Every task with a walltime arms a timer; those of tasks that finished long before it are dropped
    (the loop looks at the earliest timer at each wake-up, not at every running task)."""
    one_rank(dispatcher, mode="answer")
    futs = [dispatcher.submit(task(f"t{i}", ResourceSpec(ranks=1, walltime=3600), f"app{i}"), b"")
            for i in range(300)]
    assert [f.result(timeout=30) for f in futs] == [f"app{i}" for i in range(300)]
    with dispatcher._lock:
        assert len(dispatcher._timers) <= 65
        assert dispatcher._next_timer() == float("inf")
        assert dispatcher._timers == []


def test_a_task_past_its_walltime_fails_and_its_stuck_worker_is_replaced(dispatcher):
    replaced = []
    dispatcher.on_replace = lambda old, new: replaced.append((old, new))
    proc = one_rank(dispatcher)
    t0 = time.monotonic()
    fut = _submit_and_wait_running(proc, dispatcher, walltime=1.0)
    with pytest.raises(TaskTimeout, match=r"task t1 \(stuck\) ran longer than its walltime of 1 s"):
        fut.result(timeout=10)
    assert 0.9 < time.monotonic() - t0 < 5
    assert expect_line(proc, "CANCEL") == "CANCEL t1"
    # The rank sits on: after cancel_grace its worker is told to exit and another is started.
    assert expect_line(proc, "EXIT") == "EXIT"
    assert proc.wait(timeout=10) == 5
    deadline = time.monotonic() + 10
    while not replaced and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replaced == [("w", "w~1")]
    # Work queued meanwhile waits for the replacement instead of failing.
    queued = dispatcher.submit(task("t2", ResourceSpec(ranks=1), "after"), b"")
    time.sleep(1.5)
    assert not queued.done()
    new = start_rank(dispatcher, "w~1", mode="answer")
    dispatcher.test_ranks.append(new)
    assert queued.result(timeout=10) == "after"


def test_max_worker_restarts_bounds_replacements(tmp_path):
    d = Dispatcher(tmp_path, heartbeat_period=0.5, max_worker_restarts=0)
    d.on_replace = lambda old, new: pytest.fail("no replacement may start")
    d.start()
    try:
        d.expect_worker("w", size=1)
        proc = start_rank(d, "w")
        d.wait_ready(30, lambda: None)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while d.stats() and time.monotonic() < deadline:  # until the heartbeat's PID check has seen it
            time.sleep(0.1)
        with pytest.raises(ExecutorBroken, match="no MPI worker is left"):
            d.submit(task("t", ResourceSpec(ranks=1), "x"), b"").result(timeout=10)
    finally:
        d.stop()


def test_rank_timeout_is_an_executor_option_and_is_checked():
    from parsl_rcylon import RadicalCylonExecutor

    assert RadicalCylonExecutor(rank_timeout=45.0).rank_timeout == 45.0
    with pytest.raises(ValueError, match="rank_timeout"):
        RadicalCylonExecutor(rank_timeout=1.0, heartbeat_period=2.0)


def test_shutdown_fails_running_and_later_tasks_with_executor_shutdown(dispatcher):
    proc = one_rank(dispatcher)
    running = _submit_and_wait_running(proc, dispatcher)
    queued = dispatcher.submit(task("t2", ResourceSpec(ranks=1), "queued"), b"")
    dispatcher.stop()
    for fut in (running, queued):
        with pytest.raises(ExecutorShutdown, match="shut down before the task finished"):
            fut.result(timeout=10)
    later = dispatcher.submit(task("t3", ResourceSpec(ranks=1), "later"), b"")
    assert later.done(), "a stopped dispatcher refuses at once"
    with pytest.raises(ExecutorShutdown):
        later.result()


def test_a_failed_loop_breaks_the_dispatcher_with_its_cause(dispatcher):
    proc = one_rank(dispatcher)
    running = _submit_and_wait_running(proc, dispatcher)

    def bug(*_):  # stands for any bug in the loop's own code
        raise ZeroDivisionError("placement bug")

    dispatcher._placement.place = bug
    queued = dispatcher.submit(task("t2", ResourceSpec(ranks=1), "queued"), b"")
    for fut in (running, queued):
        with pytest.raises(ExecutorBroken, match="dispatcher loop failed") as info:
            fut.result(timeout=10)
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        assert not isinstance(info.value, ExecutorShutdown)
    later = dispatcher.submit(task("t3", ResourceSpec(ranks=1), "later"), b"")
    assert later.done(), "a broken dispatcher fails new tasks at once"
    with pytest.raises(ExecutorBroken, match="dispatcher loop failed"):
        later.result()


def test_a_cancelled_waiting_task_never_starts_and_a_cancelled_running_one_is_stopped(dispatcher):
    replacements = []

    def replace(old, new):  # the executor would start a worker like the old one: here an answering rank
        proc = start_rank(dispatcher, new, mode="answer")
        dispatcher.test_ranks.append(proc)
        replacements.append(proc)

    dispatcher.on_replace = replace
    proc = one_rank(dispatcher)
    running = _submit_and_wait_running(proc, dispatcher)
    queued = dispatcher.submit(task("t2", ResourceSpec(ranks=1), "queued"), b"")
    after = dispatcher.submit(task("t3", ResourceSpec(ranks=1), "after"), b"")
    assert queued.cancel()
    dispatcher.cancel("t2")  # as the executor does when its future is cancelled
    _wait_for(lambda: dispatcher.stats()["default"]["queued"] == 1, "t2 to leave the queue")
    assert running.cancel()
    dispatcher.cancel("t1")
    assert expect_line(proc, "CANCEL") == "CANCEL t1"
    # The rank sits on, as a rank that ignores the interrupt: after cancel_grace its worker is replaced,
    # and the replacement runs the task behind, never the withdrawn one.
    assert after.result(timeout=30) == "after"
    assert expect_line(replacements[0], "TASK") == "TASK t3"
    assert queued.cancelled() and running.cancelled()


def test_a_task_that_ends_after_its_future_was_cancelled_breaks_nothing(dispatcher):
    one_rank(dispatcher, mode="answer")
    futs = [dispatcher.submit(task(f"t{i}", ResourceSpec(ranks=1), f"app{i}"), b"") for i in range(20)]
    for fut in futs[::2]:
        fut.cancel()  # the result arrives later, or already came: neither may raise in the loop
    assert [f.result(timeout=10) for f in futs[1::2]] == [f"app{i}" for i in range(1, 20, 2)]
    assert dispatcher.submit(task("later", ResourceSpec(ranks=1), "later"), b"").result(timeout=10) == "later"


def _wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_dispatcher_keeps_the_task_backend_contract(dispatcher):
    from parsl_rcylon.runtime.attach.client import AttachedPilot
    from parsl_rcylon.runtime.client.backend import TaskBackend

    assert isinstance(dispatcher, TaskBackend)
    for name in ("submit", "cancel", "stats", "stop"):
        assert callable(getattr(AttachedPilot, name)), name
