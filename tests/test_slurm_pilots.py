"""Pilots on the 2-node Slurm test cluster that end or launch differently: each test has its own sbatch job.

SRUN as launch method; faults a batch system brings: the pilot's job
cancelled (``scancel``) and the job reaching its time limit.
"""
from __future__ import annotations

import subprocess
import time

import pytest

from parsl_rcylon import PilotLost, WorkerLost, WorkerPool, cylon_app

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
            with pytest.raises(PilotLost, match=f"Slurm job {job['id']} was cancelled"):
                fut.result(timeout=30)
        elapsed = time.monotonic() - t0
        assert elapsed < 5, f"pending tasks failed {elapsed:.1f} s after scancel"
        with pytest.raises((PilotLost, WorkerLost)):
            running.result(timeout=30)
    finally:
        slurm_cluster.close(ex, dfk)


def test_a_pilot_job_that_reaches_its_time_limit_fails_tasks_with_a_clear_error(slurm_cluster, tmp_path):
    ex, dfk = slurm_cluster.load(tmp_path, "MPIEXEC", _pair(), "timelimit", runtime=1)
    try:
        t0 = time.monotonic()
        running = hold(600, parsl_resource_specification={"ranks": 2})
        # Slurm ends a job past its limit within its 30 s timer sweep plus KillWait.
        with pytest.raises(PilotLost, match="reached its time limit"):
            running.result(timeout=180)
        assert time.monotonic() - t0 < 150
        with pytest.raises(PilotLost):
            where(parsl_resource_specification={"ranks": 2}).result(timeout=10)
    finally:
        slurm_cluster.close(ex, dfk)
