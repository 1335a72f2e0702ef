"""What a pilot server publishes about itself (``<run dir>/attach/pilot.json``) and reads back."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil

from ...permissions import PrivateFileError, read_private
from ...resources import WorkerPool
from ..client.admission import PoolShape, host_layout

#: Directory under the run directory with the front door's key file and ``pilot.json``.
ATTACH_DIR = "attach"
#: What the server publishes about itself once it is ready (no secrets: the keys are in the key file).
INFO_FILE = "pilot.json"
#: Seconds a pilot with no client and no task stays up by default.
IDLE_TIMEOUT = 1800.0
#: Fields of a pool a client needs to validate its tasks before sending them.
_POOL_FIELDS = ("name", "ranks", "workers", "cores_per_rank", "gpus_per_rank", "ranks_per_node", "pilot")


#: The module the pilot server's process runs (``python -m SERVER_MODULE RUN_DIR OPTIONS IDLE``).
SERVER_MODULE = "parsl_rcylon.serving"


class AttachError(RuntimeError):
    """No pilot server at the given run directory, or it refused or stopped answering."""


class UntrustedInfoError(AttachError):
    """``pilot.json`` or the run directory of ``up`` is not this user's own and private: not trusted."""


def is_server_command(cmdline: List[str], run_dir: os.PathLike) -> bool:
    """Whether ``cmdline`` is a pilot server's for ``run_dir`` (as :func:`parsl_rcylon.serving.up` starts it)."""
    return list(cmdline[1:4]) == ["-m", SERVER_MODULE, str(Path(run_dir).resolve())]


@dataclass
class PilotInfo:
    """What ``parsl-rcylon up`` prints and an attaching executor reads (``<run dir>/attach/pilot.json``)."""

    run_dir: str
    address: str
    pid: int
    started: float  # the server process' create time, so a reused PID is never taken for it
    label: str
    session: str
    data_dir: str
    idle_timeout: float
    heartbeat_period: float
    heartbeat_threshold: float
    pools: List[Dict[str, Any]] = field(default_factory=list)
    start_s: float = 0.0
    #: Each pool's shape as admission sees it (:class:`~..client.admission.PoolShape`), so an attached
    #: executor admits a task exactly as the server will.
    shapes: List[Dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, run_dir: os.PathLike) -> PilotInfo:
        """``<run_dir>/attach/pilot.json``, trusted only as a private regular file of this user.

        Raises :class:`AttachError` when it is missing, and
        :class:`UntrustedInfoError` (naming the file and why) when it is a
        link, someone else's or readable by others: a planted description could
        point a client at an impostor or ``down`` at a process of another's choice.
        """
        path = Path(run_dir) / ATTACH_DIR / INFO_FILE
        try:
            data = json.loads(read_private(path, "pilot description").decode("utf-8"))
            info = cls(**data)
        except FileNotFoundError:
            raise AttachError(f"no pilot is up at {run_dir} ({path} is missing); start one with "
                              f"`parsl-rcylon up --run-dir {run_dir}`") from None
        except PrivateFileError as err:
            raise UntrustedInfoError(str(err)) from None
        except (OSError, ValueError, TypeError) as err:
            raise AttachError(f"{path}: unreadable pilot description ({err})") from err
        if Path(info.run_dir).resolve() != Path(run_dir).resolve():
            raise UntrustedInfoError(f"{path} describes the pilot of another run directory ({info.run_dir}): "
                                     "not trusted")
        return info

    def process(self) -> Optional[psutil.Process]:
        """The server's process while it runs, or ``None``.

        Only a process that is all of: this user's, started at ``started``
        (so a reused PID is not it), not a zombie, and running
        ``python -m parsl_rcylon.serving`` for this run directory.  A
        description naming any other process gets ``None``: nothing else is
        ever signalled or trusted as the server.
        """
        try:
            proc = psutil.Process(self.pid)
            if (proc.uids().real != os.getuid() or abs(proc.create_time() - self.started) >= 0.01
                    or proc.status() == psutil.STATUS_ZOMBIE):
                return None
            if not is_server_command(proc.cmdline(), self.run_dir):
                return None
            return proc
        except psutil.Error:
            return None

    def worker_pools(self) -> List[WorkerPool]:
        """The server's pools."""
        return [WorkerPool(**p) for p in self.pools]

    def pool_shapes(self) -> List[PoolShape]:
        """The server's pools as its admission sees them."""
        pools = {p.name: p for p in self.worker_pools()}
        if not self.shapes:  # a server that published none: its pools on one host each, as a local pilot's
            return [PoolShape(p, host_layout(p.ranks, None), True) for p in pools.values()]
        return [PoolShape.from_dict(s, pools) for s in self.shapes]


