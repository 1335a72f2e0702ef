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
        """Record the forks of this process that the body makes (RP's session opens its proxy fork)."""
        before = {c.pid for c in psutil.Process().children()}
        yield
        me = psutil.Process()
        for child in me.children():
            try:
                if child.pid not in before and child.cmdline() == me.cmdline():
                    self._forks.append(child)
            except psutil.Error:
                continue

    def start_guard(self, sid: str) -> None:
        """Start :mod:`.guard` for session ``sid``, watching this process and its recorded forks."""
        package_root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
        args = [sys.executable, "-m", "parsl_rcylon.runtime.guard", sid, str(self.base_dir),
                process_spec(psutil.Process()), *(process_spec(p) for p in self._forks)]
        with os.fdopen(open_log(self.base_dir / "guard.log"), "ab") as log:
            self._guard = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=str(self.base_dir), env=env, start_new_session=True)

    def close(self, sid: Optional[str]) -> List[Any]:
        """End the guard, then the recorded forks and every leftover process of session ``sid``."""
        self._closed = True
        self._stop_guard()
        if not sid:
            return []
        t = time.monotonic()
        ended = end_processes([p for p in self._forks if p.is_running()], grace=1.0)
        ended += end_session(sid, self.base_dir)
        self.timings["shutdown_sweep"] = time.monotonic() - t
        if ended:
            logger.warning("%s: ended %d leftover process(es) of session %s: %s", self.label, len(ended), sid, ended)
        return ended

    def _stop_guard(self) -> None:
        if self._guard is None:
            return
        self._guard.terminate()
        try:
            self._guard.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._guard.kill()
            self._guard.wait()
