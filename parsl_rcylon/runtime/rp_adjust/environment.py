"""How the adjustments reach Radical Pilot's processes of a session: variables, the hook, the bootstrap.

* The executor's own process: :func:`adjusted` wraps the opening of the
  session and of the managers.  While it runs, the patches of ``install``
  act; outside it they behave as stock RP does (they look at
  ``RCYLON_RP_BIND`` when called), so another RP session of the same user
  process is left alone.
* Every other RP process of the session (client-side bridges and components,
  the pilot's bootstrap, agent, bridges, components, RAPTOR master and
  workers): :func:`adjusted` puts ``hook/`` first on ``PYTHONPATH`` and names
  this package's directory in ``RCYLON_RP_ADJUST``; the pilot's bootstrap gets
  both from :func:`pre_bootstrap` (``bootstrap.sh``).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from .curve import ENV_CURVE, KEY_FILE
from .install import install
from .sockets import ENV_BIND, LOOPBACK
from .versions import check_versions, stock

logger = logging.getLogger(__name__)

#: This package's directory, for the hook in RP's processes (loaded by path from there).
ENV_ADJUST = "RCYLON_RP_ADJUST"
#: Set to 1 to keep Radical Pilot's profiling (``.prof`` files in every sandbox).
ENV_PROFILE = "RCYLON_RP_PROFILE"

PACKAGE_DIR = Path(__file__).resolve().parent
HOOK_DIR = PACKAGE_DIR / "hook"
BOOTSTRAP_SCRIPT = PACKAGE_DIR / "bootstrap.sh"


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
    env[ENV_ADJUST] = str(PACKAGE_DIR)
    env[ENV_CURVE] = str(key_file(base))
    path = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(HOOK_DIR)] + ([path] if path else []))
    if local:
        env[ENV_BIND] = LOOPBACK
        # radical.utils advertises the address of the first "good" interface (eth0, ib0, ...) as
        # every bridge's address; with ``lo`` named it advertises the loopback address it binds to.
        env["RADICAL_DEFAULT_IFACE"] = "lo"
    return env


def key_file(base: Path) -> Path:
    """The session's CurveZMQ key file for RP's sockets (``curve.write_keys`` makes it)."""
    return Path(base) / KEY_FILE


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
    with environment(child_environment(base, local)):
        yield


@contextlib.contextmanager
def environment(values: Dict[str, str]) -> Iterator[None]:
    """Run the body with ``values`` in ``os.environ`` (restored after); RP's processes started there inherit them."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
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


def pre_bootstrap(local: bool, base: Optional[Path] = None) -> List[str]:
    """``pre_bootstrap_0`` commands of this project's pilots (run in ``bootstrap_0.sh``'s own shell).

    ``bootstrap.sh`` is sourced there: it replaces ``dig`` and ``ping`` for
    the bootstrap's shell only (see that file), and exports the hook's
    variables so that the agent and everything it starts are adjusted too,
    the session's key file under ``base`` (the run directory) among them.
    """
    if stock():
        return []
    cmds = [f". {BOOTSTRAP_SCRIPT}",
            f"export {ENV_ADJUST}={PACKAGE_DIR}",
            f"export PYTHONPATH={HOOK_DIR}:$PYTHONPATH"]
    if base is not None:
        cmds.append(f"export {ENV_CURVE}={key_file(base)}")
    if local:
        cmds.append(f"export {ENV_BIND}={LOOPBACK}")
    return cmds


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


def task_environment(local: bool = True, base: Optional[Path] = None) -> Dict[str, str]:
    """Variables every master and worker task gets (with :func:`task_path` on ``PYTHONPATH``).

    With profiling off RP unsets ``RP_PROF_TGT`` in task launch scripts, and
    RAPTOR's ``MPIWorker`` reads it unconditionally (``KeyError``), so
    workers get ``/dev/null``.  The hook's variables are set explicitly: a
    task's environment is RP's snapshot of the bootstrap's plus these.
    """
    env = {} if profiling() else {"RP_PROF_TGT": os.devnull}
    if not stock():
        env[ENV_ADJUST] = str(PACKAGE_DIR)
        if base is not None:
            env[ENV_CURVE] = str(key_file(base))
        if local:
            env[ENV_BIND] = LOOPBACK
    return env
