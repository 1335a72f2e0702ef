"""Keeping the cyclic garbage collector's full collections short while the client holds a big heap.

CPython's cyclic collector (3.11) walks every container object of the
process in a full (generation 2) collection, and starts one whenever the
objects that survived into the oldest generation grew by a quarter since the
last.  A client with 10^5 queued tasks holds some 4 objects per task in the
dispatcher alone (its ``RunningTask``, the ``Task`` and its spec, the
placement's entry) and many more in Parsl's task records, so a full
collection there walks millions of objects.  ``benchmarks/scale.py`` at 9,408
nodes with 10^5 queued: a full collection of 93 ms landed in a placement
pass of 99 ms (no pass did more than 11 ms of its own work); on another
thread it would have stopped the loop all the same, holding the GIL.

When the dispatcher becomes busy (tasks wait or run), :class:`HeapGuard`
moves everything alive then (the interpreter's modules, the workers' ranks)
out of the collector's reach (``gc.freeze()``, O(1)), so that full
collections walk only what was made since; it times every full collection
(``gc.callbacks``), and after one took ``pause_s`` or more while busy it
freezes again: a pause stays near ``pause_s`` however big the heap grows,
each freeze taking in about ``pause_s`` worth of objects.  Frozen objects
that die by reference counting (the dispatcher's own task state holds no
cycles) are freed as usual; cyclic garbage among them (Parsl's task records,
which point at their futures and back) waits until :meth:`HeapGuard.tick`
gives everything back to the collector and collects once
(``gc.unfreeze()``, ``gc.collect()``): when the dispatcher has been idle
``idle_s`` seconds, where the pause holds up no task, and in a busy stretch
at most every ``release_every_s`` seconds, one full pause there bounding
what that garbage can hold.  Freezing is process-wide: another dispatcher's
release only makes the next full collection longer (and freezes again).
"""
from __future__ import annotations

import gc
import logging
import time
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)


class HeapGuard:
    """Freezes the process's objects out of the cyclic collector while busy, again after a long full collection.

    Parameters
    ----------
    pause_s : float
        A full collection at least this long (CPU seconds of the thread
        that ran it) makes the next busy :meth:`tick` freeze the heap again.
    idle_s : float
        Seconds without waiting or running tasks after which the frozen
        objects go back to the collector, and it collects once.
    release_every_s : float
        While busy, the frozen objects go back to the collector (one full
        collection) at most this long after the first freeze, so that cyclic
        garbage among them is reclaimed.

    Attributes
    ----------
    freezes : int
        Times the heap was frozen.
    releases : int
        Times the frozen objects went back to the collector.
    longest_full_s : float
        The longest full collection seen (CPU seconds).
    """

    def __init__(self, pause_s: float = 0.01, idle_s: float = 2.0, release_every_s: float = 600.0) -> None:
        if pause_s <= 0 or idle_s < 0 or release_every_s <= 0:
            raise ValueError(f"HeapGuard needs pause_s > 0, idle_s >= 0, release_every_s > 0; got {pause_s}, "
                             f"{idle_s}, {release_every_s}")
        self.pause_s = pause_s
        self.idle_s = idle_s
        self.release_every_s = release_every_s
        self.freezes = 0
        self.releases = 0
        self.longest_full_s = 0.0
        self._began = 0.0
        self._slow = False  # a full collection took pause_s or more since the last freeze
        self._frozen_at: Optional[float] = None  # the caller's clock at the first freeze since a release
        self._idle_since: Optional[float] = None
        self._open = True
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: Dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.thread_time()  # collections never nest: one start, then its stop
            return
        took = time.thread_time() - self._began
        self.longest_full_s = max(self.longest_full_s, took)
        if took >= self.pause_s:
            self._slow = True

    @property
    def frozen(self) -> bool:
        """Whether this guard has frozen objects that it has not given back yet."""
        return self._frozen_at is not None

    def tick(self, busy: bool, now: float) -> None:
        """Called by the owner's loop every round (O(1)); ``busy``: tasks wait or run; ``now``: its clock."""
        if busy:
            self._idle_since = None
            if self._frozen_at is not None and now - self._frozen_at >= self.release_every_s:
                self._release("after %.0f s busy" % (now - self._frozen_at))
            if self._frozen_at is None or self._slow:  # work begins (or the heap was just collected), or it grew
                self._slow = False
                gc.freeze()
                self.freezes += 1
                if self._frozen_at is None:
                    self._frozen_at = now
            return
        if self._frozen_at is None:
            return
        if self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= self.idle_s:
            self._release("idle")

    def _release(self, why: str) -> None:
        gc.unfreeze()
        began = time.perf_counter()
        gc.collect()
        logger.debug("gave the frozen heap back to the garbage collector (%s): full collection %.1f ms",
                     why, (time.perf_counter() - began) * 1e3)
        self.releases += 1
        self._frozen_at = None
        self._idle_since = None
        # a slow collection just now (it walked the whole heap) freezes it again at the next busy tick

    def close(self) -> None:
        """Stop watching collections; give back what this guard froze (without collecting)."""
        if not self._open:
            return
        self._open = False
        try:
            gc.callbacks.remove(self._on_gc)
        except ValueError:
            pass
        if self._frozen_at is not None:
            gc.unfreeze()
            self._frozen_at = None


__all__ = ["HeapGuard"]
