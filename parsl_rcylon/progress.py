"""Progress of a workflow on this executor: a live view, periodic lines, and a summary at the end.

What it shows, per app: tasks queued, running, done and failed, the time
its tasks ran, and the rows and bytes of the tables they handed on; per
pool: ranks busy and idle.  On a terminal it is a live ``rich`` view; when
output goes elsewhere (a file, CI, a batch job's log) it prints one plain
line every ``interval`` seconds.  At the end it prints a summary per app.

Turn it on with the executor's ``progress=True``, or around any part of a
script with :func:`show_progress`::

    with show_progress(executor):
        run_pipeline()

The executor counts its tasks on a :class:`TaskBoard` as they are
submitted, start on their ranks and end; the view reads the board, the
executor's pool status and its table ledger.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Optional, Sequence

logger = logging.getLogger(__name__)

#: Task states a board counts, in the order views show them.
STATES = ("queued", "running", "done", "failed")


@dataclass
class AppTally:
    """One app's tasks so far.

    Parameters
    ----------
    queued, running, done, failed : int
        Tasks in each state now (``done`` and ``failed`` only grow).
    seconds : float
        Time the app's ended tasks ran on their ranks, added up.
    """

    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return self.queued + self.running + self.done + self.failed


@dataclass
class _Entry:
    app: str
    state: str = "queued"
    started: Optional[float] = None


@dataclass
class TaskBoard:
    """Where an executor's tasks are: submitted, started on ranks, ended (thread-safe)."""

    _tasks: Dict[str, _Entry] = field(default_factory=dict)
    _tallies: Dict[str, AppTally] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def submitted(self, uid: str, app: str, future: Future) -> None:
        """Task ``uid`` of ``app`` waits for ranks; ``future`` says when it ends."""
        with self._lock:
            self._tasks[uid] = _Entry(app)
            self._tallies.setdefault(app, AppTally()).queued += 1
        future.add_done_callback(lambda fut: self._ended(uid, fut))

    def started(self, uid: str) -> None:
        """Task ``uid`` started on its ranks."""
        with self._lock:
            entry = self._tasks.get(uid)
            if entry is None or entry.state != "queued":
                return
            self._move(entry, "running")
            entry.started = time.monotonic()

    def _ended(self, uid: str, fut: Future) -> None:
        with self._lock:
            entry = self._tasks.pop(uid, None)
            if entry is None:
                return
            if entry.started is not None:
                self._tallies[entry.app].seconds += time.monotonic() - entry.started
            self._move(entry, "failed" if fut.cancelled() or fut.exception() is not None else "done")

    def _move(self, entry: _Entry, state: str) -> None:
        tally = self._tallies[entry.app]
        setattr(tally, entry.state, getattr(tally, entry.state) - 1)
        setattr(tally, state, getattr(tally, state) + 1)
        entry.state = state

    def snapshot(self) -> Dict[str, AppTally]:
        """Per app, a copy of its tally."""
        with self._lock:
            return {app: AppTally(**vars(t)) for app, t in self._tallies.items()}


@dataclass
class View:
    """One moment of a run, as the views show it.

    Parameters
    ----------
    apps : dict
        Per app: its :class:`AppTally`, and ``rows``/``bytes`` of the tables it handed on.
    pools : dict
        Per pool (``executor/pool``): ranks, busy, idle, queued, running.
    elapsed : float
        Seconds since the view started.
    """

    apps: Dict[str, Dict[str, Any]]
    pools: Dict[str, Dict[str, int]]
    elapsed: float


def collect(executors: Sequence[Any], since: float) -> View:
    """What the executors' boards, pools and table ledgers say now."""
    apps: Dict[str, Dict[str, Any]] = {}
    pools: Dict[str, Dict[str, int]] = {}
    for ex in executors:
        tables = ex.table_summary()
        for app, tally in ex.task_board.snapshot().items():
            row = apps.setdefault(app, {"tally": AppTally(), "rows": 0, "bytes": 0})
            for key in (*STATES, "seconds"):
                setattr(row["tally"], key, getattr(row["tally"], key) + getattr(tally, key))
        for app, totals in tables.items():
            row = apps.setdefault(app, {"tally": AppTally(), "rows": 0, "bytes": 0})
            row["rows"] += totals.get("rows", 0)
            row["bytes"] += totals.get("bytes", 0)
        for pool, stats in ex.status().items():
            pools[f"{ex.label}/{pool}" if len(executors) > 1 else pool] = dict(stats)
    return View(apps, pools, time.monotonic() - since)


def plain_line(view: View) -> str:
    """One line for a log: totals by state, then each app and each pool."""
    total = AppTally()
    for row in view.apps.values():
        for key in STATES:
            setattr(total, key, getattr(total, key) + getattr(row["tally"], key))
    apps = ", ".join(f"{app} {row['tally'].done}/{row['tally'].count}" for app, row in sorted(view.apps.items()))
    pools = ", ".join(f"{pool} {s.get('busy', 0)}/{s.get('ranks', 0)} busy" for pool, s in sorted(view.pools.items()))
    rows = sum(r["rows"] for r in view.apps.values())
    nbytes = sum(r["bytes"] for r in view.apps.values())
    return (f"[{view.elapsed:7.1f} s] tasks: {total.done} done, {total.running} running, {total.queued} queued, "
            f"{total.failed} failed | apps: {apps or '-'} | ranks: {pools or '-'} | "
            f"handed on: {rows:,} rows, {_size(nbytes)}")


def summary_lines(view: View) -> List[str]:
    """The end-of-run summary: per app, tasks, failures, task time, rows and bytes."""
    head = f"{'app':<24} {'tasks':>6} {'failed':>6} {'task time':>10} {'rows':>14} {'bytes':>10}"
    lines = [f"summary after {view.elapsed:.1f} s", head, "-" * len(head)]
    for app, row in sorted(view.apps.items()):
        t = row["tally"]
        lines.append(f"{app:<24} {t.count:>6} {t.failed:>6} {t.seconds:>9.1f}s {row['rows']:>14,} "
                     f"{_size(row['bytes']):>10}")
    return lines


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def _rich_view(view: View) -> Any:
    from rich.console import Group
    from rich.table import Table

    apps = Table(title=f"parsl_rcylon: {view.elapsed:.0f} s", expand=False)
    for col in ("app", *STATES, "task time", "rows", "bytes"):
        apps.add_column(col, justify="left" if col == "app" else "right")
    for app, row in sorted(view.apps.items()):
        t = row["tally"]
        apps.add_row(app, *(str(getattr(t, s)) for s in STATES), f"{t.seconds:.1f} s", f"{row['rows']:,}",
                     _size(row["bytes"]))
    pools = Table(title="ranks", expand=False)
    for col in ("pool", "busy", "idle", "queued", "running"):
        pools.add_column(col, justify="left" if col == "pool" else "right")
    for pool, s in sorted(view.pools.items()):
        pools.add_row(pool, *(str(s.get(k, 0)) for k in ("busy", "idle", "queued", "running")))
    return Group(apps, pools)


class Progress:
    """Shows the progress of the executors' tasks until :meth:`stop`, then the summary.

    Parameters
    ----------
    executors : sequence of RadicalCylonExecutor
        Executors whose tasks to show (started ones).
    stream : file, optional
        Where to write; ``sys.stdout`` by default.
    live : bool, optional
        A live ``rich`` view (``True``) or plain lines (``False``); by
        default live exactly when ``stream`` is a terminal.
    interval : float
        Seconds between plain lines (the live view refreshes twice a second).
    """

    def __init__(self, executors: Sequence[Any], stream: Optional[IO[str]] = None, live: Optional[bool] = None,
                 interval: float = 10.0) -> None:
        self.executors = list(executors)
        self.stream = stream if stream is not None else sys.stdout
        self.live = _is_terminal(self.stream) if live is None else live
        self.interval = interval
        self._since = time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.final: Optional[View] = None

    def start(self) -> Progress:
        """Start showing, in a daemon thread (once)."""
        if self._thread is not None:
            return self
        self._since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rcylon-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> View:
        """Stop showing; write the summary and return the last view."""
        if self._thread is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=10)
        if self.final is None:
            self.final = collect(self.executors, self._since)
            self._write("\n".join(summary_lines(self.final)))
        return self.final

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            if self.live:
                self._run_live()
            else:
                while not self._stop.wait(self.interval):
                    self._write(plain_line(collect(self.executors, self._since)))
        except Exception:  # a view must never break the run it shows
            logger.exception("progress view failed; the run goes on without it")

    def _run_live(self) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream)
        with Live(_rich_view(collect(self.executors, self._since)), console=console, refresh_per_second=2,
                  transient=False) as live:
            while not self._stop.wait(0.5):
                live.update(_rich_view(collect(self.executors, self._since)))
            live.update(_rich_view(collect(self.executors, self._since)))

    def _write(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except ValueError:  # the stream was closed under us (interpreter exit)
            pass


def show_progress(executors: Any = None, **kwargs: Any) -> Progress:
    """Start a :class:`Progress` for ``executors`` (one, a list, or ``None``: every RadicalCylonExecutor
    of the loaded DFK); use it as a context manager, or call ``stop()`` for the summary."""
    if executors is None:
        from parsl.dataflow.dflow import DataFlowKernelLoader

        executors = [ex for ex in DataFlowKernelLoader.dfk().executors.values() if hasattr(ex, "task_board")]
    elif hasattr(executors, "task_board"):
        executors = [executors]
    return Progress(executors, **kwargs).start()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = ["AppTally", "Progress", "TaskBoard", "View", "collect", "plain_line", "show_progress", "summary_lines"]
