"""The soak workload, in a process of its own (the test session has a Parsl DFK loaded already).

    python soak_client.py RUN_DIR TASKS FAULT_RATE

Prints one JSON line: outcomes, wrong results, timings, worker replacements, the client's
descriptors, threads and memory over the run, and the session id.
"""
from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter

import parsl
import psutil

from parsl_rcylon import RadicalCylonExecutor, TaskTimeout, WorkerLost, WorkerPool, cylon_app


class SoakFault(Exception):
    """An exception injected on purpose."""


@cylon_app(ranks=1, walltime=5)
def mixed(ctx, seed: int, fault_rate: float):
    import os  # apps defined in __main__ travel by value, without the module's imports
    import random
    import time

    # The fault is drawn per execution (not per task), so a retry usually succeeds.
    draw = random.Random(int.from_bytes(os.urandom(8), "little"))
    fault = draw.choice(["raise", "exit", "timeout"]) if draw.random() < fault_rate else None
    fault = ctx.comm.bcast(fault, root=0)
    if fault == "raise":
        if ctx.rank == ctx.size - 1:
            raise SoakFault(f"injected on rank {ctx.rank} of task {ctx.task_id}")
        ctx.comm.Barrier()  # the others wait for it in a collective
    elif fault == "exit" and ctx.rank == ctx.size - 1:
        os._exit(7)
    elif fault == "timeout":
        time.sleep(60)
    values = ctx.comm.allgather(seed * 1000 + ctx.rank)
    return sum(values)


def expected(seed: int, ranks: int) -> int:
    return sum(seed * 1000 + r for r in range(ranks))


def usage() -> dict:
    me = psutil.Process()
    return {"fds": me.num_fds(), "threads": threading.active_count(), "rss_mb": round(me.memory_info().rss / 2**20, 1)}


def main(run_dir: str, tasks: int, fault_rate: float) -> dict:
    pools = [WorkerPool(name="default", ranks=4, workers=2)]
    ex = RadicalCylonExecutor(label="soak", pools=pools, cancel_grace=2.0, heartbeat_period=1.0)
    config = parsl.Config(executors=[ex], run_dir=run_dir, strategy="none", retries=2, initialize_logging=False)
    rng = random.Random(20261202)
    plan = [(i, rng.choice([1, 1, 2, 2, 3, 4])) for i in range(tasks)]
    samples = []
    outcomes: Counter = Counter()
    wrong = []
    t0 = time.monotonic()
    with parsl.load(config):
        sid = ex.session_id
        started = time.monotonic()
        futs = [mixed(seed, fault_rate, parsl_resource_specification={"ranks": ranks}) for seed, ranks in plan]
        samples.append(usage())
        for n, ((seed, ranks), fut) in enumerate(zip(plan, futs, strict=True), start=1):
            try:
                value = fut.result(timeout=1800)
            except (SoakFault, WorkerLost, TaskTimeout) as err:  # all three tries drew a fault
                outcomes[type(err).__name__] += 1
            else:
                outcomes["ok"] += 1
                if value != expected(seed, ranks):
                    wrong.append([seed, ranks, value])
            if n % max(1, tasks // 10) == 0:
                samples.append(usage())
                print(f"[soak] {n}/{tasks} done, {dict(outcomes)}", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - started
        executions = sum(f.task_record["try_id"] + 1 for f in futs)
        restarts = sum(v.get("restarts", 0) for v in ex.status().values())
    return {"session": sid, "tasks": tasks, "fault_rate": fault_rate, "executions": executions,
            "outcomes": dict(outcomes), "wrong": wrong, "seconds": round(elapsed, 1),
            "tasks_per_s": round(tasks / elapsed, 2), "worker_replacements": restarts, "client_usage": samples,
            "total_seconds": round(time.monotonic() - t0, 1)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))), flush=True)
