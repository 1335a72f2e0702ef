"""Executor-side task dispatch: the ZeroMQ loop, sending tasks, routing results, recovery.

One thread owns the ROUTER socket of the run's authenticated channel
(:mod:`..wire.channel`) that every worker rank and RAPTOR master connects to.
:class:`~.placement.Placement` decides which waiting task starts on which
ranks, :class:`~.ranks.RankRegistry` knows the ranks and their liveness,
:class:`~.restarts.RestartPolicy` whether a lost worker is replaced, and
:class:`~.running.RunningTask` what a task's reports amount to.

Every message is checked (:func:`.protocol.unpack`) before it is acted on,
and must come from where it may: a READY only with the run's token, for a
worker or master this executor started and a rank not yet registered; a
result only from a rank the task runs on.  Anything else is logged and
dropped; no message, however malformed, ends the loop.

Failures never leave a future waiting (``docs/reliability.md``): a rank that
fails reports at once (``ERROR``) and the future fails with its exception;
the task's other ranks are cancelled and get ``cancel_grace`` seconds before
their worker is ended (``EXIT``) and replaced; a task past its ``walltime``
fails with ``TaskTimeout`` and is stopped the same way; a rank that exited or
went silent fails its worker (``WorkerLost``) and a replacement starts.  With
no worker left, or the loop failed, every task fails with ``ExecutorBroken``;
``stop()`` fails what is left with ``ExecutorShutdown``.
"""
from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import zmq

from ...errors import ExecutorShutdown, ResultError
from ..wire import protocol
from ..wire.channel import ChannelOptions, ServerChannel
from ..wire.task import Assignment, Task
from .backend import reject, resolve
from .heap import HeapGuard
from .mailbox import Mailbox
from .placement import Placed, Placement
from .ranks import RankRegistry, ranks_per_host
from .recovery import Recovery
from .restarts import Lineage, RestartPolicy
from .running import RunningTask

logger = logging.getLogger(__name__)

#: Dropped messages logged at WARNING before the rest go to DEBUG (a flood must not flood the log).
_LOUD_DROPS = 20


class Dispatcher(Recovery):
    """Sends tasks to worker ranks, watches the ranks, routes results to futures, and recovers from faults.

    Parameters
    ----------
    run_dir : path
        Where the channel's key file is written (``keys/``, private).
    bind_address, advertised_address : str
        Interface the ROUTER socket binds (``127.0.0.1`` for local pilots), and
        the address ranks connect to (the same host seen from the nodes).
    starvation_limit : int
        How often a waiting task may be passed over by smaller ones.
    heartbeat_period, heartbeat_threshold, max_heartbeats_per_s, rank_timeout, cancel_grace, max_worker_restarts
        As :class:`~.pilots.Liveness` says: seconds between heartbeats to each
        host's leader rank and each master (stretched, up to a third of the
        threshold or of ``rank_timeout``, to send at most
        ``max_heartbeats_per_s``) and between looks at the ranks; the silence
        after which the pilot's processes end themselves; the silence after
        which a host leader's worker is lost; the seconds a failed task's
        other ranks get to report before their worker is replaced;
        replacements per pool.
    channel : ChannelOptions
        The channel's settings (:class:`..wire.channel.ChannelOptions`).
    """

    def __init__(self, run_dir: os.PathLike, bind_address: str = "127.0.0.1",
                 advertised_address: Optional[str] = None, *, heartbeat_period: float = 2.0,
                 starvation_limit: int = 16, rank_timeout: float = 120.0, cancel_grace: float = 3.0,
                 channel: ChannelOptions = ChannelOptions(), max_worker_restarts: Optional[int] = None,
                 heartbeat_threshold: float = 30.0, max_heartbeats_per_s: float = 1000.0) -> None:
        self._ctx = zmq.Context()
        self._channel = ServerChannel(self._ctx, Path(run_dir), bind_address, advertised_address,
                                      port_range=channel.port_range, encrypted=channel.encrypted,
                                      max_frame_bytes=channel.max_frame_bytes)
        self._router = self._channel.socket
        self.address = self._channel.address
        self.channel_file = self._channel.channel_file
        self.encrypted = channel.encrypted  # the pilot's processes refuse a key-less channel file unless False
        self._mailbox = Mailbox(self._ctx, f"rcylon-wake-{id(self)}")
        self._period = heartbeat_period
        self._longest_period = min(heartbeat_threshold, rank_timeout) / 3
        self._beats_per_s = max_heartbeats_per_s
        self._rank_timeout = rank_timeout
        self._grace = cancel_grace
        self._restart_policy = RestartPolicy(max_worker_restarts)
        self._host = socket.gethostname()
        # The registry and placement are read and changed by the loop and by
        # client threads (RP's callbacks add workers): every access holds this.
        self._lock = threading.RLock()
        self._placement = Placement(starvation_limit)
        self._ranks = RankRegistry()
        self._tasks: Dict[str, RunningTask] = {}  # waiting and running
        self._active: Dict[str, RunningTask] = {}  # running
        self._timers: List[Tuple[float, int, str]] = []  # walltimes and cancel graces (Recovery._arm)
        self._timer_seq = itertools.count()
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

    def start(self) -> None:
        self._thread.start()

    def expect_worker(self, uid: str, size: int, pool: str = "default", gpus_per_rank: int = 0,
                      cores_per_rank: int = 1) -> None:
        """Declare a worker before it starts: only declared workers may register."""
        with self._lock:
            self._ranks.expect(uid)
            self._restart_policy.declare(uid, Lineage(size, pool, gpus_per_rank, cores_per_rank))
            self._placement.add_worker(uid, size, pool, gpus_per_rank, cores_per_rank)

    def expect_master(self, uid: str) -> None:
        """Declare a RAPTOR master: only declared masters may register."""
        with self._lock:
            self._ranks.expect_master(uid)

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

    def submit(self, task: Task, payload: bytes) -> Future:
        """Queue a task; its future fails at once if the dispatcher is broken or stopped."""
        fut: Future = Future()
        with self._refusal_lock:
            if self._refusal is None:
                self._post("submit", RunningTask(call=task, payload=payload, future=fut))
                return fut
        fut.set_exception(self._refusal)
        return fut

    def cancel(self, uid: str) -> None:
        """Withdraw task ``uid``: a waiting one leaves the queue, a running one's ranks are told to stop.

        The ranks of a running task get ``cancel_grace`` seconds to report, as
        after a failure; its future is not touched (the caller cancelled it).
        """
        self._post("cancel", uid)

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
            for pool, count in self._restart_policy.restarts().items():
                view.setdefault(pool, {"ranks": 0, "busy": 0, "idle": 0, "queued": 0, "running": 0})
                view[pool]["restarts"] = count
            return view

    def rank_hosts(self) -> Dict[str, Dict[str, int]]:
        """Per pool, ranks per host of the live workers (monitoring reports them as Parsl nodes)."""
        with self._lock:
            return ranks_per_host(self._placement.workers())

    def stop(self, reason: str = "executor shut down") -> None:
        """Tell every rank and master to stop, fail what is left, end the thread."""
        if self._stopping.is_set():
            return
        self._post("stop", reason)
        self._thread.join(timeout=10)
        self._stopping.set()
        self._channel.close()
        self._mailbox.close()
        self._ctx.term()

    def beat_period(self) -> float:
        """Seconds between heartbeats now: ``heartbeat_period``, longer where the host leaders are many."""
        stretched = min(self._ranks.leader_count() / self._beats_per_s, self._longest_period)
        return max(self._period, stretched)

    def _post(self, kind: str, body: Any) -> None:
        self._mailbox.post(kind, body)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._mailbox.pull, zmq.POLLIN)
        next_beat = next_check = time.monotonic()
        next_report = time.monotonic() + self.report_period
        heap = HeapGuard()  # a full garbage collection over a deep queue would stall this loop (heap.py)
        try:
            while True:
                wait = min(next_beat, next_check, self._next_timer()) - time.monotonic()
                if self._placement.needs_pass():  # a pass stopped at its budget: go on at once
                    wait = 0
                events = dict(poller.poll(timeout=max(0, int(wait * 1000) + 1)))
                if self._mailbox.pull in events:
                    self._mailbox.drain()
                with self._lock:
                    if self._router in events:
                        for _ in range(1000):  # drain, but let commands in between bursts
                            if not self._receive():
                                break
                    for kind, body in self._mailbox.take():
                        if kind == "stop":
                            self._shutdown_ranks(body)
                            return
                        getattr(self, f"_on_{kind}")(body)
                    self._schedule()
                    now = time.monotonic()
                    heap.tick(self._placement.busy(), now)
                    self._check_timers(now)
                    if now >= next_check:
                        self._check_ranks()
                        next_check = time.monotonic() + self._period
                    if now >= next_beat:
                        self._broadcast(protocol.HEARTBEAT)
                        next_beat = time.monotonic() + self.beat_period()
                        if self._placement.busy() and time.monotonic() >= next_report:
                            logger.info("pools: %s", self._placement.stats())
                            next_report = time.monotonic() + self.report_period
        except Exception as exc:  # a bug here must not leave futures hanging
            logger.exception("dispatcher loop failed")
            self._break(exc, f"the dispatcher loop failed: {exc!r}")
        finally:
            heap.close()
            self._refuse_queued()

    def _refuse_queued(self) -> None:
        """The loop has ended: fail the submissions it will never read."""
        if self._refusal is None:  # ended by something other than stop() or a caught failure
            self._break(RuntimeError("the dispatcher loop ended"))
        for kind, body in self._mailbox.take():
            if kind == "submit" and not body.future.done():
                reject(body.future, self._refusal)

    def _receive(self) -> bool:
        """Read and act on the next message from a peer; False when none waits.

        The one place where a peer's frames are decoded: a message that does
        not follow the protocol, or that its sender may not send, is dropped.
        """
        got = self._channel.receive()
        if got is None:
            return False
        identity, frames = got
        try:
            message = protocol.unpack(frames)
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
        return self._channel.send(identity, protocol.pack(kind, header, blob))

    def _broadcast(self, kind: bytes) -> None:
        """``kind`` to every master and live rank; a HEARTBEAT only to each worker's host leaders."""
        beat = kind == protocol.HEARTBEAT
        frames = protocol.pack(kind, {"rank_timeout": self._rank_timeout} if beat else None)
        for uid, ranks in self._ranks.workers():
            w = self._placement.worker(uid)
            if w is not None and w.alive:
                for entry in (self._ranks.leaders(uid) if beat else ranks).values():
                    self._channel.send(entry.identity, frames)
        for ident in self._ranks.masters():
            self._channel.send(ident, frames)

    def _on_message(self, identity: bytes, message: protocol.Message) -> None:
        kind, header = message.kind, message.header
        if kind == protocol.READY:
            self._on_ready(identity, header)
            return
        seen = self._ranks.who(identity)
        if seen is None:
            if self._ranks.is_master(identity) and kind in (protocol.BYE, protocol.ALIVE):
                return
            self._drop(identity, f"{protocol.name(kind)} from a peer that has not registered")
            return
        self._ranks.heard(*seen)
        if kind == protocol.ALIVE:
            return
        if kind in (protocol.RESULT, protocol.ERROR):
            self._on_report(identity, seen, message)
        elif kind == protocol.RANK_LOST:
            self._on_rank_lost(identity, seen, header)
        elif kind == protocol.BYE:
            logger.debug("%r left", identity)
        else:
            self._drop(identity, f"a rank may not send {protocol.name(kind)}")

    def _on_ready(self, identity: bytes, info: Dict[str, Any]) -> None:
        if not secrets.compare_digest(info["token"], self._channel.token):
            self._drop(identity, f"READY with a wrong token (pid {info['pid']} on {info['host']})")
            return
        if "master" in info:
            if not self._ranks.master_ready(identity, info["master"]):
                self._drop(identity, f"READY from master {info['master']!r}, which this executor did not start")
                return
            logger.info("RAPTOR master %s ready (pid %s on %s)", info["master"], info["pid"], info["host"])
            return
        refusal = self._ranks.refusal(identity, info, self._placement.worker(info.get("worker", "")))
        if refusal:
            self._drop(identity, refusal)
            return
        uid, rank = info["worker"], info["rank"]
        self._ranks.register(identity, uid, rank, info["host"], info["pid"], local=info["host"] == self._host,
                             leader=info.get("leader"))
        w = self._placement.join(uid, rank, info["host"])
        if w.ready:
            self._restart_policy.ready(w.pool)
            logger.info("worker %s ready: %d ranks on %s", uid, w.size, sorted(set(w.hosts.values())))
        self._ready_cond.notify_all()

    def _on_submit(self, task: RunningTask) -> None:
        if self._refusal is not None:
            reject(task.future, self._refusal)
            return
        if not self._placement.accepts(task.spec):
            reject(task.future, task.cannot_hold(self._placement))
            return
        self._tasks[task.uid] = task
        self._placement.enqueue(task.uid, task.spec)

    def _on_cancel(self, uid: str) -> None:
        task = self._tasks.get(uid)
        if task is None:
            return
        if task.placed is None:
            self._placement.withdraw(uid)
            del self._tasks[uid]
            logger.info("task %s (%s) cancelled while waiting", uid, task.name)
            return
        logger.info("task %s (%s) cancelled while running: its ranks are told to stop", uid, task.name)
        self._task_failed(task, CancelledError(f"task {uid} ({task.name}) was cancelled"))

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
            self._task_failed(task, task.rank_error(header, message.blob))
        elif message.kind == protocol.RESULT and rank == 0 and message.blob is not None:
            task.value = bytes(message.blob)
        if message.kind == protocol.RESULT:
            task.pending_ranks.discard(rank)
            if not task.pending_ranks:
                self._finish(task)

    def _finish(self, task: RunningTask) -> None:
        del self._tasks[task.uid]
        del self._active[task.uid]
        self._placement.finish(task.uid)
        if task.error is None and not task.future.done():
            try:
                value = task.value_of()
                if self.on_result is not None:
                    self.on_result(task.name, value)
            except Exception as exc:
                reject(task.future, exc if isinstance(exc, ResultError) else ResultError(
                    None, f"result of task {task.uid} cannot be deserialized: {exc!r}"))
                return
            resolve(task.future, value)

    def _shutdown_ranks(self, reason: str) -> None:
        self._broadcast(protocol.STOP)
        self._fail_all(ExecutorShutdown(None, f"{reason} before the task finished"))

    def _schedule(self) -> None:
        if not self._placement.needs_pass():  # nothing freed or queued since the last pass
            return
        for placed in self._placement.place(time.monotonic()):
            task = self._tasks.get(placed.uid)
            if task is not None:  # not failed with its worker earlier in this pass
                self._start(task, placed)

    def _start(self, task: RunningTask, placed: Placed) -> None:
        task.placed = placed
        self._active[task.uid] = task
        task.pending_ranks = set(range(len(placed.ranks)))
        if task.call.walltime:
            task.deadline = time.monotonic() + task.call.walltime
            self._arm(task.deadline, task.uid)
        header = dict(task.call.to_wire(), **Assignment(placed.ranks, next(self._tags) % 32000, placed.cores).to_wire())
        # Encoded once, the same frames to each rank (the header lists them all): O(ranks), not O(ranks^2).
        frames = protocol.pack(protocol.TASK, header, task.payload)
        ranks = self._ranks.of(placed.worker)
        for world_rank in placed.ranks:
            if not self._channel.send(ranks[world_rank].identity, frames):
                self._on_worker_failed((placed.worker, f"rank {world_rank} is unreachable", True))
                return
        if self.on_start is not None:
            self.on_start(task.uid)

