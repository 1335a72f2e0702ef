"""Join, sort and group-by: parsl_rcylon's engine against pyarrow, DuckDB, Polars and Dask.

The shapes: two tables of N rows each (int64 ``key`` uniform in ``[0, N)``,
float64 ``v``), an inner join on ``key`` (the paper's); a sort of N rows by
an int64 key uniform in ``[0, 2**62)``; group-bys of N rows by an int64 key
with about 1,000 (``groupby_1k``) and about 1M (``groupby_1m``) groups, sum
and mean of ``v``.  Every configuration sees exactly the same rows: the data
are generated in fixed chunks from per-chunk seeds, so a rank of an R-rank
run builds just its slice of the same global tables.

Engine timings run under ``mpiexec -n R`` and are taken inside, after a
barrier, as the maximum over ranks.  Each operation and size runs in a fresh
process (or ``mpiexec`` run).  It first runs the operation once on
``WARM_ROWS`` rows, as a warm worker would have: the libraries' code is
paged in and the join kernel's connection is open, so the code pages (26 MiB
here, shared with every other process and reclaimable) do not count as the
operation's memory.  The first full-size run then measures memory (peak
resident size over the resident size with the inputs loaded, per rank); then
``--repeats`` timed runs, of which the median is reported.  pyarrow, DuckDB
and Polars each run in one process on all cores (their own thread pools),
Arrow tables in and out as for the engine (Polars: frames made from the
Arrow inputs before the clock starts, a frame out); their sorts need not be
stable, the engine's is.  Dask runs a ``LocalCluster`` with R worker
processes of one thread, inputs persisted before the clock starts.

Usage::

    python benchmarks/ops.py --out DIR [--quick] [--sizes 8M] [--ranks 1,2,4] [--repeats 5]
        [--ops join,sort,groupby_1k,groupby_1m]

writes ``DIR/ops.json`` (all timings, medians, rows/s, memory), ``DIR/ops.md``
and ``DIR/ops.png``.
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


#: The operations and the key range of their input (None: [0, N)).
OPS = {"join": None, "sort": 2**62, "groupby_1k": 1000, "groupby_1m": 1_000_000}
AGGS = [("v", "sum"), ("v", "mean")]
#: Single-process engines and what each needs installed.
SINGLE = {"pyarrow": "pyarrow", "duckdb": "duckdb", "polars": "polars"}


def _inputs(op: str, n: int, rank: int = 0, size: int = 1) -> tuple:
    """This rank's slices of the op's global N-row input(s): (left, right) for the join, (table, None) else."""
    lo, hi = rank * n // size, (rank + 1) * n // size
    if op == "join":
        return make_rows(1, n, lo, hi), make_rows(2, n, lo, hi)
    return make_rows(3 if op == "sort" else 4, n, lo, hi, key_high=OPS[op]), None


def _engine_op(engine: Any, comm: Any, op: str, left: Any, right: Any) -> Callable[[], Any]:
    if op == "join":
        return lambda: engine.join(comm, left, right, on="key")
    if op == "sort":
        return lambda: engine.sort(comm, left, "key")
    return lambda: engine.groupby(comm, left, ["key"], AGGS)


def _single_op(name: str, op: str, left: Any, right: Any) -> Callable[[], Any]:
    """The op in one process of ``name`` (pyarrow, duckdb, polars), Arrow in, its natural output out."""
    if name == "pyarrow":
        if op == "join":
            return lambda: left.join(right, "key", join_type="inner")
        if op == "sort":
            return lambda: left.sort_by("key")
        return lambda: left.group_by("key").aggregate(AGGS)
    if name == "duckdb":
        import duckdb

        from parsl_rcylon.engine.kernels import fetch_arrow

        con = duckdb.connect()  # all cores
        con.register("l", left)
        if right is not None:
            con.register("r", right)
        query = {"join": "SELECT l.key, l.v, r.v AS v_right FROM l JOIN r ON l.key = r.key",
                 "sort": "SELECT * FROM l ORDER BY key"}.get(
            op, "SELECT key, sum(v) AS v_sum, avg(v) AS v_mean FROM l GROUP BY key")
        return lambda: fetch_arrow(con.sql(query))
    import polars as pl

    lf = pl.from_arrow(left)
    rf = pl.from_arrow(right) if right is not None else None
    if op == "join":
        return lambda: lf.join(rf, on="key", how="inner")
    if op == "sort":
        return lambda: lf.sort("key")
    return lambda: lf.group_by("key").agg(pl.col("v").sum().alias("v_sum"), pl.col("v").mean().alias("v_mean"))


def _rows(out: Any) -> int:
    return out.num_rows if hasattr(out, "num_rows") else out.height


def _pandas_rows(table_id: int, n: int, start: int, stop: int, key_high: Optional[int]) -> Any:
    return make_rows(table_id, n, start, stop, key_high).to_pandas()


def _dask_frame(dd: Any, dask: Any, table_id: int, n: int, parts: int, key_high: Optional[int]) -> Any:
    pieces = [dask.delayed(_pandas_rows)(table_id, n, i * n // parts, (i + 1) * n // parts, key_high)
              for i in range(parts)]
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
        for op in args.ops:
            left, right = _inputs(op, n, rank, size)
            times, out_rows = [], 0
            inputs = left.nbytes + (right.nbytes if right is not None else 0)
            _engine_op(engine, comm, op, *_inputs(op, WARM_ROWS, rank, size))()
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
                from parsl_rcylon.engine.kernels import active_kernels

                active = active_kernels()
                records.append({"engine": "parsl_rcylon", "op": op, "n": n, "ranks": size, "times": times,
                                "load_average": load,
                                "kernels": {k: active[k]["kernel"] for k in ("sort", "join", "groupby")},
                                "out_rows": out_rows, "out_rows_per_rank": part_rows, "memory": per_rank})
            del left, right
    if rank == 0:
        Path(args.json).write_text(json.dumps(records))


def single_worker(args: argparse.Namespace) -> None:
    """One process of pyarrow, DuckDB or Polars (``--single``), on all cores."""
    import pyarrow as pa

    name = args.single
    version = __import__(SINGLE[name]).__version__
    records = []
    for n in args.sizes:
        for op in args.ops:
            left, right = _inputs(op, n)
            times, out_rows = [], 0
            inputs = left.nbytes + (right.nbytes if right is not None else 0)
            _single_op(name, op, *_inputs(op, WARM_ROWS))()
            run = _single_op(name, op, left, right)
            _, extra, out = measured(run)  # memory + warm-up, as above
            del out
            load = os.getloadavg()[0]
            for _ in range(args.repeats):
                seconds, _, out = measured(run)
                out_rows = _rows(out)
                del out
                times.append(seconds)
            records.append({"engine": name, "op": op, "n": n, "ranks": 1, "threads": os.cpu_count(),
                            "version": version, "load_average": load, "times": times, "out_rows": out_rows,
                            "memory": [{"input_bytes": inputs, "extra_peak_bytes": extra}]})
            del run, left, right
    del pa
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
            for op in args.ops:
                if op == "join":
                    left, right = (_dask_frame(dd, dask, table_id, n, parts, None) for table_id in (1, 2))
                    wait([left, right])
                else:
                    left, right = _dask_frame(dd, dask, 3 if op == "sort" else 4, n, parts, OPS[op]), None
                    wait(left)
                times, out_rows = [], 0
                load = os.getloadavg()[0]
                for i in range(args.warmup + args.repeats):
                    start = time.perf_counter()
                    if op == "join":
                        out = dd.merge(left, right, on="key", how="inner").persist()
                    elif op == "sort":
                        out = left.sort_values("key").persist()
                    else:  # many groups: as many output partitions as workers
                        split = args.workers if op == "groupby_1m" else 1
                        out = left.groupby("key").agg({"v": ["sum", "mean"]}, split_out=split).persist()
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


def _launch(cmd: List[str], timeout: float, extra_env: Optional[Dict[str, str]] = None
            ) -> Optional[List[Dict[str, Any]]]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **(extra_env or {}))
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
    # What decides the local kernels' speed: numpy's SIMD sort, the CPU, DuckDB or Acero.
    from parsl_rcylon.engine.kernels import active_kernels

    info["kernels"] = active_kernels()
    info["cpu_model"] = info["kernels"]["cpu"]
    info["numpy_simd"] = info["kernels"]["numpy_simd"]
    return info


def table_text(records: List[Dict[str, Any]]) -> str:
    """A Markdown table: one row per (op, N, engine, ranks), with ratios to pyarrow, the best of DuckDB and
    Polars, and Dask."""
    base = {(r["op"], r["n"]): r["median_s"] for r in records if r["engine"] == "pyarrow"}
    best: Dict[tuple, float] = {}
    for r in records:
        if r["engine"] in ("duckdb", "polars"):
            best[(r["op"], r["n"])] = min(best.get((r["op"], r["n"]), float("inf")), r["median_s"])
    dask_t = {(r["op"], r["n"], r["ranks"]): r["median_s"] for r in records if r["engine"] == "dask"}
    lines = ["| op | N | engine | ranks/workers | median s | best s | Mrows/s | vs pyarrow "
             "| vs best of DuckDB/Polars | vs Dask (same count) | peak/input per rank |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"parsl_rcylon": 0, "duckdb": 1, "polars": 2, "pyarrow": 3, "dask": 4}
    for r in sorted(records, key=lambda r: (r["op"], r["n"], order[r["engine"]], r["ranks"],
                                            r.get("forced_sort_kernel") or "")):
        speed = base.get((r["op"], r["n"]))
        vs_pa = f"{speed / r['median_s']:.2f}x" if speed else "-"
        fastest = best.get((r["op"], r["n"]))
        vs_best = f"{fastest / r['median_s']:.2f}x" if fastest else "-"
        d = dask_t.get((r["op"], r["n"], r["ranks"]))
        vs_dask = f"{d / r['median_s']:.1f}x" if d and r["engine"] != "dask" else "-"
        mem = f"{r['peak_over_input']:.2f} ({r['peak_mib_per_rank']:.0f} MiB)" if "peak_over_input" in r else "-"
        name = r["engine"]
        if r["engine"] == "parsl_rcylon" and r["op"] == "sort" and "kernels" in r:
            name += f" ({r['kernels']['sort']} sort{', forced' if r.get('forced_sort_kernel') else ''})"
        lines.append(f"| {r['op']} | {r['n'] / 1e6:g}M | {name} | {r['ranks']} | {r['median_s']:.3f} "
                     f"| {r['best_s']:.3f} "
                     f"| {r['rows_per_s'] / 1e6:.1f} | {vs_pa} | {vs_best} | {vs_dask} | {mem} |")
    return "\n".join(lines)


def _label(r: Dict[str, Any]) -> str:
    if r["engine"] in SINGLE:
        return f"{r['engine']} (1 process)"
    forced = r.get("forced_sort_kernel")
    return f"{r['engine']} x{r['ranks']}" + (f" ({forced} sort, forced)" if forced else "")


def plot(records: List[Dict[str, Any]], path: Path) -> None:
    """Median seconds per engine, one panel per op, at the largest N measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ops = [op for op in OPS if any(r["op"] == op for r in records)]
    fig, axes = plt.subplots(1, len(ops), figsize=(4.5 * len(ops), 4.5), squeeze=False)
    order = {"parsl_rcylon": 0, "duckdb": 1, "polars": 2, "pyarrow": 3, "dask": 4}
    colours = {"parsl_rcylon": "tab:blue", "duckdb": "tab:orange", "polars": "tab:purple", "pyarrow": "tab:green",
               "dask": "tab:gray"}
    for ax, op in zip(axes[0], ops, strict=True):
        n = max(r["n"] for r in records if r["op"] == op)
        rows = sorted((r for r in records if r["op"] == op and r["n"] == n),
                      key=lambda r: (order[r["engine"]], r["ranks"]))
        ax.barh([_label(r) for r in rows], [r["median_s"] for r in rows],
                color=[colours[r["engine"]] for r in rows])
        for y, r in enumerate(rows):
            ax.text(r["median_s"], y, f" {r['median_s']:.3f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(right=max(r["median_s"] for r in rows) * 3)
        ax.set_xlabel("median seconds (log)")
        ax.set_title(f"{op}, N={n / 1e6:g}M")
        ax.grid(True, axis="x", alpha=0.3)
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
                  "sort of N rows by an int64 key uniform in [0, 2**62); group-by of N rows by an int64 key "
                  "uniform in [0, 1000) and [0, 10**6), sum and mean of the float64 value",
                  "repeats": args.repeats, "records": done}
        (out_dir / "ops.json").write_text(json.dumps(result, indent=1))
        kern = info["kernels"]
        head = (f"Machine: {info.get('cpu')} x{info['cpus']} (vendor {kern['cpu']['vendor']}, family "
                f"{kern['cpu']['family']}); numpy {np.__version__} SIMD found: "
                f"{' '.join(info['numpy_simd']['found'])}; numpy's 64-bit sort: {kern['sort']['numpy_sort']}. "
                f"Engine kernels: sort {kern['sort']['kernel']}, join {kern['join']['kernel']}. "
                f"Load average before/after: {info['load_average_before'][0]:.1f}/{os.getloadavg()[0]:.1f}.\n\n")
        (out_dir / "ops.md").write_text(head + table_text(done) + "\n")

    print(f"machine: {info.get('cpu')} x{info['cpus']}, load {info['load_average_before']}", flush=True)
    kern = info["kernels"]
    print(f"kernels: sort {kern['sort']['kernel']} ({kern['sort']['why']}), join {kern['join']['kernel']}; "
          f"numpy {np.__version__} SIMD {', '.join(info['numpy_simd']['found'][-4:])}", flush=True)
    # One process (or mpiexec run) per operation and size: memory is then measured
    # from a clean start, and one configuration cannot inflate the next.
    for n in args.sizes:
        for op in args.ops:
            one = ["--sizes", str(n), "--repeats", str(args.repeats), "--ops", op]
            for name, module in SINGLE.items():
                try:
                    __import__(module)
                except ImportError:
                    print(f"{name} not installed: skipping it (pip install -e '.[bench]')", flush=True)
                    continue
                print(f"{op} N={n}: {name} (one process) ...", flush=True)
                records += _launch(me + ["--single", name] + one, args.timeout) or []
                save()
            # The sort also with each kernel in --sort-kernels forced (side by side with auto's choice).
            kernels = args.sort_kernels if op == "sort" else ["auto"]
            for ranks in args.ranks:
                for kernel in kernels:
                    print(f"{op} N={n}: parsl_rcylon engine on {ranks} rank(s), sort kernel {kernel} ...", flush=True)
                    env = {} if kernel == "auto" else {"PARSL_RCYLON_SORT_KERNEL": kernel}
                    got = _launch([mpiexec, "-n", str(ranks)] + me + ["--engine-worker"] + one, args.timeout, env) or []
                    for record in got:
                        record["forced_sort_kernel"] = None if kernel == "auto" else kernel
                    records += got
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
    parser.add_argument("--sizes", default="8M")
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed Dask runs before the timed ones")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--sort-kernels", default="auto",
                        help="engine sort kernels to run, comma-separated: auto (this CPU's choice), numpy, radix")
    parser.add_argument("--dask-sizes", default="", help="sizes for Dask (default: --sizes)")
    parser.add_argument("--engine-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--single", choices=sorted(SINGLE), help=argparse.SUPPRESS)
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
    args.sort_kernels = args.sort_kernels.split(",")
    unknown = set(args.ops) - set(OPS)
    if unknown:
        parser.error(f"unknown ops {sorted(unknown)}; use some of {', '.join(OPS)}")
    if args.engine_worker:
        engine_worker(args)
    elif args.single:
        single_worker(args)
    elif args.dask_worker:
        dask_worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
