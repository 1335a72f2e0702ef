"""Row grouping: hashes to partition ids, partition ids to a grouped row order.

The hash shuffle, the join's buckets and the sort's destinations all end the
same way: each row has a small partition id, the rows are put in an order that
groups them by id (stably, so rows keep their input order within a group), and
each group is then taken or sent as one range of that order.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pyarrow as pa

#: Up to this many partitions, rows are grouped by one scan per partition.
_FEW_PARTS = 8


def _small_dtype(nparts: int) -> type:
    return np.uint8 if nparts <= 256 else (np.uint16 if nparts <= 65536 else np.uint32)


def to_partitions(hashes: np.ndarray, nparts: int) -> np.ndarray:
    """Map hashes to ``[0, nparts)`` with Lemire's multiply-shift (no modulo).

    Works in place on ``hashes`` (which is garbage afterwards) and returns the
    smallest unsigned dtype that holds the ids, to keep per-row temporaries small.
    """
    small = _small_dtype(nparts)
    if nparts == 1:
        return np.zeros(len(hashes), dtype=small)
    hashes >>= np.uint64(32)
    hashes *= np.uint64(nparts)
    hashes >>= np.uint64(32)
    return hashes.astype(small)


def group_rows(parts: np.ndarray, nparts: int) -> Tuple[np.ndarray, np.ndarray]:
    """Row order that groups rows by partition id, stably, and the group offsets.

    numpy's stable sort of 8/16-bit integers is a radix sort, O(n).  The
    order is returned as int32 when it fits (half the memory of int64, and
    Arrow's ``take`` accepts it).

    Returns
    -------
    order : numpy.ndarray
        Row indices, partition 0's rows first, each partition in input order.
    starts : numpy.ndarray of int64
        ``order[starts[i]:starts[i+1]]`` are partition ``i``'s rows.
    """
    small = _small_dtype(nparts)
    parts = parts if parts.dtype == small else parts.astype(small)
    counts = np.bincount(parts, minlength=nparts)
    starts = np.zeros(nparts + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    index_type = np.int32 if len(parts) < 2**31 - 1 else np.int64
    if nparts <= _FEW_PARTS:
        # A few partitions: fill the order partition by partition, straight into
        # the narrow index type (no full-length int64 argsort result).
        order = np.empty(len(parts), dtype=index_type)
        for i in range(nparts):
            if counts[i]:
                order[starts[i] : starts[i + 1]] = np.flatnonzero(parts == i)
        return order, starts
    return np.argsort(parts, kind="stable").astype(index_type), starts


def take_range(table: pa.Table, order: np.ndarray, lo: int, hi: int) -> pa.Table:
    """``table``'s rows ``order[lo:hi]`` as a new table (an empty slice when none)."""
    if hi <= lo:
        return table.slice(0, 0)
    return table.take(pa.array(order[lo:hi]))


__all__ = ["to_partitions", "group_rows", "take_range"]
