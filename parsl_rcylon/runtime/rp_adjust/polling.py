"""Radical Pilot's idle loops, made to wait on their sockets and events instead of polling every 10 ms.

RP 1.103 has ~30 processes per pilot whose loops poll with hard-coded 10 ms
timeouts: an idle pilot used a third of a core and more.  Each loop changed
here still wakes at once on its socket or event; :data:`IDLE_POLL_S` bounds
only how often an idle loop looks at its stop flag, never how fast a message
is passed on.  A pubsub subscriber's listener thread (RP polls it 500 ms at
a time) is woken by its ``stop()``, which otherwise waited for the poll to
run out: ~11 of those one after another made most of a session's close.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, Dict, List

from .sockets import rebind_name
from .versions import stock

logger = logging.getLogger(__name__)

#: Longest wait of an idle RP loop, in seconds.  Each such loop wakes on its
#: own socket or event, so this bounds only how often an idle loop looks at
#: its stop flag, never how fast a message is passed on.
IDLE_POLL_S = 0.5


class _WideQueuePoll:
    """RP's queue bridge's two pollers, answered by one wait.

    RP's queue bridge polls its ``put`` socket for 10 ms, then its ``get``
    socket for 10 ms, then sleeps 10 ms when neither had anything: ~35
    wake-ups a second per bridge while idle, and a getter's request for an
    empty queue is answered (empty) at once, asked again and answered again.
    Here the ``put`` poll waits up to :data:`IDLE_POLL_S` for a message to
    come in, or, while messages are buffered (``nin > nout``), for a request
    too; a message or a request ends the wait at once.  The ``get`` poll
    then looks (without waiting) for a pending request, so a request made
    while the queue was empty is answered as soon as a message arrives, and
    at the latest after :data:`IDLE_POLL_S` (with nothing, as RP would).
    """

    def __init__(self, bridge: Any) -> None:
        import zmq

        self._bridge = bridge
        self._put, self._get = bridge._put, bridge._get
        self._both = zmq.Poller()
        self._both.register(self._put, zmq.POLLIN)
        self._both.register(self._get, zmq.POLLIN)
        self._put_only = zmq.Poller()
        self._put_only.register(self._put, zmq.POLLIN)
        self._get_only = zmq.Poller()
        self._get_only.register(self._get, zmq.POLLIN)
        self._seen: Dict[Any, int] = {}
        self.put = _Side(self, self._put, wait=True)
        self.get = _Side(self, self._get, wait=False)

    def poll(self, sock: Any, wait: bool) -> List[Any]:
        if wait:
            buffered = getattr(self._bridge, "nin", 0) > getattr(self._bridge, "nout", 0)
            poller = self._both if buffered else self._put_only
            self._seen = dict(poller.poll(timeout=int(IDLE_POLL_S * 1000)))
        elif sock not in self._seen:
            self._seen.update(self._get_only.poll(timeout=0))
        event = self._seen.pop(sock, None)
        return [(sock, event)] if event else []


class _Side:
    def __init__(self, joint: _WideQueuePoll, sock: Any, wait: bool) -> None:
        self._joint, self._sock, self._wait = joint, sock, wait

    def poll(self, timeout: Any = None) -> List[Any]:
        return self._joint.poll(self._sock, self._wait)


class _WidePoll:
    """A ``zmq.Poller`` whose ``poll`` waits :data:`IDLE_POLL_S` whatever timeout RP asks for."""

    def __init__(self, poller: Any) -> None:
        self._poller = poller

    def poll(self, timeout: Any = None) -> List[Any]:
        return self._poller.poll(timeout=int(IDLE_POLL_S * 1000))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


def patch_zmq_queue(mod: Any) -> None:
    """Patch ``radical.utils.zmq.queue``: one poll over both sockets, up to :data:`IDLE_POLL_S`."""
    # RP: see :class:`_WideQueuePoll`.
    stock_init = mod.Queue._bridge_initialize

    def _bridge_initialize(self: Any) -> None:
        stock_init(self)
        joint = _WideQueuePoll(self)
        self._poll_put, self._poll_get = joint.put, joint.get

    mod.Queue._bridge_initialize = _bridge_initialize
    rebind_name(mod)


def patch_zmq_pubsub(mod: Any) -> None:
    """Patch ``radical.utils.zmq.pubsub``: its bridge's poll waits up to :data:`IDLE_POLL_S`."""
    # RP: the pubsub bridge polls its two sockets with a 10 ms timeout, 100 wake-ups a second
    # while idle.  A message on either socket ends the poll at once, so a longer timeout only
    # slows the check of the stop flag.  Changed: IDLE_POLL_S.
    stock_init = mod.PubSub._bridge_initialize

    def _bridge_initialize(self: Any) -> None:
        stock_init(self)
        self._poll = _WidePoll(self._poll)

    mod.PubSub._bridge_initialize = _bridge_initialize
    rebind_name(mod)


class _Wake:
    """A pipe a Subscriber's listener polls beside its socket: written once, by stop(), it ends the poll."""

    def __init__(self, sock: Any) -> None:
        import zmq

        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self.poller = zmq.Poller()
        self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self._r, zmq.POLLIN)

    def set(self) -> None:
        try:
            os.write(self._w, b"x")
        except OSError:  # already written (a full pipe) or closed: the listener wakes either way
            pass

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._r = self._w = -1

    def __del__(self) -> None:
        if self._r >= 0:
            self.close()


#: A Subscriber's socket -> the wake-up pipe of its listener (while the listener runs adjusted).
_wakes: Dict[Any, _Wake] = {}


def patch_zmq_subscriber(mod: Any) -> None:
    """Patch ``radical.utils.zmq.pubsub``'s ``Subscriber``: ``stop()`` wakes its listener thread at once."""
    # RP: a Subscriber with callbacks runs a listener thread that polls its socket 500 ms at a
    # time, and ``stop()`` sets the thread's stop flag and joins it, so each stop waits for the
    # poll to run out (up to 0.5 s; stock RP, not a change of ``IDLE_POLL_S``).  Closing a session
    # stops about 11 of them one after another (the task manager's, the pilot manager's, the
    # session's): 3.5-4 s of the executor's ~4.5 s shutdown, adjusted or stock.  Changed: the
    # listener polls a pipe beside its socket and ``stop()`` writes to it after setting the flag,
    # so the join returns as soon as the thread sees the flag.  The poll's length (500 ms) and the
    # delivery of messages are RP's; a listener started under ``RCYLON_RP_STOCK=1`` is left stock.
    sub = mod.Subscriber
    stock_get: Any = sub._get_nowait  # a staticmethod: the plain function
    stock_start = sub._start_listener
    stock_stop = sub._stop_listener
    import zmq

    noblock = zmq.NOBLOCK

    def _get_nowait(sock: Any, lock: Any, timeout: Any, log: Any, prof: Any) -> Any:
        wake = _wakes.get(sock)
        if wake is None:
            return stock_get(sock, lock, timeout, log, prof)
        events = dict(wake.poller.poll(timeout=timeout))
        if sock not in events:
            return None, None  # woken by stop(), or the poll ran out: the listener looks at its flag
        # the rest of RP's _get_nowait (its own poll, done above, builds a zmq.Poller per call)
        data = mod.no_intr(sock.recv, flags=noblock)
        topic, bmsg = data.split(b" ", 1)
        msg = mod.from_msgpack(bmsg)
        log.debug_9(" <- %s: %s", topic, msg)
        return [mod.as_string(topic), mod.as_string(msg)]

    def _start_listener(self: Any) -> None:
        if not stock() and self._sock not in _wakes:
            _wakes[self._sock] = _Wake(self._sock)
        stock_start(self)

    def _stop_listener(self: Any, force: bool = False) -> None:
        wake = _wakes.get(self._sock)
        if wake is None:
            stock_stop(self, force)
            return
        # RP's own _stop_listener, with the wake-up between setting the flag and the join
        if force or not self._callbacks:
            with self._lock:
                if self._thread:
                    self._term.set()
                    wake.set()
                    self._thread.join()
                    self._term.clear()
                    self._thread = None
            _wakes.pop(self._sock, None)
            wake.close()

    sub._get_nowait = staticmethod(_get_nowait)
    sub._start_listener = _start_listener
    sub._stop_listener = _stop_listener


class _IdlerTime:
    """``time`` for RP's component module: its idle-callback threads wait on their stop event.

    RP: each timed callback of a component (heartbeats, state checks, ~10
    per component) runs in an ``Idler`` thread that sleeps 10 ms, looks at
    the clock, and sleeps again until its period has passed: 100 wake-ups a
    second per callback.  Changed: that sleep waits on the thread's stop
    event until the period has passed, so the callback runs when it would
    have and stop() still ends the thread at once.  Other sleeps of the
    module are RP's own, and so is this one under ``RCYLON_RP_STOCK=1`` (looked
    at on each call: the client process may run stock and adjusted sessions
    one after another, as ``benchmarks/overhead.py --rp both`` does).
    """

    def __init__(self, real: Any) -> None:
        self._real = real

    def sleep(self, seconds: float) -> None:
        frame = sys._getframe(1)
        idler = frame.f_locals.get("self") if frame.f_code.co_name == "run" else None
        term = getattr(idler, "_term", None)
        period = getattr(idler, "_timeout", None)
        if seconds == 0.01 and isinstance(term, threading.Event) and period and not stock():
            left = period - (self._real.time() - idler._last)
            term.wait(min(max(left, 0.0), IDLE_POLL_S * 10))
            return
        self._real.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def patch_component(mod: Any) -> None:
    """Patch ``radical.pilot.utils.component``: its idle-callback threads wait on their stop event."""
    if not isinstance(mod.time, _IdlerTime):
        mod.time = _IdlerTime(mod.time)
