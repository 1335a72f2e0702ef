"""The names of the files in a table directory, and the writer tag that temporary names carry.

A committed table directory holds ``part-RRRRR-of-NNNNN.<ext>`` files and
``_rcylon_manifest.json``.  Until it is committed it also holds files named
after their writer's *tag*, ``<pid>.<start>@<host>`` (the process, its start
time in clock ticks since boot, which tells a reused PID apart, and the host
with its PID namespace), so that a later cleanup can tell the leftovers of a
dead writer from the files of a live one (:mod:`.cleanup`):

* ``.<name>.<tag>.tmp``: a partition or manifest being written;
* ``.writer.<tag>``: rank 0's claim on a directory it has not committed yet.

Scratch directories end in ``.<tag>`` too.  This module imports neither
pyarrow nor MPI.
"""
from __future__ import annotations

import os
import re
import socket
from typing import Optional, Tuple

MANIFEST_NAME = "_rcylon_manifest.json"
# Partition files of committed-or-not tables carry this prefix, so a reader
# recognises the leftovers of an unfinished writer as such.
PART_PREFIX = "part-"
PART_RE = re.compile(r"^part-\d{5}-of-\d{5}\.(parquet|arrow)$")
MARKER_PREFIX = ".writer."

_TAG = r"(?P<pid>\d+)\.(?P<start>\d+)@(?P<host>[A-Za-z0-9._+-]+)"
TEMP_RE = re.compile(rf"^\.(?P<final>.+)\.{_TAG}\.tmp$")
MARKER_RE = re.compile(rf"^{re.escape(MARKER_PREFIX)}{_TAG}$")
SCRATCH_RE = re.compile(rf"^.+\.rank\d+\..+\.{_TAG}$")
# Temporary files from writers that predate tags (``.<name>.<pid>.tmp``).
ANY_TEMP_RE = re.compile(r"^\..+\.tmp$")


def partition_name(rank: int, size: int, suffix: str) -> str:
    """``part-RRRRR-of-NNNNN<suffix>``: rank ``rank``'s file of a table written by ``size`` ranks."""
    return f"{PART_PREFIX}{rank:05d}-of-{size:05d}{suffix}"


def plain_name_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a plain file name that stays inside its directory (None if it is)."""
    if not isinstance(name, str) or not name:
        return "is empty or not a string"
    if "\x00" in name:
        return "contains a NUL byte"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "contains a path separator"
    if os.path.isabs(name):
        return "is an absolute path"
    if name in (".", ".."):
        return "names a directory, not a file"
    return None


def process_start(pid: int) -> Optional[Tuple[int, str]]:
    """(start time in clock ticks since boot, state letter) of ``pid``; None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rfind(")") + 2:].split()
    try:
        return int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None


def host_key() -> str:
    """This host's name and PID namespace, as tags carry them."""
    name = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
    try:
        # Containers on one host may share its name but not its PIDs.
        return f"{name}+{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return name


_cached: Tuple[int, str] = (-1, "")


def writer_tag() -> str:
    """This process's tag, ``<pid>.<start>@<host>`` (computed again after a fork)."""
    global _cached
    pid = os.getpid()
    if _cached[0] != pid:
        start = process_start(pid)
        _cached = (pid, f"{pid}.{start[0] if start else 0}@{host_key()}")
    return _cached[1]


def temp_name(final: str) -> str:
    """The temporary name this process writes ``final`` under, in the same directory.

    Dot-prefixed, so that dataset discovery and our readers skip it.
    """
    return f".{final}.{writer_tag()}.tmp"


def marker_name() -> str:
    """The file that marks a table directory as claimed by this process until it is committed."""
    return f"{MARKER_PREFIX}{writer_tag()}"


def scratch_suffix() -> str:
    """The end of this process's scratch directory names."""
    return f".{writer_tag()}"


__all__ = [
    "ANY_TEMP_RE", "MANIFEST_NAME", "MARKER_RE", "PART_PREFIX", "PART_RE", "SCRATCH_RE", "TEMP_RE",
    "host_key", "marker_name", "partition_name", "plain_name_problem", "process_start", "scratch_suffix",
    "temp_name", "writer_tag",
]
