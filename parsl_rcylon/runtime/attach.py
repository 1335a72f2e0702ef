"""A pilot that outlives its scripts: ``parsl-rcylon up``, executors that attach to it, ``down``.

A cold start costs seconds of Radical Pilot start-up; a notebook or an
edit-run loop pays them once.  ``parsl-rcylon up`` starts a *pilot server*
(:func:`serve`, in a detached process of its own): an ordinary
:class:`~parsl_rcylon.RadicalCylonExecutor` with its session, pilot, masters
and warm workers, plus a front door for scripts.  An executor made with
``attach=<run dir>`` connects to that door instead of starting a pilot
(:class:`AttachedPilot`, which stands in for the dispatcher) and its tasks
run at once on the warm ranks.

Nothing of a normal start is given up:

* The front door is the run's authenticated channel (:mod:`.channel`): a
  fresh CurveZMQ server key pair whose secret stays in the server's memory,
  a client key pair and token in ``<run dir>/attach/keys/channel.json``
  (0700/0600), so only this user's processes that can read it connect; the
  client pins the server key.  Every message is checked
  (:mod:`.protocol`); a submitted task is validated against the pools like
  any other, and the only frame the client unpickles is an outcome from the
  authenticated server.
* The server is an executor like any other: its guard, heartbeats to ranks
  and masters, worker replacement and walltimes all run.  A killed server is
  cleaned up by its guard; a server whose clients all left ends itself after
  ``idle_timeout`` seconds with no client and no task; ``down`` ends it on
  request (SIGTERM, then the executor's shutdown and final sweep).
* Server and client watch each other: the client sends a heartbeat every
  ``heartbeat_period``; a client silent for ``heartbeat_threshold`` is
  dropped (its running tasks finish, their outcomes go nowhere); a server
  that stops answering, or whose process is gone, fails every waiting
  future with :class:`~..errors.ExecutorBroken`.

Several scripts may attach one after another or at the same time; each
gets its own task ids on the server.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import psutil
import zmq
from parsl.serialize import deserialize, serialize

from ..errors import ExecutorBroken, ExecutorShutdown, PilotLost
from ..permissions import make_dir, write_private
from ..resources import ResourceSpec, WorkerPool
from . import config as rp_config
from . import protocol
from .channel import ChannelError, ClientCredentials, ServerChannel

logger = logging.getLogger(__name__)

#: Directory under the run directory with the front door's key file and ``pilot.json``.
ATTACH_DIR = "attach"
#: What the server publishes about itself once it is ready (no secrets: the keys are in the key file).
INFO_FILE = "pilot.json"
#: Seconds a pilot with no client and no task stays up by default.
IDLE_TIMEOUT = 1800.0
#: Fields of a pool a client needs to validate its tasks before sending them.
_POOL_FIELDS = ("name", "ranks", "workers", "cores_per_rank", "gpus_per_rank", "ranks_per_node", "pilot")


class AttachError(RuntimeError):
    """No pilot server at the given run directory, or it refused or stopped answering."""


@dataclass
class PilotInfo:
    """What ``parsl-rcylon up`` prints and an attaching executor reads (``<run dir>/attach/pilot.json``)."""

    run_dir: str
    address: str
    pid: int
    started: float  # the server process' create time, so a reused PID is never taken for it
    label: str
    session: str
    data_dir: str
    idle_timeout: float
    heartbeat_period: float
    heartbeat_threshold: float
    pools: List[Dict[str, Any]] = field(default_factory=list)
    start_s: float = 0.0

    @classmethod
    def read(cls, run_dir: os.PathLike) -> PilotInfo:
        path = Path(run_dir) / ATTACH_DIR / INFO_FILE
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError:
            raise AttachError(f"no pilot is up at {run_dir} ({path} is missing); start one with "
                              f"`parsl-rcylon up --run-dir {run_dir}`") from None
        except (OSError, ValueError, TypeError) as err:
            raise AttachError(f"{path}: unreadable pilot description ({err})") from err

    def process(self) -> Optional[psutil.Process]:
        """The server's process while it runs (a zombie or a reused PID is not)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except psutil.Error:
            pass
        return None

    def worker_pools(self) -> List[WorkerPool]:
        return [WorkerPool(**p) for p in self.pools]


# -- the server (inside `parsl-rcylon up`'s detached process) ----------------------------


class PilotServer:
    """The front door of a running executor: attached clients' tasks in, outcomes out.

    Parameters
    ----------
    executor : RadicalCylonExecutor
        A started executor (its pilot and workers ready).
    run_dir : path
        The run directory ``up`` was given; ``attach/`` is made under it.
    idle_timeout : float
        Seconds without a client and without a task after which :meth:`serve` returns.
    """

    def __init__(self, executor: Any, run_dir: os.PathLike, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.executor = executor
        self.run_dir = Path(run_dir)
        self.idle_timeout = idle_timeout
        self._period = executor.heartbeat_period
        self._threshold = executor.heartbeat_threshold
        self._ctx = zmq.Context()
        attach_dir = make_dir(self.run_dir / ATTACH_DIR, "private")
        self._channel = ServerChannel(self._ctx, attach_dir, "127.0.0.1" if executor.is_local else "*",
                                      None if executor.is_local else executor.address,
                                      port_range=executor.port_range, encrypted=True,
                                      max_message_bytes=executor.max_message_bytes)
        self._sock = self._channel.socket
        self._done_addr = f"inproc://rcylon-attach-{id(self)}"
        self._done_pull = self._ctx.socket(zmq.PULL)
        self._done_pull.bind(self._done_addr)
        self._done_push = self._ctx.socket(zmq.PUSH)
        self._done_push.connect(self._done_addr)
        self._done_lock = threading.Lock()
        self._clients: Dict[bytes, float] = {}  # identity -> last heard (monotonic)
        self._running: Dict[str, bytes] = {}    # server task uid -> client identity
        self._ids = itertools.count()
        self._stop = threading.Event()
        self.info = PilotInfo(
            run_dir=str(self.run_dir), address=self._channel.address, pid=os.getpid(),
            started=psutil.Process().create_time(), label=executor.label, session=executor.session_id or "",
            data_dir=executor.data_dir, idle_timeout=idle_timeout, heartbeat_period=self._period,
            heartbeat_threshold=self._threshold,
            pools=[{k: getattr(p, k) for k in _POOL_FIELDS} for p in executor.pools],
            start_s=executor.timings.get("start", 0.0))

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
            if header["token"] != self._channel.token:
                logger.warning("refused an attach with a wrong token (pid %s)", header["pid"])
                return
            self._clients[identity] = time.monotonic()
            logger.info("client attached: pid %s on %s (%d attached)", header["pid"], header["host"],
                        len(self._clients))
            self._send(identity, protocol.WELCOME, {"session": self.info.session, "pid": os.getpid()})
            return
        if identity not in self._clients:
            logger.warning("dropped %s from a client that did not attach", protocol.name(kind))
            return
        self._clients[identity] = time.monotonic()
        if kind == protocol.HEARTBEAT:
            self._send(identity, protocol.ALIVE)
        elif kind == protocol.SUBMIT:
            self._submit(identity, dict(header), bytes(message.blob))
        elif kind == protocol.DETACH:
            del self._clients[identity]
            logger.info("client detached (%d attached)", len(self._clients))
        else:
            logger.warning("dropped %s from an attached client", protocol.name(kind))

    def _submit(self, identity: bytes, header: Dict[str, Any], payload: bytes) -> None:
        client_uid = header["uid"]
        uid = f"{self.executor.label}.attached.{next(self._ids):06d}"
        task = {"uid": uid, "name": header["name"], "cylon": header["cylon"], "options": header["options"],
                "walltime": header.get("walltime"), "data_dir": header.get("data_dir") or self.info.data_dir,
                "path": [p for p in header.get("path", []) if isinstance(p, str)], "cwd": header.get("cwd")}
        try:
            fut = self.executor.submit_packed(task, header["resources"], payload)
        except Exception as exc:  # a spec no pool can hold, a stopped executor
            self._send_outcome(identity, client_uid, False, serialize(exc))
            return
        self._running[uid] = identity
        fut.add_done_callback(lambda f: self._done(uid, client_uid, f))

    def _done(self, uid: str, client_uid: str, fut: Future) -> None:
        # The dispatcher's thread: hand the outcome to the serving loop, which owns the socket.
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
        identity = self._running.pop(frames[0].decode(), None)
        client_uid, ok = json.loads(frames[1])
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
            self._clients.pop(identity, None)

    def _drop_silent(self, now: float) -> None:
        for identity, heard in list(self._clients.items()):
            if now - heard > self._threshold:
                logger.warning("client silent for %.0f s: dropped", now - heard)
                del self._clients[identity]

    def _farewell(self) -> None:
        for identity in list(self._clients):
            self._send(identity, protocol.STOP)


def serve(run_dir: os.PathLike, options: Dict[str, Any], idle_timeout: float = IDLE_TIMEOUT) -> int:
    """The body of ``parsl-rcylon up``'s detached process: start, publish, serve, shut down."""
    from ..executor import RadicalCylonExecutor

    run_dir = Path(run_dir)
    executor = RadicalCylonExecutor(**options)
    executor.run_dir = str(run_dir)
    executor.start()  # raises StartupError with the reason; `up` shows the log
    server = PilotServer(executor, run_dir, idle_timeout)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: server.stop())
    try:
        server.publish()
        logger.info("pilot up in %.1f s; serving %s", executor.timings.get("start", 0.0), server.info.address)
        why = server.serve()
        logger.info("pilot server ending: %s", why)
    finally:
        server.close()
        executor.shutdown()
    return 0


# -- the client (an executor made with attach=) -------------------------------------------


class AttachedPilot:
    """Stands in for the dispatcher of an executor attached to a pilot server.

    Use :meth:`connect`.  Offers what the executor asks of a dispatcher:
    :meth:`submit`, :meth:`stats`, :meth:`stop` and ``on_result``.
    """

    def __init__(self, info: PilotInfo, credentials: ClientCredentials) -> None:
        self.info = info
        self.on_result = None
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

    def submit(self, uid: str, spec: ResourceSpec, header: Dict[str, Any], payload: bytes) -> Future:
        """Send one task to the server; the future resolves with its value or exception."""
        fut: Future = Future()
        with self._lock:
            if self._refusal is not None:
                fut.set_exception(self._refusal)
                return fut
            self._futures[uid] = fut
            self._names[uid] = header.get("name", "task")
            fields = {k: header[k] for k in ("name", "cylon", "options", "walltime", "data_dir", "cwd")
                      if k in header}
            self._post(protocol.pack(protocol.SUBMIT, dict(fields, uid=uid, resources=spec.as_dict(),
                                                           path=self._path), payload))
        return fut

    def stats(self) -> Dict[str, Dict[str, int]]:
        with self._lock:
            return {"attached": {"waiting": len(self._futures)}}

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
        if kind == protocol.WELCOME:
            self._welcome.set()
        elif kind == protocol.OUTCOME:
            with self._lock:
                fut = self._futures.pop(header["uid"], None)
                name = self._names.pop(header["uid"], "task")
            if fut is None:
                return True
            try:  # the server was authenticated (CurveZMQ, pinned key) and the header checked
                value = deserialize(bytes(message.blob))
            except Exception as err:
                fut.set_exception(RuntimeError(f"task {header['uid']}: undecodable outcome ({err})"))
                return True
            if header["ok"]:
                if self.on_result is not None:
                    self.on_result(name, value)  # the executor's table ledger, as for its own tasks
                fut.set_result(value)
            else:
                fut.set_exception(value)
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
                fut.set_exception(exc)


# -- up and down (the command line) -----------------------------------------------------


def start_detached(run_dir: os.PathLike, options: Dict[str, Any], idle_timeout: float = IDLE_TIMEOUT,
                   timeout: float = 300.0) -> PilotInfo:
    """Start a pilot server for ``run_dir`` in a process of its own; return once it serves."""
    run_dir = Path(run_dir).resolve()
    make_dir(run_dir, options.get("sharing", "private"))
    try:
        info = PilotInfo.read(run_dir)
        if info.process() is not None:
            raise AttachError(f"a pilot is already up at {run_dir} (pid {info.pid}); "
                              f"`parsl-rcylon down {run_dir}` ends it")
    except AttachError as err:
        if "already up" in str(err):
            raise
    (run_dir / ATTACH_DIR / INFO_FILE).unlink(missing_ok=True)
    log = run_dir / "pilot.log"
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    args = [sys.executable, "-m", "parsl_rcylon.runtime.attach", str(run_dir), json.dumps(options),
            str(idle_timeout)]
    # The server keeps the caller's working directory: workers import the user's modules from there.
    with open(log, "ab") as out:
        os.chmod(log, 0o600)
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AttachError(f"the pilot did not start (exit status {proc.returncode}); "
                              f"{log}:\n{_tail(log)}")
        try:
            info = PilotInfo.read(run_dir)
            if info.pid == proc.pid:
                return info
        except AttachError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise AttachError(f"the pilot did not start within {timeout:.0f} s; {log}:\n{_tail(log)}")


def stop_detached(run_dir: os.PathLike, timeout: float = 60.0) -> Optional[PilotInfo]:
    """End the pilot server of ``run_dir`` and wait for it; None if none was up."""
    try:
        info = PilotInfo.read(run_dir)
    except AttachError:
        return None
    proc = info.process()
    if proc is None:
        return None
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except psutil.TimeoutExpired:
        from .processes import end_session

        proc.kill()
        end_session(info.session, Path(run_dir) / info.label)
    return info


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pilot %(name)s %(levelname)s %(message)s")
    return serve(argv[0], json.loads(argv[1]), float(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
