"""Offline Radical Pilot configuration for the executor's run directory.

Radical Pilot reads resource configurations from its package and from
``$RADICAL_CONFIG_USER_DIR/.radical/pilot/configs``, reuses the client's
virtualenv only when ``VIRTUAL_ENV`` names it, and looks ``mpiexec`` up with
the virtualenv removed from ``PATH``.  Everything here makes a local pilot
work with no user setup and keeps its artifacts under Parsl's ``run_dir``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ...permissions import make_dir, write_private
from ..rp_adjust import RadicalVersionError, check_versions  # noqa: F401  (RadicalVersionError re-exported)
from ..rp_adjust.environment import environment

logger = logging.getLogger(__name__)

#: Radical Pilot releases this runtime was written and tested against.
SUPPORTED_RP = ((1, 103), (1, 104))


def check_radical_version() -> str:
    """Return the Radical Pilot version, or raise :class:`RadicalVersionError` (see ``rp_adjust``)."""
    return check_versions()["radical.pilot"]


def python_environment() -> Dict[str, str]:
    """Environment variables that make RP reuse this interpreter's environment."""
    env: Dict[str, str] = {}
    if sys.prefix != sys.base_prefix and not os.environ.get("VIRTUAL_ENV"):
        env["VIRTUAL_ENV"] = sys.prefix
    return env


def user_import_path() -> List[str]:
    """Where this process imports the user's modules from: its working directory and every
    ``sys.path`` entry outside the interpreter (workers add them so that apps import there too)."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out: List[str] = []
    for entry in [os.getcwd()] + sys.path:
        real = os.path.realpath(entry or os.getcwd())
        if os.path.isdir(real) and real not in out and not any(
                real == pre or real.startswith(pre + os.sep) for pre in prefixes):
            out.append(real)
    return out


def mpi_bin_dir() -> Optional[str]:
    """Directory of the ``mpiexec`` this interpreter should use."""
    venv_bin = Path(sys.prefix) / "bin"
    if (venv_bin / "mpiexec").exists():
        return str(venv_bin)
    found = shutil.which("mpiexec")
    return str(Path(found).parent) if found else None


def with_mpi_path(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``cfg`` with this interpreter's ``mpiexec`` directory first on ``PATH`` for each launch method.

    Only where the virtualenv holds an ``mpiexec`` (the ``mpich`` wheel's, which ``mpi4py`` was
    built against): a site's own MPI is left to its modules.  Batch pilots need it as much as
    local ones; RP looks ``mpiexec`` up with the virtualenv removed from ``PATH``.
    """
    venv_bin = Path(sys.prefix) / "bin"
    if not (venv_bin / "mpiexec").exists():
        return cfg
    line = f"export PATH={venv_bin}:$PATH"
    methods = dict(cfg.get("launch_methods") or {})
    for name, lm in methods.items():
        if name == "order" or not isinstance(lm, dict):
            continue
        pre = list(lm.get("pre_exec_cached") or [])
        if line not in pre:
            methods[name] = dict(lm, pre_exec_cached=[line] + pre)
    return dict(cfg, launch_methods=methods) if methods else cfg


def advertise_interface(configs: List[Dict[str, Any]]) -> Optional[str]:
    """Make RP's client listeners advertise the pilots' ``network_interface`` where this host has it.

    RP advertises the first non-loopback interface unless told; a cluster whose agents
    reach the client over one interface (``lo`` on a one-machine test cluster, ``ib0``)
    says so in its resource configuration.  The client's bridges read ``RADICAL_DEFAULT_IFACE``;
    this process's cached default is set too.
    """
    import psutil

    if os.environ.get("RADICAL_DEFAULT_IFACE"):
        return os.environ["RADICAL_DEFAULT_IFACE"]
    have = set(psutil.net_if_addrs())
    iface = next((c["network_interface"] for c in configs if c.get("network_interface") in have), None)
    if iface:
        import radical.utils as ru

        os.environ["RADICAL_DEFAULT_IFACE"] = iface
        ru.DefaultConfig().iface = [iface]
        logger.info("Radical Pilot client advertises interface %s", iface)
    return iface


def write_user_config(config_dir: Path, overrides: Optional[Dict[str, Any]] = None) -> List[Path]:
    """Write the user resource configs that RP deep-merges over its own.

    ``overrides`` maps resource labels (``local.localhost``, ``site.machine``)
    to keys to merge, or to whole configurations for labels RP does not
    ship.  The local MPI launcher path is always added so that RP finds the
    ``mpiexec`` that matches this interpreter's mpi4py.
    """
    target = config_dir / ".radical" / "pilot" / "configs"
    make_dir(target)
    localhost: Dict[str, Any] = {
        "launch_methods": {"order": ["FORK", "MPIEXEC"], "FORK": {}, "MPIEXEC": {}},
    }
    bindir = mpi_bin_dir()
    if bindir:
        localhost["launch_methods"]["MPIEXEC"] = {
            "pre_exec_cached": [f"export PATH={bindir}:$PATH"]
        }
    sites: Dict[str, Dict[str, Dict[str, Any]]] = {"local": {"localhost": localhost}}
    for label, extra in (overrides or {}).items():
        site, machine = label.split(".", 1)
        sites.setdefault(site, {}).setdefault(machine, {}).update(extra)
    written = []
    for site, machines in sites.items():
        path = target / f"resource_{site}.json"
        write_private(path, json.dumps(machines, indent=2).encode())
        written.append(path)
    return written


def prepare_environment(base: Path, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Point RP at a config dir under ``base`` and at this interpreter.

    Returns the variables that were set, so the caller can log them.
    """
    config_dir = base / "radical_config"
    write_user_config(config_dir, overrides)
    env = python_environment()
    env["RADICAL_CONFIG_USER_DIR"] = str(config_dir)
    # radical.utils keeps per-session id counters under $RADICAL_BASE/.radical
    # ($HOME by default); they belong to the run like everything else.
    env["RADICAL_BASE"] = str(base)
    # RP starts its bridges and agents by command name (radical-pilot-bridge,
    # radical-pilot-agent_0): they live next to this interpreter.
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "").split(os.pathsep)
    if bindir not in path:
        env["PATH"] = os.pathsep.join([bindir] + path)
    # RP's reporter draws progress bars on stdout; Parsl owns the terminal.
    env.setdefault("RADICAL_REPORT", os.environ.get("RADICAL_REPORT", "False"))
    os.environ.update(env)
    logger.debug("Radical Pilot environment: %s", env)
    return env


@contextlib.contextmanager
def home_for_launcher(base: Path) -> Iterator[None]:
    """Run the body with ``HOME`` under ``base``.

    RP launches local pilots through PSI/J from a separate component
    process; PSI/J writes its job scripts to ``$HOME/.psij/work`` and offers
    no other setting, so the launcher is started with ``HOME`` pointing into
    the run directory.  The pilot inherits it; the client's ``sys.path`` is
    passed to the workers explicitly, so user-site packages stay importable.
    """
    home = base / "home"
    make_dir(home)
    with environment({"HOME": str(home)}):
        yield


def batch_environment(configs: List[Dict[str, Any]]) -> Dict[str, str]:
    """What the batch system's submit command reads, for pilots of these resource configurations.

    Slurm ends a whole job when one of its nodes fails unless it was
    submitted with ``--no-kill``; RP's PSI/J launcher passes no such option,
    and ``sbatch`` reads it from ``SBATCH_NO_KILL``.  So a pilot's pools go on
    with the nodes left, the lost node's tasks failing with ``WorkerLost``.
    A value the user set wins.
    """
    wanted = {"SBATCH_NO_KILL": "set"} if any(c.get("resource_manager") == "SLURM" for c in configs) else {}
    return {key: value for key, value in wanted.items() if key not in os.environ}
