"""Parsl run directories that hold Radical Pilot sessions: finding them and cleaning up after them.

What ``parsl-rcylon clean`` does.  :func:`find_runs` lists the run
directories (``runinfo/NNN``) that hold an RP session, with their age, size
and (once :func:`clean` looked) the session's live processes and any other
process of this user that still has a file open there (a workflow still
running).  :func:`clean` lists, and with ``remove=True`` ends those processes
and removes the directories; in runs that stay, and in table directories
named, only what certainly dead table writers left goes.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

logger = logging.getLogger(__name__)

Say = Callable[[str], None]


class RunDirError(ValueError):
    """The path given as a run directory is not a directory."""


def _print(message: str) -> None:
    print(message, flush=True)


@dataclass
class RunDir:
    """One Parsl run directory (``runinfo/NNN``) that holds Radical Pilot sessions.

    Attributes
    ----------
    path : Path
        The directory.
    sessions : list of str
        Radical Pilot session ids found under it.
    age_hours : float
        Hours since its newest file was written (a live run keeps writing its logs).
    nbytes : int
        Bytes of the files under it.
    processes : list of psutil.Process
        This user's live processes of its sessions (filled in by :func:`clean`).
    clients : list of int
        PIDs of this user's other processes with a file open under it.
    """

    path: Path
    sessions: List[str]
    age_hours: float
    nbytes: int
    processes: List[Any] = field(default_factory=list)
    clients: List[int] = field(default_factory=list)


def _newest_mtime(path: Path, limit: int = 20000) -> float:
    """The newest modification time under ``path`` (a live run keeps writing its logs)."""
    newest = path.stat().st_mtime
    for count, (root, dirs, files) in enumerate(os.walk(path)):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                continue
        if count > limit:
            break
    return newest


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def find_runs(run_dir: Path, older_than_hours: float = 0.0) -> List[RunDir]:
    """Run directories under ``run_dir`` that hold Radical Pilot sessions.

    ``run_dir`` is a Parsl run directory (``runinfo``, holding ``000``, ``001``,
    ...) or one of its numbered directories.  Only runs whose newest file is
    older than ``older_than_hours`` are returned.

    Raises
    ------
    RunDirError
        ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory")
    from .runtime.layout import run_sessions

    candidates = [run_dir] + sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.is_symlink())
    now = time.time()
    runs = []
    for cand in candidates:
        sessions = run_sessions(cand)
        if not sessions:
            continue
        age = (now - _newest_mtime(cand)) / 3600.0
        if age < older_than_hours:
            continue
        runs.append(RunDir(cand, sessions, age, _size(cand)))
    return runs


def _clients(path: Path, session_pids: set) -> List[int]:
    """PIDs of this user's other processes with a file open under ``path``: a workflow still running there.

    A live Parsl client writes its log and Radical Pilot's client-side
    profiles under the run directory; its session's own processes are
    excluded, they are what cleaning is for.
    """
    import psutil

    prefix = str(path.resolve()) + os.sep
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid() or proc.pid in session_pids or not _same_user(proc):
            continue
        try:
            if any(f.path.startswith(prefix) for f in proc.open_files()):
                found.append(proc.pid)
        except Exception:  # vanished or not ours to inspect
            continue
    return found


def _same_user(proc: Any) -> bool:
    try:
        return proc.uids().real == os.getuid()
    except Exception:  # vanished, or no permission to look: not ours to end
        return False


def _up_server(path: Path) -> Optional[int]:
    """The pid of the live ``parsl-rcylon up`` server of run directory ``path``, if it has one that is ours."""
    from .runtime.attach.info import ATTACH_DIR, INFO_FILE, AttachError, PilotInfo

    if not (path / ATTACH_DIR / INFO_FILE).exists():
        return None
    try:
        proc = PilotInfo.read(path).process()
    except AttachError as err:  # an untrusted description: named, and nothing it names is signalled
        logger.warning("%s", err)
        return None
    return proc.pid if proc is not None else None


def _describe_process(proc: Any) -> str:
    try:
        # Renamed RP components pad their titles with spaces.
        cmd = " ".join(" ".join(proc.cmdline()).split()) or proc.name()
    except Exception:
        cmd = "?"
    return cmd if len(cmd) <= 160 else cmd[:157] + "..."


def clean(run_dir: Path, older_than_hours: float = 0.0, data_dirs: Optional[Sequence[Path]] = None,
          remove: bool = False, force: bool = False, say: Say = _print) -> List[RunDir]:
    """List, and with ``remove`` end and remove, leftover pilot processes and run directories.

    Parameters
    ----------
    run_dir : Path
        A Parsl run directory (``runinfo``) or one of its numbered directories;
        a path that does not exist has nothing to clean.
    older_than_hours : float
        Only runs whose newest file is older than this.
    data_dirs : sequence of Path, optional
        Table directories to rid of what dead writers left.
    remove : bool
        Do it; without this only say what would go.
    force : bool
        Also clean runs that another process of this user still has files open in.
    say : callable
        Receives each line of the report (default: printed).

    Returns
    -------
    list of RunDir
        The runs cleaned (or that would be, without ``remove``).

    Raises
    ------
    RunDirError
        ``run_dir`` exists but is not a directory.
    """
    from .runtime.processes import end_processes, session_processes

    run_dir = Path(run_dir)
    if not run_dir.exists():
        say(f"{run_dir}: nothing to clean (no such directory)")
        return []
    runs = find_runs(run_dir, older_than_hours)
    if not runs:
        say(f"{run_dir}: no run directory with a Radical Pilot session"
            + (f" older than {older_than_hours:g} h" if older_than_hours else ""))
        clean_tables([], data_dirs, older_than_hours, remove, say)
        return []
    for run in runs:
        for sid in run.sessions:
            run.processes += [p for p in session_processes(sid) if _same_user(p)]
        run.clients = _clients(run.path, {p.pid for p in run.processes})
        say(f"{run.path}: sessions {', '.join(run.sessions)}; last written {run.age_hours:.1f} h ago; "
            f"{run.nbytes / 2**20:.1f} MiB; {len(run.processes)} live process(es)")
        for proc in run.processes:
            say(f"    pid {proc.pid}: {_describe_process(proc)}")
        server = _up_server(run.path)
        if server is not None:
            say(f"    pid {server}: the pilot server of `parsl-rcylon up` (stopped first)")
        if run.clients:
            say(f"    in use by pid {', '.join(str(p) for p in run.clients)} (a workflow still running?): "
                + ("--force given, cleaning it anyway" if force else "skipped; --force cleans it anyway"))
    in_use = [r for r in runs if r.clients and not force]
    clean_tables(in_use, data_dirs, older_than_hours, remove, say)
    runs = [r for r in runs if force or not r.clients]
    total_procs = sum(len(r.processes) for r in runs)
    total = sum(r.nbytes for r in runs)
    if not remove:
        say(f"would end {total_procs} process(es) and remove {len(runs)} run "
            f"director{'y' if len(runs) == 1 else 'ies'}, {total / 2**20:.1f} MiB; run again with --yes to do it")
        return runs
    for run in runs:
        server = _up_server(run.path)
        if server is not None:
            # `up`'s server would otherwise stay, serving a pilot whose directory is gone
            from .runtime.attach.detached import stop_detached

            stop_detached(run.path)
            say(f"stopped the pilot server of `parsl-rcylon up` (pid {server}) of {run.path.name}")
            run.processes = [p for p in run.processes if p.is_running()]
        if run.processes:
            ended = end_processes(run.processes)
            say(f"ended {len(ended)} process(es) of {run.path.name}: {', '.join(str(p) for p in ended)}")
        shutil.rmtree(run.path, ignore_errors=True)
        say(f"removed {run.path}" if not run.path.exists() else f"could not remove all of {run.path}")
    return runs


def clean_tables(runs: Sequence[RunDir], data_dirs: Optional[Sequence[Path]], older_than_hours: float,
                 remove: bool, say: Say = _print) -> None:
    """Leftovers of dead table writers in runs that stay (in use) and in ``data_dirs``.

    Only what a certainly dead writer left goes: temporary files, uncommitted
    table directories, scratch directories (``tableio.cleanup``), and none
    younger than an hour.
    """
    from .tableio.cleanup import remove_stale_scratch, remove_unfinished

    tables = [Path(d) for d in data_dirs or []]
    scratch = []
    for run in runs:
        for executor_dir in (p for p in run.path.iterdir() if p.is_dir() and not p.is_symlink()):
            tables += [executor_dir / "data"] if (executor_dir / "data").is_dir() else []
            scratch += [executor_dir / "scratch"] if (executor_dir / "scratch").is_dir() else []
    if not tables and not scratch:
        return
    if not remove:
        say("would remove what dead table writers left in " + ", ".join(str(d) for d in tables + scratch))
        return
    for path in tables + scratch:
        sweep = remove_unfinished if path in tables else remove_stale_scratch
        report = sweep(str(path), older_than=max(older_than_hours, 1.0) * 3600)
        say(f"{path}: removed {len(report.removed)} leftover(s) of dead writers"
            + (f", kept {len(report.kept)} of writers that may still run" if report.kept else ""))
