"""Every change this project makes to Radical Pilot's behaviour, in one module.

Radical Pilot 1.103 offers no setting for the address its ZeroMQ bridges bind
to, for its bootstrap's network probes or for its polling intervals.  This
module changes them in the RP processes of this project's sessions only, and
says for each what RP does and why it is changed.  ``docs/design.md`` lists
them under "Departures from stock Radical Pilot"; ``docs/security.md`` says
what they protect.

How the adjustments reach RP's processes
----------------------------------------
* The executor's own process: :func:`adjusted` wraps the opening of the
  session and of the managers.  While it runs, the patched functions of
  :func:`install` act; outside it they behave as stock RP does (they look at
  ``RCYLON_RP_BIND`` when called), so another RP session of the same user
  process is left alone.
* Every other RP process of the session (client-side bridges and components,
  the pilot's bootstrap, agent, bridges, components, RAPTOR master and
  workers): :func:`adjusted` puts ``rp_hook/`` first on ``PYTHONPATH`` and
  names this file in ``RCYLON_RP_ADJUST``; the pilot's bootstrap gets both
  from :func:`pre_bootstrap` (``rp_bootstrap.sh``).  ``rp_hook/sitecustomize.py``
  loads this file by path (no ``parsl_rcylon`` import, so it costs a few
  milliseconds) and calls :func:`install`, which patches each RP module
  right after it is imported.  Python processes without the variables, or
  that never import Radical Pilot, are untouched.

The version check
-----------------
The patches replace or wrap private RP functions, so they are written for one
release: :func:`check_versions` refuses any other ``radical.pilot`` /
``radical.utils`` (in the client, and in every RP process the hook loads
into).  ``RCYLON_RP_STOCK=1`` runs Radical Pilot unchanged instead: RP's
bridges then listen on every interface with no authentication, which lets
another user of the machine run commands as you (``docs/security.md``).
Use it only on a machine nobody else can log in to.

This file must stay importable on its own (by path, from the hook): it
imports nothing from ``parsl_rcylon`` at module level.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

logger = logging.getLogger(__name__)

#: The releases these adjustments were written for: (distribution, major.minor).
WRITTEN_FOR = (("radical.pilot", "1.103"), ("radical.utils", "1.103"))

#: Set to 1 to run stock Radical Pilot without any adjustment (insecure: see the module docstring).
ENV_STOCK = "RCYLON_RP_STOCK"
#: Path of this file, for the hook in RP's processes.
ENV_ADJUST = "RCYLON_RP_ADJUST"
#: The address RP's sockets bind to (set for single-node pilots only: their RP processes share a host).
ENV_BIND = "RCYLON_RP_BIND"
#: Set to 1 to keep Radical Pilot's profiling (``.prof`` files in every sandbox).
ENV_PROFILE = "RCYLON_RP_PROFILE"

LOOPBACK = "127.0.0.1"
HOOK_DIR = Path(__file__).resolve().parent / "rp_hook"
BOOTSTRAP_SCRIPT = Path(__file__).resolve().parent / "rp_bootstrap.sh"

#: Longest wait of an idle RP loop, in seconds.  Each such loop wakes on its
#: own socket or event, so this bounds only how often an idle loop looks at
#: its stop flag, never how fast a message is passed on.
IDLE_POLL_S = 0.5


class RadicalVersionError(RuntimeError):
    """The installed Radical Pilot or Radical Utils is not the release these adjustments were written for."""


def stock() -> bool:
    """Whether the user asked to run Radical Pilot without adjustments (``RCYLON_RP_STOCK=1``)."""
    return os.environ.get(ENV_STOCK, "").lower() in ("1", "true", "yes", "on")


def check_versions() -> Dict[str, str]:
    """Return the installed ``radical.pilot`` and ``radical.utils`` versions, or raise.

    Raises
    ------
    RadicalVersionError
        A version other than the one of :data:`WRITTEN_FOR`, unless
        ``RCYLON_RP_STOCK=1`` asks to run Radical Pilot without adjustments.
    """
    from importlib.metadata import PackageNotFoundError, version

    found: Dict[str, str] = {}
    for dist, release in WRITTEN_FOR:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
        if not stock() and not (found[dist] == release or found[dist].startswith(release + ".")):
            raise RadicalVersionError(
                f"parsl_rcylon adjusts {dist} {release}.x (found {found[dist]}); install the tested release "
                f"with: pip install '{dist}>={release},<{_next(release)}'. To run Radical Pilot unchanged "
                f"anyway set {ENV_STOCK}=1: insecure, RP's sockets then accept any local user "
                "(see docs/security.md)")
    return found


def _next(release: str) -> str:
    major, minor = release.split(".")
    return f"{major}.{int(minor) + 1}"


# -- how the adjustments reach RP's processes ------------------------------------------------

def child_environment(base: Path, local: bool) -> Dict[str, str]:
    """Variables under which RP's processes of one session start (see :func:`adjusted`)."""
    env = {
        # RP's mkstemp of each pilot's agent configuration (/tmp/rp.agent_cfg.*, never removed by
        # RP) and anything else RP writes to the temporary directory stays in the private run dir.
        "TMPDIR": str(_private_dir(Path(base) / "tmp")),
        # radical.utils syncs its profiler's clock with this host when ``ntplib`` is installed
        # and profiling is on; the default is the public pool.
        "RADICAL_UTILS_NTPHOST": LOOPBACK,
        **client_environment(),
    }
    if stock():
        return env
    env[ENV_ADJUST] = str(Path(__file__).resolve())
    path = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(HOOK_DIR)] + ([path] if path else []))
    if local:
        env[ENV_BIND] = LOOPBACK
        # radical.utils advertises the address of the first "good" interface (eth0, ib0, ...) as
        # every bridge's address; with ``lo`` named it advertises the loopback address it binds to.
        env["RADICAL_DEFAULT_IFACE"] = "lo"
    return env


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def adjusted(base: Path, local: bool) -> Iterator[None]:
    """Run the body (opening a session or a manager) with RP adjusted, in this process and its children.

    Sets the variables of :func:`child_environment` for the body only (RP
    starts its bridge and component processes there, and they inherit
    them), and installs the patches in this process.
    """
    check_versions()
    if not stock():
        install()
    env = child_environment(base, local)
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def task_path() -> List[str]:
    """``PYTHONPATH`` entries every RAPTOR master and worker task starts with (the hook, unless stock)."""
    return [] if stock() else [str(HOOK_DIR)]


def pre_bootstrap(local: bool) -> List[str]:
    """``pre_bootstrap_0`` commands of this project's pilots (run in ``bootstrap_0.sh``'s own shell).

    ``rp_bootstrap.sh`` is sourced there: it replaces ``dig`` and ``ping``
    for the bootstrap's shell only (see that file), and exports the hook's
    variables so that the agent and everything it starts are adjusted too.
    """
    if stock():
        return []
    cmds = [f". {BOOTSTRAP_SCRIPT}",
            f"export {ENV_ADJUST}={Path(__file__).resolve()}",
            f"export PYTHONPATH={HOOK_DIR}:$PYTHONPATH"]
    if local:
        cmds.append(f"export {ENV_BIND}={LOOPBACK}")
    return cmds


# -- the patches ----------------------------------------------------------------------------------

def _bind_host() -> Optional[str]:
    return os.environ.get(ENV_BIND) or None


def _patch_zmq_utils(mod: Any) -> None:
    # RP: ``zmq_bind`` binds every bridge socket (queues, pubsubs, pipes) to ``tcp://*`` on a free
    # port, and advertises the first non-loopback interface's address.  Anyone who can reach the
    # host can then talk to the bridges, which take no credentials (an RPC on the control pubsub
    # made the agent run a command as the user).  Changed: bound to ``RCYLON_RP_BIND``
    # (loopback for single-node pilots), and that address is the one advertised.
    stock_bind = mod.zmq_bind

    def zmq_bind(sock: Any) -> Any:
        host = _bind_host()
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
        return _bind_host() or stock_ip(*args, **kwargs)

    mod.get_hostip = get_hostip


def _patch_zmq_server(mod: Any) -> None:
    # RP: ``ru.zmq.Server`` (the session's registry, the agent's service, RAPTOR's task service)
    # binds to ``tcp://*:10000-11000`` unless given a URL, and RP never gives one.  Changed: an
    # unnamed interface becomes ``RCYLON_RP_BIND``, the address it then advertises too.
    stock_urls = mod.Server._iterate_urls

    def _iterate_urls(self: Any) -> Iterator[str]:
        host = _bind_host()
        if host and self._iface in ("*", "0.0.0.0"):
            self._iface = host
        return stock_urls(self)

    mod.Server._iterate_urls = _iterate_urls
    _patch_hostip(mod)


class _WideQueuePoll:
    """RP's queue bridge's two pollers, answered by one wait.

    RP's queue bridge polls its ``put`` socket for 10 ms, then its ``get``
    socket for 10 ms, then sleeps 10 ms when neither had anything: ~35
    wake-ups a second per bridge while idle, and a getter's request for an
    empty queue is answered (empty) at once, asked again and answered again.
    Here the ``put`` poll waits up to :data:`IDLE_POLL_S` for a message to
    come in, or, while messages are buffered (``nin > nout``), for a request
    too; a message or a request ends the wait at once.  The ``get`` poll
    then looks (without waiting) for a pending request, so a request made
    while the queue was empty is answered as soon as a message arrives, and
    at the latest after :data:`IDLE_POLL_S` (with nothing, as RP would).
    """

    def __init__(self, bridge: Any) -> None:
        import zmq

        self._bridge = bridge
        self._put, self._get = bridge._put, bridge._get
        self._both = zmq.Poller()
        self._both.register(self._put, zmq.POLLIN)
        self._both.register(self._get, zmq.POLLIN)
        self._put_only = zmq.Poller()
        self._put_only.register(self._put, zmq.POLLIN)
        self._get_only = zmq.Poller()
        self._get_only.register(self._get, zmq.POLLIN)
        self._seen: Dict[Any, int] = {}
        self.put = _Side(self, self._put, wait=True)
        self.get = _Side(self, self._get, wait=False)

    def poll(self, sock: Any, wait: bool) -> List[Any]:
        if wait:
            buffered = getattr(self._bridge, "nin", 0) > getattr(self._bridge, "nout", 0)
            poller = self._both if buffered else self._put_only
            self._seen = dict(poller.poll(timeout=int(IDLE_POLL_S * 1000)))
        elif sock not in self._seen:
            self._seen.update(self._get_only.poll(timeout=0))
        event = self._seen.pop(sock, None)
        return [(sock, event)] if event else []


class _Side:
    def __init__(self, joint: _WideQueuePoll, sock: Any, wait: bool) -> None:
        self._joint, self._sock, self._wait = joint, sock, wait

    def poll(self, timeout: Any = None) -> List[Any]:
        return self._joint.poll(self._sock, self._wait)


class _WidePoll:
    """A ``zmq.Poller`` whose ``poll`` waits :data:`IDLE_POLL_S` whatever timeout RP asks for."""

    def __init__(self, poller: Any) -> None:
        self._poller = poller

    def poll(self, timeout: Any = None) -> List[Any]:
        return self._poller.poll(timeout=int(IDLE_POLL_S * 1000))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


def _patch_zmq_queue(mod: Any) -> None:
    # RP: see :class:`_WideQueuePoll`.  Changed: one poll over both sockets, up to IDLE_POLL_S.
    stock_init = mod.Queue._bridge_initialize

    def _bridge_initialize(self: Any) -> None:
        stock_init(self)
        joint = _WideQueuePoll(self)
        self._poll_put, self._poll_get = joint.put, joint.get

    mod.Queue._bridge_initialize = _bridge_initialize
    _patch_bind_name(mod)


def _patch_zmq_pubsub(mod: Any) -> None:
    # RP: the pubsub bridge polls its two sockets with a 10 ms timeout, 100 wake-ups a second
    # while idle.  A message on either socket ends the poll at once, so a longer timeout only
    # slows the check of the stop flag.  Changed: IDLE_POLL_S.
    stock_init = mod.PubSub._bridge_initialize

    def _bridge_initialize(self: Any) -> None:
        stock_init(self)
        self._poll = _WidePoll(self._poll)

    mod.PubSub._bridge_initialize = _bridge_initialize
    _patch_bind_name(mod)


def _patch_bind_name(mod: Any) -> None:
    utils = sys.modules.get("radical.utils.zmq.utils")
    if utils is not None and getattr(mod, "zmq_bind", None) is getattr(utils.zmq_bind, "stock", None):
        mod.zmq_bind = utils.zmq_bind


class _IdlerTime:
    """``time`` for RP's component module: its idle-callback threads wait on their stop event.

    RP: each timed callback of a component (heartbeats, state checks, ~10
    per component) runs in an ``Idler`` thread that sleeps 10 ms, looks at
    the clock, and sleeps again until its period has passed: 100 wake-ups a
    second per callback.  Changed: that sleep waits on the thread's stop
    event until the period has passed, so the callback runs when it would
    have and stop() still ends the thread at once.  Other sleeps of the
    module are RP's own, and so is this one under ``RCYLON_RP_STOCK=1`` (looked
    at on each call: the client process may run stock and adjusted sessions
    one after another, as ``benchmarks/overhead.py --rp both`` does).
    """

    def __init__(self, real: Any) -> None:
        self._real = real

    def sleep(self, seconds: float) -> None:
        frame = sys._getframe(1)
        idler = frame.f_locals.get("self") if frame.f_code.co_name == "run" else None
        term = getattr(idler, "_term", None)
        period = getattr(idler, "_timeout", None)
        if seconds == 0.01 and isinstance(term, threading.Event) and period and not stock():
            left = period - (self._real.time() - idler._last)
            term.wait(min(max(left, 0.0), IDLE_POLL_S * 10))
            return
        self._real.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _patch_component(mod: Any) -> None:
    if not isinstance(mod.time, _IdlerTime):
        mod.time = _IdlerTime(mod.time)


#: Module name -> patch, applied once right after the module is imported (or at once if it was).
_PATCHES: Dict[str, Callable[[Any], None]] = {
    "radical.utils.zmq.utils": _patch_zmq_utils,
    "radical.utils.zmq.server": _patch_zmq_server,
    "radical.utils.zmq.queue": _patch_zmq_queue,
    "radical.utils.zmq.pubsub": _patch_zmq_pubsub,
    "radical.pilot.utils.component": _patch_component,
}
_applied: Dict[str, bool] = {}
_lock = threading.RLock()


def _apply(name: str, module: Any) -> None:
    with _lock:
        if _applied.get(name):
            return
        _applied[name] = True
        _check_or_exit()
        _PATCHES[name](module)


class _Finder(importlib.abc.MetaPathFinder):
    """Applies the patch of a module of :data:`_PATCHES` right after the module runs."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, name)
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, name: str) -> None:
        self._loader, self._name = loader, name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _apply(self._name, module)


def install() -> None:
    """Patch RP's modules in this process: those already imported now, the others when imported."""
    with _lock:
        if not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())
        for name in _PATCHES:
            if name in sys.modules:
                _apply(name, sys.modules[name])


def install_in_rp_process() -> None:
    """The hook's entry (``rp_hook/sitecustomize.py``): :func:`install`, checking versions on first use.

    The versions are checked when the first RP module to patch is imported
    (a Python process that never imports Radical Pilot pays nothing for it).
    A version this module was not written for ends the process with the
    reason on stderr: an RP process of this project never runs unadjusted.
    """
    global _check_first
    if stock():
        return
    _check_first = True
    install()


_check_first = False


def _check_or_exit() -> None:
    global _check_first
    if not _check_first:
        return
    _check_first = False
    try:
        check_versions()
    except RadicalVersionError as exc:
        sys.stderr.write(f"parsl_rcylon: {exc}\n")
        sys.stderr.flush()
        os._exit(3)  # an exception here would be caught or reported as an import error of RP's


# -- the start-up adjustments (measured in docs/design.md, "Start-up") ------------------------------

def profiling() -> bool:
    """Whether RP's profiling was asked for (``RCYLON_RP_PROFILE=1``)."""
    return os.environ.get(ENV_PROFILE, "").lower() in ("1", "true", "yes", "on")


def client_environment() -> Dict[str, str]:
    """Variables the client sets before the session opens (RP forwards ``RADICAL_*`` to the pilot).

    RP: every RP process writes ``.prof`` files (clock sync, one line per
    event).  Changed: off unless ``RCYLON_RP_PROFILE=1`` asks for it (to read
    RP's own timeline of a slow start).
    """
    return {} if profiling() else {"RADICAL_PROFILE": "False"}


def task_environment(local: bool = True) -> Dict[str, str]:
    """Variables every master and worker task gets (with :func:`task_path` on ``PYTHONPATH``).

    With profiling off RP unsets ``RP_PROF_TGT`` in task launch scripts, and
    RAPTOR's ``MPIWorker`` reads it unconditionally (``KeyError``), so
    workers get ``/dev/null``.  The hook's variables are set explicitly: a
    task's environment is RP's snapshot of the bootstrap's plus these.
    """
    env = {} if profiling() else {"RP_PROF_TGT": os.devnull}
    if not stock():
        env[ENV_ADJUST] = str(Path(__file__).resolve())
        if local:
            env[ENV_BIND] = LOOPBACK
    return env


#: Name of the lean agent configuration (RP reads ``agent_<name>.json`` from the user config dir).
AGENT_CONFIG_NAME = "rcylon"

#: Bridges and components of the agent this executor needs.  RP: the agent starts each of its
#: ZeroMQ bridges as a process, one after another, each polled every 0.25 s until it reports.
#: Changed: four of RP 1.103's twelve serve nothing here and are left out
#: (``raptor_scheduling_queue`` and ``agent_schedule_pubsub`` have no producer or consumer in RP
#: 1.103; ``client_pubsub``/``client_queue`` serve ``rp.Client``, which the executor does not use).
LEAN_AGENT_CONFIG: Dict[str, Any] = {
    "target": "local",
    "mode": "shared",
    "heartbeat": {"interval": 10.0, "timeout": 600.0},
    "bridges": {
        "agent_staging_input_queue": {"kind": "queue"},
        "agent_scheduling_queue": {"kind": "queue"},
        "agent_executing_queue": {"kind": "queue"},
        "agent_staging_output_queue": {"kind": "queue"},
        "agent_collecting_queue": {"kind": "queue"},
        "agent_unschedule_pubsub": {"kind": "pubsub"},
        "control_pubsub": {"kind": "pubsub"},
        "state_pubsub": {"kind": "pubsub"},
    },
    "components": {
        "agent_staging_input": {"count": 1},
        "agent_scheduling": {"count": 1},
        "agent_executing": {"count": 1},
        "agent_staging_output": {"count": 1},
    },
}


def resource_keys(local: bool = True) -> Dict[str, Any]:
    """Keys merged into a resource configuration of this project's pilots."""
    return {"agent_config": AGENT_CONFIG_NAME, "pre_bootstrap_0": pre_bootstrap(local)}


def write_agent_config(config_dir: Path) -> Path:
    """Write the lean agent configuration where RP looks for named ones.

    A resource configuration may name an agent configuration or hold one
    inline; RP 1.103 drops the bridges and components of an inline one (the
    agent then fails with ``KeyError: 'bridges'``), so it is written as a
    named file.
    """
    path = Path(config_dir) / ".radical" / "pilot" / "configs" / f"agent_{AGENT_CONFIG_NAME}.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # private, whatever the umask (this module stays free of parsl_rcylon imports: see the docstring)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(json.dumps(LEAN_AGENT_CONFIG, indent=2))
    return path


#: Longest "let ZMQ settle" pause kept in RAPTOR's master and worker start-up.  A registration
#: lost to a pubsub not yet connected is sent again by RAPTOR after 5 s, so this is not zero.
SETTLE_S = 0.2


class _CappedTime:
    """``time`` for one RAPTOR module whose ``sleep`` never pauses longer than ``cap``."""

    def __init__(self, real: Any, cap: float) -> None:
        self._real = real
        self._cap = cap

    def sleep(self, seconds: float) -> None:
        self._real.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextlib.contextmanager
def settle(module: Any, cap: float = SETTLE_S) -> Iterator[None]:
    """Cap ``module``'s ``time.sleep`` while the body runs (RAPTOR's start-up in a subclass' ``__init__``).

    RP: RAPTOR's master and every worker rank sleep a second "to let ZMQ
    settle" before registering.  Changed: capped at :data:`SETTLE_S`.  Only
    the module's own name ``time`` is replaced, and only in this process (a
    master or a worker rank), so sleeps after start-up (the heartbeat
    loops) keep their length.
    """
    real = module.time
    module.time = _CappedTime(real, cap)
    try:
        yield
    finally:
        module.time = real
