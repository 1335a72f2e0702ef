"""Executor overhead: start-up, task latency against a fresh mpiexec, throughput, shutdown.

Everything is measured side by side in one run on this machine and reported
as medians; the mpiexec baseline launches are interleaved with the executor's
calls so that both see the same background load.  With ``--encryption both``
(the default) the cycles alternate between the authenticated, encrypted
channel (the default) and ``encrypted=False``, so the cost of CurveZMQ is
measured side by side too.

    python benchmarks/overhead.py --out benchmarks/results [--cycles 2] [--calls 50] [--encryption both]

Writes ``overhead.json`` and ``overhead.png`` into ``--out``; the top-level
``summary`` is the default (encrypted) configuration's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import parsl
from parsl import python_app

from parsl_rcylon import RadicalCylonExecutor, cylon_app

TARGETS = {"latency_ratio_max": 0.1, "throughput_min_per_s": 500.0, "shutdown_max_s": 5.0}

BASELINE = """
from mpi4py import MPI
import pyarrow
comm = MPI.COMM_WORLD
assert comm.allreduce(1) == comm.size
"""


@cylon_app(ranks=2)
def trivial_mpi(ctx):
    return ctx.comm.allreduce(1)


@python_app
def trivial(i):
    return i


def _mpiexec_once(script: str) -> float:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    t0 = time.perf_counter()
    subprocess.run([str(mpiexec), "-n", "2", sys.executable, script], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _progress(msg: str) -> None:
    print(f"[overhead] {msg}", flush=True)


def run_cycle(run_dir: str, calls: int, throughput_tasks: int, baseline_script: str, measure_tasks: bool,
              encrypted: bool = True) -> dict:
    out: dict = {"encrypted": encrypted}
    t0 = time.perf_counter()
    ex = RadicalCylonExecutor(label="bench", encrypted=encrypted)
    dfk = parsl.load(parsl.Config(executors=[ex], run_dir=run_dir, strategy="none", initialize_logging=False))
    out["load_s"] = time.perf_counter() - t0
    try:
        assert trivial_mpi().result() == 2
        out["first_result_s"] = time.perf_counter() - t0
        out["breakdown_s"] = {k: ex.timings[k] for k in ("session", "managers", "pilot", "workers") if k in ex.timings}
        if measure_tasks:
            lat, base = [], []
            for i in range(calls):
                t = time.perf_counter()
                trivial_mpi().result()
                lat.append(time.perf_counter() - t)
                if i % max(1, calls // 10) == 0:  # interleave the baseline launches
                    base.append(_mpiexec_once(baseline_script))
            out["latency_s"] = lat
            out["mpiexec_s"] = base
            _progress(f"2-rank latency median {statistics.median(lat) * 1e3:.1f} ms, "
                      f"mpiexec -n 2 median {statistics.median(base) * 1e3:.0f} ms")
            rates = []
            for _ in range(3):
                t = time.perf_counter()
                futs = [trivial(i) for i in range(throughput_tasks)]
                assert [f.result() for f in futs] == list(range(throughput_tasks))
                rates.append(throughput_tasks / (time.perf_counter() - t))
            out["throughput_per_s"] = rates
            _progress(f"throughput median {statistics.median(rates):.0f} tasks/s")
    finally:
        t = time.perf_counter()
        dfk.cleanup()
        parsl.clear()
        out["cleanup_s"] = time.perf_counter() - t
        out["shutdown_s"] = ex.timings.get("shutdown")
    _progress(f"cycle: first result {out['first_result_s']:.1f} s, shutdown {out['shutdown_s']:.1f} s")
    return out


def summarize(cycles: list) -> dict:
    med = statistics.median
    measured = [c for c in cycles if "latency_s" in c]
    lat = med([x for c in measured for x in c["latency_s"]])
    base = med([x for c in measured for x in c["mpiexec_s"]])
    summary = {
        "first_result_s": med([c["first_result_s"] for c in cycles]),
        "session_s": med([c["breakdown_s"].get("session", float("nan")) for c in cycles]),
        "managers_s": med([c["breakdown_s"].get("managers", float("nan")) for c in cycles]),
        "pilot_s": med([c["breakdown_s"].get("pilot", float("nan")) for c in cycles]),
        "workers_s": med([c["breakdown_s"].get("workers", float("nan")) for c in cycles]),
        "latency_2rank_ms": lat * 1e3,
        "mpiexec_2rank_ms": base * 1e3,
        "latency_ratio": lat / base,
        "throughput_per_s": med([x for c in measured for x in c["throughput_per_s"]]),
        "shutdown_s": med([c["shutdown_s"] for c in cycles]),
    }
    summary["targets_met"] = {
        "latency_ratio": summary["latency_ratio"] <= TARGETS["latency_ratio_max"],
        "throughput": summary["throughput_per_s"] >= TARGETS["throughput_min_per_s"],
        "shutdown": summary["shutdown_s"] < TARGETS["shutdown_max_s"],
    }
    return summary


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    cyc = result["cycles"][0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    ax = axes[0]
    known = [("session", s["session_s"]), ("managers", s["managers_s"]), ("pilot", s["pilot_s"]),
             ("workers", s["workers_s"])]
    parts = known + [("submission + first task", s["first_result_s"] - sum(v for _, v in known))]
    left = 0.0
    for name, val in parts:
        ax.barh([0], [val], left=left, label=f"{name} {val:.1f} s")
        left += val
    ax.set_yticks([])
    ax.set_xlabel("seconds from parsl.load")
    ax.set_title("start-up (median)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.boxplot([[x * 1e3 for x in cyc["latency_s"]], [x * 1e3 for x in cyc["mpiexec_s"]]])
    ax.set_xticks([1, 2], ["cylon_app\n2 ranks", "mpiexec -n 2\npython"])
    ax.set_yscale("log")
    ax.set_ylabel("ms per call")
    ax.set_title(f"latency: ratio {s['latency_ratio']:.3f} (target <= 0.1)")
    ax = axes[2]
    ax.bar(["throughput\n(tasks/s)"], [s["throughput_per_s"]])
    ax.axhline(TARGETS["throughput_min_per_s"], color="red", linestyle="--",
               label=f"target {TARGETS['throughput_min_per_s']:.0f}/s")
    ax.set_title(f"200 one-rank tasks; shutdown {s['shutdown_s']:.1f} s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cycles", type=int, default=2, help="start/shutdown cycles (medians over them)")
    parser.add_argument("--calls", type=int, default=50, help="sequential 2-rank calls")
    parser.add_argument("--tasks", type=int, default=200, help="tasks submitted at once for throughput")
    parser.add_argument("--encryption", choices=["on", "off", "both"], default="both",
                        help="channel configurations to measure (both: alternating cycles)")
    args = parser.parse_args()
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.encryption]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "baseline.py")
        Path(script).write_text(BASELINE)
        _mpiexec_once(script)  # warm the page cache for both sides
        cycles = []
        for i in range(args.cycles):
            for encrypted in modes:
                _progress(f"cycle {i + 1}/{args.cycles}, encrypted={encrypted}")
                cycles.append(run_cycle(os.path.join(tmp, f"run{i}-{encrypted}"), args.calls, args.tasks, script,
                                        measure_tasks=True, encrypted=encrypted))
    result = {
        "benchmark": "overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg": os.getloadavg()},
        "targets": TARGETS,
        "summary": summarize([c for c in cycles if c["encrypted"] == modes[0]]),
        "modes": {("encrypted" if m else "unencrypted"): summarize([c for c in cycles if c["encrypted"] == m])
                  for m in modes},
        "cycles": cycles,
    }
    (out / "overhead.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "overhead.png")
    print(json.dumps(result["modes"], indent=2))


if __name__ == "__main__":
    main()
