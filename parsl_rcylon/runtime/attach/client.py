"""The client of an executor made with ``attach=``: its tasks go to a pilot server instead of a dispatcher."""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import zmq
from parsl.serialize import deserialize

from ...errors import ExecutorBroken, ExecutorShutdown, PilotLost
from ..client import config as rp_config
from ..client.backend import ResultCallback, StartCallback, reject, resolve
from ..wire import protocol
from ..wire.channel import ChannelError, ClientCredentials
from ..wire.task import Task
from .info import ATTACH_DIR, AttachError, PilotInfo

logger = logging.getLogger(__name__)


class AttachedPilot:
    """Where the tasks of an executor attached to a pilot server go (a :class:`~..client.backend.TaskBackend`).

    Use :meth:`connect`.  ``on_start`` is called when the server says a task
    reached its ranks, ``on_result`` when one succeeded; :meth:`stats` is the
    server's per-pool figures as of its last answer to a heartbeat.
    """

    def __init__(self, info: PilotInfo, credentials: ClientCredentials) -> None:
        self.info = info
        self.on_result: Optional[ResultCallback] = None
        self.on_start: Optional[StartCallback] = None
        self._pools: Dict[str, Dict[str, int]] = {}
        self._credentials = credentials
        self._ctx = zmq.Context()
        self._futures: Dict[str, Future] = {}
        self._names: Dict[str, str] = {}  # uid -> app name, for on_result
        self._lock = threading.Lock()
        self._outbox: List[List[Any]] = []
        self._wake_addr = f"inproc://rcylon-attached-{id(self)}"
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.bind(self._wake_addr)
        self._wake_push = self._ctx.socket(zmq.PUSH)
        self._wake_push.connect(self._wake_addr)
        self._refusal: Optional[BaseException] = None
        self._stopping = False
        self._welcome = threading.Event()
        self._path = rp_config.user_import_path()
        self._thread = threading.Thread(target=self._loop, name="rcylon-attached", daemon=True)

    @classmethod
    def connect(cls, run_dir: os.PathLike, timeout: float = 10.0) -> AttachedPilot:
        """Attach to the pilot server of ``run_dir``; raise :class:`AttachError` if none answers."""
        info = PilotInfo.read(run_dir)
        if info.process() is None:
            raise AttachError(f"the pilot server of {run_dir} (pid {info.pid}) is not running; "
                              f"start one with `parsl-rcylon up --run-dir {run_dir}`")
        try:
            credentials = ClientCredentials.load(str(Path(run_dir) / ATTACH_DIR / "keys" / "channel.json"),
                                                 encrypted=True)  # the pilot server always encrypts
        except ChannelError as err:
            raise AttachError(str(err)) from err
        client = cls(info, credentials)
        client._thread.start()
        if not client._welcome.wait(timeout):
            client.stop()
            raise AttachError(f"the pilot server of {run_dir} did not answer within {timeout:.0f} s")
        return client

    @property
    def session_id(self) -> str:
        return self.info.session

    def submit(self, task: Task, payload: bytes) -> Future:
        """Send one task to the server; the future resolves with its value or exception."""
        fut: Future = Future()
        with self._lock:
            if self._refusal is not None:
                fut.set_exception(self._refusal)
                return fut
            self._futures[task.uid] = fut
            self._names[task.uid] = task.name
            self._post(protocol.pack(protocol.SUBMIT, dict(task.submit_header(), path=self._path), payload))
        return fut

    def cancel(self, uid: str) -> None:
        """Withdraw task ``uid`` at the server (its future was cancelled): out of its queue, or its ranks stopped."""
        with self._lock:
            if self._futures.pop(uid, None) is None or self._stopping:
                return
            self._names.pop(uid, None)
            self._post(protocol.pack(protocol.CANCEL, {"uid": uid, "reason": "cancelled by the attached client"}))

    def stats(self) -> Dict[str, Dict[str, int]]:
        """The server's pools: ranks, busy, idle, queued, running (every client's tasks)."""
        with self._lock:
            return {pool: dict(figures) for pool, figures in self._pools.items()}

    def stop(self, reason: str = "executor shut down") -> None:
        """Detach: the pilot stays up; futures still waiting fail with ``ExecutorShutdown``."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._post(protocol.pack(protocol.DETACH))
        self._thread.join(timeout=5)
        self._fail_all(ExecutorShutdown(None, reason))
        self._wake_push.close(linger=0)
        self._wake_pull.close(linger=0)
        self._ctx.term()

    # -- the I/O thread --------------------------------------------------------------

    def _post(self, frames: List[Any]) -> None:
        self._outbox.append(frames)
        self._wake_push.send(b"")

    def _loop(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        self._credentials.apply(sock)
        sock.connect(self.info.address)
        sock.send_multipart(protocol.pack(protocol.ATTACH, {
            "token": self._credentials.token, "pid": os.getpid(), "host": os.uname().nodename}))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_pull, zmq.POLLIN)
        period, threshold = self.info.heartbeat_period, self.info.heartbeat_threshold
        heard = sent = time.monotonic()
        try:
            while True:
                events = dict(poller.poll(timeout=int(period * 1000)))
                if self._wake_pull in events:
                    while self._wake_pull.poll(0):
                        self._wake_pull.recv()
                    with self._lock:
                        outbox, self._outbox = self._outbox, []
                    for frames in outbox:
                        sock.send_multipart(frames, copy=False)
                    if self._stopping:
                        return
                if sock in events:
                    while sock.poll(0):
                        heard = time.monotonic()
                        if not self._on_message(sock.recv_multipart(copy=False)):
                            return
                now = time.monotonic()
                if now - sent >= period:
                    sock.send_multipart(protocol.pack(protocol.HEARTBEAT))
                    sent = now
                    # A server on this host that has exited is noticed at once, not after the threshold.
                    if now - heard > threshold or self.info.process() is None:
                        self._break(f"the pilot server at {self.info.run_dir} (pid {self.info.pid}) "
                                    f"stopped answering")
                        return
        finally:
            sock.close(linger=500 if self._stopping else 0)

    def _on_message(self, frames: Sequence[Any]) -> bool:
        try:
            message = protocol.unpack(frames)
        except protocol.ProtocolError as err:
            logger.warning("dropped a message from the pilot server: %s", err)
            return True
        kind, header = message.kind, message.header
        if "pools" in header:  # WELCOME and ALIVE
            with self._lock:
                self._pools = header["pools"]
        if kind == protocol.WELCOME:
            self._welcome.set()
        elif kind == protocol.STARTED:
            if self.on_start is not None:
                self.on_start(header["uid"])
        elif kind == protocol.OUTCOME:
            with self._lock:
                fut = self._futures.pop(header["uid"], None)
                name = self._names.pop(header["uid"], "task")
            if fut is None:
                return True
            try:  # the server was authenticated (CurveZMQ, pinned key) and the header checked
                value = deserialize(bytes(message.blob))
            except Exception as err:
                reject(fut, RuntimeError(f"task {header['uid']}: undecodable outcome ({err})"))
                return True
            if header["ok"]:
                if self.on_result is not None:
                    self.on_result(name, value)  # the executor's table ledger, as for its own tasks
                resolve(fut, value)
            else:
                reject(fut, value)
        elif kind == protocol.STOP:
            self._break(f"the pilot server at {self.info.run_dir} shut down")
            return False
        return True

    def _break(self, reason: str) -> None:
        with self._lock:
            self._refusal = ExecutorBroken(None, reason)
            self._refusal.__cause__ = PilotLost(None, reason)
        self._fail_all(self._refusal)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            futures, self._futures = self._futures, {}
            self._names.clear()
            if self._refusal is None:
                self._refusal = exc
        for fut in futures.values():
            if not fut.done():
                reject(fut, exc)
