"""GPUs on this machine, and whether local pools can have the ones they ask for."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterable, Optional

from ...resources import WorkerPool


def count_local_gpus() -> int:
    """NVIDIA GPUs on this machine (the driver's /proc entries, else nvidia-smi)."""
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return len(list(proc.iterdir()))
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 0


def missing_local_gpus(pools: Iterable[WorkerPool]) -> Optional[str]:
    """Why this machine cannot hold the GPUs that ``pools`` (all local) ask for, or None."""
    wanted = sum(p.gpus_per_rank * p.ranks * p.workers for p in pools if not p.pretend_gpus)
    if not wanted:
        return None
    found = count_local_gpus()
    if found >= wanted:
        return None
    return (f"the pools ask for {wanted} GPU(s) on this machine but it has {found}; "
            "declare WorkerPool(..., pretend_gpus=True) to run without GPUs")
