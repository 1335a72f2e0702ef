"""Fault injection on a real pilot: every fault fails its task cleanly and quickly, and the run goes on.

Faults are real: ranks really raise inside MPI collectives, really exit, segfault or get SIGKILLed,
tasks really overrun their walltime.  After each one the next task must run (on a replacement worker
where the old one could not be saved).
"""
from __future__ import annotations

import glob
import os
import signal
import time
from pathlib import Path

import parsl
import pytest
from parsl import bash_app, python_app

from parsl_rcylon import RadicalCylonExecutor, TaskTimeout, WorkerLost, cylon_app
from parsl_rcylon.runtime.agent.host import beat_root

from .conftest import wait_for_no_processes

pytestmark = pytest.mark.integration

#: Seconds from a fault to its task's failure that the issue sets as the target (exceptions, hard exits).
DETECTION_TARGET = 5.0


class InjectedFault(Exception):
    """The exception the tests raise on purpose."""


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A pilot of its own (4 ranks, 2 s grace) whose workers these tests break, driven without Parsl's DFK
    (one is loaded for the session already): ``run(app, *args, **spec)`` submits straight to it."""
    ex = RadicalCylonExecutor(label="faults", worker_ranks=4, cancel_grace=2.0, heartbeat_period=1.0)
    ex.run_dir = str(tmp_path_factory.mktemp("faults"))
    # What a writer killed in an earlier run left (another host's, untouched for two days): start() removes it.
    stale = Path(ex.run_dir) / "faults" / "data" / "dead-writer"
    stale.mkdir(parents=True)
    (stale / ".writer.1234.5678@elsewhere+1").write_text("")
    (stale / "part-00000-of-00002.parquet").write_text("x")
    then = time.time() - 2 * 86400
    for p in [stale, *stale.iterdir()]:
        os.utime(p, (then, then))
    ex.start()
    assert not stale.exists(), "start() leaves what dead writers left"
    sid = ex.session_id
    try:
        yield ex
    finally:
        ex.shutdown()
    assert wait_for_no_processes(sid, timeout=15) == []


def run(ex, app, *args, **spec):
    """Submit ``app`` to ``ex`` as Parsl would, with the app's resource specification (and ``spec``)."""
    return ex.submit(app.func, {**app.spec.as_dict(), **spec}, *args)


@cylon_app(ranks=2)
def raise_in_collective(ctx, where: str):
    import numpy as np

    if ctx.rank == 1:
        raise InjectedFault(f"rank 1 failed before {where}")
    if where == "Barrier":
        ctx.comm.Barrier()
    elif where == "allgather":
        ctx.comm.allgather(ctx.rank)
    elif where == "Alltoallv":
        send = np.zeros(ctx.size, dtype=np.int64)
        recv = np.zeros(ctx.size, dtype=np.int64)
        counts = [1] * ctx.size
        ctx.comm.Alltoallv([send, counts], [recv, counts])
    return "unreachable"


@cylon_app(ranks=2)
def healthy(ctx):
    return ctx.comm.allreduce(ctx.rank + 1)


@cylon_app(ranks=2)
def bad_join(ctx):
    import pyarrow as pa

    left = pa.table({"k": [1, 2], "v": [1.0, 2.0]})
    right = pa.table({"k" if ctx.rank == 0 else "key": [1, 2], "w": [3.0, 4.0]})
    return ctx.join(left, right, on="k")


@cylon_app(ranks=2)
def hard_exit(ctx, how: str, marker: str):
    import ctypes
    import os
    import signal
    import time

    ctx.comm.Barrier()
    if ctx.rank == 1:
        with open(marker, "w") as f:
            f.write(f"{os.getpid()} {time.time()}")
        if how == "exit":
            os._exit(9)
        elif how == "segfault":
            ctypes.string_at(0)
        elif how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            time.sleep(300)  # the test kills it from outside
    ctx.comm.Barrier()
    return "unreachable"


@cylon_app(ranks=1, walltime=2)
def overrun(ctx, seconds):
    import time

    time.sleep(seconds)
    return "unreachable"


@cylon_app(ranks=2, walltime=2)
def overrun_in_barrier(ctx):
    import time

    if ctx.rank == 1:
        time.sleep(120)
    ctx.comm.Barrier()
    return "unreachable"


def _fault_time(marker: Path) -> float:
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return float(marker.read_text().split()[1])


def _workers(ex) -> int:
    return sum(v["ranks"] for v in ex.status().values())


def _recovered(ex, timeout=90.0) -> float:
    """Seconds until every rank is live and idle again (stuck ones released or replaced) and a healthy 2-rank
    task has run: the next test must not meet this one's replacement."""
    t0 = time.monotonic()
    while ex.status().get("default", {}).get("idle") != 4:
        assert time.monotonic() - t0 < timeout, f"the pool did not recover: {ex.status()}"
        time.sleep(0.05)
    assert run(ex, healthy).result(timeout=timeout) == 3
    return time.monotonic() - t0


def _worker_uids(ex) -> set:
    """The uids of the workers whose ranks the executor's dispatcher knows now."""
    return {uid for uid, _ in ex._own.dispatcher._ranks.workers()}


@pytest.mark.parametrize("where", ["Barrier", "allgather", "Alltoallv"])
def test_an_exception_while_the_other_rank_is_in_a_collective(faulty, where):
    t0 = time.time()
    fut = run(faulty, raise_in_collective, where)
    with pytest.raises(InjectedFault, match=f"rank 1 failed before {where}") as info:
        fut.result(timeout=60)
    assert info.value.rank == 1
    assert "raise_in_collective" in "".join(__import__("traceback").format_exception(info.value))
    print(f"{where}: failed {time.time() - t0:.2f} s after submission")
    # rank 0 never leaves the collective: its worker is replaced, and the run goes on
    print(f"{where}: next task ran {_recovered(faulty):.1f} s later")


def test_an_engine_error_fails_on_every_rank_and_keeps_the_worker(faulty):
    before = _worker_uids(faulty)  # the workers now
    from parsl_rcylon.engine import MissingColumnError

    with pytest.raises(MissingColumnError, match="'k'"):
        run(faulty, bad_join).result(timeout=60)
    assert _recovered(faulty) < 30
    assert _worker_uids(faulty) == before, "an error every rank reported needs no new worker"


def test_liveness_goes_by_host_on_the_real_ranks(faulty):
    """The worker's four ranks share this host: rank 0 leads, the one rank the executor heartbeats; the
    others give signs of life in a private directory it made, and stay up though they never hear from the
    executor (tests/runtime/test_hosts.py breaks ranks of fake hosts, whose PIDs the executor cannot see)."""
    d = faulty._own.dispatcher
    time.sleep(2.5)  # heartbeat periods (1 s here) that ranks 1-3 were never sent
    with d._lock:
        [(uid, ranks)] = list(d._ranks.workers())
        assert sorted(d._ranks.leaders(uid)) == [0] and {e.leader for e in ranks.values()} == {0}
        leader_pid = ranks[0].pid
    [beats] = glob.glob(os.path.join(beat_root(), f"rcylon-host-{leader_pid}-*"))
    assert os.stat(beats).st_mode & 0o777 == 0o700
    fresh = {name: time.time() - os.stat(os.path.join(beats, name)).st_mtime for name in os.listdir(beats)}
    assert sorted(fresh) == ["0", "1", "2", "3"] and max(fresh.values()) < 2.0, fresh
    assert _recovered(faulty) < 30  # a 2-rank task runs on them


@pytest.mark.parametrize("how", ["exit", "segfault", "sigkill", "external-sigkill"])
def test_a_rank_that_dies_fails_its_task_with_worker_lost(faulty, tmp_path, how):
    marker = tmp_path / "fault"
    fut = run(faulty, hard_exit, how, str(marker))
    fault_at = _fault_time(marker)
    pid = int(marker.read_text().split()[0])
    if how == "external-sigkill":  # as the OOM killer would
        os.kill(pid, signal.SIGKILL)
        fault_at = time.time()
    with pytest.raises(WorkerLost, match=rf"rank 1 \(pid {pid} on .*\) exited|lost its worker") as info:
        fut.result(timeout=60)
    detected = time.time() - fault_at
    print(f"{how}: detected in {detected:.2f} s: {info.value}")
    assert detected < DETECTION_TARGET * 3  # the target is 5 s; leave room for a loaded CI machine
    print(f"{how}: next task ran {_recovered(faulty):.1f} s later")


def test_a_one_rank_task_past_its_walltime_is_stopped_and_its_rank_freed(faulty):
    before = _worker_uids(faulty)
    t0 = time.monotonic()
    with pytest.raises(TaskTimeout, match=r"overrun\) ran longer than its walltime of 2 s"):
        run(faulty, overrun, 600).result(timeout=60)
    assert 1.5 < time.monotonic() - t0 < 15
    assert _recovered(faulty) < 30
    assert _worker_uids(faulty) == before, "an interrupted sleep frees its rank: no new worker"


def test_a_task_stuck_in_a_collective_past_its_walltime_gets_a_new_worker(faulty):
    with pytest.raises(TaskTimeout, match="walltime of 2 s"):
        run(faulty, overrun_in_barrier).result(timeout=60)
    _recovered(faulty)


def test_walltime_never_reaches_the_function_and_the_resource_key_works(faulty):
    with pytest.raises(TaskTimeout):
        run(faulty, overrun, 600, walltime=1).result(timeout=60)
    assert run(faulty, overrun, 0).result(timeout=60) == "unreachable"  # walltime=2 was no argument


@cylon_app(ranks=2)
def flaky_table(ctx, counter: str):
    import os

    import pyarrow as pa

    if ctx.rank == 1:
        tries = int(open(counter).read()) if os.path.exists(counter) else 0
        with open(counter, "w") as f:
            f.write(str(tries + 1))
        if tries < 2:
            raise InjectedFault(f"try {tries + 1} fails")
    return pa.table({"v": list(range(ctx.rank * 10, ctx.rank * 10 + 10))})


@python_app
def flaky_python(counter):
    import os

    tries = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as f:
        f.write(str(tries + 1))
    if tries < 2:
        raise ValueError(f"try {tries + 1} fails")
    return tries + 1


@bash_app
def flaky_bash(counter):
    return f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ $n -ge 2 ]"


@pytest.fixture
def retries():
    """Parsl's ``retries=2`` for one test (the DFK reads it at every failure)."""
    config = parsl.dfk().config
    config.retries = 2
    try:
        yield
    finally:
        config.retries = 0


def test_retries_for_cylon_python_and_bash_apps(rcylon, retries, tmp_path):
    ref = flaky_table(str(tmp_path / "cylon")).result(timeout=180)
    assert ref.num_rows == 20 and sorted(ref.read()["v"].to_pylist()) == list(range(20))
    # the failed tries committed nothing: the only table of this app is the one returned
    data = Path(ref.path).parent
    assert [p.name for p in data.iterdir() if p.name.startswith("flaky_table")] == [Path(ref.path).name]
    assert flaky_python(str(tmp_path / "python")).result(timeout=120) == 3
    assert flaky_bash(str(tmp_path / "bash")).result(timeout=120) == 0
    assert (tmp_path / "bash").read_text().strip() == "3"
