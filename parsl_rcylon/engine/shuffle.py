"""Hash partitioning of rows across ranks."""
from __future__ import annotations

import logging
import time
from typing import List, Sequence, Union

import numpy as np
import pyarrow as pa
from mpi4py import MPI

from .hashing import group_rows, hash_rows, take_range, to_partitions
from .transport import agree, exchange_columns, exchange_tables
from .validation import (
    as_column_list,
    canonical_schema,
    check_columns,
    check_hashable,
    check_same_schema,
    check_table,
    conform,
    signature,
)

logger = logging.getLogger(__name__)


def hash_partition(
    comm: MPI.Intracomm,
    table: pa.Table,
    keys: Sequence[str],
    nbuckets: int = 1,
    nulls_stay: bool = False,
    columnar: bool = False,
) -> List[pa.Table]:
    """Exchange rows so that equal keys meet on one rank, in one local bucket.

    Collective; the caller has already validated and conformed ``table``.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        Communicator.
    table : pyarrow.Table
        This rank's rows.
    keys : sequence of str
        Key columns.
    nbuckets : int
        Local buckets per rank: rows are split into ``size * nbuckets`` hash
        partitions, so a local kernel can then work on cache-sized pieces
        without a second partitioning pass.
    nulls_stay : bool
        Keep rows with a null key on this rank (bucket 0).  Right for joins,
        where a null key matches nothing, and it keeps a column full of nulls
        from piling onto one rank.  Grouping needs them together instead.
    columnar : bool
        Move the rows with :func:`~.transport.exchange_columns`: only for
        tables it accepts, and the caller must decide the same on every rank.

    Returns
    -------
    list of pyarrow.Table
        One table per local bucket; rows arrive in source-rank order and keep
        their order within each source.
    """
    size, rank = comm.Get_size(), comm.Get_rank()
    nparts = size * nbuckets
    if nparts == 1:
        return [table]
    start = time.perf_counter()
    hashes, any_null = hash_rows(table, keys)
    parts = to_partitions(hashes, nparts)
    del hashes
    if nulls_stay and any_null is not None:
        parts[any_null] = rank * nbuckets
    del any_null
    order, starts = group_rows(parts, nparts)
    del parts
    grouped = time.perf_counter()

    def provide(dst: int) -> List[pa.Table]:
        # One take per destination rank; its buckets are zero-copy slices of it.
        lo, hi = int(starts[dst * nbuckets]), int(starts[(dst + 1) * nbuckets])
        taken = take_range(table, order, lo, hi)
        bounds = starts[dst * nbuckets : (dst + 1) * nbuckets + 1] - lo
        return [taken.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b])) for b in range(nbuckets)]

    if size == 1:
        return provide(0)
    if columnar:
        buckets = _columnar_buckets(comm, table, order, starts, nbuckets)
        order = None
        return buckets
    received = exchange_tables(comm, provide, nbuckets)
    order = None  # drops the closure's reference as well
    logger.debug("hash_partition of %d rows into %d x %d: hash+group %.3f s, take+exchange %.3f s",
                 table.num_rows, size, nbuckets, grouped - start, time.perf_counter() - grouped)
    return [_concat(bucket) for bucket in received]


def _columnar_buckets(comm: MPI.Intracomm, table: pa.Table, order: np.ndarray, starts: np.ndarray,
                      nbuckets: int) -> List[pa.Table]:
    """The exchange of :func:`hash_partition` by columns: each bucket is zero-copy slices of what arrived."""
    size = comm.Get_size()
    rows_out = np.diff(starts).astype(np.int64)  # (destination, bucket), row-major
    rows_in = np.empty(size * nbuckets, dtype=np.int64)
    comm.Alltoall([rows_out, MPI.INT64_T], [rows_in, MPI.INT64_T])
    mine = exchange_columns(comm, table, order, starts[::nbuckets])
    # Each source's rows arrive grouped by bucket (the order groups by destination, then bucket).
    offsets = np.zeros(size * nbuckets + 1, dtype=np.int64)
    np.cumsum(rows_in, out=offsets[1:])
    return [_concat([mine.slice(int(offsets[s * nbuckets + b]), int(rows_in[s * nbuckets + b]))
                     for s in range(size)]) for b in range(nbuckets)]


def _concat(tables: List[pa.Table]) -> pa.Table:
    non_empty = [t for t in tables if t.num_rows]
    if not non_empty:
        return tables[0]
    if len(non_empty) == 1:
        return non_empty[0]
    return pa.concat_tables(non_empty)


def shuffle(comm: MPI.Intracomm, table: pa.Table, on: Union[str, Sequence[str]]) -> pa.Table:
    """Hash-partition rows by key column(s) across the ranks.

    Every row with a given key (nulls included, all alike) ends up on the same
    rank; which rank is a function of the key only.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator; collective over all its ranks.
    table : pyarrow.Table
        This rank's partition (may be empty).
    on : str or list of str
        Key column(s).

    Returns
    -------
    pyarrow.Table
        This rank's partition of the shuffled table: rows from rank 0 first,
        then rank 1, ..., each in its original order.

    Raises
    ------
    MissingColumnError, UnsupportedTypeError, SchemaMismatchError, InvalidArgumentError
        On every rank, when any rank's input is bad.
    """

    def validate() -> tuple:
        check_table(table, "table")
        keys = as_column_list(on, "on")
        check_columns(table, keys, "table")
        check_hashable(table, keys, "table")
        return signature(table.schema), table.num_rows

    consensus = agree(comm, "shuffle", validate)
    check_same_schema("shuffle", "table", [m[0] for m in consensus.metas])
    keys = as_column_list(on, "on")
    schema = canonical_schema(table.schema)
    return hash_partition(comm, conform(table, schema), keys)[0]


__all__ = ["shuffle", "hash_partition"]

