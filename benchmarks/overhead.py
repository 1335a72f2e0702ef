"""Executor overhead: start-up, task latency against a fresh mpiexec, throughput, idle cost, shutdown.

Everything is measured side by side in one run on this machine and reported
as medians; the mpiexec baseline launches are interleaved with the executor's
calls so that both see the same background load.

* Cold start: ``--cycles`` starts from ``parsl.load`` to the first result
  of a trivial 2-rank task, with the breakdown (session, managers, pilot
  submit to active split into bootstrap and agent, master and workers
  ready, first task), each followed by a plain Radical Pilot RAPTOR script
  (``plain_rp.py``, stock RP, same worker size) started the same way.
* Idle cost: after the first cycle's tasks, cores busy over ``--idle``
  seconds with nothing running, per process (from ``/proc/<pid>/stat``).
* Attached start: a pilot started as ``parsl-rcylon up`` does, then
  ``--attached`` times ``parsl.load`` with ``attach=`` to the first result.

With ``--rp both`` the cold cycles alternate between Radical Pilot as this
project adjusts it (``runtime/rp_adjust/``) and stock RP
(``RCYLON_RP_STOCK=1``), each with its own idle cost and census of
listening sockets (RP's and MPI's, on loopback or beyond).

With ``--encryption both`` the cold cycles alternate between the
authenticated, encrypted channel (the default) and ``encrypted=False``, so
the cost of CurveZMQ is measured side by side too.

    python benchmarks/overhead.py --out benchmarks/results [--cycles 5] [--calls 50] [--encryption on]

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
import psutil
from parsl import python_app

from parsl_rcylon import RadicalCylonExecutor, cylon_app
from parsl_rcylon.runtime import rp_adjust
from parsl_rcylon.runtime.processes import component, listening_sockets, session_processes
from parsl_rcylon.serving import down, up

BREAKDOWN = ("session", "managers", "pilot", "task_manager", "bootstrap", "agent", "workers")

TARGETS = {"latency_ratio_max": 0.1, "throughput_min_per_s": 500.0, "shutdown_max_s": 5.0,
           "cold_start_max_s": 12.0, "attached_max_s": 1.0, "idle_cores_max": 0.1}

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


def idle_cost(sid: str, seconds: float) -> dict:
    """Cores each process of the run keeps busy over ``seconds`` with no task running.

    The run's processes: the session's (RP's components and bridges, the
    master, ranks, launchers), and this client with everything it started
    (RP's client-side components, the proxy fork, the guard).
    """
    me = psutil.Process()
    procs = {p.pid: p for p in session_processes(sid)}
    procs.update({p.pid: p for p in me.children(recursive=True)})
    procs[me.pid] = me

    def cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return float("nan")

    before = {pid: cpu(p) for pid, p in procs.items()}
    time.sleep(seconds)
    per_process = []
    for pid, p in procs.items():
        used = (cpu(p) - before[pid]) / seconds
        if used == used:  # the process lived through the window
            name = "client (this script)" if pid == me.pid else component(p)
            per_process.append({"pid": pid, "process": name, "cores": round(used, 4)})
    per_process.sort(key=lambda r: -r["cores"])
    by_kind: dict = {}
    for row in per_process:
        by_kind[row["process"]] = round(by_kind.get(row["process"], 0.0) + row["cores"], 4)
    total = sum(r["cores"] for r in per_process)
    sockets = {k: len(v) for k, v in listening_sockets(procs.values()).items()}
    _progress(f"idle: {total:.3f} cores over {seconds:.0f} s in {len(per_process)} processes; top: "
              + ", ".join(f"{k} {v:.3f}" for k, v in list(by_kind.items())[:6]) + f"; listening sockets {sockets}")
    return {"seconds": seconds, "total_cores": total, "processes": len(per_process), "sockets": sockets,
            "by_process": per_process,
            "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))}


def plain_rp(run_dir: str, ranks: int) -> dict:
    """One run of benchmarks/plain_rp.py (stock RP) in a fresh interpreter."""
    script = Path(__file__).with_name("plain_rp.py")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(script), "--run-dir", run_dir, "--ranks", str(ranks)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:], "wall_s": time.perf_counter() - t0}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    steps = ", ".join(f"{k} {v:.1f}" for k, v in out.items() if isinstance(v, float))
    _progress(f"plain RP: first result {out['first_result']:.1f} s ({steps})")
    return out


def attached_starts(run_dir: str, count: int, ranks: int) -> dict:
    """A pilot as `parsl-rcylon up` starts it, then ``count`` scripts' parsl.load to first result."""
    pilot_dir = os.path.join(run_dir, "pilot")
    t0 = time.perf_counter()
    info = up(pilot_dir, {"label": "bench", "worker_ranks": ranks}, idle_timeout=600)
    out: dict = {"up_s": time.perf_counter() - t0, "load_s": [], "first_result_s": []}
    try:
        for i in range(count):
            t = time.perf_counter()
            ex = RadicalCylonExecutor(label="bench", attach=pilot_dir)
            dfk = parsl.load(parsl.Config(executors=[ex], run_dir=os.path.join(run_dir, f"client{i}"),
                                          strategy="none", initialize_logging=False))
            out["load_s"].append(time.perf_counter() - t)
            assert trivial_mpi().result() == 2
            out["first_result_s"].append(time.perf_counter() - t)
            dfk.cleanup()
            parsl.clear()
    finally:
        t = time.perf_counter()
        down(pilot_dir)
        out["down_s"] = time.perf_counter() - t
        out["left_after_down"] = len(session_processes(info.session))
    med = statistics.median(out["first_result_s"])
    _progress(f"attached: up {out['up_s']:.1f} s, parsl.load to first result median {med:.3f} s "
              f"(load {statistics.median(out['load_s']):.3f} s), down {out['down_s']:.1f} s")
    return out


def run_cycle(run_dir: str, calls: int, throughput_tasks: int, baseline_script: str, measure_tasks: bool,
              encrypted: bool = True, idle_s: float = 0.0, ranks: int = 4, rp: str = "adjusted") -> dict:
    out: dict = {"encrypted": encrypted, "rp": rp}
    if rp == "stock":
        os.environ[rp_adjust.ENV_STOCK] = "1"
    else:
        os.environ.pop(rp_adjust.ENV_STOCK, None)
    t0 = time.perf_counter()
    ex = RadicalCylonExecutor(label="bench", encrypted=encrypted, worker_ranks=ranks)
    dfk = parsl.load(parsl.Config(executors=[ex], run_dir=run_dir, strategy="none", initialize_logging=False))
    out["load_s"] = time.perf_counter() - t0
    try:
        assert trivial_mpi().result() == 2
        out["first_result_s"] = time.perf_counter() - t0
        out["breakdown_s"] = {k: ex.timings[k] for k in BREAKDOWN if k in ex.timings}
        out["breakdown_s"]["first_task"] = out["first_result_s"] - out["load_s"]
        _progress("breakdown: " + ", ".join(f"{k} {v:.2f}" for k, v in out["breakdown_s"].items()))
        if idle_s:
            time.sleep(2)  # let the first task's traffic settle
            out["idle"] = idle_cost(ex.session_id, idle_s)
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
        os.environ.pop(rp_adjust.ENV_STOCK, None)
    _progress(f"cycle: first result {out['first_result_s']:.1f} s, shutdown {out['shutdown_s']:.1f} s")
    return out


def summarize(cycles: list) -> dict:
    med = statistics.median
    measured = [c for c in cycles if "latency_s" in c]
    lat = med([x for c in measured for x in c["latency_s"]])
    base = med([x for c in measured for x in c["mpiexec_s"]])
    firsts = [c["first_result_s"] for c in cycles]
    summary = {
        "first_result_s": med(firsts),
        "first_result_min_max_s": [min(firsts), max(firsts)],
        "cold_starts": len(firsts),
        **{f"{k}_s": med([c["breakdown_s"].get(k, float("nan")) for c in cycles]) for k in BREAKDOWN + ("first_task",)},
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
             ("workers ready", s["workers_s"])]
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
    parser.add_argument("--cycles", type=int, default=5, help="cold start/shutdown cycles (medians over them)")
    parser.add_argument("--measured-cycles", type=int, default=2, help="cycles that also measure latency/throughput")
    parser.add_argument("--calls", type=int, default=50, help="sequential 2-rank calls")
    parser.add_argument("--tasks", type=int, default=200, help="tasks submitted at once for throughput")
    parser.add_argument("--ranks", type=int, default=4, help="worker ranks (both the executor and plain RP)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle cost measurement (0: skip)")
    parser.add_argument("--attached", type=int, default=10, help="attached starts (0: skip)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain Radical Pilot baseline")
    parser.add_argument("--encryption", choices=["on", "off", "both"], default="on",
                        help="channel configurations to measure (both: alternating cycles)")
    parser.add_argument("--rp", choices=["adjusted", "stock", "both"], default="adjusted",
                        help="Radical Pilot as runtime/rp_adjust/ adjusts it, stock, or both (alternating cycles)")
    args = parser.parse_args()
    enc = {"on": [True], "off": [False], "both": [True, False]}[args.encryption]
    rps = {"adjusted": ["adjusted"], "stock": ["stock"], "both": ["adjusted", "stock"]}[args.rp]
    modes = [(e, r) for e in enc for r in rps]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plain, attached, idle = [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "baseline.py")
        Path(script).write_text(BASELINE)
        _mpiexec_once(script)  # warm the page cache for both sides
        cycles = []
        for i in range(args.cycles):
            for encrypted, rp in modes:
                _progress(f"cycle {i + 1}/{args.cycles}, encrypted={encrypted}, rp={rp}")
                cycles.append(run_cycle(os.path.join(tmp, f"run{i}-{encrypted}-{rp}"), args.calls, args.tasks,
                                        script, measure_tasks=i < args.measured_cycles, encrypted=encrypted,
                                        idle_s=args.idle if i == 0 and encrypted == enc[0] else 0.0,
                                        ranks=args.ranks, rp=rp))
            if not args.no_plain:
                plain.append(plain_rp(os.path.join(tmp, f"plain{i}"), args.ranks))
        idles = {c["rp"]: c.pop("idle") for c in cycles if "idle" in c}
        idle = idles.get(rps[0])
        if args.attached:
            attached = attached_starts(tmp, args.attached, args.ranks)
    med = statistics.median
    ok_plain = [p for p in plain if "first_result" in p]
    result = {
        "benchmark": "overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg": os.getloadavg()},
        "targets": TARGETS,
        "summary": summarize([c for c in cycles if (c["encrypted"], c["rp"]) == modes[0]]),
        "modes": {f"{'encrypted' if e else 'unencrypted'}, {r} RP": dict(
                      summarize([c for c in cycles if (c["encrypted"], c["rp"]) == (e, r)]),
                      idle_cores=idles[r]["total_cores"] if r in idles and e == enc[0] else None,
                      sockets=idles[r]["sockets"] if r in idles and e == enc[0] else None)
                  for e, r in modes},
        "idle_by_rp": idles,
        "plain_rp": {
            "runs": plain,
            "median_s": {k: med([p[k] for p in ok_plain]) for k in ok_plain[0] if k != "sid"} if ok_plain else {},
            "first_result_min_max_s": [min(p["first_result"] for p in ok_plain),
                                       max(p["first_result"] for p in ok_plain)] if ok_plain else [],
        },
        "idle": idle,
        "attached": attached and dict(attached, first_result_median_s=med(attached["first_result_s"]),
                                      load_median_s=med(attached["load_s"])),
        "cycles": cycles,
    }
    s = result["summary"]
    s["targets_met"]["cold_start"] = s["first_result_s"] <= TARGETS["cold_start_max_s"]
    if idle:
        s["idle_cores"] = idle["total_cores"]
        s["targets_met"]["idle"] = idle["total_cores"] <= TARGETS["idle_cores_max"]
    if attached:
        s["attached_first_result_s"] = result["attached"]["first_result_median_s"]
        s["targets_met"]["attached"] = s["attached_first_result_s"] < TARGETS["attached_max_s"]
    (out / "overhead.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "overhead.png")
    print(json.dumps({"summary": s, "plain_rp": result["plain_rp"]["median_s"]}, indent=2))


if __name__ == "__main__":
    main()
