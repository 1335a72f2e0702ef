"""Liveness by host: the dispatcher heartbeats one leader rank per worker per host, and the leader, with
the real :mod:`parsl_rcylon.runtime.agent.host`, watches the host's other ranks.  Real rank processes
(tests/runtime/fake_rank.py in its host mode) on hosts named as other hosts, so the dispatcher cannot see
their PIDs and knows of their ends only as on a cluster: through the leaders, or a leader's silence."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from parsl_rcylon.errors import WorkerLost
from parsl_rcylon.resources import ResourceSpec
from parsl_rcylon.runtime.agent.host import beat_dir, beat_root
from parsl_rcylon.runtime.client.dispatcher import Dispatcher
from parsl_rcylon.runtime.wire.channel import ENV_CHANNEL
from tests.runtime.test_dispatcher import FAKE_RANK, expect_line, task


@pytest.fixture
def dispatcher(request, tmp_path):
    d = Dispatcher(tmp_path, heartbeat_period=0.5, rank_timeout=getattr(request, "param", 120.0),
                   cancel_grace=1.0)
    d.start()
    d.test_ranks = []  # type: ignore[attr-defined]
    dirs = []
    d.beat_dir = lambda: dirs.append(beat_dir()) or dirs[-1]  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        for proc in d.test_ranks:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()
        d.stop()
        for path in dirs:
            subprocess.run(["rm", "-rf", path], check=False)


def start_host(dispatcher, hosts, worker="w", mode="sit"):
    """Ranks of one worker on fake hosts: ``hosts`` maps a host name to its ranks; returns rank -> process."""
    size = sum(len(r) for r in hosts.values())
    dispatcher.expect_worker(worker, size=size)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **{ENV_CHANNEL: dispatcher.channel_file})
    procs = {}
    for host, ranks in hosts.items():
        where = dispatcher.beat_dir()
        for r in ranks:
            procs[r] = subprocess.Popen(
                [sys.executable, FAKE_RANK, dispatcher.address, worker, str(r), str(size), mode, where,
                 ",".join(map(str, ranks)), host], stdout=subprocess.PIPE, text=True, env=env)
            dispatcher.test_ranks.append(procs[r])
    dispatcher.wait_ready(30, lambda: None)
    return procs


def run_sitting(dispatcher, procs, ranks):
    fut = dispatcher.submit(task("t1", ResourceSpec(ranks=ranks), "stuck"), b"payload")
    for r in range(ranks):
        assert expect_line(procs[r], "TASK") == "TASK t1"
    return fut


def test_a_followers_exit_is_reported_by_its_leader(dispatcher):
    procs = start_host(dispatcher, {"node-a": [0, 1, 2]})
    fut = run_sitting(dispatcher, procs, 3)
    procs[2].kill()
    procs[2].wait()
    with pytest.raises(WorkerLost, match=rf"lost its worker w: rank 2 \(pid {procs[2].pid} on node-a\) exited "
                                         r"\(reported by rank 0, its host's leader\)"):
        fut.result(timeout=5)
    assert expect_line(procs[0], "LOST") == "LOST 2"


def test_a_leaders_exit_fails_the_hosts_tasks_and_its_followers_leave(dispatcher):
    procs = start_host(dispatcher, {"node-a": [0, 1], "node-b": [2, 3]})
    fut = run_sitting(dispatcher, procs, 4)
    procs[2].kill()
    procs[2].wait()
    assert procs[3].wait(timeout=5) == 3  # the other rank of that host leaves within a second or so
    with pytest.raises(WorkerLost, match=rf"rank 2 \(pid {procs[2].pid} on node-b\) exited "
                                         r"\(reported by rank 3, a rank it leads\)"):
        fut.result(timeout=5)
    assert procs[1].poll() is None  # node-a's follower stays while its own leader does


@pytest.mark.parametrize("dispatcher", [2.0], indirect=True)
def test_a_silent_follower_is_reported_after_rank_timeout(dispatcher):
    procs = start_host(dispatcher, {"node-a": [0, 1]})
    fut = run_sitting(dispatcher, procs, 2)
    procs[1].send_signal(signal.SIGSTOP)  # alive, but its I/O thread gives no sign
    t0 = time.monotonic()
    try:
        with pytest.raises(WorkerLost, match=r"rank 1 \(pid \d+ on node-a\) has not answered for \d+ s "
                                             r"\(reported by rank 0, its host's leader\)"):
            fut.result(timeout=15)
        assert time.monotonic() - t0 >= 2.0
    finally:
        procs[1].send_signal(signal.SIGCONT)


@pytest.mark.parametrize("dispatcher", [2.0], indirect=True)
def test_followers_get_no_heartbeats_and_live_while_their_leader_answers(dispatcher):
    procs = start_host(dispatcher, {"node-a": [0, 1, 2], "node-b": [3]}, mode="answer")
    time.sleep(4)  # twice rank_timeout: followers never answered the executor, and must not be lost
    fut = dispatcher.submit(task("t1", ResourceSpec(ranks=4), "app"), b"")
    assert fut.result(timeout=10) == "app"
    for r in range(4):  # the first line of every rank: a follower printing HEARTBEAT would fail here
        assert expect_line(procs[r], "TASK") == "TASK t1"


@pytest.mark.parametrize("dispatcher", [2.0], indirect=True)
def test_a_silent_leader_fails_its_worker(dispatcher):
    procs = start_host(dispatcher, {"node-a": [0, 1]})
    fut = run_sitting(dispatcher, procs, 2)
    procs[0].send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(WorkerLost, match=r"rank 0 \(pid \d+ on node-a\) has not answered for \d+ s"):
            fut.result(timeout=15)
    finally:
        procs[0].send_signal(signal.SIGCONT)


def test_a_killed_leaders_directory_is_removed_by_the_next_leader():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tempfile.mkdtemp(prefix=f"rcylon-host-{dead.pid}-", dir=beat_root())
    mine = beat_dir()
    try:
        assert not os.path.exists(left)
        assert os.stat(mine).st_mode & 0o777 == 0o700 and f"rcylon-host-{os.getpid()}-" in mine
    finally:
        os.rmdir(mine)
