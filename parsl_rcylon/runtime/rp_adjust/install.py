"""Putting the patches into a process: each RP module is patched right after it is imported.

The executor's own process installs them from ``adjusted`` (in
``environment``); every other RP process of a session from the hook
(``hook/sitecustomize.py``) through :func:`install_in_rp_process`.
"""
from __future__ import annotations

import importlib.abc
import logging
import os
import sys
import threading
from typing import Any, Callable, Dict, Tuple

from .curve import patch_zmq_name
from .polling import patch_component, patch_zmq_pubsub, patch_zmq_queue, patch_zmq_subscriber
from .sockets import patch_agent_command_port, patch_zmq_server, patch_zmq_utils
from .versions import RadicalVersionError, check_versions, stock

logger = logging.getLogger(__name__)

#: Module name -> patches, applied once right after the module is imported (or at once if it was).
PATCHES: Dict[str, Tuple[Callable[[Any], None], ...]] = {
    "radical.utils.zmq.utils": (patch_zmq_utils, patch_zmq_name),
    "radical.utils.zmq.server": (patch_zmq_server, patch_zmq_name),
    "radical.utils.zmq.queue": (patch_zmq_queue, patch_zmq_name),
    "radical.utils.zmq.pubsub": (patch_zmq_pubsub, patch_zmq_subscriber, patch_zmq_name),
    "radical.utils.zmq.client": (patch_zmq_name,),
    "radical.utils.zmq.pipe": (patch_zmq_name,),
    "radical.pilot.utils.component": (patch_component,),
    "radical.pilot.agent.agent_0": (patch_agent_command_port,),
}
_applied: Dict[str, bool] = {}
_lock = threading.RLock()


def _apply(name: str, module: Any) -> None:
    with _lock:
        if _applied.get(name):
            return
        _applied[name] = True
        _check_or_exit()
        for patch in PATCHES[name]:
            patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Applies the patch of a module of :data:`PATCHES` right after the module runs."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in PATCHES:
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
        for name in PATCHES:
            if name in sys.modules:
                _apply(name, sys.modules[name])


def install_in_rp_process() -> None:
    """The hook's entry (``hook/sitecustomize.py``): :func:`install`, checking versions on first use.

    The versions are checked when the first RP module to patch is imported
    (a Python process that never imports Radical Pilot pays nothing for it).
    A version this package was not written for ends the process with the
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
