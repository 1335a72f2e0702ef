"""Resource specifications of tasks: how many ranks, cores and GPUs each needs.

The keys follow Parsl's common vocabulary (Work Queue, TaskVine, HTEX's MPI
mode), each with one meaning here:

=====================  ==============================================================
key                    meaning
=====================  ==============================================================
``ranks``              MPI ranks of the task (``num_ranks`` is the same key)
``num_nodes``          hosts the ranks are spread over, ``ranks_per_node`` on each
``ranks_per_node``     ranks on each of those hosts (with ``num_ranks``, gives ``num_nodes``)
``cores_per_rank``     cores each rank holds (``ctx.cores``)
``cores``              cores of the whole task: ``ranks * cores_per_rank``
``gpus_per_rank``      GPUs each rank sees
``gpus``               GPUs of the whole task: ``ranks * gpus_per_rank``
``memory``             MB the task needs: checked against its hosts' memory where known
``disk``               MB of disk the task needs: checked where known
``walltime``           seconds the task may run (``TaskTimeout`` after)
``running_time_min``   the same limit in minutes
``priority``           order among waiting tasks: lower runs first, none runs last (as HTEX)
``pool``               the worker pool the task must run in
=====================  ==============================================================

A request no pool can ever satisfy is refused with
``InvalidResourceSpecification`` when the app is called; an unknown key
raises listing the known ones.  ``memory`` and ``disk`` are advisory: nothing
stops a task from using more (``docs/resources.md``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence

from parsl.executors.errors import InvalidResourceSpecification

#: Keys a ``parsl_resource_specification`` may hold for this executor.
KNOWN_KEYS = frozenset({"ranks", "num_ranks", "num_nodes", "ranks_per_node", "cores", "cores_per_rank", "gpus",
                        "gpus_per_rank", "memory", "disk", "walltime", "running_time_min", "priority", "pool"})
#: Keys that say the same thing in other words; one of each group decides (an override replaces the group).
_SAME_MEANING = ({"ranks", "num_ranks"}, {"cores", "cores_per_rank"}, {"gpus", "gpus_per_rank"},
                 {"walltime", "running_time_min"})
_RANK_SHAPE = {"ranks", "num_ranks", "num_nodes", "ranks_per_node"}


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
    walltime : float, optional
        Seconds the task may run before it is stopped and fails with
        ``TaskTimeout`` (its ranks are freed, or their worker replaced).
    num_nodes, ranks_per_node : int, optional
        Spread the ranks over exactly ``num_nodes`` hosts, ``ranks_per_node``
        on each (both set or neither; ``ranks = num_nodes * ranks_per_node``).
    memory, disk : int, optional
        MB of memory and of disk the whole task needs (advisory).
    priority : float, optional
        Lower values start first among waiting tasks; tasks without one
        wait behind every task with one.
    """

    ranks: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: int = 0
    pool: Optional[str] = None
    walltime: Optional[float] = None
    num_nodes: Optional[int] = None
    ranks_per_node: Optional[int] = None
    memory: Optional[int] = None
    disk: Optional[int] = None
    priority: Optional[float] = None

    @classmethod
    def from_mapping(cls, spec: Optional[Mapping[str, Any]], where: str = "task") -> ResourceSpec:
        """Validate a user's mapping and build a spec; raise on any bad key or value."""
        spec = dict(spec or {})
        unknown = set(spec) - KNOWN_KEYS
        if unknown:
            raise InvalidResourceSpecification(
                unknown, f"{where}: unknown key(s) {sorted(unknown)}; known keys are {sorted(KNOWN_KEYS)}"
            )
        for key, minimum in (("ranks", 1), ("num_ranks", 1), ("num_nodes", 1), ("ranks_per_node", 1),
                             ("cores", 1), ("cores_per_rank", 1), ("gpus", 0), ("gpus_per_rank", 0),
                             ("memory", 0), ("disk", 0)):
            if key in spec and spec[key] is not None:
                _check_int(spec[key], key, minimum, where)
        ranks = _same(spec, "ranks", "num_ranks", where)
        nodes, per_node = spec.get("num_nodes"), spec.get("ranks_per_node")
        ranks, nodes, per_node = _rank_shape(ranks, nodes, per_node, where)
        values: Dict[str, Any] = {"ranks": ranks, "num_nodes": nodes, "ranks_per_node": per_node}
        for total, each in (("cores", "cores_per_rank"), ("gpus", "gpus_per_rank")):
            per_rank = spec.get(each)
            if spec.get(total) is not None:
                if spec[total] % ranks:
                    raise InvalidResourceSpecification(
                        {total}, f"{where}: {total}={spec[total]} cannot be shared evenly by {ranks} rank(s); "
                                 f"{total} counts the whole task ({total} = ranks * {each})")
                if per_rank is not None and per_rank * ranks != spec[total]:
                    raise InvalidResourceSpecification(
                        {total, each}, f"{where}: {total}={spec[total]} and {each}={per_rank} disagree for "
                                       f"{ranks} rank(s)")
                per_rank = spec[total] // ranks
            if per_rank is not None:
                values[each] = per_rank
        pool = spec.get("pool")
        if pool is not None and not isinstance(pool, str):
            raise InvalidResourceSpecification({"pool"}, f"{where}: pool must be a name, got {pool!r}")
        for key in ("walltime", "running_time_min", "priority"):
            value = spec.get(key)
            positive = key != "priority"
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or (positive and not value > 0)):
                what = "a positive number of " + ("seconds" if key == "walltime" else "minutes") if positive \
                    else "a number (lower runs first)"
                raise InvalidResourceSpecification({key}, f"{where}: {key} must be {what}, got {value!r}")
        walltime = spec.get("walltime")
        if spec.get("running_time_min") is not None:
            minutes = spec["running_time_min"] * 60
            if walltime is not None and walltime != minutes:
                raise InvalidResourceSpecification(
                    {"walltime", "running_time_min"},
                    f"{where}: walltime={walltime} s and running_time_min={spec['running_time_min']} disagree")
            walltime = minutes
        return cls(pool=pool, walltime=walltime, memory=spec.get("memory"), disk=spec.get("disk"),
                   priority=spec.get("priority"), **{k: v for k, v in values.items() if v is not None})

    def merged(self, override: Mapping[str, Any], where: str = "task") -> ResourceSpec:
        """This spec with ``override``'s keys in force (a call's ``parsl_resource_specification``).

        A key replaces every key of the same meaning (``num_ranks`` replaces
        ``ranks``, ``cores`` replaces ``cores_per_rank``, ...); a new rank
        count or node shape replaces the old shape.
        """
        base = self.as_dict()
        given = set(override)
        for group in _SAME_MEANING:
            if given & group:
                for key in group:
                    base.pop(key, None)
        if given & _RANK_SHAPE:
            base.pop("num_nodes", None)
            base.pop("ranks_per_node", None)
            if {"num_nodes", "ranks_per_node"} <= given:
                base.pop("ranks", None)
        return ResourceSpec.from_mapping({**base, **override}, where=where)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _check_int(value: Any, key: str, minimum: int, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidResourceSpecification({key}, f"{where}: {key} must be an integer >= {minimum}, got {value!r}")


def _same(spec: Mapping[str, Any], key: str, alias: str, where: str) -> Optional[int]:
    if spec.get(key) is not None and spec.get(alias) is not None and spec[key] != spec[alias]:
        raise InvalidResourceSpecification({key, alias}, f"{where}: {key} and {alias} disagree")
    return spec.get(key) if spec.get(key) is not None else spec.get(alias)


def _rank_shape(ranks: Optional[int], nodes: Optional[int], per_node: Optional[int],
                where: str) -> tuple:
    """Ranks, hosts and ranks per host, from any of them (as Parsl's MPI mode derives the third)."""
    if nodes is None and per_node is None:
        return ranks or 1, None, None
    if nodes is not None and per_node is not None:
        if ranks is not None and ranks != nodes * per_node:
            raise InvalidResourceSpecification(
                {"num_ranks", "num_nodes", "ranks_per_node"},
                f"{where}: num_ranks={ranks} is not num_nodes * ranks_per_node = {nodes} * {per_node}")
        return nodes * per_node, nodes, per_node
    ranks = ranks or (nodes if nodes is not None else per_node)
    key, given = ("num_nodes", nodes) if nodes is not None else ("ranks_per_node", per_node)
    if ranks % given:
        raise InvalidResourceSpecification(
            {"num_ranks", key}, f"{where}: {ranks} rank(s) cannot be spread evenly with {key}={given}")
    return (ranks, nodes, ranks // nodes) if nodes is not None else (ranks, ranks // per_node, per_node)


def resource_keywords(options: Dict[str, Any]) -> Dict[str, Any]:
    """Take the resource keys out of a decorator's keyword ``options`` (they are not table options).

    ``walltime`` stays: it is also a task option (``ctx.options.walltime``).
    """
    return {k: options.pop(k) for k in list(options) if k in KNOWN_KEYS and k != "walltime"}


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
