"""Process hygiene of the client: RP's forks of it, the guard beside it, the final sweep, the exit hook.

Radical Pilot leaves work for whoever started it: a proxy fork of the client
per session that outlives a killed client (see :mod:`.guard`), non-daemon
threads that make a script hang at exit unless the executor shuts down
first, and processes that survive a clean close.  :class:`ClientHygiene`
collects what the executor does about each of them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import psutil

from ...permissions import open_log
from ..guard import process_spec
from ..processes import end_processes, end_session

logger = logging.getLogger(__name__)


class ClientHygiene:
    """Keeps track of the client processes a session adds, and ends them.

    Parameters
    ----------
    label : str
        The executor's label, for log messages.
    base_dir : Path
        The executor's run directory: the guard's log and working directory,
        and where the session's directories lie (only processes there count
        as the session's, see :func:`.processes.session_processes`).
    timings : dict
        Where ``shutdown_sweep`` is recorded.
    """

    def __init__(self, label: str, base_dir: Path, timings: Dict[str, float]) -> None:
        self.label = label
        self.base_dir = base_dir
        self.timings = timings
        self._forks: List[psutil.Process] = []
        self._guard: Optional[subprocess.Popen] = None
        self._owner_pid = os.getpid()
        self._closed = False

    def register_atexit(self, shutdown: Callable[[], None]) -> None:
        """Run ``shutdown`` when the interpreter exits, in this process only.

        RP leaves non-daemon threads running, and the interpreter joins those
        before it runs atexit handlers (Parsl's cleanup among them): a script
        that ends without shutting Parsl down would hang forever.  This hook
        runs before that join, as concurrent.futures' own does.
        """
        self._owner_pid = os.getpid()
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(self._at_exit, shutdown)

    def _at_exit(self, shutdown: Callable[[], None]) -> None:
        # RP forks helper processes; their exit runs this hook too, and a
        # forked copy must never touch the parent's sockets or pilot.
        if os.getpid() == self._owner_pid and not self._closed:
            logger.info("%s: interpreter exiting; shutting the executor down", self.label)
            shutdown()

    @contextlib.contextmanager
    def watch_forks(self) -> Iterator[None]:
        """Record the forks of this process that the body makes (RP's session opens its proxy fork).

        Each fork tells the guard its own ``PID:START`` on the guard's stdin as its first act, so a client
        killed at any moment of the body leaves no fork unknown to the guard.  The pipe is closed when the
        body ends: the guard reads its end-of-file as "no more forks".
        """
        before = {c.pid for c in psutil.Process().children()}
        _ForkReport.start(self._guard.stdin.fileno() if self._guard is not None and self._guard.stdin else None)
        try:
            yield
        finally:
            _ForkReport.stop()
            if self._guard is not None and self._guard.stdin is not None:
                self._guard.stdin.close()
            me = psutil.Process()
            for child in me.children():
                try:
                    if child.pid not in before and child.cmdline() == me.cmdline():
                        self._forks.append(child)
                except psutil.Error:
                    continue

    def start_guard(self, sid: str) -> None:
        """Start :mod:`.guard` for session ``sid`` (before it opens), watching this process and its forks."""
        package_root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
        args = [sys.executable, "-m", "parsl_rcylon.runtime.guard", sid, str(self.base_dir),
                process_spec(psutil.Process())]
        with os.fdopen(open_log(self.base_dir / "guard.log"), "ab") as log:
            self._guard = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=str(self.base_dir), env=env, start_new_session=True)

    def close(self, sid: Optional[str]) -> List[Any]:
        """End the guard, then the recorded forks and every leftover process of session ``sid``."""
        self._closed = True
        self._stop_guard()
        t = time.monotonic()
        ended = end_processes([p for p in self._forks if p.is_running()], grace=1.0)
        if sid:
            ended += end_session(sid, self.base_dir)
        self.timings["shutdown_sweep"] = time.monotonic() - t
        if ended:
            logger.warning("%s: ended %d leftover process(es) of session %s: %s", self.label, len(ended), sid, ended)
        return ended

    def _stop_guard(self) -> None:
        if self._guard is None:
            return
        if self._guard.stdin is not None:
            self._guard.stdin.close()
        self._guard.terminate()
        try:
            self._guard.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._guard.kill()
            self._guard.wait()


class _ForkReport:
    """While set, each direct fork of this process writes its ``PID:START`` line to the guard's stdin.

    ``os.register_at_fork`` hooks cannot be removed, so one hook is registered once and does nothing outside
    :meth:`ClientHygiene.watch_forks`.  ``subprocess`` children do not run it (they exec without Python's fork
    hooks) and do not inherit the pipe (it is close-on-exec).
    """

    fd: Optional[int] = None
    _registered = False

    @classmethod
    def start(cls, fd: Optional[int]) -> None:
        if not cls._registered:
            os.register_at_fork(after_in_child=cls._in_child)
            cls._registered = True
        cls.fd = fd

    @classmethod
    def stop(cls) -> None:
        cls.fd = None

    @classmethod
    def _in_child(cls) -> None:
        # Not os.getppid(): a client killed at once leaves its fork with another parent before this runs.
        # The fork's own forks find ``fd`` unset: only the client's forks report.
        fd, cls.fd = cls.fd, None
        if fd is None:
            return
        try:
            # One short write to a pipe is atomic: lines of forks made at once do not interleave.
            os.write(fd, (process_spec(psutil.Process()) + "\n").encode())
            # The fork keeps no copy of the pipe (the guard's end-of-file comes when the client closes its
            # own), but its inherited file object keeps a valid descriptor: /dev/null in the pipe's place.
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        except OSError:
            pass
