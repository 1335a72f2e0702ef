"""The training layer's checks (train_checks.py), run under ``mpiexec`` on 1, 2 and 3 ranks."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Dict

import pytest

from tests.mpi_launch import MPIEXEC, launch_checks

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "train_checks.py"
CASES = ["process_group", "process_group_checks", "rank_fails_in_training", "rank_fails_in_training_with",
         "loader_block_even", "loader_uneven_steps", "loader_global", "loader_ordered_and_zero_copy",
         "loader_errors", "ddp_training"]
RANKS = [1, 2, 3]
LAUNCH_TIMEOUT = int(os.environ.get("TRAIN_MPI_TIMEOUT", "300"))

pytestmark = [
    pytest.mark.mpi,
    # The first case of each rank count runs the launch for all of them.
    pytest.mark.timeout(LAUNCH_TIMEOUT + 60),
    pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec next to {sys.executable}"),
]


@functools.cache
def run_checks(ranks: int, out_dir: str) -> Dict[str, dict]:
    return launch_checks(SCRIPT, ranks, Path(out_dir) / f"train-{ranks}.json", CASES, LAUNCH_TIMEOUT)


@pytest.fixture(scope="session")
def train_out_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("train-mpi"))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ranks", RANKS)
def test_training_case(ranks: int, case: str, train_out_dir: str) -> None:
    result = run_checks(ranks, train_out_dir)[case]
    assert result["ok"], result["error"]
