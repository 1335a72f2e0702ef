"""Storage formats and manifests behind :class:`parsl_rcylon.table.TableRef`.

The public surface is :mod:`parsl_rcylon.table`; this package holds the parts
that know about bytes on disk: the manifest that commits a table
(:mod:`.manifest`), the per-format writers and range readers (:mod:`.formats`)
and the exceptions (:mod:`.errors`).
"""
from .errors import (
    ManifestError,
    MixedResultError,
    TableCorruptError,
    TableError,
    TableSchemaError,
    TableWriteError,
)

__all__ = [
    "ManifestError", "MixedResultError", "TableCorruptError", "TableError", "TableSchemaError",
    "TableWriteError",
]
