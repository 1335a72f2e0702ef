"""Shared by tests/table/test_table.py and the mpiexec scripts: test data, digests, fake communicators.

Imported as a plain module (its directory goes on ``sys.path``), so it must not
depend on pytest.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import threading
from typing import Any, Callable, List, Sequence

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("key", pa.int64()),
        pa.field("value", pa.float64()),
        pa.field("name", pa.string()),
        pa.field("big", pa.large_string()),
        pa.field("tags", pa.list_(pa.int32())),
        pa.field("point", pa.struct([("x", pa.int64()), ("label", pa.string())])),
        pa.field("color", pa.dictionary(pa.int32(), pa.string())),
        pa.field("when", pa.timestamp("us", tz="America/New_York")),
    ],
    metadata={"source": "tablecheck"},
)

# Rows per rank for a writer of `size` ranks: some ranks hold nothing, so
# zero-row partitions sit between full ones.
BASE_ROWS = 1500


def rows_for(rank: int, size: int, kind: str = "full") -> int:
    if kind == "empty":
        return 0
    if size > 1 and rank == 1:
        return 0
    return BASE_ROWS + 37 * rank


def partition(rank: int, size: int, seed: int = 0, kind: str = "full") -> pa.Table:
    """Deterministic partition ``rank`` of a table written by ``size`` ranks."""
    n = rows_for(rank, size, kind)
    rng = np.random.default_rng([seed, rank, size])
    keys = np.arange(n, dtype=np.int64) + rank * 1_000_000
    mask = rng.random(n) < 0.1
    values = rng.normal(size=n)
    names = [None if m else f"r{rank}-{k}-é" for k, m in zip(keys, mask, strict=True)]
    big = [("x" * int(k % 50)) if k % 7 else None for k in keys]
    tags = [None if k % 11 == 0 else list(range(int(k % 4))) for k in keys]
    points = [None if k % 13 == 0 else {"x": int(k), "label": None if k % 3 else "p"} for k in keys]
    colors = pa.array([["red", "green", "blue", f"c{rank}"][int(k % 4)] for k in keys]).dictionary_encode()
    base = dt.datetime(2024, 3, 10, 1, 30, tzinfo=dt.timezone.utc)
    when = [None if k % 17 == 0 else base + dt.timedelta(minutes=int(k)) for k in keys]
    return pa.table(
        [
            pa.array(keys),
            pa.array(np.where(mask, np.nan, values), mask=mask),
            pa.array(names, pa.string()),
            pa.array(big, pa.large_string()),
            pa.array(tags, pa.list_(pa.int32())),
            pa.array(points, SCHEMA.field("point").type),
            colors,
            pa.array(when, SCHEMA.field("when").type),
        ],
        schema=SCHEMA,
    )


def source(size: int, seed: int = 0, kind: str = "full") -> pa.Table:
    return pa.concat_tables([partition(r, size, seed, kind) for r in range(size)])


def row_hashes(table: pa.Table) -> List[str]:
    """One hash per row of its Python values (dictionary columns by value)."""
    cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [hashlib.sha1(repr(row).encode()).hexdigest() for row in zip(*cols, strict=True)]


def digest(hashes: Sequence[str]) -> str:
    """Order-independent digest of a multiset of row hashes."""
    return hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()


def table_digest(table: pa.Table) -> str:
    return digest(row_hashes(table))


class SelfComm:
    """The subset of an mpi4py communicator the data plane uses, for one rank."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def allgather(self, value: Any) -> List[Any]:
        return [value]

    def gather(self, value: Any, root: int = 0) -> List[Any]:
        return [value]

    def bcast(self, value: Any, root: int = 0) -> Any:
        return value

    def Barrier(self) -> None:
        pass


class _Group:
    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=30)
        self.slots: List[Any] = [None] * size


class ThreadComm:
    """A communicator whose ranks are threads of this process (for fast multi-rank unit tests)."""

    def __init__(self, group: _Group, rank: int) -> None:
        self.group, self.rank = group, rank

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.group.size

    def allgather(self, value: Any) -> List[Any]:
        self.group.slots[self.rank] = value
        self.group.barrier.wait()
        out = list(self.group.slots)
        self.group.barrier.wait()
        return out

    def gather(self, value: Any, root: int = 0) -> Any:
        out = self.allgather(value)
        return out if self.rank == root else None

    def bcast(self, value: Any, root: int = 0) -> Any:
        return self.allgather(value)[root]

    def Barrier(self) -> None:
        self.group.barrier.wait()


def run_ranks(size: int, fn: Callable[[Any], Any]) -> List[Any]:
    """Run ``fn(comm)`` on ``size`` thread ranks; returns each rank's result or exception."""
    group = _Group(size)
    results: List[Any] = [None] * size

    def target(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(group, rank))
        except BaseException as err:  # returned to the test to assert on
            results[rank] = err

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results
