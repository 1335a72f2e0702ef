"""Run directories and their cleaning (parsl_rcylon.runs) through `parsl-rcylon clean`: real processes, real files."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from parsl_rcylon import cli
from parsl_rcylon.runs import RunDirError, clean, find_runs
from parsl_rcylon.runtime.processes import session_processes


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


def test_clean_removes_only_what_dead_table_writers_left(tmp_path, capsys):
    from parsl_rcylon.table import TableRef
    from parsl_rcylon.table.handoff import publish_result
    from tests.table.test_table import ctx1

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


def test_clean_as_a_library_reports_the_runs_it_would_clean(fake_runs):
    run_dir, sid, leftover, _bystander = fake_runs
    said = []
    runs = clean(run_dir, say=said.append)
    assert [(r.path.name, r.sessions) for r in runs] == [("000", [sid])]
    assert [p.pid for p in runs[0].processes] == [leftover.pid]
    assert said[-1].startswith("would end 1 process(es) and remove 1 run directory")
    assert leftover.poll() is None and (run_dir / "000").is_dir()
    assert [r.path.name for r in find_runs(run_dir)] == ["000"]


def test_a_run_dir_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "runinfo"
    path.write_text("not a directory")
    with pytest.raises(RunDirError, match="is not a directory"):
        find_runs(path)
    assert cli.main(["clean", "--run-dir", str(path)]) == 2
    assert f"parsl-rcylon: error: {path} is not a directory" in capsys.readouterr().err
