"""Executor-side task dispatch: the ZeroMQ loop, the rank registry and liveness, result routing.

One thread owns a ZeroMQ ROUTER socket that every worker rank and the RAPTOR
master connect to.  Which waiting task starts on which ranks is decided by
:class:`~.placement.Placement` (FIFO, best fit, bounded backfill, cores per
rank); the dispatcher tells it what happens and sends the tasks it starts.

Ranks answer every heartbeat.  A rank whose process is gone (checked by PID
for ranks on this host) or that has not answered for ``rank_timeout``
seconds fails its worker: the MPI launcher does not always end a job when
one of its ranks exits, and a task must not wait forever on a dead rank.

When no worker is left, or the loop itself fails, the dispatcher is broken:
pending, running and later tasks fail at once with ``ExecutorBroken``
carrying the cause.  ``stop()`` fails what is left with ``ExecutorShutdown``.
"""
from __future__ import annotations

import itertools
import logging
import queue
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Set, Tuple

import psutil
import zmq
from parsl.executors.errors import InvalidResourceSpecification
from parsl.serialize import deserialize

from ..errors import ExecutorBroken, ExecutorShutdown, ResultError, WorkerLost
from ..resources import ResourceSpec
from . import protocol
from .placement import Placed, Placement

logger = logging.getLogger(__name__)


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
    message: Dict[str, Any]
    future: Future
    pending_ranks: Set[int] = field(default_factory=set)
    value: Optional[bytes] = None
    error: Optional[BaseException] = None


class Dispatcher:
    """Sends tasks to worker ranks, watches the ranks, and routes their results to futures.

    Parameters
    ----------
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
    """

    def __init__(self, bind_address: str = "127.0.0.1", advertised_address: Optional[str] = None,
                 heartbeat_period: float = 2.0, starvation_limit: int = 16, rank_timeout: float = 120.0) -> None:
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        port = self._router.bind_to_random_port(f"tcp://{bind_address}")
        host = advertised_address or bind_address
        self.address = f"tcp://{host}:{port}"
        self._wake_addr = f"inproc://rcylon-wake-{id(self)}"
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.bind(self._wake_addr)
        self._wake_lock = threading.Lock()
        self._wake_push = self._ctx.socket(zmq.PUSH)
        self._wake_push.connect(self._wake_addr)
        self._commands: queue.Queue[Tuple[str, Any]] = queue.Queue()
        self._period = heartbeat_period
        self._rank_timeout = rank_timeout
        self._host = socket.gethostname()
        self._placement = Placement(starvation_limit)
        self._rank_of: Dict[bytes, Tuple[str, int]] = {}  # identity -> (worker uid, rank)
        self._ranks: Dict[str, Dict[int, _Rank]] = {}  # worker uid -> rank -> registry entry
        self._masters: Dict[bytes, Dict[str, Any]] = {}
        self._tasks: Dict[str, _Task] = {}  # waiting and running
        self._tags = itertools.count(1)
        self._refusal: Optional[BaseException] = None  # what every task fails with once broken or stopped
        self._refusal_lock = threading.Lock()  # a submission is queued before the refusal, or refused
        self._stopping = threading.Event()
        self._ready_cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="rcylon-dispatcher", daemon=True)
        #: called as on_result(app name, value) for every successful task, before its future resolves
        self.on_result: Optional[Callable[[str, Any], None]] = None
        self.report_period = 30.0  # seconds between "pools: ..." log lines while work is queued

    # -- public API (any thread) ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def expect_worker(self, uid: str, size: int, pool: str = "default", gpus_per_rank: int = 0,
                      cores_per_rank: int = 1) -> None:
        """Declare a worker before it starts, so submissions can be validated."""
        self._ranks[uid] = {}
        self._placement.add_worker(uid, size, pool, gpus_per_rank, cores_per_rank)

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

    def submit(self, uid: str, spec: ResourceSpec, message: Dict[str, Any]) -> Future:
        """Queue a task; its future fails at once if the dispatcher is broken or stopped."""
        fut: Future = Future()
        with self._refusal_lock:
            if self._refusal is None:
                self._post("submit", _Task(uid=uid, spec=spec, message=message, future=fut))
                return fut
        fut.set_exception(self._refusal)
        return fut

    def worker_failed(self, uid: str, reason: str) -> None:
        self._post("worker_failed", (uid, reason))

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Per-pool view: ranks busy and idle, tasks queued and running."""
        return self._placement.stats()

    def stop(self, reason: str = "executor shut down") -> None:
        """Tell every rank and master to stop, fail what is left, end the thread."""
        if self._stopping.is_set():
            return
        self._post("stop", reason)
        self._thread.join(timeout=10)
        self._stopping.set()
        for sock in (self._router, self._wake_pull, self._wake_push):
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
                events = dict(poller.poll(timeout=max(0, int((next_beat - time.monotonic()) * 1000))))
                if self._wake_pull in events:
                    while self._wake_pull.poll(0):
                        self._wake_pull.recv()
                if self._router in events:
                    for _ in range(1000):  # drain, but let commands in between bursts
                        message = self._receive()
                        if message is None:
                            break
                        self._on_message(*message)
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
                if time.monotonic() >= next_beat:
                    self._check_ranks()
                    self._broadcast(protocol.HEARTBEAT)
                    next_beat = time.monotonic() + self._period
                    if self._placement.busy() and time.monotonic() >= next_report:
                        logger.info("pools: %s", self.stats())
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

    def _receive(self) -> Optional[Tuple[bytes, bytes, Any]]:
        """The next message from a peer as (identity, kind, body), or None when none waits.

        The one place where a peer's frames are decoded.
        """
        try:
            frames = self._router.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return None
        kind, body = protocol.unpack(frames[1:])
        return frames[0], kind, body

    def _send(self, identity: bytes, kind: bytes, body: Any = None) -> bool:
        try:
            self._router.send_multipart([identity] + protocol.pack(kind, body), copy=False)
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
                    self._on_worker_failed((uid, reason))
                    break

    def _on_message(self, identity: bytes, kind: bytes, body: Any) -> None:
        seen = self._rank_of.get(identity)
        if seen is not None:
            self._ranks[seen[0]][seen[1]].last_seen = time.monotonic()
        if kind == protocol.ALIVE:
            return
        if kind == protocol.RESULT:
            self._on_result(body)
        elif kind == protocol.READY:
            self._on_ready(identity, body)
        elif kind == protocol.BYE:
            logger.debug("%r left", identity)
        else:
            logger.warning("unexpected message %r from %r", kind, identity)

    def _on_ready(self, identity: bytes, info: Dict[str, Any]) -> None:
        if "master" in info:
            self._masters[identity] = info
            logger.info("RAPTOR master %s ready (pid %s on %s)", info["master"], info["pid"], info["host"])
            return
        uid, rank = info["worker"], info["rank"]
        if self._placement.worker(uid) is None:  # a worker we did not expect: adopt it
            self.expect_worker(uid, info["size"], info["pool"])
        self._rank_of[identity] = (uid, rank)
        # Same host name and a visible PID: a rank in another PID namespace
        # (a container) is judged by its answers alone.
        local = info["host"] == self._host and _running(info["pid"])
        self._ranks[uid][rank] = _Rank(identity, info["host"], info["pid"], local, time.monotonic())
        w = self._placement.join(uid, rank, info["host"])
        if w.ready:
            logger.info("worker %s ready: %d ranks on %s", uid, w.size, sorted(set(w.hosts.values())))
        with self._ready_cond:
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

    def _on_result(self, report: Dict[str, Any]) -> None:
        task = self._tasks.get(report["uid"])
        if task is None or not task.pending_ranks:
            return
        rank = report["rank"]
        task.pending_ranks.discard(rank)
        if not report.get("ok"):
            if task.error is None:
                task.error = _report_error(report, task)
                if not task.future.done():
                    task.future.set_exception(task.error)
        elif rank == 0:
            task.value = report.get("value")
        if not task.pending_ranks:
            self._finish(task)

    def _finish(self, task: _Task) -> None:
        del self._tasks[task.uid]
        self._placement.finish(task.uid)
        if task.error is None and not task.future.done():
            try:
                value = deserialize(task.value)
                if self.on_result is not None:
                    self.on_result(task.message.get("name", ""), value)
                task.future.set_result(value)
            except Exception as exc:
                task.future.set_exception(ResultError(None, f"result of task {task.uid} "
                                                            f"cannot be deserialized: {exc!r}"))

    def _on_worker_failed(self, args: Tuple[str, str]) -> None:
        uid, reason = args
        w = self._placement.worker(uid)
        if w is None or not w.alive:
            return
        logger.error("worker %s lost: %s", uid, reason)
        for tid in self._placement.lose_worker(uid):
            task = self._tasks.pop(tid)
            if not task.future.done():
                task.future.set_exception(WorkerLost(None, f"task {tid} ({task.message.get('name')}) "
                                                           f"lost its worker {uid}: {reason}"))
        if not self._placement.any_alive():
            self._break(WorkerLost(None, f"no MPI worker is left (last lost: {uid}: {reason})"))
            return
        for tid in self._placement.unplaceable():
            task = self._tasks.pop(tid)
            task.future.set_exception(WorkerLost(None, f"task {tid} needs {task.spec.ranks} ranks; "
                                                       f"no live worker can hold it after {uid} was lost"))
        with self._ready_cond:
            self._ready_cond.notify_all()

    def _fail_all(self, exc: BaseException) -> None:
        """Fail every waiting and running task with ``exc``, and every later one."""
        with self._refusal_lock:
            self._refusal = exc
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
        task.pending_ranks = set(range(len(placed.ranks)))
        message = dict(task.message, ranks=list(placed.ranks), cores=placed.cores, tag=next(self._tags) % 32000)
        ranks = self._ranks[placed.worker]
        for world_rank in placed.ranks:
            if not self._send(ranks[world_rank].identity, protocol.TASK, message):
                self._on_worker_failed((placed.worker, f"rank {world_rank} is unreachable"))
                return


def _report_error(report: Dict[str, Any], task: _Task) -> BaseException:
    if "setup_error" in report:
        return ResultError(None, f"task {task.uid}: rank {report['rank']} could not join the task's "
                                 f"communicator: {report['setup_error']}")
    try:
        wrapper = deserialize(report["error"])
        return wrapper.get_exception()
    except Exception as exc:
        return ResultError(None, f"task {task.uid}: rank {report['rank']} failed and its exception "
                                 f"could not be deserialized: {exc!r}")


def _running(pid: Optional[int]) -> bool:
    """Whether process ``pid`` of this host is alive (a zombie is not)."""
    if pid is None:
        return True  # not known yet: nothing to judge by
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
