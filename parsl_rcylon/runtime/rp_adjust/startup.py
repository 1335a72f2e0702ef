"""The start-up adjustments: a lean agent, and RAPTOR's settle sleeps capped (measured in docs/design.md).

:data:`LEAN_AGENT_CONFIG` leaves out the agent's bridges that serve nothing
here; :func:`settle` caps RAPTOR's "let ZMQ settle" pauses.  Profiling (off
unless asked) is in ``environment``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from .environment import pre_bootstrap

logger = logging.getLogger(__name__)

#: Name of the lean agent configuration (RP reads ``agent_<name>.json`` from the user config dir).
AGENT_CONFIG_NAME = "rcylon"

#: Bridges and components of the agent this executor needs.  RP: the agent starts each of its
#: ZeroMQ bridges as a process, one after another, each polled every 0.25 s until it reports.
#: Changed: four of RP 1.103's twelve serve nothing here and are left out
#: (``raptor_scheduling_queue`` and ``agent_schedule_pubsub`` have no producer or consumer in RP
#: 1.103; ``client_pubsub``/``client_queue`` serve ``rp.Client``, which the executor does not use).
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


def resource_keys(local: bool = True, base: Optional[Path] = None) -> Dict[str, Any]:
    """Keys merged into a resource configuration of this project's pilots (``base``: the run directory)."""
    return {"agent_config": AGENT_CONFIG_NAME, "pre_bootstrap_0": pre_bootstrap(local, base)}


def write_agent_config(config_dir: Path) -> Path:
    """Write the lean agent configuration where RP looks for named ones.

    A resource configuration may name an agent configuration or hold one
    inline; RP 1.103 drops the bridges and components of an inline one (the
    agent then fails with ``KeyError: 'bridges'``), so it is written as a
    named file.
    """
    path = Path(config_dir) / ".radical" / "pilot" / "configs" / f"agent_{AGENT_CONFIG_NAME}.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # private, whatever the umask (this package stays free of parsl_rcylon imports: see __init__)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(json.dumps(LEAN_AGENT_CONFIG, indent=2))
    return path


#: Longest "let ZMQ settle" pause kept in RAPTOR's master and worker start-up.  A registration
#: lost to a pubsub not yet connected is sent again by RAPTOR after 5 s, so this is not zero.
SETTLE_S = 0.2


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

    RP: RAPTOR's master and every worker rank sleep a second "to let ZMQ
    settle" before registering.  Changed: capped at :data:`SETTLE_S`.  Only
    the module's own name ``time`` is replaced, and only in this process (a
    master or a worker rank), so sleeps after start-up (the heartbeat
    loops) keep their length.
    """
    real = module.time
    module.time = _CappedTime(real, cap)
    try:
        yield
    finally:
        module.time = real
