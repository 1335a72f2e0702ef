"""Packing: how well mixed-size tasks fill one worker pool.

40 tasks of 1-4 ranks, each with known work (a sleep, so the 2-core machine's
CPUs do not decide the result), run on one pool.  The ideal makespan is the
packing bound ``total rank-seconds / pool ranks`` (no schedule can beat it);
utilization is ``bound / makespan``.  Several seeded task mixes, medians.

    python benchmarks/packing.py --out benchmarks/results [--ranks 8] [--rounds 3]

Writes ``packing.json`` and ``packing.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import parsl

from parsl_rcylon import RadicalCylonExecutor, cylon_app

TARGET_UTILIZATION = 0.85


@cylon_app(ranks=1)
def work(ctx, seconds):
    import time

    ctx.comm.Barrier()
    t0 = time.time()
    time.sleep(seconds)
    return (ctx.size, t0, time.time())


def task_mix(seed: int, count: int = 40) -> list:
    rng = random.Random(seed)
    return [(rng.randint(1, 4), round(rng.uniform(0.5, 2.0), 2)) for _ in range(count)]


def run_round(mix: list, pool_ranks: int) -> dict:
    t0 = time.time()
    futs = [work(sec, parsl_resource_specification={"ranks": n}) for n, sec in mix]
    results = [f.result() for f in futs]
    makespan = max(r[2] for r in results) - t0
    bound = sum(n * sec for n, sec in mix) / pool_ranks
    return {"makespan_s": makespan, "bound_s": bound, "utilization": bound / makespan,
            "tasks": [{"ranks": n, "seconds": sec, "start": r[1] - t0, "end": r[2] - t0}
                      for (n, sec), r in zip(mix, results, strict=True)]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rnd = result["rounds"][0]
    fig, ax = plt.subplots(figsize=(10, 4))
    colors = {1: "tab:blue", 2: "tab:orange", 3: "tab:green", 4: "tab:red"}
    for i, t in enumerate(rnd["tasks"]):
        ax.barh(i, t["end"] - t["start"], left=t["start"], color=colors[t["ranks"]])
    ax.axvline(rnd["bound_s"], color="black", linestyle="--", label=f"packing bound {rnd['bound_s']:.1f} s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("task")
    ax.set_title(f"40 tasks of 1-4 ranks on {result['pool_ranks']} ranks: utilization "
                 f"{rnd['utilization']:.0%} (median over rounds {result['summary']['utilization']:.0%})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles + [ax.lines[0]], [f"{k} rank(s)" for k in colors] + [ax.lines[0].get_label()], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--ranks", type=int, default=8, help="ranks of the pool")
    parser.add_argument("--rounds", type=int, default=3, help="task mixes (seeds) to run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ex = RadicalCylonExecutor(label="packing", worker_ranks=args.ranks)
        with parsl.load(parsl.Config(executors=[ex], run_dir=tmp, strategy="none", initialize_logging=False)):
            warm = run_round(task_mix(1000, count=8), args.ranks)  # first contact of every rank, not timed
            print(f"[packing] warm-up round: makespan {warm['makespan_s']:.2f} s", flush=True)
            rounds = []
            for seed in range(args.rounds):
                rnd = run_round(task_mix(seed), args.ranks)
                rounds.append(rnd)
                print(f"[packing] round {seed}: makespan {rnd['makespan_s']:.2f} s, bound {rnd['bound_s']:.2f} s, "
                      f"utilization {rnd['utilization']:.1%}", flush=True)
    util = statistics.median(r["utilization"] for r in rounds)
    result = {
        "benchmark": "packing",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "pool_ranks": args.ranks,
        "policy": "FIFO, best-fit worker, backfill; a task passed over 16 times blocks its pool",
        "target_utilization": TARGET_UTILIZATION,
        "summary": {"utilization": util, "makespan_s": statistics.median(r["makespan_s"] for r in rounds),
                    "bound_s": statistics.median(r["bound_s"] for r in rounds),
                    "target_met": util >= TARGET_UTILIZATION},
        "rounds": rounds,
    }
    (out / "packing.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "packing.png")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
