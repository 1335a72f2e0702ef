"""parsl_rcylon: heterogeneous MPI tasks in Parsl workflows, on Radical Pilot workers.

``import parsl_rcylon`` is light: each public name is imported from its module
on first use, so an MPI job that needs only the engine or the table files
(``parsl_rcylon.engine``, ``parsl_rcylon.table``) never pays for Parsl or
Radical Pilot.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_EXPORTS: Dict[str, str] = {
    "CylonApp": "app",
    "cylon_app": "app",
    "CylonContext": "context",
    "ExecutorBroken": "errors",
    "ExecutorShutdown": "errors",
    "PilotLost": "errors",
    "TaskTimeout": "errors",
    "RadicalCylonError": "errors",
    "ResultError": "errors",
    "StartupError": "errors",
    "WorkerLost": "errors",
    "RadicalCylonExecutor": "executor",
    "PilotSpec": "resources",
    "ResourceSpec": "resources",
    "WorkerPool": "resources",
    "SlurmCluster": "slurm",
    "TableRef": "table",
}

__all__ = [
    "CylonApp", "CylonContext", "ExecutorBroken", "ExecutorShutdown", "PilotLost", "PilotSpec", "RadicalCylonError",
    "RadicalCylonExecutor", "ResourceSpec", "ResultError", "SlurmCluster", "StartupError", "TableRef", "TaskTimeout",
    "WorkerLost", "WorkerPool", "cylon_app",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .app import CylonApp, cylon_app
    from .context import CylonContext
    from .errors import (
        ExecutorBroken,
        ExecutorShutdown,
        PilotLost,
        RadicalCylonError,
        ResultError,
        StartupError,
        TaskTimeout,
        WorkerLost,
    )
    from .executor import RadicalCylonExecutor
    from .resources import PilotSpec, ResourceSpec, WorkerPool
    from .slurm import SlurmCluster
    from .table import TableRef


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'parsl_rcylon' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
