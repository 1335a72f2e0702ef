"""Named exceptions of the distributed table engine.

Every engine error is raised on *every* rank of the communicator at once: the
ranks validate their own input, then agree on the outcome before any data
moves, so no rank is left waiting in a collective that the others never
enter.  The message names the operation, the column and the ranks concerned.
"""
from __future__ import annotations


class EngineError(Exception):
    """Base class of all errors raised by :mod:`parsl_rcylon.engine`.

    Parameters
    ----------
    message : str
        What went wrong, naming the operation, column(s) and rank(s).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        # KeyError's __str__ would quote the message; every subclass reads plainly.
        return self.message


class MissingColumnError(EngineError, KeyError):
    """A key (or aggregated) column is missing from a table."""


class KeyTypeError(EngineError, TypeError):
    """Key columns have incompatible types (across join sides or across ranks)."""


class SchemaMismatchError(EngineError, TypeError):
    """The ranks' partitions of one table do not share a schema."""


class UnsupportedTypeError(EngineError, TypeError):
    """A column type the engine cannot hash or order (e.g. a list used as a key)."""


class InvalidArgumentError(EngineError, ValueError):
    """An argument is not understood: unknown join type, aggregation, sort order, ..."""


class RankFailedError(EngineError, RuntimeError):
    """Another rank failed with an unexpected error while preparing its data."""


#: Lookup used to re-raise, on every rank, the class that the failing rank raised.
ERROR_CLASSES = {
    cls.__name__: cls
    for cls in (
        EngineError,
        MissingColumnError,
        KeyTypeError,
        SchemaMismatchError,
        UnsupportedTypeError,
        InvalidArgumentError,
        RankFailedError,
    )
}
