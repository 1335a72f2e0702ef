"""The local kernels: which sort, join and group-by code runs on this machine.

**Join.** pyarrow's Acero hash join, or DuckDB (a requirement of the
package, so installed by default).  Both give exactly pyarrow
``Table.join``'s result (columns, names, types, null keys never matching);
only the speed differs.  DuckDB joined the engine's hash buckets with less
CPU than Acero (docs/engine.md), so it is used when importable and the
tables' types survive its round trip exactly; otherwise, or with the engine
option ``join_kernel="acero"``, Acero runs.

**Sort.** The packed 64-bit codes of ``localsort`` are sorted by ``np.sort``
where numpy has a fast SIMD sort for them, and by ``radixsort`` where it has
not: on AMD family 25 CPUs with AVX-512 (Zen 4) numpy dispatches its AVX-512
sort, whose memory-destination ``VPCOMPRESSQ`` is microcoded there (7x slower
than numpy's AVX2 sort on the same CPU, docs/engine.md), and on CPUs with no
SIMD sort for 64-bit integers.  The choice is made once per process from
numpy's CPU features and ``/proc/cpuinfo`` (deterministic, no timing);
``PARSL_RCYLON_SORT_KERNEL=numpy|radix`` overrides it.

:func:`active_kernels` says which kernels run here (``parsl-rcylon doctor``
prints it).
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa

logger = logging.getLogger(__name__)

JoinFn = Callable[[pa.Table, pa.Table], pa.Table]


def acero_join(lk: Sequence[str], rk: Sequence[str], join_type: str, lsuf: Optional[str], rsuf: Optional[str],
               use_threads: bool) -> JoinFn:
    """A bucket join with pyarrow's Acero hash join."""

    def run(left: pa.Table, right: pa.Table) -> pa.Table:
        return left.join(right, keys=list(lk), right_keys=list(rk), join_type=join_type, left_suffix=lsuf,
                         right_suffix=rsuf, use_threads=use_threads)

    return run


def _round_trips(dtype: pa.DataType) -> bool:
    """Types DuckDB hands back as the same Arrow type (or one cast back losslessly)."""
    return (
        pa.types.is_integer(dtype)
        or pa.types.is_floating(dtype) and not pa.types.is_float16(dtype)
        or pa.types.is_boolean(dtype)
        or pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_date32(dtype)
        or (pa.types.is_timestamp(dtype) and dtype.tz is None)
    )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _output_columns(lnames: Sequence[str], rnames: Sequence[str], lk: Sequence[str], rk: Sequence[str],
                    join_type: str, lsuf: Optional[str], rsuf: Optional[str]) -> Optional[List[tuple]]:
    """``(name, SQL expression)`` per output column, following pyarrow's rules.

    pyarrow keeps the left columns then the right ones, drops the right keys
    (the left keys for a right outer join), coalesces the keys of a full
    outer join, and suffixes only names that appear on both sides.
    """
    if join_type in ("left semi", "left anti"):
        return [(c, f"l.{_quote(c)}") for c in lnames]
    if join_type in ("right semi", "right anti"):
        return [(c, f"r.{_quote(c)}") for c in rnames]
    right_outer = join_type == "right outer"
    left_out = [c for c in lnames if not (right_outer and c in lk)]
    right_out = [c for c in rnames if right_outer or c not in rk]
    clash = set(left_out) & set(right_out)
    columns = []
    for c in left_out:
        name = c + (lsuf or "") if c in clash else c
        expr = f"l.{_quote(c)}"
        if join_type == "full outer" and c in lk:
            expr = f"COALESCE({expr}, r.{_quote(rk[list(lk).index(c)])})"
        columns.append((name, expr))
    for c in right_out:
        columns.append((c + (rsuf or "") if c in clash else c, f"r.{_quote(c)}"))
    return columns


_SQL_JOIN = {"inner": "JOIN", "left outer": "LEFT JOIN", "right outer": "RIGHT JOIN",
             "full outer": "FULL OUTER JOIN", "left semi": "SEMI JOIN", "left anti": "ANTI JOIN",
             "right semi": "SEMI JOIN", "right anti": "ANTI JOIN"}


def duckdb_join(left_schema: pa.Schema, right_schema: pa.Schema, lk: Sequence[str], rk: Sequence[str],
                join_type: str, lsuf: Optional[str], rsuf: Optional[str], expected: pa.Schema,
                threads: int, choice: str = "auto") -> Optional[Any]:
    """A bucket join run by DuckDB, or None where it cannot give pyarrow's exact result.

    ``choice`` is the engine option ``join_kernel``: ``auto`` (DuckDB when
    importable and applicable), ``duckdb`` (the same, with a warning when it
    is not importable) or ``acero`` (never DuckDB).
    """
    if choice == "acero":
        return None
    try:
        import duckdb
    except ImportError:
        if choice == "duckdb":
            logger.warning("join_kernel='duckdb' but duckdb is not importable: using Acero")
        return None
    if not all(_round_trips(f.type) for f in list(left_schema) + list(right_schema)):
        return None
    if any(pa.types.is_floating(left_schema.field(k).type) for k in lk):
        return None  # DuckDB matches NaN with NaN and -0.0 with 0.0; Acero compares bits
    columns = _output_columns(left_schema.names, right_schema.names, lk, rk, join_type, lsuf, rsuf)
    if columns is None or [c[0] for c in columns] != expected.names:
        logger.debug("join: DuckDB column mapping differs from pyarrow's; using Acero")
        return None
    on = " AND ".join(f"l.{_quote(a)} = r.{_quote(b)}" for a, b in zip(lk, rk, strict=True))
    select = ", ".join(f"{expr} AS {_quote(name)}" for name, expr in columns)
    if join_type in ("right semi", "right anti"):
        query = f"SELECT {select} FROM r {_SQL_JOIN[join_type]} l ON {on}"
    else:
        query = f"SELECT {select} FROM l {_SQL_JOIN[join_type]} r ON {on}"
    return _DuckJoin(duckdb, query, expected, threads)


def fetch_arrow(relation: Any) -> pa.Table:
    """A DuckDB relation's result as an Arrow table."""
    # DuckDB renamed its Arrow export across releases; take what this one has.
    for name in ("to_arrow_table", "fetch_arrow_table"):
        method = getattr(relation, name, None)
        if method is not None:
            return method()
    out = relation.arrow()
    return out.read_all() if hasattr(out, "read_all") else out


class _Connections:
    """Idle in-memory DuckDB connections, by thread count, kept between joins.

    Opening one costs a noticeable part of a small join (docs/engine.md), so
    a connection goes back here after each bucket join instead of being closed; nothing
    stays registered on it.  DuckDB is not fork-safe: with a connection open,
    the child of Radical Pilot's proxy fork of the client crashed (SIGSEGV
    in ``fork``).  So every idle connection is closed just before this
    process forks; a join running in another thread at that moment keeps its
    own.  Row order is unspecified in the engine's joins, so DuckDB may skip
    preserving it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: Dict[int, List[Any]] = {}

    def acquire(self, duckdb: Any, threads: int) -> Any:
        with self._lock:
            idle = self._idle.get(threads)
            if idle:
                return idle.pop()
        return duckdb.connect(config={"threads": threads, "preserve_insertion_order": False})

    def release(self, con: Any, threads: int) -> None:
        with self._lock:
            self._idle.setdefault(threads, []).append(con)

    def idle(self) -> int:
        with self._lock:
            return sum(len(cons) for cons in self._idle.values())

    def close_idle(self) -> None:
        with self._lock:
            cons = [con for idle in self._idle.values() for con in idle]
            self._idle.clear()
        for con in cons:
            con.close()


_connections = _Connections()
os.register_at_fork(before=_connections.close_idle)


class _DuckJoin:
    """Joins bucket after bucket, each on an idle DuckDB connection."""

    def __init__(self, duckdb: Any, query: str, expected: pa.Schema, threads: int) -> None:
        self.duckdb = duckdb
        self.query = query
        self.expected = expected
        self.threads = max(1, threads)

    def __call__(self, left: pa.Table, right: pa.Table) -> pa.Table:
        con = _connections.acquire(self.duckdb, self.threads)
        try:
            con.register("l", left)
            con.register("r", right)
            try:
                out = fetch_arrow(con.sql(self.query))
            finally:
                con.unregister("l")
                con.unregister("r")
        finally:
            _connections.release(con, self.threads)
        if not out.schema.equals(self.expected):
            # DuckDB returns large strings as strings, and so on: cast back (lossless here).
            out = out.cast(self.expected)
        return out


# -- the sort kernel ---------------------------------------------------------------------------------

#: Local sort kernels of the packed codes; ``auto`` picks one for this CPU.
SORT_KERNELS = ("auto", "numpy", "radix")
SORT_KERNEL_ENV = "PARSL_RCYLON_SORT_KERNEL"


def numpy_simd_features() -> Dict[str, List[str]]:
    """numpy's SIMD extensions here: ``baseline``, ``dispatch`` (built) and ``found`` (enabled at runtime)."""
    try:
        from numpy._core import _multiarray_umath as umath  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import _multiarray_umath as umath
    features = getattr(umath, "__cpu_features__", {})
    return {"baseline": list(getattr(umath, "__cpu_baseline__", [])),
            "dispatch": list(getattr(umath, "__cpu_dispatch__", [])),
            "found": [name for name, on in features.items() if on]}


def cpu_model() -> Dict[str, Any]:
    """``model``, ``vendor`` and ``family`` of this CPU from ``/proc/cpuinfo`` (what is known)."""
    info: Dict[str, Any] = {"model": platform.processor() or platform.machine(), "vendor": None, "family": None}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                name, value = name.strip(), value.strip()
                if name == "model name":
                    info["model"] = value
                elif name == "vendor_id":
                    info["vendor"] = value
                elif name == "cpu family":
                    info["family"] = int(value)
                elif not name and info["vendor"]:
                    break  # the first processor's block is enough
    except (OSError, ValueError):
        pass
    return info


def numpy_sort_target(found: Sequence[str]) -> str:
    """Which of numpy's sorts ``np.sort`` of int64/uint64 runs, from its enabled CPU features.

    x86: x86-simd-sort's AVX-512 (``X86_V4``, before numpy 2.4 ``AVX512_SKX``)
    or AVX2 (``X86_V3``/``AVX2``) paths, else numpy's scalar introsort;
    aarch64: Highway's vqsort on ASIMD/SVE.
    """
    on = set(found)
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if on & {"X86_V4", "AVX512_SKX"}:
            return "avx512"
        if on & {"X86_V3", "AVX2"}:
            return "avx2"
        return "scalar"
    if machine in ("aarch64", "arm64") and on & {"ASIMD", "SVE"}:
        return "highway"
    return "scalar"


def choose_sort_kernel(target: str, cpu: Dict[str, Any]) -> Tuple[str, str]:
    """``(kernel, why)`` for numpy's sort ``target`` on ``cpu`` (the rule; no environment)."""
    if target == "avx512" and cpu.get("vendor") == "AuthenticAMD" and cpu.get("family") == 25:
        return "radix", ("numpy's AVX-512 sort on an AMD family 25 CPU (Zen 4) is slow: its memory-destination "
                         "VPCOMPRESSQ is microcoded there")
    if target == "scalar":
        return "radix", "numpy has no SIMD sort for 64-bit integers on this CPU"
    return "numpy", f"numpy's {target} sort"


@functools.lru_cache(maxsize=1)
def _auto_sort_kernel() -> Tuple[str, str]:
    return choose_sort_kernel(numpy_sort_target(numpy_simd_features()["found"]), cpu_model())


def sort_kernel() -> Tuple[str, str]:
    """``(kernel, why)``: the local sort kernel in force now (``numpy`` or ``radix``).

    ``PARSL_RCYLON_SORT_KERNEL`` (``auto``, ``numpy``, ``radix``) is read on
    every call; ``auto`` (the default) takes the rule's choice for this CPU,
    made once per process.

    Raises
    ------
    InvalidArgumentError
        When the environment variable names no kernel.
    """
    value = os.environ.get(SORT_KERNEL_ENV, "auto").strip().lower() or "auto"
    if value not in SORT_KERNELS:
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(f"{SORT_KERNEL_ENV}={value!r}: use one of {', '.join(SORT_KERNELS)}")
    if value != "auto":
        return value, f"{SORT_KERNEL_ENV}={value}"
    return _auto_sort_kernel()


# -- report -------------------------------------------------------------------------------------------


def active_kernels() -> Dict[str, Any]:
    """The local kernels this process runs, and why: ``sort``, ``join``, ``groupby``, ``cpu``, ``numpy_simd``.

    ``parsl-rcylon doctor`` prints it; ``benchmarks/ops.py`` records it.
    """
    import numpy as np

    from ..options import EngineOptions

    simd = numpy_simd_features()
    target = numpy_sort_target(simd["found"])
    try:
        kernel, why = sort_kernel()
    except Exception as err:  # a bad override: report it rather than fail the report
        kernel, why = "numpy", f"{type(err).__name__}: {err}"
    try:
        import duckdb

        duck: Optional[str] = duckdb.__version__
    except ImportError:
        duck = None
    try:
        choice = EngineOptions.resolve().join_kernel
    except Exception:  # a bad PARSL_RCYLON_JOIN_KERNEL: the operations raise it, the report shows auto's
        choice = "auto"
    if choice == "acero" or duck is None:
        join = {"kernel": "acero", "why": "join_kernel='acero'" if choice == "acero" else
                "duckdb is not importable (pip install duckdb): Acero, about 1.8x slower here"}
    else:
        join = {"kernel": "duckdb", "why": f"duckdb {duck} (Acero for types DuckDB does not round-trip exactly "
                "and float keys)"}
    return {
        "sort": {"kernel": kernel, "why": why, "numpy": np.__version__, "numpy_sort": target},
        "join": join,
        "groupby": {"kernel": "numpy bincount / pyarrow hash",
                    "why": "np.bincount for one dense integer key with sum/mean/count, pyarrow's hash "
                    "aggregation otherwise"},
        "cpu": cpu_model(),
        "numpy_simd": simd,
    }


def kernel_lines() -> List[str]:
    """:func:`active_kernels` as short lines, for ``parsl-rcylon doctor``."""
    k = active_kernels()
    cpu = k["cpu"]
    return [f"sort: {k['sort']['kernel']} ({k['sort']['why']}; numpy {k['sort']['numpy']}, "
            f"SIMD found: {' '.join(k['numpy_simd']['found'][-4:]) or 'none'})",
            f"join: {k['join']['kernel']} ({k['join']['why']})",
            f"group-by: {k['groupby']['kernel']}",
            f"cpu: {cpu['model']} (vendor {cpu['vendor']}, family {cpu['family']})"]


__all__ = ["acero_join", "duckdb_join", "fetch_arrow", "active_kernels", "kernel_lines", "sort_kernel",
           "choose_sort_kernel", "numpy_sort_target", "numpy_simd_features", "cpu_model", "SORT_KERNELS"]
