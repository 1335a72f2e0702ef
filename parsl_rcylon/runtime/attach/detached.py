"""The pilot server's own process: started detached for ``parsl-rcylon up``, ended for ``down``.

``up`` runs only in a run directory it made itself (marked by :data:`UP_MARK`)
that nobody else may write to, and writes its log without following links;
``down`` signals only the process :meth:`~.info.PilotInfo.process` vouches
for (this user's ``parsl_rcylon.serving`` of this run directory, started when
``pilot.json`` says), so a planted directory, log link or forged description
gets nothing written or signalled for another user.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import psutil

from ...permissions import (
    PrivateFileError,
    UnsafeDirectoryError,
    check_owned_dir,
    make_dir,
    open_log,
    open_new,
    read_private,
)
from .info import ATTACH_DIR, INFO_FILE, AttachError, PilotInfo, UntrustedInfoError

logger = logging.getLogger(__name__)

#: File ``up`` makes in a run directory it creates: only such a directory is used again by a later ``up``.
UP_MARK = ".parsl-rcylon-up"


def prepare_run_dir(run_dir: Path, sharing: str = "private") -> Path:
    """Make ``run_dir`` for ``up``, or check that an existing one is ``up``'s own; return it resolved.

    Raises :class:`UntrustedInfoError` naming the directory and why when it
    exists but was not made by ``up`` (no :data:`UP_MARK` of this user in it),
    belongs to someone else, or others may write to it.
    """
    run_dir = Path(run_dir).resolve()
    if not os.path.lexists(run_dir):
        make_dir(run_dir, sharing)
        os.close(open_new(run_dir / UP_MARK))
    try:
        check_owned_dir(run_dir)
        if os.path.lexists(run_dir / ATTACH_DIR):
            check_owned_dir(run_dir / ATTACH_DIR)
        read_private(run_dir / UP_MARK, "mark of `parsl-rcylon up`")
    except FileNotFoundError:
        raise UntrustedInfoError(f"{run_dir} exists and was not made by `parsl-rcylon up` (no {UP_MARK} in it): "
                                 "refusing to run a pilot in a directory prepared by someone else; "
                                 "give --run-dir a new path") from None
    except (UnsafeDirectoryError, PrivateFileError) as err:
        raise UntrustedInfoError(f"refusing to run a pilot in {run_dir}: {err}") from None
    return run_dir


def start_detached(run_dir: os.PathLike, command: Sequence[str], sharing: str = "private",
                   timeout: float = 300.0) -> PilotInfo:
    """Run ``command`` (a pilot server for ``run_dir``) in a process of its own; return once it serves.

    The command is the caller's (:mod:`parsl_rcylon.serving` builds it): the
    runtime only starts, watches and ends the process.
    """
    run_dir = prepare_run_dir(Path(run_dir), sharing)
    info_file = run_dir / ATTACH_DIR / INFO_FILE
    if os.path.lexists(info_file):
        info = PilotInfo.read(run_dir)  # an untrusted description is refused, naming it
        if info.process() is not None:
            raise AttachError(f"a pilot is already up at {run_dir} (pid {info.pid}); "
                              f"`parsl-rcylon down --run-dir {run_dir}` ends it")
        info_file.unlink()
    log = run_dir / "pilot.log"
    package_root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    args = list(command)
    try:
        out = open_log(log)  # never through a link planted at pilot.log
    except PermissionError as err:
        raise UntrustedInfoError(f"refusing to start a pilot in {run_dir}: {err}") from None
    # The server keeps the caller's working directory: workers import the user's modules from there.
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    finally:
        os.close(out)
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
    """End the pilot server of ``run_dir`` and wait for it; ``None`` if none is up.

    Only the process :meth:`PilotInfo.process` vouches for is signalled; a
    ``pilot.json`` that is not this user's own and private raises
    :class:`UntrustedInfoError` naming it.
    """
    if not os.path.lexists(Path(run_dir) / ATTACH_DIR / INFO_FILE):
        return None
    info = PilotInfo.read(run_dir)
    proc = info.process()
    if proc is None:
        logger.info("%s: pid %d is not its pilot server (gone, or another process): nothing signalled",
                    run_dir, info.pid)
        return None
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except psutil.TimeoutExpired:
        from ..processes import end_session

        proc.kill()
        end_session(info.session, Path(run_dir) / info.label)
    return info


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


__all__ = ["UP_MARK", "prepare_run_dir", "start_detached", "stop_detached"]
