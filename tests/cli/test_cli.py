"""The parsl-rcylon command itself: its entry points (python -m parsl_rcylon, the console script)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # A child process: the integration tests must not share the test session's
    # Parsl DataFlowKernel (conftest keeps one loaded), and this is how users run it.
    return subprocess.run([sys.executable, "-m", "parsl_rcylon", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_python_m_entry_point():
    proc = _cli("--help", timeout=120)
    assert proc.returncode == 0 and "clean" in proc.stdout and "doctor" in proc.stdout
    env_bin = Path(sys.executable).parent / "parsl-rcylon"
    if env_bin.exists():
        proc = subprocess.run([str(env_bin), "clean", "--help"], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ))
        assert proc.returncode == 0 and "--older-than" in proc.stdout
