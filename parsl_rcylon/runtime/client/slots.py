"""What placement keeps: workers' free ranks by host, waiting and running tasks, the ranks reservations hold.

Kept apart from the policy (:mod:`.placement`) because every decision reads
these structures: they answer "can this shape start here" and "which ranks"
in time proportional to the hosts that qualify and the ranks taken, never a
scan or a sort of the worker's ranks.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ...resources import ResourceSpec

#: (ranks, cores per rank, GPUs per rank, pool, nodes, ranks per node): what admission and packing look at.
Shape = Tuple[int, int, int, Optional[str], Optional[int], Optional[int]]


class FreeIndex:
    """Free ranks of one worker by host, and hosts by how many free ranks they have."""

    __slots__ = ("by_host", "buckets", "count")

    def __init__(self) -> None:
        self.by_host: Dict[str, Set[int]] = {}
        self.buckets: Dict[int, Dict[str, None]] = {}  # free count -> hosts with that many (non-empty only)
        self.count = 0

    def copy(self) -> FreeIndex:
        other = FreeIndex()
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
            return [g for _, h in sorted(hosts) for g in chunks(sorted(self.by_host[h]), per)[:spec.ranks_per_node]]
        need = spec.ranks * per
        best = min((c for c in self.buckets if c >= need), default=None)
        if best is not None:  # one host has enough: the one with the fewest free ranks that suffice
            free = self.by_host[next(iter(self.buckets[best]))]
            # its lowest ranks, without sorting the host's free ranks (a one-rank start is the common case)
            return chunks([min(free)] if need == 1 else heapq.nsmallest(need, free), per)
        groups: List[List[int]] = []  # span hosts, filling the fullest first so whole hosts stay free
        for c in sorted(k for k in self.buckets if k >= per):
            for h in self.buckets[c]:
                groups.extend(chunks(sorted(self.by_host[h]), per))
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
    avail : FreeIndex
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
        self.avail = FreeIndex()  # free ranks no reservation holds
        self.reserved: Dict[int, str] = {}  # rank -> the waiting task it is reserved for
        self.held = 0  # free ranks held by reservations
        self.holds: Dict[str, Held] = {}  # reservations on this worker, by task
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

    def take(self, source: FreeIndex, groups: Sequence[Sequence[int]]) -> None:
        """Take the ranks of ``groups`` out of ``source`` (its free ranks, or a reservation's)."""
        for host, ranks in self.by_host(r for g in groups for r in g).items():
            source.remove(host, ranks)
        if source is not self.avail:
            self.held -= sum(len(g) for g in groups)


@dataclass(frozen=True)
class Reservation:
    """Ranks held for a starved task (see :meth:`.placement.Placement.reservations`).

    Parameters
    ----------
    uid : str
        The waiting task.
    worker : str
        The worker the ranks belong to.
    groups : tuple of tuple of int
        The groups it will start on, as :attr:`.placement.Placed.groups`.
    shadow : float or None
        Time by which every task running on these ranks when they were
        reserved must have ended (their walltimes); None when one of them
        had no walltime, and then nothing is backfilled onto them.
    """

    uid: str
    worker: str
    groups: Tuple[Tuple[int, ...], ...]
    shadow: Optional[float]


class Held:
    """A reservation and the free ranks it holds so far."""

    __slots__ = ("res", "ranks", "free")

    def __init__(self, res: Reservation) -> None:
        self.res = res
        self.ranks = {r for g in res.groups for r in g}
        self.free = FreeIndex()


@dataclass(frozen=True)
class Placed:
    """A task started by :meth:`.placement.Placement.place`.

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

    @cached_property  # read for every report of the task's ranks
    def ranks(self) -> Tuple[int, ...]:
        """Worker ranks that run the task: task rank ``i`` on ``ranks[i]``."""
        return tuple(g[0] for g in self.groups)

    @property
    def reserved(self) -> Tuple[int, ...]:
        """Worker ranks held idle for their cores."""
        return tuple(r for g in self.groups for r in g[1:])


class Waiting:
    """A queued task: its place in the queue (``key`` is (priority level, shape)) and its starvation count."""

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


class Running:
    """A started task and when its walltime says it must have ended."""

    __slots__ = ("placed", "end")

    def __init__(self, placed: Placed, end: Optional[float]) -> None:
        self.placed = placed
        self.end = end  # latest end by its walltime, None without one


class Admission:
    """The ready workers that can ever run one shape, and worker ranks per task rank on each (cached per shape)."""

    __slots__ = ("gen", "workers", "per", "pools")

    def __init__(self, gen: int, workers: List[WorkerSlots], per: List[int]) -> None:
        self.gen = gen
        self.workers = workers
        self.per = per
        self.pools = sorted({w.pool for w in workers})


def chunks(ranks: List[int], per: int) -> List[List[int]]:
    """``ranks`` in whole groups of ``per`` (a short tail is left out)."""
    return [ranks[i:i + per] for i in range(0, len(ranks) - per + 1, per)]
