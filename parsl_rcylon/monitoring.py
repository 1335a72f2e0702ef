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

The hosts the ranks run on are reported as Parsl *nodes* once every rank is
up (:func:`node_messages`), as HTEX's interchange reports its managers:
``parsl-visualize`` draws the total cores, memory and workers of a run from
them, which are zero without.  A rank counts as one worker.
"""
from __future__ import annotations

import datetime
import logging
import platform
import socket
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import psutil
from parsl.monitoring.message_type import MessageType
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


def node_messages(run_id: str, label: str, hosts: Dict[str, Dict[str, int]],
                  memory_mb: Callable[[str], Optional[int]]) -> List[Tuple[MessageType, Dict[str, Any]]]:
    """Parsl ``NODE_INFO`` messages for the hosts the executor's ranks run on.

    Parameters
    ----------
    run_id : str
        The DFK's run id.
    label : str
        The executor's label (part of each node's ``uid``).
    hosts : dict
        Per pool, ranks per host (:meth:`~.runtime.client.dispatcher.Dispatcher.rank_hosts`).
    memory_mb : callable
        MB of memory of a host of the given pool, ``None`` when not known.

    Returns
    -------
    list
        One message per pool and host.  This host's cores and memory are
        measured; another host's cores are taken to be its ranks (what the
        pilot gave the pool there) and its memory is the pool's pilot's
        figure (0 when not known).
    """
    now = datetime.datetime.now()
    here = socket.gethostname()
    messages = []
    for pool, per_host in sorted(hosts.items()):
        for host, ranks in sorted(per_host.items()):
            local = host == here
            memory = psutil.virtual_memory().total if local else (memory_mb(pool) or 0) * (1 << 20)
            messages.append((MessageType.NODE_INFO, {
                "run_id": run_id, "hostname": host, "uid": f"{label}.{pool}.{host}", "block_id": pool,
                "cpu_count": (psutil.cpu_count() or ranks) if local else ranks, "total_memory": memory,
                "active": True, "worker_count": ranks, "python_v": platform.python_version(),
                "timestamp": now, "last_heartbeat": now}))
    return messages


def report_nodes(executor: Any, hosts: Dict[str, Dict[str, int]]) -> None:
    """Put :func:`node_messages` on the DFK's monitoring queue; nothing without monitoring.

    ``executor`` is the :class:`~parsl_rcylon.RadicalCylonExecutor` whose
    ranks run on ``hosts``: its monitoring queue and run id (Parsl sets both
    at load) and its admission, which knows the memory of a pool's hosts.
    """
    queue: Optional[Queue] = executor.monitoring_messages
    run_id: Optional[str] = getattr(executor, "run_id", None)
    if queue is None or run_id is None:
        return
    admission = executor.admission
    shapes = {s.pool.name: s for s in admission.shapes}
    for message in node_messages(run_id, executor.label, hosts, lambda pool: admission.capacity(shapes[pool]).memory):
        queue.put(message)
    logger.debug("%s: reported %d node(s) to monitoring", executor.label, sum(len(h) for h in hosts.values()))


def app_function(fn: Callable) -> Callable:
    """The app function a call runs: ``fn``, or the function Parsl's monitoring wrapper wraps."""
    inner = getattr(fn, "__wrapped__", None)
    # The wrapper copies the app's attributes (functools.wraps) but not those of its class.
    return inner if inner is not None and getattr(inner, "__rcylon_cylon__", False) else fn


__all__ = ["MONITORING_KWARGS", "PrivateFilesystemRadio", "app_function", "node_messages", "report_nodes",
           "split_monitoring"]
