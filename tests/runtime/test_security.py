"""Only this run's own processes can talk to it, on a real pilot.

A stranger on the same machine connects to the executor's port and tries what worked before the channel
was authenticated: a pickle that would run code, malformed frames, a forged result for a running task,
a READY with a real rank's number.  Nothing executes, the run goes on, every future gets its genuine
result.  After the client dies, a process that binds its port gets no rank to run anything.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from parsl_rcylon import cylon_app
from parsl_rcylon.runtime.wire.channel import ClientCredentials
from tests.conftest import wait_for_no_processes

pytestmark = pytest.mark.integration

# A stranger: another local process that knows the port (and, in the insider case, holds the client
# keys). Argv: ADDRESS MARKER TASK_UIDS [CHANNEL_FILE]
STRANGER = textwrap.dedent("""
    import json, os, pickle, sys, time, zmq
    from parsl_rcylon.runtime.wire import protocol
    address, marker, uids = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    channel = sys.argv[4] if len(sys.argv) > 4 else None

    class Bomb:
        def __reduce__(self):
            return (open, (marker, "w"))

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    token = "0" * 64
    if channel:
        from parsl_rcylon.runtime.wire.channel import ClientCredentials
        creds = ClientCredentials.load(channel)
        creds.apply(sock)
        token = creds.token
    sock.setsockopt(zmq.IDENTITY, b"stranger")
    sock.connect(address)
    bomb = pickle.dumps(Bomb())
    frames = [
        [bomb, bomb], [protocol.RESULT, bomb], [b"x"], [protocol.READY, b"{}"], [protocol.RESULT, b"null"],
        protocol.pack(protocol.READY, {"token": token, "worker": "rcylon.default.worker.000", "rank": 0,
                                       "size": 6, "pid": os.getpid(), "host": "stranger"}),
        protocol.pack(protocol.READY, {"token": token, "master": "rcylon.main.master", "pid": 1, "host": "s"}),
    ]
    for uid in uids:
        frames.append(protocol.pack(protocol.RESULT, {"uid": uid, "rank": 0, "ok": True}, pickle.dumps("forged")))
        frames.append(protocol.pack(protocol.RESULT, {"uid": uid, "rank": 0, "ok": True}, bomb))
    for f in frames:
        try:  # unauthenticated, it never gets a connection: its queue fills and it must not block
            sock.send_multipart(f, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
    time.sleep(1)
    print("SENT", len(frames), flush=True)
""")


@cylon_app(ranks=2)
def genuine(ctx, i, seconds):
    import time

    time.sleep(seconds)
    return f"genuine {i} from {ctx.comm.allreduce(1)} ranks"


def _stranger(address: str, marker: Path, uids, channel=None) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    args = [sys.executable, "-c", STRANGER, address, str(marker), ",".join(uids)] + ([channel] if channel else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=True).stdout


@pytest.mark.parametrize("insider", [False, True], ids=["no-keys", "with-client-keys"])
def test_a_stranger_cannot_run_code_forge_results_or_steal_ranks(rcylon, tmp_path, insider):
    marker = tmp_path / "pwned"
    futs = [genuine(i, 3.0) for i in range(3)]
    time.sleep(1.0)  # running now
    uids = [f.task_record["exec_fu"].parsl_executor_task_id for f in futs]  # the running tasks' own ids
    channel = rcylon._own.dispatcher.channel_file if insider else None
    assert _stranger(rcylon._own.dispatcher.address, marker, uids, channel).startswith("SENT")
    assert [f.result(timeout=120) for f in futs] == [f"genuine {i} from 2 ranks" for i in range(3)]
    assert not marker.exists(), "a stranger's pickle was unpickled"
    assert sum(v["ranks"] for v in rcylon.status().values()) == 6, "a stranger took over a rank"
    assert genuine(9, 0).result(timeout=60) == "genuine 9 from 2 ranks"


def test_the_run_directory_and_keys_are_private(rcylon):
    base = Path(rcylon.base_dir)
    keys = Path(rcylon._own.dispatcher.channel_file)
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    assert stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert ClientCredentials.load(str(keys)).encrypted, "encryption is the default"


def test_an_impostor_on_the_port_of_a_killed_client_runs_nothing_and_the_pilot_ends(tmp_path):
    """Kill the guard and then the client; bind the client's port; send TASKs: no rank runs them, and the
    pilot's own watchdogs (master and ranks, without the client-side guard) end every pilot process."""
    script = Path(__file__).parents[1] / "lifecycle_client.py"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(script.parent.parent), os.environ.get("PYTHONPATH", "")]))
    threshold = 15
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "runinfo"), str(threshold)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(tmp_path))
    address = sid = None
    lines = []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and sid is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("ADDRESS "):
                address = line.split()[1]
            elif line.startswith("SESSION "):
                sid = line.split()[1]
        assert sid and address, "client did not start:\n" + "".join(lines[-40:])
        guard = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "parsl_rcylon.runtime.guard" in " ".join(p.cmdline())]
        assert len(guard) == 1
        forks = [p for p in psutil.Process(proc.pid).children(recursive=True) if p not in guard]
        guard[0].kill()  # a zombie until the client is gone: nothing to wait for
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    killed_at = time.monotonic()
    try:
        _impostor_runs_nothing(tmp_path, address, sid, threshold, killed_at)
    finally:
        for p in forks:  # RP's proxy fork is the guard's to end; the guard was killed on purpose here
            try:
                p.kill()
            except psutil.Error:
                pass


def _impostor_runs_nothing(tmp_path, address, sid, threshold, killed_at):
    marker = tmp_path / "impostor-ran"
    impostor = subprocess.Popen([sys.executable, "-c", IMPOSTOR, address, str(marker), str(threshold + 10)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        out, _ = impostor.communicate(timeout=threshold + 60)
    finally:
        impostor.kill()
    assert "BOUND" in out, out
    assert "REACHED 0" in out, f"a rank completed a handshake with the impostor: {out}"
    assert not marker.exists(), "a rank ran the impostor's task"
    left = wait_for_no_processes(sid, timeout=max(1.0, 60 - (time.monotonic() - killed_at)))
    assert left == [], f"pilot processes outlived the client by {time.monotonic() - killed_at:.0f} s: {left}"
    print(f"every pilot process of {sid} ended {time.monotonic() - killed_at:.0f} s after SIGKILL")


# Binds the dead client's port (no keys of the run), heartbeats and TASKs every rank identity it can guess
# until the deadline; reports how many sends reached a peer.
IMPOSTOR = textwrap.dedent("""
    import pickle, sys, time, zmq
    from parsl.serialize import pack_apply_message
    from parsl_rcylon.runtime.wire import protocol
    address, marker, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    port = int(address.rsplit(":", 1)[1])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    for _ in range(100):
        try:
            sock.bind(f"tcp://127.0.0.1:{port}")
            break
        except zmq.ZMQError:
            time.sleep(0.1)
    print("BOUND", flush=True)

    def evil():
        open(marker, "w").write("ran")

    payload = pack_apply_message(evil, (), {})
    idents = [f"victim.default.worker.000/{r}".encode() for r in range(2)]
    reached = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while sock.poll(0):
            sock.recv_multipart()
            reached += 1
        for ident in idents:
            for kind, header, blob in ((protocol.HEARTBEAT, {}, None),
                                       (protocol.TASK, {"uid": "x", "name": "evil", "cylon": False,
                                                        "ranks": [0], "tag": 1, "options": {}}, payload)):
                try:
                    sock.send_multipart([ident] + protocol.pack(kind, header, blob))
                    reached += 1
                except zmq.ZMQError:
                    pass
        time.sleep(0.5)
    print("REACHED", reached, flush=True)
""")
