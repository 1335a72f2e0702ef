"""Soak: many mixed tasks of 1-4 ranks with injected faults and Parsl retries, on a real pilot.

About 5% of task executions fault on purpose (an exception on one rank while the others wait in a
collective, a rank that exits hard, a task that overruns its walltime); Parsl retries each task up to
twice.  Every task that succeeds must return the right answer, the run must finish in bounded time,
leave no process behind, and the client's descriptors, threads and memory must stay flat.

CI runs ``SOAK_TASKS`` tasks (100 by default); ``make soak`` runs 1,000 and writes its figures to
``benchmarks/results/soak.json``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import wait_for_no_processes

pytestmark = pytest.mark.integration

TASKS = int(os.environ.get("SOAK_TASKS", "100"))
FAULT_RATE = float(os.environ.get("SOAK_FAULT_RATE", "0.05"))
RESULTS = os.environ.get("SOAK_RESULTS")  # where `make soak` wants its figures


# Minutes by design: above the client's own deadline below, so that one reports a hang first.
@pytest.mark.timeout(660 + TASKS * 6)
def test_soak_mixed_tasks_with_injected_faults_and_retries(tmp_path):
    client = Path(__file__).with_name("soak_client.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(client.parent.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(client), str(tmp_path / "run"), str(TASKS), str(FAULT_RATE)],
                          capture_output=True, text=True, env=env, timeout=600 + TASKS * 6)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    left = wait_for_no_processes(report.pop("session"), timeout=15)
    report["leftover_processes"] = len(left)
    print(json.dumps(report, indent=1))
    if RESULTS:
        Path(RESULTS).write_text(json.dumps(report, indent=1) + "\n")
    outcomes, usage = report["outcomes"], report["client_usage"]
    assert not report["wrong"], f"wrong results: {report['wrong'][:10]}"
    assert outcomes.get("ok", 0) >= TASKS * 0.98, outcomes
    assert report["seconds"] < 60 + TASKS * 1.5, f"{TASKS} tasks took {report['seconds']} s"
    assert left == [], f"processes left: {left}"
    # Flat: after the first tenth, descriptors and threads do not grow, memory by little.
    settled, last = usage[1], usage[-1]
    assert last["fds"] <= settled["fds"] + 16, usage
    assert last["threads"] <= settled["threads"] + 4, usage
    assert last["rss_mb"] <= settled["rss_mb"] + 64, usage
