"""Where Radical Pilot's ZeroMQ sockets bind: ``RCYLON_RP_BIND`` (loopback for single-node pilots).

RP's bridges (queues, pubsubs) and servers (the session's registry, the
agent's service, RAPTOR's task service) bind to every interface on ports
10000-11000 and take no credentials: anyone who can reach the host can talk
to them (an RPC on the control pubsub made the agent run a command as the
user).  The patches here bind them to the address ``RCYLON_RP_BIND`` names,
and advertise that address; without the variable they act as stock RP.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Iterator, Optional

logger = logging.getLogger(__name__)

#: The address RP's sockets bind to (set for single-node pilots only: their RP processes share a host).
ENV_BIND = "RCYLON_RP_BIND"

LOOPBACK = "127.0.0.1"


def bind_host() -> Optional[str]:
    """The address RP's sockets of this process bind to, or ``None`` for RP's own choice."""
    return os.environ.get(ENV_BIND) or None


def patch_zmq_utils(mod: Any) -> None:
    """Patch ``radical.utils.zmq.utils`` (``zmq_bind``, ``get_hostip``)."""
    # RP: ``zmq_bind`` binds every bridge socket (queues, pubsubs, pipes) to ``tcp://*`` on a free
    # port, and advertises the first non-loopback interface's address.  Anyone who can reach the
    # host can then talk to the bridges, which take no credentials (an RPC on the control pubsub
    # made the agent run a command as the user).  Changed: bound to ``RCYLON_RP_BIND``
    # (loopback for single-node pilots), and that address is the one advertised.
    stock_bind = mod.zmq_bind

    def zmq_bind(sock: Any) -> Any:
        host = bind_host()
        if not host:
            return stock_bind(sock)
        import zmq

        for _ in range(1000):
            port = mod.find_port()
            try:
                sock.bind(f"tcp://{host}:{port}")
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EADDRINUSE:
                    continue  # taken between find_port and bind: try another
                raise
            return mod.Url(mod.as_string(sock.getsockopt(zmq.LAST_ENDPOINT)))
        raise RuntimeError(f"could not bind a Radical Pilot socket to {host}")

    zmq_bind.stock = stock_bind
    mod.zmq_bind = zmq_bind
    # ``pubsub``, ``queue`` and ``pipe`` import the name from ``utils``: the ones already imported
    # are patched here, the later ones import the patched name.
    for name in ("pubsub", "queue", "pipe"):
        other = sys.modules.get(f"radical.utils.zmq.{name}")
        if other is not None and getattr(other, "zmq_bind", None) is stock_bind:
            other.zmq_bind = zmq_bind
    _patch_hostip(mod)


def _patch_hostip(mod: Any) -> None:
    stock_ip = mod.get_hostip

    def get_hostip(*args: Any, **kwargs: Any) -> str:
        return bind_host() or stock_ip(*args, **kwargs)

    mod.get_hostip = get_hostip


def patch_zmq_server(mod: Any) -> None:
    """Patch ``radical.utils.zmq.server`` (``Server._iterate_urls``, ``get_hostip``)."""
    # RP: ``ru.zmq.Server`` (the session's registry, the agent's service, RAPTOR's task service)
    # binds to ``tcp://*:10000-11000`` unless given a URL, and RP never gives one.  Changed: an
    # unnamed interface becomes ``RCYLON_RP_BIND``, the address it then advertises too.
    stock_urls = mod.Server._iterate_urls

    def _iterate_urls(self: Any) -> Iterator[str]:
        host = bind_host()
        if host and self._iface in ("*", "0.0.0.0"):
            self._iface = host
        return stock_urls(self)

    mod.Server._iterate_urls = _iterate_urls
    _patch_hostip(mod)


def rebind_name(mod: Any) -> None:
    """Point ``mod``'s own name ``zmq_bind`` (imported from ``utils`` before it was patched) at the patch."""
    utils = sys.modules.get("radical.utils.zmq.utils")
    if utils is not None and getattr(mod, "zmq_bind", None) is getattr(utils.zmq_bind, "stock", None):
        mod.zmq_bind = utils.zmq_bind


def patch_agent_command_port(mod: Any) -> None:
    """Patch ``radical.pilot.agent.agent_0`` (``Agent_0.command_port``)."""
    # RP: the agent listens on a plain TCP "command port" (``agent_0.ports.json``) and publishes
    # whatever JSON arrives there on the control pubsub, from anyone: the RPC that made the agent
    # run a command needs no ZeroMQ at all that way, and CurveZMQ (``curve``) does not cover it.
    # Nothing of this project, nor any RP client code, uses it.  Changed: the port is not opened.
    def command_port(self: Any) -> None:
        self._log.info("parsl_rcylon: the agent's command port is not opened (docs/security.md)")

    mod.Agent_0.command_port = command_port
