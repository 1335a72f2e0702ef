"""Pilots on the 2-node Slurm test cluster that end or launch differently: each test has its own sbatch job.

SRUN as launch method; faults a batch system brings: the pilot's job
cancelled (``scancel``), a node lost while tasks run, and the job reaching
its time limit.
"""
from __future__ import annotations

import subprocess
import time

import pytest
from parsl import python_app

from parsl_rcylon import ExecutorBroken, PilotLost, WorkerLost, WorkerPool, cylon_app
from parsl_rcylon.runtime.client import slurmjobs

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


@cylon_app
def where(ctx):
    import socket

    return {"hosts": ctx.comm.allgather(socket.gethostname()), "sum": ctx.comm.allreduce(ctx.rank + 1),
            "size": ctx.size}


@cylon_app
def hold(ctx, seconds: float):
    import time

    time.sleep(seconds)
    return ctx.rank


@python_app
def host_after(seconds: float) -> str:
    import socket
    import time

    time.sleep(seconds)
    return socket.gethostname()


def _pair() -> WorkerPool:
    return WorkerPool(name="pair", ranks=2, ranks_per_node=1)


def test_srun_launch_method_runs_ranks_on_two_hosts(slurm_cluster, tmp_path):
    ex, dfk = slurm_cluster.load(tmp_path, "SRUN", _pair(), "srun")
    try:
        out = where(parsl_resource_specification={"ranks": 2}).result(timeout=120)
        assert sorted(out["hosts"]) == ["n1", "n2"] and out["sum"] == 3 and out["size"] == 2, out
    finally:
        slurm_cluster.close(ex, dfk)


def test_scancel_of_the_pilot_job_fails_pending_tasks_with_pilot_lost_within_5_s(slurm_cluster, tmp_path):
    ex, dfk = slurm_cluster.load(tmp_path, "MPIEXEC", _pair(), "cancelled")
    try:
        running = hold(600, parsl_resource_specification={"ranks": 2})
        deadline = time.monotonic() + 60
        while ex.status()["pair"]["running"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        pending = [where(parsl_resource_specification={"ranks": 2}) for _ in range(3)]
        time.sleep(1)
        assert not any(f.done() for f in pending)
        job = slurm_cluster.pilot_job(ex)
        t0 = time.monotonic()
        subprocess.run(["scancel", job["id"]], check=True)
        for fut in pending:
            # The executor is broken: no pilot is left; why is the PilotLost it carries.
            with pytest.raises(ExecutorBroken, match=f"Slurm job {job['id']} was cancelled") as info:
                fut.result(timeout=30)
            assert isinstance(info.value.__cause__, PilotLost)
        elapsed = time.monotonic() - t0
        assert elapsed < 5, f"pending tasks failed {elapsed:.1f} s after scancel"
        with pytest.raises((ExecutorBroken, WorkerLost)):
            running.result(timeout=30)
    finally:
        slurm_cluster.close(ex, dfk)


def test_when_radical_pilot_hears_of_the_cancelled_job_first_the_error_still_gives_slurms_reason(
        slurm_cluster, tmp_path, monkeypatch):
    # The watch learns the job's id but its report of the end goes nowhere: RP's own state callback (the
    # agent's last word, at once, as in one CI run; or PSI/J's polling, after Slurm forgot the job) fails the
    # tasks, and must still say what Slurm said.
    monkeypatch.setattr(slurmjobs.SlurmJobWatch, "__init__", _no_reports(slurmjobs.SlurmJobWatch.__init__))
    ex, dfk = slurm_cluster.load(tmp_path, "MPIEXEC", _pair(), "rpfirst")
    try:
        pending = [where(parsl_resource_specification={"ranks": 2}) for _ in range(2)]
        job = slurm_cluster.pilot_job(ex)
        subprocess.run(["scancel", job["id"]], check=True)
        for fut in pending:
            with pytest.raises(ExecutorBroken, match=f"Slurm job {job['id']} was cancelled \\(scancel\\)"):
                fut.result(timeout=120)
    finally:
        slurm_cluster.close(ex, dfk)


def _no_reports(init):
    def wrapped(watch, sandboxes, on_end, period=1.0):
        init(watch, sandboxes, lambda name, why: None, period)
    return wrapped


# About 70 s here; the bound is the sum of its own deadlines (start, results, the node's job ending, set-up again).
@pytest.mark.timeout(900)
def test_a_lost_node_fails_its_tasks_with_worker_lost_naming_it_and_the_pool_goes_on(slurm_cluster, tmp_path):
    # Two 1-rank workers of 2 cores: the master's core and one worker on one node, the other worker alone.
    pool = WorkerPool(name="each", ranks=1, workers=2, cores_per_rank=2)
    ex, dfk = slurm_cluster.load(tmp_path, "MPIEXEC", pool, "nodelost")
    try:
        # The task on n1 outlasts SlurmdTimeout (30 s): Slurm declares n2 down while it runs, and the job,
        # submitted with --no-kill (SBATCH_NO_KILL, which the executor sets for Slurm pilots), goes on with n1.
        first = [host_after(45) for _ in range(2)]
        deadline = time.monotonic() + 60
        while ex.status()["each"]["running"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = slurm_cluster.lose_node("n2")
        assert killed
        outcomes = []
        for fut in first:
            try:
                outcomes.append(("done", fut.result(timeout=180)))
            except WorkerLost as exc:
                outcomes.append(("lost", str(exc)))
        lost = [text for kind, text in outcomes if kind == "lost"]
        assert len(lost) == 1 and "n2" in lost[0], outcomes  # the task on n2, naming the host
        assert [text for kind, text in outcomes if kind == "done"] == ["n1"], outcomes
        assert host_after(0).result(timeout=120) == "n1", "the pool goes on after Slurm declared n2 down"
    finally:
        slurm_cluster.close(ex, dfk, job_timeout=90)
        slurm_cluster.setup()  # the whole cluster afresh for the tests after


# About 90 s here (a 1-minute job limit and Slurm's 30 s sweep); above its start, result and shutdown deadlines.
@pytest.mark.timeout(600)
def test_a_pilot_job_that_reaches_its_time_limit_fails_tasks_with_a_clear_error(slurm_cluster, tmp_path):
    ex, dfk = slurm_cluster.load(tmp_path, "MPIEXEC", _pair(), "timelimit", runtime=1)
    try:
        t0 = time.monotonic()
        running = hold(600, parsl_resource_specification={"ranks": 2})
        # Slurm ends a job past its limit within its 30 s timer sweep plus KillWait.
        with pytest.raises((ExecutorBroken, WorkerLost), match="reached its time limit") as info:
            running.result(timeout=180)
        assert time.monotonic() - t0 < 150
        with pytest.raises(ExecutorBroken, match="reached its time limit") as info:
            where(parsl_resource_specification={"ranks": 2}).result(timeout=10)
        assert isinstance(info.value.__cause__, PilotLost)
    finally:
        slurm_cluster.close(ex, dfk)
