"""Stopping a task's user code on a worker rank when the executor cancels it.

A rank's main thread runs the task; its I/O thread hears the executor's
``CANCEL`` (the task failed on another rank, or ran past its walltime).
The I/O thread cannot stop the main thread directly, so it sends the rank
a signal aimed at the main thread; the handler raises
:class:`TaskInterrupted` there, but only while that very task's user code
runs (never inside the runtime's own steps).  Python code, ``time.sleep``
and waits on a subprocess are interrupted at once; a rank blocked inside
an MPI call is not (the handler runs when the call returns), which is why
the executor replaces a worker whose ranks do not report in time.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections import OrderedDict
from typing import Iterator, Optional

#: The signal used to interrupt the main thread (SIGUSR1 is left to MPI launchers).
SIGNAL = signal.SIGUSR2
#: Cancellations kept for tasks that have not started on this rank yet.
_PENDING = 64


class TaskInterrupted(BaseException):
    """Raised in a task's user code when the executor cancels the task.

    A ``BaseException``, like ``KeyboardInterrupt``, so that ``except
    Exception`` in user code does not swallow it.
    """


class Interrupter:
    """Delivers cancellations to the user code of the task this rank runs.

    Make it in the main thread (it installs the signal handler there).
    """

    def __init__(self) -> None:
        self._main = threading.main_thread().ident
        # Re-entrant: the signal handler runs in the main thread, maybe while it holds the lock.
        self._lock = threading.RLock()
        self._uid: Optional[str] = None
        self._armed = False
        self._requested: OrderedDict[str, str] = OrderedDict()
        signal.signal(SIGNAL, self._handler)

    @contextlib.contextmanager
    def running(self, uid: str) -> Iterator[None]:
        """The body is task ``uid``'s user code: a cancellation of ``uid`` raises in it."""
        with self._lock:
            self._uid, self._armed = uid, True
            reason = self._requested.get(uid)
        try:
            if reason is not None:  # cancelled before it started here
                raise TaskInterrupted(reason)
            yield
        finally:
            with self._lock:
                self._armed = False
                self._uid = None

    def forget(self, uid: str) -> None:
        """Task ``uid`` is over on this rank."""
        with self._lock:
            self._requested.pop(uid, None)

    def request(self, uid: str, reason: str) -> None:
        """Cancel task ``uid`` (any thread): interrupt it now if its user code runs, else when it starts."""
        with self._lock:
            self._requested[uid] = reason
            while len(self._requested) > _PENDING:
                self._requested.popitem(last=False)
            now = self._armed and self._uid == uid
        if now:
            signal.pthread_kill(self._main, SIGNAL)

    def _handler(self, signum: int, frame: object) -> None:
        with self._lock:
            reason = self._requested.get(self._uid) if self._armed else None
            if reason is not None:
                self._armed = False
        if reason is not None:
            raise TaskInterrupted(reason)
