"""The executor's options in checked groups: where it runs, how its processes stay in touch, where data goes.

:class:`~parsl_rcylon.RadicalCylonExecutor` takes flat keywords, as Parsl
executors do; it hands them to these groups, each of which checks itself when
made (as :class:`~.resources.WorkerPool` and :class:`~.resources.PilotSpec`
do), so a bad value fails in the constructor with a message naming it.  The
channel's group, :class:`~.runtime.wire.channel.ChannelOptions`, lives with
the channel, and :class:`~.runtime.client.pilots.Liveness` with the pilots
it governs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .options import check_table_options
from .permissions import modes
from .resources import PilotSpec, WorkerPool
from .runtime.client.pilot import pilot_description
from .runtime.client.pilots import Liveness
from .runtime.wire.channel import ChannelOptions


@dataclass(frozen=True)
class Allocation:
    """The pilots an executor starts and the worker pools they hold.

    Build it with :meth:`from_options`, from the executor's keywords.
    """

    pilots: Sequence[PilotSpec]
    pools: Sequence[WorkerPool]

    def __post_init__(self) -> None:
        for kind, names in (("pool", [p.name for p in self.pools]), ("pilot", [p.name for p in self.pilots])):
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be unique, got {names}")
        pilot_names = [p.name for p in self.pilots]
        for pool in self.pools:
            if pool.pilot is not None and pool.pilot not in pilot_names:
                raise ValueError(f"pool {pool.name!r} names pilot {pool.pilot!r}; pilots are {pilot_names}")

    @classmethod
    def from_options(cls, worker_ranks: Optional[int], pools: Optional[Sequence[WorkerPool]],
                     pilots: Optional[Sequence[PilotSpec]], resource: str, runtime: int, project: Optional[str],
                     queue: Optional[str], access_schema: Optional[str],
                     pilot_options: Optional[Mapping[str, Any]]) -> Allocation:
        """The allocation the executor's keywords describe (see its docstring)."""
        if worker_ranks is not None and worker_ranks < 1:
            raise ValueError(f"worker_ranks must be >= 1, got {worker_ranks}")
        if pools is not None and worker_ranks is not None:
            raise ValueError("give either worker_ranks or pools, not both")
        if pilots and (resource != "local.localhost" or project or queue or access_schema or pilot_options):
            raise ValueError("give either pilots=[PilotSpec(...)] or resource/project/queue/..., not both")
        pool_list = list(pools) if pools else [
            WorkerPool(name="default", ranks=worker_ranks or max(4, os.cpu_count() or 1))]
        pilot_list = list(pilots) if pilots else [PilotSpec(
            name="main", resource=resource, runtime=runtime, project=project, queue=queue,
            access_schema=access_schema, options=dict(pilot_options or {}))]
        return cls(pilot_list, pool_list)

    @property
    def is_local(self) -> bool:
        """Whether every pilot runs on this machine."""
        return all(p.is_local for p in self.pilots)

    def pools_of(self, pilot: PilotSpec) -> List[WorkerPool]:
        """The pools that live in ``pilot`` (a pool naming no pilot lives in the first)."""
        first = self.pilots[0].name
        return [p for p in self.pools if (p.pilot or first) == pilot.name]

    def pilot_descriptions(self, base_dir: Path) -> Dict[str, Dict[str, Any]]:
        """The ``PilotDescription`` keys of each pilot, by name, sandboxes under ``base_dir``; submits nothing."""
        return {spec.name: pilot_description(spec, self.pools_of(spec), str(Path(base_dir) / "sandbox"))
                for spec in self.pilots}


@dataclass(frozen=True)
class DataOptions:
    """Where tables go, who may read them, and where tasks run.

    Parameters
    ----------
    where : str
        Named in error messages (``executor 'rcylon'``).
    data_dir : str, optional
        Directory for tables passed between stages.
    table_options : dict
        Defaults for tables written by tasks; ``sharing`` defaults to the run's.
    sharing : {"private", "group"}
        Modes of the run directory and everything in it.
    task_dir : str, optional
        Directory every task runs in, made absolute against the current
        directory now; ``None``: the client's current directory at each
        submission (:mod:`~parsl_rcylon.workdir`).  Not Parsl's
        ``working_dir``, which is the staging directory of its data providers.
    """

    where: str
    data_dir: Optional[str] = None
    table_options: Dict[str, Any] = field(default_factory=dict)
    sharing: str = "private"
    task_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.task_dir is not None:
            if not self.task_dir:
                raise ValueError(f"{self.where}: task_dir must name a directory, got ''")
            object.__setattr__(self, "task_dir", os.path.abspath(self.task_dir))
        modes(self.sharing)  # raises on an unknown level
        options = check_table_options(self.table_options, f"{self.where}: table_options")
        options.setdefault("sharing", self.sharing)  # tables follow the run unless told otherwise
        object.__setattr__(self, "table_options", options)


__all__ = ["Allocation", "ChannelOptions", "DataOptions", "Liveness"]
