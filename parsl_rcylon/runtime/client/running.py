"""A task in the dispatcher's hands: its future, where it runs, which ranks still owe a report.

The dispatcher's loop owns every :class:`RunningTask`; what a task's ranks
report, and why no worker can hold it, are turned into the task's outcome
or exception here.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Set

from parsl.executors.errors import InvalidResourceSpecification
from parsl.serialize import deserialize

from ...errors import ResultError, WorkerLost
from ...resources import ResourceSpec
from ..wire.task import Task
from .placement import Placed, Placement


@dataclass
class RunningTask:
    """A submitted task until its future resolves and every rank it ran on has reported."""

    call: Task
    payload: bytes
    future: Future
    placed: Optional[Placed] = None
    pending_ranks: Set[int] = field(default_factory=set)
    failed_ranks: Set[int] = field(default_factory=set)  # said ERROR: past their user code, no CANCEL
    value: Optional[bytes] = None
    error: Optional[BaseException] = None
    deadline: Optional[float] = None   # time.monotonic() when its walltime ends
    settle_by: Optional[float] = None  # its other ranks must report by then, or their worker is replaced

    @property
    def uid(self) -> str:
        return self.call.uid

    @property
    def name(self) -> str:
        return self.call.name

    @property
    def spec(self) -> ResourceSpec:
        return self.call.spec

    def value_of(self) -> Any:
        """Rank 0's value, deserialized; :class:`ResultError` if it cannot be."""
        try:
            return deserialize(self.value)
        except Exception as exc:
            raise ResultError(None, f"result of task {self.uid} cannot be deserialized: {exc!r}") from None

    def rank_error(self, header: Dict[str, Any], blob: Optional[Any]) -> BaseException:
        """The exception a rank's failed report stands for."""
        if "setup_error" in header:
            return ResultError(None, f"task {self.uid}: rank {header['rank']} could not join the task's "
                                     f"communicator: {header['setup_error']}")
        if blob is None:
            return ResultError(None, f"task {self.uid}: rank {header['rank']} failed without saying why")
        try:
            wrapper = deserialize(bytes(blob))
            return wrapper.get_exception()
        except Exception as exc:
            return ResultError(None, f"task {self.uid}: rank {header['rank']} failed and its exception "
                                     f"could not be deserialized: {exc!r}")

    def cannot_hold(self, placement: Placement) -> BaseException:
        """Why no worker of ``placement`` takes this task: lost workers, or none ever could."""
        spec = self.spec
        if placement.accepts(spec, live=False):
            return WorkerLost(None, f"task {self.uid} needs {spec.ranks} ranks but the live pools are "
                                    f"{placement.pools()}")
        layouts = {w.uid: w.host_sizes() for w in placement.workers()}
        return InvalidResourceSpecification(
            {"ranks", "cores_per_rank"},
            f"task {self.uid} needs {spec.ranks} rank(s) of {spec.cores_per_rank} core(s) each, the cores "
            f"of each rank on one host; no worker can hold it (ranks per host: {layouts})")


__all__ = ["RunningTask"]
