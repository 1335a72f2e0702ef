"""Finding and ending the processes of one Radical Pilot session.

RP daemonizes its components (their parent becomes PID 1) and names them
with ``setproctitle``, so a process tree walk misses most of them.  Every
process RP starts for a session works in a directory named after the
session id (the client session dir or the pilot sandbox), carries the id on
its command line, or has ``RP_SESSION_ID`` in its environment; those are the
run's own ids, and matching them never touches anybody else's processes.
"""
from __future__ import annotations

import os
import signal
from typing import Iterable, List

import psutil


def session_processes(sid: str, exclude: Iterable[int] = ()) -> List[psutil.Process]:
    """Live processes of session ``sid`` (never this process)."""
    skip = {os.getpid(), *exclude}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid in skip:
            continue
        try:
            if _belongs(proc, sid):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _belongs(proc: psutil.Process, sid: str) -> bool:
    if any(sid in part for part in (proc.info.get("cmdline") or ())):
        return True
    if sid in proc.cwd():
        return True
    return proc.environ().get("RP_SESSION_ID") == sid


def end_processes(procs: List[psutil.Process], grace: float = 2.0,
                  first_signal: int = signal.SIGTERM) -> List[int]:
    """Send ``first_signal``, then SIGKILL after ``grace`` seconds; return the PIDs signalled."""
    for proc in procs:
        try:
            proc.send_signal(first_signal)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return [p.pid for p in procs]


def end_session(sid: str, grace: float = 2.0) -> List[int]:
    """End every process of session ``sid`` except this one."""
    return end_processes(session_processes(sid), grace=grace)
