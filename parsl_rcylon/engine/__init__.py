"""Distributed table engine: join, sort, group-by and friends on mpi4py + Arrow.

Every function takes the task's mpi4py communicator first and is collective:
each rank passes its partition and gets back its partition of the result,
and the semantics are those of the whole (concatenated) table.  Table data
travels as Arrow IPC buffers through mpi4py's buffer collectives; local work
uses pyarrow's kernels (Acero hash join, group_by, sort_indices) and numpy.
Bad input raises a named :class:`EngineError` on every rank at once.

Importing the engine does not initialise MPI (mpi4py's ``MPI`` module is
imported when data first moves): the table layer uses the engine's agreement
and schema helpers in the Parsl client too, which must never become an MPI
process.
"""
from __future__ import annotations

from .collectives import concat, gather, num_rows, rebalance
from .env import cylon_env
from .errors import (
    EngineError,
    InvalidArgumentError,
    KeyTypeError,
    MissingColumnError,
    RankFailedError,
    SchemaMismatchError,
    UnsupportedTypeError,
)
from .groupby import groupby
from .join import join
from .shuffle import shuffle
from .sort import sort
from .unique import unique

__all__ = [
    "shuffle",
    "join",
    "sort",
    "groupby",
    "unique",
    "concat",
    "rebalance",
    "num_rows",
    "gather",
    "cylon_env",
    "EngineError",
    "MissingColumnError",
    "KeyTypeError",
    "SchemaMismatchError",
    "UnsupportedTypeError",
    "InvalidArgumentError",
    "RankFailedError",
]
