"""Exceptions of the table data plane.

Every exception carries one message string only, so that it pickles across
ranks, RP queues and Parsl's ``RemoteExceptionWrapper`` unchanged.
"""
from __future__ import annotations

from ..table_error import TableError


class TableSchemaError(TableError):
    """Ranks of one task returned tables whose schemas differ, or the files
    of an existing data set do not share one schema."""


class MixedResultError(TableError):
    """Some ranks of a task returned tables and others returned something else."""


class TableWriteError(TableError):
    """A rank failed to write its partition, or the manifest could not be committed."""


class ManifestError(TableError):
    """A table directory has no manifest, or its manifest is unreadable or inconsistent."""


class TableCorruptError(TableError):
    """A file of a table is missing, truncated, corrupt, or does not match its manifest."""
