"""Whether a worker's ranks were started with a PMI, so that they form one MPI world.

``srun`` without a PMI (``--mpi=none``, a site's ``MpiDefault=none``) starts
every rank as an MPI world of size 1: each rank of a worker would then think
it is the whole worker and none would ever meet the others.  Slurm says how
many tasks it started (``SLURM_STEP_NUM_TASKS``) and a PMI leaves its marks in
the environment (``PMI_SIZE``, ``PMI_FD``, ``PMIX_RANK``); a world of 1 with
neither is that mistake, and the worker fails at once saying so.
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional

logger = logging.getLogger(__name__)

#: Variables a PMI (hydra's, Slurm's pmi2, PMIx) gives each rank it starts.
PMI_MARKS = ("PMI_SIZE", "PMI_FD", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")


class MissingPMI(RuntimeError):
    """``srun`` started the ranks of one worker without a PMI: each is an MPI world of size 1."""


def missing_pmi(world_size: int, env: Mapping[str, str]) -> Optional[str]:
    """Why a rank of an MPI world of ``world_size`` was started without a PMI, or ``None``."""
    try:
        tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    except ValueError:
        return None
    if world_size != 1 or tasks <= 1 or any(env.get(k) for k in PMI_MARKS):
        return None
    return (f"srun started {tasks} ranks of this worker, but each is an MPI world of size 1: srun gave them no "
            f"PMI (SLURM_MPI_TYPE={env.get('SLURM_MPI_TYPE', 'unset')}, or the site's MpiDefault=none). "
            "Give the PMI type (SlurmCluster(pmi='pmi2'), SLURM_MPI_TYPE=pmi2; `srun --mpi=list` shows the "
            "site's) or launch with MPIEXEC")
