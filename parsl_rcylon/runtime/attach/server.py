"""The pilot server: the front door of a running executor, attached clients' tasks in, outcomes out."""
from __future__ import annotations

import dataclasses
import hmac
import itertools
import json
import logging
import os
import threading
import time
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import psutil
import zmq
from parsl.serialize import serialize

from ...permissions import make_dir, write_private
from ...resources import WorkerPool
from ..client.admission import Admission
from ..wire import protocol
from ..wire.channel import ChannelOptions, ServerChannel, bind_address
from ..wire.task import Task
from .info import _POOL_FIELDS, ATTACH_DIR, IDLE_TIMEOUT, INFO_FILE, PilotInfo

logger = logging.getLogger(__name__)


class Served(Protocol):
    """What the server asks of the executor it fronts (a started ``RadicalCylonExecutor``)."""

    label: str
    data_dir: Optional[str]
    pools: List[WorkerPool]
    address: Optional[str]
    heartbeat_period: float
    heartbeat_threshold: float
    timings: Dict[str, float]
    channel: ChannelOptions
    admission: Admission
    is_local: bool
    session_id: Optional[str]

    def submit_packed(self, task: Task, resources: Dict[str, Any], payload: bytes,
                      on_start: Optional[Callable[[], None]] = None) -> Future:
        """Run a call an attached client packed; ``on_start()`` once its ranks have it."""

    def status(self) -> Dict[str, Dict[str, int]]:
        """Per-pool figures (ranks, busy, idle, queued, running)."""


class PilotServer:
    """The front door of a running executor: attached clients' tasks in, outcomes out.

    Parameters
    ----------
    executor : Served
        A started executor (its pilot and workers ready); :mod:`parsl_rcylon.serving` builds it.
    run_dir : path
        The run directory ``up`` was given; ``attach/`` is made under it.
    idle_timeout : float
        Seconds without a client and without a task after which :meth:`serve` returns.
    """

    def __init__(self, executor: Served, run_dir: os.PathLike, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.executor = executor
        self.run_dir = Path(run_dir)
        self.idle_timeout = idle_timeout
        self._period = executor.heartbeat_period
        self._threshold = executor.heartbeat_threshold
        self._ctx = zmq.Context()
        attach_dir = make_dir(self.run_dir / ATTACH_DIR, "private")
        self._channel = ServerChannel(self._ctx, attach_dir, bind_address(executor.address, executor.is_local),
                                      None if executor.is_local else executor.address,
                                      port_range=executor.channel.port_range, encrypted=True,
                                      max_frame_bytes=executor.channel.max_frame_bytes)
        self._sock = self._channel.socket
        self._done_addr = f"inproc://rcylon-attach-{id(self)}"
        self._done_pull = self._ctx.socket(zmq.PULL)
        self._done_pull.bind(self._done_addr)
        self._done_push = self._ctx.socket(zmq.PUSH)
        self._done_push.connect(self._done_addr)
        self._done_lock = threading.Lock()
        self._clients: Dict[bytes, float] = {}  # identity -> last heard (monotonic)
        self._running: Dict[str, bytes] = {}    # server task uid -> client identity
        self._futures: Dict[str, Future] = {}    # server task uid -> the executor's future
        self._of_client: Dict[bytes, Dict[str, str]] = {}  # client identity -> its task uid -> server task uid
        self._ids = itertools.count()
        self._stop = threading.Event()
        self.info = PilotInfo(
            run_dir=str(self.run_dir), address=self._channel.address, pid=os.getpid(),
            started=psutil.Process().create_time(), label=executor.label, session=executor.session_id or "",
            data_dir=executor.data_dir, idle_timeout=idle_timeout, heartbeat_period=self._period,
            heartbeat_threshold=self._threshold,
            pools=[{k: getattr(p, k) for k in _POOL_FIELDS} for p in executor.pools],
            start_s=executor.timings.get("start", 0.0),
            shapes=[dataclasses.replace(s, capacity=executor.admission.capacity(s)).to_dict()
                    for s in executor.admission.shapes])

    def publish(self) -> Path:
        """Write ``pilot.json``: from now on clients may attach."""
        path = self.run_dir / ATTACH_DIR / INFO_FILE
        write_private(str(path), json.dumps(self.info.__dict__, indent=2).encode())
        return path

    def stop(self) -> None:
        """Make :meth:`serve` return (any thread, or a signal handler)."""
        self._stop.set()
        with self._done_lock:
            self._done_push.send_multipart([b"", b""])

    def serve(self) -> str:
        """Answer clients until stopped or idle for ``idle_timeout``; return why it ended."""
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._done_pull, zmq.POLLIN)
        idle_since = time.monotonic()
        why = "stopped"
        while not self._stop.is_set():
            now = time.monotonic()
            self._drop_silent(now)
            if self._clients or self._running:
                idle_since = now
            elif now - idle_since >= self.idle_timeout:
                why = f"idle for {self.idle_timeout:.0f} s"
                break
            # Block until a message, an outcome, a client's deadline or the idle deadline.
            wake = min([idle_since + self.idle_timeout] + [t + self._threshold for t in self._clients.values()])
            events = dict(poller.poll(timeout=max(1, int((wake - now) * 1000) + 1)))
            if self._done_pull in events:
                while self._done_pull.poll(0):
                    self._forward(self._done_pull.recv_multipart())
            if self._sock in events:
                while self._sock.poll(0):
                    self._receive()
        self._farewell()
        return why

    def close(self) -> None:
        self._done_push.close(linger=0)
        self._done_pull.close(linger=0)
        self._channel.close()
        self._ctx.term()
        for path in (self.run_dir / ATTACH_DIR / INFO_FILE,):
            path.unlink(missing_ok=True)

    # -- messages ------------------------------------------------------------------

    def _receive(self) -> None:
        frames = self._sock.recv_multipart(copy=False)
        identity, body = frames[0].bytes, frames[1:]
        try:
            message = protocol.unpack(body)
        except protocol.ProtocolError as err:
            logger.warning("dropped a message from an attached client: %s", err)
            return
        kind, header = message.kind, message.header
        if kind == protocol.ATTACH:
            # Constant time, as the dispatcher compares READY tokens; any str a JSON header can hold encodes.
            if not hmac.compare_digest(header["token"].encode("utf-8", "surrogatepass"), self._channel.token.encode()):
                logger.warning("refused an attach with a wrong token (pid %s)", header["pid"])
                return
            self._clients[identity] = time.monotonic()
            logger.info("client attached: pid %s on %s (%d attached)", header["pid"], header["host"],
                        len(self._clients))
            self._send(identity, protocol.WELCOME, {"session": self.info.session, "pid": os.getpid(),
                                                    "pools": self.executor.status()})
            return
        if identity not in self._clients:
            logger.warning("dropped %s from a client that did not attach", protocol.name(kind))
            return
        self._clients[identity] = time.monotonic()
        if kind == protocol.HEARTBEAT:
            self._send(identity, protocol.ALIVE, {"pools": self.executor.status()})
        elif kind == protocol.SUBMIT:
            self._submit(identity, dict(header), bytes(message.blob))
        elif kind == protocol.CANCEL:
            uid = self._of_client.get(identity, {}).get(header["uid"])
            if uid is not None:
                self._futures[uid].cancel()
        elif kind == protocol.DETACH:
            del self._clients[identity]
            abandoned = self._abandon(identity)
            logger.info("client detached (%d attached%s)", len(self._clients),
                        f"; {abandoned} of its tasks cancelled" if abandoned else "")
        else:
            logger.warning("dropped %s from an attached client", protocol.name(kind))

    def _submit(self, identity: bytes, header: Dict[str, Any], payload: bytes) -> None:
        client_uid = header["uid"]
        uid = f"{self.executor.label}.attached.{next(self._ids):06d}"
        received = Task.from_wire(header)
        task = dataclasses.replace(received, uid=uid, data_dir=received.data_dir or self.info.data_dir)
        try:
            fut = self.executor.submit_packed(task, header["resources"], payload,
                                              on_start=lambda: self._started(uid, client_uid))
        except Exception as exc:  # a spec no pool can hold, a stopped executor
            self._send_outcome(identity, client_uid, False, serialize(exc))
            return
        self._running[uid] = identity
        self._futures[uid] = fut
        self._of_client.setdefault(identity, {})[client_uid] = uid
        fut.add_done_callback(lambda f: self._done(uid, client_uid, f))

    def _started(self, uid: str, client_uid: str) -> None:
        # The dispatcher's thread: tell the client its task runs (its progress view), via the serving loop.
        with self._done_lock:
            self._done_push.send_multipart([uid.encode(), json.dumps([client_uid, None]).encode(), b""])

    def _done(self, uid: str, client_uid: str, fut: Future) -> None:
        # The dispatcher's thread: hand the outcome to the serving loop, which owns the socket.
        if fut.cancelled():
            ok, blob = False, serialize(CancelledError(f"task {client_uid} was cancelled"))
            with self._done_lock:
                self._done_push.send_multipart([uid.encode(), json.dumps([client_uid, ok]).encode(), blob])
            return
        exc = fut.exception()
        try:
            ok, blob = (True, serialize(fut.result())) if exc is None else (False, serialize(exc))
        except Exception as err:  # an exception that will not pickle
            ok, blob = False, serialize(RuntimeError(f"{type(exc).__name__}: {exc} ({err})"))
        with self._done_lock:
            self._done_push.send_multipart([uid.encode(), json.dumps([client_uid, ok]).encode(), blob])

    def _forward(self, frames: Sequence[bytes]) -> None:
        if not frames[0]:
            return  # stop()'s wake-up
        client_uid, ok = json.loads(frames[1])
        if ok is None:  # started, not finished
            identity = self._running.get(frames[0].decode())
            if identity in self._clients:
                self._send(identity, protocol.STARTED, {"uid": client_uid})
            return
        uid = frames[0].decode()
        identity = self._running.pop(uid, None)
        self._futures.pop(uid, None)
        self._of_client.get(identity, {}).pop(client_uid, None)
        if identity in self._clients:
            self._send_outcome(identity, client_uid, ok, frames[2])

    def _send_outcome(self, identity: bytes, uid: str, ok: bool, blob: bytes) -> None:
        self._send(identity, protocol.OUTCOME, {"uid": uid, "ok": ok}, blob)

    def _send(self, identity: bytes, kind: bytes, header: Optional[Dict[str, Any]] = None,
              blob: Optional[bytes] = None) -> None:
        try:
            self._sock.send_multipart([identity] + protocol.pack(kind, header, blob))
        except zmq.ZMQError as err:  # the client is gone (ROUTER_MANDATORY)
            logger.info("client gone: %s", err)
            if self._clients.pop(identity, None) is not None:
                self._abandon(identity)

    def _drop_silent(self, now: float) -> None:
        for identity, heard in list(self._clients.items()):
            if now - heard > self._threshold:
                del self._clients[identity]
                abandoned = self._abandon(identity)
                logger.warning("client silent for %.0f s: dropped%s", now - heard,
                               f"; {abandoned} of its tasks cancelled" if abandoned else "")

    def _abandon(self, identity: bytes) -> int:
        """Cancel the tasks of a client that is gone: nobody would read their outcomes."""
        uids = self._of_client.pop(identity, {}).values()
        return sum(self._futures[uid].cancel() for uid in uids if uid in self._futures)

    def _farewell(self) -> None:
        for identity in list(self._clients):
            self._send(identity, protocol.STOP)
