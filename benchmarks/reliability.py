"""Reliability: for each kind of fault, how long until the task fails, and until the run goes on.

Every fault is injected for real on a local pilot (a rank raising while its peers wait in a collective,
a rank exiting, segfaulting or SIGKILLed, a task overrunning its walltime), ``--repeat`` times each.
Detection is from the moment of the fault (written by the faulting rank, or when the test sends the
signal, or the end of the walltime) to the moment the task's future fails; recovery is from then to the
moment the pool has all its ranks live and idle again (a replacement worker ready, where one was
needed) and a healthy 2-rank task has run.

    python benchmarks/reliability.py --out benchmarks/results [--repeat 5]

Writes ``reliability.json`` and ``reliability.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from parsl_rcylon import RadicalCylonExecutor, cylon_app


class InjectedFault(Exception):
    """The exception injected on purpose."""


@cylon_app(ranks=2)
def healthy(ctx):
    return ctx.comm.allreduce(ctx.rank + 1)


@cylon_app(ranks=2)
def faulty(ctx, how: str, marker: str):
    import ctypes
    import os
    import signal
    import time

    import numpy as np

    ctx.comm.Barrier()
    if ctx.rank == 1:
        with open(marker, "w") as f:
            f.write(f"{os.getpid()} {time.time()}")
        if how.startswith("raise"):
            raise InjectedFault(how)
        if how == "exit":
            os._exit(9)
        if how == "segfault":
            ctypes.string_at(0)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(300)  # external-sigkill: killed from outside
    if how == "raise-barrier":
        ctx.comm.Barrier()
    elif how == "raise-allgather":
        ctx.comm.allgather(ctx.rank)
    elif how == "raise-alltoallv":
        buf = np.zeros(ctx.size, dtype=np.int64)
        ctx.comm.Alltoallv([buf, [1] * ctx.size], [buf.copy(), [1] * ctx.size])
    time.sleep(300)


@cylon_app(ranks=1)
def sleeper(ctx, seconds):
    import time

    time.sleep(seconds)


FAULTS = ["raise-barrier", "raise-allgather", "raise-alltoallv", "exit", "segfault", "sigkill", "external-sigkill",
          "walltime-1rank"]
WHAT_THE_USER_SEES = {
    "raise-barrier": "the original exception (type, message, traceback, rank)",
    "raise-allgather": "the original exception (type, message, traceback, rank)",
    "raise-alltoallv": "the original exception (type, message, traceback, rank)",
    "exit": "WorkerLost naming worker, rank, PID, host and the launcher's output",
    "segfault": "WorkerLost naming worker, rank, PID, host and the launcher's output",
    "sigkill": "WorkerLost naming worker, rank, PID, host and the launcher's output",
    "external-sigkill": "WorkerLost naming worker, rank, PID, host and the launcher's output",
    "walltime-1rank": "TaskTimeout naming the app and its walltime",
}


def _submit(ex, app, *args, **spec):
    return ex.submit(app.func, {**app.spec.as_dict(), **spec}, *args)


def _wait_marker(marker: Path) -> tuple:
    deadline = time.monotonic() + 120
    while not marker.exists() or not marker.read_text().strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fault never happened ({marker})")
        time.sleep(0.01)
    pid, at = marker.read_text().split()
    return int(pid), float(at)


def _wait_whole(ex, ranks: int = 4, timeout: float = 180.0) -> None:
    """Until every rank of the pool is live and idle (stuck ranks released or their worker replaced)."""
    deadline = time.monotonic() + timeout
    while True:
        view = ex.status().get("default", {})
        if view.get("ranks") == ranks and view.get("idle") == ranks:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the pool did not recover: {view}")
        time.sleep(0.02)


def one(ex, how: str, tmp: Path, i: int) -> dict:
    restarts_before = sum(v.get("restarts", 0) for v in ex.status().values())
    if how == "walltime-1rank":
        t_submit = time.time()
        fut = _submit(ex, sleeper, 300, walltime=2)
        try:
            fut.result(timeout=120)
        except Exception as err:  # noqa: BLE001 - the fault is what we wait for
            failed_at, error = time.time(), err
        fault_at = t_submit + 2.0  # the walltime's end (the task starts within ms of submission)
    else:
        marker = tmp / f"{how}-{i}"
        fut = _submit(ex, faulty, how, str(marker))
        pid, fault_at = _wait_marker(marker)
        if how == "external-sigkill":
            os.kill(pid, signal.SIGKILL)
            fault_at = time.time()
        try:
            fut.result(timeout=120)
        except Exception as err:  # noqa: BLE001
            failed_at, error = time.time(), err
    t = time.time()
    _wait_whole(ex)
    assert _submit(ex, healthy).result(timeout=180) == 3
    recovered_at = time.time()
    restarts = sum(v.get("restarts", 0) for v in ex.status().values()) - restarts_before
    return {"fault": how, "error": type(error).__name__, "detection_s": failed_at - fault_at,
            "recovery_s": recovered_at - t, "worker_replaced": restarts > 0}


def summarize(rows: list) -> dict:
    out = {}
    for how in FAULTS:
        mine = [r for r in rows if r["fault"] == how]
        if not mine:
            continue
        det = [r["detection_s"] for r in mine]
        rec = [r["recovery_s"] for r in mine]
        out[how] = {"runs": len(mine), "errors": sorted({r["error"] for r in mine}),
                    "detection_median_s": statistics.median(det), "detection_worst_s": max(det),
                    "recovery_median_s": statistics.median(rec), "recovery_worst_s": max(rec),
                    "worker_replaced": sum(r["worker_replaced"] for r in mine)}
    return out


def markdown(summary: dict) -> str:
    lines = ["| fault | what the user sees | detection median / worst (s) | recovery median / worst (s) | "
             "worker replaced | lost |", "|---|---|---|---|---|---|"]
    for how, s in summary.items():
        lines.append(f"| {how} | {WHAT_THE_USER_SEES[how]} | {s['detection_median_s']:.2f} / "
                     f"{s['detection_worst_s']:.2f} | {s['recovery_median_s']:.1f} / {s['recovery_worst_s']:.1f} | "
                     f"{s['worker_replaced']} of {s['runs']} | the task's try; nothing committed |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ex = RadicalCylonExecutor(label="reliability", worker_ranks=4)  # default liveness settings
        ex.run_dir = tmp
        ex.start()
        try:
            _submit(ex, healthy).result(timeout=120)
            for i in range(args.repeat):
                for how in FAULTS:
                    row = one(ex, how, Path(tmp), i)
                    print(f"[reliability] {i + 1}/{args.repeat} {how}: detected {row['detection_s']:.2f} s, "
                          f"recovered {row['recovery_s']:.1f} s", flush=True)
                    rows.append(row)
        finally:
            ex.shutdown()
    summary = summarize(rows)
    result = {"benchmark": "reliability", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "loadavg": os.getloadavg(),
              "settings": {"heartbeat_period": ex.heartbeat_period, "cancel_grace": ex.cancel_grace},
              "summary": summary, "runs": rows}
    (out / "reliability.json").write_text(json.dumps(result, indent=2))
    (out / "reliability.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
