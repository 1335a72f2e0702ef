"""The pilot server's own process: started detached for ``parsl-rcylon up``, ended for ``down``."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import psutil

from ...permissions import make_dir
from .info import ATTACH_DIR, INFO_FILE, AttachError, PilotInfo


def start_detached(run_dir: os.PathLike, command: Sequence[str], sharing: str = "private",
                   timeout: float = 300.0) -> PilotInfo:
    """Run ``command`` (a pilot server for ``run_dir``) in a process of its own; return once it serves.

    The command is the caller's (:mod:`parsl_rcylon.serving` builds it): the
    runtime only starts, watches and ends the process.
    """
    run_dir = Path(run_dir).resolve()
    make_dir(run_dir, sharing)
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
    package_root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    args = list(command)
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


__all__ = ["start_detached", "stop_detached"]
