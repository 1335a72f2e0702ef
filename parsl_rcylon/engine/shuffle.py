"""Hash partitioning of rows across ranks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from ..options import EngineOptions
from .grouping import group_rows, take_range, to_partitions
from .hashing import hash_rows
from .prepare import prepare
from .transport import exchange_columns, exchange_counts, exchange_tables
from .validation import as_column_list, check_columns, check_hashable

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI


@dataclass
class Partitioned:
    """One rank's rows grouped by (destination rank, local bucket), not yet sent.

    Made by :func:`partition_rows`; :func:`exchange_buckets` then moves any
    range of buckets, so a caller can exchange and consume the buckets a few
    at a time and hold only those rows it has received for the current range.
    """

    table: pa.Table
    order: np.ndarray
    starts: np.ndarray
    nbuckets: int
    columnar: bool


def partition_rows(
    table: pa.Table,
    keys: Sequence[str],
    size: int,
    rank: int,
    nbuckets: int = 1,
    nulls_stay: bool = False,
    columnar: bool = False,
) -> Partitioned:
    """Hash ``table``'s rows into ``size * nbuckets`` partitions, grouped for the exchange.

    Local; see :func:`hash_partition` for the parameters.  Partition
    ``d * nbuckets + b`` is rank ``d``'s local bucket ``b``.
    """
    nparts = size * nbuckets
    hashes, any_null = hash_rows(table, keys)
    parts = to_partitions(hashes, nparts)
    del hashes
    if nulls_stay and any_null is not None:
        parts[any_null] = rank * nbuckets
    del any_null
    order, starts = group_rows(parts, nparts)
    return Partitioned(table, order, starts, nbuckets, columnar)


def exchange_buckets(comm: MPI.Intracomm, part: Partitioned, lo: int = 0, hi: Optional[int] = None, *,
                     limit: int) -> List[pa.Table]:
    """Exchange local buckets ``lo`` to ``hi - 1`` of a :func:`partition_rows` result.

    Collective: every rank passes the same range.  Returns this rank's
    buckets ``lo..hi-1``, each with rows from rank 0 first, then rank 1, ...,
    each source's rows in their original order.  ``limit`` is the most bytes
    one MPI call may move.
    """
    size = comm.Get_size()
    nb = part.nbuckets
    hi = nb if hi is None else hi
    table, order, starts = part.table, part.order, part.starts

    def provide(dst: int) -> List[pa.Table]:
        # One take per destination rank; its buckets are zero-copy slices of it.
        first, last = int(starts[dst * nb + lo]), int(starts[dst * nb + hi])
        taken = take_range(table, order, first, last)
        bounds = starts[dst * nb + lo : dst * nb + hi + 1] - first
        return [taken.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b])) for b in range(hi - lo)]

    if size == 1:
        return provide(0)
    if part.columnar:
        return _columnar_buckets(comm, part, lo, hi, limit)
    return [_concat(bucket) for bucket in exchange_tables(comm, provide, hi - lo, limit=limit)]


def hash_partition(
    comm: MPI.Intracomm,
    table: pa.Table,
    keys: Sequence[str],
    nbuckets: int = 1,
    nulls_stay: bool = False,
    columnar: bool = False,
    *,
    limit: int,
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
    limit : int
        The most bytes one MPI call may move.

    Returns
    -------
    list of pyarrow.Table
        One table per local bucket; rows arrive in source-rank order and keep
        their order within each source.
    """
    size, rank = comm.Get_size(), comm.Get_rank()
    if size * nbuckets == 1:
        return [table]
    return exchange_buckets(comm, partition_rows(table, keys, size, rank, nbuckets, nulls_stay, columnar),
                            limit=limit)


def _columnar_buckets(comm: MPI.Intracomm, part: Partitioned, lo: int, hi: int, limit: int) -> List[pa.Table]:
    """The exchange of :func:`exchange_buckets` by columns: each bucket is zero-copy slices of what arrived."""
    size, nb, k = comm.Get_size(), part.nbuckets, hi - lo
    per_part = np.diff(part.starts).reshape(size, nb)
    rows_out = np.ascontiguousarray(per_part[:, lo:hi]).reshape(-1)  # (destination, bucket), row-major
    rows_in = exchange_counts(comm, rows_out)
    if k == nb:
        order, dest_starts = part.order, part.starts[::nb]
    else:
        # This range's rows for each destination, still grouped by destination then bucket.
        order = np.concatenate([part.order[part.starts[d * nb + lo] : part.starts[d * nb + hi]] for d in range(size)])
        dest_starts = np.zeros(size + 1, dtype=np.int64)
        np.cumsum(rows_out.reshape(size, k).sum(axis=1), out=dest_starts[1:])
    mine = exchange_columns(comm, part.table, order, dest_starts, rows_in.reshape(size, k).sum(axis=1), limit=limit)
    del order
    # Each source's rows arrive grouped by bucket.
    offsets = np.zeros(size * k + 1, dtype=np.int64)
    np.cumsum(rows_in, out=offsets[1:])
    return [_concat([mine.slice(int(offsets[s * k + b]), int(rows_in[s * k + b])) for s in range(size)])
            for b in range(k)]


def _concat(tables: List[pa.Table]) -> pa.Table:
    non_empty = [t for t in tables if t.num_rows]
    if not non_empty:
        return tables[0]
    if len(non_empty) == 1:
        return non_empty[0]
    return pa.concat_tables(non_empty)


def shuffle(comm: MPI.Intracomm, table: pa.Table, on: Union[str, Sequence[str]],
            options: Optional[EngineOptions] = None) -> pa.Table:
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
    options : EngineOptions, optional
        The engine options; by default those in force now.

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

    def parse() -> List[str]:
        keys = as_column_list(on, "on")
        check_columns(table, keys, "table")
        check_hashable(table, keys, "table")
        return keys

    prepared = prepare(comm, "shuffle", [("table", table)], parse, options)
    return hash_partition(comm, prepared.tables[0], prepared.args, limit=prepared.options.max_message_bytes)[0]


__all__ = ["shuffle", "hash_partition", "partition_rows", "exchange_buckets", "Partitioned"]

