"""Distributed join and sort: parsl_rcylon's engine vs single-process pyarrow vs Dask.

The paper's shape: two tables of N rows each (int64 ``key`` uniform in
``[0, N)``, float64 ``v``), an inner join on ``key``, and a sort of N rows by
``key``.  Every configuration sees exactly the same rows: the data are
generated in fixed chunks from per-chunk seeds, so a rank of an R-rank run
builds just its slice of the same global tables.

Engine timings run under ``mpiexec -n R`` and are taken inside, after a
barrier, as the maximum over ranks.  Each operation and size runs in a fresh
process (or ``mpiexec`` run).  It first runs the operation once on
``WARM_ROWS`` rows, as a warm worker would have: the libraries' code is
paged in and the join kernel's connection is open, so the code pages (26 MiB
here, shared with every other process and reclaimable) do not count as the
operation's memory.  The first full-size run then measures memory (peak
resident size over the resident size with the inputs loaded, per rank); then
``--repeats`` timed runs, of which the median is reported.  pyarrow runs in a separate process with
its thread pool on (all cores); Dask runs a ``LocalCluster`` with R worker
processes of one thread, inputs persisted before the clock starts.

Usage::

    python benchmarks/ops.py --out DIR [--quick] [--sizes 2M,8M] [--ranks 1,2,4] [--repeats 3]

writes ``DIR/ops.json`` (all timings, medians, rows/s, memory) and
``DIR/ops.png``.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

# The paper reproduction's generator: chunk c of table t comes from seed (t, c, N), so any
# rank split builds its slice of the same global tables.
from parsl_rcylon.bench.stages import make_rows

logger = logging.getLogger("benchmarks.ops")

ROOT = Path(__file__).resolve().parent.parent


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1], 1)
    return int(float(text.rstrip("KMG")) * mult)


# -- memory ------------------------------------------------------------------------------------


def _rss() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # pragma: no cover
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    # Linux: writing 5 to clear_refs resets VmHWM, the peak resident set size.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measured(fn: Callable[[], Any]) -> tuple:
    """(seconds, extra peak bytes over the resident size before, result)."""
    gc.collect()
    base = _rss()
    _reset_peak()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    return elapsed, max(0, _peak() - base), result


# -- workers (each runs in its own process) ----------------------------------------------------


#: Rows of the small warm-up run before the measured ones.
WARM_ROWS = 4096


def _inputs(n: int, rank: int = 0, size: int = 1) -> tuple:
    """This rank's slices of the two global N-row tables (the join's sides; the sort uses the left)."""
    lo, hi = rank * n // size, (rank + 1) * n // size
    return make_rows(1, n, lo, hi), make_rows(2, n, lo, hi)


def _engine_op(engine: Any, comm: Any, op: str, left: Any, right: Any) -> Callable[[], Any]:
    if op == "join":
        return lambda: engine.join(comm, left, right, on="key")
    return lambda: engine.sort(comm, left, "key")


def _pyarrow_op(op: str, left: Any, right: Any) -> Callable[[], Any]:
    if op == "join":
        return lambda: left.join(right, "key", join_type="inner")
    return lambda: left.sort_by("key")


def _pandas_rows(table_id: int, n: int, start: int, stop: int) -> Any:
    return make_rows(table_id, n, start, stop).to_pandas()


def _dask_frame(dd: Any, dask: Any, table_id: int, n: int, parts: int) -> Any:
    pieces = [dask.delayed(_pandas_rows)(table_id, n, i * n // parts, (i + 1) * n // parts) for i in range(parts)]
    return dd.from_delayed(pieces, meta={"key": "int64", "v": "float64"}).persist()


def engine_worker(args: argparse.Namespace) -> None:
    """Runs under mpiexec: the engine's join and sort on this rank's slices."""
    from mpi4py import MPI

    from parsl_rcylon import engine

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    records: List[Dict[str, Any]] = []
    try:  # the join kernel's library: loaded once per process, like pyarrow's, before any baseline
        import duckdb  # noqa: F401
    except ImportError:
        pass
    for n in args.sizes:
        left, right = _inputs(n, rank, size)
        for op in args.ops:
            times, out_rows = [], 0
            inputs = left.nbytes + right.nbytes if op == "join" else left.nbytes
            _engine_op(engine, comm, op, *_inputs(WARM_ROWS, rank, size))()
            # Memory from the first full-size run in this process (later runs reuse what
            # the allocators kept and would look cheaper); its time is not reported.
            comm.Barrier()
            _, extra, out = measured(_engine_op(engine, comm, op, left, right))
            del out
            load = os.getloadavg()[0]
            for _ in range(args.repeats):
                comm.Barrier()
                seconds, _, out = measured(_engine_op(engine, comm, op, left, right))
                out_rows = comm.allreduce(out.num_rows)
                part_rows = comm.gather(out.num_rows)
                del out
                times.append(comm.allreduce(seconds, op=MPI.MAX))
            per_rank = comm.gather({"input_bytes": inputs, "extra_peak_bytes": extra})
            if rank == 0:
                records.append({"engine": "parsl_rcylon", "op": op, "n": n, "ranks": size, "times": times,
                                "load_average": load,
                                "out_rows": out_rows, "out_rows_per_rank": part_rows, "memory": per_rank})
        del left, right
    if rank == 0:
        Path(args.json).write_text(json.dumps(records))


def pyarrow_worker(args: argparse.Namespace) -> None:
    """Single process, pyarrow's own thread pool on all cores."""
    import pyarrow as pa

    records = []
    for n in args.sizes:
        left, right = _inputs(n)
        for op in args.ops:
            times, out_rows = [], 0
            inputs = left.nbytes + right.nbytes if op == "join" else left.nbytes
            _pyarrow_op(op, *_inputs(WARM_ROWS))()
            _, extra, out = measured(_pyarrow_op(op, left, right))  # memory + warm-up, as above
            del out
            load = os.getloadavg()[0]
            for _ in range(args.repeats):
                seconds, _, out = measured(_pyarrow_op(op, left, right))
                out_rows = out.num_rows
                del out
                times.append(seconds)
            records.append({"engine": "pyarrow", "op": op, "n": n, "ranks": 1, "threads": pa.cpu_count(),
                            "load_average": load,
                            "times": times, "out_rows": out_rows,
                            "memory": [{"input_bytes": inputs, "extra_peak_bytes": extra}]})
    Path(args.json).write_text(json.dumps(records))


def dask_worker(args: argparse.Namespace) -> None:
    """Dask distributed, ``--workers`` single-threaded worker processes."""
    import dask
    import dask.dataframe as dd
    from distributed import Client, LocalCluster, wait

    dask.config.set({"dataframe.shuffle.method": "p2p", "distributed.logging.distributed": "error"})
    records = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit=0) as cluster, Client(cluster) as client:
        for n in args.sizes:
            parts = max(args.workers, 4)

            left, right = (_dask_frame(dd, dask, table_id, n, parts) for table_id in (1, 2))
            wait([left, right])
            for op in args.ops:
                times, out_rows = [], 0
                load = os.getloadavg()[0]
                for i in range(args.warmup + args.repeats):
                    start = time.perf_counter()
                    if op == "join":
                        out = dd.merge(left, right, on="key", how="inner").persist()
                    else:
                        out = left.sort_values("key").persist()
                    wait(out)
                    if i >= args.warmup:
                        times.append(time.perf_counter() - start)
                    out_rows = int(out.shape[0].compute())
                    del out
                    client.run(gc.collect)
                records.append({"engine": "dask", "op": op, "n": n, "ranks": args.workers, "times": times,
                                "load_average": load,
                                "out_rows": out_rows, "version": dask.__version__})
            del left, right
    Path(args.json).write_text(json.dumps(records))


# -- driver ------------------------------------------------------------------------------------


def _launch(cmd: List[str], timeout: float) -> Optional[List[Dict[str, Any]]]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(cmd + ["--json", out], cwd=ROOT, env=env, timeout=timeout, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            print(f"  failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}",
                  file=sys.stderr)
            return None
        return json.loads(Path(out).read_text())
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout} s: {' '.join(cmd)}", file=sys.stderr)
        return None
    finally:
        Path(out).unlink(missing_ok=True)


def summarize(record: Dict[str, Any]) -> Dict[str, Any]:
    median = statistics.median(record["times"])
    rows = 2 * record["n"] if record["op"] == "join" else record["n"]
    record["median_s"] = median
    record["best_s"] = min(record["times"])
    record["rows_per_s"] = rows / median
    if "memory" in record:
        ratios = [(m["input_bytes"] + m["extra_peak_bytes"]) / max(1, m["input_bytes"]) for m in record["memory"]]
        record["peak_over_input"] = max(ratios)
        record["peak_mib_per_rank"] = max((m["input_bytes"] + m["extra_peak_bytes"]) / 2**20
                                          for m in record["memory"])
        record["input_mib_per_rank"] = max(m["input_bytes"] / 2**20 for m in record["memory"])
    return record


def machine() -> Dict[str, Any]:
    import mpi4py
    import pyarrow as pa

    info: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_before": os.getloadavg(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
        with open("/proc/meminfo") as fh:
            info["memory_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        import dask

        info["dask"] = dask.__version__
    except ImportError:
        info["dask"] = None
    return info


def table_text(records: List[Dict[str, Any]]) -> str:
    """A Markdown table: one row per (op, N, engine, ranks), with ratios to pyarrow and Dask."""
    base = {(r["op"], r["n"]): r["median_s"] for r in records if r["engine"] == "pyarrow"}
    dask_t = {(r["op"], r["n"], r["ranks"]): r["median_s"] for r in records if r["engine"] == "dask"}
    lines = ["| op | N | engine | ranks/workers | median s | best s | Mrows/s | vs pyarrow | vs Dask (same count) "
             "| peak/input per rank |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = {"parsl_rcylon": 0, "pyarrow": 1, "dask": 2}
    for r in sorted(records, key=lambda r: (r["op"], r["n"], order[r["engine"]], r["ranks"])):
        speed = base.get((r["op"], r["n"]))
        vs_pa = f"{speed / r['median_s']:.2f}x" if speed else "-"
        d = dask_t.get((r["op"], r["n"], r["ranks"]))
        vs_dask = f"{d / r['median_s']:.1f}x" if d and r["engine"] != "dask" else "-"
        mem = f"{r['peak_over_input']:.2f} ({r['peak_mib_per_rank']:.0f} MiB)" if "peak_over_input" in r else "-"
        lines.append(f"| {r['op']} | {r['n'] / 1e6:g}M | {r['engine']} | {r['ranks']} | {r['median_s']:.3f} "
                     f"| {r['best_s']:.3f} "
                     f"| {r['rows_per_s'] / 1e6:.1f} | {vs_pa} | {vs_dask} | {mem} |")
    return "\n".join(lines)


def plot(records: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op"] for r in records})
    fig, axes = plt.subplots(1, len(ops), figsize=(6 * len(ops), 4.5), squeeze=False)
    for ax, op in zip(axes[0], ops, strict=True):
        series: Dict[str, List[tuple]] = {}
        for r in records:
            if r["op"] != op:
                continue
            label = "pyarrow (1 process)" if r["engine"] == "pyarrow" else f"{r['engine']} x{r['ranks']}"
            series.setdefault(label, []).append((r["n"], r["rows_per_s"] / 1e6))
        for label, points in sorted(series.items()):
            points.sort()
            style = "--" if label.startswith("dask") else ("-." if label.startswith("pyarrow") else "-")
            ax.plot([p[0] / 1e6 for p in points], [p[1] for p in points], style, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("N (million rows)")
        ax.set_ylabel("million input rows / s (median)")
        ax.set_title(f"{op} ({'N x N inner' if op == 'join' else 'N rows by int64 key'})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def driver(args: argparse.Namespace) -> None:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    dask_sizes = ",".join(str(n) for n in (args.dask_sizes or args.sizes))
    common = ["--sizes", dask_sizes, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
              "--ops", ",".join(args.ops)]  # Dask: one cluster per worker count, all sizes
    me = [sys.executable, str(Path(__file__).resolve())]
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    info = machine()
    records: List[Dict[str, Any]] = []

    def save() -> None:
        # Rewritten after every launch, so an interrupted run keeps what it measured.
        done = [summarize(dict(r)) for r in records]
        result = {"machine": dict(info, load_average_now=os.getloadavg()),
                  "shape": "N x N inner join on int64 key uniform in [0, N) + float64 value; "
                  "sort of N rows by the int64 key", "repeats": args.repeats, "records": done}
        (out_dir / "ops.json").write_text(json.dumps(result, indent=1))
        (out_dir / "ops.md").write_text(table_text(done) + "\n")

    print(f"machine: {info.get('cpu')} x{info['cpus']}, load {info['load_average_before']}", flush=True)
    # One process (or mpiexec run) per operation and size: memory is then measured
    # from a clean start, and one configuration cannot inflate the next.
    for n in args.sizes:
        for op in args.ops:
            one = ["--sizes", str(n), "--repeats", str(args.repeats), "--ops", op]
            print(f"{op} N={n}: pyarrow (one process) ...", flush=True)
            records += _launch(me + ["--pyarrow-worker"] + one, args.timeout) or []
            save()
            for ranks in args.ranks:
                print(f"{op} N={n}: parsl_rcylon engine on {ranks} rank(s) ...", flush=True)
                records += _launch([mpiexec, "-n", str(ranks)] + me + ["--engine-worker"] + one, args.timeout) or []
                save()
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401

        have_dask = not args.no_dask
    except ImportError:
        have_dask = False
        print("dask[distributed] not installed: skipping Dask (pip install -e '.[dask]')", flush=True)
    if have_dask:
        for workers in args.ranks:
            print(f"Dask distributed, {workers} worker(s) ...", flush=True)
            records += _launch(me + ["--dask-worker", "--workers", str(workers)] + common, args.timeout) or []
            save()
    save()
    done = [summarize(r) for r in records]
    plot(done, out_dir / "ops.png")
    print(table_text(done))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="N=2M, ranks 1 and 2")
    parser.add_argument("--sizes", default="2M,8M,16M")
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed Dask runs before the timed ones")
    parser.add_argument("--ops", default="join,sort")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--dask-sizes", default="", help="sizes for Dask (default: --sizes)")
    parser.add_argument("--engine-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pyarrow-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dask-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.ranks = "2M", "1,2"
    args.sizes = [parse_size(s) if not s.isdigit() else int(s) for s in str(args.sizes).split(",")]
    args.dask_sizes = [parse_size(s) if not s.isdigit() else int(s) for s in args.dask_sizes.split(",") if s]
    args.ranks = [int(r) for r in str(args.ranks).split(",")]
    args.ops = args.ops.split(",")
    if args.engine_worker:
        engine_worker(args)
    elif args.pyarrow_worker:
        pyarrow_worker(args)
    elif args.dask_worker:
        dask_worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
