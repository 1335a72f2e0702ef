"""CurveZMQ on every Radical Pilot socket of a session: per-session keys, peers authenticated.

RP: every ZeroMQ socket of ``radical.utils.zmq`` (queue and pubsub bridges,
the registry, the agent's and RAPTOR's servers, pipes, and the putters,
getters, publishers, subscribers and clients that connect to them) speaks
ZeroMQ's NULL mechanism: no encryption and no credentials.  Whoever reaches
a port may read queued messages or publish on the control pubsub, where an
RPC (``prepare_env`` with a ``pre_exec`` line) makes the agent run a command
as the user.  Loopback binds (``sockets``) keep other hosts out, not other
users of the same host, and a multi-node pilot must listen beyond loopback.

Changed: a session of this project writes a key file (:func:`write_keys`,
0600 in the private run directory, read by every RP process it starts
through ``RCYLON_RP_CURVE``): a server key pair and a client key pair, fresh
for each session.  Every socket those modules create

* binds as a CurveZMQ server with the session's server key pair;
* connects as a CurveZMQ client with the session's client key pair,
  pinning the session's server key.

Both key pairs, public halves included, exist only in the private key file
and in the session's processes: the server's public key is the session's
shared secret.  A stranger then gets no further than ZeroMQ's greeting: a
NULL peer is dropped at the mechanism check, and a CURVE peer that does not
know the server's public key cannot make a HELLO the server opens (its box
is sealed to that key).  No frame of hers reaches RP's code.  There is no
ZAP handler checking client keys: it takes a thread per ZeroMQ context,
which would keep every context RP leaves to the garbage collector alive.

Which sockets: in an RP process that the hook loads into, ``RCYLON_RP_CURVE``
is set for the process's life, so all of them.  In the executor's own
process RP opens sockets whenever it likes (a ``Pilot`` object connects to
the session's pubsubs when ``submit_pilots`` makes it), so there the keys
hold from :func:`hold_keys` to the matching :func:`release_keys`: from the
opening of the first session of this project in the process to the closing
of the last.  Sessions open at the same time in one process share one set
of keys (they are one user's, in one process); a later session gets fresh
ones.  A stock RP session in the same process while one of this project's
is open gets the keys too, and cannot talk to its own pilot.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import threading
import types
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

logger = logging.getLogger(__name__)

#: The session's key file, named for every RP process of the session.
ENV_CURVE = "RCYLON_RP_CURVE"

#: Where a session's key file lives under its run directory (``keys/`` is private, as the channel's).
KEY_FILE = Path("keys") / "rp_curve.json"


class CurveKeyError(RuntimeError):
    """The session's Radical Pilot key file is missing, not private, not this user's, or malformed."""


class Keys(NamedTuple):
    """A session's keys, Z85-encoded as ZeroMQ takes them."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes


#: Keys already read or written by this process, by file.
_loaded: Dict[str, Keys] = {}
_lock = threading.Lock()


def fresh_keys() -> Keys:
    """A new server key pair and client key pair."""
    import zmq

    return Keys(*zmq.curve_keypair(), *zmq.curve_keypair())


def write_keys(run_dir: Path, keys: Optional[Keys] = None) -> Path:
    """Write ``keys`` (fresh ones by default) for a session under ``run_dir``; return the file.

    The file is ``keys/rp_curve.json``, 0600 in a 0700 directory.  A file of
    an earlier session there is replaced by a new file: the old one is
    unlinked first, and the new one created exclusively, without following
    links.
    """
    keys = keys or fresh_keys()
    path = Path(run_dir) / KEY_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        json.dump({name: value.decode("ascii") for name, value in keys._asdict().items()}, f)
    with _lock:
        _loaded[str(path)] = keys
    return path


_held: Optional[Keys] = None
_holders = 0


def hold_keys(run_dir: Path) -> Path:
    """Give this process's RP sockets the keys of a session under ``run_dir`` until :func:`release_keys`.

    The first holder makes fresh keys; a session opened while another one
    holds keys shares them (see the module docstring).  Returns the key
    file, written under ``run_dir`` for the session's other processes.
    """
    global _held, _holders
    with _lock:
        if _held is None:
            _held = fresh_keys()
        _holders += 1
        keys = _held
    return write_keys(run_dir, keys)


def release_keys() -> None:
    """End one :func:`hold_keys`; when none is left the process's RP sockets go without keys again."""
    global _held, _holders
    with _lock:
        _holders = max(0, _holders - 1)
        if _holders == 0:
            _held = None


def read_keys(path: str) -> Keys:
    """The keys in ``path``, trusted only as a private regular file of this user (checked on the open file)."""
    with _lock:
        if path in _loaded:
            return _loaded[path]
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise CurveKeyError(f"cannot open Radical Pilot's key file {path}: {exc}") from exc
        with os.fdopen(fd) as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise CurveKeyError(f"Radical Pilot's key file {path} is not a private file of this user "
                                    f"(mode {stat.filemode(st.st_mode)}, uid {st.st_uid})")
            try:
                raw = json.load(f)
                keys = Keys(*(raw[name].encode("ascii") for name in Keys._fields))
            except (ValueError, KeyError, AttributeError) as exc:
                raise CurveKeyError(f"Radical Pilot's key file {path} is malformed: {exc!r}") from exc
        _loaded[path] = keys
        return keys


def _keys_now() -> Optional[Keys]:
    path = os.environ.get(ENV_CURVE)
    return read_keys(path) if path else _held


def _serve(sock: Any, keys: Keys) -> None:
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public
    sock.curve_server = True


def _client(sock: Any, keys: Keys) -> None:
    sock.curve_serverkey = keys.server_public
    sock.curve_publickey = keys.client_public
    sock.curve_secretkey = keys.client_secret


_stand_in: Optional[types.ModuleType] = None


def curve_zmq() -> types.ModuleType:
    """A stand-in for the ``zmq`` module whose contexts make CurveZMQ sockets (see the module docstring)."""
    global _stand_in
    import zmq

    if _stand_in is not None:
        return _stand_in

    class CurveSocket(zmq.Socket):
        def bind(self, addr: str) -> Any:
            keys = _keys_now()
            if keys is not None:
                _serve(self, keys)
            return super().bind(addr)

        def connect(self, addr: str) -> Any:
            keys = _keys_now()
            if keys is not None:
                _client(self, keys)
            return super().connect(addr)

    class CurveContext(zmq.Context):
        _socket_class = CurveSocket
        _instance = None  # the class's own singleton, not the one of plain ``zmq.Context``

    stand_in = types.ModuleType(zmq.__name__, zmq.__doc__)
    stand_in.__dict__.update({k: v for k, v in zmq.__dict__.items() if not k.startswith("__")})
    stand_in.Context = CurveContext
    stand_in._rcylon_curve = True
    _stand_in = stand_in
    return stand_in


def patch_zmq_name(mod: Any) -> None:
    """Patch one ``radical.utils.zmq`` module: its name ``zmq`` makes CurveZMQ sockets."""
    # RP: the module makes its sockets from ``zmq.Context()`` / ``zmq.Context.instance()`` with
    # ZeroMQ's NULL mechanism.  Changed: from contexts whose sockets do CurveZMQ with the
    # session's keys (this module's docstring), whenever a session's key file is named.
    mod.zmq = curve_zmq()
