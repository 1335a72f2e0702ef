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
from typing import Deque, Dict, List, Optional, Sequence, Tuple

from ...resources import ResourceSpec
from .admission import pool_accepts, ranks_per_task_rank
from .reservations import PROJECTIONS, Reservations
from .slots import Admission, FreeIndex, Held, Placed, Reservation, Running, Shape, Waiting, WorkerSlots

__all__ = ["Placed", "Placement", "Reservation", "Shape", "WorkerSlots"]

class Placement(Reservations):
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
        self._waiting: Dict[str, Waiting] = {}
        self._queues: Dict[Tuple[float, Shape], Deque[Waiting]] = {}  # (level, shape) -> FIFO
        self._by_ranks: List[Tuple[int, int]] = []  # sorted (ranks, queue id) of non-empty queues
        self._qid: Dict[Tuple[float, Shape], int] = {}
        self._key_of: Dict[int, Tuple[float, Shape]] = {}
        self._qids = itertools.count()
        self._running: Dict[str, Running] = {}
        self._held: Dict[str, Held] = {}  # task uid -> its reservation
        self._starved: Dict[str, None] = {}  # starved oldest-of-shape tasks still without a reservation
        self._crossing: List[Tuple[int, int, str]] = []  # (total starts at which it may be starved, seq, uid)
        self._starts: Dict[str, int] = defaultdict(int)  # tasks started per pool, ever
        self._starts_total = 0
        self._seq = itertools.count()
        self._gen = 0  # bumped whenever the set of usable workers changes
        self._admission: Dict[Shape, Admission] = {}
        self._accepts: Dict[Shape, Tuple[int, bool]] = {}  # any worker ever declared
        self._live_fit: Dict[Shape, Tuple[int, List[WorkerSlots]]] = {}
        self._dirty = False
        self._pass_began: Dict[str, int] = {}
        self._pass_total = 0
        self._projections = PROJECTIONS
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
        w.avail = FreeIndex()
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
        task = self._waiting[uid] = Waiting(uid, spec, next(self._seq), key)
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
        dropped: List[Waiting] = []
        for q in list(self._queues.values()):
            if not self.accepts(q[0].spec):
                dropped.extend(q)
                for task in list(q):
                    self._drop(task)
        return [t.uid for t in sorted(dropped, key=lambda t: t.seq)]

    def withdraw(self, uid: str) -> bool:
        """Take waiting task ``uid`` out of the queue (cancelled); False if it is not waiting."""
        task = self._waiting.get(uid)
        if task is None:
            return False
        q = self._queues[task.key]
        if q[0] is task:
            self._drop(task)
            return True
        q.remove(task)  # behind the oldest of its shape: nothing counts passes over it yet
        del self._waiting[uid]
        self._dirty = True
        return True

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
        self._projections = PROJECTIONS
        self._pass_total = self._starts_total
        self._reserve_starved(self._newly_starved() if not self._retry else list(self._starved))
        self._retry = False
        # what could start: tasks on free ranks, short tasks on held ones, reserved tasks whose ranks are all free
        cap = max((w.avail.count for w in self._workers.values() if w.alive and w.ready), default=0)
        cut = bisect.bisect_right(self._by_ranks, (cap, 1 << 62))
        heads = [(q[0].key[0], q[0].seq, q[0].key) for _, qid in self._by_ranks[:cut]
                 for q in (self._queues[self._key_of[qid]],)]
        heads += [(t.key[0], t.seq, t.key) for t in self._held_heads(cut, cap)]
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

    def _admit(self, spec: ResourceSpec, shape: Optional[Shape] = None) -> Admission:
        key = shape or _shape(spec)
        adm = self._admission.get(key)
        if adm is None or adm.gen != self._gen:
            workers = [w for w in self._fitting(spec, key)[1] if w.ready]
            adm = self._admission[key] = Admission(self._gen, workers,
                                                    [ranks_per_task_rank(spec, w.cores_per_rank) for w in workers])
        return adm

    def _try_start(self, task: Waiting) -> Optional[Placed]:
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
            w.take(w.avail, groups)
            return self._start(task, w, per, groups)
        return self._start_on_held(task, adm)

    def _start(self, task: Waiting, w: WorkerSlots, per: int, groups: Sequence[Sequence[int]]) -> Placed:
        placed = Placed(uid=task.uid, worker=w.uid, groups=tuple(tuple(g) for g in groups),
                        cores=per * w.cores_per_rank)
        self._drop(task)
        end = None if task.spec.walltime is None else self._now + task.spec.walltime
        self._running[task.uid] = Running(placed, end)
        w.running[task.uid] = None
        guess = end if end is not None else self._now + self.default_runtime
        heapq.heappush(w._ends, (guess, task.seq, task.uid))
        self._starts[w.pool] += 1
        self._starts_total += 1
        return placed

    def _drop(self, task: Waiting) -> None:
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


def _fits(w: WorkerSlots, spec: ResourceSpec, cpu_pool_exists: bool) -> bool:
    return pool_accepts(spec, w.pool, w.host_sizes(), w.gpus_per_rank, w.cores_per_rank, cpu_pool_exists)


def _shape(spec: ResourceSpec) -> Shape:
    return (spec.ranks, spec.cores_per_rank, spec.gpus_per_rank, spec.pool, spec.num_nodes, spec.ranks_per_node)


def _level(spec: ResourceSpec) -> float:
    return float("inf") if spec.priority is None else float(spec.priority)


