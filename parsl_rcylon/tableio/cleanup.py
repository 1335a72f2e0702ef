"""Leftovers of writers that died, and removing only what is certainly abandoned.

A writer that survives a failure removes its own temporary files at once
(:mod:`.formats`, :mod:`.manifest`, :mod:`parsl_rcylon.table.handoff`).  A
writer that is killed (SIGKILL from the OOM killer, a lost node) cannot, so
everything a writer makes before its table is committed carries the writer's
*tag*, ``<pid>.<start>@<host>``:

* ``pid``: the writing process;
* ``start``: that process's start time (clock ticks since boot, from
  ``/proc``), which tells a reused PID apart from the writer;
* ``host``: the host name and PID namespace the PID belongs to.

Tagged are (:mod:`.names`): partition and manifest temporary files
(``.<name>.<tag>.tmp``), the marker rank 0 puts in a table directory it
claims until the table is committed (``.writer.<tag>``), and scratch
directories (``<task>.rank<r>.<random>.<tag>``).

:func:`remove_unfinished` and :func:`remove_stale_scratch` remove what a dead
writer left.  On this host a writer is dead when its PID is gone, belongs to
another process (start time differs) or is a zombie.  A writer on another
host cannot be asked, so its leftovers go only when nothing in them has
changed for ``older_than`` seconds: a live writer on another node keeps
writing its file, and keeps it.  Symbolic links and files whose names are
not ours are never touched.

This module imports neither pyarrow nor MPI.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import List, Optional

from .names import (
    ANY_TEMP_RE,
    MANIFEST_NAME,
    MARKER_PREFIX,
    MARKER_RE,
    PART_RE,
    SCRATCH_RE,
    TEMP_RE,
    host_key,
    process_start,
)

logger = logging.getLogger(__name__)

#: Leftovers of writers on other hosts are removed after this long without a change (seconds).
DEFAULT_OLDER_THAN = 24 * 3600.0


def writer_alive(pid: int, start: int, host: str) -> Optional[bool]:
    """Whether the writer with this tag still runs: True, False, or None (another host: cannot tell)."""
    if host != host_key():
        return None
    now = process_start(pid)
    if now is not None:
        ticks, state = now
        # A zombie has finished writing for good; a different start time is another process.
        return state not in ("Z", "X") and (start == 0 or ticks == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: our writer ran as us
        return False
    return True


def _newest_mtime(path: str) -> float:
    """The latest modification time of ``path`` and, for a directory, of its direct entries."""
    newest = os.lstat(path).st_mtime
    if os.path.isdir(path) and not os.path.islink(path):
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


@dataclass
class CleanupReport:
    """What a cleanup removed, and the leftovers it kept because their writer may still run.

    Parameters
    ----------
    removed : list of str
        Paths removed (files and directories).
    kept : list of str
        Leftovers of a writer that is alive, or on another host and changed
        less than ``older_than`` seconds ago.
    """

    removed: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)

    def extend(self, other: CleanupReport) -> None:
        self.removed.extend(other.removed)
        self.kept.extend(other.kept)


class _Judge:
    """Decides whether a tagged (or untagged) leftover is certainly abandoned."""

    def __init__(self, older_than: float, now: Optional[float]) -> None:
        if older_than < 0:
            raise ValueError(f"older_than={older_than!r}: expected a number of seconds >= 0")
        self.older_than = older_than
        self.now = time.time() if now is None else now

    def old(self, path: str) -> bool:
        try:
            return self.now - _newest_mtime(path) > self.older_than
        except FileNotFoundError:
            return False

    def abandoned(self, match: Optional[re.Match], path: str, stale: Optional[bool] = None) -> bool:
        """Dead by its tag on this host; otherwise (or untagged) unchanged for ``older_than``:
        ``path``'s own age, or ``stale`` when the caller judged it already."""
        if match is not None:
            alive = writer_alive(int(match["pid"]), int(match["start"]), match["host"])
            if alive is not None:
                return not alive
        return self.old(path) if stale is None else stale


def _unlink(path: str, report: CleanupReport) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as err:
        logger.warning("cannot remove %s: %s", path, err)
        report.kept.append(path)
        return
    report.removed.append(path)


def _clean_table_dir(directory: str, judge: _Judge) -> CleanupReport:
    report = CleanupReport()
    try:
        entries = {e.name: e for e in os.scandir(directory)}
    except OSError as err:
        logger.warning("cannot list %s: %s", directory, err)
        return report
    files = {n: e for n, e in entries.items() if e.is_file(follow_symlinks=False)}
    temps = [(n, TEMP_RE.match(n)) for n in files if ANY_TEMP_RE.match(n)]
    markers = [(n, MARKER_RE.match(n)) for n in files if n.startswith(MARKER_PREFIX)]
    parts = [n for n in files if PART_RE.match(n)]
    committed = MANIFEST_NAME in files
    if not committed and not (temps or markers or parts):
        return report  # not a table directory of ours (or an empty claim): leave it
    # Judged before anything is removed here: each removal touches the directory.
    stale = judge.old(directory)
    live_temps = []
    for name, match in temps:
        path = os.path.join(directory, name)
        if judge.abandoned(match, path):
            _unlink(path, report)
        else:
            live_temps.append(path)
    report.kept.extend(live_temps)
    if committed:
        # A committed table is never touched; only a marker its writer failed to remove goes.
        for name, match in markers:
            path = os.path.join(directory, name)
            if judge.abandoned(match, path):
                _unlink(path, report)
        return report
    # Uncommitted: abandoned when its committer (the marker's writer) is dead, or,
    # when no marker says who that is, when nothing in it changed for older_than.
    # Without a marker the directory is ours only if nothing else is in it.
    ours = {MANIFEST_NAME, *parts, *(n for n, _ in temps), *(n for n, _ in markers)}
    if markers:
        dead = all(judge.abandoned(match, os.path.join(directory, name), stale=stale) for name, match in markers)
    else:
        dead = stale and set(entries) <= ours
    if not dead:
        report.kept.append(directory)
        return report
    for name in parts + [n for n, _ in markers]:
        _unlink(os.path.join(directory, name), report)
    try:
        os.rmdir(directory)
        report.removed.append(directory)
    except OSError:
        # Live temporary files, or files that are not ours: stays.
        report.kept.append(directory)
    return report


def _entries(directory: str) -> List[os.DirEntry]:
    """The entries of ``directory``; none when it does not exist."""
    try:
        with os.scandir(directory) as it:
            return list(it)
    except FileNotFoundError:
        return []


def remove_unfinished(data_dir: str, older_than: float = DEFAULT_OLDER_THAN,
                      now: Optional[float] = None) -> CleanupReport:
    """Remove what dead writers left in the table directories under ``data_dir``.

    Looks one level down (``data_dir/<table>/``).  Removed: temporary files
    of dead writers; uncommitted table directories whose committing writer
    is dead (their partitions, marker and the directory itself); markers
    left in committed tables.  Kept: committed tables' data, anything of a
    writer that may still run, symbolic links, and files that are not ours.

    Parameters
    ----------
    data_dir : str
        The executor's table directory.  Missing is fine (nothing to do).
    older_than : float
        Leftovers of writers on other hosts (whose liveness cannot be
        checked from here), and untagged ones, are removed only when nothing
        in them changed for this many seconds.
    now : float, optional
        The current time (``time.time()``); for tests.

    Returns
    -------
    CleanupReport
        What was removed, and what was kept because its writer may still run.
    """
    judge = _Judge(older_than, now)
    report = CleanupReport()
    for entry in _entries(data_dir):
        if entry.is_dir(follow_symlinks=False):
            report.extend(_clean_table_dir(entry.path, judge))
    if report.removed:
        logger.info("removed %d leftover(s) of dead table writers under %s", len(report.removed), data_dir)
    return report


def remove_stale_scratch(scratch_root: str, older_than: float = DEFAULT_OLDER_THAN,
                         now: Optional[float] = None) -> CleanupReport:
    """Remove the scratch directories of dead ranks under ``scratch_root``.

    Only directories named as :class:`~parsl_rcylon.context.CylonContext`
    names them (ending in a writer tag) are considered; the same liveness
    rule as :func:`remove_unfinished` applies.
    """
    judge = _Judge(older_than, now)
    report = CleanupReport()
    for entry in _entries(scratch_root):
        match = SCRATCH_RE.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        if not judge.abandoned(match, entry.path):
            report.kept.append(entry.path)
            continue
        try:
            shutil.rmtree(entry.path)
            report.removed.append(entry.path)
        except OSError as err:
            logger.warning("cannot remove scratch directory %s: %s", entry.path, err)
            report.kept.append(entry.path)
    return report


def remove_leftovers(label: str, data_dir: str, scratch_root: str) -> CleanupReport:
    """What an executor sweeps at start: dead writers' unfinished tables and dead ranks' scratch directories.

    Writers killed in an earlier run (a rank SIGKILLed mid-write, a node lost)
    leave temporary files and uncommitted tables; only certainly dead
    writers' leftovers go.  ``label`` names the executor in the log.
    """
    report = remove_unfinished(data_dir)
    report.extend(remove_stale_scratch(scratch_root))
    if report.removed:
        logger.warning("%s: removed %d leftover(s) of writers that died in an earlier run: %s", label,
                       len(report.removed), report.removed[:10])
    return report


__all__ = ["CleanupReport", "DEFAULT_OLDER_THAN", "remove_leftovers", "remove_stale_scratch", "remove_unfinished",
           "writer_alive"]
