"""The parsl-rcylon command: doctor, clean, bench paper; and the benchmark's bare-metal stages."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from parsl_rcylon import cli
from parsl_rcylon.bench import stages
from parsl_rcylon.runtime.processes import session_processes

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # A child process: the integration tests must not share the test session's
    # Parsl DataFlowKernel (conftest keeps one loaded), and this is how users run it.
    return subprocess.run([sys.executable, "-m", "parsl_rcylon", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _sleeper(tag: str) -> subprocess.Popen:
    """A harmless process whose command line carries ``tag`` (as RP's processes carry their session id)."""
    # named as RP's entry points are: the session id as an argument claims only RP's own programs
    script = Path(tempfile.gettempdir()) / f"rcylon-test-bin-{os.getuid()}" / "radical-pilot-component"
    script.parent.mkdir(mode=0o700, exist_ok=True)
    script.write_text("import time; time.sleep(300)\n")
    return subprocess.Popen([sys.executable, str(script), tag], cwd="/")


def _wait_gone(proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        time.sleep(0.1)
    return False


# -- clean ------------------------------------------------------------------------------------------


@pytest.fixture
def fake_runs(tmp_path):
    """runinfo/000 with an RP session of a (fake) earlier run, runinfo/001 without one."""
    sid = f"rp.session.test-{uuid.uuid4().hex}"
    run_dir = tmp_path / "runinfo"
    session = run_dir / "000" / "rcylon" / sid
    session.mkdir(parents=True)
    (session / "agent_0.log").write_text("log\n")
    (run_dir / "001" / "htex").mkdir(parents=True)
    leftover = _sleeper(sid)
    bystander = _sleeper(f"rp.session.test-{uuid.uuid4().hex}")
    try:
        deadline = time.monotonic() + 10
        while not session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield run_dir, sid, leftover, bystander
    finally:
        for proc in (leftover, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_clean_without_yes_only_lists(fake_runs, capsys):
    run_dir, sid, leftover, bystander = fake_runs
    assert cli.main(["clean", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert sid in out and f"pid {leftover.pid}:" in out
    assert f"pid {bystander.pid}:" not in out
    assert "001" not in out  # no RP session there: not a run of ours
    assert "--yes" in out
    assert leftover.poll() is None and bystander.poll() is None
    assert (run_dir / "000").is_dir()


def test_clean_yes_ends_only_the_sessions_processes(fake_runs, capsys):
    run_dir, sid, leftover, bystander = fake_runs
    assert cli.main(["clean", "--run-dir", str(run_dir), "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"ended 1 process(es) of 000: {leftover.pid}" in out
    assert _wait_gone(leftover)
    assert bystander.poll() is None
    assert not (run_dir / "000").exists()
    assert (run_dir / "001").is_dir()


def test_clean_older_than_spares_recent_runs(fake_runs, capsys):
    run_dir, _sid, leftover, _bystander = fake_runs
    assert cli.main(["clean", "--run-dir", str(run_dir), "--older-than", "1", "--yes"]) == 0
    assert "no run directory" in capsys.readouterr().out
    assert leftover.poll() is None
    assert (run_dir / "000").is_dir()


def test_clean_spares_a_run_a_live_client_still_writes_to(fake_runs, capsys):
    run_dir, _sid, leftover, _bystander = fake_runs
    log = run_dir / "000" / "parsl.log"
    client = subprocess.Popen([sys.executable, "-c", f"f = open({str(log)!r}, 'a'); import time; time.sleep(300)"])
    try:
        deadline = time.monotonic() + 10
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert cli.main(["clean", "--run-dir", str(run_dir), "--yes"]) == 0
        out = capsys.readouterr().out
        assert f"in use by pid {client.pid}" in out and "skipped" in out
        assert leftover.poll() is None and (run_dir / "000").is_dir()
        assert cli.main(["clean", "--run-dir", str(run_dir), "--yes", "--force"]) == 0
        assert _wait_gone(leftover) and client.poll() is None  # the client itself is not a session process
        assert not (run_dir / "000").exists()
    finally:
        client.kill()
        client.wait()


def test_clean_missing_dir_is_not_an_error(tmp_path, capsys):
    assert cli.main(["clean", "--run-dir", str(tmp_path / "nope")]) == 0
    assert "nothing to clean" in capsys.readouterr().out


# -- doctor -----------------------------------------------------------------------------------------


def test_clean_removes_only_what_dead_table_writers_left(tmp_path, capsys):
    from parsl_rcylon.table import TableRef
    from parsl_rcylon.table.handoff import publish_result

    from .test_table import ctx1

    data = tmp_path / "data"
    committed = publish_result(ctx1(data, task="kept"), pa.table({"v": [1, 2, 3]}))
    stale = data / "dead-writer"  # an uncommitted table of a writer on another host, untouched for two days
    stale.mkdir()
    (stale / ".writer.1234.5678@elsewhere+1").write_text("")
    (stale / "part-00000-of-00002.parquet").write_text("x")
    then = time.time() - 2 * 86400
    for p in [stale, *stale.iterdir()]:
        os.utime(p, (then, then))
    (tmp_path / "runinfo").mkdir()
    args = ["clean", "--run-dir", str(tmp_path / "runinfo"), "--data-dir", str(data)]
    assert cli.main(args) == 0
    assert "would remove what dead table writers left in" in capsys.readouterr().out and stale.exists()
    assert cli.main(args + ["--yes"]) == 0
    assert "removed 3 leftover(s) of dead writers" in capsys.readouterr().out  # marker, partition, directory
    assert not stale.exists()
    assert TableRef.from_parquet(committed.path).read()["v"].to_pylist() == [1, 2, 3]


def test_doctor_without_pilot_passes_in_this_venv(tmp_path, capsys):
    assert cli.main(["doctor", "--no-pilot", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("mpiexec", "mpi4py", "mpi launch", "radical", "pyarrow", "run dir"):
        assert f"OK   {name}:" in out, out
    assert "SKIP pilot" in out


def test_doctor_says_how_to_fix_a_missing_mpiexec(tmp_path, capsys, monkeypatch):
    from parsl_rcylon.runtime import config

    monkeypatch.setattr(config, "mpi_bin_dir", lambda: None)
    assert cli.main(["doctor", "--run-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL mpiexec: no mpiexec" in out
    assert "fix: install an MPI: `pip install mpich`" in out
    assert "SKIP pilot" in out  # no pilot is started on a broken installation
    assert "failed: mpiexec" in out


def test_doctor_reports_an_unsupported_radical_pilot(tmp_path, capsys, monkeypatch):
    from parsl_rcylon.runtime import config

    def too_new():
        raise config.RadicalVersionError("parsl_rcylon needs radical.pilot >=1.103,<1.104 (found 1.110.0); ...")

    monkeypatch.setattr(config, "check_radical_version", too_new)
    assert cli.main(["doctor", "--no-pilot", "--run-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL radical: parsl_rcylon needs radical.pilot >=1.103,<1.104 (found 1.110.0)" in out
    assert "fix: pip install 'radical.pilot>=1.103,<1.104'" in out


@pytest.mark.integration
def test_doctor_healthy_venv_with_pilot(tmp_path):
    proc = _cli("doctor", "--run-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK   pilot: local pilot started" in proc.stdout
    assert "9 of 9 checks passed" in proc.stdout


# -- bench paper ------------------------------------------------------------------------------------


@pytest.mark.mpi
def test_bare_metal_stages_match_pyarrow(tmp_path):
    """The benchmark's mpiexec path: generate, join and sort give pyarrow's answers."""
    script = ROOT / "parsl_rcylon" / "bench" / "ops_script.py"
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


def test_bench_options_reject_bad_values(capsys):
    assert cli.main(["bench", "paper", "--ops", "groupby", "--out", "/tmp/unused"]) == 2
    assert "unknown operation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "paper", "--ranks", "0,2"])


@pytest.mark.integration
def test_bench_paper_quick_writes_results(tmp_path):
    out, run_dir = tmp_path / "out", tmp_path / "runinfo"
    proc = _cli("bench", "paper", "--quick", "--rows-per-rank", "20000", "--iterations", "1", "--ranks", "1,2",
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


def test_python_m_entry_point():
    proc = _cli("--help", timeout=120)
    assert proc.returncode == 0 and "bench" in proc.stdout and "doctor" in proc.stdout
    env_bin = Path(sys.executable).parent / "parsl-rcylon"
    if env_bin.exists():
        proc = subprocess.run([str(env_bin), "clean", "--help"], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ))
        assert proc.returncode == 0 and "--older-than" in proc.stdout
