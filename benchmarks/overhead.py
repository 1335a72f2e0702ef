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
* Worker replacement: ``--replacements`` times per cycle, one rank of a
  live worker is SIGKILLed (as the OOM killer would); seconds until the
  executor has noticed, until a replacement worker's ranks are all ready,
  and until a 2-rank task has run on it.
* Shutdown: ``dfk.cleanup()``, with the executor's breakdown (task manager,
  pilot manager, session).
* Attached start: a pilot started as ``parsl-rcylon up`` does, then
  ``--attached`` times ``parsl.load`` with ``attach=`` to the first result.

With ``--rp both`` the cold cycles alternate between Radical Pilot as this
project adjusts it (``runtime/rp_adjust/``) and stock RP
(``RCYLON_RP_STOCK=1``), each with its own idle cost and census of
listening sockets (RP's and MPI's, on loopback or beyond); ``rp_adjust``
in the result holds both sides' medians and their ratios, and the result
goes to ``overhead_rp_adjust.json`` (and ``.png``).

With ``--encryption both`` the cold cycles alternate between the
authenticated, encrypted channel (the default) and ``encrypted=False``, so
the cost of CurveZMQ is measured side by side too.

    python benchmarks/overhead.py --out benchmarks/results [--cycles 5] [--calls 50] [--encryption on]

Writes ``overhead.json`` and ``overhead.png`` into ``--out`` (with ``--rp
both``: ``overhead_rp_adjust.json``/``.png``); the top-level ``summary`` is
the default (encrypted) configuration's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
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
SHUTDOWN_STEPS = ("shutdown_ranks", "shutdown_tmgr", "shutdown_pmgr", "shutdown_session")
REPLACEMENT_STEPS = ("detected_s", "ready_s", "task_done_s")

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


def worker_replacement(ex: RadicalCylonExecutor, timeout: float = 180.0) -> dict:
    """SIGKILL the last rank of a live worker; seconds to the executor noticing, the replacement ready, a task run.

    ``detected_s``: the dispatcher forgot the worker; ``ready_s``: every rank
    of the pool is idle again on a new worker; ``task_done_s``: a 2-rank task
    submitted then has its result.  Counted from the kill.
    """
    dispatcher = ex._own.dispatcher  # the rank registry, as tests/test_faults.py reads it
    with dispatcher._lock:
        uid, ranks = next(iter(dispatcher._ranks.workers()))
        rank = max(ranks)
        pid = ranks[rank].pid
    (pool, before), = ex.status().items()
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    out: dict = {"worker": uid, "rank": rank}

    def wait(what: str, done) -> float:
        while not done():
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"worker replacement: {what} not within {timeout:.0f} s: {ex.status()}")
            time.sleep(0.01)
        return time.perf_counter() - t0

    def known() -> set:
        with dispatcher._lock:
            return {w for w, _ in dispatcher._ranks.workers()}

    out["detected_s"] = wait("the loss noticed", lambda: uid not in known())

    def replaced() -> bool:
        now = ex.status().get(pool, {})
        return now.get("restarts", 0) > before.get("restarts", 0) and now.get("idle") == before["ranks"]

    out["ready_s"] = wait("a replacement ready", replaced)
    assert trivial_mpi().result(timeout=timeout) == 2
    out["task_done_s"] = time.perf_counter() - t0
    out["new_worker"] = sorted(known() - {uid})
    _progress("replacement: " + ", ".join(f"{k} {out[k]:.2f}" for k in REPLACEMENT_STEPS))
    return out


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
              encrypted: bool = True, idle_s: float = 0.0, ranks: int = 4, rp: str = "adjusted",
              replacements: int = 0) -> dict:
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
        out["replacements"] = [worker_replacement(ex) for _ in range(replacements)]
    finally:
        t = time.perf_counter()
        dfk.cleanup()
        parsl.clear()
        out["cleanup_s"] = time.perf_counter() - t
        out["shutdown_s"] = ex.timings.get("shutdown")
        out["shutdown_breakdown_s"] = {k: ex.timings[k] for k in SHUTDOWN_STEPS if k in ex.timings}
        os.environ.pop(rp_adjust.ENV_STOCK, None)
    _progress(f"cycle: first result {out['first_result_s']:.1f} s, shutdown {out['shutdown_s']:.1f} s ("
              + ", ".join(f"{k[9:]} {v:.2f}" for k, v in out["shutdown_breakdown_s"].items()) + ")")
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
        **{f"{k}_s": med([c.get("shutdown_breakdown_s", {}).get(k, float("nan")) for c in cycles])
           for k in SHUTDOWN_STEPS},
    }
    replaced = [r for c in cycles for r in c.get("replacements", [])]
    if replaced:
        summary["replacements"] = len(replaced)
        summary.update({f"replacement_{k}": med([r[k] for r in replaced]) for k in REPLACEMENT_STEPS})
    summary["targets_met"] = {
        "latency_ratio": summary["latency_ratio"] <= TARGETS["latency_ratio_max"],
        "throughput": summary["throughput_per_s"] >= TARGETS["throughput_min_per_s"],
        "shutdown": summary["shutdown_s"] < TARGETS["shutdown_max_s"],
    }
    return summary


def compare_rp(modes: dict, idles: dict) -> dict:
    """Adjusted against stock RP (encrypted channel): both sides' medians and adjusted / stock."""
    adj, stock = modes.get("encrypted, adjusted RP"), modes.get("encrypted, stock RP")
    if not adj or not stock:
        return {}
    keys = ["first_result_s", "shutdown_s", *(f"{k}_s" for k in SHUTDOWN_STEPS),
            *(f"replacement_{k}" for k in REPLACEMENT_STEPS), "latency_2rank_ms"]
    out = {k: {"adjusted": adj.get(k), "stock": stock.get(k),
               "ratio": adj[k] / stock[k] if adj.get(k) and stock.get(k) else None} for k in keys}
    if "adjusted" in idles and "stock" in idles:
        a, b = idles["adjusted"]["total_cores"], idles["stock"]["total_cores"]
        out["idle_cores"] = {"adjusted": a, "stock": b, "ratio": a / b if b else None}
    for k, v in out.items():
        if v["ratio"] is not None:
            _progress(f"rp_adjust: {k} adjusted {v['adjusted']:.3f} / stock {v['stock']:.3f} = {v['ratio']:.2f}")
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    cyc = result["cycles"][0]
    rp = result.get("rp_adjust")
    fig, axes = plt.subplots(1, 4 if rp else 3, figsize=(17 if rp else 13, 4))
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
    if rp:
        ax = axes[3]
        keys = [k for k in ("shutdown_s", "shutdown_tmgr_s", "shutdown_pmgr_s", "shutdown_session_s",
                            "replacement_ready_s", "replacement_task_done_s") if rp.get(k, {}).get("ratio")]
        x = range(len(keys))
        ax.bar([i - 0.2 for i in x], [rp[k]["adjusted"] for k in keys], 0.4, label="adjusted RP")
        ax.bar([i + 0.2 for i in x], [rp[k]["stock"] for k in keys], 0.4, label="stock RP")
        ax.set_xticks(list(x), [k.replace("replacement_", "replace\n").replace("shutdown_", "shutdown\n")[:-2]
                                for k in keys], fontsize=7)
        ax.set_ylabel("seconds (median)")
        ax.set_title("adjusted vs stock RP")
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
    parser.add_argument("--replacements", type=int, default=1,
                        help="worker replacements per cycle (a rank SIGKILLed; 0: skip)")
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
                                        ranks=args.ranks, rp=rp, replacements=args.replacements))
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
        "rp_adjust": None,
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
    result["rp_adjust"] = compare_rp(result["modes"], idles) or None
    s = result["summary"]
    s["targets_met"]["cold_start"] = s["first_result_s"] <= TARGETS["cold_start_max_s"]
    if idle:
        s["idle_cores"] = idle["total_cores"]
        s["targets_met"]["idle"] = idle["total_cores"] <= TARGETS["idle_cores_max"]
    if attached:
        s["attached_first_result_s"] = result["attached"]["first_result_median_s"]
        s["targets_met"]["attached"] = s["attached_first_result_s"] < TARGETS["attached_max_s"]
    name = "overhead_rp_adjust" if args.rp == "both" else "overhead"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    plot(result, out / f"{name}.png")
    print(json.dumps({"summary": s, "plain_rp": result["plain_rp"]["median_s"], "rp_adjust": result["rp_adjust"]},
                     indent=2))


if __name__ == "__main__":
    main()
