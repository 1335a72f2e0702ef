"""Placement policy: which waiting task starts on which ranks of which worker.

A pure policy, with no sockets, clocks or futures, so that packing and
starvation can be tested with simulated workers.  The dispatcher tells it
what happens (a worker is expected, a rank joins, a task is submitted or
finishes, a worker is lost) and asks it what to start.

Rules
-----
- Tasks wait in one queue, in order of their ``priority`` (lower first, none
  last, as HTEX orders its queue), first come first served among equals.
  On every pass each waiting task starts on a live,
  ready worker that can hold it, choosing the worker with the fewest free
  ranks that still fits (best fit), and ranks on one host when one host has
  enough.
- Smaller tasks may start ahead of a larger one that does not fit yet
  (backfill).  Each time a later task starts in a pool a waiting task could
  use, that task has been passed over once; once it has been passed over
  ``starvation_limit`` times nothing behind it starts in those pools until it
  has run.  So no task is passed over more than ``starvation_limit`` times.
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
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from ...resources import ResourceSpec
from .admission import pool_accepts, ranks_per_task_rank


@dataclass
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
    hosts : dict
        Host of every rank that has joined, by rank.
    free : set of int
        Joined ranks that run nothing and hold nothing.
    alive : bool
        False once the worker is lost; nothing is placed on it again.
    """

    uid: str
    size: int
    pool: str = "default"
    gpus_per_rank: int = 0
    cores_per_rank: int = 1
    hosts: Dict[int, str] = field(default_factory=dict)
    free: Set[int] = field(default_factory=set)
    alive: bool = True
    _layout: Optional[List[int]] = field(default=None, repr=False, compare=False)

    @property
    def ready(self) -> bool:
        """Whether every rank has joined."""
        return len(self.hosts) == self.size

    def join(self, rank: int, host: str) -> None:
        """Rank ``rank`` is up on ``host`` and free."""
        self.hosts[rank] = host
        self.free.add(rank)
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

    def free_by_host(self) -> Dict[str, List[int]]:
        """Free ranks by host, lowest first."""
        by_host: Dict[str, List[int]] = defaultdict(list)
        for r in sorted(self.free):
            by_host[self.hosts.get(r, "")].append(r)
        return by_host

    def count_free_groups(self, per: int) -> int:
        """How many groups of ``per`` free ranks on one host the worker has."""
        if per == 1:
            return len(self.free)
        return sum(len(ranks) // per for ranks in self.free_by_host().values())

    def can_start(self, spec: ResourceSpec, per: int) -> bool:
        """Whether ``spec`` fits the free ranks now, ``per`` worker ranks for each task rank."""
        if spec.num_nodes is None:
            return self.count_free_groups(per) >= spec.ranks
        roomy = sum(1 for ranks in self.free_by_host().values() if len(ranks) // per >= spec.ranks_per_node)
        return roomy >= spec.num_nodes


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


@dataclass
class _Waiting:
    uid: str
    spec: ResourceSpec
    passed_over: int = 0


class Placement:
    """The FIFO of waiting tasks and the workers' free ranks; decides what starts where.

    Parameters
    ----------
    starvation_limit : int
        How often a waiting task may be passed over by later ones (backfill)
        before nothing behind it starts in its pools.
    """

    def __init__(self, starvation_limit: int = 16) -> None:
        self.starvation_limit = starvation_limit
        self._workers: Dict[str, WorkerSlots] = {}
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()
        # The same tasks by priority level, each level first come first served; sorted levels are
        # few (usually one), so a pass stays linear in the queue.
        self._levels: Dict[float, OrderedDict[str, _Waiting]] = {}
        self._running: Dict[str, Placed] = {}

    # -- workers -----------------------------------------------------------------

    def add_worker(self, uid: str, size: int, pool: str = "default", gpus_per_rank: int = 0,
                   cores_per_rank: int = 1) -> WorkerSlots:
        """Declare a worker; its ranks become usable as they :meth:`join`."""
        slots = self._workers[uid] = WorkerSlots(uid=uid, size=size, pool=pool, gpus_per_rank=gpus_per_rank,
                                                 cores_per_rank=cores_per_rank)
        return slots

    def worker(self, uid: str) -> Optional[WorkerSlots]:
        return self._workers.get(uid)

    def workers(self) -> List[WorkerSlots]:
        return list(self._workers.values())

    def join(self, uid: str, rank: int, host: str) -> WorkerSlots:
        """Rank ``rank`` of worker ``uid`` is up on ``host`` and free."""
        w = self._workers[uid]
        w.join(rank, host)
        return w

    def lose_worker(self, uid: str) -> List[str]:
        """Mark worker ``uid`` lost; return (and forget) the tasks that were running on it."""
        w = self._workers[uid]
        w.alive = False
        w.free.clear()
        lost = [t for t, placed in self._running.items() if placed.worker == uid]
        for t in lost:
            del self._running[t]
        return lost

    def forget_worker(self, uid: str) -> None:
        """Drop a lost worker (another replaces it), so replacements do not pile up."""
        w = self._workers.get(uid)
        if w is not None and not w.alive:
            del self._workers[uid]

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
        workers = [w for w in list(self._workers.values()) if w.alive or not live]
        cpu_pool = any(not w.gpus_per_rank for w in workers)
        return any(_fits(w, spec, cpu_pool) for w in workers)

    def enqueue(self, uid: str, spec: ResourceSpec) -> None:
        """Put task ``uid`` in the queue: behind the tasks of its priority and of every lower one."""
        task = self._waiting[uid] = _Waiting(uid, spec)
        self._levels.setdefault(_level(spec), OrderedDict())[uid] = task

    def waiting(self) -> List[str]:
        """Waiting tasks in the order a pass considers them."""
        return [t.uid for t in self._queue()]

    def _queue(self) -> List[_Waiting]:
        return [t for level in sorted(self._levels) for t in self._levels[level].values()]

    def _drop(self, uid: str) -> None:
        task = self._waiting.pop(uid)
        level = self._levels[_level(task.spec)]
        del level[uid]
        if not level:
            del self._levels[_level(task.spec)]

    def unplaceable(self) -> List[str]:
        """Drop and return the waiting tasks that no live worker can ever run."""
        dropped = [t.uid for t in self._waiting.values() if not self.accepts(t.spec)]
        for uid in dropped:
            self._drop(uid)
        return dropped

    def finish(self, uid: str) -> Optional[Placed]:
        """Task ``uid`` ended: free its ranks (those it ran on and those it held) if its worker lives."""
        placed = self._running.pop(uid, None)
        if placed is not None:
            w = self._workers.get(placed.worker)
            if w is not None and w.alive:
                w.free.update(r for g in placed.groups for r in g)
        return placed

    def clear(self) -> List[str]:
        """Forget every waiting and running task; return their ids."""
        uids = list(self._waiting) + list(self._running)
        self._waiting.clear()
        self._levels.clear()
        self._running.clear()
        return uids

    def busy(self) -> bool:
        """Whether any task waits or runs."""
        return bool(self._waiting or self._running)

    def place(self) -> List[Placed]:
        """Start what fits now, in queue order with best fit and bounded backfill."""
        started: List[Placed] = []
        blocked: Set[str] = set()
        passed: List[Tuple[_Waiting, Set[str]]] = []  # tasks this pass could not place, in FIFO order
        live = [w for w in self._workers.values() if w.alive]
        cpu_pool = any(not w.gpus_per_rank for w in live)
        for task in self._queue():
            if not any(w.free for w in live):
                break
            candidates = [w for w in live if w.ready and _fits(w, task.spec, cpu_pool)]
            pools = {w.pool for w in candidates}
            per = [ranks_per_task_rank(task.spec, w.cores_per_rank) for w in candidates]
            usable = [(w, n) for w, n in zip(candidates, per, strict=True)
                      if w.pool not in blocked and w.can_start(task.spec, n)]
            if not usable:
                passed.append((task, pools))
                if task.passed_over >= self.starvation_limit:
                    blocked |= pools
                continue
            w, n = min(usable, key=lambda wn: len(wn[0].free))
            started.append(self._start(task, w, n))
            for earlier, its_pools in passed:
                if w.pool in its_pools:
                    earlier.passed_over += 1
                    if earlier.passed_over >= self.starvation_limit:
                        blocked |= its_pools
        return started

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Per pool: ranks, busy and idle ranks, queued and running tasks."""
        view: Dict[str, Dict[str, int]] = defaultdict(lambda: {"ranks": 0, "busy": 0, "idle": 0,
                                                               "queued": 0, "running": 0})
        for w in list(self._workers.values()):
            if w.alive:
                v = view[w.pool]
                v["ranks"] += w.size
                v["idle"] += len(w.free)
                v["busy"] += len(w.hosts) - len(w.free)
        for t in list(self._waiting.values()):
            view[t.spec.pool or "default"]["queued"] += 1
        for placed in list(self._running.values()):
            w = self._workers.get(placed.worker)
            view[w.pool if w is not None else "default"]["running"] += 1
        return dict(view)

    # -- internals ---------------------------------------------------------------

    def _start(self, task: _Waiting, w: WorkerSlots, per: int) -> Placed:
        if task.spec.num_nodes is None:
            groups = _pick_groups(w, task.spec.ranks, per)
        else:
            groups = _pick_on_nodes(w, task.spec.num_nodes, task.spec.ranks_per_node, per)
        placed = Placed(uid=task.uid, worker=w.uid, groups=tuple(tuple(g) for g in groups),
                        cores=per * w.cores_per_rank)
        self._drop(task.uid)
        w.free.difference_update(r for g in placed.groups for r in g)
        self._running[task.uid] = placed
        return placed


def _fits(w: WorkerSlots, spec: ResourceSpec, cpu_pool_exists: bool) -> bool:
    return pool_accepts(spec, w.pool, w.host_sizes(), w.gpus_per_rank, w.cores_per_rank, cpu_pool_exists)


def _pick_groups(w: WorkerSlots, n: int, per: int) -> List[List[int]]:
    """``n`` groups of ``per`` free ranks, each on one host: lowest ranks, all on one host when one has enough.

    Among hosts that have enough, the one with the fewest free ranks (best fit).
    """
    by_host = w.free_by_host()
    for ranks in sorted(by_host.values(), key=len):
        if len(ranks) // per >= n:
            return _chunks(ranks, per)[:n]
    every = sorted((g for ranks in by_host.values() for g in _chunks(ranks, per)), key=lambda g: g[0])
    return every[:n]


def _pick_on_nodes(w: WorkerSlots, nodes: int, per_node: int, per: int) -> List[List[int]]:
    """``per_node`` groups of ``per`` free ranks on each of ``nodes`` hosts.

    Hosts with the fewest free ranks that suffice come first (best fit).
    """
    hosts = sorted((ranks for ranks in w.free_by_host().values() if len(ranks) // per >= per_node),
                   key=lambda ranks: (len(ranks), ranks[0]))[:nodes]
    return [g for ranks in sorted(hosts, key=lambda ranks: ranks[0]) for g in _chunks(ranks, per)[:per_node]]


def _level(spec: ResourceSpec) -> float:
    return float("inf") if spec.priority is None else float(spec.priority)


def _chunks(ranks: List[int], per: int) -> List[List[int]]:
    return [ranks[i:i + per] for i in range(0, len(ranks) - per + 1, per)]
