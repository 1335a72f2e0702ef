"""Agreeing before a collective: every rank learns whether every other rank is ready.

:func:`agree` runs a rank's local step (validation, a read, a write) and lets
every rank learn every other rank's outcome with one small ``allgather``, so a
failure on one rank raises an error on all ranks instead of leaving the others
waiting in the next collective.  The engine's operations agree before they move
data; the table hand-off agrees before a task's function runs and while it
commits the task's result.

Nothing here imports mpi4py: the communicator is only called, so the table
layer can use this module in processes that never initialise MPI.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

from .errors import ERROR_CLASSES, EngineError, RankFailedError


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class Consensus:
    """What :func:`agree` learned from all ranks.

    Attributes
    ----------
    metas : list
        The value each rank's local step returned, indexed by rank.
    node_ranks : int
        How many ranks of the communicator share this rank's host.
    """

    metas: List[Any]
    node_ranks: int

    @property
    def cores(self) -> int:
        """This rank's fair share of its host's cores (at least 1).

        Ranks on one host already keep its cores busy, so each gets its share;
        a rank pinned to fewer cores than the host has counts only its own.
        """
        cpus = _cpu_count()
        share = cpus if cpus < (os.cpu_count() or cpus) else cpus // max(1, self.node_ranks)
        return max(1, share)

    @property
    def use_threads(self) -> bool:
        """Whether Arrow's thread pool may be used without oversubscribing the host."""
        return self.cores >= 2


@dataclass(frozen=True)
class RankFailure:
    """One rank's failed local step, as every rank sees it.

    Attributes
    ----------
    rank : int
        The rank that failed.
    kind : str
        The class name of the exception it raised.
    message : str
        The exception's text.
    expected : bool
        Whether the exception belongs to the caller's own error family
        (``expected`` of :func:`agree`), rather than being a surprise.
    """

    rank: int
    kind: str
    message: str
    expected: bool

    @property
    def text(self) -> str:
        """``Kind: message``, the way an error from another rank is quoted."""
        return f"{self.kind}: {self.message}"


#: Builds the exception every rank raises from all ranks' failures (lowest rank
#: first) and this rank's own exception (None where this rank succeeded).
Explain = Callable[[Sequence[RankFailure], Optional[BaseException]], BaseException]


def format_ranks(ranks: Sequence[int], size: int) -> str:
    """``rank 2`` / ``ranks 0, 3`` / ``all 4 ranks`` for error messages."""
    ranks = sorted(ranks)
    if size > 1 and len(ranks) == size:
        return f"all {size} ranks"
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return "ranks " + ", ".join(str(r) for r in ranks)


def engine_error(op: str, size: int) -> Explain:
    """The engine's rule: the class the lowest failing rank raised, with every failing rank's message.

    Engine errors travel by class name (:data:`~.errors.ERROR_CLASSES`); any
    other exception becomes a :class:`~.errors.RankFailedError` quoting it.
    Ranks that failed alike are listed once: ``join: <message> [ranks 1, 3]``.
    """

    def explain(failures: Sequence[RankFailure], own: Optional[BaseException]) -> BaseException:
        first = failures[0]
        cls = ERROR_CLASSES.get(first.kind, EngineError) if first.expected else RankFailedError
        by_message: dict = {}
        for failure in failures:
            message = failure.message if failure.expected else failure.text
            by_message.setdefault(message, []).append(failure.rank)
        text = "; ".join(f"{msg} [{format_ranks(ranks, size)}]" for msg, ranks in by_message.items())
        return cls(f"{op}: {text}")

    return explain


def agree(comm: Any, op: str, local: Callable[[], Any], explain: Optional[Explain] = None,
          expected: type = EngineError) -> Consensus:
    """Run ``local()`` on every rank and raise on all ranks if it failed on any.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The communicator (anything with ``allgather`` and ``Get_size``).
    op : str
        Operation name, the prefix of the engine's error messages.
    local : callable
        This rank's step; returns small, picklable metadata.
    explain : callable, optional
        Builds the exception to raise from the failures; by default
        :func:`engine_error`.  When it returns this rank's own exception,
        that exception is raised as it is.
    expected : type
        The caller's own error base class (see :attr:`RankFailure.expected`).

    Returns
    -------
    Consensus
        Every rank's metadata and the number of ranks on this host.

    Raises
    ------
    Exception
        What ``explain`` builds; with the default, the :class:`EngineError`
        class the lowest failing rank raised (a :class:`RankFailedError` for
        an unexpected exception), with the messages of all failing ranks.
    """
    own: Optional[BaseException] = None
    try:
        payload: Any = (True, local())
    except Exception as exc:  # noqa: BLE001 - any failure must reach the other ranks
        own = exc
        payload = (False, (type(exc).__name__, str(exc), isinstance(exc, expected)))
    host = socket.gethostname()
    gathered = comm.allgather((host, payload))
    failures = [RankFailure(rank, *item[1][1]) for rank, item in enumerate(gathered) if not item[1][0]]
    if failures:
        error = (explain or engine_error(op, comm.Get_size()))(failures, own)
        if error is own:
            raise error
        raise error from own
    node_ranks = sum(1 for h, _ in gathered if h == host)
    return Consensus(metas=[item[1][1] for item in gathered], node_ranks=node_ranks)


__all__ = ["agree", "Consensus", "RankFailure", "engine_error", "format_ranks"]
