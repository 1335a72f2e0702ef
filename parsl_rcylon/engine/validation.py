"""Argument checks the operations run on each rank before agreeing: tables, columns, key types."""
from __future__ import annotations

from typing import Any, List, Sequence, Union

import pyarrow as pa

from .errors import InvalidArgumentError, MissingColumnError, UnsupportedTypeError


def as_column_list(value: Union[str, Sequence[str], None], what: str) -> List[str]:
    """Turn ``"k"`` or ``["k", "j"]`` into a list of column names.

    Raises
    ------
    InvalidArgumentError
        When ``value`` is neither a string nor a non-empty sequence of strings.
    """
    if isinstance(value, str):
        return [value]
    if value is None:
        raise InvalidArgumentError(f"{what} must name at least one column, got None")
    names = list(value)
    if not names or not all(isinstance(n, str) for n in names):
        raise InvalidArgumentError(
            f"{what} must be a column name or a non-empty list of names, got {value!r}"
        )
    return names


def check_table(table: Any, what: str) -> None:
    """Raise :class:`InvalidArgumentError` unless ``table`` is a ``pyarrow.Table``."""
    if not isinstance(table, pa.Table):
        raise InvalidArgumentError(f"{what} must be a pyarrow.Table, got {type(table).__name__}")


def check_columns(table: pa.Table, columns: Sequence[str], what: str, role: str = "key column") -> None:
    """Raise :class:`MissingColumnError` naming the first missing column."""
    names = set(table.column_names)
    missing = [c for c in columns if c not in names]
    if missing:
        have = ", ".join(table.column_names) or "none"
        plural = "s" if len(missing) > 1 else ""
        raise MissingColumnError(
            f"{role}{plural} {', '.join(repr(m) for m in missing)} not found in {what} (columns: {have})"
        )


_HASHABLE_CHECKS = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_boolean,
    pa.types.is_temporal,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_fixed_size_binary,
    pa.types.is_decimal,
    pa.types.is_null,
)


def is_hashable_type(dtype: pa.DataType) -> bool:
    """Whether :mod:`.hashing` can hash values of ``dtype``."""
    if pa.types.is_dictionary(dtype):
        return is_hashable_type(dtype.value_type)
    if hasattr(pa.types, "is_string_view") and (
        pa.types.is_string_view(dtype) or pa.types.is_binary_view(dtype)
    ):
        return True
    if pa.types.is_interval(dtype):
        return False
    return any(check(dtype) for check in _HASHABLE_CHECKS)


def check_hashable(table: pa.Table, columns: Sequence[str], what: str) -> None:
    """Raise :class:`UnsupportedTypeError` for key columns that cannot be hashed."""
    for name in columns:
        dtype = table.schema.field(name).type
        if not is_hashable_type(dtype):
            raise UnsupportedTypeError(
                f"key column {name!r} of {what} has type {dtype}, which cannot be a key"
            )


def unused_name(schema: pa.Schema, base: str) -> str:
    """A column name not in ``schema``, for temporary helper columns."""
    name, i = base, 0
    existing = set(schema.names)
    while name in existing:
        i += 1
        name = f"{base}{i}"
    return name

