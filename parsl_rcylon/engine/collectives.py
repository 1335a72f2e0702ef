"""Table-level collectives: row counts, gather, rebalance, concat."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..options import EngineOptions
from .agreement import agree
from .errors import InvalidArgumentError, SchemaMismatchError
from .prepare import prepare
from .schemas import canonical_schema, schema_difference
from .shares import share_bounds
from .transport import exchange_tables
from .validation import check_table

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI


def num_rows(comm: MPI.Intracomm, table: pa.Table) -> int:
    """Total number of rows over all ranks, returned on every rank.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator; collective over all its ranks.
    table : pyarrow.Table
        This rank's partition.

    Returns
    -------
    int
        The global row count.
    """

    def validate() -> int:
        check_table(table, "table")
        return table.num_rows

    consensus = agree(comm, "num_rows", validate)
    return int(sum(consensus.metas))


def gather(comm: MPI.Intracomm, table: pa.Table, root: int = 0,
           options: Optional[EngineOptions] = None) -> Optional[pa.Table]:
    """The whole table on ``root`` (ranks' partitions in rank order), None elsewhere.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator; collective over all its ranks.
    table : pyarrow.Table
        This rank's partition.
    root : int
        Rank that receives the table.
    options : EngineOptions, optional
        The engine options; by default those in force now.

    Returns
    -------
    pyarrow.Table or None
        The concatenated table on ``root``; None on other ranks.
    """
    size = comm.Get_size()

    def parse() -> None:
        if not isinstance(root, (int, np.integer)) or not 0 <= root < size:
            raise InvalidArgumentError(f"root={root!r} is not a rank of this {size}-rank communicator")

    prepared = prepare(comm, "gather", [("table", table)], parse, options)
    table = prepared.tables[0]
    empty = table.schema.empty_table()
    received = exchange_tables(comm, lambda dst: [table if dst == root else empty],
                               limit=prepared.options.max_message_bytes)[0]
    if comm.Get_rank() != root:
        return None
    return pa.concat_tables(received)


def rebalance(comm: MPI.Intracomm, table: pa.Table, options: Optional[EngineOptions] = None) -> pa.Table:
    """Even out row counts across ranks, keeping the global row order.

    Rank ``r`` ends up with rows ``share_bounds(N, r, size)`` of the whole
    table, so counts differ by at most one.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator; collective over all its ranks.
    table : pyarrow.Table
        This rank's partition.
    options : EngineOptions, optional
        The engine options; by default those in force now.

    Returns
    -------
    pyarrow.Table
        This rank's new partition.
    """
    prepared = prepare(comm, "rebalance", [("table", table)], options=options)
    table, counts = prepared.tables[0], prepared.rows()
    size, rank = comm.Get_size(), comm.Get_rank()
    total = sum(counts)
    start = sum(counts[:rank])
    stop = start + table.num_rows

    def provide(dst: int) -> List[pa.Table]:
        share_start, share_stop = share_bounds(total, dst, size)
        lo, hi = max(start, share_start), min(stop, share_stop)
        return [table.slice(lo - start, max(0, hi - lo))]

    received = [t for t in exchange_tables(comm, provide, limit=prepared.options.max_message_bytes)[0]
                if t.num_rows]
    if not received:
        return table.schema.empty_table()
    return received[0] if len(received) == 1 else pa.concat_tables(received)


def concat(comm: MPI.Intracomm, tables: Sequence[pa.Table], options: Optional[EngineOptions] = None) -> pa.Table:
    """Concatenate several partitioned tables (no data moves).

    Each rank concatenates its partitions of the tables; as a multiset of
    rows the result is the concatenation of the whole tables.  Rows stay on
    their rank, so the global order is rank-major (call :func:`rebalance` or
    :func:`sort` afterwards when order or balance matters).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator; collective over all its ranks.
    tables : sequence of pyarrow.Table
        This rank's partition of each table, the same number on every rank.
    options : EngineOptions, optional
        The engine options; by default those in force now.

    Returns
    -------
    pyarrow.Table
        This rank's partition of the concatenation.

    Raises
    ------
    SchemaMismatchError
        On every rank, when the tables' columns or types differ.
    """

    # Anything but a list or tuple is refused by parse(), on every rank.
    named = [] if isinstance(tables, pa.Table) or not isinstance(tables, (list, tuple)) else [
        (f"tables[{i}]", t) for i, t in enumerate(tables)]

    def parse() -> None:
        if not isinstance(tables, (list, tuple)):
            raise InvalidArgumentError("concat takes a list of tables")
        if not tables:
            raise InvalidArgumentError("concat needs at least one table")
        first = canonical_schema(tables[0].schema)
        for i, t in enumerate(tables[1:], start=1):
            if not canonical_schema(t.schema).equals(first):
                how = schema_difference(tables[0].schema, t.schema, "tables[0]", f"tables[{i}]")
                raise SchemaMismatchError(f"tables[{i}] differs from tables[0]: {how}")

    prepared = prepare(comm, "concat", named, parse, options)
    return pa.concat_tables(prepared.tables)


__all__ = ["num_rows", "gather", "rebalance", "concat"]
