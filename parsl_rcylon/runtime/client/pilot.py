"""Pilot descriptions: how many nodes a set of worker pools needs, on which machine.

Radical Pilot knows machines by resource label (``ornl.frontier``,
``anl.polaris``, ...) through the JSON configurations it ships; this module
reads those (plus the user's overrides), places each pool's ranks on nodes,
and builds the ``PilotDescription`` keys -- without submitting anything, so
the result can be checked on a laptop before a job waits in a queue.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from ...resources import PilotSpec, WorkerPool


class ResourceConfigError(ValueError):
    """A resource label is unknown, or its pools cannot be placed on its nodes."""


@dataclass(frozen=True)
class PoolPlacement:
    """How one pool's workers are laid out on nodes."""

    pool: str
    ranks_per_node: int
    nodes_per_worker: int
    nodes: int


def _configs_dir() -> Path:
    import radical.pilot as rp

    return Path(rp.__file__).parent / "configs"


def packaged_resource_config(label: str) -> Dict[str, Any]:
    """RP's shipped configuration of ``label``, or ``{}`` if RP has none."""
    import radical.utils as ru

    site, _, machine = label.partition(".")
    path = _configs_dir() / f"resource_{site}.json"
    if not path.exists():
        return {}
    return dict(ru.read_json(str(path)).get(machine) or {})


def known_resources() -> List[str]:
    """Every resource label RP ships a configuration for."""
    import radical.utils as ru

    labels = []
    for path in sorted(_configs_dir().glob("resource_*.json")):
        site = path.stem[len("resource_"):]
        labels.extend(f"{site}.{machine}" for machine in ru.read_json(str(path)))
    return labels


def resource_config(spec: PilotSpec) -> Dict[str, Any]:
    """The configuration RP will use for ``spec``: packaged keys with the user's merged over."""
    cfg = packaged_resource_config(spec.resource)
    cfg.update(spec.resource_config)
    if not cfg:
        raise ResourceConfigError(
            f"pilot {spec.name!r}: Radical Pilot has no configuration for resource {spec.resource!r}; "
            f"pass resource_config={{'cores_per_node': ..., 'gpus_per_node': ..., 'resource_manager': "
            f"'SLURM'|'PBSPRO'|..., 'launch_methods': ...}} or use a known label "
            f"(e.g. {', '.join(known_resources()[:8])}, ...)")
    return cfg


def usable_per_node(cfg: Mapping[str, Any]) -> tuple:
    """Cores and GPUs per node left to tasks once the system's reserved ones are taken out."""
    arch = cfg.get("system_architecture") or {}
    smt = int(arch.get("smt") or 1)
    cores = int(cfg.get("cores_per_node") or 0) - len(arch.get("blocked_cores") or []) // smt
    gpus = int(cfg.get("gpus_per_node") or 0) - len(arch.get("blocked_gpus") or [])
    return cores, gpus


def place_pools(spec: PilotSpec, pools: Sequence[WorkerPool], cfg: Mapping[str, Any]) -> List[PoolPlacement]:
    """Decide ranks per node and node counts for each pool of one pilot."""
    cores, gpus = usable_per_node(cfg)
    placements = []
    for pool in pools:
        if cores < pool.cores_per_rank:
            raise ResourceConfigError(f"pool {pool.name!r}: {pool.cores_per_rank} cores per rank, but nodes of "
                                      f"{spec.resource} have {cores} usable cores")
        if pool.gpus_per_rank > gpus and not pool.pretend_gpus:
            raise ResourceConfigError(f"pool {pool.name!r}: {pool.gpus_per_rank} GPUs per rank, but nodes of "
                                      f"{spec.resource} have {gpus} GPUs")
        fit = cores // pool.cores_per_rank
        if pool.gpus_per_rank and gpus:
            fit = min(fit, gpus // pool.gpus_per_rank)
        rpn = pool.ranks_per_node or min(pool.ranks, fit)
        if rpn > fit:
            raise ResourceConfigError(
                f"pool {pool.name!r}: {rpn} ranks per node need {rpn * pool.cores_per_rank} cores and "
                f"{rpn * pool.gpus_per_rank} GPUs; nodes of {spec.resource} have {cores} cores and {gpus} GPUs")
        per_worker = math.ceil(pool.ranks / rpn)
        placements.append(PoolPlacement(pool.name, rpn, per_worker, per_worker * pool.workers))
    return placements


def pilot_description(spec: PilotSpec, pools: Sequence[WorkerPool], sandbox: str) -> Dict[str, Any]:
    """``radical.pilot.PilotDescription`` keys for ``spec`` holding ``pools`` and one RAPTOR master."""
    pd: Dict[str, Any] = {
        "resource": spec.resource,
        "runtime": spec.runtime,
        "exit_on_error": False,
        "sandbox": sandbox,
    }
    if spec.is_local:
        # One fake node holds everything (see local_overrides).
        pd["cores"] = 1 + sum(p.cores for p in pools)
        pd["gpus"] = sum(p.gpus_per_rank * p.ranks * p.workers for p in pools)
    else:
        cfg = resource_config(spec)
        placements = place_pools(spec, pools, cfg)
        cores, _ = usable_per_node(cfg)
        nodes = sum(p.nodes for p in placements)
        spare = any(p.ranks_per_node * pool.cores_per_rank < cores for p, pool in zip(placements, pools, strict=True))
        nodes += 0 if spare else 1  # the RAPTOR master needs one core somewhere
        if spec.nodes is not None:
            if spec.nodes < nodes:
                raise ResourceConfigError(
                    f"pilot {spec.name!r}: pools {[p.pool for p in placements]} need {nodes} nodes of "
                    f"{spec.resource} ({', '.join(f'{p.pool}: {p.nodes}' for p in placements)}), "
                    f"but nodes={spec.nodes}")
            nodes = spec.nodes
        pd["nodes"] = nodes
        queue = spec.queue or cfg.get("default_queue")
        if queue:
            pd["queue"] = queue
    for key in ("project", "access_schema"):
        if getattr(spec, key):
            pd[key] = getattr(spec, key)
    if spec.queue:
        pd["queue"] = spec.queue
    pd.update(spec.options)
    return pd


def local_overrides(pools: Sequence[WorkerPool]) -> Dict[str, Any]:
    """Resource config for a local pilot: one fake node big enough for the master and all pools.

    A laptop is oversubscribed rather than refusing 4-rank tasks.
    """
    import os

    cores = 1 + sum(p.cores for p in pools)
    gpus = sum(p.gpus_per_rank * p.ranks * p.workers for p in pools)
    return {"cores_per_node": max(cores, os.cpu_count() or 1), "gpus_per_node": gpus, "fake_resources": True}


def worker_description(pool: WorkerPool, placement: PoolPlacement, local: bool) -> Dict[str, Any]:
    """Resource keys of one worker's RP task description."""
    td: Dict[str, Any] = {"ranks": pool.ranks, "cores_per_rank": pool.cores_per_rank}
    if not local:
        td["ranks_per_node"] = placement.ranks_per_node
    if pool.gpus_per_rank and not (local and pool.pretend_gpus):
        import radical.pilot as rp

        td["gpus_per_rank"] = pool.gpus_per_rank
        td["gpu_type"] = rp.CUDA
    return td
