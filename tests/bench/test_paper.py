"""The paper benchmark (benchmarks/paper.py): its bare-metal stages against pyarrow, its options, a quick run."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from parsl_rcylon.bench import stages
from parsl_rcylon.runtime.processes import session_processes

ROOT = Path(__file__).resolve().parents[2]
MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.mark.mpi
def test_bare_metal_stages_match_pyarrow(tmp_path):
    """The benchmark's mpiexec path: generate, join and sort give pyarrow's answers."""
    script = ROOT / "benchmarks" / "paper_job.py"
    rows = 30_000

    def launch(*args: str) -> list:
        result = tmp_path / f"result-{uuid.uuid4().hex}.pkl"
        proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(script), "--data-dir", str(tmp_path),
                               "--result", str(result), *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with open(result, "rb") as f:
            return pickle.load(f)

    left, right = launch("generate", "--rows", str(rows), "--tables", "0,1")
    paths = []
    for res in (left, right):
        paths.append(str(tmp_path / f"{res.stage}-{len(paths)}.pkl"))
        with open(paths[-1], "wb") as f:
            pickle.dump(res, f)
    (joined,) = launch("--warm-up", "join", "--left", paths[0], "--right", paths[1])
    (ordered,) = launch("sort", "--input", paths[0])

    whole_left = stages.make_rows(stages.LEFT, rows, 0, rows)
    whole_right = stages.make_rows(stages.RIGHT, rows, 0, rows)
    assert left.ref.read().equals(whole_left)
    order = [("key", "ascending"), ("v", "ascending"), ("v_right", "ascending")]
    # pyarrow's default join type is a left outer join; the benchmark's is inner.
    expected = whole_left.join(whole_right, "key", join_type="inner", right_suffix="_right").sort_by(order)
    got = joined.ref.read().sort_by(order)
    assert got.equals(expected.select(got.column_names))
    assert ordered.ref.read().equals(whole_left.sort_by("key"))
    assert joined.rows_out == expected.num_rows and joined.ranks == 2
    assert joined.op_s > 0 and joined.read_s > 0 and joined.write_s > 0
    assert isinstance(joined.ref.read(), pa.Table)


def _paper(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_bench_options_reject_bad_values(tmp_path):
    proc = _paper("--ops", "groupby", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "unknown operation or scaling: ['groupby']" in proc.stderr
    proc = _paper("--ranks", "0,2", timeout=120)
    assert proc.returncode == 2 and "expected positive integers, got '0,2'" in proc.stderr
    assert not any(tmp_path.iterdir())  # refused before anything ran


@pytest.mark.integration
@pytest.mark.timeout(660)  # a pilot and every mode of the benchmark: minutes; _paper's deadline fires first
def test_bench_paper_quick_writes_results(tmp_path):
    out, run_dir = tmp_path / "out", tmp_path / "runinfo"
    proc = _paper("--quick", "--rows-per-rank", "20000", "--iterations", "1", "--ranks", "1,2",
                  "--out", str(out), "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[paper] pilot ready in" in proc.stdout and "speedup vs batch:" in proc.stdout
    result = json.loads((out / "results.json").read_text())
    for key in ("speedup_vs_batch", "overhead_pct", "startup_s", "operations", "pipeline", "startup"):
        assert result[key] is not None, key
    assert result["speedup_vs_batch"] > 0
    assert {(o["op"], o["ranks"]) for o in result["operations"]} == {
        ("join", 1), ("join", 2), ("sort", 1), ("sort", 2)}
    assert all(len(o["raw"]["bare_metal"]) == 1 == len(o["raw"]["parsl_rcylon"]) for o in result["operations"])
    assert [p["ranks"] for p in result["pipeline"]] == [1, 2]
    for name in ("results.md", "ops.png", "pipeline.png"):
        assert (out / name).stat().st_size > 0
    assert "speedup" in (out / "results.md").read_text()
    # The benchmark's tables are gone and its pilot left nothing running.
    assert not any(p.name.startswith("paper-data-") for p in run_dir.iterdir())
    assert session_processes(result["startup"]["session_id"]) == []


