"""The dispatcher against real rank processes over ZeroMQ: a rank that dies or goes silent fails its tasks;
shutdown and a broken dispatcher fail tasks with errors of their own."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from parsl_rcylon.errors import ExecutorBroken, ExecutorShutdown, WorkerLost
from parsl_rcylon.resources import ResourceSpec
from parsl_rcylon.runtime.dispatcher import Dispatcher

# A stand-in for one worker rank: the same socket, identity and messages as
# runtime/worker.py, and it sits on the task it gets (as a rank stuck in, or
# killed during, a task would).
RANK = textwrap.dedent("""
    import os, socket, sys, zmq
    from parsl_rcylon.runtime import protocol
    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"w/0")
    sock.connect(sys.argv[1])
    sock.send_multipart(protocol.pack(protocol.READY, {
        "worker": "w", "rank": 0, "size": 1, "pid": os.getpid(), "host": socket.gethostname(),
        "gpus": [], "pool": "default"}))
    while True:
        kind, body = protocol.unpack(sock.recv_multipart())
        if kind == protocol.HEARTBEAT:
            sock.send_multipart(protocol.pack(protocol.ALIVE))
        elif kind == protocol.TASK:
            print("TASK", flush=True)
""")


@pytest.fixture
def rank_and_dispatcher(request):
    dispatcher = Dispatcher(heartbeat_period=0.5, rank_timeout=getattr(request, "param", 120.0))
    dispatcher.expect_worker("w", size=1)
    dispatcher.start()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", RANK, dispatcher.address], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        dispatcher.wait_ready(30, lambda: None)
        yield proc, dispatcher
    finally:
        proc.kill()
        proc.wait()
        dispatcher.stop()


def _submit_and_wait_running(proc, dispatcher):
    fut = dispatcher.submit("t1", ResourceSpec(ranks=1), {"name": "stuck"})
    assert proc.stdout.readline().strip() == "TASK"
    return fut


def test_a_rank_whose_process_exits_fails_its_task(rank_and_dispatcher):
    proc, dispatcher = rank_and_dispatcher
    fut = _submit_and_wait_running(proc, dispatcher)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(WorkerLost, match=rf"lost its worker w: rank 0 \(pid {proc.pid} on .*\) exited"):
        fut.result(timeout=10)
    with pytest.raises(ExecutorBroken, match="no MPI worker is left") as info:
        dispatcher.submit("t2", ResourceSpec(ranks=1), {"name": "later"}).result(timeout=10)
    assert isinstance(info.value.__cause__, WorkerLost)


@pytest.mark.parametrize("rank_and_dispatcher", [2.0], indirect=True)
def test_a_rank_that_stops_answering_fails_its_task(rank_and_dispatcher):
    proc, dispatcher = rank_and_dispatcher
    fut = _submit_and_wait_running(proc, dispatcher)
    proc.send_signal(signal.SIGSTOP)  # alive, but silent
    try:
        with pytest.raises(WorkerLost, match=r"rank 0 \(pid \d+ on .*\) has not answered for \d+ s"):
            fut.result(timeout=20)
    finally:
        proc.send_signal(signal.SIGCONT)


def test_a_busy_rank_that_answers_is_left_alone(rank_and_dispatcher):
    proc, dispatcher = rank_and_dispatcher
    fut = _submit_and_wait_running(proc, dispatcher)
    with pytest.raises(TimeoutError):
        fut.result(timeout=3)  # six heartbeats answered: still running
    assert dispatcher.stats()["default"]["running"] == 1


def test_rank_timeout_is_an_executor_option_and_is_checked():
    from parsl_rcylon import RadicalCylonExecutor

    assert RadicalCylonExecutor(rank_timeout=45.0).rank_timeout == 45.0
    with pytest.raises(ValueError, match="rank_timeout"):
        RadicalCylonExecutor(rank_timeout=1.0, heartbeat_period=2.0)


def test_shutdown_fails_running_and_later_tasks_with_executor_shutdown(rank_and_dispatcher):
    proc, dispatcher = rank_and_dispatcher
    running = _submit_and_wait_running(proc, dispatcher)
    queued = dispatcher.submit("t2", ResourceSpec(ranks=1), {"name": "queued"})
    dispatcher.stop()
    for fut in (running, queued):
        with pytest.raises(ExecutorShutdown, match="shut down before the task finished"):
            fut.result(timeout=10)
    later = dispatcher.submit("t3", ResourceSpec(ranks=1), {"name": "later"})
    assert later.done(), "a stopped dispatcher refuses at once"
    with pytest.raises(ExecutorShutdown):
        later.result()


def test_a_failed_loop_breaks_the_dispatcher_with_its_cause(rank_and_dispatcher):
    import zmq

    proc, dispatcher = rank_and_dispatcher
    running = _submit_and_wait_running(proc, dispatcher)
    queued = dispatcher.submit("t2", ResourceSpec(ranks=1), {"name": "queued"})
    # A one-frame message cannot be decoded: it stands for any bug that ends the loop.
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.connect(dispatcher.address)
    peer.send(b"junk")
    try:
        for fut in (running, queued):
            with pytest.raises(ExecutorBroken, match="dispatcher loop failed") as info:
                fut.result(timeout=10)
            assert isinstance(info.value.__cause__, IndexError)
            assert not isinstance(info.value, ExecutorShutdown)
        later = dispatcher.submit("t3", ResourceSpec(ranks=1), {"name": "later"})
        assert later.done(), "a broken dispatcher fails new tasks at once"
        with pytest.raises(ExecutorBroken, match="dispatcher loop failed"):
            later.result()
    finally:
        peer.close(linger=0)
