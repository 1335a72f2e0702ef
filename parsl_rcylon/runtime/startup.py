"""Where a pilot's start-up seconds go.

:class:`PilotTimeline` records when each pilot state was reached, and when the
bootstrap handed over to the agent, so a start can be split into
session, managers, bootstrap, agent, and master/workers ready.  The changes
that make the start lean (no profiling, a lean agent configuration, capped
settle sleeps) are adjustments of Radical Pilot and live in ``rp_adjust``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional

from .layout import sandbox_path

logger = logging.getLogger(__name__)


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
