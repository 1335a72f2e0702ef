"""`parsl-rcylon up`, executors that attach to its pilot, `down` and the idle timeout, on a real pilot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from parsl_rcylon import ExecutorBroken, RadicalCylonExecutor, cylon_app
from parsl_rcylon.runtime.attach import ATTACH_DIR, AttachError, PilotInfo
from tests.conftest import wait_for_no_processes

pytestmark = pytest.mark.integration

CLIENT = str(Path(__file__).with_name("attach_client.py"))


@cylon_app(ranks=2)
def total(ctx):
    return ctx.comm.allreduce(ctx.rank + 1)


@cylon_app(ranks=2)
def hold(ctx, path):
    import os
    import time

    while not os.path.exists(path):  # until the test has seen it running
        time.sleep(0.05)
    return ctx.size


def _wait(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _knock(pilot_dir: Path, token: str) -> list:
    """ATTACH with the run's keys but ``token``; return what the server answers within 2 s."""
    import zmq

    from parsl_rcylon.runtime.wire import protocol
    from parsl_rcylon.runtime.wire.channel import ClientCredentials

    info = PilotInfo.read(pilot_dir)
    credentials = ClientCredentials.load(str(pilot_dir / ATTACH_DIR / "keys" / "channel.json"))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        credentials.apply(sock)
        sock.connect(info.address)
        sock.send_multipart(protocol.pack(protocol.ATTACH, {"token": token, "pid": os.getpid(), "host": "x"}))
        return [protocol.unpack(sock.recv_multipart()).kind] if sock.poll(2000) else []
    finally:
        sock.close(linger=0)
        ctx.term()


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parsl_rcylon", *args], capture_output=True, text=True,
                          timeout=timeout)


def _up(run_dir: Path, idle_minutes: float) -> PilotInfo:
    done = _cli("up", "--run-dir", str(run_dir), "--worker-ranks", "2", "--idle-timeout", str(idle_minutes))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"attach={str(run_dir)!r}" in done.stdout and "parsl-rcylon down" in done.stdout, done.stdout
    info = PilotInfo.read(run_dir)
    assert info.process() is not None
    return info


def _client(pilot_dir: Path, parsl_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CLIENT, str(pilot_dir), str(parsl_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, sid: str) -> float:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"OK {sid}" in out, out
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("ATTACHED")))


def _server_tree(info: PilotInfo) -> list:
    proc = info.process()
    return [proc] + proc.children(recursive=True) if proc else []


def test_scripts_in_sequence_and_together_then_idle_timeout_leaves_nothing(tmp_path):
    pilot_dir = tmp_path / "pilot"
    info = _up(pilot_dir, idle_minutes=0.25)
    sid = info.session
    keys = pilot_dir / ATTACH_DIR / "keys"
    assert oct(os.stat(keys).st_mode & 0o777) == "0o700"
    assert oct(os.stat(keys / "channel.json").st_mode & 0o777) == "0o600"
    tree = _server_tree(info)
    attached = [_finish(_client(pilot_dir, tmp_path / f"seq{i}"), sid) for i in range(2)]
    together = [_client(pilot_dir, tmp_path / f"par{i}") for i in range(2)]
    attached += [_finish(p, sid) for p in together]
    print(f"attach times: {attached}")
    # Nobody attached and nothing running: the pilot ends by itself after 15 s.
    _, alive = psutil.wait_procs(tree, timeout=120)
    assert alive == [], [(p.pid, p.cmdline()) for p in alive]
    assert wait_for_no_processes(sid, timeout=10) == []
    assert not (pilot_dir / ATTACH_DIR / "pilot.json").exists()
    with pytest.raises(AttachError, match="parsl-rcylon up"):
        RadicalCylonExecutor(attach=str(pilot_dir)).start()


def test_down_ends_the_pilot_and_fails_attached_futures(tmp_path):
    pilot_dir = tmp_path / "pilot"
    info = _up(pilot_dir, idle_minutes=30)
    tree = _server_tree(info)
    ex = RadicalCylonExecutor(label="rcylon", attach=str(pilot_dir))
    ex.run_dir = str(tmp_path / "client")
    t = time.monotonic()
    ex.start()
    print(f"attached in {time.monotonic() - t:.3f} s")
    try:
        assert ex.submit(total.func, {"ranks": 2}).result(timeout=30) == 3
        with pytest.raises(Exception, match="no pool|can hold"):
            ex.submit(total.func, {"ranks": 3}).result(timeout=30)
        # The progress view of an attached script: its task shows as running while it runs, and the
        # pilot's pool with its ranks (not a bare count of waiting futures).
        release = tmp_path / "release"
        fut = ex.submit(hold.func, {"ranks": 2}, str(release))
        _wait(lambda: ex.task_board.snapshot()["hold"].running == 1, what="the attached task to show as running")
        pools = _wait(lambda: ex.status().get("default", {}).get("busy") == 2 and ex.status(),
                      what="the pilot's pool figures")
        assert pools["default"]["ranks"] == 2 and pools["default"]["running"] == 1, pools
        release.touch()
        assert fut.result(timeout=30) == 2
        assert ex.task_board.snapshot()["hold"].done == 1
        # Cancelling an attached future withdraws the task at the server: a waiting one leaves its queue,
        # a running one is interrupted on its ranks (and its worker is not replaced).
        blocker = ex.submit(hold.func, {"ranks": 2}, str(tmp_path / "never"))
        _wait(lambda: ex.status()["default"]["busy"] == 2, what="the blocker to run")
        queued = ex.submit(total.func, {"ranks": 2})
        _wait(lambda: ex.status()["default"]["queued"] == 1, what="a task to wait at the server")
        assert queued.cancel()
        _wait(lambda: ex.status()["default"]["queued"] == 0, what="the cancelled task to leave the server's queue")
        assert ex.status()["default"]["busy"] == 2
        assert blocker.cancel()
        _wait(lambda: ex.status()["default"]["busy"] == 0, what="the cancelled task's ranks to be freed")
        assert "restarts" not in ex.status()["default"], "interrupted on its ranks, not ended with its worker"
        # A wrong token is refused (compared in constant time), even one that is not ASCII, and the
        # server goes on serving; the run's token is welcomed.
        credentials = json.loads((pilot_dir / ATTACH_DIR / "keys" / "channel.json").read_text())
        assert _knock(pilot_dir, "0" * len(credentials["token"])) == []
        assert _knock(pilot_dir, "jeton-\u00e9\u00e9") == []
        assert _knock(pilot_dir, "\ud800") == []  # a lone surrogate, as JSON may carry
        from parsl_rcylon.runtime.wire import protocol

        assert _knock(pilot_dir, credentials["token"]) == [protocol.WELCOME]
        assert ex.submit(total.func, {"ranks": 2}).result(timeout=30) == 3
        done = _cli("down", "--run-dir", str(pilot_dir))
        assert done.returncode == 0, done.stdout + done.stderr
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert alive == [], [(p.pid, p.cmdline()) for p in alive]
        assert wait_for_no_processes(info.session, timeout=10) == []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            fut = ex.submit(total.func, {"ranks": 2})
            if fut.done():
                break
            time.sleep(0.5)
        with pytest.raises(ExecutorBroken, match="shut down|stopped answering"):
            fut.result(timeout=10)
    finally:
        ex.shutdown()
    assert _cli("down", "--run-dir", str(pilot_dir)).returncode == 1  # nothing left to end


def test_an_attached_pool_that_names_a_pilot_admits_tasks(tmp_path):
    from parsl_rcylon.serving import down, up

    pilot_dir = tmp_path / "pilot"
    info = up(pilot_dir, {"label": "named", "pilots": [{"name": "cpu", "resource": "local.localhost"}],
                          "pools": [{"name": "p2", "ranks": 2, "pilot": "cpu"}]}, idle_timeout=300)
    assert [p["pilot"] for p in info.pools] == ["cpu"]
    ex = RadicalCylonExecutor(label="named", attach=str(pilot_dir))
    ex.run_dir = str(tmp_path / "client")
    ex.start()
    try:
        # Admission of the pilot's pools: the pool's pilot is the server's, not one this executor has.
        assert ex.validate_resource_specification({"ranks": 2, "pool": "p2"}).ranks == 2
        with pytest.raises(Exception, match="no pool of executor 'named' can hold it"):
            ex.validate_resource_specification({"ranks": 3})
        assert ex.submit(total.func, {"ranks": 2}).result(timeout=60) == 3
    finally:
        ex.shutdown()
        assert down(pilot_dir) is not None
    assert wait_for_no_processes(info.session, timeout=30) == []


def test_clean_force_on_an_up_directory_stops_the_up_server_too(tmp_path):
    """`clean --force` removes an `up` run directory: the server goes with its pilot, nothing is left."""
    pilot_dir = tmp_path / "pilot"
    info = _up(pilot_dir, idle_minutes=30)
    tree = _server_tree(info)
    listed = _cli("clean", "--run-dir", str(pilot_dir))
    assert f"pid {info.pid}: the pilot server of `parsl-rcylon up`" in listed.stdout, listed.stdout
    assert info.process() is not None, "listing ended nothing"
    done = _cli("clean", "--run-dir", str(pilot_dir), "--yes", "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stopped the pilot server of `parsl-rcylon up` (pid {info.pid})" in done.stdout, done.stdout
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert alive == [], [(p.pid, p.cmdline()) for p in alive]
    assert wait_for_no_processes(info.session, timeout=10) == []
    assert not pilot_dir.exists()
