"""Parsl monitoring for this executor's tasks: the radio they report on, and their ranks' part.

With ``parsl.Config(monitoring=MonitoringHub(...))`` Parsl wraps every app
call in a function that reports the task's start and end (and, with resource
monitoring on, samples its process) to the monitoring database through the
executor's *radio*.  This executor's radio is :class:`PrivateFilesystemRadio`:
Parsl's own :class:`~parsl.monitoring.radios.filesystem.FilesystemRadio` (the
default of the Work Queue and TaskVine executors), whose ranks write
messages into ``<run_dir>/monitor-fs-radio`` on the shared filesystem and
whose receiver in the client reads them into the database.  Here that
directory is made private (0700) before the receiver starts, because the
receiver unpickles what it finds there: only this user's processes can put
a message in it.  Any other Parsl radio can be given with the executor's
``remote_monitoring_radio=``.

A multi-rank ``cylon_app`` task is one Parsl task: its rank 0 reports it
(start, end, and the resource samples of rank 0's process); the other ranks
run the function unwrapped.
"""
from __future__ import annotations

import logging
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

from parsl.monitoring.radios.base import MonitoringRadioReceiver
from parsl.monitoring.radios.filesystem import FilesystemRadio

from .permissions import check_owned_dir, private_dir, secure_run_dir

logger = logging.getLogger(__name__)

#: The keywords Parsl's monitoring wrapper adds to a call and takes off again.
MONITORING_KWARGS = ("_parsl_monitoring_task_id", "_parsl_monitoring_try_id")


class PrivateFilesystemRadio(FilesystemRadio):
    """Parsl's filesystem radio with a private message directory.

    Messages travel as files in ``<run_dir>/monitor-fs-radio/{tmp,new}``,
    which must be on a filesystem the worker nodes share with the client
    (as the executor's ``data_dir``).  The receiver scans it every 10 s and
    once more at shutdown.

    Parameters
    ----------
    sharing : {"private", "group"}
        The mode Parsl's run directory (``runinfo/NNN``) gets when the
        receiver secures it (the executor passes its own ``sharing``).
    """

    def __init__(self, sharing: str = "private") -> None:
        self.sharing = sharing

    def create_receiver(self, *, run_dir: str, resource_msgs: Queue) -> MonitoringRadioReceiver:
        # Every directory from the user's run directory down to the radio's is this user's and
        # nobody else's to write: a group member who can rename the radio's directory aside can
        # put her own in its place, and Parsl unpickles what it finds there.
        secure_run_dir(run_dir, self.sharing)
        base = Path(run_dir) / "monitor-fs-radio"
        for path in (base, base / "tmp", base / "new"):
            private_dir(path)
            check_owned_dir(path)
        return super().create_receiver(run_dir=run_dir, resource_msgs=resource_msgs)


def split_monitoring(fn: Callable, kwargs: Dict[str, Any]) -> Tuple[Callable, Callable, Dict[str, Any]]:
    """Parsl's monitoring wrapper apart from the app: ``(reporting fn, plain fn, monitoring kwargs)``.

    ``kwargs`` loses the monitoring keywords.  Without monitoring the three
    are ``fn, fn, {}``.  Call the reporting function with the keywords
    added back on the rank that reports, the plain one elsewhere.
    """
    extra = {k: kwargs.pop(k) for k in MONITORING_KWARGS if k in kwargs}
    if not extra:
        return fn, fn, {}
    return fn, getattr(fn, "__wrapped__", fn), extra


def app_function(fn: Callable) -> Callable:
    """The app function a call runs: ``fn``, or the function Parsl's monitoring wrapper wraps."""
    inner = getattr(fn, "__wrapped__", None)
    # The wrapper copies the app's attributes (functools.wraps) but not those of its class.
    return inner if inner is not None and getattr(inner, "__rcylon_cylon__", False) else fn


__all__ = ["MONITORING_KWARGS", "PrivateFilesystemRadio", "app_function", "split_monitoring"]
