"""Distributed removal of duplicate rows."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from .agreement import agree
from .shuffle import hash_partition
from .validation import (
    as_column_list,
    canonical_schema,
    check_columns,
    check_hashable,
    check_same_schema,
    check_table,
    conform,
    signature,
    unused_name,
)

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI

logger = logging.getLogger(__name__)


def _first_occurrences(table: pa.Table, subset: Sequence[str]) -> pa.Table:
    """Rows of ``table`` whose ``subset`` values appear for the first time, in order."""
    if table.num_rows == 0:
        return table
    row = unused_name(table.schema, "__row")
    positions = pa.array(np.arange(table.num_rows, dtype=np.int64))
    indexed = table.select(list(subset)).append_column(row, positions)
    firsts = indexed.group_by(list(subset), use_threads=False).aggregate([(row, "min")]).column(f"{row}_min")
    return table.take(pa.array(np.sort(firsts.to_numpy())))


def unique(
    comm: MPI.Intracomm, table: pa.Table, subset: Optional[Union[str, Sequence[str]]] = None
) -> pa.Table:
    """Drop duplicate rows, keeping each row's first occurrence in the whole table.

    Every rank drops its own duplicates first, so only distinct rows travel;
    after the hash shuffle, rows arrive in global order and the first one of
    each key is kept.  Nulls compare equal to each other here, as in
    pyarrow's group_by and pandas' ``drop_duplicates``.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator; collective over all its ranks.
    table : pyarrow.Table
        This rank's partition.
    subset : str or list of str, optional
        Columns that define a duplicate; all columns by default.

    Returns
    -------
    pyarrow.Table
        This rank's share of the distinct rows (all columns), in global
        first-occurrence order within the rank.

    Raises
    ------
    MissingColumnError, SchemaMismatchError, UnsupportedTypeError, InvalidArgumentError
        On every rank, when any rank's input is bad.
    """

    def columns() -> list:
        return table.column_names if subset is None else as_column_list(subset, "subset")

    def validate() -> tuple:
        check_table(table, "table")
        cols = columns()
        check_columns(table, cols, "table", role="column")
        check_hashable(table, cols, "table")
        return signature(table.schema), table.num_rows

    consensus = agree(comm, "unique", validate)
    check_same_schema("unique", "table", [m[0] for m in consensus.metas])
    cols = columns()
    local = _first_occurrences(conform(table, canonical_schema(table.schema)), cols)
    if comm.Get_size() == 1:
        return local
    mine = hash_partition(comm, local, cols)[0]
    return _first_occurrences(mine, cols)


__all__ = ["unique"]
