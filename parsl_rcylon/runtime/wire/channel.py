"""The authenticated channel between the executor and the processes of its pilot.

The executor binds one ZeroMQ ROUTER socket; every worker rank and RAPTOR
master connects a DEALER to it.  By default the channel is CurveZMQ:

* The executor makes a fresh server key pair and a fresh client key pair
  for every run.  The server's secret key never leaves the executor's memory.
* The client key pair and the server's *public* key are written to
  ``<run dir>/keys/channel.json`` (directory 0700, file 0600), which the
  pilot's processes read from the shared filesystem.  A rank pins the server
  key, so a process that took over the executor's port after the client
  died cannot complete a handshake with it.
* The executor's authenticator (ZAP) admits only the run's client key, so a
  process that can reach the port but cannot read the key file gets no
  connection, and nothing it sends is ever decoded.
* Every registration carries the run's token (also in the key file): a
  READY naming a worker this executor did not start is refused.

``encrypted=False`` keeps the token but drops CurveZMQ: anyone who can reach
the port may connect, read tasks in transit and try to register (see
``docs/security.md``).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import zmq

from ...permissions import PrivateFileError, private_dir, read_private, write_private

logger = logging.getLogger(__name__)
#: Connections the kernel queues for the ROUTER before it accepts them.  Every rank of a worker connects
#: at once when the worker starts; ZeroMQ's default of 100 overflowed with thousands, the kernel dropped
#: their SYNs and they retried after 1, 3, 7... s: 4,096 ranks took 35-39 s to register, against 5-7 s
#: with this (the kernel caps it at ``net.core.somaxconn``).
LISTEN_BACKLOG = 4096
_MORE = int(zmq.SNDMORE)  # a plain int: pyzmq's flag enums cost a microsecond per | at every frame

#: Name of the file the pilot's processes read the channel settings from.
CHANNEL_FILE = "channel.json"
#: Environment variable that points the pilot's processes at it.
ENV_CHANNEL = "RCYLON_CHANNEL_FILE"
#: "0" when the executor was made with ``encrypted=False`` (its pilot's processes then accept no keys).
ENV_ENCRYPTED = "RCYLON_CHANNEL_ENCRYPTED"
#: ZAP domain of the executor's socket.
_DOMAIN = "rcylon"


class ChannelError(RuntimeError):
    """The channel settings are missing, unreadable, not private, or malformed."""


@dataclass(frozen=True)
class ClientCredentials:
    """What a rank or master needs to connect: the run's token, and keys unless unencrypted.

    Parameters
    ----------
    token : str
        The run's registration token.
    server_public, public, secret : bytes or None
        Z85 CurveZMQ keys (``None`` when the channel is not encrypted).
    """

    token: str
    server_public: Optional[bytes] = None
    public: Optional[bytes] = None
    secret: Optional[bytes] = None

    @property
    def encrypted(self) -> bool:
        return self.server_public is not None

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CurveZMQ client that only talks to the run's server."""
        if self.encrypted:
            sock.curve_secretkey = self.secret
            sock.curve_publickey = self.public
            sock.curve_serverkey = self.server_public

    @classmethod
    def load(cls, path: str, encrypted: Optional[bool] = None) -> ClientCredentials:
        """Read ``path``; refuse it unless it is a private regular file of this user.

        The checks are made on the open file (``fstat`` of a descriptor opened
        with ``O_NOFOLLOW``), so the file cannot be swapped for a link or
        another file between the check and the read.  A file without CurveZMQ
        keys is refused unless the channel was made unencrypted on purpose:
        ``encrypted=False`` here, or (``encrypted=None``) the file itself says
        so, as the executor writes it for ``encrypted=False``.
        """
        try:
            data = json.loads(read_private(path, "channel file").decode("utf-8"))
        except PrivateFileError as err:
            raise ChannelError(str(err)) from err
        except (OSError, ValueError) as err:
            raise ChannelError(f"cannot read the channel file {path}: {err}") from err
        try:
            token = str(data["token"])
            keys = data.get("curve")
            if not keys:
                unencrypted_on_purpose = encrypted is False or (encrypted is None and data.get("encrypted") is False)
                if not unencrypted_on_purpose:
                    raise ChannelError(f"{path}: the channel file has no CurveZMQ keys (an unencrypted channel); "
                                       "refused unless the executor was made with encrypted=False")
                return cls(token=token)
            return cls(token=token, server_public=keys["server_public"].encode("ascii"),
                       public=keys["public"].encode("ascii"), secret=keys["secret"].encode("ascii"))
        except (KeyError, TypeError, AttributeError) as err:
            raise ChannelError(f"{path}: malformed channel file ({err!r})") from err

    @classmethod
    def from_environment(cls) -> ClientCredentials:
        """The credentials named by ``RCYLON_CHANNEL_FILE``, encrypted as ``RCYLON_CHANNEL_ENCRYPTED`` says (1/0)."""
        path = os.environ.get(ENV_CHANNEL)
        if not path:
            raise ChannelError(f"{ENV_CHANNEL} is not set: this process was not started by an executor")
        flag = os.environ.get(ENV_ENCRYPTED)
        return cls.load(path, encrypted=None if flag is None else flag != "0")


class _AdmitOne:
    """ZAP credentials provider that admits exactly one client public key."""

    def __init__(self, public: bytes) -> None:
        self._public = public

    def callback(self, domain: str, key: bytes) -> bool:
        admitted = secrets.compare_digest(key, self._public)  # pyzmq passes the Z85 form
        if not admitted:
            logger.warning("refused a connection with an unknown CurveZMQ key")
        return admitted


@dataclass(frozen=True)
class ChannelOptions:
    """The executor's channel settings, checked when made.

    Parameters
    ----------
    encrypted : bool
        CurveZMQ authentication and encryption (the default); ``False`` keeps
        only the registration token and message checks.
    port_range : (int, int), optional
        Lowest and highest port the client may listen on; any free port otherwise.
    max_frame_bytes : int
        Largest ZeroMQ frame a peer may send (at least 64 KiB); a larger one is
        refused unread.  Not the engine's ``max_message_bytes`` (bytes one MPI call moves).
    """

    encrypted: bool = True
    port_range: Optional[Tuple[int, int]] = None
    max_frame_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.port_range is not None and not 0 < self.port_range[0] <= self.port_range[1] < 65536:
            raise ValueError(f"port_range must be (lowest, highest) ports within 1..65535, got {self.port_range}")
        if self.max_frame_bytes < 1 << 16:
            raise ValueError(f"max_frame_bytes must be at least 65536, got {self.max_frame_bytes}")


class ServerChannel:
    """The executor's end: a bound ROUTER socket, and the key file for its peers.

    Parameters
    ----------
    context : zmq.Context
        Context the socket (and the authenticator) live in.
    run_dir : path
        Directory under which ``keys/`` is made (the shared filesystem on clusters).
    bind_address : str
        Interface to bind (``127.0.0.1`` for local pilots, ``*`` for all).
    advertised_address : str, optional
        Host name or address peers connect to (default ``bind_address``).
    port_range : (int, int), optional
        Lowest and highest port to bind (firewalled sites); any free port otherwise.
    encrypted : bool
        CurveZMQ authentication and encryption (the default); ``False`` keeps
        only the registration token.
    max_frame_bytes : int
        A peer that sends a larger ZeroMQ frame is disconnected before the
        frame is read.
    """

    def __init__(self, context: zmq.Context, run_dir: os.PathLike, bind_address: str = "127.0.0.1",
                 advertised_address: Optional[str] = None, port_range: Optional[Tuple[int, int]] = None,
                 encrypted: bool = True, max_frame_bytes: int = 1 << 30) -> None:
        self.encrypted = encrypted
        self.token = secrets.token_hex(32)
        self._auth = None
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self.socket.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        credentials = ClientCredentials(token=self.token)
        if encrypted:
            server_public, server_secret = zmq.curve_keypair()
            public, secret = zmq.curve_keypair()
            credentials = ClientCredentials(self.token, server_public, public, secret)
            self._auth = _start_authenticator(context, public)
            self.socket.zap_domain = _DOMAIN.encode()
            self.socket.curve_server = True
            self.socket.curve_secretkey = server_secret
        keys = private_dir(Path(run_dir) / "keys")
        self.channel_file = str(keys / CHANNEL_FILE)
        write_private(self.channel_file, json.dumps(_to_json(credentials)).encode())
        lo, hi = port_range or (49152, 65536)
        port = self.socket.bind_to_random_port(f"tcp://{bind_address}", min_port=lo, max_port=hi, max_tries=1000)
        host = advertised_address or bind_address
        self.address = f"tcp://{host}:{port}"
        logger.info("channel on %s (%s)", self.address, "CurveZMQ" if encrypted else "NOT encrypted")

    def receive(self) -> Optional[Tuple[bytes, List[Any]]]:
        """The next waiting message as (sender's identity, its frames), or None when none waits.

        Only the loop that owns the socket calls this.  The kind and header
        come as ``bytes`` and a blob as a zero-copy ``zmq.Frame``: a
        ``recv_multipart`` makes a ``Frame`` object of every part, which costs
        more than copying a small one, once per message at thousands a second.
        """
        sock = self.socket
        try:
            identity = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        frames: List[Any] = []
        while sock.get(zmq.RCVMORE):
            frames.append(sock.recv(copy=len(frames) < 2))
        return identity, frames

    def send(self, identity: bytes, frames: Sequence[Any]) -> bool:
        """Send ``frames`` to the peer ``identity``; False when it is not connected (``ROUTER_MANDATORY``)."""
        sock = self.socket
        try:
            sock.send(identity, _MORE)
            last = len(frames) - 1
            for i, frame in enumerate(frames):
                sock.send(frame, 0 if i == last else _MORE, copy=False)
            return True
        except zmq.ZMQError as err:
            logger.debug("cannot reach %r: %s", identity, err)
            return False

    def close(self) -> None:
        """Close the socket and stop the authenticator."""
        self.socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def bind_address(address: Optional[str], local: bool) -> str:
    """Where a listener binds: only where its peers are told to connect.

    ``address`` (a host name or IP the peers connect to) names one interface, and
    the listener binds there alone; without one, loopback for local pilots and
    every interface (``*``) for batch pilots, whose ranks may come from any.
    """
    if not address:
        return "127.0.0.1" if local else "*"
    import socket

    return socket.gethostbyname(address)


def _start_authenticator(context: zmq.Context, public: bytes):
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
    auth.start()
    auth.configure_curve_callback(domain=_DOMAIN, credentials_provider=_AdmitOne(public))
    return auth


def _to_json(credentials: ClientCredentials) -> dict:
    out: dict = {"token": credentials.token, "encrypted": credentials.encrypted}
    if credentials.encrypted:
        out["curve"] = {"server_public": credentials.server_public.decode("ascii"),
                        "public": credentials.public.decode("ascii"),
                        "secret": credentials.secret.decode("ascii")}
    return out
