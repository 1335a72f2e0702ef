"""Running a checks script under ``mpiexec`` once per rank count, and reading its per-case verdicts.

A checks script runs every case on every rank and writes ``{"case": {"ok":
bool, "error": str}}`` as JSON (tests/engine/mpi_checks.py,
tests/training/train_checks.py); launching once for all cases, instead of
per case, keeps the time spent starting Python small.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def launch_checks(script: Path, ranks: int, out: Path, cases: Sequence[str], timeout: float) -> Dict[str, dict]:
    """Run ``script`` on ``ranks`` ranks; a case with no verdict (crash, hang) fails with the output's tail."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [str(MPIEXEC), "-n", str(ranks), sys.executable, str(script), "--out", str(out), "--cases", ",".join(cases)]
    # A session of its own, so a hung run can be ended with all its ranks.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        hung = True
    results = json.loads(out.read_text()) if out.exists() else {}
    tail = output[-4000:]
    for name in cases:
        if name not in results:
            why = f"hung (no verdict within {timeout} s)" if hung else f"exit code {proc.returncode}"
            results[name] = {"ok": False, "error": f"case did not finish: {why}\n{tail}"}
    return results
