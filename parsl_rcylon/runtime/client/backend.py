"""Where an executor's tasks go: the contract the dispatcher and an attached pilot's client both keep.

The executor holds one :class:`TaskBackend`: the
:class:`~.dispatcher.Dispatcher` when it started its own pilots, or the
:class:`~..attach.client.AttachedPilot` when it attached to a pilot server.
It submits tasks, withdraws those whose future was cancelled, reads per-pool figures for its status and progress view,
is told when a task starts and when one succeeds, and stops it at shutdown.
"""
from __future__ import annotations

from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable, Dict, Optional, Protocol, runtime_checkable

from ..wire.task import Task

#: ``on_start(task uid)``: the task was sent to its ranks (called on the backend's thread: keep it quick).
StartCallback = Callable[[str], None]
#: ``on_result(app name, value)``: a task succeeded, before its future resolves (the table ledger).
ResultCallback = Callable[[str, Any], None]


@runtime_checkable
class TaskBackend(Protocol):
    """What the executor asks of where its tasks go."""

    on_start: Optional[StartCallback]
    on_result: Optional[ResultCallback]

    def submit(self, task: Task, payload: bytes) -> Future:
        """Queue ``task``; the future resolves to its value or fails with its exception."""

    def cancel(self, uid: str) -> None:
        """Withdraw task ``uid`` (its future was cancelled): out of the queue, or its ranks told to stop."""

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Per pool: ``ranks``, ``busy``, ``idle``, ``queued``, ``running`` (and ``restarts`` where any)."""

    def stop(self, reason: str = "executor shut down") -> None:
        """Stop taking tasks; those still waiting fail with ``ExecutorShutdown``."""


def resolve(fut: Future, value: Any) -> bool:
    """Give ``fut`` its value, unless it is already done (its caller may cancel it at any moment)."""
    try:
        fut.set_result(value)
        return True
    except InvalidStateError:
        return False


def reject(fut: Future, error: BaseException) -> bool:
    """Fail ``fut`` with ``error``, unless it is already done (cancelled by its caller, or failed before)."""
    try:
        fut.set_exception(error)
        return True
    except InvalidStateError:
        return False


__all__ = ["ResultCallback", "StartCallback", "TaskBackend", "reject", "resolve"]
