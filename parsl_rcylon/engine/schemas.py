"""Schemas across ranks and files: one explanation of how they differ, one way to conform.

Used by the engine (every rank's partition of a table must share names and
types), by the table hand-off (every rank's result must share a schema; the
files of an external data set too) and by the storage layer (data read back
takes the writer's exact schema).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import pyarrow as pa

from .agreement import format_ranks
from .errors import SchemaMismatchError


def canonical_schema(schema: pa.Schema) -> pa.Schema:
    """The same names and types, all nullable, no metadata.

    Ranks that agree on names and types derive the very same schema, so their
    pieces concatenate after an exchange whatever nullability flags or
    metadata each rank's table carried.
    """
    return pa.schema([pa.field(f.name, f.type, nullable=True) for f in schema])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Give ``table`` exactly ``schema`` (same names; types equal or castable).

    Where only nullability or metadata differ the columns are re-labelled,
    which copies nothing.  Schema equality ignores the names of list children
    (Parquet says "element", Arrow "item") and types can differ in dictionary
    index width; those are cast, which is also free for identical types.

    Raises
    ------
    pyarrow.ArrowException, ValueError
        When the columns cannot be cast to ``schema``.
    """
    if table.schema.equals(schema, check_metadata=True) and str(table.schema) == str(schema):
        return table
    if table.schema.names == schema.names and all(
        str(have.type) == str(want.type) for have, want in zip(table.schema, schema, strict=True)
    ):
        return pa.Table.from_arrays(table.columns, schema=schema)
    return table.cast(schema)


def schema_difference(a: pa.Schema, b: pa.Schema, a_name: str, b_name: str) -> str:
    """The columns where two schemas differ, in words (``a_name``/``b_name`` say whose they are)."""
    out = []
    a_fields = {f.name: f for f in a}
    b_fields = {f.name: f for f in b}
    for name in a.names:
        if name not in b_fields:
            out.append(f"column {name!r} only on {a_name}")
        elif not a_fields[name].equals(b_fields[name]):
            fa, fb = a_fields[name], b_fields[name]
            extra = "" if fa.type == fb.type else f": {fa.type} on {a_name} vs {fb.type} on {b_name}"
            if fa.type == fb.type and fa.nullable != fb.nullable:
                extra = f": nullable={fa.nullable} on {a_name} vs {fb.nullable} on {b_name}"
            out.append(f"column {name!r}{extra}")
    for name in b.names:
        if name not in a_fields:
            out.append(f"column {name!r} only on {b_name}")
    if not out and a.names != b.names:
        out.append(f"column order {a.names} on {a_name} vs {b.names} on {b_name}")
    return "; ".join(out) or "schemas differ"


def rank_differences(schemas: Sequence[pa.Schema]) -> Tuple[List[int], str]:
    """Which ranks' schemas differ from rank 0's, and how, in words.

    Ranks with equal schemas are described once: ``rank 0 vs ranks 2, 3:
    column 'v': double on rank 0 vs string on ranks 2, 3``.

    Returns
    -------
    (list of int, str)
        The ranks involved (rank 0 included) and the explanation; an empty
        list when every schema equals rank 0's.
    """
    groups: List[Tuple[pa.Schema, List[int]]] = []
    for rank, schema in enumerate(schemas):
        for known, ranks in groups:
            if schema.equals(known):
                ranks.append(rank)
                break
        else:
            groups.append((schema, [rank]))
    if len(groups) == 1:
        return [], ""
    size = len(schemas)
    reference = groups[0][0]
    details = []
    for schema, ranks in groups[1:]:
        who = format_ranks(ranks, size)
        details.append(f"rank 0 vs {who}: {schema_difference(reference, schema, 'rank 0', who)}")
    involved = sorted({0} | {r for _, ranks in groups[1:] for r in ranks})
    return involved, "; ".join(details)


def check_same_schema(op: str, what: str, schemas: Sequence[pa.Schema]) -> None:
    """Raise :class:`SchemaMismatchError` on every rank when the ranks' schemas differ.

    Runs on every rank's schema as agreed, so every rank reaches the same
    verdict without another collective.
    """
    ranks, details = rank_differences(schemas)
    if ranks:
        raise SchemaMismatchError(f"{op}: {what} differs across ranks: {details}")


__all__ = ["canonical_schema", "check_same_schema", "conform", "rank_differences", "schema_difference"]
