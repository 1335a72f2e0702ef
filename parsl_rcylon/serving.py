"""``parsl-rcylon up``/``down``: a pilot that outlives its scripts (see :mod:`parsl_rcylon.runtime.attach`).

The runtime's attach package holds the server, the client and the control of
the server's process; what builds the executor the server fronts lives here,
above both the executor and the runtime, so the runtime never imports the
executor.  ``python -m parsl_rcylon.serving RUN_DIR OPTIONS IDLE`` is the body
of the detached process :func:`up` starts.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from .executor import RadicalCylonExecutor
from .resources import PilotSpec, WorkerPool
from .runtime.attach.detached import start_detached, stop_detached
from .runtime.attach.info import IDLE_TIMEOUT, PilotInfo
from .runtime.attach.server import PilotServer

logger = logging.getLogger(__name__)


def serve(run_dir: os.PathLike, options: Dict[str, Any], idle_timeout: float = IDLE_TIMEOUT) -> int:
    """The body of ``parsl-rcylon up``'s detached process: start an executor, publish, serve, shut down."""
    run_dir = Path(run_dir)
    executor = RadicalCylonExecutor(**executor_options(options))
    executor.run_dir = str(run_dir)
    executor.start()  # raises StartupError with the reason; `up` shows the log
    server = PilotServer(executor, run_dir, idle_timeout)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: server.stop())
    try:
        server.publish()
        logger.info("pilot up in %.1f s; serving %s", executor.timings.get("start", 0.0), server.info.address)
        why = server.serve()
        logger.info("pilot server ending: %s", why)
    finally:
        server.close()
        executor.shutdown()
    return 0


def executor_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """The executor's keywords from ``up``'s JSON options: ``pools`` and ``pilots`` as mappings become objects."""
    out = dict(options)
    if out.get("pools") is not None:
        out["pools"] = [p if isinstance(p, WorkerPool) else WorkerPool(**p) for p in out["pools"]]
    if out.get("pilots") is not None:
        out["pilots"] = [p if isinstance(p, PilotSpec) else PilotSpec(**p) for p in out["pilots"]]
    return out


def up(run_dir: os.PathLike, options: Dict[str, Any], idle_timeout: float = IDLE_TIMEOUT,
       timeout: float = 300.0) -> PilotInfo:
    """Start a pilot server for ``run_dir`` (an executor made with ``options``) in a process of its own.

    ``options`` are the executor's keywords as JSON: ``pools`` and ``pilots``
    as lists of ``WorkerPool`` and ``PilotSpec`` keyword mappings.

    Returns once it serves; raises :class:`~.runtime.attach.AttachError` if it does not start.
    """
    command = [sys.executable, "-m", "parsl_rcylon.serving", str(Path(run_dir).resolve()), json.dumps(options),
               str(idle_timeout)]
    return start_detached(run_dir, command, sharing=options.get("sharing", "private"), timeout=timeout)


def down(run_dir: os.PathLike, timeout: float = 60.0) -> Optional[PilotInfo]:
    """End the pilot server of ``run_dir`` and wait for it; ``None`` if none was up."""
    return stop_detached(run_dir, timeout)


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pilot %(name)s %(levelname)s %(message)s")
    return serve(argv[0], json.loads(argv[1]), float(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["down", "serve", "up"]
