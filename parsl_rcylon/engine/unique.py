"""Distributed removal of duplicate rows."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from ..options import EngineOptions
from .prepare import prepare
from .shuffle import hash_partition
from .validation import as_column_list, check_columns, check_hashable, unused_name

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI


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
    comm: MPI.Intracomm, table: pa.Table, subset: Optional[Union[str, Sequence[str]]] = None,
    options: Optional[EngineOptions] = None,
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
    options : EngineOptions, optional
        The engine options; by default those in force now.

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

    def parse() -> List[str]:
        cols = table.column_names if subset is None else as_column_list(subset, "subset")
        check_columns(table, cols, "table", role="column")
        check_hashable(table, cols, "table")
        return cols

    prepared = prepare(comm, "unique", [("table", table)], parse, options)
    cols = prepared.args
    local = _first_occurrences(prepared.tables[0], cols)
    if comm.Get_size() == 1:
        return local
    mine = hash_partition(comm, local, cols, limit=prepared.options.max_message_bytes)[0]
    return _first_occurrences(mine, cols)


__all__ = ["unique"]
