"""The local sort kernel: one vectorised sort of packed 64-bit keys.

Every sort key is mapped to an unsigned code whose order is the wanted order
of the key (direction, nulls and NaN placed as pyarrow places them): integers
and temporals as their offset from the minimum (or to the maximum,
descending), floats through their order-preserving bits, strings and binaries
through eight bytes read big-endian (the first eight after the prefix all
values share).  The codes of the keys are
concatenated, most significant key first, above the row number, into one
uint64 per row, and one sort of those orders the rows; the row number in the
low bits makes the order stable.  That sort is ``np.sort`` where numpy's SIMD
sort is fast (about 11-15 ns per key with AVX2 or Intel's AVX-512, against
470 ns per key for an argsort), ``radixsort.radix_sort`` where it is not
(AMD Zen 4's AVX-512, no SIMD sort); ``kernels.sort_kernel`` chooses.
When the codes do not fit in the bits above the row number (wide integer
ranges, several wide keys, strings longer than 8 bytes) their top bits are
kept; rows whose kept bits tie are then re-sorted exactly, by pyarrow's stable
``sort_indices`` on just those rows. Because the kept bits never order two
rows against the full keys, those re-sorted runs only move within their own
positions. Key types without a code (decimals, dictionaries, fixed-size
binaries, ...) take pyarrow's ``sort_indices`` whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InvalidArgumentError
from .hashing import fixed_width_values
from .kernels import sort_kernel
from .radixsort import Source, radix_sort, sort_source

_PA_MAJOR = int(pa.__version__.split(".")[0])
_U64 = np.uint64
_ONES = _U64(0xFFFFFFFFFFFFFFFF)
#: Row numbers are OR-ed into the packed keys in blocks of this many, so no
#: second 8-byte-per-row temporary exists.
_ROW_BLOCK = 1 << 20
#: How far into strings the kernel looks past a prefix all of them share.
_MAX_SKIP = 64


@dataclass(frozen=True)
class SortKey:
    """One sort column: name, direction and where its nulls go."""

    name: str
    descending: bool
    nulls_last: bool

    @property
    def order(self) -> str:
        return "descending" if self.descending else "ascending"

    @property
    def placement(self) -> str:
        return "at_end" if self.nulls_last else "at_start"


def combined(column: Union[pa.ChunkedArray, pa.Array]) -> pa.Array:
    """One Arrow array for a column (its only chunk, or the chunks concatenated)."""
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def is_int_like(dtype: pa.DataType) -> bool:
    """Integers and temporal types: ordered by their integer value."""
    return (pa.types.is_integer(dtype) or pa.types.is_temporal(dtype)) and not pa.types.is_interval(dtype)


def int_values(arr: pa.Array) -> np.ndarray:
    """The values of an integer-like array as numpy integers (zero-copy; null slots hold anything)."""
    width = arr.type.bit_width // 8
    signed = not pa.types.is_unsigned_integer(arr.type)
    return fixed_width_values(arr, np.dtype(f"{'i' if signed else 'u'}{width}"))


def null_nan_classes(arr: pa.Array, key: SortKey) -> Optional[np.ndarray]:
    """Per-row class that orders nulls and NaNs around ordinary values (None: neither occurs).

    pyarrow puts NaN next to null: ``values < NaN < null`` at the end, or
    ``null < NaN < values`` at the start, whatever the direction.
    """
    has_nan = pa.types.is_floating(arr.type) and len(arr) and pc.any(pc.is_nan(arr)).as_py()
    if not arr.null_count and not has_nan:
        return None
    normal, nan, null = (0, 1, 2) if key.nulls_last else (2, 1, 0)
    cls = np.full(len(arr), normal, dtype=np.int8)
    if has_nan:
        cls[pc.fill_null(pc.is_nan(arr), False).to_numpy(zero_copy_only=False)] = nan
    if arr.null_count:
        cls[arr.is_null().to_numpy(zero_copy_only=False)] = null
    return cls


def arrow_sort_indices(table: pa.Table, keys: Sequence[SortKey]) -> np.ndarray:
    """pyarrow's stable ``sort_indices`` of ``table`` by ``keys``."""
    if _PA_MAJOR >= 25:
        options = pc.SortOptions(sort_keys=[(k.name, k.order, k.placement) for k in keys])
    else:  # pragma: no cover - older pyarrow has one placement for all keys
        placements = {k.placement for k in keys}
        if len(placements) > 1:
            raise InvalidArgumentError("this pyarrow supports one null placement for all sort keys")
        options = pc.SortOptions(sort_keys=[(k.name, k.order) for k in keys], null_placement=placements.pop())
    return pc.sort_indices(table, options=options).to_numpy()


# -- order-preserving codes --------------------------------------------------------------------------


def _raw_codes(arr: pa.Array) -> Optional[Tuple[np.ndarray, bool]]:
    """uint64 codes in ascending key order (a fresh array), and whether they are exact.

    Null (and NaN) slots hold anything; None for types without a code.
    """
    dtype = arr.type
    if is_int_like(dtype):
        values = int_values(arr)
        if values.dtype.kind == "i":
            codes = values.astype(np.int64).view(_U64)  # astype copies: the codes are ours
            codes ^= _U64(1 << 63)  # two's complement to offset binary
        else:
            codes = values.astype(_U64)
        return codes, True
    if pa.types.is_floating(dtype) and not pa.types.is_float16(dtype):
        # + 0.0 folds -0.0 onto 0.0 (pyarrow orders them as equal).
        floats = fixed_width_values(arr, np.dtype(f"f{dtype.bit_width // 8}")).astype(np.float64)
        floats += 0.0
        codes = floats.view(_U64)
        negative = (codes >> _U64(63)).astype(bool)
        codes[negative] ^= _ONES
        codes[~negative] |= _U64(1 << 63)
        return codes, True
    if pa.types.is_boolean(dtype):
        return arr.fill_null(False).to_numpy(zero_copy_only=False).astype(_U64), True
    if pa.types.is_string(dtype) or pa.types.is_binary(dtype) or pa.types.is_large_string(dtype) \
            or pa.types.is_large_binary(dtype):
        return _prefix_codes(arr), False
    return None


def _prefix_codes(arr: pa.Array) -> np.ndarray:
    """Eight bytes of each string as a big-endian uint64 (shorter ones zero-padded).

    The first eight bytes, or the first eight after the prefix that every
    value has (``user_000123``...): bytes all values share order nothing.
    """
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if large else np.int32,
                            count=arr.offset + n + 1)[arr.offset:].astype(np.int64)
    data_buf = arr.buffers()[2]
    start, stop = int(offsets[0]), int(offsets[-1])
    padded = np.zeros(stop - start + 8, dtype=np.uint8)
    if stop > start:
        padded[: stop - start] = np.frombuffer(data_buf, dtype=np.uint8, count=stop)[start:]
    windows = np.lib.stride_tricks.as_strided(padded, shape=(stop - start + 1, 8), strides=(1, 1))
    lengths = np.diff(offsets)
    valid = None if not arr.null_count else arr.is_valid().to_numpy(zero_copy_only=False)
    shortest = int((lengths if valid is None else lengths[valid]).min()) if n and (valid is None or valid.any()) else 0
    skip = 0
    limit = stop - start  # null slots may point anywhere up to the end: clamp
    while True:
        firsts = np.minimum(offsets[:-1] - start + skip, limit)
        if skip + 8 > shortest:
            codes = windows[firsts].view(_U64).ravel().byteswap()
            break
        # Every value has these 8 bytes: no masking needed.
        codes = windows[firsts].view(_U64).ravel().byteswap()
        plain = codes if valid is None else codes[valid]
        if not plain.size or skip >= _MAX_SKIP:
            return codes
        # Bytes the smallest and the largest share, every value shares (they are all whole
        # here): look past them.
        shared = (64 - (int(plain.min()) ^ int(plain.max())).bit_length()) // 8
        if not shared:
            return codes
        skip += shared
    remaining = lengths - skip
    short = np.flatnonzero(remaining < 8)
    if short.size:  # bytes past a string's end belong to the next string: mask them off
        codes[short] &= ~(_ONES >> (np.clip(remaining[short], 0, 8) * 8).astype(_U64))
    return codes


def key_codes(arr: pa.Array, key: SortKey) -> Optional[Tuple[np.ndarray, int, bool]]:
    """``(codes, bits, exact)``: codes in ``[0, 2**bits)`` whose order is ``key``'s order of ``arr``.

    ``exact``: equal codes mean equal keys.  None for types without a code.
    """
    raw = _raw_codes(arr)
    if raw is None:
        return None
    codes, exact = raw
    cls = null_nan_classes(arr, key)
    normal = 0 if key.nulls_last else 2
    plain = codes if cls is None else codes[cls == normal]
    if plain.size:
        lo, hi = int(plain.min()), int(plain.max())
    else:
        lo = hi = 0
    del plain
    # Wrap-around uint64 arithmetic gives the exact offset from the minimum (or to the maximum).
    if key.descending:
        np.subtract(_U64(hi), codes, out=codes)
    else:
        codes -= _U64(lo)
    bits = (hi - lo).bit_length()
    if cls is not None:
        codes[cls != normal] = 0
        if bits > 62:  # room for the class: drop the lowest bits of the values
            codes >>= _U64(bits - 62)
            bits, exact = 62, False
        codes |= cls.astype(_U64) << _U64(bits)
        bits += 2
    return codes, bits, exact


# -- the kernel ---------------------------------------------------------------------------------------


def local_sort_indices(table: pa.Table, keys: Sequence[SortKey]) -> np.ndarray:
    """Stable sort permutation of ``table`` by ``keys``, exactly pyarrow's ``sort_indices``."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    idx_bits = max(1, (n - 1).bit_length())
    packed: Optional[np.ndarray] = None
    if len(keys) == 1 and sort_kernel()[0] == "radix":
        source = _int_source(combined(table.column(keys[0].name)), keys[0], idx_bits)
        if source is not None:
            # The radix kernel reads the packed codes block by block from the column itself:
            # they never exist whole beside its partitioned copy.
            read, used, exact = source
            packed = sort_source(read, n, used + idx_bits)
    if packed is None:
        packed, exact = _packed_sorted(table, keys, n, idx_bits)
        if packed is None:
            return arrow_sort_indices(table, keys)
    ties = None if exact else _tied(packed, idx_bits)
    packed &= _U64((1 << idx_bits) - 1)
    rows = packed.view(np.int64)
    if ties is not None and ties.size:
        # Runs of equal kept bits: re-sort just those rows by the full keys.
        # They are in row order, pyarrow's sort is stable, and the kept bits
        # agree with the full order, so each run stays within its positions.
        tied_rows = rows[ties]
        subset = table.select(list(dict.fromkeys(k.name for k in keys))).take(pa.array(tied_rows))
        rows[ties] = tied_rows[arrow_sort_indices(subset, keys)]
    return rows


def _packed_sorted(table: pa.Table, keys: Sequence[SortKey], n: int, idx_bits: int
                   ) -> Tuple[Optional[np.ndarray], bool]:
    """``(the packed codes sorted, exact)``; None where the first key has no code."""
    room = 64 - idx_bits
    packed: Optional[np.ndarray] = None
    used, exact = 0, True
    for key in keys:
        if used == room:
            exact = False
            break
        coded = key_codes(combined(table.column(key.name)), key)
        if coded is None:
            if packed is None:
                return None, False
            exact = False
            break
        codes, bits, key_exact = coded
        take = min(bits, room - used)
        if take < bits:
            codes >>= _U64(bits - take)
        if packed is None:
            packed = codes
        else:
            if take:
                packed <<= _U64(take)
                packed |= codes
        del codes
        used += take
        exact = exact and key_exact and take == bits
        if not exact:
            break
    assert packed is not None
    packed <<= _U64(idx_bits)
    for lo_row in range(0, n, _ROW_BLOCK):
        hi_row = min(n, lo_row + _ROW_BLOCK)
        packed[lo_row:hi_row] |= np.arange(lo_row, hi_row, dtype=_U64)
    return sort_codes(packed, used + idx_bits), exact


def _int_source(arr: pa.Array, key: SortKey, idx_bits: int) -> Optional[Tuple[Source, int, bool]]:
    """``(source, bits kept, exact)``: the packed codes of one integer-like key without nulls, by block.

    The same codes as :func:`key_codes` and the packing (offset binary from
    the minimum, or to the maximum descending, its top bits where the range
    does not fit, above the row number), read from the column's values where
    they are needed.  None for other keys, or with nulls.
    """
    if not is_int_like(arr.type) or arr.null_count or not len(arr):
        return None
    values = int_values(arr)
    signed = values.dtype.kind == "i"
    bias = 1 << 63 if signed else 0
    lo, hi = int(values.min()) + bias, int(values.max()) + bias
    bits = (hi - lo).bit_length()
    drop = max(0, bits + idx_bits - 64)  # the lowest bits that do not fit above the row number

    def source(start: int, stop: int) -> np.ndarray:
        if signed:
            codes = values[start:stop].astype(np.int64).view(_U64)
            codes ^= _U64(1 << 63)  # two's complement to offset binary
        else:
            codes = values[start:stop].astype(_U64)
        if key.descending:
            np.subtract(_U64(hi), codes, out=codes)
        else:
            codes -= _U64(lo)
        if drop:
            codes >>= _U64(drop)
        codes <<= _U64(idx_bits)
        codes |= np.arange(start, stop, dtype=_U64)
        return codes

    return source, bits - drop, drop == 0


def sort_codes(packed: np.ndarray, bits: int, kernel: Optional[str] = None) -> np.ndarray:
    """``packed`` (uint64 codes below ``2**bits``) sorted, by ``kernel`` or the one in force here.

    May sort ``packed`` in place or return a new array.
    """
    if (kernel or sort_kernel()[0]) == "radix":
        return radix_sort(packed, bits)
    packed.sort()
    return packed


def _tied(packed: np.ndarray, idx_bits: int) -> np.ndarray:
    """Positions of sorted packed keys whose key bits equal a neighbour's.

    In blocks, so the shifted copy of the keys never exists whole.
    """
    n = len(packed)
    same = np.empty(max(0, n - 1), dtype=bool)  # same[i]: rows i and i + 1 tie
    shift = _U64(idx_bits)
    for lo in range(0, n - 1, _ROW_BLOCK):
        hi = min(n - 1, lo + _ROW_BLOCK)
        prefix = packed[lo : hi + 1] >> shift
        np.equal(prefix[1:], prefix[:-1], out=same[lo:hi])
    tied = np.zeros(n, dtype=bool)
    tied[:-1] |= same
    tied[1:] |= same
    return np.flatnonzero(tied)


__all__: List[str] = ["SortKey", "local_sort_indices", "key_codes", "arrow_sort_indices", "sort_codes"]
