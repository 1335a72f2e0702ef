"""The pilots an executor starts itself: session, dispatcher and process hygiene, started and ended in order.

:class:`OwnPilots` is what ``RadicalCylonExecutor.start()`` does when it does
not attach to a pilot server: it opens the Radical Pilot session
(:class:`~.session.PilotRuntime`), binds the dispatcher, starts the guard
(:class:`~.hygiene.ClientHygiene`), submits the pilots and waits for every
worker rank; :meth:`OwnPilots.close` ends them in the reverse order.
"""
from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from ...resources import PilotSpec, WorkerPool
from ..wire.channel import ChannelOptions, bind_address
from . import config as rp_config
from .dispatcher import Dispatcher
from .gpus import missing_local_gpus
from .hygiene import ClientHygiene
from .session import PilotRuntime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Liveness:
    """How the executor and its pilot's processes watch each other, and how much recovery they get.

    Parameters are the executor's keywords of the same names (see ``RadicalCylonExecutor``).
    """

    heartbeat_period: float = 2.0
    heartbeat_threshold: float = 30.0
    rank_timeout: float = 120.0
    start_timeout: float = 300.0
    cancel_grace: float = 3.0
    max_worker_restarts: Optional[int] = None
    #: The most heartbeats the executor sends a second: it heartbeats one rank per worker per host (and each
    #: master), every ``heartbeat_period`` up to this many hosts per second, beyond it less often (at most
    #: a third of ``heartbeat_threshold`` or ``rank_timeout`` apart), which bounds its liveness CPU.
    max_heartbeats_per_s: float = 1000.0

    def __post_init__(self) -> None:
        if self.rank_timeout <= self.heartbeat_period:
            raise ValueError(f"rank_timeout ({self.rank_timeout} s) must exceed heartbeat_period "
                             f"({self.heartbeat_period} s)")
        if self.max_heartbeats_per_s <= 0:
            raise ValueError(f"max_heartbeats_per_s must be positive, got {self.max_heartbeats_per_s}")
        if self.cancel_grace <= 0:
            raise ValueError(f"cancel_grace must be positive, got {self.cancel_grace}")
        if self.max_worker_restarts is not None and self.max_worker_restarts < 0:
            raise ValueError(f"max_worker_restarts must be >= 0 or None, got {self.max_worker_restarts}")


class PilotStartError(RuntimeError):
    """The pilots did not start; the message says why (RP's logs read where they tell)."""


class OwnPilots:
    """An executor's own pilots, from session to ready ranks, and back.

    Parameters
    ----------
    label : str
        The executor's label.
    base_dir : path
        Where every Radical Pilot artifact of the executor goes.
    pilots : sequence of PilotSpec
        The pilots to start.
    pools : mapping
        Pools of each pilot, by pilot name.
    liveness : Liveness
        Heartbeats, timeouts and restarts.
    channel : ChannelOptions
        The dispatcher's channel.
    address : str, optional
        Address ranks connect to (default: ``127.0.0.1`` for local pilots, this host's name otherwise).
    timings : dict
        Seconds of each start-up step are recorded here.
    """

    def __init__(self, label: str, base_dir: Path, pilots: Sequence[PilotSpec],
                 pools: Mapping[str, Sequence[WorkerPool]],
                 liveness: Liveness, channel: ChannelOptions, address: Optional[str],
                 timings: Dict[str, float]) -> None:
        self.label = label
        self.liveness = liveness
        self.runtime = PilotRuntime(label, list(pilots), {name: list(p) for name, p in pools.items()}, base_dir,
                                    liveness.heartbeat_period, liveness.heartbeat_threshold, timings)
        self.runtime.prepare()
        local = all(p.is_local for p in pilots)
        bind = bind_address(address, local)
        advertised = address or ("127.0.0.1" if local else socket.getfqdn())
        self.dispatcher = Dispatcher(base_dir, bind, advertised, heartbeat_period=liveness.heartbeat_period,
                                     rank_timeout=liveness.rank_timeout, cancel_grace=liveness.cancel_grace,
                                     channel=channel, max_worker_restarts=liveness.max_worker_restarts,
                                     heartbeat_threshold=liveness.heartbeat_threshold,
                                     max_heartbeats_per_s=liveness.max_heartbeats_per_s)
        self.hygiene = ClientHygiene(label, base_dir, timings)

    @staticmethod
    def preflight(pilots: Sequence[PilotSpec], pools: Mapping[str, Sequence[WorkerPool]]) -> None:
        """Fail before anything starts: an unsupported Radical Pilot, local pools asking for GPUs this machine lacks."""
        rp_config.check_radical_version()
        shortfall = missing_local_gpus(p for spec in pilots if spec.is_local for p in pools[spec.name])
        if shortfall:
            raise PilotStartError(shortfall)

    @property
    def session_id(self) -> Optional[str]:
        return self.runtime.session_id

    def start(self, descriptions: Mapping[str, Dict[str, Any]], started: float,
              on_exit: Callable[[], None]) -> None:
        """Open the session, start the guard and the pilots; return when every rank is ready.

        ``on_exit`` is registered to run at interpreter exit (the executor's
        shutdown).  Raises :class:`PilotStartError` with the reason, or
        ``KeyboardInterrupt`` as it came; the caller shuts down.
        """
        self.dispatcher.start()
        self.hygiene.register_atexit(on_exit)
        try:
            # The guard watches from before the session's first fork: a client killed inside rp.Session()
            # leaves nothing running either.
            self.hygiene.start_guard(self.runtime.choose_session_id())
            with self.hygiene.watch_forks():
                self.runtime.open_session(started=started)
            left = max(1.0, self.liveness.start_timeout - (time.monotonic() - started))
            self.runtime.launch(self.dispatcher, descriptions, left)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            reason = self.runtime.explain(exc)
            logger.error("%s: start failed: %s", self.label, reason)
            raise PilotStartError(reason) from exc

    def stop_watching(self) -> None:
        """Stop reacting to RP's state callbacks (shutdown is about to end the pilots)."""
        self.runtime.stop_watching()

    def close(self) -> None:
        """Close the session and end what RP left behind (after the dispatcher stopped)."""
        sid = self.runtime.session_id
        self.runtime.close()
        self.hygiene.close(sid)


__all__ = ["Liveness", "OwnPilots", "PilotStartError"]
