"""A worker's ranks on one host, watched by one of them so that the executor watches hosts, not ranks.

The lowest rank of a worker on each host is that host's *leader*: the
executor heartbeats it alone, and it watches the host's other ranks (its
*followers*) for the executor: their processes (an exit is reported at once,
``RANK_LOST``) and a sign of life from each follower's I/O thread, which
touches a file of its own, every :data:`WATCH_PERIOD` seconds, in a directory
only this user can enter that the leader made in ``/dev/shm`` (node-local
memory; :func:`beat_root`) (a follower silent for ``rank_timeout`` is
reported).  A follower
hears nothing from the executor unless a task comes: it watches its leader's
process instead, and leaves when the leader is gone (the leader leaves when
the executor has been silent for the heartbeat threshold, as every rank once
did), first telling the executor that the leader is gone.  Nothing here opens
a socket: the file checks and the PIDs are all that passes between ranks.

Which ranks share a host is found once, with MPI, by the worker
(:mod:`.worker`) and given here as a :class:`HostGroup`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import psutil

#: Seconds between a follower's signs of life, and between the leader's looks at its followers.
WATCH_PERIOD = 0.5
_PREFIX = "rcylon-host-"


@dataclass(frozen=True)
class HostGroup:
    """One worker's ranks on one host.

    Parameters
    ----------
    ranks : sequence of int
        The worker's (world) ranks on this host, lowest first: the first is the leader.
    pids : sequence of int
        Their process ids, in the same order.
    beat_dir : str
        The private directory the followers' files are in (made by the leader, :func:`beat_dir`).
    """

    ranks: Sequence[int]
    pids: Sequence[int]
    beat_dir: str

    @property
    def leader(self) -> int:
        return self.ranks[0]

    @property
    def leader_pid(self) -> int:
        return self.pids[0]

    @property
    def alone(self) -> bool:
        """Whether the worker has no other rank on this host (the leader watches nobody)."""
        return len(self.ranks) == 1


def beat_root() -> str:
    """Where hosts' directories go: ``/dev/shm``, node-local memory, else the temporary directory.

    Not ``$TMPDIR`` first: a pilot's processes get one in the run directory,
    which a batch pilot has on a shared file system, where every follower's
    touch every half second would be a metadata operation of the whole
    allocation's file system.
    """
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else tempfile.gettempdir()


def beat_dir() -> str:
    """A new directory for a host's signs of life, mode 0700 (``mkdtemp``), in :func:`beat_root`.

    Its name carries the leader's PID: the directories of leaders that were
    killed (and could not remove theirs) are removed here, by the next leader
    of this user on the host.
    """
    root = beat_root()
    for name in os.listdir(root):
        if name.startswith(_PREFIX):
            pid = name[len(_PREFIX):].split("-")[0]
            path = os.path.join(root, name)
            try:
                if pid.isdigit() and not alive(int(pid)) and os.stat(path).st_uid == os.getuid():
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:  # another leader removed it first
                pass
    return tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root)


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is alive (a zombie is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class FollowerWatch:
    """A follower's side: its signs of life for the leader, and whether the leader is still there.

    The leader is judged by its process; where this process cannot see it
    (another PID namespace), by the leader's own file, stale for
    ``threshold`` seconds.
    """

    def __init__(self, group: HostGroup, rank: int, threshold: float) -> None:
        self.group = group
        self._path = os.path.join(group.beat_dir, str(rank))
        self._leader_path = os.path.join(group.beat_dir, str(group.leader))
        self._threshold = threshold
        self._see_leader = alive(group.leader_pid)
        self._next = 0.0
        with open(self._path, "a"):
            pass

    def due(self, now: float) -> bool:
        return now >= self._next

    def beat(self, now: float) -> None:
        """Touch this rank's file: the leader takes a fresh time for a live I/O thread."""
        self._next = now + WATCH_PERIOD
        try:
            os.utime(self._path)
        except OSError:  # the leader removed the directory: it is leaving, leader_gone() will say so
            pass

    def leader_gone(self) -> bool:
        if self._see_leader:
            return not alive(self.group.leader_pid)
        try:
            return time.time() - os.stat(self._leader_path).st_mtime > self._threshold
        except OSError:  # the leader removed its directory: it left
            return True


@dataclass
class _Follower:
    rank: int
    pid: int
    path: str
    visible: bool
    reported: bool = False


class LeaderWatch:
    """A leader's side: its followers, looked at every :data:`WATCH_PERIOD` seconds.

    Parameters
    ----------
    group : HostGroup
        The host's ranks; this process is its leader.
    host : str
        This host's name, for the reports.
    """

    def __init__(self, group: HostGroup, host: str) -> None:
        self.group = group
        self.host = host
        self._next = 0.0
        self._started = time.time()
        # A follower this process cannot see (another PID namespace) is judged by its file alone.
        self._followers = [_Follower(r, p, os.path.join(group.beat_dir, str(r)), alive(p))
                           for r, p in zip(group.ranks[1:], group.pids[1:], strict=True)]
        self._path = os.path.join(group.beat_dir, str(group.leader))
        with open(self._path, "a"):
            pass

    def due(self, now: float) -> bool:
        return now >= self._next

    def check(self, now: float, rank_timeout: float) -> List[Dict[str, object]]:
        """The ``RANK_LOST`` headers of followers found gone or silent since the last look (each once)."""
        self._next = now + WATCH_PERIOD
        try:
            os.utime(self._path)  # the leader's own sign, for followers that cannot see its process
        except OSError:
            pass
        lost = []
        wall = time.time()
        for f in self._followers:
            if f.reported:
                continue
            reason = self._why_lost(f, wall, rank_timeout)
            if reason:
                f.reported = True
                lost.append({"rank": f.rank, "pid": f.pid, "host": self.host, "reason": reason})
        return lost

    def _why_lost(self, f: _Follower, wall: float, rank_timeout: float) -> Optional[str]:
        if f.visible and not alive(f.pid):
            return "exited"
        try:
            last = os.stat(f.path).st_mtime
        except OSError:  # not made yet (the follower's I/O thread is starting) or removed
            last = self._started
        silent = wall - max(last, self._started)
        if silent > rank_timeout:
            return f"has not answered for {silent:.0f} s"
        return None

    def close(self) -> None:
        """Remove the directory (the leader is leaving)."""
        shutil.rmtree(self.group.beat_dir, ignore_errors=True)


__all__ = ["WATCH_PERIOD", "FollowerWatch", "HostGroup", "LeaderWatch", "alive", "beat_dir", "beat_root"]
