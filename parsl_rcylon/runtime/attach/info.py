"""What a pilot server publishes about itself (``<run dir>/attach/pilot.json``) and reads back."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil

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


class AttachError(RuntimeError):
    """No pilot server at the given run directory, or it refused or stopped answering."""


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
        path = Path(run_dir) / ATTACH_DIR / INFO_FILE
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError:
            raise AttachError(f"no pilot is up at {run_dir} ({path} is missing); start one with "
                              f"`parsl-rcylon up --run-dir {run_dir}`") from None
        except (OSError, ValueError, TypeError) as err:
            raise AttachError(f"{path}: unreadable pilot description ({err})") from err

    def process(self) -> Optional[psutil.Process]:
        """The server's process while it runs (a zombie or a reused PID is not)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except psutil.Error:
            pass
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


