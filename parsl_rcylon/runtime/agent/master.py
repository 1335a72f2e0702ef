"""The RAPTOR master: worker registry inside the pilot, and the pilot's watchdog.

Radical Pilot leaves the agent, the RAPTOR master, ``mpiexec`` and the worker
ranks running after its client is killed (the agent-side client heartbeat is
dead code in RP 1.103).  This master keeps a connection to the executor; when
the executor falls silent for longer than the heartbeat threshold it ends
every process of its own session (see ``processes``).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

import radical.pilot as rp
import radical.pilot.raptor.master as rp_master
import zmq

from parsl_rcylon.runtime.processes import end_processes, session_processes
from parsl_rcylon.runtime.rp_adjust import settle
from parsl_rcylon.runtime.wire import protocol
from parsl_rcylon.runtime.wire.channel import ClientCredentials


class CylonMaster(rp.raptor.Master):
    """RAPTOR master that also watches the executor's liveness."""

    def __init__(self, cfg=None) -> None:
        with settle(rp_master):  # RAPTOR waits a whole second for its queues to settle
            super().__init__(cfg)
        self._quiet_unused()
        self._credentials = ClientCredentials.from_environment()
        self._address = os.environ[protocol.ENV_ADDRESS]
        self._period = float(os.environ.get(protocol.ENV_HEARTBEAT, "2"))
        self._threshold = float(os.environ.get(protocol.ENV_THRESHOLD, "30"))
        self._watch = threading.Thread(target=self._watchdog, name="rcylon-watchdog", daemon=True)
        self._watch.start()

    def _quiet_unused(self) -> None:
        """Stop RAPTOR's request and result queues and its task service.

        Tasks go from the executor straight to the ranks (``docs/design.md``),
        so nothing ever uses them, and each queue's bridge thread wakes every
        10 ms while idle.  Worker registration and heartbeats run on the
        pilot's control channel and are untouched.
        """
        for name in ("_req_queue", "_res_queue", "_task_service"):
            part = getattr(self, name, None)
            if part is not None:
                part.stop()

    def _watchdog(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, f"{self.uid}/master".encode())
        sock.setsockopt(zmq.LINGER, 0)
        self._credentials.apply(sock)
        sock.connect(self._address)
        sock.send_multipart(protocol.pack(protocol.READY, {
            "token": self._credentials.token, "master": self.uid, "pid": os.getpid(),
            "host": socket.gethostname()}))
        last_heard = time.monotonic()
        while not self._term.is_set():
            if sock.poll(timeout=int(self._period * 1000)):
                try:
                    kind = protocol.unpack(sock.recv_multipart()).kind
                except protocol.ProtocolError as err:
                    self._log.warning("dropped a message from the executor: %s", err)
                    continue
                last_heard = time.monotonic()
                if kind == protocol.STOP:
                    self.stop()
                    return
            elif time.monotonic() - last_heard > self._threshold:
                self._log.error("executor silent for %.0f s: ending the pilot", self._threshold)
                end_pilot_processes(self._log)
                return


def end_pilot_processes(log=None) -> None:
    """Kill every process of this pilot's session, then exit.

    SIGKILL, not SIGTERM: the client is gone, nothing needs a graceful end,
    and RP's components react to SIGTERM by killing their children -- this
    master among them -- before it could finish the sweep.
    """
    sid = os.environ["RP_SESSION_ID"]
    procs = session_processes(sid, os.environ.get("RP_SESSION_SANDBOX"))
    if log:
        log.info("killing %d processes of session %s: %s", len(procs), sid, [p.pid for p in procs])
    end_processes(procs, grace=0.0, first_signal=signal.SIGKILL)
    sys.stdout.flush()
    os._exit(4)
