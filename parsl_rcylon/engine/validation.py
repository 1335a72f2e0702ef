"""Argument normalisation and the checks every operation runs before moving data."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence, Tuple, Union

import pyarrow as pa

from .agreement import format_ranks
from .errors import InvalidArgumentError, MissingColumnError, SchemaMismatchError, UnsupportedTypeError

logger = logging.getLogger(__name__)

Signature = Tuple[Tuple[str, str], ...]


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


def signature(schema: pa.Schema) -> Signature:
    """Names and types of a schema, small and picklable, for cross-rank comparison."""
    return tuple((field.name, str(field.type)) for field in schema)


def check_same_schema(op: str, what: str, signatures: Sequence[Signature]) -> None:
    """Raise :class:`SchemaMismatchError` on every rank when the ranks disagree.

    Runs on the allgathered signatures, so every rank reaches the same verdict
    without another collective.
    """
    if all(sig == signatures[0] for sig in signatures):
        return
    size = len(signatures)
    names: Dict[Tuple[str, ...], List[int]] = {}
    for rank, sig in enumerate(signatures):
        names.setdefault(tuple(n for n, _ in sig), []).append(rank)
    if len(names) > 1:
        parts = [f"[{', '.join(cols)}] on {format_ranks(ranks, size)}" for cols, ranks in names.items()]
        raise SchemaMismatchError(
            f"{op}: {what} has different columns on different ranks: " + " vs ".join(parts)
        )
    for i, (name, _) in enumerate(signatures[0]):
        types: Dict[str, List[int]] = {}
        for rank, sig in enumerate(signatures):
            types.setdefault(sig[i][1], []).append(rank)
        if len(types) > 1:
            parts = [f"{t} on {format_ranks(ranks, size)}" for t, ranks in types.items()]
            raise SchemaMismatchError(
                f"{op}: column {name!r} of {what} has different types on different ranks: "
                + " but ".join(parts)
            )


def conform(table: pa.Table, like: pa.Schema) -> pa.Table:
    """Give ``table`` exactly the schema ``like`` (same names and types already checked).

    Only field nullability and metadata can differ; re-labelling the columns
    copies nothing, and then every rank's pieces concatenate cleanly.
    """
    if table.schema.equals(like, check_metadata=True):
        return table
    return pa.Table.from_arrays(table.columns, schema=like)


def canonical_schema(schema: pa.Schema) -> pa.Schema:
    """The same names and types, all nullable, no metadata.

    Ranks that agree on names and types derive the very same schema, so their
    pieces concatenate after an exchange whatever nullability flags or
    metadata each rank's table carried.
    """
    return pa.schema([pa.field(f.name, f.type, nullable=True) for f in schema])


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

