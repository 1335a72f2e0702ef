"""The dispatcher's rank registry: which peer identity is which rank of which worker, and whether it lives.

A rank is registered once, on its READY; from then on every message it sends
refreshes its ``last_seen``.  Liveness goes by host: each rank names its
host's *leader* (the worker's lowest rank on that host, :mod:`..agent.host`),
the only rank the executor heartbeats, which watches the others and reports
one that exits or goes silent (``RANK_LOST``, :meth:`RankRegistry.lost_report`).
:meth:`RankRegistry.silent_or_gone` names the first rank of a worker that
has exited (its PID, for ranks this host can see) or, of the leaders, that
has not answered for ``rank_timeout`` seconds; a follower counts as alive
while its leader answers and has not reported it.  So the executor's cost is
O(hosts + ranks on its own host), not O(ranks).  A rank whose READY names no
leader leads itself.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple

import psutil

from .slots import WorkerSlots


@dataclass
class RankEntry:
    """One registered rank."""

    identity: bytes
    host: str
    pid: int
    local: bool  # whether this process can see the rank's PID
    last_seen: float  # time.monotonic() of its last message
    leader: int = -1  # the rank that watches this one on its host (its own number: a leader)


class RankRegistry:
    """Registered ranks by worker and by peer identity, and the RAPTOR masters."""

    def __init__(self) -> None:
        self._expected_masters: Set[str] = set()
        self._masters: Dict[bytes, str] = {}  # identity -> master uid
        self._by_identity: Dict[bytes, Tuple[str, int]] = {}  # identity -> (worker uid, rank)
        self._by_worker: Dict[str, Dict[int, RankEntry]] = {}  # worker uid -> rank -> entry
        # What the executor looks at itself, per worker: the host leaders, and the ranks on its own host.
        self._leaders: Dict[str, Dict[int, RankEntry]] = {}
        self._local: Dict[str, Dict[int, RankEntry]] = {}

    def expect_master(self, master: str) -> None:
        """Master ``master`` is about to start: it may register."""
        self._expected_masters.add(master)

    def master_ready(self, identity: bytes, master: str) -> bool:
        """Register a master's READY (token already checked); False if this executor did not start it."""
        if master not in self._expected_masters:
            return False
        self._masters[identity] = master
        return True

    def is_master(self, identity: bytes) -> bool:
        return identity in self._masters

    def masters(self) -> List[bytes]:
        """Identities of the registered masters."""
        return list(self._masters)

    def expect(self, worker: str) -> None:
        """Worker ``worker`` is about to start: its ranks may register."""
        self._by_worker[worker] = {}
        self._leaders[worker] = {}
        self._local[worker] = {}

    def has(self, worker: str, rank: int, identity: bytes) -> bool:
        """Whether this rank, or this identity, has registered already."""
        return rank in self._by_worker.get(worker, {}) or identity in self._by_identity

    def refusal(self, identity: bytes, info: Mapping[str, Any], slots: Optional[WorkerSlots]) -> Optional[str]:
        """Why a worker rank's READY (token already checked) is refused, or ``None``.

        ``slots`` is the worker it names, as placement knows it (``None``: unknown).
        """
        missing = [k for k in ("worker", "rank", "size") if k not in info]
        if missing:
            return f"READY without {missing}"
        uid, rank = info["worker"], info["rank"]
        if slots is None or not slots.alive:
            return f"READY from worker {uid!r}, which this executor is not running"
        if info["size"] != slots.size or not 0 <= rank < slots.size:
            return f"READY from rank {rank} of {info['size']} for worker {uid} of {slots.size} ranks"
        if self.has(uid, rank, identity):
            return f"READY for rank {rank} of worker {uid}, which has registered already"
        if not 0 <= info.get("leader", rank) <= rank:
            return f"READY from rank {rank} of worker {uid} naming rank {info['leader']} as its host's leader"
        return None

    def register(self, identity: bytes, worker: str, rank: int, host: str, pid: int, local: bool,
                 leader: Optional[int] = None) -> None:
        """Register a rank; ``local``: it names this host, and its PID is judged only if visible here.

        ``leader``: the rank that watches it on its host (``None`` or ``rank``: it leads itself).
        """
        # Same host name and a visible PID: a rank in another PID namespace
        # (a container) is judged by its answers alone.
        local = local and running(pid)
        entry = RankEntry(identity, host, pid, local, time.monotonic(), rank if leader is None else leader)
        self._by_identity[identity] = (worker, rank)
        self._by_worker[worker][rank] = entry
        if entry.leader == rank:
            self._leaders[worker][rank] = entry
        if local:
            self._local[worker][rank] = entry

    def who(self, identity: bytes) -> Optional[Tuple[str, int]]:
        """(worker uid, rank) of a registered peer."""
        return self._by_identity.get(identity)

    def heard(self, worker: str, rank: int) -> None:
        self._by_worker[worker][rank].last_seen = time.monotonic()

    def of(self, worker: str) -> Dict[int, RankEntry]:
        """The registered ranks of ``worker`` (empty if none)."""
        return self._by_worker.get(worker, {})

    def leaders(self, worker: str) -> Dict[int, RankEntry]:
        """The registered host leaders of ``worker``: the ranks the executor heartbeats."""
        return self._leaders.get(worker, {})

    def leader_count(self) -> int:
        """How many host leaders the executor heartbeats, of all workers."""
        return sum(len(leaders) for leaders in self._leaders.values())

    def workers(self) -> Iterator[Tuple[str, Dict[int, RankEntry]]]:
        return iter(list(self._by_worker.items()))

    def forget(self, worker: str) -> None:
        """Worker ``worker`` is gone: forget its ranks."""
        for entry in self._by_worker.pop(worker, {}).values():
            self._by_identity.pop(entry.identity, None)
        self._leaders.pop(worker, None)
        self._local.pop(worker, None)

    def silent_or_gone(self, worker: str, now: float, rank_timeout: float) -> Optional[str]:
        """Why ``worker`` is lost (a rank here exited, or a host leader is silent), or ``None``."""
        # every rank here that is gone, not the first: when one rank dies the launcher kills the
        # others, and by the time this looks the lowest gone rank may be one the launcher killed
        gone = [f"rank {rank} (pid {entry.pid} on {entry.host}) exited"
                for rank, entry in sorted(self._local.get(worker, {}).items()) if not running(entry.pid)]
        if gone:
            return "; ".join(gone)
        cutoff = now - rank_timeout  # one comparison per host: this runs every heartbeat_period
        for rank, entry in self._leaders.get(worker, {}).items():
            if entry.last_seen < cutoff:
                return (f"rank {rank} (pid {entry.pid} on {entry.host}) has not answered for "
                        f"{now - entry.last_seen:.0f} s")
        return None

    def lost_report(self, sender: Tuple[str, int], report: Mapping[str, Any]) -> Optional[str]:
        """What a ``RANK_LOST`` from rank ``sender`` (worker uid, rank) says, in words; ``None`` if it may not say it.

        A leader reports its followers; a follower, its leader.
        """
        worker, by = sender
        ranks = self.of(worker)
        entry, reporter = ranks.get(report["rank"]), ranks.get(by)
        if entry is None or reporter is None or report["rank"] == by:
            return None
        if not (entry.leader == by or reporter.leader == report["rank"]) or entry.host != reporter.host:
            return None
        role = "its host's leader" if entry.leader == by else "a rank it leads"
        return (f"rank {report['rank']} (pid {entry.pid} on {entry.host}) {report['reason'][:200]} "
                f"(reported by rank {by}, {role})")

    def exited(self, worker: str) -> List[str]:
        """The ranks of ``worker`` on this host whose processes are gone, in words."""
        return [f"rank {r} (pid {e.pid} on {e.host}) exited"
                for r, e in sorted(self.of(worker).items()) if e.local and not running(e.pid)]

    def lost(self, worker: str) -> List[str]:
        """What is known of a lost ``worker``'s ranks, in words: those here that exited, else the hosts they ran on.

        Ranks on other hosts cannot be looked at from here; naming their hosts
        says which node a worker lost with its node was on.
        """
        gone = self.exited(worker)
        hosts = sorted({e.host for e in self.of(worker).values() if not e.local})
        return gone or ([f"its ranks ran on {', '.join(hosts)}"] if hosts else [])


def ranks_per_host(workers: Iterable[WorkerSlots]) -> Dict[str, Dict[str, int]]:
    """Per pool, the registered ranks per host of the live ``workers``."""
    view: Dict[str, Dict[str, int]] = {}
    for w in workers:
        if w.alive:
            for host in w.hosts.values():
                per_host = view.setdefault(w.pool, {})
                per_host[host] = per_host.get(host, 0) + 1
    return view


def running(pid: Optional[int]) -> bool:
    """Whether process ``pid`` of this host is alive (a zombie is not)."""
    if pid is None:
        return True  # not known yet: nothing to judge by
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


__all__ = ["RankEntry", "RankRegistry", "ranks_per_host", "running"]
