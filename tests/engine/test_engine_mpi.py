"""The engine's property checks, run under ``mpiexec`` on 1, 2, 3 and 4 ranks.

One ``mpiexec`` launch per rank count runs every case of ``mpi_checks.py``
(launching per case would spend most of the time starting Python); the
per-case verdicts come back as JSON and each becomes its own test here.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Dict

import pytest

from tests.mpi_launch import MPIEXEC, launch_checks

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "mpi_checks.py"
CASES = ["join", "join_bucketed", "join_acero", "join_fixed_width", "sort", "sort_fixed_width", "groupby", "unique",
         "shuffle", "collectives", "chunked_messages", "skew_and_balance", "errors"]
RANKS = [1, 2, 3, 4]
#: Seconds one launch (all cases) may take before it counts as hung.
LAUNCH_TIMEOUT = int(os.environ.get("ENGINE_MPI_TIMEOUT", "420"))

pytestmark = [
    pytest.mark.mpi,
    # The first case of each rank count runs the launch for all of them.
    pytest.mark.timeout(LAUNCH_TIMEOUT + 60),
    pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec next to {sys.executable}"),
]


@functools.cache
def run_checks(ranks: int, out_dir: str) -> Dict[str, dict]:
    return launch_checks(SCRIPT, ranks, Path(out_dir) / f"engine-{ranks}.json", CASES, LAUNCH_TIMEOUT)


@pytest.fixture(scope="session")
def engine_out_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("engine-mpi"))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ranks", RANKS)
def test_engine_case(ranks: int, case: str, engine_out_dir: str) -> None:
    result = run_checks(ranks, engine_out_dir)[case]
    assert result["ok"], result["error"]
