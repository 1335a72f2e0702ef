"""Admission: whether some pool of an executor can ever hold a task, decided once per call.

The executor asks :meth:`Admission.admit` when a call is made: the resource
specification is parsed once (:class:`~parsl_rcylon.resources.ResourceSpec`)
and checked against what each pool's workers will be (ranks per host, GPUs
and cores per rank, and the memory and disk of a host where known).  A spec
no pool can hold fails at call time, naming the pools.  Once workers run,
:class:`~.placement.Placement` applies the same rule (:func:`pool_accepts`)
to the hosts their ranks reported.

An executor that starts its own pilots builds its admission from its pools and
pilots (:meth:`Admission.for_pilots`); an executor attached to a pilot server
gets the shapes the server published (:meth:`PoolShape.from_dict`), so it
never looks up a pilot it does not have.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from parsl.executors.errors import InvalidResourceSpecification

from ...resources import PilotSpec, ResourceSpec, WorkerPool
from .capacity import HostCapacity, capacity_problem, host_capacity


def ranks_per_task_rank(spec: ResourceSpec, cores_per_rank: int) -> int:
    """Worker ranks one task rank takes on a pool whose ranks own ``cores_per_rank`` cores."""
    return -(-spec.cores_per_rank // cores_per_rank)


def host_layout(ranks: int, ranks_per_host: Optional[int]) -> List[int]:
    """Ranks per host of a worker of ``ranks`` ranks, ``ranks_per_host`` on each (None: one host)."""
    per = ranks_per_host or ranks
    return [min(per, ranks - first) for first in range(0, ranks, per)]


def pool_accepts(spec: ResourceSpec, pool: str, host_sizes: Sequence[int], gpus_per_rank: int,
                 cores_per_rank: int, cpu_pool_exists: bool) -> bool:
    """Whether a worker of ``pool`` could ever run ``spec``.

    ``host_sizes`` are the worker's ranks per host; a task rank that needs
    several worker ranks for its cores needs them on one host.
    """
    if spec.pool is not None:
        if pool != spec.pool:
            return False
    elif spec.gpus_per_rank == 0 and gpus_per_rank and cpu_pool_exists:
        return False
    if gpus_per_rank < spec.gpus_per_rank:
        return False
    per = ranks_per_task_rank(spec, cores_per_rank)
    if spec.num_nodes is not None:
        return sum(1 for n in host_sizes if n // per >= spec.ranks_per_node) >= spec.num_nodes
    return sum(n // per for n in host_sizes) >= spec.ranks


@dataclass(frozen=True)
class PoolShape:
    """What admission knows of one pool: the pool, its ranks per host, what one of its hosts has.

    Parameters
    ----------
    pool : WorkerPool
        The pool.
    host_sizes : list of int
        Ranks per host of one of its workers, as planned (``ranks_per_node``
        to a host; all on one host for a local pilot).
    local : bool
        Whether its pilot runs on this machine.
    capacity : HostCapacity, optional
        Memory and disk of one of its hosts; ``None`` until first needed.
    """

    pool: WorkerPool
    host_sizes: List[int]
    local: bool
    capacity: Optional[HostCapacity] = None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready (the pilot server publishes it in ``pilot.json``)."""
        return {"pool": self.pool.name, "host_sizes": list(self.host_sizes), "local": self.local,
                "capacity": asdict(self.capacity) if self.capacity is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], pools: Mapping[str, WorkerPool]) -> PoolShape:
        capacity = data.get("capacity")
        return cls(pools[data["pool"]], list(data["host_sizes"]), bool(data["local"]),
                   HostCapacity(**capacity) if capacity else None)


class Admission:
    """Decides whether a call's resource spec fits some pool; parses it once.

    Parameters
    ----------
    label : str
        The executor's label, for error messages.
    shapes : sequence of PoolShape
        Every pool of the executor.
    capacity_of : callable, optional
        ``capacity_of(pool name)``: memory and disk of one of the pool's
        hosts, asked the first time a task states ``memory`` or ``disk`` for a
        shape without a capacity (reading RP's resource configuration is not free).
    """

    def __init__(self, label: str, shapes: Sequence[PoolShape],
                 capacity_of: Optional[Callable[[str], HostCapacity]] = None) -> None:
        self.label = label
        self._shapes = list(shapes)
        self._capacity_of = capacity_of
        self._capacities: Dict[str, HostCapacity] = {}

    @classmethod
    def for_pilots(cls, label: str, pools: Sequence[WorkerPool], pilots: Sequence[PilotSpec],
                   local_dir: Callable[[], str]) -> Admission:
        """Admission for an executor that starts ``pilots``; each pool lives in the pilot it names (else the first).

        ``local_dir()`` is where a local pilot's free disk is measured (the run directory, known late).
        """
        by_name = {p.name: p for p in pilots}
        pilot_of = {pool.name: by_name[pool.pilot or pilots[0].name] for pool in pools}
        cache: Dict[str, HostCapacity] = {}

        def capacity_of(pool: str) -> HostCapacity:
            pilot = pilot_of[pool]
            if pilot.name not in cache:
                cache[pilot.name] = host_capacity(pilot, local_dir())
            return cache[pilot.name]

        shapes = [PoolShape(pool, host_layout(pool.ranks, None if pilot_of[pool.name].is_local
                                              else pool.ranks_per_node), pilot_of[pool.name].is_local)
                  for pool in pools]
        return cls(label, shapes, capacity_of)

    @property
    def shapes(self) -> List[PoolShape]:
        return list(self._shapes)

    def capacity(self, shape: PoolShape) -> HostCapacity:
        """Memory and disk of one host of ``shape``'s pool (unknown figures are ``None``)."""
        if shape.capacity is not None:
            return shape.capacity
        name = shape.pool.name
        if name not in self._capacities:
            self._capacities[name] = (self._capacity_of(name) if self._capacity_of is not None
                                      else HostCapacity(None, None, "the pilot server"))
        return self._capacities[name]

    def admit(self, resources: Mapping[str, Any], cylon: bool = True, name: str = "task") -> ResourceSpec:
        """Parse ``resources`` and check that some pool can ever hold it; return the parsed spec.

        Raises
        ------
        InvalidResourceSpecification
            An unknown key or bad value, a plain app asking for several
            ranks, an unknown pool, or a spec no pool can hold (the message
            names every pool).
        """
        spec = ResourceSpec.from_mapping(resources, where=name)
        if not cylon and spec.ranks > 1:
            raise InvalidResourceSpecification(
                {"ranks"}, f"{name}: a plain python/bash app runs on one rank; use @cylon_app for "
                           f"{spec.ranks} ranks")
        if spec.pool is not None and spec.pool not in {s.pool.name for s in self._shapes}:
            raise InvalidResourceSpecification({"pool"}, f"{name}: no pool named {spec.pool!r}; "
                                                         f"pools are {self.describe()}")
        accepting = self.accepting(spec)
        if not accepting:
            keys = {"ranks"} | {k for k, v in (("gpus_per_rank", spec.gpus_per_rank > 0),
                                               ("cores_per_rank", spec.cores_per_rank > 1),
                                               ("num_nodes", spec.num_nodes is not None)) if v}
            nodes = (f" on {spec.num_nodes} host(s), {spec.ranks_per_node} on each"
                     if spec.num_nodes is not None else "")
            local = all(s.local for s in self._shapes)
            raise InvalidResourceSpecification(
                keys, f"{name} needs {spec.ranks} rank(s){nodes} with {spec.gpus_per_rank} GPU(s) and "
                      f"{spec.cores_per_rank} core(s) each, a rank's cores on one host; no pool of executor "
                      f"{self.label!r} can hold it: {self.describe()}"
                      + ("; a local pilot's ranks are all on one host" if nodes and local else ""))
        problem = capacity_problem(spec, [(s.pool.name, s.host_sizes, self.capacity(s)) for s in accepting])
        if problem:
            raise InvalidResourceSpecification(problem[0], f"{name}: {problem[1]}")
        return spec

    def accepting(self, spec: ResourceSpec) -> List[PoolShape]:
        """The pools whose workers could ever run ``spec``."""
        cpu_pool = any(not s.pool.gpus_per_rank for s in self._shapes)
        return [s for s in self._shapes if pool_accepts(spec, s.pool.name, s.host_sizes, s.pool.gpus_per_rank,
                                                        s.pool.cores_per_rank, cpu_pool)]

    def describe(self) -> str:
        """Every pool in a few words, for error messages."""
        return ", ".join(f"{p.name} ({p.workers} x {p.ranks} ranks, {p.gpus_per_rank} GPU/rank, "
                         f"{p.cores_per_rank} core(s)/rank)" for p in (s.pool for s in self._shapes))


__all__ = ["Admission", "PoolShape", "host_layout", "pool_accepts", "ranks_per_task_rank"]
