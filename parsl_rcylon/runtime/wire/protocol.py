"""Messages between the executor and its RAPTOR masters and worker ranks.

A message is a list of ZeroMQ frames: a one-byte kind, a JSON header (a
flat object whose fields are checked against the kind's schema below), and
for some kinds one opaque binary frame (a task's Parsl payload, a result's
serialized value or exception).  Nothing in a message is unpickled by this
module: headers are JSON, and the binary frame is deserialized only by the
code that needs it, after the sender was authenticated (see ``channel``)
and the header checked.

Ranks and masters connect DEALER sockets to the executor's ROUTER, so the
executor addresses each of them by identity.  Heartbeats go to one rank of
each worker per host, its *leader* (named in every rank's ``READY``), which
watches the other ranks of its host and reports one that exits or goes
silent (``RANK_LOST``); see :mod:`..agent.host`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .task import Assignment, Task, wire_schema

# executor -> rank / master
TASK = b"T"        # header: the Task and its Assignment (.task); blob: Parsl's packed function and arguments
HEARTBEAT = b"H"   # to hosts' leaders and masters; absence for too long means the client died; header: rank_timeout
STOP = b"S"        # end cleanly
CANCEL = b"C"      # header: uid; interrupt that task on this rank
EXIT = b"X"        # header: reason; leave at once (the worker is being replaced)

# rank / master -> executor
READY = b"R"       # header: who the rank or master is, and the run's token
RESULT = b"D"      # header: per-rank outcome; blob: the value (rank 0) or the exception; the rank is free
ERROR = b"E"       # header: as RESULT, ok false; blob: the exception; sent the moment user code raised
BYE = b"B"         # rank or master is leaving
ALIVE = b"A"       # a host leader's answer to each heartbeat
RANK_LOST = b"L"   # header: rank, pid, host, reason; a rank of the sender's host exited or went silent

# attached client <-> pilot server (runtime/attach/); HEARTBEAT, ALIVE (with the pools' figures) and
# STOP serve there too
ATTACH = b"a"      # header: the run's token, who attaches
WELCOME = b"w"     # header: the session; the client may submit
SUBMIT = b"s"      # header: the Task and its resource spec; blob: Parsl's packed call
OUTCOME = b"o"     # header: uid, ok; blob: the serialized value or exception
STARTED = b"r"     # header: uid; the client's task was sent to its ranks
DETACH = b"d"      # the client leaves; the pilot stays up

#: Environment variables that carry the executor's address and liveness rules.
ENV_ADDRESS = "RCYLON_CLIENT_ADDRESS"
ENV_HEARTBEAT = "RCYLON_HEARTBEAT_PERIOD"
ENV_THRESHOLD = "RCYLON_HEARTBEAT_THRESHOLD"
ENV_POOL = "RCYLON_POOL"
ENV_GPUS_PER_RANK = "RCYLON_GPUS_PER_RANK"   # devices each rank of a GPU pool gets
ENV_GPU_OFFSET = "RCYLON_GPU_OFFSET"         # first device of this worker on its node
ENV_GPU_SOURCE = "RCYLON_GPU_SOURCE"         # "rp": trust RP's per-rank CUDA_VISIBLE_DEVICES

Blob = Union[bytes, memoryview]

_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_BOOL = (bool,)
_LIST = (list,)
_DICT = (dict,)
_OPT_STR = (str, type(None))

# The fields of a task and of where it runs are declared once, in .task.
_TASK = wire_schema(Task)
_ASSIGNMENT = wire_schema(Assignment)

# kind -> (required fields, optional fields, whether a blob frame must follow)
_SCHEMAS: Dict[bytes, Tuple[Dict[str, tuple], Dict[str, tuple], Optional[bool]]] = {
    TASK: (dict(_TASK[0], **_ASSIGNMENT[0]), dict(_TASK[1], **_ASSIGNMENT[1]), True),
    HEARTBEAT: ({}, {"rank_timeout": _NUM}, False),
    STOP: ({}, {}, False),
    CANCEL: ({"uid": _STR}, {"reason": _STR}, False),
    EXIT: ({}, {"reason": _STR}, False),
    READY: ({"token": _STR, "pid": _INT, "host": _STR},
            {"worker": _STR, "rank": _INT, "size": _INT, "gpus": _LIST, "pool": _STR, "master": _STR,
             "leader": _INT}, False),
    RESULT: ({"uid": _STR, "rank": _INT, "ok": _BOOL},
             {"t_start": _NUM, "t_end": _NUM, "setup_error": _STR, "error": _BOOL, "cancelled": _BOOL}, None),
    BYE: ({}, {}, False),
    ALIVE: ({}, {"pools": _DICT}, False),
    RANK_LOST: ({"rank": _INT, "pid": _INT, "host": _STR, "reason": _STR}, {}, False),
    ATTACH: ({"token": _STR, "pid": _INT, "host": _STR}, {}, False),
    WELCOME: ({"session": _STR, "pid": _INT}, {"pools": _DICT}, False),
    SUBMIT: (dict(_TASK[0], resources=_DICT), _TASK[1], True),
    OUTCOME: ({"uid": _STR, "ok": _BOOL}, {}, True),
    STARTED: ({"uid": _STR}, {}, False),
    DETACH: ({}, {}, False),
}
_SCHEMAS[ERROR] = (_SCHEMAS[RESULT][0], _SCHEMAS[RESULT][1], True)

#: Largest JSON header accepted (bytes); task options and host names fit easily.
MAX_HEADER_BYTES = 1 << 20


class ProtocolError(ValueError):
    """A message that does not follow the protocol; it is dropped, never acted on."""


@dataclass(frozen=True)
class Message:
    """One decoded message: its kind, its checked header, and its binary frame if any."""

    kind: bytes
    header: Mapping[str, Any]
    blob: Optional[Blob] = None


# One encoder and decoder for every message: json.dumps with any option builds a new encoder per call,
# and json.loads on bytes sniffs the encoding first (peers send UTF-8 only).
_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode


def pack(kind: bytes, header: Optional[Mapping[str, Any]] = None, blob: Optional[Blob] = None) -> List[Any]:
    """The frames of a message (the header must be JSON-serializable)."""
    frames: List[Any] = [kind, _encode(header or {}).encode()]
    if blob is not None:
        frames.append(blob)
    return frames


def unpack(frames: Sequence[Any]) -> Message:
    """Decode and check a message; raise :class:`ProtocolError` on anything unexpected.

    ``frames`` are ``bytes`` or ``zmq.Frame`` objects (the blob stays a
    zero-copy view of its frame).
    """
    if not 2 <= len(frames) <= 3:
        raise ProtocolError(f"expected 2 or 3 frames, got {len(frames)}")
    kind = _bytes(frames[0])
    schema = _SCHEMAS.get(kind)
    if schema is None:
        raise ProtocolError(f"unknown message kind {kind[:8]!r}")
    required, optional, blob_rule = schema
    raw = _bytes(frames[1])
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = _decode(raw.decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError(f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a {type(header).__name__}, not an object")
    for key, types in required.items():
        if key not in header:
            raise ProtocolError(f"{name(kind)} without {key!r}")
        _check(kind, key, header[key], types)
    for key, types in optional.items():
        if key in header:
            _check(kind, key, header[key], types)
    has_blob = len(frames) == 3
    if blob_rule is not None and has_blob != blob_rule:
        raise ProtocolError(f"{name(kind)} {'needs' if blob_rule else 'takes no'} binary frame")
    blob = None
    if has_blob:
        frame = frames[2]
        blob = frame.buffer if hasattr(frame, "buffer") else frame
    return Message(kind, header, blob)


def _bytes(frame: Any) -> bytes:
    return frame if type(frame) is bytes else frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _check(kind: bytes, key: str, value: Any, types: tuple) -> None:
    # bool is an int subclass; a field that wants a number never takes True.
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise ProtocolError(f"{name(kind)} field {key!r} is a {type(value).__name__}")


_NAMES = {TASK: "TASK", HEARTBEAT: "HEARTBEAT", STOP: "STOP", CANCEL: "CANCEL", EXIT: "EXIT", READY: "READY",
          RESULT: "RESULT", ERROR: "ERROR", BYE: "BYE", ALIVE: "ALIVE", RANK_LOST: "RANK_LOST", ATTACH: "ATTACH",
          WELCOME: "WELCOME", SUBMIT: "SUBMIT", OUTCOME: "OUTCOME", STARTED: "STARTED", DETACH: "DETACH"}


def name(kind: bytes) -> str:
    """The name of a message kind, for logs."""
    return _NAMES.get(kind, repr(kind))
