"""A stand-in for one worker rank, as a real process: the same channel, identity and messages as
runtime/worker.py.  ``python fake_rank.py ADDRESS WORKER RANK SIZE MODE``; MODE is ``sit`` (it sits on
every task it gets, as a rank stuck in, or killed during, a task would) or ``answer`` (rank 0 returns
the task's name).  It prints ``TASK <uid>`` for every task and ``CANCEL <uid>`` for every cancellation.
"""
from __future__ import annotations

import os
import socket
import sys

import zmq
from parsl.serialize import serialize

from parsl_rcylon.runtime.wire import protocol
from parsl_rcylon.runtime.wire.channel import ClientCredentials


def main(address: str, worker: str, rank: str, size: str, mode: str) -> None:
    credentials = ClientCredentials.from_environment()
    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, f"{worker}/{rank}".encode())
    credentials.apply(sock)
    sock.connect(address)
    sock.send_multipart(protocol.pack(protocol.READY, {
        "token": credentials.token, "worker": worker, "rank": int(rank), "size": int(size),
        "pid": os.getpid(), "host": socket.gethostname(), "gpus": [], "pool": "default"}))
    while True:
        message = protocol.unpack(sock.recv_multipart())
        if message.kind == protocol.HEARTBEAT:
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
    main(*sys.argv[1:6])
