"""The restart policy: whether a lost worker is replaced, and the name of its replacement.

Each worker is declared with what replacing it takes (its lineage: size, pool,
GPUs and cores per rank).  A lost worker is replaced unless its pool has
used ``max_worker_restarts`` replacements, or its pool's new workers failed
to start :data:`START_FAILURES` times in a row.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

logger = logging.getLogger(__name__)

#: A pool whose new workers fail to start this many times in a row gets no more.
START_FAILURES = 3


@dataclass(frozen=True)
class Lineage:
    """What a replacement for a worker needs."""

    size: int
    pool: str
    gpus_per_rank: int
    cores_per_rank: int


class RestartPolicy:
    """Counts replacements per pool and decides the next one.

    Parameters
    ----------
    max_worker_restarts : int, optional
        Replacements each pool may start over the run (``None``: no limit).
    """

    def __init__(self, max_worker_restarts: Optional[int] = None) -> None:
        self.max_worker_restarts = max_worker_restarts
        self._lineage: Dict[str, Lineage] = {}  # worker uid -> what replacing it takes
        self._start_failures: Dict[str, int] = {}  # pool -> new workers lost before ready, in a row
        self._restarts: Dict[str, int] = {}  # pool -> replacements started

    def declare(self, worker: str, lineage: Lineage) -> None:
        self._lineage[worker] = lineage

    def ready(self, pool: str) -> None:
        """A worker of ``pool`` started: its run of failed starts ends."""
        self._start_failures[pool] = 0

    def replacement(self, worker: str, was_ready: bool) -> Optional[Tuple[str, Lineage]]:
        """The uid and lineage of the worker to start in place of lost ``worker``, or ``None``."""
        lineage = self._lineage.pop(worker, None)
        if lineage is None:
            return None
        pool = lineage.pool
        if not was_ready:
            self._start_failures[pool] = self._start_failures.get(pool, 0) + 1
        if self._start_failures.get(pool, 0) >= START_FAILURES:
            logger.error("pool %s: %d new workers in a row failed to start; starting no more", pool, START_FAILURES)
            return None
        if self.max_worker_restarts is not None and self._restarts.get(pool, 0) >= self.max_worker_restarts:
            logger.error("pool %s: max_worker_restarts=%d reached; not replacing %s", pool,
                         self.max_worker_restarts, worker)
            return None
        self._restarts[pool] = self._restarts.get(pool, 0) + 1
        return f"{worker.split('~')[0]}~{self._restarts[pool]}", lineage

    def restarts(self) -> Dict[str, int]:
        """Replacements started so far, by pool."""
        return dict(self._restarts)


def start_replacement(old: str, new: str, on_replace: Callable[[str, str], None],
                      on_failure: Callable[[str, str], None]) -> None:
    """Call ``on_replace(old, new)`` in a thread of its own; ``on_failure(new, why)`` if it raises."""
    def run() -> None:
        try:
            on_replace(old, new)
        except Exception as exc:
            logger.exception("could not start %s to replace %s", new, old)
            on_failure(new, f"could not be started: {exc!r}")

    logger.info("starting worker %s to replace %s", new, old)
    threading.Thread(target=run, name="rcylon-replace", daemon=True).start()


__all__ = ["Lineage", "RestartPolicy", "START_FAILURES", "start_replacement"]
