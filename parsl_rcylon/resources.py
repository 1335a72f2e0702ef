"""Resource specifications of tasks: how many ranks, cores and GPUs each needs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

from parsl.executors.errors import InvalidResourceSpecification

#: Keys a ``parsl_resource_specification`` may hold for this executor.
KNOWN_KEYS = frozenset({"ranks", "num_ranks", "cores_per_rank", "gpus_per_rank", "pool"})


@dataclass(frozen=True)
class ResourceSpec:
    """What one task needs from a worker pool.

    Parameters
    ----------
    ranks : int
        MPI ranks of the task's private communicator.
    cores_per_rank : int
        Cores each rank uses (threads inside a rank).
    gpus_per_rank : int
        GPUs each rank sees.
    pool : str, optional
        Name of the worker pool the task must run in.
    """

    ranks: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: int = 0
    pool: Optional[str] = None

    @classmethod
    def from_mapping(cls, spec: Optional[Mapping[str, Any]], where: str = "task") -> ResourceSpec:
        """Validate a user's mapping and build a spec; raise on any bad key or value."""
        spec = dict(spec or {})
        unknown = set(spec) - KNOWN_KEYS
        if unknown:
            raise InvalidResourceSpecification(
                unknown, f"{where}: unknown key(s); known keys are {sorted(KNOWN_KEYS)}"
            )
        if "num_ranks" in spec:
            if "ranks" in spec and spec["ranks"] != spec["num_ranks"]:
                raise InvalidResourceSpecification(
                    {"ranks", "num_ranks"}, f"{where}: ranks and num_ranks disagree"
                )
            spec["ranks"] = spec.pop("num_ranks")
        values = {}
        for key, minimum in (("ranks", 1), ("cores_per_rank", 1), ("gpus_per_rank", 0)):
            if key not in spec:
                continue
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InvalidResourceSpecification(
                    {key}, f"{where}: {key} must be an integer >= {minimum}, got {value!r}"
                )
            values[key] = value
        pool = spec.get("pool")
        if pool is not None and not isinstance(pool, str):
            raise InvalidResourceSpecification({"pool"}, f"{where}: pool must be a name, got {pool!r}")
        return cls(pool=pool, **values)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class WorkerPool:
    """A set of warm RAPTOR MPI workers that tasks of one kind run on.

    Parameters
    ----------
    name : str
        Name tasks can ask for with ``pool=``.
    ranks : int
        Ranks of each worker of the pool; the largest task the pool can hold.
    workers : int
        How many such workers the pool keeps.
    cores_per_rank : int
        Cores reserved for each rank.
    gpus_per_rank : int
        GPUs given to each rank (``CUDA_VISIBLE_DEVICES``).
    ranks_per_node : int, optional
        Ranks placed on one node; by default as many as the node's cores allow.
    environment : dict, optional
        Extra environment of the worker ranks (``PYTHONPATH`` is prepended to
        the executor's own).
    pre_exec : list of str, optional
        Shell commands run before the worker starts (``module load ...``).
    pilot : str, optional
        Name of the :class:`PilotSpec` whose allocation the pool lives in;
        by default the executor's first pilot.
    pretend_gpus : bool
        Give ranks device ids even where the machine has no GPUs (tests,
        dry runs); without it a local pool asking for more GPUs than the
        machine has fails at ``start()``.
    """

    name: str = "default"
    ranks: int = 4
    workers: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: int = 0
    ranks_per_node: Optional[int] = None
    environment: Mapping[str, str] = field(default_factory=dict)
    pre_exec: Sequence[str] = ()
    pilot: Optional[str] = None
    pretend_gpus: bool = False

    def __post_init__(self) -> None:
        for key, minimum in (("ranks", 1), ("workers", 1), ("cores_per_rank", 1), ("gpus_per_rank", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"WorkerPool {self.name!r}: {key} must be an integer >= {minimum}, got {value!r}")
        if self.ranks_per_node is not None and self.ranks_per_node < 1:
            raise ValueError(f"WorkerPool {self.name!r}: ranks_per_node must be >= 1")

    @property
    def cores(self) -> int:
        return self.ranks * self.workers * self.cores_per_rank


@dataclass(frozen=True)
class PilotSpec:
    """One allocation: a laptop, a cloud VM, or a batch job on a supercomputer.

    Parameters
    ----------
    name : str
        Name pools refer to with ``WorkerPool(pilot=...)``.
    resource : str
        Radical Pilot resource label: ``local.localhost``, ``ornl.frontier``,
        ``anl.polaris``, ``tacc.frontera``, ... or a label defined in
        ``resource_config``.
    nodes : int, optional
        Nodes to request; by default the fewest that hold the pilot's pools
        (and its RAPTOR master).
    runtime : int
        Walltime in minutes.
    project, queue, access_schema : str, optional
        Account to charge, batch queue or partition, and RP access schema
        (``local``, ``ssh``, ``batch``, ...).
    resource_config : dict, optional
        Keys merged over the resource's packaged configuration, or a whole
        configuration for a new label (``cores_per_node``, ``gpus_per_node``,
        ``resource_manager``, ``launch_methods``, ``default_queue``, ...).
    options : dict, optional
        Further ``radical.pilot.PilotDescription`` keys.
    """

    name: str = "main"
    resource: str = "local.localhost"
    nodes: Optional[int] = None
    runtime: int = 24 * 60
    project: Optional[str] = None
    queue: Optional[str] = None
    access_schema: Optional[str] = None
    resource_config: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "." not in self.resource:
            raise ValueError(f"PilotSpec {self.name!r}: resource labels look like 'site.machine', "
                             f"got {self.resource!r}")
        if self.nodes is not None and (not isinstance(self.nodes, int) or self.nodes < 1):
            raise ValueError(f"PilotSpec {self.name!r}: nodes must be an integer >= 1, got {self.nodes!r}")
        if not isinstance(self.runtime, int) or self.runtime < 1:
            raise ValueError(f"PilotSpec {self.name!r}: runtime is in minutes and must be >= 1")

    @property
    def is_local(self) -> bool:
        return self.resource == "local.localhost"
