"""Table-level collectives: row counts, gather, rebalance, concat."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np
import pyarrow as pa

from .agreement import agree
from .errors import InvalidArgumentError, SchemaMismatchError
from .transport import exchange_tables
from .validation import canonical_schema, check_same_schema, check_table, conform, signature

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI

logger = logging.getLogger(__name__)


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


def _validated(comm: MPI.Intracomm, op: str, table: pa.Table) -> tuple:
    def validate() -> tuple:
        check_table(table, "table")
        return signature(table.schema), table.num_rows

    consensus = agree(comm, op, validate)
    check_same_schema(op, "table", [m[0] for m in consensus.metas])
    return conform(table, canonical_schema(table.schema)), [m[1] for m in consensus.metas]


def gather(comm: MPI.Intracomm, table: pa.Table, root: int = 0) -> Optional[pa.Table]:
    """The whole table on ``root`` (ranks' partitions in rank order), None elsewhere.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator; collective over all its ranks.
    table : pyarrow.Table
        This rank's partition.
    root : int
        Rank that receives the table.

    Returns
    -------
    pyarrow.Table or None
        The concatenated table on ``root``; None on other ranks.
    """
    size = comm.Get_size()

    def validate() -> tuple:
        if not isinstance(root, (int, np.integer)) or not 0 <= root < size:
            raise InvalidArgumentError(f"root={root!r} is not a rank of this {size}-rank communicator")
        check_table(table, "table")
        return signature(table.schema), table.num_rows

    consensus = agree(comm, "gather", validate)
    check_same_schema("gather", "table", [m[0] for m in consensus.metas])
    table = conform(table, canonical_schema(table.schema))
    empty = table.schema.empty_table()
    received = exchange_tables(comm, lambda dst: [table if dst == root else empty])[0]
    if comm.Get_rank() != root:
        return None
    return pa.concat_tables(received)


def rebalance(comm: MPI.Intracomm, table: pa.Table) -> pa.Table:
    """Even out row counts across ranks, keeping the global row order.

    Rank ``r`` ends up with rows ``[r*N//size, (r+1)*N//size)`` of the whole
    table, so counts differ by at most one.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator; collective over all its ranks.
    table : pyarrow.Table
        This rank's partition.

    Returns
    -------
    pyarrow.Table
        This rank's new partition.
    """
    table, counts = _validated(comm, "rebalance", table)
    size, rank = comm.Get_size(), comm.Get_rank()
    total = sum(counts)
    start = sum(counts[:rank])
    stop = start + table.num_rows

    def provide(dst: int) -> List[pa.Table]:
        lo = max(start, dst * total // size)
        hi = min(stop, (dst + 1) * total // size)
        return [table.slice(lo - start, max(0, hi - lo))]

    received = [t for t in exchange_tables(comm, provide)[0] if t.num_rows]
    if not received:
        return table.schema.empty_table()
    return received[0] if len(received) == 1 else pa.concat_tables(received)


def concat(comm: MPI.Intracomm, tables: Sequence[pa.Table]) -> pa.Table:
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

    Returns
    -------
    pyarrow.Table
        This rank's partition of the concatenation.

    Raises
    ------
    SchemaMismatchError
        On every rank, when the tables' columns or types differ.
    """

    def validate() -> tuple:
        if isinstance(tables, pa.Table) or not isinstance(tables, (list, tuple)):
            raise InvalidArgumentError("concat takes a list of tables")
        if not tables:
            raise InvalidArgumentError("concat needs at least one table")
        for i, t in enumerate(tables):
            check_table(t, f"tables[{i}]")
        first = signature(tables[0].schema)
        for i, t in enumerate(tables[1:], start=1):
            if signature(t.schema) != first:
                raise SchemaMismatchError(
                    f"tables[{i}] has schema {t.schema.to_string(show_schema_metadata=False)!r} "
                    f"but tables[0] has {tables[0].schema.to_string(show_schema_metadata=False)!r}"
                )
        return first, len(tables)

    consensus = agree(comm, "concat", validate)
    counts = {m[1] for m in consensus.metas}
    if len(counts) > 1:
        raise InvalidArgumentError(f"concat: ranks passed different numbers of tables: {sorted(counts)}")
    check_same_schema("concat", "tables", [m[0] for m in consensus.metas])
    schema = canonical_schema(tables[0].schema)
    return pa.concat_tables([conform(t, schema) for t in tables])


__all__ = ["num_rows", "gather", "rebalance", "concat"]
