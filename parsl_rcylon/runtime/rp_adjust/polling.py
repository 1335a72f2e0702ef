"""Radical Pilot's idle loops, made to wait on their sockets and events instead of polling every 10 ms.

RP 1.103 has ~30 processes per pilot whose loops poll with hard-coded 10 ms
timeouts: an idle pilot used a third of a core and more.  Each loop changed
here still wakes at once on its socket or event; :data:`IDLE_POLL_S` bounds
only how often an idle loop looks at its stop flag, never how fast a message
is passed on.
"""
from __future__ import annotations

import logging
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
