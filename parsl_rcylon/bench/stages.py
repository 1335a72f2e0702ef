"""Pipeline stages of the paper reproduction, shared by every execution mode.

Each stage is a plain function of a :class:`~parsl_rcylon.context.CylonContext`
and runs unchanged in two places:

* inside a ``cylon_app`` task on a warm worker of the pilot (``benchmarks/paper.py``
  wraps these functions with ``cylon_app``), and
* inside a bare ``mpiexec -n R python benchmarks/paper_job.py <stage>`` job, with a
  context built on ``MPI.COMM_WORLD`` (the bare-metal and batch modes).

So both modes read their inputs with the same ``TableRef.read_share``, run the
same engine operation and write their output with the same
``publish_result`` into the same Parquet layout; only the way the ranks are
obtained differs.  Every stage times its phases itself, on every rank, after
a barrier, and reports the slowest rank (the paper's convention).
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from parsl_rcylon.table import TableRef

#: Rows per generated chunk: chunk ``c`` of table ``t`` comes from seed ``(t, c, n)``,
#: so a table is identical whatever number of ranks generates it.
CHUNK = 1 << 20

#: Table ids of the generated inputs.
LEFT, RIGHT = 0, 1


@dataclass
class StageResult:
    """What one stage reports: its output table and where its time went.

    Times are seconds, the maximum over the stage's ranks; ``t_start`` and
    ``t_end`` are rank 0's wall-clock (epoch) times at entry and exit, used
    to show which stages overlapped.

    Attributes
    ----------
    stage : str
        ``generate``, ``join``, ``sort`` or ``warm_up``.
    ranks : int
        Ranks the stage ran on.
    rows_in, rows_out : int
        Global input rows (both sides for a join) and output rows.
    read_s, op_s, write_s : float
        Reading the input shares, the operation itself (after a barrier; its
        first run), publishing the output table.
    op_runs : list of float
        Every run of the operation when it was repeated in the same processes
        (``repeat``); the first is ``op_s``.
    total_s : float
        From entry to the end of the write, on the slowest rank.
    ref : TableRef or None
        The output table (rank 0; ``None`` on other ranks).
    info : dict
        Per-rank facts that explain timings (host, pid, usable cores, threads).
    """

    stage: str
    ranks: int
    rows_in: int = 0
    rows_out: int = 0
    read_s: float = 0.0
    op_s: float = 0.0
    write_s: float = 0.0
    op_runs: List[float] = field(default_factory=list)
    total_s: float = 0.0
    t_start: float = 0.0
    t_end: float = 0.0
    ref: Any = None
    info: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict: the table handle becomes its directory and size."""
        out = asdict(self)
        ref = out.pop("ref")
        out["table"] = None if ref is None else {"path": ref.path, "num_rows": ref.num_rows,
                                                 "nbytes": ref.nbytes, "partitions": ref.num_partitions}
        return out


# -- data ------------------------------------------------------------------------------------------


def make_rows(table_id: int, n_total: int, start: int, stop: int, key_high: Optional[int] = None) -> Any:
    """Rows ``[start, stop)`` of generated table ``table_id`` of ``n_total`` rows.

    ``key`` is uniform in ``[0, key_high)``, by default ``[0, n_total)`` (so
    a join of two such tables yields about ``n_total`` rows, as in the
    paper's benchmark), and ``v`` is uniform in ``[0, 1)``.
    """
    import pyarrow as pa

    keys, values = [], []
    if stop > start:
        for chunk in range(start // CHUNK, (stop - 1) // CHUNK + 1):
            lo, hi = chunk * CHUNK, min(n_total, (chunk + 1) * CHUNK)
            rng = np.random.default_rng([table_id, chunk, n_total])
            k = rng.integers(0, n_total if key_high is None else key_high, hi - lo, dtype=np.int64)
            v = rng.random(hi - lo)
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            keys.append(k[a:b])
            values.append(v[a:b])
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    val = np.concatenate(values) if values else np.zeros(0)
    return pa.table({"key": key, "v": val})


# -- helpers ---------------------------------------------------------------------------------------


def _ref(value: Any) -> Any:
    return value.ref if isinstance(value, StageResult) else value


def _slowest(ctx: Any, seconds: float) -> float:
    return max(ctx.comm.allgather(seconds)) if ctx.size > 1 else seconds


def _timed(ctx: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Tuple[Any, float]:
    """Run ``fn(*args, **kwargs)`` on every rank after a barrier; return its value and the slowest rank's time."""
    ctx.comm.Barrier()
    t = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, _slowest(ctx, time.perf_counter() - t)


def _rank_info(ctx: Any) -> Dict[str, Any]:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "cpus": cpus,
            "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    everyone = ctx.comm.allgather(mine) if ctx.size > 1 else [mine]
    return {"ranks": everyone}


def _publish(ctx: Any, table: Any) -> Tuple[Any, float]:
    from parsl_rcylon.table import publish_result

    return _timed(ctx, publish_result, ctx, table)


def _finish(ctx: Any, result: StageResult, t0: float, rows_out: int) -> StageResult:
    result.rows_out = rows_out
    result.total_s = _slowest(ctx, time.perf_counter() - t0)
    result.t_end = time.time()
    result.info = _rank_info(ctx)
    return result


# -- stages ----------------------------------------------------------------------------------------


def generate(ctx: Any, table_id: int, rows: int) -> StageResult:
    """Generate this rank's share of table ``table_id`` (``rows`` rows in all) and publish it."""
    from parsl_rcylon.table import share_bounds

    result = StageResult("generate", ctx.size, t_start=time.time())
    t0 = time.perf_counter()
    start, stop = share_bounds(rows, ctx.rank, ctx.size)
    table, result.op_s = _timed(ctx, make_rows, table_id, rows, start, stop)
    result.ref, result.write_s = _publish(ctx, table)
    return _finish(ctx, result, t0, rows)


# Stage inputs are annotated with TableRef so that the rank runner passes the
# handle itself (the stage times its own read); a StageResult carries one.


def _repeated(ctx: Any, result: StageResult, repeat: int, fn: Callable[..., Any], *args: Any,
              **kwargs: Any) -> Any:
    """Run the operation ``repeat`` times; keep the last output, record every time."""
    out = None
    for _ in range(max(1, repeat)):
        out = None  # the previous output goes before the next run allocates its own
        out, seconds = _timed(ctx, fn, *args, **kwargs)
        result.op_runs.append(seconds)
    result.op_s = result.op_runs[0]
    return out


def join(ctx: Any, left: TableRef | StageResult, right: TableRef | StageResult, repeat: int = 1) -> StageResult:
    """Inner join of two published tables on ``key``; publish the result.

    ``repeat`` runs the join that many times in the same processes (the
    first run is ``op_s``; all are in ``op_runs``): later runs show what a
    warm process gains over a fresh one.
    """
    result = StageResult("join", ctx.size, t_start=time.time())
    t0 = time.perf_counter()
    lref, rref = _ref(left), _ref(right)
    (lt, rt), result.read_s = _timed(ctx, lambda: (ctx.read(lref), ctx.read(rref)))
    result.rows_in = lref.num_rows + rref.num_rows
    joined = _repeated(ctx, result, repeat, ctx.join, lt, rt, on="key")
    # Inputs go before the write, as a memory-conscious stage would do.
    del lt, rt
    rows_out = ctx.num_rows(joined)
    result.ref, result.write_s = _publish(ctx, joined)
    return _finish(ctx, result, t0, rows_out)


def sort(ctx: Any, table: TableRef | StageResult, repeat: int = 1) -> StageResult:
    """Global sort of a published table by ``key``; publish the result (``repeat`` as for :func:`join`)."""
    result = StageResult("sort", ctx.size, t_start=time.time())
    t0 = time.perf_counter()
    ref = _ref(table)
    part, result.read_s = _timed(ctx, ctx.read, ref)
    result.rows_in = ref.num_rows
    ordered = _repeated(ctx, result, repeat, ctx.sort, part, by="key")
    del part
    rows_out = ctx.num_rows(ordered)
    result.ref, result.write_s = _publish(ctx, ordered)
    return _finish(ctx, result, t0, rows_out)


def warm_up(ctx: Any, rows: int = 4096) -> StageResult:
    """A small join and sort, unpublished: loads every lazily imported kernel on these ranks.

    Bare-metal jobs run it before their timed operation and the pilot's
    workers run it once after start-up, so that neither side's operation
    time includes first-call imports (DuckDB, compute kernels).
    """
    result = StageResult("warm_up", ctx.size, t_start=time.time())
    t0 = time.perf_counter()
    n = rows * ctx.size
    a = make_rows(LEFT, n, rows * ctx.rank, rows * (ctx.rank + 1))
    b = make_rows(RIGHT, n, rows * ctx.rank, rows * (ctx.rank + 1))
    joined, result.op_s = _timed(ctx, lambda: ctx.sort(ctx.join(a, b, on="key"), by="key"))
    return _finish(ctx, result, t0, ctx.num_rows(joined))


def delete_outputs(results: List[Optional[StageResult]]) -> None:
    """Remove the tables the given stages wrote (the benchmark keeps nothing it measured)."""
    for res in results:
        if res is not None and res.ref is not None:
            try:
                res.ref.delete()
            except Exception:  # already gone; the work directory is removed at the end anyway
                pass
