"""The RAPTOR master: worker registry inside the pilot, and the pilot's watchdog.

Radical Pilot leaves the agent, the RAPTOR master, ``mpiexec`` and the worker
ranks running after its client is killed (the agent-side client heartbeat is
dead code in RP 1.103).  This master keeps a connection to the executor; when
the executor falls silent for longer than the heartbeat threshold it ends
every process of its own pilot, found by walking up to the pilot's
``bootstrap_0.sh`` and collecting its descendants.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from typing import List, Optional

import psutil
import radical.pilot as rp
import zmq

from parsl_rcylon.runtime import protocol


class CylonMaster(rp.raptor.Master):
    """RAPTOR master that also watches the executor's liveness."""

    def __init__(self, cfg=None) -> None:
        super().__init__(cfg)
        self._address = os.environ[protocol.ENV_ADDRESS]
        self._period = float(os.environ.get(protocol.ENV_HEARTBEAT, "2"))
        self._threshold = float(os.environ.get(protocol.ENV_THRESHOLD, "30"))
        self._watch = threading.Thread(target=self._watchdog, name="rcylon-watchdog", daemon=True)
        self._watch.start()

    def _watchdog(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, f"{self.uid}/master".encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._address)
        sock.send_multipart(protocol.pack(protocol.READY, {
            "master": self.uid, "pid": os.getpid(), "host": socket.gethostname()}))
        last_heard = time.monotonic()
        while not self._term.is_set():
            if sock.poll(timeout=int(self._period * 1000)):
                kind, _ = protocol.unpack(sock.recv_multipart())
                last_heard = time.monotonic()
                if kind == protocol.STOP:
                    self.stop()
                    return
            elif time.monotonic() - last_heard > self._threshold:
                self._log.error("executor silent for %.0f s: ending the pilot", self._threshold)
                end_pilot_processes(self._log)
                return


def pilot_root(pid: Optional[int] = None) -> Optional[psutil.Process]:
    """The pilot's ``bootstrap_0.sh`` process above ``pid``, if it still runs."""
    try:
        proc = psutil.Process(pid or os.getpid())
        for parent in proc.parents():
            if any("bootstrap_0.sh" in part for part in parent.cmdline()):
                return parent
    except psutil.Error:
        return None
    return None


def end_pilot_processes(log=None, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, every process of this pilot, this one last."""
    root = pilot_root()
    me = psutil.Process()
    victims: List[psutil.Process] = []
    if root is not None:
        try:
            victims = [root] + root.children(recursive=True)
        except psutil.Error:
            victims = [root]
    victims = [p for p in victims if p.pid != me.pid]
    if log:
        log.info("ending pilot processes: %s", [p.pid for p in victims])
    for proc in victims:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(victims, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    sys.stdout.flush()
    os._exit(4)
