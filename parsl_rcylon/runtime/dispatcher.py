"""Executor-side task dispatch: the ZeroMQ loop, the rank registry and liveness, result routing, recovery.

One thread owns the ROUTER socket of the run's authenticated channel
(:mod:`.channel`) that every worker rank and RAPTOR master connects to.
Which waiting task starts on which ranks is decided by
:class:`~.placement.Placement` (FIFO, best fit, bounded backfill, cores per
rank); the dispatcher tells it what happens and sends the tasks it starts.

Every message is checked (:func:`.protocol.unpack`) before it is acted on,
and must come from where it may: a READY only with the run's token, for a
worker or master this executor started and a rank not yet registered; a
result only from a rank the task runs on.  Anything else is logged and
dropped; no message, however malformed, ends the loop.

Failures never leave a future waiting:

- A rank that fails reports at once (``ERROR``), and the task's future fails
  with the original exception.  Its other ranks are asked to stop
  (``CANCEL``) and get ``cancel_grace`` seconds to finish and report; a rank
  that cannot (it is blocked in a collective with the failed one, which MPI
  cannot undo) has its worker ended (``EXIT``) and replaced.
- A task past its ``walltime`` fails with :class:`~..errors.TaskTimeout` and
  is stopped the same way.
- A rank whose process is gone (checked by PID for ranks on this host), or
  that has not answered heartbeats for ``rank_timeout`` seconds, fails its
  worker: its tasks fail with :class:`~..errors.WorkerLost` and a new worker
  of the same pool is started (``on_replace``); waiting tasks wait for it.

When no worker is left and none is coming, or the loop itself fails, the
dispatcher is broken: pending, running and later tasks fail at once with
``ExecutorBroken`` carrying the cause.  ``stop()`` fails what is left with
``ExecutorShutdown``.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import secrets
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Set, Tuple

import psutil
import zmq
from parsl.executors.errors import InvalidResourceSpecification
from parsl.serialize import deserialize

from ..errors import ExecutorBroken, ExecutorShutdown, ResultError, TaskTimeout, WorkerLost
from ..resources import ResourceSpec
from . import protocol
from .channel import ServerChannel
from .placement import Placed, Placement

logger = logging.getLogger(__name__)

#: Dropped messages logged at WARNING before the rest go to DEBUG (a flood must not flood the log).
_LOUD_DROPS = 20
#: A pool whose new workers fail to start this many times in a row gets no more.
_START_FAILURES = 3


@dataclass
class _Rank:
    identity: bytes
    host: str
    pid: int
    local: bool  # whether this process can see the rank's PID
    last_seen: float  # time.monotonic() of its last message


@dataclass
class _Task:
    uid: str
    spec: ResourceSpec
    header: Dict[str, Any]
    payload: bytes
    future: Future
    placed: Optional[Placed] = None
    pending_ranks: Set[int] = field(default_factory=set)
    failed_ranks: Set[int] = field(default_factory=set)  # said ERROR: past their user code, no CANCEL
    value: Optional[bytes] = None
    error: Optional[BaseException] = None
    deadline: Optional[float] = None   # time.monotonic() when its walltime ends
    settle_by: Optional[float] = None  # its other ranks must report by then, or their worker is replaced

    @property
    def name(self) -> str:
        return self.header.get("name", "task")


@dataclass
class _Lineage:
    """What a replacement for a worker needs, and how its pool's restarts went."""

    size: int
    pool: str
    gpus_per_rank: int
    cores_per_rank: int
    restarts: int = 0


class Dispatcher:
    """Sends tasks to worker ranks, watches the ranks, routes results to futures, and recovers from faults.

    Parameters
    ----------
    run_dir : path
        Where the channel's key file is written (``keys/``, private).
    bind_address : str
        Interface to bind the ROUTER socket to (``127.0.0.1`` for local pilots).
    advertised_address : str
        Address that ranks connect to; usually the same host seen from the nodes.
    heartbeat_period : float
        Seconds between heartbeats to every rank and master.
    starvation_limit : int
        How often a waiting task may be passed over by smaller ones.
    rank_timeout : float
        Seconds a rank may leave heartbeats unanswered before its worker is
        declared lost (generous: a task holding the GIL delays the answer).
    cancel_grace : float
        Seconds the other ranks of a failed, timed-out or cancelled task get
        to finish and report before their worker is ended and replaced.
    encrypted, port_range, max_message_bytes
        The channel's settings (:class:`.channel.ServerChannel`).
    max_worker_restarts : int, optional
        Replacements each pool may start over the run (``None``: no limit;
        ``0``: none).  A pool whose new workers fail to start three times in a
        row gets no more either way.
    """

    def __init__(self, run_dir: os.PathLike, bind_address: str = "127.0.0.1",
                 advertised_address: Optional[str] = None, *, heartbeat_period: float = 2.0,
                 starvation_limit: int = 16, rank_timeout: float = 120.0, cancel_grace: float = 3.0,
                 encrypted: bool = True, port_range: Optional[Tuple[int, int]] = None,
                 max_message_bytes: int = 1 << 30, max_worker_restarts: Optional[int] = None) -> None:
        self._ctx = zmq.Context()
        self._channel = ServerChannel(self._ctx, Path(run_dir), bind_address, advertised_address,
                                      port_range=port_range, encrypted=encrypted,
                                      max_message_bytes=max_message_bytes)
        self._router = self._channel.socket
        self.address = self._channel.address
        self.channel_file = self._channel.channel_file
        self._wake_addr = f"inproc://rcylon-wake-{id(self)}"
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.bind(self._wake_addr)
        self._wake_lock = threading.Lock()
        self._wake_push = self._ctx.socket(zmq.PUSH)
        self._wake_push.connect(self._wake_addr)
        self._commands: queue.Queue[Tuple[str, Any]] = queue.Queue()
        self._period = heartbeat_period
        self._rank_timeout = rank_timeout
        self._grace = cancel_grace
        self._max_restarts = max_worker_restarts
        self._host = socket.gethostname()
        # The registry and placement are read and changed by the loop and by
        # client threads (RP's callbacks add workers): every access holds this.
        self._lock = threading.RLock()
        self._placement = Placement(starvation_limit)
        self._rank_of: Dict[bytes, Tuple[str, int]] = {}  # identity -> (worker uid, rank)
        self._ranks: Dict[str, Dict[int, _Rank]] = {}  # worker uid -> rank -> registry entry
        self._lineage: Dict[str, _Lineage] = {}  # worker uid -> what replacing it takes
        self._start_failures: Dict[str, int] = {}  # pool -> new workers lost before ready, in a row
        self._restarts: Dict[str, int] = {}  # pool -> replacements started
        self._expected_masters: Set[str] = set()
        self._masters: Dict[bytes, Dict[str, Any]] = {}
        self._tasks: Dict[str, _Task] = {}  # waiting and running
        self._active: Dict[str, _Task] = {}  # running
        self._tags = itertools.count(1)
        self._dropped = 0
        self._refusal: Optional[BaseException] = None  # what every task fails with once broken or stopped
        self._refusal_lock = threading.Lock()  # a submission is queued before the refusal, or refused
        self._stopping = threading.Event()
        self._ready_cond = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._loop, name="rcylon-dispatcher", daemon=True)
        #: called as on_result(app name, value) for every successful task, before its future resolves
        self.on_result: Optional[Callable[[str, Any], None]] = None
        #: called as on_start(task uid) in the loop thread when a task has been sent to its ranks (keep it quick)
        self.on_start: Optional[Callable[[str], None]] = None
        #: called as on_replace(old uid, new uid), in a thread of its own, to start a worker like the old one
        self.on_replace: Optional[Callable[[str, str], None]] = None
        self.report_period = 30.0  # seconds between "pools: ..." log lines while work is queued

    # -- public API (any thread) ---------------------------------------------------

    @property
    def encrypted(self) -> bool:
        return self._channel.encrypted

    def start(self) -> None:
        self._thread.start()

    def expect_worker(self, uid: str, size: int, pool: str = "default", gpus_per_rank: int = 0,
                      cores_per_rank: int = 1) -> None:
        """Declare a worker before it starts: only declared workers may register."""
        with self._lock:
            self._ranks[uid] = {}
            self._lineage[uid] = _Lineage(size, pool, gpus_per_rank, cores_per_rank)
            self._placement.add_worker(uid, size, pool, gpus_per_rank, cores_per_rank)

    def expect_master(self, uid: str) -> None:
        """Declare a RAPTOR master: only declared masters may register."""
        with self._lock:
            self._expected_masters.add(uid)

    def wait_ready(self, timeout: float, failed: Callable[[], Optional[str]]) -> None:
        """Block until every expected rank said READY; raise if ``failed()`` says why not."""
        deadline = time.monotonic() + timeout
        with self._ready_cond:
            while True:
                reason = failed()
                if reason:
                    raise RuntimeError(reason)
                workers = self._placement.workers()
                if all(w.ready for w in workers):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = {w.uid: w.size - len(w.hosts) for w in workers if not w.ready}
                    raise TimeoutError(f"workers did not start within {timeout:.0f} s (ranks missing: {missing})")
                self._ready_cond.wait(timeout=min(left, 0.5))

    def submit(self, uid: str, spec: ResourceSpec, header: Dict[str, Any], payload: bytes) -> Future:
        """Queue a task; its future fails at once if the dispatcher is broken or stopped."""
        fut: Future = Future()
        with self._refusal_lock:
            if self._refusal is None:
                self._post("submit", _Task(uid=uid, spec=spec, header=header, payload=payload, future=fut))
                return fut
        fut.set_exception(self._refusal)
        return fut

    def worker_failed(self, uid: str, reason: str, replace: bool = True) -> None:
        """Worker ``uid`` ended; its tasks fail, and another starts in its place unless ``replace`` is False."""
        self._post("worker_failed", (uid, reason, replace))

    def fail(self, cause: BaseException) -> None:
        """Break the dispatcher because of ``cause`` (a pilot ended): everything fails at once."""
        self._post("break", cause)

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Per-pool view: ranks busy and idle, tasks queued and running, workers replaced so far."""
        with self._lock:
            view = self._placement.stats()
            for pool, count in self._restarts.items():
                view.setdefault(pool, {"ranks": 0, "busy": 0, "idle": 0, "queued": 0, "running": 0})
                view[pool]["restarts"] = count
            return view

    def stop(self, reason: str = "executor shut down") -> None:
        """Tell every rank and master to stop, fail what is left, end the thread."""
        if self._stopping.is_set():
            return
        self._post("stop", reason)
        self._thread.join(timeout=10)
        self._stopping.set()
        self._channel.close()
        for sock in (self._wake_pull, self._wake_push):
            sock.close(linger=0)
        self._ctx.term()

    # -- loop thread ---------------------------------------------------------------

    def _post(self, kind: str, body: Any) -> None:
        self._commands.put((kind, body))
        with self._wake_lock:
            if not self._stopping.is_set():
                self._wake_push.send(b"", flags=zmq.NOBLOCK)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_pull, zmq.POLLIN)
        next_beat = time.monotonic()
        next_report = time.monotonic() + self.report_period
        try:
            while True:
                wait = min(next_beat, self._next_timer()) - time.monotonic()
                events = dict(poller.poll(timeout=max(0, int(wait * 1000) + 1)))
                if self._wake_pull in events:
                    while self._wake_pull.poll(0):
                        self._wake_pull.recv()
                with self._lock:
                    if self._router in events:
                        for _ in range(1000):  # drain, but let commands in between bursts
                            if not self._receive():
                                break
                    while True:
                        try:
                            kind, body = self._commands.get_nowait()
                        except queue.Empty:
                            break
                        if kind == "stop":
                            self._shutdown_ranks(body)
                            return
                        getattr(self, f"_on_{kind}")(body)
                    self._schedule()
                    now = time.monotonic()
                    self._check_timers(now)
                    if now >= next_beat:
                        self._check_ranks()
                        self._broadcast(protocol.HEARTBEAT)
                        next_beat = time.monotonic() + self._period
                        if self._placement.busy() and time.monotonic() >= next_report:
                            logger.info("pools: %s", self._placement.stats())
                            next_report = time.monotonic() + self.report_period
        except Exception as exc:  # a bug here must not leave futures hanging
            logger.exception("dispatcher loop failed")
            self._break(exc, f"the dispatcher loop failed: {exc!r}")
        finally:
            self._refuse_queued()

    def _refuse_queued(self) -> None:
        """The loop has ended: fail the submissions it will never read."""
        if self._refusal is None:  # ended by something other than stop() or a caught failure
            self._break(RuntimeError("the dispatcher loop ended"))
        while True:
            try:
                kind, body = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "submit" and not body.future.done():
                body.future.set_exception(self._refusal)

    def _receive(self) -> bool:
        """Read and act on the next message from a peer; False when none waits.

        The one place where a peer's frames are decoded: a message that does
        not follow the protocol, or that its sender may not send, is dropped.
        """
        try:
            frames = self._router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        identity = frames[0].bytes
        try:
            message = protocol.unpack(frames[1:])
        except protocol.ProtocolError as err:
            self._drop(identity, str(err))
            return True
        try:
            self._on_message(identity, message)
        except Exception:  # a message must never end the loop
            logger.exception("dropped a %s message from %r: handling it failed", message.kind, identity)
        return True

    def _drop(self, identity: bytes, why: str) -> None:
        self._dropped += 1
        level = logging.WARNING if self._dropped <= _LOUD_DROPS else logging.DEBUG
        logger.log(level, "dropped a message from %r: %s%s", identity[:64], why,
                   " (further drops are logged at DEBUG)" if self._dropped == _LOUD_DROPS else "")

    def _send(self, identity: bytes, kind: bytes, header: Optional[Dict[str, Any]] = None,
              blob: Optional[bytes] = None) -> bool:
        try:
            self._router.send_multipart([identity] + protocol.pack(kind, header, blob), copy=False)
            return True
        except zmq.ZMQError as err:  # peer gone (ROUTER_MANDATORY)
            logger.debug("cannot reach %r: %s", identity, err)
            return False

    def _broadcast(self, kind: bytes) -> None:
        for uid, ranks in self._ranks.items():
            w = self._placement.worker(uid)
            if w is not None and w.alive:
                for entry in ranks.values():
                    self._send(entry.identity, kind)
        for ident in self._masters:
            self._send(ident, kind)

    def _check_ranks(self) -> None:
        now = time.monotonic()
        for uid, ranks in list(self._ranks.items()):
            w = self._placement.worker(uid)
            if w is None or not w.alive:
                continue
            for rank, entry in list(ranks.items()):
                silent = now - entry.last_seen
                reason = None
                if entry.local and not _running(entry.pid):
                    reason = f"rank {rank} (pid {entry.pid} on {entry.host}) exited"
                elif silent > self._rank_timeout:
                    reason = f"rank {rank} (pid {entry.pid} on {entry.host}) has not answered for {silent:.0f} s"
                if reason:
                    self._on_worker_failed((uid, reason, True))
                    break

    def _on_message(self, identity: bytes, message: protocol.Message) -> None:
        kind, header = message.kind, message.header
        if kind == protocol.READY:
            self._on_ready(identity, header)
            return
        seen = self._rank_of.get(identity)
        if seen is None:
            if identity in self._masters and kind in (protocol.BYE, protocol.ALIVE):
                return
            self._drop(identity, f"{protocol.name(kind)} from a peer that has not registered")
            return
        self._ranks[seen[0]][seen[1]].last_seen = time.monotonic()
        if kind == protocol.ALIVE:
            return
        if kind in (protocol.RESULT, protocol.ERROR):
            self._on_report(identity, seen, message)
        elif kind == protocol.BYE:
            logger.debug("%r left", identity)
        else:
            self._drop(identity, f"a rank may not send {protocol.name(kind)}")

    def _on_ready(self, identity: bytes, info: Dict[str, Any]) -> None:
        if not secrets.compare_digest(info["token"], self._channel.token):
            self._drop(identity, f"READY with a wrong token (pid {info['pid']} on {info['host']})")
            return
        if "master" in info:
            if info["master"] not in self._expected_masters:
                self._drop(identity, f"READY from master {info['master']!r}, which this executor did not start")
                return
            self._masters[identity] = info
            logger.info("RAPTOR master %s ready (pid %s on %s)", info["master"], info["pid"], info["host"])
            return
        missing = [k for k in ("worker", "rank", "size") if k not in info]
        if missing:
            self._drop(identity, f"READY without {missing}")
            return
        uid, rank = info["worker"], info["rank"]
        w = self._placement.worker(uid)
        if w is None or not w.alive:
            self._drop(identity, f"READY from worker {uid!r}, which this executor is not running")
            return
        if info["size"] != w.size or not 0 <= rank < w.size:
            self._drop(identity, f"READY from rank {rank} of {info['size']} for worker {uid} of {w.size} ranks")
            return
        if rank in self._ranks[uid] or identity in self._rank_of:
            self._drop(identity, f"READY for rank {rank} of worker {uid}, which has registered already")
            return
        self._rank_of[identity] = (uid, rank)
        # Same host name and a visible PID: a rank in another PID namespace
        # (a container) is judged by its answers alone.
        local = info["host"] == self._host and _running(info["pid"])
        self._ranks[uid][rank] = _Rank(identity, info["host"], info["pid"], local, time.monotonic())
        w = self._placement.join(uid, rank, info["host"])
        if w.ready:
            self._start_failures[w.pool] = 0
            logger.info("worker %s ready: %d ranks on %s", uid, w.size, sorted(set(w.hosts.values())))
        self._ready_cond.notify_all()

    def _on_submit(self, task: _Task) -> None:
        if self._refusal is not None:
            task.future.set_exception(self._refusal)
            return
        if not self._placement.accepts(task.spec):
            task.future.set_exception(self._cannot_hold(task))
            return
        self._tasks[task.uid] = task
        self._placement.enqueue(task.uid, task.spec)

    def _cannot_hold(self, task: _Task) -> BaseException:
        spec = task.spec
        if self._placement.accepts(spec, live=False):
            return WorkerLost(None, f"task {task.uid} needs {spec.ranks} ranks but the live pools are "
                                    f"{self._placement.pools()}")
        layouts = {w.uid: w.host_sizes() for w in self._placement.workers()}
        return InvalidResourceSpecification(
            {"ranks", "cores_per_rank"},
            f"task {task.uid} needs {spec.ranks} rank(s) of {spec.cores_per_rank} core(s) each, the cores "
            f"of each rank on one host; no worker can hold it (ranks per host: {layouts})")

    def _on_report(self, identity: bytes, seen: Tuple[str, int], message: protocol.Message) -> None:
        header = message.header
        task = self._tasks.get(header["uid"])
        if task is None or task.placed is None:
            logger.debug("report for task %s, which is not running", header["uid"])
            return
        rank = header["rank"]
        if not (task.placed.worker == seen[0] and 0 <= rank < len(task.placed.ranks)
                and task.placed.ranks[rank] == seen[1]):
            self._drop(identity, f"report for rank {rank} of task {task.uid} from rank {seen[1]} of worker "
                                 f"{seen[0]}, which does not run it")
            return
        if not header["ok"]:
            task.failed_ranks.add(rank)
            self._task_failed(task, _report_error(header, message.blob, task))
        elif message.kind == protocol.RESULT and rank == 0 and message.blob is not None:
            task.value = bytes(message.blob)
        if message.kind == protocol.RESULT:
            task.pending_ranks.discard(rank)
            if not task.pending_ranks:
                self._finish(task)

    def _task_failed(self, task: _Task, error: BaseException) -> None:
        """Fail the task's future at once; the ranks still at work get ``cancel_grace`` to finish."""
        if task.error is not None:
            return
        task.error = error
        if not task.future.done():
            task.future.set_exception(error)
        self._cancel(task, str(error))

    def _cancel(self, task: _Task, reason: str) -> None:
        if task.settle_by is None:
            task.settle_by = time.monotonic() + self._grace
        ranks = self._ranks.get(task.placed.worker, {})
        for i in task.pending_ranks - task.failed_ranks:
            entry = ranks.get(task.placed.ranks[i])
            if entry is not None:
                self._send(entry.identity, protocol.CANCEL, {"uid": task.uid, "reason": reason[:500]})

    def _finish(self, task: _Task) -> None:
        del self._tasks[task.uid]
        del self._active[task.uid]
        self._placement.finish(task.uid)
        if task.error is None and not task.future.done():
            try:
                value = deserialize(task.value)
                if self.on_result is not None:
                    self.on_result(task.name, value)
                task.future.set_result(value)
            except Exception as exc:
                task.future.set_exception(ResultError(None, f"result of task {task.uid} "
                                                            f"cannot be deserialized: {exc!r}"))

    def _next_timer(self) -> float:
        timers = [t for task in self._active.values() for t in (task.deadline, task.settle_by) if t is not None]
        return min(timers, default=float("inf"))

    def _check_timers(self, now: float) -> None:
        for task in list(self._active.values()):
            if task.deadline is not None and now >= task.deadline:
                task.deadline = None
                walltime = task.header.get("walltime")
                self._task_failed(task, TaskTimeout(None, f"task {task.uid} ({task.name}) ran longer than its "
                                                          f"walltime of {walltime:g} s and was stopped"))
            if task.settle_by is not None and now >= task.settle_by and task.uid in self._active:
                waiting = sorted(task.placed.ranks[i] for i in task.pending_ranks)
                self._replace(task.placed.worker,
                              f"rank(s) {waiting} did not finish task {task.uid} ({task.name}) within "
                              f"{self._grace:g} s of its failure (blocked in a collective with a failed rank?)")

    def _replace(self, uid: str, reason: str) -> None:
        """End worker ``uid`` (its ranks exit at once) and start another like it."""
        for entry in self._ranks.get(uid, {}).values():
            self._send(entry.identity, protocol.EXIT, {"reason": reason[:500]})
        self._on_worker_failed((uid, reason, True))

    def _on_worker_failed(self, args: Tuple[str, str, bool]) -> None:
        uid, reason, replace = args
        w = self._placement.worker(uid)
        if w is None or not w.alive:
            return
        if not reason.startswith("rank "):  # RP's word came first: name the ranks that are gone, if any
            gone = [f"rank {r} (pid {e.pid} on {e.host}) exited"
                    for r, e in sorted(self._ranks.get(uid, {}).items()) if e.local and not _running(e.pid)]
            # Ranks on other hosts cannot be looked at from here: say where they ran (a lost node).
            hosts = sorted({e.host for e in self._ranks.get(uid, {}).values() if not e.local})
            where = [f"its ranks ran on {', '.join(hosts)}"] if hosts and not gone else []
            reason = "; ".join(gone + where + [reason])
        logger.error("worker %s lost: %s", uid, reason)
        ready = w.ready
        for tid in self._placement.lose_worker(uid):
            self._active.pop(tid, None)
            task = self._tasks.pop(tid)
            if not task.future.done():
                task.future.set_exception(WorkerLost(None, f"task {tid} ({task.name}) lost its worker {uid}: "
                                                           f"{reason}"))
        for entry in self._ranks.pop(uid, {}).values():
            self._rank_of.pop(entry.identity, None)
        if replace:
            self._start_replacement(uid, ready)
        if not self._placement.any_alive():
            self._break(WorkerLost(None, f"no MPI worker is left (last lost: {uid}: {reason})"))
            return
        for tid in self._placement.unplaceable():
            task = self._tasks.pop(tid)
            task.future.set_exception(WorkerLost(None, f"task {tid} needs {task.spec.ranks} ranks; "
                                                       f"no live worker can hold it after {uid} was lost"))
        self._ready_cond.notify_all()

    def _start_replacement(self, uid: str, was_ready: bool) -> None:
        lineage = self._lineage.pop(uid, None)
        if lineage is None or self.on_replace is None or self._refusal is not None:
            return
        pool = lineage.pool
        if not was_ready:
            self._start_failures[pool] = self._start_failures.get(pool, 0) + 1
        if self._start_failures.get(pool, 0) >= _START_FAILURES:
            logger.error("pool %s: %d new workers in a row failed to start; starting no more", pool,
                         _START_FAILURES)
            return
        if self._max_restarts is not None and self._restarts.get(pool, 0) >= self._max_restarts:
            logger.error("pool %s: max_worker_restarts=%d reached; not replacing %s", pool, self._max_restarts, uid)
            return
        self._restarts[pool] = self._restarts.get(pool, 0) + 1
        new = f"{uid.split('~')[0]}~{self._restarts[pool]}"
        self.expect_worker(new, lineage.size, pool, lineage.gpus_per_rank, lineage.cores_per_rank)
        self._placement.forget_worker(uid)
        logger.info("starting worker %s to replace %s", new, uid)
        threading.Thread(target=self._run_replace, args=(uid, new), name="rcylon-replace", daemon=True).start()

    def _run_replace(self, old: str, new: str) -> None:
        try:
            self.on_replace(old, new)
        except Exception as exc:
            logger.exception("could not start %s to replace %s", new, old)
            self.worker_failed(new, f"could not be started: {exc!r}")

    def _on_break(self, cause: BaseException) -> None:
        self._break(cause)

    def _fail_all(self, exc: BaseException) -> None:
        """Fail every waiting and running task with ``exc``, and every later one."""
        with self._refusal_lock:
            self._refusal = exc
        self._active.clear()
        for uid in self._placement.clear():
            task = self._tasks.pop(uid)
            if not task.future.done():
                task.future.set_exception(exc)

    def _break(self, cause: BaseException, reason: Optional[str] = None) -> None:
        """Enter the broken state: no task can run any more, because of ``cause``."""
        self._fail_all(ExecutorBroken.because(cause, reason))
        with self._ready_cond:
            self._ready_cond.notify_all()

    def _shutdown_ranks(self, reason: str) -> None:
        self._broadcast(protocol.STOP)
        self._fail_all(ExecutorShutdown(None, f"{reason} before the task finished"))

    # -- starting tasks ------------------------------------------------------------

    def _schedule(self) -> None:
        for placed in self._placement.place():
            task = self._tasks.get(placed.uid)
            if task is not None:  # not failed with its worker earlier in this pass
                self._start(task, placed)

    def _start(self, task: _Task, placed: Placed) -> None:
        task.placed = placed
        self._active[task.uid] = task
        task.pending_ranks = set(range(len(placed.ranks)))
        walltime = task.header.get("walltime")
        if walltime:
            task.deadline = time.monotonic() + walltime
        header = dict(task.header, uid=task.uid, ranks=list(placed.ranks), cores=placed.cores,
                      tag=next(self._tags) % 32000)
        ranks = self._ranks[placed.worker]
        for world_rank in placed.ranks:
            if not self._send(ranks[world_rank].identity, protocol.TASK, header, task.payload):
                self._on_worker_failed((placed.worker, f"rank {world_rank} is unreachable", True))
                return
        if self.on_start is not None:
            self.on_start(task.uid)


def _report_error(header: Dict[str, Any], blob: Optional[Any], task: _Task) -> BaseException:
    if "setup_error" in header:
        return ResultError(None, f"task {task.uid}: rank {header['rank']} could not join the task's "
                                 f"communicator: {header['setup_error']}")
    if blob is None:
        return ResultError(None, f"task {task.uid}: rank {header['rank']} failed without saying why")
    try:
        wrapper = deserialize(bytes(blob))
        return wrapper.get_exception()
    except Exception as exc:
        return ResultError(None, f"task {task.uid}: rank {header['rank']} failed and its exception "
                                 f"could not be deserialized: {exc!r}")


def _running(pid: Optional[int]) -> bool:
    """Whether process ``pid`` of this host is alive (a zombie is not)."""
    if pid is None:
        return True  # not known yet: nothing to judge by
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
