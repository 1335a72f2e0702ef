"""parsl_rcylon: heterogeneous MPI tasks in Parsl workflows, on Radical Pilot workers."""
from __future__ import annotations

from typing import Any

from .app import CylonApp, cylon_app
from .context import CylonContext
from .errors import ExecutorShutdown, RadicalCylonError, ResultError, StartupError, WorkerLost
from .executor import RadicalCylonExecutor
from .resources import PilotSpec, ResourceSpec, WorkerPool

__version__ = "0.1.0"

__all__ = [
    "CylonApp", "CylonContext", "ExecutorShutdown", "PilotSpec", "RadicalCylonError", "RadicalCylonExecutor",
    "ResourceSpec", "ResultError", "StartupError", "TableRef", "WorkerLost", "WorkerPool", "cylon_app",
]


def __getattr__(name: str) -> Any:
    # The data plane imports pyarrow; keep `import parsl_rcylon` light.
    if name == "TableRef":
        from .table import TableRef

        return TableRef
    raise AttributeError(f"module 'parsl_rcylon' has no attribute {name!r}")
