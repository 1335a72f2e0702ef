"""Tables are durable and clean: fsync before commit, nothing left by failed or killed writers,
a full disk commits nothing, scratch directories go when their task ends.

Real files, real processes killed with SIGKILL, a real (tmpfs) filesystem
that fills up, and real MPI ranks where the behaviour is collective.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import List

import pyarrow as pa
import pytest

from parsl_rcylon.context import CylonContext
from parsl_rcylon.table import TableRef, TableWriteError, publish_result
from parsl_rcylon.tableio.cleanup import remove_stale_scratch, remove_unfinished
from parsl_rcylon.tableio.manifest import MANIFEST_NAME
from parsl_rcylon.tableio.names import MARKER_RE, TEMP_RE

from .test_table import MPI_DIR, MPIEXEC, ctx1, mpirun, tablecheck, write, write_ranks

ROOT = Path(__file__).resolve().parents[2]
DAY = 24 * 3600.0


def listing(path) -> List[str]:
    """Every path under ``path``, relative to it."""
    out = []
    for root, dirs, files in os.walk(path):
        out += [os.path.relpath(os.path.join(root, n), path) for n in dirs + files]
    return sorted(out)


def temps(path) -> List[str]:
    return [p for p in listing(path) if os.path.basename(p).endswith(".tmp")]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


# -- fsync -------------------------------------------------------------------------------------------


@pytest.fixture
def disk_calls(monkeypatch):
    """(call, path) for every os.fsync and os.replace, in order, as the writer makes them."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        calls.append(("replace", os.fspath(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_fsync_flushes_data_then_commits(tmp_path, disk_calls, fmt):
    data_dir = tmp_path / "data"
    ref = write_ranks(data_dir, [tablecheck.partition(r, 2) for r in range(2)], fsync=True, format=fmt)
    table_dir, manifest = ref.path, os.path.join(ref.path, MANIFEST_NAME)
    commit = disk_calls.index(("replace", manifest))
    before, after = disk_calls[:commit], disk_calls[commit + 1:]
    for final in ref.files:
        # The partition's bytes are flushed before it gets its name, and its
        # name (the directory) before the manifest commits the table.
        placed = before.index(("replace", final))
        flushed = [i for i, (call, path) in enumerate(before)
                   if call == "fsync" and TEMP_RE.match(os.path.basename(path))
                   and TEMP_RE.match(os.path.basename(path))["final"] == os.path.basename(final)]
        assert flushed and flushed[0] < placed, disk_calls
        assert ("fsync", table_dir) in before[placed:], disk_calls
    manifest_tmp = [path for call, path in before if call == "fsync" and os.path.basename(path).startswith(
        f".{MANIFEST_NAME}.")]
    assert len(manifest_tmp) == 1
    assert after[:2] == [("fsync", table_dir), ("fsync", str(data_dir))], after
    assert ref.read().num_rows == tablecheck.source(2).num_rows


def test_fsync_is_the_default_and_can_be_turned_off(tmp_path, disk_calls):
    ref = write(tmp_path / "a", tablecheck.source(1))
    flushed = [path for call, path in disk_calls if call == "fsync"]
    assert ref.path in flushed and str(tmp_path / "a") in flushed and len(flushed) == 5
    disk_calls.clear()
    write(tmp_path / "b", tablecheck.source(1), fsync=False)
    assert [c for c in disk_calls if c[0] == "fsync"] == []


# -- failed writers that survive ------------------------------------------------------------------


def test_failed_partition_write_leaves_nothing(tmp_path):
    # Parquet has no type for this interval: the writer fails after its file was made.
    bad = pa.table({"a": pa.array([(1, 2, 3)], pa.month_day_nano_interval())})

    def rank(comm):
        return publish_result(CylonContext(comm, task_id="t", name="f", data_dir=str(tmp_path)), bad)

    out = tablecheck.run_ranks(2, rank)
    for err in out:
        assert isinstance(err, TableWriteError)
        assert f"{tmp_path}/f-t/part-00000-of-00002.parquet: cannot write this partition" in str(err)
        assert "month_day_nano_interval" in str(err)
    assert listing(tmp_path) == []


def test_failed_manifest_write_leaves_no_temporary(tmp_path):
    ref = write(tmp_path, pa.table({"x": [1]}))
    os.unlink(os.path.join(ref.path, MANIFEST_NAME))
    # A directory where the manifest goes: the rename fails after the temporary was written.
    os.makedirs(os.path.join(ref.path, MANIFEST_NAME, "inside"))
    with pytest.raises(TableWriteError, match=f"{ref.path}/{MANIFEST_NAME}: cannot write the manifest"):
        ref.manifest.write(ref.path, fsync=True)
    assert temps(ref.path) == []


def test_failed_commit_removes_the_uncommitted_directory(tmp_path, monkeypatch):
    from parsl_rcylon.tableio import manifest as manifest_module

    real = manifest_module.fsync_dir

    def fsync_dir(directory):
        # The manifest is in place; flushing its directory fails (an I/O error on the device).
        if os.path.exists(os.path.join(directory, MANIFEST_NAME)):
            raise OSError(5, "Input/output error")
        return real(directory)

    monkeypatch.setattr(manifest_module, "fsync_dir", fsync_dir)
    with pytest.raises(TableWriteError, match=rf"cannot commit the result table in .*{MANIFEST_NAME}: cannot "
                                              r"write the manifest: \[Errno 5\]"):
        write(tmp_path / "data", pa.table({"x": [1]}), fsync=True)
    assert listing(tmp_path / "data") == []


# -- a full disk -----------------------------------------------------------------------------------


def run_on_small_fs(tmp_path, size: str, argv: List[str], timeout: float = 180) -> Path:
    """Run ``argv`` (``{mnt}`` replaced) with an empty tmpfs of ``size`` mounted at ``tmp_path/small``.

    The mount lives in a private mount namespace of the command (``unshare``;
    as a user namespace's root when not run as root), so it disappears with
    the command, whatever happens to the test.
    """
    mnt = tmp_path / "small"
    mnt.mkdir()
    ns = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    script = f"mount -t tmpfs -o size={size},mode=0700 tmpfs '{mnt}' && exec \"$@\""
    cmd = ns + ["sh", "-c", script, "sh"] + [a.replace("{mnt}", str(mnt)) for a in argv]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{cmd} did not finish in {timeout}s")
    assert proc.returncode == 0, out.decode(errors="replace")[-4000:]
    assert listing(mnt) == [], "the small filesystem was not private to the command"
    return mnt


@pytest.mark.mpi
def test_full_disk_commits_nothing_and_names_the_path(tmp_path):
    result = tmp_path / "result.json"
    run_on_small_fs(tmp_path, "4m", [str(MPIEXEC), "-n", "2", sys.executable, str(MPI_DIR / "fulldisk.py"),
                                     "{mnt}", str(result)])
    r = json.loads(result.read_text())
    assert r["free_at_start"] == 4 << 20
    # Partitions that do not fit: every rank fails, naming the files; nothing is left.
    for label, ext in (("partitions", "parquet"), ("partitions_ipc", "arrow")):
        for out in r[label]["outcomes"]:
            assert out["error"] == "TableWriteError"
            assert "No space left on device" in out["message"] and "cannot write this partition" in out["message"]
            assert re.search(rf"full-big\w+/part-0000[01]-of-00002\.{ext}: ", out["message"]), out["message"]
        assert r[label]["left"] == ["data"], r[label]["left"]
    # Partitions that fit and a manifest that does not: no commit, nothing left.
    for out in r["manifest"]["outcomes"]:
        assert out["error"] == "TableWriteError"
        assert f"full-tight/{MANIFEST_NAME}: cannot write the manifest" in out["message"]
        assert "No space left on device" in out["message"] and "cannot commit" in out["message"]
    assert r["manifest"]["left"] == ["data"]
    # Rewriting a manifest on a full disk fails cleanly and leaves the committed one intact.
    alone = r["manifest_alone"]
    assert alone["outcome"]["error"] == "TableWriteError"
    assert f"full-small/{MANIFEST_NAME}: cannot write the manifest" in alone["outcome"]["message"]
    assert not any(p.endswith(".tmp") for p in alone["left"]) and alone["still_reads"] == 10


# -- killed writers ------------------------------------------------------------------------------------


LIVE_WRITER = textwrap.dedent("""
    import os, sys, time
    from parsl_rcylon.tableio.names import marker_name, temp_name
    d = sys.argv[1]
    os.mkdir(d)
    open(os.path.join(d, marker_name()), "w").close()
    with open(os.path.join(d, temp_name("part-00000-of-00001.parquet")), "w") as f:
        f.write("still writing")
    print("ready", flush=True)
    time.sleep(600)
""")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def age(path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path] + [os.path.join(path, n) for n in os.listdir(path)]:
        os.utime(p, (then, then), follow_symlinks=False)


@pytest.mark.mpi
def test_leftovers_of_a_rank_killed_mid_write_are_removed_and_live_writers_kept(tmp_path):
    data = tmp_path / "data"
    committed = write(data, tablecheck.source(1), task="done")
    victim = data / "slow-victim"
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, str(MPI_DIR / "slowwriter.py"), str(data), "1000000"]
    job = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    live = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(data / "live")], env=env(),
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        def writing():
            if not victim.is_dir():
                return None
            found = [n for n in os.listdir(victim) if TEMP_RE.match(n) and os.path.getsize(victim / n) > 0]
            return found[0] if found else None

        temp = wait_for(writing, 60, "a rank to be writing its partition")
        os.kill(int(TEMP_RE.match(temp)["pid"]), signal.SIGKILL)  # the tag names the writer
        job.communicate(timeout=60)
        assert live.stdout.readline().strip() == b"ready"
        left = os.listdir(victim)
        assert MANIFEST_NAME not in left and temp in left
        assert any(MARKER_RE.match(n) for n in left)

        # Leftovers of writers on another host: only the stale ones go.
        for name in ("fresh", "stale"):
            d = data / f"other-{name}"
            d.mkdir()
            (d / ".writer.1234.5678@elsewhere+1").write_text("")
            (d / "part-00000-of-00002.parquet").write_text("x")
            (d / ".part-00001-of-00002.parquet.99.5678@elsewhere+1.tmp").write_text("x")
        age(str(data / "other-stale"), 2 * DAY)
        # A dead writer's temporary file inside a committed table goes; the table stays.
        dead = TEMP_RE.match(temp)
        dead_temp = Path(committed.path) / f".{MANIFEST_NAME}.{dead['pid']}.{dead['start']}@{dead['host']}.tmp"
        dead_temp.write_text("{")

        report = remove_unfinished(str(data))
        assert not victim.exists() and str(victim) in report.removed
        assert not (data / "other-stale").exists()
        assert not dead_temp.exists()
        assert sorted(os.listdir(data / "other-fresh")) == [
            ".part-00001-of-00002.parquet.99.5678@elsewhere+1.tmp", ".writer.1234.5678@elsewhere+1",
            "part-00000-of-00002.parquet"]
        assert len(os.listdir(data / "live")) == 2 and str(data / "live") in report.kept
        assert TableRef.from_parquet(committed.path).num_rows == committed.num_rows
        assert temps(committed.path) == []

        live.kill()
        live.wait(10)
        report = remove_unfinished(str(data))
        assert not (data / "live").exists() and str(data / "live") in report.removed
        assert sorted(os.listdir(data)) == [os.path.basename(committed.path), "other-fresh"]
    finally:
        for proc in (job, live):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_cleanup_leaves_what_is_not_ours(tmp_path):
    data = tmp_path / "data"
    (data / "notes").mkdir(parents=True)
    (data / "notes" / "readme.txt").write_text("mine")
    (data / "empty").mkdir()
    (data / "link").symlink_to(tmp_path)
    mixed = data / "mixed"
    mixed.mkdir()
    (mixed / "part-00000-of-00001.parquet").write_text("x")
    (mixed / "keep-me.csv").write_text("x")
    orphan = data / "orphan"  # our partition file alone, no marker, long unchanged: a writer's leftover
    orphan.mkdir()
    (orphan / "part-00000-of-00001.parquet").write_text("x")
    for d in ("notes", "empty", "mixed", "orphan"):
        age(str(data / d), 2 * DAY)
    report = remove_unfinished(str(data))
    # Without a writer's marker, a directory holding anything not ours is not ours.
    assert sorted(os.listdir(data)) == ["empty", "link", "mixed", "notes"]
    assert sorted(os.listdir(mixed)) == ["keep-me.csv", "part-00000-of-00001.parquet"]
    assert report.removed == [str(orphan / "part-00000-of-00001.parquet"), str(orphan)]
    assert remove_unfinished(str(tmp_path / "missing")).removed == []
    with pytest.raises(ValueError, match="older_than"):
        remove_unfinished(str(data), older_than=-1)


# -- scratch ------------------------------------------------------------------------------------


def test_scratch_is_removed_when_the_task_ends(tmp_path):
    with CylonContext(tablecheck.SelfComm(), task_id="t", name="f", scratch_root=str(tmp_path)) as ctx:
        path = ctx.scratch
        (path / "sub").mkdir()
        (path / "sub" / "big.bin").write_bytes(b"\0" * 4096)
    assert not path.exists() and os.listdir(tmp_path) == []
    ctx.close()  # again: nothing to do
    untouched = CylonContext(tablecheck.SelfComm(), task_id="u", name="f", scratch_root=str(tmp_path / "never"))
    untouched.close()
    assert not (tmp_path / "never").exists()  # no scratch asked for, none made


KILLED_RANK = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from tablecheck import SelfComm
    from parsl_rcylon.context import CylonContext
    ctx = CylonContext(SelfComm(), task_id="ex.task.000003", name="f", scratch_root=sys.argv[1])
    (ctx.scratch / "data.bin").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_scratch_of_killed_ranks_is_removed(tmp_path):
    root = tmp_path / "scratch"
    proc = subprocess.run([sys.executable, "-c", KILLED_RANK, str(root), str(MPI_DIR)], env=env(), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (dead,) = os.listdir(root)
    ctx = CylonContext(tablecheck.SelfComm(), task_id="ex.task.000004", name="f", scratch_root=str(root))
    mine = ctx.scratch
    for name, seconds in (("fresh", 0), ("stale", 2 * DAY)):
        other = root / f"ex.task.000005.rank1.abc{name}.42.7@elsewhere+1"
        other.mkdir()
        age(str(other), seconds)
    report = remove_stale_scratch(str(root))
    assert sorted(os.listdir(root)) == [mine.name, "ex.task.000005.rank1.abcfresh.42.7@elsewhere+1"]
    assert str(root / dead) in report.removed and str(mine) in report.kept
    ctx.close()


# -- the writer's tag --------------------------------------------------------------------------------


def test_writer_tag_tells_live_from_dead_and_reused_pids():
    from parsl_rcylon.tableio.cleanup import writer_alive
    from parsl_rcylon.tableio.names import TEMP_RE as tag_re
    from parsl_rcylon.tableio.names import host_key, temp_name, writer_tag

    match = tag_re.match(temp_name("part-00000-of-00001.parquet"))
    assert match["final"] == "part-00000-of-00001.parquet" and writer_tag().startswith(f"{os.getpid()}.")
    pid, start, host = int(match["pid"]), int(match["start"]), match["host"]
    assert host == host_key()
    assert writer_alive(pid, start, host) is True
    assert writer_alive(pid, start + 1, host) is False  # the same PID, another process
    assert writer_alive(pid, start, "elsewhere+1") is None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert writer_alive(child.pid, 0, host) is False


def test_pickled_ref_and_fsync_option_round_trip(tmp_path):
    ref = write(tmp_path, pa.table({"x": [1]}), fsync=True)
    assert ref.manifest.info["writer"].startswith(f"{os.getpid()}.")
    back = pickle.loads(pickle.dumps(ref))
    assert back.owned and back.read().num_rows == 1
    assert ctx1(tmp_path, fsync=False).options.table.fsync is False


@pytest.mark.mpi
def test_fsync_under_mpiexec(tmp_path):
    ref_file = tmp_path / "ref.pkl"
    mpirun(2, "roundtrip.py", "write", str(tmp_path / "data"), str(ref_file), "--fsync", "on")
    with open(ref_file, "rb") as f:
        ref = pickle.load(f)
    assert temps(ref.path) == [] and sorted(os.listdir(ref.path))[0] == MANIFEST_NAME
    assert ref.read().num_rows == tablecheck.source(2).num_rows
