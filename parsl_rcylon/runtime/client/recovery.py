"""What the dispatcher does when something fails: a rank, a task's walltime, a worker, the whole run.

:class:`Recovery` is the part of :class:`.dispatcher.Dispatcher` that turns
a failure into failed futures and a replacement, never a wait
(``docs/reliability.md``): a rank that reports an error fails its task's
future at once and its other ranks are cancelled, with ``cancel_grace``
seconds to report before their worker is ended and replaced; a task past its
walltime is failed and stopped the same way; a rank that exited or went
silent (as its host's leader reports, ``RANK_LOST``, or the executor sees)
loses its worker, and that worker's tasks fail with ``WorkerLost``;
with no worker left every task fails with ``ExecutorBroken``.  It is a base
class because it acts in the dispatcher's loop thread on the dispatcher's own
state, under its lock; it holds no state of its own (its timer heap is the
dispatcher's).
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from ...errors import ExecutorBroken, TaskTimeout, WorkerLost
from ..wire import protocol
from .backend import reject
from .placement import Placement
from .ranks import RankRegistry
from .restarts import RestartPolicy, start_replacement

if TYPE_CHECKING:
    from .running import RunningTask

logger = logging.getLogger(__name__)


class Recovery:
    """Failure handling mixed into :class:`.dispatcher.Dispatcher` (see the module docstring)."""

    _placement: Placement
    _ranks: RankRegistry
    _restart_policy: RestartPolicy
    _tasks: Dict[str, RunningTask]
    _active: Dict[str, RunningTask]
    _timers: List[Tuple[float, int, str]]  # (when, seq, task uid) heap of walltimes and cancel graces
    _timer_seq: Iterator[int]
    _refusal: Optional[BaseException]
    _refusal_lock: threading.Lock
    _ready_cond: threading.Condition
    _rank_timeout: float
    _grace: float
    on_replace: Optional[Callable[[str, str], None]]

    # the dispatcher's own steps, which recovery uses as they are
    def _send(self, identity: bytes, kind: bytes, header: Optional[Dict[str, Any]] = None,
              blob: Optional[bytes] = None) -> bool:
        raise NotImplementedError("defined by Dispatcher")

    def _drop(self, identity: bytes, why: str) -> None:
        raise NotImplementedError("defined by Dispatcher")

    def expect_worker(self, uid: str, size: int, pool: str = "default", gpus_per_rank: int = 0,
                      cores_per_rank: int = 1) -> None:
        raise NotImplementedError("defined by Dispatcher")

    def worker_failed(self, uid: str, reason: str, replace: bool = True) -> None:
        raise NotImplementedError("defined by Dispatcher")

    def _check_ranks(self) -> None:
        now = time.monotonic()
        for uid, _ in self._ranks.workers():
            w = self._placement.worker(uid)
            if w is not None and w.alive:
                reason = self._ranks.silent_or_gone(uid, now, self._rank_timeout)
                if reason:
                    self._on_worker_failed((uid, reason, True))

    def _on_rank_lost(self, identity: bytes, sender: Tuple[str, int], report: Mapping[str, Any]) -> None:
        """A host's leader says one of its ranks exited or went silent (or a follower, that its leader did)."""
        reason = self._ranks.lost_report(sender, report)
        if reason is None:
            self._drop(identity, f"RANK_LOST for rank {report['rank']} from rank {sender[1]} of worker "
                                 f"{sender[0]}, which does not watch it")
            return
        self._on_worker_failed((sender[0], reason, True))

    def _task_failed(self, task: RunningTask, error: BaseException) -> None:
        """Fail the task's future at once; the ranks still at work get ``cancel_grace`` to finish."""
        if task.error is not None:
            return
        task.error = error
        reject(task.future, error)
        self._cancel(task, str(error))

    def _cancel(self, task: RunningTask, reason: str) -> None:
        if task.settle_by is None:
            task.settle_by = time.monotonic() + self._grace
            self._arm(task.settle_by, task.uid)
        ranks = self._ranks.of(task.placed.worker)
        for i in task.pending_ranks - task.failed_ranks:
            entry = ranks.get(task.placed.ranks[i])
            if entry is not None:
                self._send(entry.identity, protocol.CANCEL, {"uid": task.uid, "reason": reason[:500]})

    def _arm(self, when: float, uid: str) -> None:
        """Look at task ``uid`` at ``when`` (its ``deadline`` or ``settle_by``, set just before)."""
        timers = self._timers
        if len(timers) > 64 and len(timers) > 4 * len(self._active):  # mostly ended tasks' timers: drop them
            timers[:] = [t for t in timers if self._armed(t) is not None]
            heapq.heapify(timers)
        heapq.heappush(timers, (when, next(self._timer_seq), uid))

    def _armed(self, timer: Tuple[float, int, str]) -> Optional[RunningTask]:
        """The running task a timer is for, if that timer is still set (not ended, fired or replaced)."""
        task = self._active.get(timer[2])
        return task if task is not None and timer[0] in (task.deadline, task.settle_by) else None

    def _next_timer(self) -> float:
        """When the next walltime or cancel grace ends (a heap: the loop asks at every wake-up)."""
        timers = self._timers
        while timers and self._armed(timers[0]) is None:
            heapq.heappop(timers)
        return timers[0][0] if timers else float("inf")

    def _check_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)
            task = self._armed(timer)
            if task is None:
                continue
            if task.deadline == timer[0]:
                task.deadline = None
                self._task_failed(task, TaskTimeout(None, f"task {task.uid} ({task.name}) ran longer than its "
                                                          f"walltime of {task.call.walltime:g} s and was stopped"))
            if task.settle_by == timer[0] and task.uid in self._active:
                waiting = sorted(task.placed.ranks[i] for i in task.pending_ranks)
                self._replace(task.placed.worker,
                              f"rank(s) {waiting} did not finish task {task.uid} ({task.name}) within "
                              f"{self._grace:g} s of its failure (blocked in a collective with a failed rank?)")

    def _replace(self, uid: str, reason: str) -> None:
        """End worker ``uid`` (its ranks exit at once) and start another like it."""
        for entry in self._ranks.of(uid).values():
            self._send(entry.identity, protocol.EXIT, {"reason": reason[:500]})
        self._on_worker_failed((uid, reason, True))

    def _on_worker_failed(self, args: Tuple[str, str, bool]) -> None:
        uid, reason, replace = args
        w = self._placement.worker(uid)
        if w is None or not w.alive:
            return
        if not reason.startswith("rank "):  # RP's word came first: name the ranks that are gone, if any
            reason = "; ".join(self._ranks.lost(uid) + [reason])
        logger.error("worker %s lost: %s", uid, reason)
        ready = w.ready
        for tid in self._placement.lose_worker(uid):
            self._active.pop(tid, None)
            task = self._tasks.pop(tid)
            reject(task.future, WorkerLost(None, f"task {tid} ({task.name}) lost its worker {uid}: {reason}"))
        self._ranks.forget(uid)
        if replace:
            self._start_replacement(uid, ready)
        if not self._placement.any_alive():
            self._break(WorkerLost(None, f"no MPI worker is left (last lost: {uid}: {reason})"))
            return
        for tid in self._placement.unplaceable():
            task = self._tasks.pop(tid)
            reject(task.future, WorkerLost(None, f"task {tid} needs {task.spec.ranks} ranks; "
                                              f"no live worker can hold it after {uid} was lost"))
        self._ready_cond.notify_all()

    def _start_replacement(self, uid: str, was_ready: bool) -> None:
        if self.on_replace is None or self._refusal is not None:
            return
        replacement = self._restart_policy.replacement(uid, was_ready)
        if replacement is None:
            return
        new, lineage = replacement
        self.expect_worker(new, lineage.size, lineage.pool, lineage.gpus_per_rank, lineage.cores_per_rank)
        self._placement.forget_worker(uid)
        start_replacement(uid, new, self.on_replace, self.worker_failed)

    def _fail_all(self, exc: BaseException) -> None:
        """Fail every waiting and running task with ``exc``, and every later one."""
        with self._refusal_lock:
            self._refusal = exc
        self._active.clear()
        for uid in self._placement.clear():
            task = self._tasks.pop(uid)
            reject(task.future, exc)

    def _break(self, cause: BaseException, reason: Optional[str] = None) -> None:
        """Enter the broken state: no task can run any more, because of ``cause``."""
        self._fail_all(ExecutorBroken.because(cause, reason))
        with self._ready_cond:
            self._ready_cond.notify_all()

    _on_break = _break  # fail(): a pilot ended
