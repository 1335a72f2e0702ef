"""Balanced shares: which rows of a table each rank holds.

Rank ``r`` of ``n`` holds rows ``[N*r//n, N*(r+1)//n)`` of an ``N``-row
table, so shares differ by at most one row and follow the table's order.
:func:`~.collectives.rebalance` moves rows into these shares, and a task
reading a ``TableRef`` argument reads its share of the stored table.
"""
from __future__ import annotations

from typing import Tuple


def share_bounds(num_rows: int, rank: int, size: int) -> Tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` of ``size``: shares differ by at most one row."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a group of {size}")
    return num_rows * rank // size, num_rows * (rank + 1) // size


__all__ = ["share_bounds"]
