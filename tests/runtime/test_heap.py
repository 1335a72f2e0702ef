"""HeapGuard with CPython's real collector: becoming busy, and a long full collection while busy, freeze
the heap, so that later full collections leave what was alive alone; idle (or a long busy stretch) gives
it back and collects the cyclic garbage that waited among the frozen objects."""
from __future__ import annotations

import gc
import weakref

import pytest

from parsl_rcylon.runtime.client.heap import HeapGuard


class Node:
    """A container object that can be made into a reference cycle."""

    def __init__(self) -> None:
        self.other = None


def cycle() -> weakref.ref:
    """A two-object reference cycle, dropped: only the cyclic collector frees it; a weak reference to it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def alive_cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


@pytest.fixture
def guard():
    gc.collect()
    g = HeapGuard(pause_s=1e-9, idle_s=5.0, release_every_s=100.0)  # any full collection counts as long
    try:
        yield g
    finally:
        g.close()
        gc.unfreeze()
        gc.collect()


def test_becoming_busy_freezes_what_is_alive_and_a_long_full_collection_freezes_again(guard):
    keep = alive_cycle()
    guard.tick(busy=True, now=0.0)
    assert guard.frozen and guard.freezes == 1 and gc.get_freeze_count() > 0
    ref = weakref.ref(keep)
    del keep  # garbage now, but frozen: the collector no longer looks at it
    young = cycle()  # made after the freeze: still collected
    guard.tick(busy=True, now=0.1)
    assert guard.freezes == 1  # no long collection since: nothing to freeze
    gc.collect()  # a full collection: "long" for this guard
    assert ref() is not None and young() is None
    later = alive_cycle()
    guard.tick(busy=True, now=0.2)
    assert guard.freezes == 2
    ref_later = weakref.ref(later)
    del later
    gc.collect()
    assert ref_later() is not None


def test_idle_gives_the_frozen_heap_back_and_collects_it(guard):
    keep = alive_cycle()
    gc.collect()
    guard.tick(busy=True, now=0.0)
    ref = weakref.ref(keep)
    del keep
    guard.tick(busy=False, now=1.0)
    guard.tick(busy=False, now=5.0)  # idle for less than idle_s
    assert guard.frozen and ref() is not None
    guard.tick(busy=False, now=6.0)
    assert not guard.frozen and guard.releases == 1
    assert gc.get_freeze_count() == 0 and ref() is None


def test_a_long_busy_stretch_gives_it_back_at_most_every_release_period(guard):
    keep = alive_cycle()
    gc.collect()
    guard.tick(busy=True, now=0.0)
    ref = weakref.ref(keep)
    del keep
    guard.tick(busy=True, now=99.0)
    assert ref() is not None
    guard.tick(busy=True, now=100.0)
    assert guard.releases == 1 and ref() is None
    # and freezes again at once, the heap just collected; the next release is a period later
    assert guard.frozen and guard.freezes == 2
    guard.tick(busy=True, now=199.0)
    assert guard.releases == 1
    guard.tick(busy=True, now=200.0)
    assert guard.releases == 2 and guard.freezes == 3


def test_nothing_is_frozen_while_idle():
    gc.collect()
    g = HeapGuard(pause_s=1e-9)
    try:
        gc.collect()
        g.tick(busy=False, now=0.0)
        assert not g.frozen and gc.get_freeze_count() == 0
        assert g.longest_full_s > 0
    finally:
        g.close()


def test_close_gives_back_what_it_froze_and_stops_watching(guard):
    guard.tick(busy=True, now=0.0)
    assert gc.get_freeze_count() > 0
    guard.close()
    assert gc.get_freeze_count() == 0 and guard._on_gc not in gc.callbacks


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="pause_s > 0"):
        HeapGuard(pause_s=0)
