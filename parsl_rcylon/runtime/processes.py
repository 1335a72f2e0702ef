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
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List

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


@dataclass
class SessionCpu:
    """CPU a session's processes, and this client, used over one window.

    Parameters
    ----------
    by_component : dict of str to float
        Cores used, by RP component (``rp.agent_scheduling``, ``radical-pilot-bridge``,
        the worker or master script, ...).
    processes : int
        Processes of the session.
    client : float
        Cores this process used.
    """

    by_component: Dict[str, float]
    processes: int
    client: float


def session_cpu(sid: str, seconds: float) -> SessionCpu:
    """Measure the CPU used by session ``sid``'s processes, and this client's, over ``seconds``."""
    procs = session_processes(sid)
    me = psutil.Process()
    before = [_cpu_seconds(p) for p in procs]
    mine = _cpu_seconds(me)
    time.sleep(seconds)
    by_component: Dict[str, float] = {}
    for proc, used in zip(procs, before, strict=True):
        key = component(proc)
        by_component[key] = by_component.get(key, 0.0) + max(0.0, _cpu_seconds(proc) - used) / seconds
    return SessionCpu(by_component, len(procs), (_cpu_seconds(me) - mine) / seconds)


def component(proc: psutil.Process) -> str:
    """The RP component a session process is, from its title or command line."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    # RP renames its components (rp.agent_scheduling.0000); workers and the master show their script.
    words = [os.path.basename(w) for w in cmd[:3] if not w.endswith("python3") and not w.endswith("python")]
    return (words[0] if words else proc.name()).split(".0000")[0]


def _cpu_seconds(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0
