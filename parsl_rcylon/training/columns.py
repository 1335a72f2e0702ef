"""Arrow columns as one row-major numpy matrix: in place when the layout allows, else packed once.

A batch is then one gather (``numpy.take`` along rows, or along blocks of
rows) into a reused buffer, whatever the number of feature columns.  A
``fixed_size_list`` column of the target type without nulls already *is* a
row-major matrix in its values buffer, and a single numeric column is a
one-column matrix: both are used in place (zero-copy).  Several scalar
columns are packed into one matrix, one column at a time (a strided write at
memory speed), once per loader rather than once per batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import LoaderError

#: Rows packed per pass (a chunk of the matrix stays in cache while every column is written).
PACK_ROWS = 65536


@dataclass
class Matrix:
    """Rows of features (and the label as the last column, if any) as one C-contiguous 2-D array.

    Attributes
    ----------
    values : numpy.ndarray
        ``(rows, width)`` array; a view of Arrow memory when :attr:`zero_copy`.
    features : int
        Leading columns that are features; the label, if any, is the next one.
    zero_copy : bool
        Whether :attr:`values` points into the Arrow buffers (no copy was made).
    owner : object
        What keeps the memory alive (the Arrow array of a zero-copy view).
    """

    values: np.ndarray
    features: int
    zero_copy: bool
    owner: object = None

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    @property
    def has_label(self) -> bool:
        return self.values.shape[1] > self.features


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def check_columns(table: pa.Table, features: Sequence[str], label: Optional[str]) -> List[str]:
    """Problems with ``features`` and ``label`` in ``table`` (missing, not numeric, nulls), as messages."""
    problems = []
    names = list(features) + ([label] if label is not None else [])
    missing = [c for c in names if c not in table.column_names]
    if missing:
        return [f"columns {missing} are not in the table (columns: {table.column_names})"]
    if len(set(names)) != len(names):
        problems.append(f"a column is named twice in features/label: {names}")
    for name in names:
        col = table.column(name)
        t = col.type
        if pa.types.is_fixed_size_list(t) and name != label:
            if len(features) != 1:
                problems.append(f"column {name!r} is a fixed_size_list; such a column must be the only feature")
            elif not _is_numeric(t.value_type):
                problems.append(f"column {name!r}: fixed_size_list of {t.value_type} is not numeric")
            elif any(chunk.values.null_count for chunk in col.chunks):
                problems.append(f"column {name!r} has null values inside its lists")
        elif not _is_numeric(t):
            problems.append(f"column {name!r} has type {t}; features and labels must be numeric, "
                            "boolean or (one feature) fixed_size_list")
        if col.null_count:
            problems.append(f"column {name!r} has {col.null_count} nulls (fill or drop them first)")
    return problems


def _list_view(col: pa.ChunkedArray, dtype: np.dtype) -> Optional[np.ndarray]:
    """The rows of a one-chunk fixed_size_list column as a ``(rows, width)`` view, if the type matches."""
    if col.num_chunks != 1:
        return None
    arr = col.chunk(0)
    flat = arr.flatten()  # a zero-copy slice of the values, honouring the array's offset
    if pa.types.is_boolean(flat.type) or np.dtype(flat.type.to_pandas_dtype()) != dtype:
        return None
    return flat.to_numpy(zero_copy_only=True).reshape(len(arr), arr.type.list_size)


def _column_values(col: pa.ChunkedArray, dtype: np.dtype) -> np.ndarray:
    """A scalar column as a 1-D array of ``dtype``: a view when it is one chunk of that type, else a copy."""
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.uint8())
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    values = arr.to_numpy(zero_copy_only=False)
    return values if values.dtype == dtype else values.astype(dtype)


def table_matrix(table: pa.Table, features: Sequence[str], label: Optional[str], dtype: np.dtype) -> Matrix:
    """``table``'s features (then label) as one row-major matrix of ``dtype``; see the module notes."""
    dtype = np.dtype(dtype)
    names = list(features) + ([label] if label is not None else [])
    first = table.column(features[0])
    if label is None and len(features) == 1:
        if pa.types.is_fixed_size_list(first.type):
            view = _list_view(first, dtype)
            if view is not None:
                return Matrix(view, view.shape[1], True, first)
        elif first.num_chunks == 1 and not pa.types.is_boolean(first.type):
            values = first.chunk(0).to_numpy(zero_copy_only=False)
            if values.dtype == dtype:
                return Matrix(values.reshape(-1, 1), 1, True, first)
    widths = [table.column(n).type.list_size if pa.types.is_fixed_size_list(table.column(n).type) else 1
              for n in names]
    sources = []
    for name, width in zip(names, widths, strict=True):
        col = table.column(name)
        if pa.types.is_fixed_size_list(col.type):
            flat = (col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()).flatten()
            sources.append(flat.to_numpy(zero_copy_only=False).reshape(-1, width))
        else:
            sources.append(_column_values(col, dtype).reshape(-1, 1))
    out = np.empty((table.num_rows, sum(widths)), dtype=dtype)
    # Row chunks that fit in cache: writing whole strided columns of a large
    # table one after another was 20x slower (every column pass misses).
    for lo in range(0, table.num_rows, PACK_ROWS):
        hi = lo + PACK_ROWS
        pos = 0
        for source, width in zip(sources, widths, strict=True):
            out[lo:hi, pos:pos + width] = source[lo:hi]
            pos += width
    feature_width = sum(widths[:len(features)])
    return Matrix(out, feature_width, False, None)


def as_table(data: object, where: str) -> pa.Table:
    """An Arrow table from a table, record batch or pandas DataFrame."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if type(data).__name__ == "DataFrame" and hasattr(data, "to_numpy"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise LoaderError(f"{where}: expected a TableRef, pyarrow.Table, RecordBatch or pandas DataFrame, "
                      f"got {type(data).__name__}")
