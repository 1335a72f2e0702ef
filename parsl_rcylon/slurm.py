"""A Slurm cluster described in its own terms, turned into a Radical Pilot resource configuration.

Radical Pilot knows machines through JSON resource configurations (a dozen
keys: schemas, resource manager, launch methods, virtualenv mode, ...).  A
site it does not ship one for is described here by what its users know --
partition, account, cores and GPUs per node, how ranks are launched -- and
:meth:`SlurmCluster.pilot` gives the :class:`~parsl_rcylon.resources.PilotSpec`
whose ``resource_config`` is the whole configuration.

What the configuration sets, and why (measured on a 2-node Slurm 22.05 cluster):

* ``SLURM_OVERLAP=1`` where ranks are launched: RP starts its 1-rank RAPTOR
  master as a job step; without overlap that step holds every CPU of its
  node and the workers' step waits PENDING for ever.
* ``SLURM_MPI_TYPE`` (``pmi="pmi2"``): ``srun`` without a PMI starts every
  rank as an MPI world of size 1.
* The client's virtualenv ``bin`` first on ``PATH`` where ranks are launched,
  when it holds an ``mpiexec`` (the ``mpich`` wheel's, which ``mpi4py`` was
  built against).
* ``network_interface``: the interface the agent (and, where this host has
  it, the client) advertises; by default RP takes the first non-loopback one.
"""
from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence

from .resources import PilotSpec

logger = logging.getLogger(__name__)

#: Radical Pilot launch methods that start MPI ranks under Slurm.
LAUNCH_METHODS = ("MPIEXEC", "SRUN")


class SlurmClusterError(ValueError):
    """A Slurm cluster description that cannot work (unknown launch method, no cores, ...)."""


@dataclass(frozen=True)
class SlurmCluster:
    """A Slurm cluster Radical Pilot does not ship a configuration for.

    Parameters
    ----------
    label : str
        Resource label for it, ``site.machine`` (``mysite.cluster``).
    cores_per_node, gpus_per_node : int
        Cores (as Slurm counts CPUs) and GPUs of one compute node.
    partition : str, optional
        Partition pilots are submitted to (``sbatch --partition``); Slurm's default if none.
    account : str, optional
        Account charged (``sbatch --account``).
    launch_method : {"MPIEXEC", "SRUN"}
        How RP starts a worker's ranks: MPICH's ``mpiexec`` (hydra, which
        itself uses ``srun`` inside the job) or ``srun`` directly.
    pmi : str
        PMI type ``srun`` gives ranks (``SLURM_MPI_TYPE``); ``pmi2`` suits
        MPICH.  ``srun --mpi=list`` on the site shows what it offers.
    network_interface : str, optional
        Interface the pilot's agent advertises to the client (``ib0``,
        ``hsn0``, ``lo`` on a one-machine test cluster).
    environment : dict, optional
        Variables exported where ranks are launched (an MPI transport, for example).
    pre_bootstrap : list of str, optional
        Shell lines the pilot job runs first (``module load ...``).
    workdir : str, optional
        Where pilot sandboxes go when the pilot names none (RP's
        ``default_remote_workdir``); the executor puts them under its run
        directory, which must be on a filesystem the nodes share.
    constraints : list of str, optional
        Node features the job asks for (``sbatch --constraint``, joined with ``&``).
    """

    label: str
    cores_per_node: int
    gpus_per_node: int = 0
    partition: Optional[str] = None
    account: Optional[str] = None
    launch_method: str = "MPIEXEC"
    pmi: str = "pmi2"
    network_interface: Optional[str] = None
    environment: Mapping[str, str] = field(default_factory=dict)
    pre_bootstrap: Sequence[str] = ()
    workdir: Optional[str] = None
    constraints: Sequence[str] = ()

    def __post_init__(self) -> None:
        if "." not in self.label:
            raise SlurmClusterError(f"SlurmCluster: labels look like 'site.machine', got {self.label!r}")
        if self.launch_method not in LAUNCH_METHODS:
            raise SlurmClusterError(f"SlurmCluster {self.label!r}: launch_method must be one of "
                                    f"{LAUNCH_METHODS}, got {self.launch_method!r}")
        if not isinstance(self.cores_per_node, int) or self.cores_per_node < 1:
            raise SlurmClusterError(f"SlurmCluster {self.label!r}: cores_per_node must be an integer >= 1, "
                                    f"got {self.cores_per_node!r}")
        if not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 0:
            raise SlurmClusterError(f"SlurmCluster {self.label!r}: gpus_per_node must be an integer >= 0, "
                                    f"got {self.gpus_per_node!r}")
        if not self.pmi or self.pmi == "none":
            raise SlurmClusterError(f"SlurmCluster {self.label!r}: pmi={self.pmi!r}: without a PMI every rank "
                                    "srun starts is an MPI world of size 1; give the site's (srun --mpi=list)")

    def launch_environment(self) -> Dict[str, str]:
        """Variables exported where ranks are launched (see the module's notes)."""
        env = {"SLURM_OVERLAP": "1", "SLURM_MPI_TYPE": self.pmi}
        env.update(self.environment)
        return env

    def resource_config(self) -> Dict[str, Any]:
        """The whole Radical Pilot resource configuration of this cluster."""
        lines = [f"export {key}={shlex.quote(str(value))}" for key, value in self.launch_environment().items()]
        cfg: Dict[str, Any] = {
            "description": f"Slurm cluster {self.label} (parsl_rcylon.slurm.SlurmCluster)",
            "default_schema": "local",
            "schemas": {"local": {"job_manager_endpoint": "slurm://localhost/",
                                  "filesystem_endpoint": "file://localhost/"}},
            "resource_manager": "SLURM",
            "agent_scheduler": "CONTINUOUS",
            "agent_spawner": "POPEN",
            "launch_methods": {"order": [self.launch_method], self.launch_method: {"pre_exec_cached": lines}},
            # The client's interpreter and packages, on the shared filesystem: nothing to install.
            "rp_version": "installed",
            "virtenv_mode": "local",
            "python_dist": "default",
            "cores_per_node": self.cores_per_node,
            "gpus_per_node": self.gpus_per_node,
            "default_remote_workdir": self.workdir or "$HOME",
            "pre_bootstrap_0": list(self.pre_bootstrap),
            "system_architecture": {"exclusive": True, "options": list(self.constraints)},
        }
        if self.partition:
            cfg["default_queue"] = self.partition
        if self.network_interface:
            cfg["network_interface"] = self.network_interface
        return cfg

    def pilot(self, name: str = "main", nodes: Optional[int] = None, runtime: int = 60,
              options: Optional[Mapping[str, Any]] = None) -> PilotSpec:
        """A pilot on this cluster: one ``sbatch`` job of ``nodes`` nodes (by default what the pools need)."""
        return PilotSpec(name=name, resource=self.label, nodes=nodes, runtime=runtime, project=self.account,
                         queue=self.partition, resource_config=self.resource_config(), options=dict(options or {}))


__all__ = ["LAUNCH_METHODS", "SlurmCluster", "SlurmClusterError"]
