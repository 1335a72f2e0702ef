"""A stand-in for one worker rank, as a real process: the same channel, identity and messages as
runtime/worker.py.  ``python fake_rank.py ADDRESS WORKER RANK SIZE MODE [HOST_DIR HOST_RANKS HOST]``;
MODE is ``sit`` (it sits on every task it gets, as a rank stuck in, or killed during, a task would) or
``answer`` (rank 0 returns the task's name).  It prints ``TASK <uid>`` for every task and
``CANCEL <uid>`` for every cancellation.

With ``HOST_DIR`` (a private directory, as the host's leader makes), ``HOST_RANKS`` (the worker's ranks on
this host, comma-separated, lowest first: the leader) and ``HOST`` (the host name it reports), it is one of
a host's ranks as runtime/agent/worker.py runs them, with the real :mod:`parsl_rcylon.runtime.agent.host`:
the ranks learn each other's PIDs through the directory (where the worker uses MPI), the leader answers
heartbeats and reports a follower that exits or goes silent (printing ``LOST <rank>``), a follower answers
nothing but tasks and leaves (status 3) when its leader is gone, telling the executor first.
"""
from __future__ import annotations

import os
import socket
import sys
import time

import zmq
from parsl.serialize import serialize

from parsl_rcylon.runtime.agent.host import WATCH_PERIOD, FollowerWatch, HostGroup, LeaderWatch
from parsl_rcylon.runtime.wire import protocol
from parsl_rcylon.runtime.wire.channel import ClientCredentials


def host_group(beat_dir: str, ranks: str, rank: int) -> HostGroup:
    """The host's ranks and PIDs, each rank writing its PID into the directory (the worker's allgather)."""
    mine = [int(r) for r in ranks.split(",")]
    with open(os.path.join(beat_dir, f"pid.{rank}"), "w") as f:
        f.write(str(os.getpid()))
    pids = []
    for r in mine:
        path = os.path.join(beat_dir, f"pid.{r}")
        while not (os.path.exists(path) and open(path).read()):
            time.sleep(0.02)
        pids.append(int(open(path).read()))
    return HostGroup(tuple(mine), tuple(pids), beat_dir)


def main(address: str, worker: str, rank: str, size: str, mode: str, beat_dir: str = "", host_ranks: str = "",
         host: str = "") -> None:
    credentials = ClientCredentials.from_environment()
    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, f"{worker}/{rank}".encode())
    credentials.apply(sock)
    sock.connect(address)
    group = host_group(beat_dir, host_ranks, int(rank)) if beat_dir else None
    leader = group.leader if group else int(rank)
    lead = follow = None
    if group is not None and leader == int(rank):
        lead = LeaderWatch(group, host)
    elif group is not None:
        follow = FollowerWatch(group, int(rank), threshold=30.0)
    ready = {"token": credentials.token, "worker": worker, "rank": int(rank), "size": int(size),
             "pid": os.getpid(), "host": host or socket.gethostname(), "gpus": [], "pool": "default"}
    if group is not None:
        ready["leader"] = leader
    sock.send_multipart(protocol.pack(protocol.READY, ready))
    rank_timeout = 120.0
    while True:
        if not sock.poll(timeout=int(WATCH_PERIOD * 1000) if group else None):
            now = time.monotonic()
            if lead is not None and lead.due(now):
                for lost in lead.check(now, rank_timeout):
                    sock.send_multipart(protocol.pack(protocol.RANK_LOST, lost))
                    print("LOST", lost["rank"], flush=True)
            if follow is not None and follow.due(now):
                follow.beat(now)
                if follow.leader_gone():
                    sock.send_multipart(protocol.pack(protocol.RANK_LOST, {
                        "rank": group.leader, "pid": group.leader_pid, "host": host, "reason": "exited"}))
                    time.sleep(0.2)
                    os._exit(3)
            continue
        message = protocol.unpack(sock.recv_multipart())
        if message.kind == protocol.HEARTBEAT:
            rank_timeout = message.header.get("rank_timeout", rank_timeout)
            if follow is not None:  # the executor heartbeats leaders only: a test reading this fails
                print("HEARTBEAT", flush=True)
            sock.send_multipart(protocol.pack(protocol.ALIVE))
        elif message.kind == protocol.CANCEL:
            print("CANCEL", message.header["uid"], flush=True)
        elif message.kind == protocol.EXIT:
            print("EXIT", flush=True)
            os._exit(5)
        elif message.kind == protocol.TASK:
            uid = message.header["uid"]
            print("TASK", uid, flush=True)
            if mode == "answer":
                task_rank = message.header["ranks"].index(int(rank))
                sock.send_multipart(protocol.pack(protocol.RESULT, {"uid": uid, "rank": task_rank, "ok": True},
                                                  serialize(message.header["name"]) if task_rank == 0 else None))


if __name__ == "__main__":
    main(*sys.argv[1:9])
