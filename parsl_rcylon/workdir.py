"""The directory tasks run in: the client's working directory, as with Parsl's own executors.

Parsl's local executors run apps in the submitting process's working
directory; scripts rely on it: relative paths in python apps, a
``bash_app``'s ``stdout=``/``stderr=``, ``outputs=[File("out.txt")]``.
Worker ranks live in the pilot's sandbox, so each task names the directory
it must run in (the client's cwd at submission, or the executor's
``task_dir``) and its rank enters it for the task (and leaves it after: the
next task may name another).

This is not the executor's ``working_dir``: in Parsl that is the staging
directory its data providers download into (and Parsl may set it after
``parsl.load``), so it never moves a task.

On a cluster the directory must be on a filesystem the compute nodes share
with the client (as the executor's ``data_dir`` must); a rank that cannot
enter it fails the task with :class:`WorkingDirectoryError` naming the
directory and the host.
"""
from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator, Optional


class WorkingDirectoryError(OSError):
    """A task's rank could not enter the working directory the task must run in.

    The message names the task, the directory, the host and why (missing,
    not a directory, no permission), with what to do about it.
    """


def task_working_dir(option: Optional[str]) -> str:
    """The directory a task submitted now runs in: ``option`` made absolute, else the client's cwd."""
    return os.path.abspath(option) if option else os.getcwd()


@contextlib.contextmanager
def working_directory(path: Optional[str], task: str) -> Iterator[None]:
    """Run the block in ``path`` (nothing changes when it is ``None``), then return to where the rank was.

    Raises
    ------
    WorkingDirectoryError
        ``path`` cannot be entered on this host.
    """
    if not path:
        yield
        return
    before = os.getcwd()
    try:
        os.chdir(path)
    except OSError as exc:
        raise WorkingDirectoryError(
            f"task {task}: cannot run in working directory {path!r} on host {socket.gethostname()}: "
            f"{exc.strerror or exc}; the directory tasks run in (the executor's task_dir, by default the "
            f"client's current directory) must exist on a filesystem the worker nodes share") from None
    try:
        yield
    finally:
        os.chdir(before)


__all__ = ["WorkingDirectoryError", "task_working_dir", "working_directory"]
