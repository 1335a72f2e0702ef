"""The mailbox over real in-process ZeroMQ sockets: a burst of posts the owner has not caught up with
(more than the PUSH socket's high-water mark of 1,000) only queues, and one wake-up brings them all."""
from __future__ import annotations

import threading

import zmq

from parsl_rcylon.runtime.client.mailbox import Mailbox


def test_a_burst_beyond_the_high_water_mark_queues_and_one_wake_up_brings_it_all():
    ctx = zmq.Context()
    box = Mailbox(ctx, "test-burst")
    try:
        for i in range(5000):  # the owner reads nothing meanwhile
            box.post("submit", i)
        assert box.pull.poll(1000)
        box.drain()
        assert [body for _, body in box.take()] == list(range(5000))
        assert not box.pull.poll(0)  # one wake-up for the whole burst
        box.post("stop")
        assert box.pull.poll(1000)  # a post after the drain wakes the owner again
        box.drain()
        assert list(box.take()) == [("stop", None)]
    finally:
        box.close()
        ctx.term()


def test_posts_from_many_threads_while_the_owner_reads_are_all_taken():
    ctx = zmq.Context()
    box = Mailbox(ctx, "test-threads")
    got = []
    try:
        posters = [threading.Thread(target=lambda k=k: [box.post("p", (k, i)) for i in range(2000)])
                   for k in range(4)]
        for t in posters:
            t.start()
        while len(got) < 8000:
            assert box.pull.poll(5000), f"no wake-up with {len(got)} of 8000 taken"
            box.drain()
            got.extend(body for _, body in box.take())
        for t in posters:
            t.join()
        assert sorted(got) == sorted((k, i) for k in range(4) for i in range(2000))
        for k in range(4):  # each poster's commands in its order
            assert [i for kk, i in got if kk == k] == list(range(2000))
    finally:
        box.close()
        ctx.term()
