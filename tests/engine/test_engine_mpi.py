"""The engine's property checks, run under ``mpiexec`` on 1, 2, 3 and 4 ranks.

One ``mpiexec`` launch per rank count runs every case of ``mpi_checks.py``
(launching per case would spend most of the time starting Python); the
per-case verdicts come back as JSON and each becomes its own test here.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
SCRIPT = HERE / "mpi_checks.py"
CASES = ["join", "join_bucketed", "join_acero", "join_fixed_width", "sort", "sort_fixed_width", "groupby", "unique",
         "shuffle", "collectives", "chunked_messages", "skew_and_balance", "errors"]
RANKS = [1, 2, 3, 4]
#: Seconds one launch (all cases) may take before it counts as hung.
LAUNCH_TIMEOUT = int(os.environ.get("ENGINE_MPI_TIMEOUT", "420"))

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec next to {sys.executable}"),
]


@functools.cache
def run_checks(ranks: int, out_dir: str) -> Dict[str, dict]:
    out = Path(out_dir) / f"engine-{ranks}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [str(MPIEXEC), "-n", str(ranks), sys.executable, str(SCRIPT), "--out", str(out), "--cases", ",".join(CASES)]
    # A session of its own, so a hung run can be ended with all its ranks.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        hung = True
    results = json.loads(out.read_text()) if out.exists() else {}
    tail = output[-4000:]
    for name in CASES:
        if name not in results:
            why = f"hung (no verdict within {LAUNCH_TIMEOUT} s)" if hung else f"exit code {proc.returncode}"
            results[name] = {"ok": False, "error": f"case did not finish: {why}\n{tail}"}
    return results


@pytest.fixture(scope="session")
def engine_out_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("engine-mpi"))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ranks", RANKS)
def test_engine_case(ranks: int, case: str, engine_out_dir: str) -> None:
    result = run_checks(ranks, engine_out_dir)[case]
    assert result["ok"], result["error"]
