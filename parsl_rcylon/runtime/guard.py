"""A watchdog beside the client: ends the session's local processes when the client dies.

Radical Pilot's proxy service forks a process out of the client for every
session (``radical.pilot.proxy``: an ``mp.Process`` that waits for a
termination event).  A client killed with SIGKILL never sets that event, and
the fork carries neither the session id nor the session's directory, so
neither the pilot's own watchdog (:mod:`.master`) nor a sweep by session id
finds it: it would wait forever.

The executor starts the guard just before the session opens, in a session of
its own (a Ctrl-C on the client's terminal does not reach it), and passes it
the session id (chosen before RP opens it), the run's base directory (which
holds the session's directories, see :func:`.processes.session_processes`)
and the client's PID with its start time, so that a reused PID is never taken
for the client.  While the session opens, each fork of the client writes its
own ``PID:START`` to the guard's stdin as its first act (the client's
``hygiene`` module), so a client killed at any moment leaves no fork unknown.
The guard waits for the client to exit (on a pidfd: no polling); when the
client is gone it ends the forks and every local process of the session,
then exits.  On a clean shutdown the executor ends the guard with SIGTERM,
which it obeys at once.

    python -m parsl_rcylon.runtime.guard SID BASE_DIR CLIENT_PID:START < FORK_REPORTS
"""
from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import psutil

from .processes import end_processes, session_processes

logger = logging.getLogger(__name__)

#: Seconds between checks of the client.
POLL = 0.5

#: Seconds to wait, once the client has ended, for forks it made in its last moment to report themselves.
REPORT_GRACE = 1.0


def process_spec(proc: psutil.Process) -> str:
    """``PID:START``, how the guard is told about a process."""
    return f"{proc.pid}:{proc.create_time():.3f}"


def _process(spec: str) -> Optional[psutil.Process]:
    """The live process ``spec`` names, or None when it ended (a zombie too), or its PID now belongs to another."""
    pid, start = spec.split(":")
    try:
        proc = psutil.Process(int(pid))
        if abs(proc.create_time() - float(start)) >= 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def watch(sid: str, base_dir: Path, client: str, reports: int = 0, poll: float = POLL) -> List[int]:
    """Wait for the client to end; then end its forks and the session's processes; return their PIDs.

    The forks are those reported on the descriptor ``reports`` (a pipe the client writes a ``PID:START``
    line to for each fork, until it closes it).  The session's processes are those of
    :func:`.processes.session_processes` for ``sid`` under ``base_dir``.
    """
    reported = _Reports(reports)
    _wait_for_exit(client, poll, reported)
    reported.drain(timeout=REPORT_GRACE)
    procs = [p for p in (_process(spec) for spec in reported.specs) if p is not None]
    known = {p.pid for p in procs}
    procs += [p for p in session_processes(sid, base_dir) if p.pid not in known]
    ended = end_processes(procs)
    logger.warning("client %s of session %s ended without shutting down: ended %s", client, sid, ended)
    return ended


class _Reports:
    """The ``PID:START`` lines read so far from the client's fork reports (``fd`` is None after end-of-file)."""

    def __init__(self, fd: int) -> None:
        self.fd: Optional[int] = fd
        self.specs: List[str] = []
        self._partial = b""

    def read(self) -> None:
        """Read what is there (the descriptor was ready); at end-of-file stop reading."""
        data = os.read(self.fd, 65536)
        if not data:
            os.close(self.fd)
            self.fd = None
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        self.specs += [line.decode() for line in lines if line.strip()]

    def drain(self, timeout: float) -> None:
        """Read until end-of-file or ``timeout`` seconds: a fork of a client killed just after forking still
        reports itself."""
        deadline = time.monotonic() + timeout
        while self.fd is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return
            self.read()


def _wait_for_exit(spec: str, poll: float, reports: _Reports) -> None:
    """Return once the process ``spec`` names has ended, reading ``reports`` meanwhile.

    Blocks on a pidfd where Linux offers one (no CPU while the client
    lives); polls every ``poll`` seconds elsewhere.
    """
    pid = int(spec.split(":")[0])
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        # Checked after the pidfd is open, so the PID cannot be reused in between.
        while _process(spec) is not None:
            waits = [w for w in (fd, reports.fd) if w is not None]
            if not waits:
                time.sleep(poll)
                continue
            ready = select.select(waits, [], [], None if fd is not None else poll)[0]
            if reports.fd is not None and reports.fd in ready:
                reports.read()
            if fd is not None and fd in ready:
                return
    finally:
        if fd is not None:
            os.close(fd)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s guard %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # The client writes each of its forks to our stdin while its session opens (its hygiene module).
    watch(argv[0], Path(argv[1]), argv[2], reports=sys.stdin.fileno())
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
