"""Executor-side task dispatch: rank registry, placement, results, heartbeats.

One thread owns a ZeroMQ ROUTER socket that every worker rank and the RAPTOR
master connect to.  Tasks wait in a FIFO; a task is placed when one worker of
its pool has enough free ranks (best fit: the worker with the fewest free
ranks that still fits, ranks on one host first).  Smaller tasks may start
ahead of a larger one that does not fit yet (backfill), but once a waiting
task has been passed over ``starvation_limit`` times nothing behind it in its
pool starts until it runs, so big tasks are never starved by streams of
small ones.

Ranks answer every heartbeat.  A rank whose process is gone (checked by PID
for ranks on this host) or that has not answered for ``rank_timeout``
seconds fails its worker: the MPI launcher does not always end a job when
one of its ranks exits, and a task must not wait forever on a dead rank.
"""
from __future__ import annotations

import itertools
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import psutil
import zmq
from parsl.serialize import deserialize

from ..errors import ExecutorShutdown, ResultError, WorkerLost
from ..resources import ResourceSpec, pool_accepts
from . import protocol

logger = logging.getLogger(__name__)


@dataclass
class _Worker:
    uid: str
    size: int
    pool: str
    gpus_per_rank: int = 0
    identities: Dict[int, bytes] = field(default_factory=dict)
    hosts: Dict[int, str] = field(default_factory=dict)
    pids: Dict[int, int] = field(default_factory=dict)
    last_seen: Dict[int, float] = field(default_factory=dict)  # rank -> time.monotonic()
    local: Set[int] = field(default_factory=set)  # ranks whose PID this process can see
    free: Set[int] = field(default_factory=set)
    alive: bool = True

    @property
    def ready(self) -> bool:
        return len(self.identities) == self.size


@dataclass
class _Task:
    uid: str
    spec: ResourceSpec
    message: Dict[str, Any]
    future: Future
    submitted: float = field(default_factory=time.monotonic)
    passed_over: int = 0
    worker: Optional[str] = None
    ranks: List[int] = field(default_factory=list)
    pending_ranks: Set[int] = field(default_factory=set)
    value: Optional[bytes] = None
    error: Optional[BaseException] = None
    t_start: Optional[float] = None


class Dispatcher:
    """Places tasks on worker ranks and routes their results to futures.

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
        self._starvation_limit = starvation_limit
        self._rank_timeout = rank_timeout
        self._host = socket.gethostname()
        self._rank_of: Dict[bytes, Tuple[str, int]] = {}  # identity -> (worker uid, rank)
        self._workers: Dict[str, _Worker] = {}
        self._masters: Dict[bytes, Dict[str, Any]] = {}
        self._pending: OrderedDict[str, _Task] = OrderedDict()
        self._running: Dict[str, _Task] = {}
        self._tags = itertools.count(1)
        self._broken: Optional[BaseException] = None
        self._stopping = threading.Event()
        self._ready_cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="rcylon-dispatcher", daemon=True)
        #: called as on_result(app name, value) for every successful task, before its future resolves
        self.on_result: Optional[Callable[[str, Any], None]] = None
        self.task_times: Dict[str, Tuple[float, float]] = {}
        self.report_period = 30.0  # seconds between "pools: ..." log lines while work is queued

    # -- public API (any thread) ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def expect_worker(self, uid: str, size: int, pool: str = "default", gpus_per_rank: int = 0) -> None:
        """Declare a worker before it starts, so submissions can be validated."""
        self._workers[uid] = _Worker(uid=uid, size=size, pool=pool, gpus_per_rank=gpus_per_rank)

    def pools(self) -> Dict[str, List[int]]:
        """Sizes of the live workers of each pool."""
        out: Dict[str, List[int]] = defaultdict(list)
        for w in list(self._workers.values()):
            if w.alive:
                out[w.pool].append(w.size)
        return dict(out)

    def can_hold(self, spec: ResourceSpec) -> bool:
        return any(self._fits_worker(w, spec) for w in list(self._workers.values()) if w.alive)

    def wait_ready(self, timeout: float, failed: Callable[[], Optional[str]]) -> None:
        """Block until every expected rank said READY; raise if ``failed()`` says why not."""
        deadline = time.monotonic() + timeout
        with self._ready_cond:
            while True:
                reason = failed()
                if reason:
                    raise RuntimeError(reason)
                if all(w.ready for w in self._workers.values()):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = {w.uid: w.size - len(w.identities) for w in self._workers.values() if not w.ready}
                    raise TimeoutError(f"workers did not start within {timeout:.0f} s (ranks missing: {missing})")
                self._ready_cond.wait(timeout=min(left, 0.5))

    def submit(self, uid: str, spec: ResourceSpec, message: Dict[str, Any]) -> Future:
        fut: Future = Future()
        if self._broken is not None:
            fut.set_exception(self._broken)
            return fut
        self._post("submit", _Task(uid=uid, spec=spec, message=message, future=fut))
        return fut

    def worker_failed(self, uid: str, reason: str) -> None:
        self._post("worker_failed", (uid, reason))

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Per-pool view: ranks busy and idle, tasks queued and running."""
        view: Dict[str, Dict[str, int]] = defaultdict(lambda: {"ranks": 0, "busy": 0, "idle": 0,
                                                               "queued": 0, "running": 0})
        for w in list(self._workers.values()):
            if w.alive:
                v = view[w.pool]
                v["ranks"] += w.size
                v["idle"] += len(w.free)
                v["busy"] += len(w.identities) - len(w.free)
        for t in list(self._pending.values()):
            view[t.spec.pool or "default"]["queued"] += 1
        for t in list(self._running.values()):
            pool = self._workers[t.worker].pool if t.worker in self._workers else "default"
            view[pool]["running"] += 1
        return dict(view)

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
                        try:
                            frames = self._router.recv_multipart(flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_message(frames[0], frames[1:])
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
                    if (self._pending or self._running) and time.monotonic() >= next_report:
                        logger.info("pools: %s", self.stats())
                        next_report = time.monotonic() + self.report_period
        except Exception as exc:  # a bug here must not leave futures hanging
            logger.exception("dispatcher loop failed")
            self._break(ResultError(None, f"dispatcher failed: {exc!r}"))

    def _send(self, identity: bytes, kind: bytes, body: Any = None) -> bool:
        try:
            self._router.send_multipart([identity] + protocol.pack(kind, body), copy=False)
            return True
        except zmq.ZMQError as err:  # peer gone (ROUTER_MANDATORY)
            logger.debug("cannot reach %r: %s", identity, err)
            return False

    def _broadcast(self, kind: bytes) -> None:
        for w in self._workers.values():
            if w.alive:
                for ident in w.identities.values():
                    self._send(ident, kind)
        for ident in self._masters:
            self._send(ident, kind)

    def _check_ranks(self) -> None:
        now = time.monotonic()
        for w in list(self._workers.values()):
            if not w.alive:
                continue
            for rank in list(w.identities):
                pid, host = w.pids.get(rank), w.hosts.get(rank)
                silent = now - w.last_seen.get(rank, now)
                reason = None
                if rank in w.local and not _running(pid):
                    reason = f"rank {rank} (pid {pid} on {host}) exited"
                elif silent > self._rank_timeout:
                    reason = f"rank {rank} (pid {pid} on {host}) has not answered for {silent:.0f} s"
                if reason:
                    self._on_worker_failed((w.uid, reason))
                    break

    def _on_message(self, identity: bytes, frames: List[bytes]) -> None:
        kind, body = protocol.unpack(frames)
        seen = self._rank_of.get(identity)
        if seen is not None and seen[0] in self._workers:
            self._workers[seen[0]].last_seen[seen[1]] = time.monotonic()
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
        w = self._workers.get(info["worker"])
        if w is None:  # a worker we did not expect: adopt it
            w = self._workers[info["worker"]] = _Worker(uid=info["worker"], size=info["size"], pool=info["pool"])
        rank = info["rank"]
        self._rank_of[identity] = (w.uid, rank)
        w.last_seen[rank] = time.monotonic()
        # Same host name and a visible PID: a rank in another PID namespace
        # (a container) is judged by its answers alone.
        if info["host"] == self._host and _running(info["pid"]):
            w.local.add(rank)
        w.identities[rank] = identity
        w.hosts[rank] = info["host"]
        w.pids[rank] = info["pid"]
        w.free.add(rank)
        if w.ready:
            logger.info("worker %s ready: %d ranks on %s", w.uid, w.size, sorted(set(w.hosts.values())))
        with self._ready_cond:
            self._ready_cond.notify_all()

    def _on_submit(self, task: _Task) -> None:
        if self._broken is not None:
            task.future.set_exception(self._broken)
            return
        if not self.can_hold(task.spec):
            task.future.set_exception(WorkerLost(None, f"task {task.uid} needs {task.spec.ranks} ranks "
                                                       f"but the live pools are {self.pools()}"))
            return
        self._pending[task.uid] = task

    def _on_result(self, report: Dict[str, Any]) -> None:
        task = self._running.get(report["uid"])
        if task is None:
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
            task.t_start = report.get("t_start")
        if not task.pending_ranks:
            self._finish(task, report)

    def _finish(self, task: _Task, last_report: Dict[str, Any]) -> None:
        del self._running[task.uid]
        w = self._workers.get(task.worker or "")
        if w is not None and w.alive:
            w.free.update(task.ranks)
        if task.error is None and not task.future.done():
            try:
                value = deserialize(task.value)
                if self.on_result is not None:
                    self.on_result(task.message.get("name", ""), value)
                task.future.set_result(value)
            except Exception as exc:
                task.future.set_exception(ResultError(None, f"result of task {task.uid} "
                                                            f"cannot be deserialized: {exc!r}"))
        if task.t_start is not None:
            self.task_times[task.uid] = (task.t_start, last_report.get("t_end", time.time()))

    def _on_worker_failed(self, args: Tuple[str, str]) -> None:
        uid, reason = args
        w = self._workers.get(uid)
        if w is None or not w.alive:
            return
        w.alive = False
        w.free.clear()
        logger.error("worker %s lost: %s", uid, reason)
        for task in [t for t in self._running.values() if t.worker == uid]:
            del self._running[task.uid]
            if not task.future.done():
                task.future.set_exception(WorkerLost(None, f"task {task.uid} ({task.message.get('name')}) "
                                                           f"lost its worker {uid}: {reason}"))
        if not any(x.alive for x in self._workers.values()):
            self._break(WorkerLost(None, f"no MPI worker is left (last lost: {uid}: {reason})"))
            return
        for task in list(self._pending.values()):
            if not self.can_hold(task.spec):
                del self._pending[task.uid]
                task.future.set_exception(WorkerLost(None, f"task {task.uid} needs {task.spec.ranks} ranks; "
                                                           f"no live worker can hold it after {uid} was lost"))
        with self._ready_cond:
            self._ready_cond.notify_all()

    def _break(self, exc: BaseException) -> None:
        """Enter the broken state: fail everything pending or running, refuse new work."""
        self._broken = exc
        for task in list(self._pending.values()) + list(self._running.values()):
            if not task.future.done():
                task.future.set_exception(exc)
        self._pending.clear()
        self._running.clear()

    def _shutdown_ranks(self, reason: str) -> None:
        self._broadcast(protocol.STOP)
        self._break(ExecutorShutdown(None, f"{reason} before the task finished"))

    # -- placement -----------------------------------------------------------------

    def _fits_worker(self, w: _Worker, spec: ResourceSpec) -> bool:
        cpu_pool = any(x.alive and not x.gpus_per_rank for x in self._workers.values())
        return pool_accepts(spec, w.pool, w.size, w.gpus_per_rank, cpu_pool)

    def _schedule(self) -> None:
        blocked_pools: Set[str] = set()
        waiting: List[_Task] = []  # tasks this pass could not place, in FIFO order
        for task in list(self._pending.values()):
            if not any(w.free for w in self._workers.values() if w.alive):
                return
            candidates = [w for w in self._workers.values()
                          if w.alive and w.ready and self._fits_worker(w, task.spec)]
            usable = [w for w in candidates if len(w.free) >= task.spec.ranks and w.pool not in blocked_pools]
            if not usable:
                waiting.append(task)
                if task.passed_over >= self._starvation_limit:
                    blocked_pools.update(w.pool for w in candidates)
                continue
            w = min(usable, key=lambda x: len(x.free))
            self._start(task, w, _pick_ranks(w, task.spec.ranks))
            for earlier in waiting:
                earlier.passed_over += 1

    def _start(self, task: _Task, w: _Worker, ranks: List[int]) -> None:
        del self._pending[task.uid]
        w.free.difference_update(ranks)
        task.worker = w.uid
        task.ranks = ranks
        task.pending_ranks = set(range(len(ranks)))
        message = dict(task.message, ranks=ranks, tag=next(self._tags) % 32000)
        self._running[task.uid] = task
        for world_rank in ranks:
            if not self._send(w.identities[world_rank], protocol.TASK, message):
                self._on_worker_failed((w.uid, f"rank {world_rank} is unreachable"))
                return


def _pick_ranks(w: _Worker, n: int) -> List[int]:
    """Lowest free ranks, all on one host when one host has enough."""
    by_host: Dict[str, List[int]] = defaultdict(list)
    for r in sorted(w.free):
        by_host[w.hosts.get(r, "")].append(r)
    for ranks in sorted(by_host.values(), key=len):
        if len(ranks) >= n:
            return ranks[:n]
    return sorted(w.free)[:n]


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
