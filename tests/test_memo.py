"""Memoization and checkpoints across runs: a rerun skips finished stages and reuses their tables."""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _run(run_dir: Path) -> list:
    script = Path(__file__).with_name("memo_client.py")
    out = subprocess.run([sys.executable, str(script), str(run_dir)], capture_output=True, text=True, timeout=400,
                         cwd=str(script.parent.parent))
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-3000:]
    return lines[0].split()[1:]


@pytest.mark.timeout(860)  # two runs, each its own pilot; each run's 400 s deadline fires first
def test_rerun_reuses_tables_of_finished_stages(tmp_path):
    first = _run(tmp_path)
    second = _run(tmp_path)
    expected_sum = 2 * sum(range(1000))
    assert first[1:] == ["1000", str(expected_sum), "2"], "the first run runs both stages"
    assert second[1:] == ["1000", str(expected_sum), "0"], "the rerun must take both stages from the checkpoint"
    assert second[0] == first[0], "the rerun must hand back the first run's table"
    assert Path(first[0]).is_dir()
