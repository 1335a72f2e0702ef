"""Messages between the executor and its RAPTOR master and worker ranks.

Every message is a two-frame ZeroMQ message: a one-byte kind and a pickled
body.  Ranks and the master connect DEALER sockets to the executor's ROUTER,
so the executor addresses each of them by identity.
"""
from __future__ import annotations

import pickle
from typing import Any, List, Tuple

# executor -> rank / master
TASK = b"T"        # body: task dict (RadicalCylonExecutor.submit's message, plus ranks, cores and tag
                   # from Dispatcher._start)
HEARTBEAT = b"H"   # body: None; absence for too long means the client died
STOP = b"S"        # body: None; end cleanly

# rank / master -> executor
READY = b"R"       # body: dict describing the rank or master
RESULT = b"D"      # body: per-rank result dict
BYE = b"B"         # body: None; rank or master is leaving
ALIVE = b"A"       # body: None; a rank's answer to each heartbeat

#: Environment variables that carry the executor's address and liveness rules.
ENV_ADDRESS = "RCYLON_CLIENT_ADDRESS"
ENV_HEARTBEAT = "RCYLON_HEARTBEAT_PERIOD"
ENV_THRESHOLD = "RCYLON_HEARTBEAT_THRESHOLD"
ENV_POOL = "RCYLON_POOL"
ENV_GPUS_PER_RANK = "RCYLON_GPUS_PER_RANK"   # devices each rank of a GPU pool gets
ENV_GPU_OFFSET = "RCYLON_GPU_OFFSET"         # first device of this worker on its node
ENV_GPU_SOURCE = "RCYLON_GPU_SOURCE"         # "rp": trust RP's per-rank CUDA_VISIBLE_DEVICES


def pack(kind: bytes, body: Any = None) -> List[bytes]:
    return [kind, pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)]


def unpack(frames: List[bytes]) -> Tuple[bytes, Any]:
    return frames[0], pickle.loads(frames[1])
