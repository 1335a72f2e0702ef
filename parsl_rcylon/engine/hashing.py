"""Hashing key columns to partitions, the same way on every rank.

pyarrow has no public hash kernel that covers every key type, so keys are
hashed here with numpy over the Arrow buffers themselves (no conversion to
Python objects):

* integers, dates, times, timestamps, durations: the value's bits;
* floats: the bits after folding ``-0.0`` onto ``0.0`` and all NaNs onto one NaN;
* strings and binaries: a sum of their 8-byte words, each multiplied by a
  random odd constant for its position, computed for all strings at once;
* decimals and fixed-size binaries: the same, over fixed-width byte rows;
* dictionaries: the dictionary's values are hashed once, then looked up.

A fold-and-multiply mixes the combined value, and a multiply-shift
("fastrange", :mod:`.grouping`) maps it to a partition without a modulo.  Only the
distribution matters (equal keys always meet); the hash is not stable across
library versions and is not meant to be stored.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

_U64 = np.uint64
_NULL_CODE = _U64(0x6E756C6C6B657921)  # any constant: all nulls of a column hash alike
_NAN_BITS = np.array([np.nan], dtype=np.float64).view(np.uint64)[0]
_COMBINE = _U64(0x9E3779B97F4A7C15)
_LENGTH_MUL = _U64(0xC2B2AE3D27D4EB4F)
# Odd multipliers, one per 8-byte word position (mod 256), fixed so every rank agrees.
_WORD_WEIGHTS = np.random.default_rng(0x5EED).integers(1, 2**63, size=256, dtype=np.int64).astype(np.uint64)
_WORD_WEIGHTS = _WORD_WEIGHTS * _U64(2) + _U64(1)
#: Bytes of string data hashed per batch (bounds the padded copy).
_STRING_BATCH_BYTES = 1 << 26


def _mix(h: np.ndarray) -> np.ndarray:
    """Fold the high half onto the low half, then one odd multiply, in place.

    Partitions come from the top 32 bits (see :func:`.grouping.to_partitions`), which
    after the multiply depend on every input bit; two passes instead of
    splitmix64's five, which is cheaper on large partitions.
    """
    h ^= h >> _U64(32)
    h *= _U64(0xBF58476D1CE4E5B9)
    return h


def fixed_width_values(arr: pa.Array, dtype: np.dtype) -> np.ndarray:
    """The value buffer of a primitive array as numpy, honouring the slice offset."""
    buf = arr.buffers()[1]
    values = np.frombuffer(buf, dtype=dtype, count=(arr.offset + len(arr)) if buf is not None else 0)
    return values[arr.offset : arr.offset + len(arr)]


def _hash_bytes_rows(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Hash variable-length byte strings ``data[offsets[i]:offsets[i+1]]``.

    Eight bytes at a time: word ``j`` of every string still that long is read
    through a strided 8-byte window over the (zero-padded) data, its bytes past
    the string's end masked off, multiplied by a per-position odd constant and
    added.  Strings of up to 8*k bytes take k vectorised passes.
    """
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    out = lengths.astype(np.uint64) * _LENGTH_MUL
    row = 0
    while row < n:
        # Batches of about _STRING_BATCH_BYTES of data bound the padded copy.
        stop = int(np.searchsorted(offsets, offsets[row] + _STRING_BATCH_BYTES, side="right"))
        stop = min(n, max(stop - 1, row + 1))
        lo, hi = int(offsets[row]), int(offsets[stop])
        if hi > lo:
            padded = np.zeros(hi - lo + 8, dtype=np.uint8)
            padded[: hi - lo] = data[lo:hi]
            windows = np.lib.stride_tricks.as_strided(padded, shape=(hi - lo + 1, 8), strides=(1, 1))
            lens = lengths[row:stop]
            starts = offsets[row:stop] - lo
            idx = np.flatnonzero(lens > 0)
            word = 0
            while idx.size:
                words = windows[starts[idx] + 8 * word].view(np.uint64).ravel()
                remaining = lens[idx] - 8 * word
                short = np.flatnonzero(remaining < 8)
                if short.size:
                    bits = (remaining[short] * 8).astype(np.uint64)
                    words[short] &= (_U64(1) << bits) - _U64(1)
                words *= _WORD_WEIGHTS[word & 255]
                out[row + idx] += words
                word += 1
                idx = idx[remaining > 8]
        row = stop
    return out


def _hash_fixed_bytes(arr: pa.Array, width: int) -> np.ndarray:
    raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=(arr.offset + len(arr)) * width)
    raw = raw[arr.offset * width :].reshape(len(arr), width)
    offsets = np.arange(0, (len(arr) + 1) * width, width, dtype=np.int64)
    return _hash_bytes_rows(raw.reshape(-1), offsets)


def _chunk_codes(arr: pa.Array) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Per-row 64-bit codes of one array chunk, and its validity (None: no nulls)."""
    dtype = arr.type
    n = len(arr)
    valid = None
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_null(dtype):
        return np.full(n, _NULL_CODE, dtype=np.uint64), np.zeros(n, dtype=bool)
    if pa.types.is_dictionary(dtype):
        dict_codes, dict_valid = _chunk_codes(arr.dictionary)
        if dict_valid is not None:
            dict_codes = np.where(dict_valid, dict_codes, _NULL_CODE)
        indices = arr.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        codes = dict_codes[indices] if len(dict_codes) else np.zeros(n, dtype=np.uint64)
        if dict_valid is not None and len(dict_valid):
            null_value = ~dict_valid[indices]
            valid = ~null_value if valid is None else valid & ~null_value
        return codes, valid
    if pa.types.is_boolean(dtype):
        bits = arr.cast(pa.int8()).fill_null(0).to_numpy(zero_copy_only=False)
        return bits.astype(np.uint64), valid
    if pa.types.is_floating(dtype):
        values = arr.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False) + 0.0
        codes = values.view(np.uint64).copy()
        codes[np.isnan(values)] = _NAN_BITS
        return codes, valid
    if pa.types.is_integer(dtype) or pa.types.is_temporal(dtype):
        width = dtype.bit_width // 8
        signed = not (pa.types.is_unsigned_integer(dtype))
        npdtype = np.dtype(f"{'i' if signed else 'u'}{width}")
        values = fixed_width_values(arr, npdtype)
        return (values.astype(np.int64).view(np.uint64) if signed else values.astype(np.uint64)), valid
    if pa.types.is_fixed_size_binary(dtype) or pa.types.is_decimal(dtype):
        return _hash_fixed_bytes(arr, dtype.byte_width), valid
    if pa.types.is_string(dtype) or pa.types.is_binary(dtype):
        return _var_codes(arr, np.int32), valid
    if pa.types.is_large_string(dtype) or pa.types.is_large_binary(dtype):
        return _var_codes(arr, np.int64), valid
    # string_view / binary_view and anything castable: hash the large variant.
    target = pa.large_string() if "string" in str(dtype) else pa.large_binary()
    return _chunk_codes(arr.cast(target))


def _var_codes(arr: pa.Array, offset_dtype: type) -> np.ndarray:
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_dtype, count=arr.offset + len(arr) + 1)
    offsets = offsets[arr.offset :].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return _hash_bytes_rows(data, offsets)


def column_codes(column: pa.ChunkedArray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Per-row codes of a column, nulls replaced by a constant, and its validity."""
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    parts = [_chunk_codes(chunk) for chunk in column.chunks]
    if not parts:
        return np.zeros(0, dtype=np.uint64), None
    codes = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    if all(p[1] is None for p in parts):
        return codes, None
    valid = np.concatenate([p[1] if p[1] is not None else np.ones(len(p[0]), bool) for p in parts])
    codes = np.where(valid, codes, _NULL_CODE)
    return codes, valid


def hash_rows(table: pa.Table, columns: Sequence[str]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """64-bit hash of each row's key tuple.

    Parameters
    ----------
    table : pyarrow.Table
        The partition.
    columns : sequence of str
        Key columns, in order.

    Returns
    -------
    hashes : numpy.ndarray of uint64
        Equal keys give equal hashes, on every rank; nulls hash alike.
    any_null : numpy.ndarray of bool or None
        True where at least one key is null; None when no key is null.
    """
    h: Optional[np.ndarray] = None
    any_null: Optional[np.ndarray] = None
    for name in columns:
        codes, valid = column_codes(table.column(name))
        if h is None:
            h = codes  # always a fresh array, so mixing in place is safe
        else:
            h *= _COMBINE
            h += codes
        if valid is not None:
            any_null = ~valid if any_null is None else any_null | ~valid
    if h is None:
        h = np.zeros(table.num_rows, dtype=np.uint64)
    return _mix(h), any_null
