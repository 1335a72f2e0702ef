"""Memory and disk of a pool's hosts, where known, and the advisory check of a task's ``memory``/``disk``.

Parsl's ``memory`` and ``disk`` keys (MB, the whole task) are checked here
against what the task's hosts have: on a local pilot the machine's memory and
the free space under the run directory; on a cluster what Radical Pilot's
resource configuration says per node (``mem_per_node``,
``lfs_size_per_node``), when it says anything.  Where nothing is known the
request is accepted.  Nothing enforces the figures while the task runs.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import psutil

from ...resources import PilotSpec, ResourceSpec
from .pilot import ResourceConfigError, resource_config

_MB = 1 << 20


@dataclass(frozen=True)
class HostCapacity:
    """What one host of a pilot has for tasks.

    Parameters
    ----------
    memory : int, optional
        MB of memory per host (``None``: not known).
    disk : int, optional
        MB of disk per host (``None``: not known).
    source : str
        Where the figures come from, for error messages.
    """

    memory: Optional[int]
    disk: Optional[int]
    source: str


def host_capacity(pilot: PilotSpec, local_dir: str) -> HostCapacity:
    """Memory and disk per host of ``pilot``: this machine's for a local pilot, RP's configuration otherwise."""
    if pilot.is_local:
        local_dir = os.path.abspath(local_dir)
        while not os.path.isdir(local_dir):  # the run directory may not exist yet: its filesystem does
            local_dir = os.path.dirname(local_dir)
        return HostCapacity(psutil.virtual_memory().total // _MB, shutil.disk_usage(local_dir).free // _MB,
                            f"this machine (memory; free disk under {local_dir})")
    try:
        cfg = resource_config(pilot)
    except ResourceConfigError:
        return HostCapacity(None, None, f"resource {pilot.resource}")
    return HostCapacity(int(cfg.get("mem_per_node") or 0) or None, int(cfg.get("lfs_size_per_node") or 0) or None,
                        f"resource {pilot.resource} (mem_per_node, lfs_size_per_node)")


def capacity_problem(spec: ResourceSpec, pools: Sequence[Tuple[str, Sequence[int], HostCapacity]]
                     ) -> Optional[Tuple[set, str]]:
    """Why no pool's hosts can hold ``spec``'s memory and disk, or ``None`` when one can (or nothing is known).

    ``pools`` are the pools whose ranks can run the task: name, ranks per
    host, and what a host has.  A task may use the memory of every host its
    ranks can be spread over (``num_nodes`` when given).
    """
    if spec.memory is None and spec.disk is None:
        return None
    problems = []
    for name, host_sizes, capacity in pools:
        hosts = spec.num_nodes or min(len(host_sizes), spec.ranks)
        short = [(key, need, have * hosts) for key, need, have in (("memory", spec.memory, capacity.memory),
                                                                  ("disk", spec.disk, capacity.disk))
                 if need is not None and have is not None and need > have * hosts]
        if not short:
            return None
        problems.append((short, f"pool {name!r}: " + ", ".join(
            f"{key}={need} MB exceeds the {have} MB of {hosts} host(s)" for key, need, have in short)
            + f" (per {capacity.source})"))
    keys = {key for short, _ in problems for key, _, _ in short}
    return keys, "; ".join(text for _, text in problems)


__all__ = ["HostCapacity", "capacity_problem", "host_capacity"]
