"""Local join kernels: pyarrow's Acero hash join, or DuckDB where it is installed.

Both give exactly pyarrow ``Table.join``'s result (columns, names, types, null
keys never matching); only the speed differs.  DuckDB joined the engine's
hash buckets with less CPU than Acero (docs/engine.md), so it is used when
importable and the tables' types survive its round trip exactly; otherwise,
or with the engine option ``join_kernel="acero"``, Acero runs.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

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


__all__ = ["acero_join", "duckdb_join", "fetch_arrow"]
