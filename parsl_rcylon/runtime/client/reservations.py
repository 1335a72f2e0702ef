"""The starvation bound of placement: passes over a task counted, ranks reserved, backfill around them.

:class:`Reservations` is the part of :class:`.placement.Placement` that
keeps a starved task from waiting for ever without draining the pool (EASY
backfill, as batch schedulers do).  It is a base class rather than an object
of its own because it reads and changes the queue and the workers' ranks in
the same steps as the policy does; it holds no state that
:class:`.placement.Placement` does not declare.

A task is counted as passed over when a later task starts in a pool it could
use while it is the oldest of its shape.  After ``starvation_limit`` passes it
is starved and gets a reservation: the ranks expected to free soonest, by the
running tasks' walltimes.  Reserved ranks that free are held for it; a task
may start on held ranks only if its walltime ends before the shadow time (when
every task that held them must have ended).
"""
from __future__ import annotations

import bisect
import heapq
from typing import Deque, Dict, List, Optional, Sequence, Tuple

from ...resources import ResourceSpec
from .slots import Admission, Held, Placed, Reservation, Running, Shape, Waiting, WorkerSlots

#: Starved tasks one pass tries to find a reservation for.
PROJECTIONS = 2


class Reservations:
    """Reservations for starved tasks, mixed into :class:`.placement.Placement` (see the module docstring)."""

    starvation_limit: int
    reservations_per_worker: int
    _now: float
    _workers: Dict[str, WorkerSlots]
    _waiting: Dict[str, Waiting]
    _queues: Dict[Tuple[float, Shape], Deque[Waiting]]
    _by_ranks: List[Tuple[int, int]]
    _key_of: Dict[int, Tuple[float, Shape]]
    _running: Dict[str, Running]
    _held: Dict[str, Held]
    _starved: Dict[str, None]
    _crossing: List[Tuple[int, int, str]]
    _starts: Dict[str, int]
    _starts_total: int
    _projections: int
    _held_grew: bool
    _retry: bool
    _dirty: bool

    def reservations(self) -> Dict[str, Reservation]:
        """The reservations of starved tasks, by task."""
        return {uid: held.res for uid, held in self._held.items()}

    # the policy's own steps, which a reservation uses as they are
    def _admit(self, spec: ResourceSpec, shape: Optional[Shape] = None) -> Admission:
        raise NotImplementedError("defined by Placement")

    def _start(self, task: Waiting, w: WorkerSlots, per: int, groups: Sequence[Sequence[int]]) -> Placed:
        raise NotImplementedError("defined by Placement")

    def _became_oldest(self, task: Waiting) -> None:
        """Passes over a task are counted from when it is the oldest of its shape (the others wait behind it)."""
        task.mark = dict(self._starts)
        task.mark_total = self._starts_total
        heapq.heappush(self._crossing, (self._starts_total + self.starvation_limit, task.seq, task.uid))

    def _may_backfill(self, task: Waiting) -> None:
        """A new oldest-of-shape task with a walltime may fit on held ranks: the next pass looks at them."""
        if self._held and task.spec.walltime is not None and not self._held_grew:
            self._held_grew = any(h.free.count >= task.spec.ranks for h in self._held.values())

    def _passed_over(self, task: Waiting) -> int:
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

    def _starve(self, task: Waiting) -> None:
        task.starved = True
        self._starved[task.uid] = None

    def _reserve_starved(self, uids: Sequence[str]) -> None:
        """Reserve ranks for starved tasks without a reservation, in queue order, while workers have room.

        At most :data:`PROJECTIONS` tasks are tried per pass (each try may
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

    def _reserve(self, task: Waiting, adm: Admission) -> bool:
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
        held = Held(Reservation(task.uid, w.uid, tuple(tuple(g) for g in groups), shadow))
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

    def _held_heads(self, cut: int, cap: int) -> List[Waiting]:
        """Oldest-of-shape tasks a pass should look at beyond those that fit the free ranks.

        Short tasks that could run on held ranks before they are needed
        (worth a look only when held ranks grew), and reserved tasks whose
        ranks are all free but more than any worker's free ranks (``cap``).
        ``cut`` is where shapes larger than ``cap`` begin in the queue index.
        """
        out: List[Waiting] = []
        if self._held_grew:
            self._held_grew = False
            windows = [(h.free.count, h.res.shadow) for h in self._held.values()
                       if h.res.shadow is not None and h.res.shadow > self._now and h.free.count]
            if windows:
                most, latest = max(c for c, _ in windows), max(t for _, t in windows)
                for _, qid in self._by_ranks[cut:bisect.bisect_right(self._by_ranks, (most, 1 << 62))]:
                    t = self._queues[self._key_of[qid]][0]
                    if t.spec.walltime is not None and self._now + t.spec.walltime <= latest and any(
                            c >= t.spec.ranks and self._now + t.spec.walltime <= shadow for c, shadow in windows):
                        out.append(t)
        out += [self._waiting[uid] for uid, held in self._held.items()
                if held.free.count == len(held.ranks) and held.free.count > cap]
        return out

    def _start_on_held(self, task: Waiting, adm: Admission) -> Optional[Placed]:
        """Start ``task`` on its own reserved ranks once all are free, or backfill it onto others' held ranks."""
        held = self._held.get(task.uid)
        if held is not None:
            if held.free.count < len(held.ranks):
                return None
            w = self._workers[held.res.worker]
            w.take(held.free, held.res.groups)
            self._unreserve(task.uid)
            return self._start(task, w, len(held.res.groups[0]), held.res.groups)
        wall = task.spec.walltime
        if wall is None or not self._held:
            return None
        end = self._now + wall
        for other in self._held.values():  # ending before the reserved task needs the ranks
            res = other.res
            if res.shadow is None or end > res.shadow or not other.free.count:
                continue
            w = self._workers[res.worker]
            if w not in adm.workers:
                continue
            per = adm.per[adm.workers.index(w)]
            if other.free.can_start(task.spec, per):
                groups = other.free.pick(task.spec, per)
                w.take(other.free, groups)
                return self._start(task, w, per, groups)
        return None

    def _free(self, w: WorkerSlots, ranks: Sequence[int]) -> None:
        """Ranks a task ran on are free: to the worker's free ranks, or to the reservation that holds them."""
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
