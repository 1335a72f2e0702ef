"""A lean Radical Pilot start-up: what the pilot does not need to start, and where its seconds go.

Measured with RP 1.103 on a 2-core machine, a stock pilot spends seconds on
things this executor never uses:

* Profiling: every RP process writes ``.prof`` files (clock sync, one line
  per event).  It is off unless ``RCYLON_RP_PROFILE=1`` asks for it (to read
  RP's own timeline of a slow start).  With it off RP unsets ``RP_PROF_TGT``
  in task launch scripts, and RAPTOR's ``MPIWorker`` reads it unconditionally
  (``KeyError('RP_PROF_TGT')``), so workers get ``/dev/null``.
* Bridges: the agent starts each of its ZeroMQ bridges as a process, one
  after another, each polled every 0.25 s until it reports.  Four of the
  twelve serve nothing here: ``raptor_scheduling_queue`` and
  ``agent_schedule_pubsub`` have no producer or consumer in RP 1.103, and
  ``client_pubsub``/``client_queue`` serve ``rp.Client``, which the
  executor does not use.  The lean agent configuration leaves them out.
* RAPTOR's "let ZMQ settle" sleeps of one second in the master and in every
  worker rank before registration (:func:`settle`).

:class:`PilotTimeline` records when each pilot state was reached, and when the
bootstrap handed over to the agent, so a start can be split into
session, managers, bootstrap, agent, and master/workers ready.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from .layout import sandbox_path

logger = logging.getLogger(__name__)

#: Set to 1 to keep Radical Pilot's profiling (``.prof`` files in every sandbox).
ENV_PROFILE = "RCYLON_RP_PROFILE"

#: Bridges and components of the agent this executor needs (RP 1.103's default minus unused bridges).
LEAN_AGENT_CONFIG: Dict[str, Any] = {
    "target": "local",
    "mode": "shared",
    "heartbeat": {"interval": 10.0, "timeout": 600.0},
    "bridges": {
        "agent_staging_input_queue": {"kind": "queue"},
        "agent_scheduling_queue": {"kind": "queue"},
        "agent_executing_queue": {"kind": "queue"},
        "agent_staging_output_queue": {"kind": "queue"},
        "agent_collecting_queue": {"kind": "queue"},
        "agent_unschedule_pubsub": {"kind": "pubsub"},
        "control_pubsub": {"kind": "pubsub"},
        "state_pubsub": {"kind": "pubsub"},
    },
    "components": {
        "agent_staging_input": {"count": 1},
        "agent_scheduling": {"count": 1},
        "agent_executing": {"count": 1},
        "agent_staging_output": {"count": 1},
    },
}

#: Longest "let ZMQ settle" pause kept in RAPTOR's master and worker start-up.  A registration
#: lost to a pubsub not yet connected is sent again by RAPTOR after 5 s, so this is not zero.
SETTLE_S = 0.2


def profiling() -> bool:
    """Whether RP's profiling was asked for (``RCYLON_RP_PROFILE=1``)."""
    return os.environ.get(ENV_PROFILE, "").lower() in ("1", "true", "yes", "on")


def client_environment() -> Dict[str, str]:
    """Variables the client sets before the session opens (RP forwards ``RADICAL_*`` to the pilot)."""
    return {} if profiling() else {"RADICAL_PROFILE": "False"}


def task_environment() -> Dict[str, str]:
    """Variables every master and worker task gets."""
    return {} if profiling() else {"RP_PROF_TGT": os.devnull}


#: Name of the lean agent configuration (RP reads ``agent_<name>.json`` from the user config dir).
AGENT_CONFIG_NAME = "rcylon"


def resource_keys() -> Dict[str, Any]:
    """Keys merged into a resource configuration for a lean agent (see :func:`write_agent_config`)."""
    return {"agent_config": AGENT_CONFIG_NAME}


def write_agent_config(config_dir: Path) -> Path:
    """Write the lean agent configuration where RP looks for named ones.

    A resource configuration may name an agent configuration or hold one
    inline; RP 1.103 drops the bridges and components of an inline one (the
    agent then fails with ``KeyError: 'bridges'``), so it is written as a
    named file.
    """
    path = Path(config_dir) / ".radical" / "pilot" / "configs" / f"agent_{AGENT_CONFIG_NAME}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(LEAN_AGENT_CONFIG, indent=2))
    return path


class _CappedTime:
    """``time`` for one RAPTOR module whose ``sleep`` never pauses longer than ``cap``."""

    def __init__(self, real: Any, cap: float) -> None:
        self._real = real
        self._cap = cap

    def sleep(self, seconds: float) -> None:
        self._real.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextlib.contextmanager
def settle(module: Any, cap: float = SETTLE_S) -> Iterator[None]:
    """Cap ``module``'s ``time.sleep`` while the body runs (RAPTOR's start-up in a subclass' ``__init__``).

    Only the module's own name ``time`` is replaced, and only in this
    process (a master or a worker rank), so sleeps after start-up (the
    heartbeat loops) keep their length.
    """
    real = module.time
    module.time = _CappedTime(real, cap)
    try:
        yield
    finally:
        module.time = real


class PilotTimeline:
    """When a pilot reached each state (``time.time()``), and when its agent process began.

    Attach :meth:`pilot_cb` to the pilot manager before submitting.
    """

    def __init__(self) -> None:
        self.submitted: Optional[float] = None
        self.states: Dict[str, float] = {}
        self._sandbox: Optional[Path] = None

    def pilot_cb(self, pilot: Any, state: str) -> None:
        self.states.setdefault(state, time.time())
        if self._sandbox is None:
            self._sandbox = sandbox_path(pilot)

    def agent_started(self) -> Optional[float]:
        """When the bootstrap handed over to the agent: it writes ``bootstrap_2.sh`` just before."""
        if self._sandbox is None:
            return None
        try:
            return (self._sandbox / "bootstrap_2.sh").stat().st_mtime
        except OSError:
            return None

    def breakdown(self) -> Dict[str, float]:
        """Seconds of ``bootstrap`` (submitted to agent start) and ``agent`` (agent start to active)."""
        out: Dict[str, float] = {}
        active = self.states.get("PMGR_ACTIVE")
        agent = self.agent_started()
        if self.submitted and agent and active:
            out["bootstrap"] = agent - self.submitted
            out["agent"] = active - agent
        return out
