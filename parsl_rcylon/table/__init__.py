"""Tables between stages.

A ``cylon_app`` that returns a ``pyarrow.Table`` (or a pandas DataFrame) on
every rank yields a :class:`TableRef`: every rank wrote its partition as a file
in ``<data_dir>/<app>-<task>/`` and rank 0 committed the table by writing its
manifest last.  A later stage receives a ``TableRef`` argument as *its rank's
share* of the rows, balanced over its own rank count whatever the writer's.

* :mod:`.ref`: the handle, :class:`TableRef`, and reading tables back;
* :mod:`.handoff`: the collective calls the rank runner makes around the
  user function, :func:`resolve_arguments` and :func:`publish_result`;
* :mod:`.binding`: which parameter receives a share, a DataFrame or the handle.

The bytes on disk (manifests, formats, checksums) are :mod:`parsl_rcylon.tableio`.
"""
from __future__ import annotations

from ..engine.shares import share_bounds
from ..options import DEFAULT_COMPRESSION, DEFAULT_ROW_GROUP_SIZE
from ..options import TableOptions as WriteOptions
from ..tableio.errors import (
    ManifestError,
    MixedResultError,
    TableCorruptError,
    TableError,
    TableSchemaError,
    TableWriteError,
)
from .handoff import publish_result, resolve_arguments
from .ref import TableRef, stage_summary

__all__ = [
    "DEFAULT_COMPRESSION", "DEFAULT_ROW_GROUP_SIZE", "ManifestError", "MixedResultError", "TableCorruptError",
    "TableError", "TableRef", "TableSchemaError", "TableWriteError", "WriteOptions", "publish_result",
    "resolve_arguments", "share_bounds", "stage_summary",
]
