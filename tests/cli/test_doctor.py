"""The installation check (parsl_rcylon.doctor) through `parsl-rcylon doctor`: this venv, broken ones, a local pilot."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parsl_rcylon import cli

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # A child process: the integration tests must not share the test session's
    # Parsl DataFlowKernel (conftest keeps one loaded), and this is how users run it.
    return subprocess.run([sys.executable, "-m", "parsl_rcylon", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_doctor_without_pilot_passes_in_this_venv(tmp_path, capsys):
    assert cli.main(["doctor", "--no-pilot", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("mpiexec", "mpi4py", "mpi launch", "radical", "pyarrow", "kernels", "run dir"):
        assert f"OK   {name}:" in out, out
    assert "SKIP pilot" in out
    # The engine's kernels as this process would run them.
    from parsl_rcylon.engine.kernels import active_kernels

    active = active_kernels()
    assert f"OK   kernels: sort: {active['sort']['kernel']} (" in out, out
    assert "join: duckdb (duckdb " in out, out  # DuckDB is a requirement: a plain install joins with it


def test_doctor_names_the_join_kernel_an_environment_forces(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PARSL_RCYLON_JOIN_KERNEL", "acero")
    monkeypatch.setenv("PARSL_RCYLON_SORT_KERNEL", "numpy")
    assert cli.main(["doctor", "--no-pilot", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sort: numpy (PARSL_RCYLON_SORT_KERNEL=numpy" in out, out
    assert "join: acero (join_kernel='acero')" in out, out


def test_doctor_as_a_library_hands_each_verdict_to_its_callback(tmp_path):
    from parsl_rcylon.doctor import Doctor

    said = []
    doctor = Doctor(run_dir=tmp_path / "run", pilot=False, say=said.append)
    assert doctor.run()
    names = [c.name for c in doctor.checks]
    assert names == ["python", "mpiexec", "mpi4py", "mpi launch", "radical", "parsl", "pyarrow", "kernels", "run dir",
                     "pilot"]
    assert said[:-1] == [c.line() for c in doctor.checks]
    assert said[-1] == "9 of 10 checks passed, 1 skipped"
    assert (tmp_path / "run").is_dir()  # the run dir check made it to write into


def test_doctor_says_how_to_fix_a_missing_mpiexec(tmp_path, capsys, monkeypatch):
    from parsl_rcylon.runtime.client import config

    monkeypatch.setattr(config, "mpi_bin_dir", lambda: None)
    assert cli.main(["doctor", "--run-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL mpiexec: no mpiexec" in out
    assert "fix: install an MPI: `pip install mpich`" in out
    assert "SKIP pilot" in out  # no pilot is started on a broken installation
    assert "failed: mpiexec" in out


def test_doctor_reports_an_unsupported_radical_pilot(tmp_path, capsys, monkeypatch):
    from parsl_rcylon.runtime.client import config

    def too_new():
        raise config.RadicalVersionError("parsl_rcylon needs radical.pilot >=1.103,<1.104 (found 1.110.0); ...")

    monkeypatch.setattr(config, "check_radical_version", too_new)
    assert cli.main(["doctor", "--no-pilot", "--run-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL radical: parsl_rcylon needs radical.pilot >=1.103,<1.104 (found 1.110.0)" in out
    assert "fix: pip install 'radical.pilot>=1.103,<1.104'" in out


@pytest.mark.integration
@pytest.mark.timeout(660)  # the doctor's pilot may take its whole start timeout; _cli's deadline fires first
def test_doctor_healthy_venv_with_pilot(tmp_path):
    proc = _cli("doctor", "--run-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK   pilot: local pilot started" in proc.stdout
    assert "10 of 10 checks passed" in proc.stdout


