"""The executor's channel against hostile peers, without a pilot: a real dispatcher, real rank processes,
and attackers as real sockets.  Nothing a peer sends is unpickled before it is authenticated and checked;
no message ends the loop; results come only from the ranks a task runs on."""
from __future__ import annotations

import json
import os
import pickle
import socket
import stat
import time

import pytest
import zmq

from parsl_rcylon.resources import ResourceSpec
from parsl_rcylon.runtime.client.dispatcher import Dispatcher
from parsl_rcylon.runtime.wire import protocol
from parsl_rcylon.runtime.wire.channel import ChannelError, ChannelOptions, ClientCredentials, ServerChannel

from .test_dispatcher import expect_line, start_rank, task


class Bomb:
    """Unpickling this creates a file: proof that a peer's bytes were unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(params=[True, False], ids=["encrypted", "unencrypted"])
def served(request, tmp_path):
    d = Dispatcher(tmp_path / "run", heartbeat_period=0.5, channel=ChannelOptions(encrypted=request.param),
                   cancel_grace=1.0)
    d.start()
    d.expect_worker("w", size=2)
    ranks = [start_rank(d, "w", r, 2, mode="answer") for r in range(2)]
    ctx = zmq.Context()
    try:
        d.wait_ready(30, lambda: None)
        yield d, ranks, ctx
    finally:
        for proc in ranks:
            proc.kill()
            proc.wait()
        ctx.destroy(linger=0)
        d.stop()


def outsider(ctx, d, credentials=None, identity=None):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    if credentials is not None:
        credentials.apply(sock)
    sock.connect(d.address)
    return sock


def still_serves(d, n=4):
    futs = [d.submit(task(f"ok{i}-{time.monotonic_ns()}", ResourceSpec(ranks=2), f"app{i}"), b"")
            for i in range(n)]
    return [f.result(timeout=15) for f in futs] == [f"app{i}" for i in range(n)]


MALFORMED = [
    [b"one frame"],
    [pickle.dumps({"x": 1})],
    [protocol.READY, b"not json"],
    [protocol.READY, b"[1, 2]"],
    [protocol.READY, json.dumps({"token": "t", "pid": 1, "host": "h", "worker": "w"}).encode()],  # no rank
    [protocol.READY, json.dumps({"token": 5, "pid": "x", "host": None}).encode()],
    [protocol.RESULT, b"null"],
    [protocol.RESULT, json.dumps({"uid": "t", "rank": True, "ok": 1}).encode()],
    [protocol.TASK, b"{}", b"x"],
    [b"Z", b"{}"],
    [protocol.ALIVE, b"{}", b"a", b"b"],
    [protocol.ERROR, json.dumps({"uid": "t", "rank": 0, "ok": False}).encode()],  # no exception frame
    [protocol.READY, b"{" + b" " * (protocol.MAX_HEADER_BYTES + 10) + b"}"],
]


def test_nothing_from_a_stranger_is_unpickled_and_the_loop_goes_on(served, tmp_path):
    d, _, ctx = served
    marker = tmp_path / "pwned"
    stranger = outsider(ctx, d)
    bomb = pickle.dumps(Bomb(str(marker)))
    stranger.send_multipart([protocol.RESULT, bomb])
    stranger.send_multipart([bomb, bomb])
    for frames in MALFORMED:
        stranger.send_multipart(frames)
    time.sleep(0.5)
    assert still_serves(d)
    assert not marker.exists(), "a peer's pickle was unpickled"


def test_malformed_frames_from_an_authenticated_peer_are_dropped(served):
    d, _, ctx = served
    insider = outsider(ctx, d, ClientCredentials.load(d.channel_file))
    for frames in MALFORMED:
        insider.send_multipart(frames)
    assert still_serves(d)


def test_forged_results_and_stolen_rank_numbers_are_refused(served):
    d, ranks, ctx = served
    credentials = ClientCredentials.load(d.channel_file)
    # Rank 1 of worker w, re-registered from another socket, must not take the real one's place.
    thief = outsider(ctx, d, credentials, identity=b"thief")
    thief.send_multipart(protocol.pack(protocol.READY, {
        "token": credentials.token, "worker": "w", "rank": 1, "size": 2, "pid": os.getpid(), "host": "x"}))
    # A READY with the wrong token, and one for a worker the executor never started.
    wrong = outsider(ctx, d, credentials, identity=b"wrong")
    wrong.send_multipart(protocol.pack(protocol.READY, {
        "token": "0" * 64, "worker": "w", "rank": 0, "size": 2, "pid": 1, "host": "x"}))
    ghost = outsider(ctx, d, credentials, identity=b"ghost")
    ghost.send_multipart(protocol.pack(protocol.READY, {
        "token": credentials.token, "worker": "ghost", "rank": 0, "size": 1, "pid": 1, "host": "x"}))
    time.sleep(0.5)
    # Forged results for the tasks below, from the thief and from a rank-1 identity of the real worker.
    futs = [d.submit(task(f"t{i}", ResourceSpec(ranks=2), f"real{i}"), b"") for i in range(5)]
    forged = pickle.dumps("forged")
    for i in range(5):
        for sock in (thief, wrong, ghost):
            sock.send_multipart(protocol.pack(protocol.RESULT, {"uid": f"t{i}", "rank": 0, "ok": True}, forged))
    assert [f.result(timeout=15) for f in futs] == [f"real{i}" for i in range(5)]
    assert d.stats()["default"]["ranks"] == 2
    assert still_serves(d)


def test_a_result_from_a_rank_of_the_worker_that_does_not_run_the_task_is_refused(tmp_path):
    # Worker of 2 ranks, a 1-rank task on rank 0 (it sits); rank 1 (genuine, registered) forges its result.
    d = Dispatcher(tmp_path, heartbeat_period=0.5)
    d.start()
    d.expect_worker("w", size=2)
    ctx = zmq.Context()
    sitter = start_rank(d, "w", 0, 2, mode="sit")
    try:
        credentials = ClientCredentials.load(d.channel_file)
        other = outsider(ctx, d, credentials, identity=b"w/1")
        other.send_multipart(protocol.pack(protocol.READY, {
            "token": credentials.token, "worker": "w", "rank": 1, "size": 2, "pid": os.getpid(),
            "host": socket.gethostname()}))  # one host: best fit then takes its lowest rank, the sitter
        d.wait_ready(30, lambda: None)
        fut = d.submit(task("t", ResourceSpec(ranks=1), "real"), b"")
        assert expect_line(sitter, "TASK") == "TASK t"
        other.send_multipart(protocol.pack(protocol.RESULT, {"uid": "t", "rank": 0, "ok": True},
                                           pickle.dumps("forged")))
        with pytest.raises(TimeoutError):
            fut.result(timeout=1.5)
    finally:
        sitter.kill()
        sitter.wait()
        ctx.destroy(linger=0)
        d.stop()


def test_an_oversized_message_is_refused_unread(tmp_path):
    d = Dispatcher(tmp_path, heartbeat_period=0.5, channel=ChannelOptions(max_frame_bytes=1 << 16))
    d.start()
    d.expect_worker("w", size=1)
    rank = start_rank(d, "w", mode="answer")
    ctx = zmq.Context()
    try:
        d.wait_ready(30, lambda: None)
        big = outsider(ctx, d, ClientCredentials.load(d.channel_file))
        big.send_multipart([protocol.ALIVE, b"{}", b"x" * (1 << 17)])
        time.sleep(0.3)
        assert d.submit(task("t", ResourceSpec(ranks=1), "fine"), b"").result(timeout=10) == "fine"
    finally:
        rank.kill()
        rank.wait()
        ctx.destroy(linger=0)
        d.stop()


def test_an_impostor_server_on_the_port_gets_no_connection(tmp_path):
    ctx = zmq.Context()
    try:
        real = ServerChannel(ctx, tmp_path / "real")
        credentials = ClientCredentials.load(real.channel_file)
        real.close()
        impostor = ServerChannel(ctx, tmp_path / "impostor", encrypted=False)
        rank = ctx.socket(zmq.DEALER)
        rank.setsockopt(zmq.LINGER, 0)
        rank.setsockopt(zmq.IDENTITY, b"w/0")
        credentials.apply(rank)  # pins the real server's key
        rank.connect(impostor.address)
        rank.send_multipart(protocol.pack(protocol.ALIVE))
        assert not impostor.socket.poll(1000), "the impostor heard the rank"
        with pytest.raises(zmq.ZMQError, match="Host unreachable"):  # no handshake: no such peer
            impostor.socket.send_multipart([b"w/0", *protocol.pack(protocol.TASK, {"uid": "x"}, b"p")])
        assert not rank.poll(500), "the rank heard the impostor"
        impostor.close()
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_keys_are_private_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    ctx = zmq.Context()
    try:
        server = ServerChannel(ctx, tmp_path)
        keys = os.path.dirname(server.channel_file)
        assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(server.channel_file).st_mode) == 0o600
        assert os.listdir(keys) == ["channel.json"]
        text = open(server.channel_file).read()
        assert "secret" in text and server.token in text
        server.close()
    finally:
        ctx.destroy(linger=0)
        os.umask(old)


def test_a_readable_channel_file_is_refused(tmp_path):
    ctx = zmq.Context()
    try:
        server = ServerChannel(ctx, tmp_path)
        os.chmod(server.channel_file, 0o640)
        with pytest.raises(ChannelError, match="must belong to this user and be private"):
            ClientCredentials.load(server.channel_file)
        server.close()
    finally:
        ctx.destroy(linger=0)


def _channel_file(tmp_path, encrypted: bool) -> str:
    ctx = zmq.Context()
    try:
        server = ServerChannel(ctx, tmp_path, encrypted=encrypted)
        server.close()
        return server.channel_file
    finally:
        ctx.destroy(linger=0)


def test_a_channel_file_without_keys_is_refused_unless_unencrypted_was_asked(tmp_path):
    path = _channel_file(tmp_path, encrypted=True)
    data = json.load(open(path))
    del data["curve"], data["encrypted"]  # keys removed: it would silently become an unencrypted channel
    os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, json.dumps(data).encode())
    os.close(fd)
    for asked in (None, True):
        with pytest.raises(ChannelError, match="no CurveZMQ keys"):
            ClientCredentials.load(path, encrypted=asked)
    assert not ClientCredentials.load(path, encrypted=False).encrypted
    # the executor's own unencrypted file says so, and is accepted unless keys were required
    plain = _channel_file(tmp_path / "plain", encrypted=False)
    assert not ClientCredentials.load(plain).encrypted
    with pytest.raises(ChannelError, match="no CurveZMQ keys"):
        ClientCredentials.load(plain, encrypted=True)


def test_a_channel_file_is_checked_on_the_open_file_never_through_a_link(tmp_path):
    path = _channel_file(tmp_path, encrypted=True)
    link = tmp_path / "link.json"
    os.symlink(path, link)  # a private file of this user, but reached through a link
    with pytest.raises(ChannelError, match="symbolic link"):
        ClientCredentials.load(str(link))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ChannelError, match="not a regular file"):
        ClientCredentials.load(str(fifo))  # opened without waiting for a writer, then refused
    assert ClientCredentials.load(path).encrypted


def test_the_listener_queues_thousands_of_connections(tmp_path):
    """All ranks of a worker connect at once: the kernel's accept queue for the channel holds thousands
    (ZeroMQ's default of 100 dropped SYNs, and ranks waited seconds to retry), up to ``somaxconn``."""
    import shutil
    import subprocess

    from parsl_rcylon.runtime.wire.channel import LISTEN_BACKLOG

    if shutil.which("ss") is None:
        pytest.skip("iproute2's ss is not installed: the listen queue's size cannot be read")
    ctx = zmq.Context()
    server = ServerChannel(ctx, tmp_path)
    try:
        port = server.address.rsplit(":", 1)[1]
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
        with open("/proc/sys/net/core/somaxconn") as f:
            cap = int(f.read())
        # a listening socket's Send-Q is its accept queue's size
        assert [int(line.split()[2]) for line in out.splitlines()] == [min(LISTEN_BACKLOG, cap)]
    finally:
        server.close()
        ctx.term()
