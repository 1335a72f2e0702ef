"""Commands to a thread that owns ZeroMQ sockets, posted from any thread, waking its poll at once.

A ZeroMQ socket belongs to one thread.  Other threads hand that thread work
through a :class:`Mailbox`: :meth:`Mailbox.post` queues a command and sends a
byte on an in-process PUSH socket whose PULL end the owner polls beside its
other sockets; the owner then :meth:`Mailbox.drain`\\ s the wake-ups and
takes the commands in order (:meth:`Mailbox.take`).

At most one wake-up is in flight: a post while one waits unread only
queues, since the owner takes every queued command once woken.  (One byte per
post filled the PUSH socket's high-water mark, 1,000, in any burst the owner
had not caught up with, and the next post failed with ``zmq.Again``.)
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Deque, Iterator, Tuple

import zmq


class Mailbox:
    """An in-process wake-up socket pair and a queue of ``(kind, body)`` commands.

    Parameters
    ----------
    context : zmq.Context
        The owner's context.
    name : str
        Part of the in-process address (unique per owner).
    """

    def __init__(self, context: zmq.Context, name: str) -> None:
        address = f"inproc://{name}"
        self.pull = context.socket(zmq.PULL)  # the owner polls this one
        self.pull.bind(address)
        self._push = context.socket(zmq.PUSH)
        self._push.connect(address)
        self._lock = threading.Lock()
        self._closed = False
        self._woken = False  # a wake-up byte is on its way and not yet drained
        # a deque, not a queue.Queue: append and popleft are atomic, and the owner never waits on it
        self._commands: Deque[Tuple[str, Any]] = deque()

    def post(self, kind: str, body: Any = None) -> None:
        """Queue a command and wake the owner (any thread; after :meth:`close` the command only queues)."""
        self._commands.append((kind, body))
        with self._lock:
            if not self._closed and not self._woken:
                self._woken = True
                self._push.send(b"", flags=zmq.NOBLOCK)

    def drain(self) -> None:
        """Consume the wake-up the owner's poll reported (the owner's thread); then :meth:`take`."""
        with self._lock:
            self._woken = False  # a post from here on wakes the owner again
            while self.pull.poll(0):
                self.pull.recv()

    def take(self) -> Iterator[Tuple[str, Any]]:
        """The commands queued so far, in order (the owner's thread)."""
        while True:
            try:
                yield self._commands.popleft()
            except IndexError:
                return

    def close(self) -> None:
        """Close both sockets; later posts only queue."""
        with self._lock:
            self._closed = True
            self._push.close(linger=0)
            self.pull.close(linger=0)


__all__ = ["Mailbox"]
