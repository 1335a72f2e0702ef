"""Finding and ending the processes of one Radical Pilot session.

RP daemonizes its components (their parent becomes PID 1) and renames them
with ``setproctitle`` (``rp.agent_scheduling.0000``; the title overwrites
both the command line and the environment), so neither a tree walk from the
client nor the environment finds them all.  What each kind carries, measured
on a local pilot (RP 1.103):

- bridges and components (``rp.*_pubsub``, ``rp.*_queue``, ``rp.agent.0``,
  ``rp.agent_executing.0000``, ...): their title, and a working directory in
  the client session directory ``<base>/<sid>`` or the pilot sandbox
  ``<base>/sandbox/radical.pilot.sandbox/<sid>/pilot.0000``; before they
  rename themselves, the session id as an argument of
  ``radical-pilot-bridge``/``radical-pilot-component``;
- the pilot's ``bootstrap_0.sh``: ``-s <sid>`` among its arguments;
- task launch scripts (``<task>.launch.sh``): a shell running a script in
  the pilot sandbox, from there, child of ``rp.agent_executing``;
- ``mpiexec``, ``hydra_pmi_proxy``, ``<task>.exec.sh``, the RAPTOR master
  and the worker ranks: ``RP_SESSION_ID=<sid>`` in their environment;
- PSI/J's launcher and the bootstrap's ``sleep``: only their parent.

A login node is shared, and a user's own ``tail -f <session>/agent_0.log``
or a shell in the pilot sandbox is not the run's: a process belongs to the
session only when it is this user's (real uid) and

1. its environment has ``RP_SESSION_ID`` equal to the session id, or
2. one of its arguments *is* the session id and it is one of RP's programs
   (``radical-pilot-*`` or a ``bootstrap_*.sh``): a user's ``du -s <sid>``,
   ``tar cf x.tar <sid>`` or ``watch ls <sid>`` is not the run's, or
3. it works in a directory of the session and is recognisably RP's: its
   title starts with ``rp.``, or it is a shell running a script that lies in
   a directory of the session, or
4. its parent belongs to the session (what RP's processes start is the run's).

A directory of the session is one with a path component equal to the
session id, inside the run's base directory when the caller knows it.
Substrings never count: a path that merely contains the id is not a match.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import PurePath
from typing import Dict, Iterable, List, Optional, Sequence, Set

import psutil

#: Programs that run a script named by their first operand: RP's launch, exec and bootstrap scripts.
SHELLS = frozenset({"bash", "sh", "dash", "zsh", "ksh"})


def session_processes(sid: str, base_dir: Optional[os.PathLike] = None, *, uid: Optional[int] = None,
                      exclude: Iterable[int] = ()) -> List[psutil.Process]:
    """Live processes of session ``sid`` (never this process, nor any in ``exclude``).

    Parameters
    ----------
    sid : str
        The session id, ``rp.session.<uuid>``.
    base_dir : path, optional
        The run's directory that holds the session's directories (the
        executor's ``base_dir``, or the session sandbox inside the pilot);
        a process's working directory counts only inside it.  Without it,
        any directory with a path component equal to ``sid`` counts.
    uid : int, optional
        Whose processes may match (real uid); this user's by default.
    exclude : iterable of int
        PIDs never to return.
    """
    owner = os.getuid() if uid is None else uid
    scope = _Session(sid, base_dir)
    own: Dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "ppid", "uids", "cmdline"]):
        uids = proc.info.get("uids")
        if uids is not None and uids.real == owner:
            own[proc.pid] = proc
    direct = {pid for pid, proc in own.items() if scope.claims(proc)}
    skip = {os.getpid(), *exclude}
    return [proc for pid, proc in own.items() if pid not in skip and _descends(pid, own, direct)]


def _descends(pid: int, own: Dict[int, psutil.Process], direct: Set[int]) -> bool:
    """Whether ``pid`` or one of its ancestors (through this user's processes) is in ``direct``."""
    seen: Set[int] = set()
    while pid in own and pid not in seen:
        if pid in direct:
            return True
        seen.add(pid)
        pid = own[pid].info.get("ppid") or 0
    return False


class _Session:
    """The rules 1-3 of the module docstring for one session id and base directory."""

    def __init__(self, sid: str, base_dir: Optional[os.PathLike]) -> None:
        self.sid = sid
        self.base = os.path.realpath(base_dir) if base_dir is not None else None

    def claims(self, proc: psutil.Process) -> bool:
        argv: Sequence[str] = proc.info.get("cmdline") or ()
        if self.sid in argv and _rp_program(argv):
            return True
        try:
            cwd = proc.cwd()
            if self.is_session_dir(cwd) and self._looks_like_rp(argv, cwd):
                return True
            return proc.environ().get("RP_SESSION_ID") == self.sid
        except (psutil.Error, OSError, ValueError):  # ended, or a zombie: nothing left to end
            return False

    def is_session_dir(self, path: str) -> bool:
        """Whether ``path`` (absolute, canonical) is a directory of this session."""
        if self.base is not None and os.path.commonpath([self.base, path]) != self.base:
            return False
        return self.sid in PurePath(path).parts

    def _looks_like_rp(self, argv: Sequence[str], cwd: str) -> bool:
        if not argv:
            return False
        if argv[0].startswith("rp."):  # RP's setproctitle names
            return True
        script = _shell_script(argv)
        if script is None:
            return False
        path = os.path.realpath(os.path.join(cwd, script))
        return os.path.isfile(path) and self.is_session_dir(path)


def _rp_program(argv: Sequence[str]) -> bool:
    """Whether ``argv`` runs one of RP's programs that take the session id as an argument.

    They run as ``python .../radical-pilot-bridge <sid> ...`` (an entry point
    through its interpreter) or ``/bin/bash -l .../bootstrap_0.sh ... -s <sid>``.
    """
    for arg in argv[:3]:
        name = os.path.basename(arg)
        if name.startswith("radical-pilot-") or (name.startswith("bootstrap_") and name.endswith(".sh")):
            return True
    return False


def _shell_script(argv: Sequence[str]) -> Optional[str]:
    """The script a shell runs (``bash -l x.sh ARGS``), or None: not a shell, or ``-c``, or interactive."""
    if os.path.basename(argv[0]) not in SHELLS:
        return None
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-o", "+o", "-O", "+O"):
            next(args, None)  # takes an option name
        elif arg.startswith("--"):
            continue
        elif arg[:1] in ("-", "+") and len(arg) > 1:
            if "c" in arg[1:]:  # runs a command string, not a script
                return None
        else:
            return arg
    return None


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


def end_session(sid: str, base_dir: Optional[os.PathLike] = None, grace: float = 2.0) -> List[int]:
    """End every process of session ``sid`` (see :func:`session_processes`) except this one."""
    return end_processes(session_processes(sid, base_dir), grace=grace)


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


def _ephemeral_low() -> int:
    """Lowest port the kernel hands out to sockets bound to port 0 (MPI's ranks do)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        return int(f.read().split()[0])


def listening_sockets(procs: Iterable[psutil.Process]) -> Dict[str, list]:
    """The session's listening sockets: RP's (ZeroMQ, bound at ports from 10000 up by radical.utils)
    and MPI's (hydra's PMI port, held by ``mpiexec`` and inherited by the ranks, and the ranks' own
    sockets on ephemeral ports), each split into loopback and beyond."""
    mpi_ports = set()
    found = []
    for proc in procs:
        try:
            name = proc.name()
            conns = [c for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
        if name in ("mpiexec", "mpiexec.hydra", "hydra_pmi_proxy"):
            mpi_ports.update(c.laddr.port for c in conns)
        found += [(proc.pid, name, c.laddr) for c in conns]
    low = _ephemeral_low()
    out: dict = {"rp": [], "rp_beyond_loopback": [], "mpi": [], "mpi_beyond_loopback": []}
    for pid, name, addr in found:
        kind = "mpi" if addr.port in mpi_ports or addr.port >= low else "rp"
        out[kind].append((pid, name, addr))
        if addr.ip not in ("127.0.0.1", "::1"):
            out[f"{kind}_beyond_loopback"].append((pid, name, addr))
    return out
