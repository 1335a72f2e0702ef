"""A radix sort of uint64 codes built from numpy calls that avoid its partitioning sort.

For CPUs where ``np.sort`` of 64-bit integers is slow (see ``kernels.sort_kernel``):
numpy's AVX-512 sort on AMD Zen 4, where the memory-destination
``VPCOMPRESSQ`` its partition step runs on every vector is microcoded, and
CPUs with no SIMD sort at all.  One most-significant-digit pass buckets the
codes by their top 16 (or fewer) bits: numpy's stable ``argsort`` of a uint16
digit is a counting sort, no comparisons.  The buckets, about
:data:`TARGET` codes each, are then laid out as the rows of a padded grid and
sorted with one ``np.sort(axis=1)``: rows of at most :data:`ROW_MAX` codes are
sorted by numpy's sorting networks, which use no compress instruction.  The
grid is built and sorted a cache-sized chunk of buckets at a time.

Skewed codes (more than a quarter of them in buckets too big for a row) are
sorted by ``np.sort`` instead: never much slower than it, whatever the
distribution.  More than ``2 * TARGET * 2**16`` codes are first split into
buckets of about ``TARGET * 2**16`` by their top bits, each sorted as above.

The codes are read a block of :data:`BLOCK` at a time (:func:`sort_source`),
so a caller that can compute them by block (``localsort`` for one integer
key) never holds them whole beside their partitioned copy.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

_U64 = np.uint64
_PAD = _U64(0xFFFFFFFFFFFFFFFF)
#: Mean bucket size aimed at: rows this long sort in numpy's sorting networks.
TARGET = 64
#: Buckets of at most this many codes are sorted as grid rows, larger ones alone.
ROW_MAX = 256
#: At most this many codes: one ``np.sort`` (the passes cost more than they save).
SMALL = 1 << 14
#: Sorted positions per grid chunk (the chunk's codes and grid stay in the caches).
CHUNK = 1 << 16
#: Codes bucketed at a time: the partition's index and scratch arrays are this long.
BLOCK = 1 << 16


#: Codes ``[lo, hi)`` of a sort, computed on demand (a fresh array the caller may keep).
Source = Callable[[int, int], np.ndarray]


def radix_sort(codes: np.ndarray, bits: int, small: Optional[int] = None, row_max: Optional[int] = None) -> np.ndarray:
    """``codes`` sorted: the array itself sorted in place, or a new array.

    Parameters
    ----------
    codes : numpy.ndarray
        uint64 codes below ``2**bits`` (bits above ``bits`` may hold anything
        that all codes share); the function may overwrite it.
    bits : int
        How many low bits of the codes can differ.
    small, row_max : int, optional
        :data:`SMALL` and :data:`ROW_MAX` by default (tests lower them to reach every path on few rows).
    """
    return sort_source(lambda lo, hi: codes[lo:hi], len(codes), bits, small, row_max, whole=codes)


def sort_source(source: Source, n: int, bits: int, small: Optional[int] = None, row_max: Optional[int] = None,
                whole: Optional[np.ndarray] = None) -> np.ndarray:
    """The ``n`` codes that ``source`` computes, sorted (as :func:`radix_sort`).

    The codes are read a block at a time, twice (counting, then
    partitioning), so they never need to exist whole beside the partitioned
    copy: where ``source`` computes them from the table, the sort's peak is
    one array of ``n`` codes.  ``whole``: the codes as one array where they
    exist (sorted in place on the paths that take ``np.sort``).
    """
    small = SMALL if small is None else small
    row_max = ROW_MAX if row_max is None else row_max
    if n <= max(small, 1) or bits <= 0:
        return _np_sorted(source, n, whole)
    if n > 2 * (TARGET << 16):
        return _split(source, n, bits, small, row_max, whole)
    return _grid_pass(source, n, bits, small, row_max, whole)


def _np_sorted(source: Source, n: int, whole: Optional[np.ndarray]) -> np.ndarray:
    codes = whole if whole is not None else source(0, n)
    codes.sort()
    return codes


def _digits(codes: np.ndarray, bits: int, digit_bits: int) -> np.ndarray:
    digit = (codes >> _U64(bits - digit_bits)).astype(np.uint16)
    if digit_bits < 16:
        digit &= np.uint16((1 << digit_bits) - 1)
    return digit


def _counts(source: Source, n: int, bits: int, digit_bits: int) -> np.ndarray:
    """How many codes fall in each bucket of their top ``digit_bits`` bits (a block at a time)."""
    counts = np.zeros(1 << digit_bits, dtype=np.int64)
    for lo in range(0, n, BLOCK):
        counts += np.bincount(_digits(source(lo, min(n, lo + BLOCK)), bits, digit_bits), minlength=1 << digit_bits)
    return counts


def _partition(source: Source, n: int, bits: int, digit_bits: int, counts: np.ndarray) -> np.ndarray:
    """A new array of ``codes`` grouped by bucket, buckets in order (any order within one).

    A block of :data:`BLOCK` codes at a time: a stable ``argsort`` of its
    digits, then its codes go to the next free places of their buckets.  So
    the temporaries are a block's, not ``n`` indices and numpy's radix
    scratch beside the codes.
    """
    out = np.empty(n, dtype=_U64)
    free = np.cumsum(counts) - counts  # next free position of each bucket
    for lo in range(0, n, BLOCK):
        block = source(lo, min(n, lo + BLOCK))
        digit = _digits(block, bits, digit_bits)
        mine = np.bincount(digit, minlength=1 << digit_bits)
        order = np.argsort(digit, kind="stable")
        # The i-th code in digit order goes to its bucket's next free place plus its rank among this
        # block's codes of that bucket (np.repeat over 65536 counts cost more than this lookup).
        dest = (free - (np.cumsum(mine) - mine))[digit[order]]
        del digit
        dest += np.arange(len(block), dtype=np.int64)
        out[dest] = block[order]
        free += mine
    return out


def _split(source: Source, n: int, bits: int, small: int, row_max: int, whole: Optional[np.ndarray]
           ) -> np.ndarray:
    """Many codes: bucket by the top bits into buckets of about ``TARGET * 2**16``, sort each."""
    digit_bits = max(1, min(16, bits, (n // (TARGET << 16) - 1).bit_length()))
    counts = _counts(source, n, bits, digit_bits)
    if counts.max() > n * 3 // 4:  # the top bits hardly split them
        return _np_sorted(source, n, whole)
    out = _partition(source, n, bits, digit_bits, counts)
    start = 0
    for count in counts.tolist():
        if count:
            stop = start + count
            out[start:stop] = radix_sort(out[start:stop], bits - digit_bits, small, row_max)
            start = stop
    return out


def _grid_pass(source: Source, n: int, bits: int, small: int, row_max: int, whole: Optional[np.ndarray]
               ) -> np.ndarray:
    """One pass by the top bits, then each chunk of buckets as the rows of a grid."""
    digit_bits = max(1, min(16, bits, (max(1, n // TARGET) - 1).bit_length()))
    counts = _counts(source, n, bits, digit_bits)
    if counts[counts > row_max].sum() > n // 4:  # skewed: bucketing would not pay
        return _np_sorted(source, n, whole)
    out = _partition(source, n, bits, digit_bits, counts)
    ends = np.cumsum(counts)
    starts = ends - counts
    buckets = len(counts)
    first = 0
    while first < buckets:  # chunk by chunk, in place
        lo = int(starts[first])
        last = min(buckets, max(first + 1, int(np.searchsorted(ends, lo + CHUNK, side="right"))))
        hi = int(ends[last - 1])
        if hi > lo:
            chunk = out[lo:hi]
            ids = _digits(chunk, bits, digit_bits).astype(np.intp)
            ids -= first
            _sort_chunk(chunk, ids, counts[first:last], starts[first:last] - lo, bits - digit_bits, small, row_max)
        first = last
    return out


def _sort_chunk(values: np.ndarray, ids: np.ndarray, counts: np.ndarray, starts: np.ndarray, bits: int,
                small: int, row_max: int) -> None:
    """Sort each bucket of ``values`` in place (bucket ``j`` at ``starts[j]``, ``counts[j]`` long).

    ``ids``: each code's bucket.  The codes are copied into the grid (or, in
    a bucket too big for a row, sorted as a copy) before their places are written.
    """
    out = values
    big = counts > row_max
    any_big = bool(big.any())
    row_counts = np.where(big, 0, counts) if any_big else counts
    width = int(row_counts.max())
    keep = ~big[ids] if any_big else None
    if width > 1:
        rows = len(counts)
        grid = np.full(rows * width, _PAD, dtype=_U64)
        dest = ids * width - starts[ids]
        dest += np.arange(len(values), dtype=np.int64)
        if keep is None:
            grid[dest] = values
        else:
            grid[dest[keep]] = values[keep]
        del dest
        grid.reshape(rows, width).sort(axis=1)
        # The padding sorts last; the mask keeps each row's first ``count`` codes.
        filled = (np.arange(width) < row_counts[:, None]).ravel()
        if keep is None:
            out[:] = grid[filled]
        else:
            out[keep] = grid[filled]
    if any_big:
        for j in np.flatnonzero(big).tolist():
            lo, hi = int(starts[j]), int(starts[j] + counts[j])
            out[lo:hi] = radix_sort(values[lo:hi].copy(), bits, small, row_max)  # copy: may alias out


__all__ = ["radix_sort", "sort_source", "Source", "TARGET", "ROW_MAX", "SMALL", "CHUNK", "BLOCK"]
