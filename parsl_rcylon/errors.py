"""Named exceptions of parsl_rcylon."""
from __future__ import annotations

from typing import Optional

from parsl.executors.errors import ExecutorError


class RadicalCylonError(ExecutorError):
    """Base class for errors raised by the executor.

    Parameters
    ----------
    executor : ParslExecutor or None
        The executor that raised it, for Parsl's error reporting.
    reason : str
        What went wrong, in words a user can act on.
    """

    def __init__(self, executor, reason: str) -> None:
        super().__init__(executor, reason)

    def __reduce__(self):
        # ExecutorError keeps the executor object; a pickled error must not.
        return (type(self), (None, self.reason))

    def __str__(self) -> str:
        label = getattr(self.executor, "label", None)
        return f"[{label}] {self.reason}" if label else self.reason


class StartupError(RadicalCylonError):
    """The pilot, RAPTOR master or an MPI worker failed to start."""


class WorkerLost(RadicalCylonError):
    """An MPI worker ended while tasks were running on it."""


class ExecutorShutdown(RadicalCylonError):
    """A task was submitted to, or pending in, an executor that shut down."""


class ExecutorBroken(RadicalCylonError):
    """The executor can run no more tasks: no worker is left, or its dispatcher failed.

    Pending and running tasks fail with it, and so does every later
    submission, at once; ``__cause__`` is what broke the executor.
    """

    @classmethod
    def because(cls, cause: BaseException, reason: Optional[str] = None) -> ExecutorBroken:
        """The error tasks fail with once ``cause`` broke the executor; ``reason`` defaults to its text."""
        err = cls(None, f"executor is broken: {reason or cause}")
        err.__cause__ = cause
        return err


class ResultError(RadicalCylonError):
    """A task's result could not be brought back from its ranks."""
