"""A watchdog beside the client: ends the session's local processes when the client dies.

Radical Pilot's proxy service forks a process out of the client for every
session (``radical.pilot.proxy``: an ``mp.Process`` that waits for a
termination event).  A client killed with SIGKILL never sets that event, and
the fork carries neither the session id nor the session's directory, so
neither the pilot's own watchdog (:mod:`.master`) nor a sweep by session id
finds it: it would wait forever.

The executor starts the guard right after the session opens, in a session of
its own (a Ctrl-C on the client's terminal does not reach it), and passes it
the session id, the run's base directory (which holds the session's
directories, see :func:`.processes.session_processes`), and the PIDs of the
client and of those forks, each with its start time so that a reused PID is
never taken for one of ours.  The guard waits for the client to exit
(on a pidfd: no polling); when the client is
gone it ends the forks and every local process of the session, then exits.
On a clean shutdown the executor ends the guard with SIGTERM, which it obeys
at once.

    python -m parsl_rcylon.runtime.guard SID BASE_DIR CLIENT_PID:START [PID:START ...]
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


def watch(sid: str, base_dir: Path, client: str, forks: Sequence[str], poll: float = POLL) -> List[int]:
    """Wait for the client to end; then end ``forks`` and the session's processes; return their PIDs.

    The session's processes are those of :func:`.processes.session_processes`
    for ``sid`` under ``base_dir``.
    """
    _wait_for_exit(client, poll)
    procs = [p for p in (_process(spec) for spec in forks) if p is not None]
    known = {p.pid for p in procs}
    procs += [p for p in session_processes(sid, base_dir) if p.pid not in known]
    ended = end_processes(procs)
    logger.warning("client %s of session %s ended without shutting down: ended %s", client, sid, ended)
    return ended


def _wait_for_exit(spec: str, poll: float) -> None:
    """Return once the process ``spec`` names has ended.

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
        if _process(spec) is None:
            return
        if fd is not None:
            select.select([fd], [], [])
            return
        while _process(spec) is not None:
            time.sleep(poll)
    finally:
        if fd is not None:
            os.close(fd)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s guard %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    watch(argv[0], Path(argv[1]), argv[2], argv[3:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
