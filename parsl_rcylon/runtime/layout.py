"""Where Radical Pilot keeps a run's files: session directories, pilot and task sandboxes, their logs.

The executor points RP's session at ``<run_dir>/<label>`` (see
:mod:`.session`), so every session of a Parsl run lies one level below the
run directory, named ``rp.session.<id>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

#: How RP names a session's client-side directory.
SESSION_GLOB = "rp.session.*"


def run_sessions(run: Path) -> List[str]:
    """Ids of the RP sessions held by the executor directories of Parsl run directory ``run``."""
    return sorted({s.name for ex in run.iterdir() if ex.is_dir() and not ex.is_symlink()
                   for s in ex.glob(SESSION_GLOB) if s.is_dir()})


def sandbox_path(thing: Any) -> Optional[Path]:
    """The local sandbox directory of an RP pilot or task, or None when it has none (yet)."""
    try:
        # a task has `sandbox`, a pilot `pilot_sandbox`
        url = getattr(thing, "sandbox", None) or getattr(thing, "pilot_sandbox", None)
    except Exception:
        return None
    if not url:
        return None
    path = str(url).replace("file://localhost", "").replace("file://", "")
    return Path(path)


def pilot_logs(pilot: Any) -> List[Path]:
    """The files that say why an RP pilot failed to start or ended."""
    sandbox = sandbox_path(pilot)
    if sandbox is None:
        return []
    return [sandbox / name for name in ("bootstrap_0.err", "agent_0.err", "bootstrap_0.out")]


def launcher_logs(session_dir: str) -> List[Path]:
    """The logs of the session's pilot launcher: where a batch system's refusal of a pilot job is told."""
    return sorted(Path(session_dir).glob("pmgr_launching.*.log"))


def task_logs(task: Any) -> List[Path]:
    """An RP task's stderr and stdout."""
    sandbox = sandbox_path(task)
    if sandbox is None:
        return []
    return [sandbox / f"{task.uid}.err", sandbox / f"{task.uid}.out"]
