"""Placement policy: which waiting task starts on which ranks of which worker.

A pure policy, with no sockets and no clock of its own (the caller passes
the time to :meth:`Placement.place`), so that packing and starvation can be
tested with simulated workers.  The dispatcher tells it what happens (a
worker is expected, a rank joins, a task is submitted or finishes, a worker
is lost), asks :meth:`Placement.needs_pass` whether anything changed, and
only then asks it what to start.

Rules
-----
- Tasks wait in order of their ``priority`` (lower first, none last, as HTEX
  orders its queue), first come first served among equals.  Tasks of one
  shape (ranks, cores and GPUs per rank, pool, nodes) start in the order
  they came.  A pass considers, in queue order, the oldest waiting task of
  each shape that could fit the free ranks, and starts it on a live, ready
  worker that can hold it, choosing the worker with the fewest free ranks
  that still fits (best fit), and ranks on one host when one host has
  enough (the host with the fewest free ranks that suffice).
- Smaller tasks may start ahead of a larger one that does not fit yet
  (backfill).  Once the oldest task of a shape has been passed over
  ``starvation_limit`` times (a later task started in a pool it could use),
  it gets a reservation: the ranks it will run on, chosen where running
  tasks are expected to free enough soonest (by their walltime; a task
  without one counts as ``default_runtime`` long).  Reserved ranks that free
  are held for it; nothing else starts on them, except a task whose walltime
  ends before every task running on the reserved ranks must have ended (the
  shadow time; EASY backfill).  Everything else keeps running on the other
  ranks.  So a starved task waits at most until the tasks that held its
  reserved ranks when it was reserved have ended, or their walltimes.
- Routing: a task naming a pool runs only there; a task asking for no GPU
  and naming no pool keeps off GPU pools while a CPU pool is alive, so GPUs
  stay free for the tasks that need them; a worker must give each rank at
  least the GPUs the task asks for.
- Cores per rank: a worker rank owns its pool's ``cores_per_rank`` cores
  (``c``).  A task asking for ``k > c`` cores per rank takes ``ceil(k / c)``
  worker ranks on one host for each of its ranks: the lowest of them runs the
  task rank, the others stay idle so their cores are free for its threads, and
  all are freed with the task.  The task rank is told the cores it holds,
  ``ceil(k / c) * c`` (``CylonContext.cores``); nothing sets a thread count
  for it.  A task that asks for ``k <= c`` runs on one worker rank per rank.
- Nodes: a task asking for ``num_nodes`` hosts with ``ranks_per_node`` ranks
  on each gets exactly that, on hosts of one worker (task ranks in host
  order: the first ``ranks_per_node`` on the first host, ...).

Costs
-----
A pass runs only after something changed, looks only at shapes whose rank
count fits the largest free capacity, and stops at ``pass_limit`` starts
(the next pass goes on).  Admission (which workers can ever run a shape) is
cached per shape until the set of workers changes.  Free ranks are kept per
host, and hosts in buckets by their number of free ranks, so finding a host
and starting a task cost the ranks taken, not the worker's size.
"""
from __future__ import annotations

import bisect
import heapq
import itertools
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Deque, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ...resources import ResourceSpec
from .admission import pool_accepts, ranks_per_task_rank

#: Starved tasks one call tries to find a reservation for.
_PROJECTIONS = 2

#: (ranks, cores per rank, GPUs per rank, pool, nodes, ranks per node): what admission and packing look at.
Shape = Tuple[int, int, int, Optional[str], Optional[int], Optional[int]]


class _FreeIndex:
    """Free ranks of one worker by host, and hosts by how many free ranks they have."""

    __slots__ = ("by_host", "buckets", "count")

    def __init__(self) -> None:
        self.by_host: Dict[str, Set[int]] = {}
        self.buckets: Dict[int, Dict[str, None]] = {}  # free count -> hosts with that many (non-empty only)
        self.count = 0

    def copy(self) -> _FreeIndex:
        other = _FreeIndex()
        other.by_host = {h: set(rs) for h, rs in self.by_host.items()}
        other.buckets = {c: dict(hs) for c, hs in self.buckets.items()}
        other.count = self.count
        return other

    def _move(self, host: str, old: int, new: int) -> None:
        if old:
            bucket = self.buckets[old]
            del bucket[host]
            if not bucket:
                del self.buckets[old]
        if new:
            self.buckets.setdefault(new, {})[host] = None

    def add(self, host: str, ranks: Iterable[int]) -> None:
        have = self.by_host.get(host)
        if have is None:
            have = self.by_host[host] = set()
        old = len(have)
        have.update(ranks)
        self.count += len(have) - old
        self._move(host, old, len(have))

    def remove(self, host: str, ranks: Iterable[int]) -> None:
        have = self.by_host[host]
        old = len(have)
        have.difference_update(ranks)
        self.count -= old - len(have)
        self._move(host, old, len(have))
        if not have:
            del self.by_host[host]

    def ranks(self) -> Set[int]:
        return {r for rs in self.by_host.values() for r in rs}

    def can_start(self, spec: ResourceSpec, per: int) -> bool:
        """Whether ``spec`` fits these ranks, ``per`` worker ranks on one host for each task rank."""
        if spec.num_nodes is None:
            if self.count < spec.ranks * per:
                return False
            if per == 1:
                return True
            return sum((c // per) * len(hs) for c, hs in self.buckets.items()) >= spec.ranks
        need = spec.ranks_per_node * per
        return sum(len(hs) for c, hs in self.buckets.items() if c >= need) >= spec.num_nodes

    def pick(self, spec: ResourceSpec, per: int) -> List[List[int]]:
        """The groups ``spec`` would take (call only when :meth:`can_start`)."""
        if spec.num_nodes is not None:
            need = spec.ranks_per_node * per
            hosts: List[Tuple[int, str]] = []
            for c in sorted(k for k in self.buckets if k >= need):
                for h in self.buckets[c]:
                    hosts.append((min(self.by_host[h]), h))
                    if len(hosts) == spec.num_nodes:
                        break
                if len(hosts) == spec.num_nodes:
                    break
            return [g for _, h in sorted(hosts) for g in _chunks(sorted(self.by_host[h]), per)[:spec.ranks_per_node]]
        need = spec.ranks * per
        best = min((c for c in self.buckets if c >= need), default=None)
        if best is not None:  # one host has enough: the one with the fewest free ranks that suffice
            host = next(iter(self.buckets[best]))
            return _chunks(sorted(self.by_host[host]), per)[:spec.ranks]
        groups: List[List[int]] = []  # span hosts, filling the fullest first so whole hosts stay free
        for c in sorted(k for k in self.buckets if k >= per):
            for h in self.buckets[c]:
                groups.extend(_chunks(sorted(self.by_host[h]), per))
                if len(groups) >= spec.ranks:
                    return sorted(groups[:spec.ranks], key=lambda g: g[0])
        raise AssertionError("pick() called on ranks that cannot hold the task")


class WorkerSlots:
    """One worker as placement sees it: size, pool, and which of its ranks are free.

    Parameters
    ----------
    uid : str
        The worker's id.
    size : int
        Ranks of the worker.
    pool : str
        The pool it belongs to.
    gpus_per_rank : int
        GPUs each of its ranks has.
    cores_per_rank : int
        Cores each of its ranks owns.

    Attributes
    ----------
    hosts : dict
        Host of every rank that has joined, by rank.
    alive : bool
        False once the worker is lost; nothing is placed on it again.
    avail : _FreeIndex
        Free ranks that no reservation holds, by host.
    reserved : dict
        Rank -> the waiting task it is reserved for (free or still busy).
    running : dict
        Tasks running on the worker (keys).
    """

    def __init__(self, uid: str, size: int, pool: str = "default", gpus_per_rank: int = 0,
                 cores_per_rank: int = 1) -> None:
        self.uid = uid
        self.size = size
        self.pool = pool
        self.gpus_per_rank = gpus_per_rank
        self.cores_per_rank = cores_per_rank
        self.hosts: Dict[int, str] = {}
        self.alive = True
        self.avail = _FreeIndex()  # free ranks no reservation holds
        self.reserved: Dict[int, str] = {}  # rank -> the waiting task it is reserved for
        self.held = 0  # free ranks held by reservations
        self.holds: Dict[str, _Held] = {}  # reservations on this worker, by task
        self.running: Dict[str, None] = {}  # tasks running here
        self._ends: List[Tuple[float, int, str]] = []  # (expected end, seq, task) heap; stale entries skipped
        self._layout: Optional[List[int]] = None

    def __repr__(self) -> str:
        return f"WorkerSlots({self.uid!r}, size={self.size}, pool={self.pool!r}, free={self.idle})"

    @property
    def ready(self) -> bool:
        """Whether every rank has joined."""
        return len(self.hosts) == self.size

    @property
    def free(self) -> Set[int]:
        """Joined ranks that run nothing and hold nothing (a new set; reserved ones included)."""
        out = self.avail.ranks()
        for held in self.holds.values():
            out |= held.free.ranks()
        return out

    @property
    def idle(self) -> int:
        """How many ranks are free, reserved ones included."""
        return self.avail.count + self.held

    def join(self, rank: int, host: str) -> None:
        """Rank ``rank`` is up on ``host`` and free."""
        self.hosts[rank] = host
        self.avail.add(host, (rank,))
        self._layout = None

    def host_sizes(self) -> List[int]:
        """Ranks per host; ranks that have not joined yet count as one more host."""
        if self._layout is None:
            per_host: Dict[str, int] = defaultdict(int)
            for host in self.hosts.values():
                per_host[host] += 1
            missing = self.size - len(self.hosts)
            self._layout = list(per_host.values()) + ([missing] if missing else [])
        return self._layout

    def by_host(self, ranks: Iterable[int]) -> Dict[str, List[int]]:
        """``ranks`` grouped by their host."""
        out: Dict[str, List[int]] = defaultdict(list)
        for r in ranks:
            out[self.hosts[r]].append(r)
        return out


@dataclass(frozen=True)
class Placed:
    """A task started by :meth:`Placement.place`.

    Parameters
    ----------
    uid : str
        The task.
    worker : str
        The worker it runs on.
    groups : tuple of tuple of int
        One group of worker ranks on one host per task rank: task rank ``i``
        runs on ``groups[i][0]``; the others are held idle for their cores.
    cores : int
        Cores each task rank holds.
    """

    uid: str
    worker: str
    groups: Tuple[Tuple[int, ...], ...]
    cores: int = 1

    @property
    def ranks(self) -> Tuple[int, ...]:
        """Worker ranks that run the task: task rank ``i`` on ``ranks[i]``."""
        return tuple(g[0] for g in self.groups)

    @property
    def reserved(self) -> Tuple[int, ...]:
        """Worker ranks held idle for their cores."""
        return tuple(r for g in self.groups for r in g[1:])


@dataclass(frozen=True)
class Reservation:
    """Ranks held for a starved task (see :meth:`Placement.reservations`).

    Parameters
    ----------
    uid : str
        The waiting task.
    worker : str
        The worker the ranks belong to.
    groups : tuple of tuple of int
        The groups it will start on, as :attr:`Placed.groups`.
    shadow : float or None
        Time by which every task running on these ranks when they were
        reserved must have ended (their walltimes); None when one of them
        had no walltime, and then nothing is backfilled onto them.
    """

    uid: str
    worker: str
    groups: Tuple[Tuple[int, ...], ...]
    shadow: Optional[float]


class _Waiting:
    __slots__ = ("uid", "spec", "seq", "key", "mark", "mark_total", "early", "starved")

    def __init__(self, uid: str, spec: ResourceSpec, seq: int, key: Tuple[float, Shape]) -> None:
        self.uid = uid
        self.spec = spec
        self.seq = seq
        self.key = key
        self.mark: Dict[str, int] = {}  # starts per pool when it became the oldest of its shape
        self.mark_total = 0
        self.early = 0  # of the starts since, those of tasks ahead of it in the queue
        self.starved = False


class _Running:
    __slots__ = ("placed", "end")

    def __init__(self, placed: Placed, end: Optional[float]) -> None:
        self.placed = placed
        self.end = end  # latest end by its walltime, None without one


class _Held:
    """A reservation and the free ranks it holds so far."""

    __slots__ = ("res", "ranks", "free")

    def __init__(self, res: Reservation) -> None:
        self.res = res
        self.ranks = {r for g in res.groups for r in g}
        self.free = _FreeIndex()


class _Admission:
    __slots__ = ("gen", "workers", "per", "pools")

    def __init__(self, gen: int, workers: List[WorkerSlots], per: List[int]) -> None:
        self.gen = gen
        self.workers = workers
        self.per = per
        self.pools = sorted({w.pool for w in workers})


class Placement:
    """The queue of waiting tasks and the workers' free ranks; decides what starts where.

    Parameters
    ----------
    starvation_limit : int
        How often the oldest waiting task of a shape may be passed over by
        later ones (backfill) before it gets a reservation.
    default_runtime : float
        Seconds a running task without a walltime is expected to run, to
        choose the ranks a reservation waits for (never to backfill).
    reservations_per_worker : int
        Most reservations held on one worker at once; further starved tasks
        get theirs, in queue order, as these start.
    pass_limit : int
        Most worker ranks one :meth:`place` hands out (it starts one task
        at least); :meth:`needs_pass` stays true
        when it stopped there, so the caller's loop keeps answering messages
        while a deep queue drains.
    """

    def __init__(self, starvation_limit: int = 16, default_runtime: float = 3600.0, pass_limit: int = 8192,
                 reservations_per_worker: int = 1) -> None:
        self.starvation_limit = starvation_limit
        self.reservations_per_worker = reservations_per_worker
        self.default_runtime = default_runtime
        self.pass_limit = pass_limit
        self._workers: Dict[str, WorkerSlots] = {}
        self._waiting: Dict[str, _Waiting] = {}
        self._queues: Dict[Tuple[float, Shape], Deque[_Waiting]] = {}  # (level, shape) -> FIFO
        self._by_ranks: List[Tuple[int, int]] = []  # sorted (ranks, queue id) of non-empty queues
        self._qid: Dict[Tuple[float, Shape], int] = {}
        self._key_of: Dict[int, Tuple[float, Shape]] = {}
        self._qids = itertools.count()
        self._running: Dict[str, _Running] = {}
        self._held: Dict[str, _Held] = {}  # task uid -> its reservation
        self._starved: Dict[str, None] = {}  # starved oldest-of-shape tasks still without a reservation
        self._crossing: List[Tuple[int, int, str]] = []  # (total starts at which it may be starved, seq, uid)
        self._starts: Dict[str, int] = defaultdict(int)  # tasks started per pool, ever
        self._starts_total = 0
        self._seq = itertools.count()
        self._gen = 0  # bumped whenever the set of usable workers changes
        self._admission: Dict[Shape, _Admission] = {}
        self._accepts: Dict[Shape, Tuple[int, bool]] = {}  # any worker ever declared
        self._live_fit: Dict[Shape, Tuple[int, List[WorkerSlots]]] = {}
        self._dirty = False
        self._pass_began: Dict[str, int] = {}
        self._pass_total = 0
        self._projections = _PROJECTIONS
        self._held_grew = False  # ranks were held for a reservation since the last pass
        self._retry = False  # a reservation ended: starved tasks without one may get one now
        self._now = 0.0

    # -- workers -----------------------------------------------------------------

    def add_worker(self, uid: str, size: int, pool: str = "default", gpus_per_rank: int = 0,
                   cores_per_rank: int = 1) -> WorkerSlots:
        """Declare a worker; its ranks become usable as they :meth:`join`."""
        slots = self._workers[uid] = WorkerSlots(uid=uid, size=size, pool=pool, gpus_per_rank=gpus_per_rank,
                                                 cores_per_rank=cores_per_rank)
        self._gen += 1
        return slots

    def worker(self, uid: str) -> Optional[WorkerSlots]:
        return self._workers.get(uid)

    def workers(self) -> List[WorkerSlots]:
        return list(self._workers.values())

    def join(self, uid: str, rank: int, host: str) -> WorkerSlots:
        """Rank ``rank`` of worker ``uid`` is up on ``host`` and free."""
        w = self._workers[uid]
        w.join(rank, host)
        self._gen += 1
        if w.ready:
            self._dirty = True
        return w

    def lose_worker(self, uid: str) -> List[str]:
        """Mark worker ``uid`` lost; return (and forget) the tasks that were running on it."""
        w = self._workers[uid]
        w.alive = False
        for task, held in list(self._held.items()):
            if held.res.worker == uid:
                self._unreserve(task, back_to_avail=False)
        w.avail = _FreeIndex()
        w.reserved.clear()
        w.held = 0
        lost = list(w.running)
        for t in lost:
            del self._running[t]
        w.running.clear()
        w._ends.clear()
        self._gen += 1
        self._dirty = True
        return lost

    def forget_worker(self, uid: str) -> None:
        """Drop a lost worker (another replaces it), so replacements do not pile up."""
        w = self._workers.get(uid)
        if w is not None and not w.alive:
            del self._workers[uid]
            self._gen += 1

    def any_alive(self) -> bool:
        return any(w.alive for w in self._workers.values())

    def pools(self) -> Dict[str, List[int]]:
        """Sizes of the live workers of each pool."""
        out: Dict[str, List[int]] = defaultdict(list)
        for w in list(self._workers.values()):
            if w.alive:
                out[w.pool].append(w.size)
        return dict(out)

    # -- tasks -------------------------------------------------------------------

    def accepts(self, spec: ResourceSpec, live: bool = True) -> bool:
        """Whether some worker (a live one, or any ever declared) could ever run ``spec``."""
        if live:
            return bool(self._fitting(spec, _shape(spec))[1])
        key = _shape(spec)
        hit = self._accepts.get(key)
        if hit is not None and hit[0] == self._gen:
            return hit[1]
        workers = list(self._workers.values())
        cpu_pool = any(not w.gpus_per_rank for w in workers)
        ok = any(_fits(w, spec, cpu_pool) for w in workers)
        self._accepts[key] = (self._gen, ok)
        return ok

    def _fitting(self, spec: ResourceSpec, shape: Shape) -> Tuple[int, List[WorkerSlots]]:
        """The live workers that could ever run ``shape``, computed once per shape until the workers change."""
        hit = self._live_fit.get(shape)
        if hit is None or hit[0] != self._gen:
            live = [w for w in list(self._workers.values()) if w.alive]
            cpu_pool = any(not w.gpus_per_rank for w in live)
            hit = self._live_fit[shape] = (self._gen, [w for w in live if _fits(w, spec, cpu_pool)])
        return hit

    def enqueue(self, uid: str, spec: ResourceSpec) -> None:
        """Put task ``uid`` in the queue: behind the tasks of its priority and of every lower one."""
        key = (_level(spec), _shape(spec))
        task = self._waiting[uid] = _Waiting(uid, spec, next(self._seq), key)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
            qid = self._qid[key] = next(self._qids)
            self._key_of[qid] = key
            bisect.insort(self._by_ranks, (spec.ranks, qid))
        q.append(task)
        if len(q) == 1:
            self._became_oldest(task)
            self._may_backfill(task)
        self._dirty = True

    def waiting(self) -> List[str]:
        """Waiting tasks in the order a pass considers them."""
        return [t.uid for t in sorted(self._waiting.values(), key=lambda t: (t.key[0], t.seq))]

    def unplaceable(self) -> List[str]:
        """Drop and return the waiting tasks that no live worker can ever run."""
        dropped: List[_Waiting] = []
        for q in list(self._queues.values()):
            if not self.accepts(q[0].spec):
                dropped.extend(q)
                for task in list(q):
                    self._drop(task)
        return [t.uid for t in sorted(dropped, key=lambda t: t.seq)]

    def finish(self, uid: str) -> Optional[Placed]:
        """Task ``uid`` ended: free its ranks (those it ran on and those it held) if its worker lives."""
        run = self._running.pop(uid, None)
        if run is None:
            return None
        placed = run.placed
        w = self._workers.get(placed.worker)
        if w is not None and w.alive:
            w.running.pop(uid, None)
            if len(w._ends) > 64 and len(w._ends) > 2 * len(w.running):
                w._ends = [e for e in w._ends if e[2] in w.running]
                heapq.heapify(w._ends)
            self._free(w, [r for g in placed.groups for r in g])
            self._dirty = True
        return placed

    def clear(self) -> List[str]:
        """Forget every waiting and running task; return their ids."""
        uids = [t.uid for t in sorted(self._waiting.values(), key=lambda t: t.seq)] + list(self._running)
        for uid in list(self._held):
            self._unreserve(uid)
        for w in self._workers.values():
            w.running.clear()
            w._ends.clear()
        self._waiting.clear()
        self._queues.clear()
        self._by_ranks.clear()
        self._qid.clear()
        self._key_of.clear()
        self._running.clear()
        self._starved.clear()
        self._crossing.clear()
        return uids

    def busy(self) -> bool:
        """Whether any task waits or runs."""
        return bool(self._waiting or self._running)

    def needs_pass(self) -> bool:
        """Whether :meth:`place` could start anything: capacity or the queue changed since the last pass."""
        return self._dirty and bool(self._waiting)

    def reservations(self) -> Dict[str, Reservation]:
        """The reservations of starved tasks, by task."""
        return {uid: held.res for uid, held in self._held.items()}

    def place(self, now: Optional[float] = None) -> List[Placed]:
        """Start what fits now, in queue order, with best fit and backfill around reservations.

        ``now`` is the caller's clock (seconds, any origin, the same in every
        call); walltimes are measured on it.  Without it the last one given
        (or 0) is used.
        """
        if now is not None:
            self._now = now
        self._dirty = False
        started: List[Placed] = []
        if not self._waiting:
            return started
        self._pass_began = dict(self._starts)
        self._projections = _PROJECTIONS
        self._pass_total = self._starts_total
        self._reserve_starved(self._newly_starved() if not self._retry else list(self._starved))
        self._retry = False
        # what could start: tasks on free ranks, short tasks on held ones, reserved tasks whose ranks are all free
        cap = max((w.avail.count for w in self._workers.values() if w.alive and w.ready), default=0)
        cut = bisect.bisect_right(self._by_ranks, (cap, 1 << 62))
        heads = [(q[0].key[0], q[0].seq, q[0].key) for _, qid in self._by_ranks[:cut]
                 for q in (self._queues[self._key_of[qid]],)]
        if self._held_grew:  # short tasks onto held ranks: only worth a look when those grew
            self._held_grew = False
            windows = [(h.free.count, h.res.shadow) for h in self._held.values()
                       if h.res.shadow is not None and h.res.shadow > self._now and h.free.count]
            if windows:
                most, latest = max(c for c, _ in windows), max(t for _, t in windows)
                for _, qid in self._by_ranks[cut:bisect.bisect_right(self._by_ranks, (most, 1 << 62))]:
                    t = self._queues[self._key_of[qid]][0]
                    if t.spec.walltime is not None and self._now + t.spec.walltime <= latest and any(
                            c >= t.spec.ranks and self._now + t.spec.walltime <= shadow for c, shadow in windows):
                        heads.append((t.key[0], t.seq, t.key))
        heads += [(t.key[0], t.seq, t.key) for uid, held in self._held.items()
                  if held.free.count == len(held.ranks) and held.free.count > cap for t in (self._waiting[uid],)]
        if not heads:
            return started
        heapq.heapify(heads)
        handed = 0
        while heads:
            if handed >= self.pass_limit:
                self._dirty = True
                break
            _, _, key = heapq.heappop(heads)
            q = self._queues.get(key)
            if not q:
                continue
            task = q[0]
            placed = self._try_start(task)
            if placed is None:
                # the starts of this pass so far were of tasks ahead of it: not passes over it
                if self._starts_total != self._pass_total:
                    task.early += sum(self._starts.get(p, 0) - max(self._pass_began.get(p, 0), task.mark.get(p, 0))
                                      for p in self._admit(task.spec, task.key[1]).pools)
                if not task.starved and self._starts_total - task.mark_total >= self.starvation_limit \
                        and self._passed_over(task) >= self.starvation_limit:
                    self._starve(task)
                    self._reserve_starved([task.uid])
                continue
            started.append(placed)
            handed += sum(len(g) for g in placed.groups)
            if q:
                heapq.heappush(heads, (q[0].key[0], q[0].seq, key))
            if self._crossing and self._crossing[0][0] <= self._starts_total:
                self._reserve_starved(self._newly_starved())
        return started

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Per pool: ranks, busy and idle ranks, queued and running tasks."""
        view: Dict[str, Dict[str, int]] = defaultdict(lambda: {"ranks": 0, "busy": 0, "idle": 0,
                                                               "queued": 0, "running": 0})
        for w in list(self._workers.values()):
            if w.alive:
                v = view[w.pool]
                v["ranks"] += w.size
                v["idle"] += w.idle
                v["busy"] += len(w.hosts) - w.idle
                v["running"] += len(w.running)
        for (_, shape), q in list(self._queues.items()):
            view[shape[3] or "default"]["queued"] += len(q)
        return dict(view)

    # -- internals ---------------------------------------------------------------

    def _admit(self, spec: ResourceSpec, shape: Optional[Shape] = None) -> _Admission:
        key = shape or _shape(spec)
        adm = self._admission.get(key)
        if adm is None or adm.gen != self._gen:
            workers = [w for w in self._fitting(spec, key)[1] if w.ready]
            adm = self._admission[key] = _Admission(self._gen, workers,
                                                    [ranks_per_task_rank(spec, w.cores_per_rank) for w in workers])
        return adm

    def _try_start(self, task: _Waiting) -> Optional[Placed]:
        adm = self._admit(task.spec, task.key[1])
        best: Optional[Tuple[WorkerSlots, int]] = None
        for w, per in zip(adm.workers, adm.per, strict=True):
            if w.avail.can_start(task.spec, per) and (best is None or w.avail.count < best[0].avail.count):
                best = (w, per)
        if best is not None:
            w, per = best
            if task.uid in self._held:
                self._unreserve(task.uid)
            groups = w.avail.pick(task.spec, per)
            self._take(w, w.avail, groups)
            return self._start(task, w, per, groups)
        held = self._held.get(task.uid)
        if held is not None:
            if held.free.count < len(held.ranks):
                return None
            # its reserved ranks are all free now
            w = self._workers[held.res.worker]
            self._take(w, held.free, held.res.groups)
            self._unreserve(task.uid)
            return self._start(task, w, len(held.res.groups[0]), held.res.groups)
        wall = task.spec.walltime
        if wall is None or not self._held:
            return None
        end = self._now + wall
        for other in self._held.values():  # backfill onto held ranks, ending before they are needed
            res = other.res
            if res.shadow is None or end > res.shadow or not other.free.count:
                continue
            w = self._workers[res.worker]
            if w not in adm.workers:
                continue
            per = adm.per[adm.workers.index(w)]
            if other.free.can_start(task.spec, per):
                groups = other.free.pick(task.spec, per)
                self._take(w, other.free, groups)
                return self._start(task, w, per, groups)
        return None

    @staticmethod
    def _take(w: WorkerSlots, source: _FreeIndex, groups: Sequence[Sequence[int]]) -> None:
        for host, ranks in w.by_host(r for g in groups for r in g).items():
            source.remove(host, ranks)
        if source is not w.avail:
            w.held -= sum(len(g) for g in groups)

    def _start(self, task: _Waiting, w: WorkerSlots, per: int, groups: Sequence[Sequence[int]]) -> Placed:
        placed = Placed(uid=task.uid, worker=w.uid, groups=tuple(tuple(g) for g in groups),
                        cores=per * w.cores_per_rank)
        self._drop(task)
        end = None if task.spec.walltime is None else self._now + task.spec.walltime
        self._running[task.uid] = _Running(placed, end)
        w.running[task.uid] = None
        guess = end if end is not None else self._now + self.default_runtime
        heapq.heappush(w._ends, (guess, task.seq, task.uid))
        self._starts[w.pool] += 1
        self._starts_total += 1
        return placed

    def _free(self, w: WorkerSlots, ranks: Sequence[int]) -> None:
        for host, rs in w.by_host(ranks).items():
            plain = [r for r in rs if r not in w.reserved]
            if plain:
                w.avail.add(host, plain)
            if len(plain) != len(rs):
                for r in rs:
                    owner = w.reserved.get(r)
                    if owner is not None:
                        self._held[owner].free.add(host, (r,))
                        w.held += 1
                        self._held_grew = True

    def _drop(self, task: _Waiting) -> None:
        """Take ``task``, the oldest of its shape, out of the queue."""
        del self._waiting[task.uid]
        self._starved.pop(task.uid, None)
        q = self._queues[task.key]
        q.popleft()
        if q:
            self._became_oldest(q[0])
            self._may_backfill(q[0])
        else:
            del self._queues[task.key]
            qid = self._qid.pop(task.key)
            del self._key_of[qid]
            i = bisect.bisect_left(self._by_ranks, (task.spec.ranks, qid))
            del self._by_ranks[i]
        if task.uid in self._held:
            self._unreserve(task.uid)

    def _became_oldest(self, task: _Waiting) -> None:
        """Passes over a task are counted from when it is the oldest of its shape (the others wait behind it)."""
        task.mark = dict(self._starts)
        task.mark_total = self._starts_total
        heapq.heappush(self._crossing, (self._starts_total + self.starvation_limit, task.seq, task.uid))

    def _may_backfill(self, task: _Waiting) -> None:
        """A new oldest-of-shape task with a walltime may fit on held ranks: the next pass looks at them."""
        if self._held and task.spec.walltime is not None and not self._held_grew:
            self._held_grew = any(h.free.count >= task.spec.ranks for h in self._held.values())

    def _passed_over(self, task: _Waiting) -> int:
        """Starts of later tasks since it became the oldest of its shape, in pools it could use.

        Exact for the passes that looked at it; in a pass that skipped it
        (it needs more ranks than were free) every start counts, so this is
        an upper bound.
        """
        pools = self._admit(task.spec, task.key[1]).pools
        return sum(self._starts.get(p, 0) - task.mark.get(p, 0) for p in pools) - task.early

    def _newly_starved(self) -> List[str]:
        """Oldest-of-shape tasks passed over ``starvation_limit`` times since last asked."""
        out = []
        while self._crossing and self._crossing[0][0] <= self._starts_total:
            _, seq, uid = heapq.heappop(self._crossing)
            task = self._waiting.get(uid)
            if task is None or task.seq != seq or task.starved or self._queues[task.key][0] is not task:
                continue
            over = self._passed_over(task)
            if over >= self.starvation_limit:
                self._starve(task)
                out.append(uid)
            else:
                heapq.heappush(self._crossing, (self._starts_total + self.starvation_limit - over, seq, uid))
        return out

    def _starve(self, task: _Waiting) -> None:
        task.starved = True
        self._starved[task.uid] = None

    def _reserve_starved(self, uids: Sequence[str]) -> None:
        """Reserve ranks for starved tasks without a reservation, in queue order, while workers have room.

        At most :data:`_PROJECTIONS` tasks are tried per pass (each try may
        walk a worker's running tasks); the rest, younger, are tried on the
        next pass.  Starved tasks exist only while tasks run, so a next event
        comes.
        """
        for uid in sorted(uids, key=lambda u: (self._waiting[u].key[0], self._waiting[u].seq)):
            if self._projections <= 0:  # the next pass, on the next event, goes on (never a busy loop)
                self._retry = True
                break
            task = self._waiting[uid]
            if uid in self._held:
                continue
            adm = self._admit(task.spec, task.key[1])
            if any(w.avail.can_start(task.spec, per) for w, per in zip(adm.workers, adm.per, strict=True)):
                continue  # it starts in this pass
            if all(len(w.holds) >= self.reservations_per_worker for w in adm.workers):
                continue
            self._projections -= 1
            if self._reserve(task, adm):
                del self._starved[uid]

    def _reserve(self, task: _Waiting, adm: _Admission) -> bool:
        """Reserve for ``task`` the ranks that are expected to free soonest; False if none can be."""
        best: Optional[Tuple[float, WorkerSlots, int]] = None
        for w, per in zip(adm.workers, adm.per, strict=True):
            if len(w.holds) >= self.reservations_per_worker or len(w.hosts) - len(w.reserved) < task.spec.ranks * per:
                continue
            found = self._project(w, task.spec, per, pick=False)
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], w, per)
        if best is None:
            return False
        _, w, per = best
        _, groups, waits_on = self._project(w, task.spec, per, pick=True)
        ends = [self._running[t].end for t in waits_on]
        shadow = None if any(e is None for e in ends) else max(ends, default=self._now)
        held = _Held(Reservation(task.uid, w.uid, tuple(tuple(g) for g in groups), shadow))
        self._held[task.uid] = w.holds[task.uid] = held
        free_now = [r for r in held.ranks if self._is_avail(w, r)]
        for r in held.ranks:
            w.reserved[r] = task.uid
        for host, rs in w.by_host(free_now).items():
            w.avail.remove(host, rs)
            held.free.add(host, rs)
        w.held += len(free_now)
        self._held_grew = True
        return True

    @staticmethod
    def _is_avail(w: WorkerSlots, r: int) -> bool:
        rs = w.avail.by_host.get(w.hosts[r])
        return rs is not None and r in rs

    def _project(self, w: WorkerSlots, spec: ResourceSpec, per: int,
                 pick: bool) -> Optional[Tuple[float, List[List[int]], List[str]]]:
        """When and where ``spec`` could start on ``w`` as its running tasks end in expected order."""
        proj = w.avail.copy()
        ends = list(w._ends)  # a copy of a heap is a heap
        when = self._now
        counted: Dict[str, List[int]] = {}
        while not proj.can_start(spec, per):
            if not ends:
                return None
            when, _, uid = heapq.heappop(ends)
            if uid not in w.running or uid in counted:
                continue
            run = self._running[uid]
            ranks = [r for g in run.placed.groups for r in g if r not in w.reserved]
            counted[uid] = ranks
            for host, rs in w.by_host(ranks).items():
                proj.add(host, rs)
        if not pick:
            return max(when, self._now), [], []
        groups = proj.pick(spec, per)
        taken = {r for g in groups for r in g}
        waits_on = [uid for uid, ranks in counted.items() if taken.intersection(ranks)]
        return max(when, self._now), groups, waits_on

    def _unreserve(self, uid: str, back_to_avail: bool = True) -> None:
        held = self._held.pop(uid)
        w = self._workers.get(held.res.worker)
        if w is not None:
            w.holds.pop(uid, None)
            for r in held.ranks:
                w.reserved.pop(r, None)
            w.held -= held.free.count
            if back_to_avail and w.alive:
                for host, rs in held.free.by_host.items():
                    w.avail.add(host, rs)
        task = self._waiting.get(uid)
        if task is not None and task.starved:
            self._starved[uid] = None
        self._retry = True  # room for another reservation
        self._dirty = True


def _fits(w: WorkerSlots, spec: ResourceSpec, cpu_pool_exists: bool) -> bool:
    return pool_accepts(spec, w.pool, w.host_sizes(), w.gpus_per_rank, w.cores_per_rank, cpu_pool_exists)


def _shape(spec: ResourceSpec) -> Shape:
    return (spec.ranks, spec.cores_per_rank, spec.gpus_per_rank, spec.pool, spec.num_nodes, spec.ranks_per_node)


def _level(spec: ResourceSpec) -> float:
    return float("inf") if spec.priority is None else float(spec.priority)


def _chunks(ranks: List[int], per: int) -> List[List[int]]:
    return [ranks[i:i + per] for i in range(0, len(ranks) - per + 1, per)]
