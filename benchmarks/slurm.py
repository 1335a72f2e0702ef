"""The executor through a real batch system: the 2-node Slurm test cluster against a local pilot.

    python benchmarks/slurm.py --out DIR [--rows 200000] [--pings 20] [--iterations 3]

In one run, on the cluster ``cluster/setup.sh`` starts (root; see docs/hpc.md):

* **Start to first result**: ``parsl.load`` of an executor plus its first
  2-rank task, for a local pilot and for a pilot submitted by ``sbatch``
  (MPIEXEC, one rank on each node).
* **2-rank latency**: ``--pings`` sequential 2-rank tasks (an allreduce) on
  each pilot, medians side by side; on the cluster the ranks sit on two hosts
  and talk TCP over loopback.
* **One pilot against a batch job per stage** (the paper's comparison, now
  with a real batch system): generate two tables, join, sort, 2 ranks over 2
  nodes, as tasks of one pilot and as one ``sbatch`` job per stage
  (``benchmarks/slurm_stage.sh``); the very stage functions
  (:mod:`parsl_rcylon.bench.stages`), medians of ``--iterations``.

Results: DIR/slurm.json and DIR/slurm.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
# Run by path, sys.path[0] is benchmarks/ (paper.py's harness); the checkout goes first too.
sys.path.insert(0, str(ROOT))

from paper import BareMetal, Pilot  # noqa: E402  (benchmarks/paper.py, beside this script)

from parsl_rcylon import WorkerPool, cylon_app  # noqa: E402
from parsl_rcylon.bench import stages  # noqa: E402
from tests.slurm import testbed as slurm_testbed  # noqa: E402


@cylon_app
def ping(ctx) -> int:
    return ctx.comm.allreduce(1)


def _pilot_figures(pilot: Pilot, pings: int) -> Dict[str, Any]:
    timings = pilot.start()
    first = timings["load_s"] + timings["warm_up_s"]  # parsl.load, then the first 2-rank task
    lat = []
    for _ in range(pings):
        t = time.perf_counter()
        assert ping(parsl_resource_specification={"ranks": 2}).result(timeout=120) == 2
        lat.append(time.perf_counter() - t)
    return {"load_s": timings["load_s"], "first_result_s": first, "ping_s": lat,
            "ping_median_s": statistics.median(lat), "executor": timings["executor"],
            "hosts": timings["worker"].get("hosts") if isinstance(timings.get("worker"), dict) else None}


def _pilot_pipeline(pilot: Pilot, rows: int) -> Dict[str, Any]:
    t0 = time.perf_counter()
    left = pilot.call("generate", 2, stages.LEFT, rows)
    right = pilot.call("generate", 2, stages.RIGHT, rows)
    joined = pilot.call("join", 2, left, right)
    ordered = pilot.call("sort", 2, left)
    results = [f.result(timeout=600) for f in (left, right, joined, ordered)]
    wall = time.perf_counter() - t0
    stages.delete_outputs(results)
    return {"wall_s": wall, "rows_out": [r.rows_out for r in results]}


def _batch_pipeline(bare: BareMetal, rows: int) -> Dict[str, Any]:
    t0 = time.perf_counter()
    tables = f"{stages.LEFT},{stages.RIGHT}"
    w_gen, (left, right) = bare.launch(2, ["generate", "--rows", str(rows), "--tables", tables])
    lpath, rpath = bare.save(left), bare.save(right)
    w_join, (joined,) = bare.launch(2, ["join", "--left", lpath, "--right", rpath])
    w_sort, (ordered,) = bare.launch(2, ["sort", "--input", lpath])
    wall = time.perf_counter() - t0
    stages.delete_outputs([left, right, joined, ordered])
    return {"wall_s": wall, "stage_walls_s": [w_gen, w_join, w_sort],
            "rows_out": [left.rows_out, right.rows_out, joined.rows_out, ordered.rows_out]}


def _plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = ["local pilot", "Slurm pilot (sbatch)"]
    first = [result["local"]["first_result_s"], result["slurm"]["first_result_s"]]
    axes[0].bar(names, first, color=["tab:gray", "tab:blue"])
    axes[0].set_ylabel("seconds")
    axes[0].set_title("start to first 2-rank result")
    lat = [1e3 * result["local"]["ping_median_s"], 1e3 * result["slurm"]["ping_median_s"]]
    axes[1].bar(names, lat, color=["tab:gray", "tab:blue"])
    axes[1].set_ylabel("milliseconds (median)")
    axes[1].set_title("2-rank task latency (ranks on 1 vs 2 hosts)")
    pipe = result["pipeline"]
    axes[2].bar(["one pilot", "sbatch per stage"], [pipe["pilot_median_s"], pipe["batch_median_s"]],
                color=["tab:blue", "tab:orange"])
    axes[2].set_ylabel("seconds (median)")
    axes[2].set_title(f"generate+join+sort, 2 ranks on 2 nodes ({pipe['rows']:,} rows/table)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pings", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args(argv)
    reason = slurm_testbed.missing()
    if reason:
        print(f"benchmarks/slurm.py: {reason}", file=sys.stderr)
        return 2
    started = slurm_testbed.setup()
    os.environ.update(slurm_testbed.LOOPBACK_MPI)  # the per-stage jobs inherit it through sbatch
    work = Path(tempfile.mkdtemp(prefix="rcylon-bench-slurm-"))
    result: Dict[str, Any] = {"machine": {"host": platform.node(), "cpus": os.cpu_count(),
                                          "cores_per_node": slurm_testbed.CPUS},
                              "rows": args.rows, "pings": args.pings}
    try:
        local = Pilot(work / "local", 2, work / "local-data")
        try:
            result["local"] = _pilot_figures(local, args.pings)
        finally:
            local.stop()
        cluster = slurm_testbed.cluster("MPIEXEC")
        slurm = Pilot(work / "slurm", 2, work / "slurm-data", executor_options={
            "pilots": [cluster.pilot(runtime=30)], "pools": [WorkerPool(ranks=2, ranks_per_node=1)],
            "address": "127.0.0.1", "start_timeout": 300})
        pilot_runs, batch_runs = [], []
        try:
            result["slurm"] = _pilot_figures(slurm, args.pings)
            for _ in range(args.iterations):
                pilot_runs.append(_pilot_pipeline(slurm, args.rows))
        finally:
            slurm.stop()
        bare = BareMetal(work / "batch-data", timeout=300,
                       launcher=f"bash {ROOT / 'benchmarks' / 'slurm_stage.sh'} {{ranks}}")
        for _ in range(args.iterations):
            batch_runs.append(_batch_pipeline(bare, args.rows))
        p = statistics.median(r["wall_s"] for r in pilot_runs)
        b = statistics.median(r["wall_s"] for r in batch_runs)
        result["pipeline"] = {"rows": args.rows, "pilot": pilot_runs, "batch": batch_runs,
                              "pilot_median_s": p, "batch_median_s": b, "speedup": b / p}
    finally:
        if started:
            slurm_testbed.teardown()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slurm.json").write_text(json.dumps(result, indent=2, default=str))
    _plot(result, args.out / "slurm.png")
    print(f"start to first result: local {result['local']['first_result_s']:.1f} s, "
          f"Slurm {result['slurm']['first_result_s']:.1f} s; 2-rank latency median: local "
          f"{1e3 * result['local']['ping_median_s']:.1f} ms, "
          f"Slurm (2 hosts) {1e3 * result['slurm']['ping_median_s']:.1f} ms; "
          f"pipeline: one pilot {p:.2f} s, sbatch per stage {b:.2f} s ({b / p:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
