"""The placement policy with simulated workers: no pilot, no sockets.

Unit tests pin the rules (best fit, one host, backfill and its limit, cores
per rank, pool and GPU routing); property tests drive random workers and
random task streams and check what must hold whatever the stream.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

from parsl_rcylon.resources import ResourceSpec
from parsl_rcylon.runtime.client.admission import host_layout, pool_accepts, ranks_per_task_rank
from parsl_rcylon.runtime.client.placement import Placed, Placement


def _placement(*workers: Tuple[str, Sequence[str]], limit: int = 16, **kwargs) -> Placement:
    """Workers given as (uid, host of each rank); every rank joined."""
    p = Placement(starvation_limit=limit)
    for uid, hosts in workers:
        p.add_worker(uid, len(hosts), **kwargs)
        for rank, host in enumerate(hosts):
            p.join(uid, rank, host)
    return p


def _submit(p: Placement, uid: str, **spec) -> None:
    p.enqueue(uid, ResourceSpec(**spec))


def _started(p: Placement) -> Dict[str, Placed]:
    return {placed.uid: placed for placed in p.place()}


# -- rules --------------------------------------------------------------------------------------


def test_best_fit_takes_the_worker_with_fewest_free_ranks_that_fits():
    p = _placement(("big", ["h"] * 4), ("small", ["h"] * 2))
    _submit(p, "t", ranks=2)
    assert _started(p)["t"].worker == "small"
    _submit(p, "u", ranks=2)
    assert _started(p)["u"].worker == "big", "small is full now"


def test_ranks_stay_on_one_host_when_one_host_has_enough():
    p = _placement(("w", ["a", "a", "b", "b", "b"]))
    _submit(p, "three", ranks=3)
    assert _started(p)["three"].ranks == (2, 3, 4)
    _submit(p, "two", ranks=2)
    assert _started(p)["two"].ranks == (0, 1)


def test_ranks_span_hosts_when_no_host_has_enough():
    p = _placement(("w", ["a", "a", "b", "b"]))
    _submit(p, "three", ranks=3)
    assert _started(p)["three"].ranks == (0, 1, 2), "lowest free ranks"


def test_fifo_order_and_backfill():
    p = _placement(("w", ["h"] * 4))
    _submit(p, "running", ranks=3)
    _started(p)
    _submit(p, "big", ranks=2)
    _submit(p, "small", ranks=1)
    assert list(_started(p)) == ["small"], "the big one does not fit yet; a small one behind it may start"
    p.finish("running")
    p.finish("small")
    assert list(_started(p)) == ["big"]


def test_a_task_passed_over_starvation_limit_times_blocks_its_pool():
    p = _placement(("w", ["h"] * 4), limit=3)
    _submit(p, "long", ranks=3)
    _started(p)
    _submit(p, "big", ranks=4)
    for i in range(3):
        _submit(p, f"small{i}", ranks=1)
        assert list(_started(p)) == [f"small{i}"]
        p.finish(f"small{i}")
    _submit(p, "late", ranks=1)
    assert _started(p) == {}, "big was passed over 3 times: nothing behind it starts in its pool"
    p.finish("long")
    assert list(_started(p)) == ["big"]
    p.finish("big")
    assert list(_started(p)) == ["late"]


def test_the_limit_holds_within_one_pass():
    p = _placement(("w", ["h"] * 4), limit=2)
    _submit(p, "long", ranks=1)
    _submit(p, "big", ranks=4)
    for i in range(3):
        _submit(p, f"small{i}", ranks=1)
    # three ranks are free beside "long": all three small ones would fit
    assert sorted(_started(p)) == ["long", "small0", "small1"]


def test_a_blocked_pool_does_not_hold_up_other_pools():
    p = _placement(("c", ["h"] * 2), limit=1, pool="cpu")
    p.add_worker("g", 2, pool="gpu", gpus_per_rank=1)
    for rank in range(2):
        p.join("g", rank, "h")
    _submit(p, "hog", ranks=1, pool="cpu")
    _started(p)
    _submit(p, "big", ranks=2, pool="cpu")
    _submit(p, "small", ranks=1, pool="cpu")
    _submit(p, "gpu", ranks=1, gpus_per_rank=1)
    assert sorted(_started(p)) == ["gpu", "small"]
    _submit(p, "small2", ranks=1, pool="cpu")
    _submit(p, "gpu2", ranks=1, gpus_per_rank=1)
    p.finish("small")
    assert list(_started(p)) == ["gpu2"], "big blocks the cpu pool, not the gpu pool"


def test_a_pass_is_needed_only_after_the_queue_or_capacity_changed():
    p = _placement(("w", ["h"] * 2))
    assert not p.needs_pass(), "nothing waits"
    _submit(p, "a", ranks=2)
    assert p.needs_pass()
    assert list(_started(p)) == ["a"]
    _submit(p, "b", ranks=1)
    assert p.needs_pass()
    assert _started(p) == {}
    assert not p.needs_pass(), "nothing freed since: another pass cannot start b"
    p.finish("a")
    assert p.needs_pass()
    assert list(_started(p)) == ["b"]


def test_a_reservation_lets_short_tasks_backfill_onto_its_ranks_and_no_long_ones():
    p = _placement(("w", ["h"] * 4), limit=0)
    _submit(p, "running", ranks=2, walltime=100)
    assert list(p.place(now=0)) and p.reservations() == {}
    _submit(p, "big", ranks=4)
    assert p.place(now=10) == []
    res = p.reservations()["big"]
    assert sorted(r for g in res.groups for r in g) == [0, 1, 2, 3] and res.shadow == 100
    _submit(p, "long", ranks=1, walltime=200)
    _submit(p, "unknown", ranks=1)
    _submit(p, "short", ranks=2, walltime=50)
    assert [x.uid for x in p.place(now=20)] == ["short"], "only a task ending by t=100 may use the held ranks"
    p.finish("short")
    p.finish("running")
    assert [x.uid for x in p.place(now=60)] == ["big"], "its ranks are all free: it starts before the others"
    p.finish("big")
    assert sorted(x.uid for x in p.place(now=70)) == ["long", "unknown"]


def test_a_withdrawn_task_never_starts_and_the_one_behind_it_moves_up():
    p = _placement(("w", ["h"] * 2))
    _submit(p, "running", ranks=2)
    _started(p)
    for uid in ("a", "b", "c"):
        _submit(p, uid, ranks=1)
    assert p.withdraw("b") and p.withdraw("a"), "one behind the oldest of its shape, then the oldest"
    assert not p.withdraw("b") and not p.withdraw("running"), "only waiting tasks can be withdrawn"
    assert p.waiting() == ["c"]
    p.finish("running")
    assert list(_started(p)) == ["c"]
    assert p.stats()["default"]["queued"] == 0


def test_withdrawing_a_reserved_task_gives_its_held_ranks_back():
    p = _placement(("w", ["h"] * 4), limit=0)
    _submit(p, "running", ranks=2, walltime=100)
    _started(p)
    _submit(p, "big", ranks=4)
    assert p.place(now=1) == [] and "big" in p.reservations()
    _submit(p, "long", ranks=2)
    assert p.place(now=2) == [], "the free ranks are held for big, and long has no walltime"
    assert p.withdraw("big")
    assert p.reservations() == {}
    assert [x.uid for x in p.place(now=3)] == ["long"], "the held ranks are free again"


def test_a_starved_task_does_not_drain_the_pool():
    """Ranks that the reservation does not need keep running new work."""
    p = _placement(("w", ["a"] * 4 + ["b"] * 4), limit=0)
    for i in range(8):
        _submit(p, f"s{i}", ranks=1)
    _started(p)
    _submit(p, "four", ranks=4, num_nodes=1, ranks_per_node=4)
    assert _started(p) == {}
    held = {r for g in p.reservations()["four"].groups for r in g}
    assert held in ({0, 1, 2, 3}, {4, 5, 6, 7}), "one host's ranks"
    _submit(p, "x", ranks=1)
    p.finish("s0" if 0 not in held else "s4")
    assert list(_started(p)) == ["x"], "a rank outside the reservation takes new work at once"


def test_more_cores_than_a_rank_owns_reserve_ranks_on_the_same_host():
    p = _placement(("w", ["a", "a", "a", "b", "b", "b"]))
    _submit(p, "t", ranks=2, cores_per_rank=3)
    placed = _started(p)["t"]
    assert placed.groups == ((0, 1, 2), (3, 4, 5))
    assert placed.ranks == (0, 3) and placed.reserved == (1, 2, 4, 5) and placed.cores == 3
    _submit(p, "one", ranks=1)
    assert _started(p) == {}, "reserved ranks are not free"
    p.finish("t")
    assert list(_started(p)) == ["one"]
    assert p.stats()["default"]["idle"] == 5


def test_cores_are_counted_in_the_pools_cores_per_rank():
    p = _placement(("w", ["a"] * 4), cores_per_rank=2)
    _submit(p, "fits_one_rank", ranks=2, cores_per_rank=2)
    assert _started(p)["fits_one_rank"].groups == ((0,), (1,))
    _submit(p, "needs_two", ranks=1, cores_per_rank=3)
    placed = _started(p)["needs_two"]
    assert placed.groups == ((2, 3),) and placed.cores == 4


def test_cores_that_no_host_can_give_are_refused():
    p = _placement(("w", ["a", "a", "b", "b"]))
    assert p.accepts(ResourceSpec(ranks=2, cores_per_rank=2))
    assert not p.accepts(ResourceSpec(ranks=1, cores_per_rank=3)), "3 ranks on one host do not exist"
    assert not p.accepts(ResourceSpec(ranks=3, cores_per_rank=2))
    assert ranks_per_task_rank(ResourceSpec(cores_per_rank=5), 2) == 3
    assert host_layout(10, 4) == [4, 4, 2] and host_layout(3, None) == [3]


def test_routing_by_pool_and_gpus():
    assert pool_accepts(ResourceSpec(pool="a"), "a", [4], 0, 1, True)
    assert not pool_accepts(ResourceSpec(pool="a"), "b", [4], 0, 1, True)
    assert not pool_accepts(ResourceSpec(), "gpu", [4], 1, 1, True), "CPU tasks keep off GPU pools..."
    assert pool_accepts(ResourceSpec(), "gpu", [4], 1, 1, False), "...while a CPU pool exists"
    assert pool_accepts(ResourceSpec(pool="gpu"), "gpu", [4], 1, 1, True), "unless they name the pool"
    assert not pool_accepts(ResourceSpec(gpus_per_rank=2), "gpu", [4], 1, 1, True)
    assert not pool_accepts(ResourceSpec(ranks=5), "a", [4], 0, 1, True)


def test_a_worker_is_used_only_once_every_rank_joined():
    p = Placement()
    p.add_worker("w", 2)
    p.join("w", 0, "h")
    _submit(p, "t", ranks=1)
    assert _started(p) == {}
    p.join("w", 1, "h")
    assert list(_started(p)) == ["t"]


def test_losing_a_worker_returns_its_tasks_and_drops_what_no_one_can_hold():
    p = _placement(("big", ["h"] * 4), ("small", ["h"] * 2))
    _submit(p, "on_big", ranks=4)
    _started(p)
    _submit(p, "needs_big", ranks=3)
    _submit(p, "any", ranks=2)
    assert list(_started(p)) == ["any"]
    p.finish("any")
    assert p.lose_worker("big") == ["on_big"]
    assert p.unplaceable() == ["needs_big"]
    assert not p.accepts(ResourceSpec(ranks=3)) and p.accepts(ResourceSpec(ranks=3), live=False)
    assert p.pools() == {"default": [2]}
    p.lose_worker("small")
    assert not p.any_alive()


# -- properties ---------------------------------------------------------------------------------

POOLS = {"cpu": 0, "wide": 0, "gpu": 1}  # pool name -> GPUs per rank

workers_st = st.lists(
    st.tuples(st.sampled_from(["cpu", "cpu", "wide", "gpu"]), st.lists(st.integers(1, 4), min_size=1, max_size=3),
              st.integers(1, 2)),
    min_size=1, max_size=3)
tasks_st = st.lists(
    st.tuples(st.sampled_from([1, 1, 1, 2, 3, 4]), st.sampled_from([1, 1, 2, 3]), st.sampled_from([0, 0, 0, 1]),
              st.sampled_from([None, None, None, "cpu", "wide", "gpu", "none-such"])),
    min_size=20, max_size=40)
# After each submission: whether a placement pass runs, and how many running tasks end (oldest first).
steps_st = st.lists(st.tuples(st.sampled_from([True, False, False, False]), st.sampled_from([0, 0, 1, 1, 2, 5])),
                    min_size=40, max_size=40)


class Simulation:
    """Random workers and a task stream in virtual time; records every start and checks the invariants as it goes.

    Tasks with a walltime are stopped when it ends (the dispatcher does); each
    step advances the clock by one second.
    """

    def __init__(self, workers, limit: int) -> None:
        self.p = Placement(starvation_limit=limit)
        self.limit = limit
        self.now = 0.0
        self.sizes: Dict[str, int] = {}
        self.hosts: Dict[str, Dict[int, str]] = {}
        for i, (pool, per_host, cores) in enumerate(workers):
            uid = f"w{i}"
            self.p.add_worker(uid, sum(per_host), pool=pool, gpus_per_rank=POOLS[pool], cores_per_rank=cores)
            rank = 0
            self.hosts[uid] = {}
            for h, n in enumerate(per_host):
                for _ in range(n):
                    self.hosts[uid][rank] = f"{uid}-host{h}"
                    self.p.join(uid, rank, f"{uid}-host{h}")
                    rank += 1
            self.sizes[uid] = rank
        self.specs: Dict[str, ResourceSpec] = {}
        self.order: List[str] = []  # submission order of accepted tasks
        self.waiting: List[str] = []
        self.running: Dict[str, Placed] = {}
        self.started_at: Dict[str, float] = {}
        self.started: List[str] = []
        self.passed_over: Dict[str, int] = {}
        # reservation -> (its ranks, worker, shadow, tasks it waits for)
        self.reserved: Dict[str, Tuple[set, str, object, set]] = {}

    def submit(self, uid: str, spec: ResourceSpec) -> None:
        if not self.p.accepts(spec):
            return
        self.specs[uid] = spec
        self.order.append(uid)
        self.waiting.append(uid)
        self.passed_over[uid] = 0
        self.p.enqueue(uid, spec)

    def pools_for(self, spec: ResourceSpec) -> set:
        w = self.p.workers()
        cpu = any(not x.gpus_per_rank for x in w)
        return {x.pool for x in w if pool_accepts(spec, x.pool, x.host_sizes(), x.gpus_per_rank,
                                                  x.cores_per_rank, cpu)}

    def place(self) -> None:
        before = self.p.reservations()
        due = [t for t, (_, _, shadow, waits) in self.reserved.items()
               if not waits & set(self.running) and (shadow is None or self.now >= shadow)]
        started = self.p.place(self.now)
        after = self.p.reservations()
        for placed in started:
            uid = placed.uid
            pool = self.p.worker(placed.worker).pool
            for earlier in self.waiting[:self.waiting.index(uid)]:
                if pool in self.pools_for(self.specs[earlier]):
                    self.passed_over[earlier] += 1
            self.waiting.remove(uid)
            self.running[uid] = placed
            self.started_at[uid] = self.now
            self.started.append(uid)
            self.check_start(placed)
            ranks = {r for g in placed.groups for r in g}
            for t, res in before.items():
                if t != uid and t in after and res.worker == placed.worker:
                    held = {r for g in res.groups for r in g}
                    if ranks & held:  # only a task that ends before the reserved ranks are all needed
                        wall = self.specs[uid].walltime
                        assert res.shadow is not None and wall is not None and self.now + wall <= res.shadow, \
                            f"{uid} started on ranks reserved for {t}"
        for t, res in after.items():
            if t not in before or self.reserved.get(t, (None, None))[1] != res.worker:
                held = {r for g in res.groups for r in g}
                waits = {u for u, pl in self.running.items() if pl.worker == res.worker
                         and held & {r for g in pl.groups for r in g}}
                self.reserved[t] = (held, res.worker, res.shadow, waits)
        for t in due:
            assert t in self.started_at, f"{t}'s reserved ranks were all free, yet it did not start"
        for t in list(self.reserved):
            if t in self.started_at:
                del self.reserved[t]
        self.check_ranks()

    def tick(self, finish: int) -> None:
        """One second passes: the ``finish`` oldest running tasks end, and those past their walltime."""
        self.now += 1
        for uid in list(self.running)[:finish]:
            self.end(uid)
        for uid in list(self.running):
            wall = self.specs[uid].walltime
            if wall is not None and self.started_at[uid] + wall <= self.now:
                self.end(uid)

    def end(self, uid: str) -> None:
        self.p.finish(uid)
        del self.running[uid]

    def check_start(self, placed: Placed) -> None:
        spec, w = self.specs[placed.uid], self.p.worker(placed.worker)
        assert len(placed.groups) == spec.ranks
        per = ranks_per_task_rank(spec, w.cores_per_rank)
        for group in placed.groups:
            assert len(group) == per
            assert len({self.hosts[w.uid][r] for r in group}) == 1, "a rank's cores are on one host"
        assert placed.cores == per * w.cores_per_rank >= spec.cores_per_rank
        assert w.gpus_per_rank >= spec.gpus_per_rank
        if spec.pool is not None:
            assert w.pool == spec.pool
        elif spec.gpus_per_rank == 0 and any(not x.gpus_per_rank for x in self.p.workers()):
            assert w.gpus_per_rank == 0, "CPU tasks keep off GPU pools while a CPU pool exists"
        if spec.num_nodes is not None:
            hosts = [self.hosts[w.uid][g[0]] for g in placed.groups]
            assert len(set(hosts)) == spec.num_nodes
            assert all(hosts.count(h) == spec.ranks_per_node for h in set(hosts))

    def check_ranks(self) -> None:
        for uid, size in self.sizes.items():
            taken = [r for placed in self.running.values() if placed.worker == uid
                     for g in placed.groups for r in g]
            assert len(taken) == len(set(taken)), "a rank given twice"
            assert set(taken) <= set(range(size)), "more ranks busy than exist"
            assert not set(taken) & self.p.worker(uid).free, "a busy rank is free"
            assert len(taken) + len(self.p.worker(uid).free) == size, "a rank was lost track of"

    def drain(self) -> None:
        for _ in range(2 * len(self.order) + 2):
            self.place()
            if not self.waiting and not self.running:
                return
            self.tick(len(self.running))
        raise AssertionError(f"tasks never started: {self.waiting}")


walltime_st = st.sampled_from([None, None, 1, 2, 3, 5])


@settings(max_examples=500, deadline=None)
@given(workers=workers_st, tasks=tasks_st, steps=steps_st, limit=st.integers(0, 3),
       walls=st.lists(walltime_st, min_size=40, max_size=40))
def test_any_stream_packs_safely_and_nobody_starves(workers, tasks, steps, limit, walls):
    """No rank given twice, constraints honoured, FIFO among equals, and a starved task's wait is bounded.

    The bound: once a task holds a reservation, nothing starts on its ranks
    except tasks whose walltime ends by the reservation's shadow time, and it
    starts in the first pass after the tasks it waits for have ended.
    """
    sim = Simulation(workers, limit)
    for i, (ranks, cores, gpus, pool) in enumerate(tasks):
        sim.submit(f"t{i:02d}", ResourceSpec(ranks=ranks, cores_per_rank=cores, gpus_per_rank=gpus, pool=pool,
                                             walltime=walls[i]))
        place, finish = steps[i]
        if place:
            sim.place()
        sim.tick(finish)
    sim.drain()
    assert sorted(sim.started) == sorted(sim.order), "every accepted task runs"
    target(float(max(sim.passed_over.values(), default=0)))  # steer towards streams that pass tasks over most
    # equal tasks start in the order they came
    for spec in set(sim.specs.values()):
        same = [u for u in sim.order if sim.specs[u] == spec]
        assert [u for u in sim.started if sim.specs[u] == spec] == same


nodes_st = st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 4])), min_size=10, max_size=30)


@settings(max_examples=200, deadline=None)
@given(per_host=st.lists(st.integers(1, 4), min_size=2, max_size=5), tasks=nodes_st, limit=st.integers(0, 2),
       finishes=st.lists(st.integers(0, 3), min_size=30, max_size=30))
def test_node_shaped_tasks_get_whole_hosts_and_start(per_host, tasks, limit, finishes):
    """num_nodes x ranks_per_node on exactly that many hosts, mixed with plain tasks, reservations and all."""
    sim = Simulation([("cpu", per_host, 1)], limit)
    for i, (nodes, per_node) in enumerate(tasks):
        if i % 3:
            sim.submit(f"t{i:02d}", ResourceSpec(ranks=nodes * per_node, num_nodes=nodes, ranks_per_node=per_node))
        else:
            sim.submit(f"t{i:02d}", ResourceSpec(ranks=nodes))
        sim.place()
        sim.tick(finishes[i])
    sim.drain()
    assert sorted(sim.started) == sorted(sim.order)


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=60), ranks=st.integers(1, 8))
def test_one_pool_is_filled_as_far_as_the_fifo_allows(sizes, ranks):
    """With nothing finishing, a pass starts tasks until the next one in line (or any behind it) fits nowhere."""
    p = _placement(("w", ["h"] * ranks), limit=len(sizes) + 1)
    for i, n in enumerate(sizes):
        if n <= ranks:
            _submit(p, f"t{i:02d}", ranks=n)
    started = _started(p)
    free = len(p.worker("w").free)
    assert sum(len(s.ranks) for s in started.values()) + free == ranks
    left = [n for i, n in enumerate(sizes) if n <= ranks and f"t{i:02d}" not in started]
    assert all(n > free for n in left), "a waiting task that fits was left out"


@pytest.mark.parametrize("limit", [0, 1, 5])
def test_a_stream_of_small_tasks_cannot_starve_a_big_one(limit):
    p = _placement(("w", ["h"] * 4), limit=limit)
    _submit(p, "first", ranks=1)
    _started(p)
    _submit(p, "big", ranks=4)
    passed, i = 0, 0
    running = ["first"]
    while "big" not in (started := _started(p)):
        passed += len(started)
        running += list(started)
        _submit(p, f"s{i}", ranks=1)
        i += 1
        p.finish(running.pop(0))
        assert i < 100, "big never started"
    assert passed <= limit
