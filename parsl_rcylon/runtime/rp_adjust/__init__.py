"""Every change this project makes to Radical Pilot's behaviour, in one package.

Radical Pilot 1.103 offers no setting for the address its ZeroMQ bridges bind
to, for its bootstrap's network probes or for its polling intervals.  This
package changes them in the RP processes of this project's sessions only, and
says for each what RP does and why it is changed.  ``docs/design.md`` lists
them under "Departures from stock Radical Pilot"; ``docs/security.md`` says
what they protect.

The adjustments, one module per group
-------------------------------------
* ``sockets``: RP's bridges and servers bind to (and advertise)
  ``RCYLON_RP_BIND``, loopback for single-node pilots, not every interface.
* ``curve``: every RP socket does CurveZMQ with the session's keys
  (``RCYLON_RP_CURVE``), and its servers admit only the session's clients.
* ``polling``: RP's idle loops (queue and pubsub bridges, components'
  timed callbacks) wait on their sockets and events, not 10 ms polls; a
  pubsub subscriber's ``stop()`` wakes its listener thread at once.
* ``bootstrap.sh``: the pilot's bootstrap makes no DNS lookup and no ping.
* ``startup``: a lean agent configuration and capped RAPTOR settle sleeps;
  ``environment``: RP's profiling off, its temporary files in the run
  directory.

How they reach RP's processes
-----------------------------
``environment`` sets the variables (``adjusted``, ``pre_bootstrap``,
``task_environment``); ``install`` patches each RP module right after it is
imported, in the executor's process and, through ``hook/sitecustomize.py``
first on ``PYTHONPATH``, in every other RP process of the session.  The hook
loads this package by path from ``RCYLON_RP_ADJUST`` (no ``parsl_rcylon``
and no Parsl import is paid by every RP process): its modules import only
each other, by relative imports, and never ``parsl_rcylon``.

The version check
-----------------
``versions.check_versions`` refuses any ``radical.pilot`` / ``radical.utils``
other than the release the patches were written for; ``RCYLON_RP_STOCK=1``
runs Radical Pilot unchanged instead (insecure, ``docs/security.md``).
"""
from __future__ import annotations

from .curve import ENV_CURVE, CurveKeyError, hold_keys, read_keys, release_keys, write_keys
from .environment import (
    BOOTSTRAP_SCRIPT,
    ENV_ADJUST,
    ENV_PROFILE,
    HOOK_DIR,
    PACKAGE_DIR,
    adjusted,
    child_environment,
    client_environment,
    key_file,
    pre_bootstrap,
    profiling,
    task_environment,
    task_path,
)
from .install import PATCHES, install, install_in_rp_process
from .polling import IDLE_POLL_S
from .sockets import ENV_BIND, LOOPBACK
from .startup import AGENT_CONFIG_NAME, LEAN_AGENT_CONFIG, SETTLE_S, resource_keys, settle, write_agent_config
from .versions import ENV_STOCK, WRITTEN_FOR, RadicalVersionError, check_versions, stock

__all__ = [
    "AGENT_CONFIG_NAME", "BOOTSTRAP_SCRIPT", "CurveKeyError", "ENV_ADJUST", "ENV_BIND", "ENV_CURVE", "ENV_PROFILE",
    "ENV_STOCK", "HOOK_DIR", "IDLE_POLL_S", "LEAN_AGENT_CONFIG", "LOOPBACK", "PACKAGE_DIR", "PATCHES",
    "RadicalVersionError", "SETTLE_S", "WRITTEN_FOR", "adjusted", "check_versions", "child_environment",
    "client_environment", "hold_keys", "install", "install_in_rp_process", "key_file", "pre_bootstrap", "profiling",
    "read_keys", "release_keys", "resource_keys", "settle", "stock", "task_environment", "task_path",
    "write_agent_config", "write_keys",
]
