"""Bridge to pycylon, for users who have it."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "pycylon (the Cylon C++ engine's Python binding) is not installable from PyPI. "
    "Get it from conda (`conda install -c cylondata pycylon`, in an environment whose pyarrow "
    "matches the one pycylon was built with) or build it from source "
    "(https://github.com/cylondata/cylon, `python build.py --python --cpp`). "
    "parsl_rcylon's own engine (ctx.join, ctx.sort, ctx.groupby, ...) needs none of it."
)


def cylon_env(comm: MPI.Intracomm) -> Any:
    """A pycylon ``CylonEnv`` bound to this task's communicator.

    pycylon's ``MPIConfig`` takes an mpi4py communicator in recent Cylon
    releases (``MPIConfig(comm)``); the environment then runs Cylon's
    operators over exactly the task's ranks, next to other tasks on the same
    worker.  Since mpi4py initialised MPI, Cylon does not finalise it.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator.

    Returns
    -------
    pycylon.CylonEnv
        ``CylonEnv(config=MPIConfig(comm), distributed=True)``.

    Raises
    ------
    ImportError
        When pycylon cannot be imported, saying how to get it.
    RuntimeError
        When the installed pycylon's ``MPIConfig`` cannot take a communicator
        (older releases bind to ``MPI_COMM_WORLD`` only), unless ``comm`` spans
        the whole world anyway.
    """
    from mpi4py import MPI

    try:
        from pycylon import CylonEnv
        from pycylon.net import MPIConfig
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    try:
        config = MPIConfig(comm)
    except TypeError as exc:
        # Old pycylon: MPIConfig() always means MPI_COMM_WORLD.  That is only right
        # when the task's communicator is congruent with the world.
        if comm.Get_size() > 1 and MPI.Comm.Compare(comm, MPI.COMM_WORLD) in (MPI.IDENT, MPI.CONGRUENT):
            logger.warning("pycylon's MPIConfig takes no communicator; using MPI_COMM_WORLD")
            config = MPIConfig()
        else:
            raise RuntimeError(
                "this pycylon's MPIConfig cannot be bound to a task's communicator "
                f"({exc}); upgrade to a Cylon release whose MPIConfig accepts an mpi4py communicator"
            ) from exc
    return CylonEnv(config=config, distributed=True)


__all__ = ["cylon_env", "INSTALL_HINT"]
