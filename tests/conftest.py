"""Shared fixtures: one real local pilot for the whole test session."""
from __future__ import annotations

import os
import time

import parsl
import psutil
import pytest

from parsl_rcylon import RadicalCylonExecutor
from parsl_rcylon.runtime.processes import session_processes

#: Ranks of the session's worker: enough for tasks of 1, 2 and 3 ranks side by side.
SESSION_RANKS = 6


def wait_for_no_processes(sid: str, timeout: float) -> list:
    """Poll until no process of session ``sid`` is left; return what is left at the end."""
    deadline = time.monotonic() + timeout
    left = session_processes(sid)
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = session_processes(sid)
    return [(p.pid, _describe(p)) for p in left]


def _describe(proc) -> str:
    try:
        return " ".join(proc.cmdline())[:120] or proc.name()
    except Exception:
        return "?"


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    """Run the test under each umask a login node may have (restored after)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.fixture(scope="session")
def rcylon(tmp_path_factory):
    """A loaded DFK with one RadicalCylonExecutor on a real local pilot."""
    run_dir = tmp_path_factory.mktemp("runinfo")
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    ex = RadicalCylonExecutor(label="rcylon", worker_ranks=SESSION_RANKS)
    dfk = parsl.load(parsl.Config(executors=[ex], run_dir=str(run_dir), strategy="none"))
    sid = ex.session_id
    # Everything the executor started from this process, the ones without the session id included.
    started = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
    try:
        yield ex
    finally:
        dfk.cleanup()
        parsl.clear()
    left = wait_for_no_processes(sid, timeout=10)
    assert not left, f"processes of session {sid} left after shutdown: {left}"
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"processes the executor started left after shutdown: {[p.pid for p in alive]}"


@pytest.fixture(scope="session")
def slurm_cluster():
    """The 2-node Slurm test cluster (cluster/setup.sh); skips with what is missing where it cannot run."""
    from tests.slurm import testbed as slurm_testbed

    reason = slurm_testbed.missing()
    if reason:
        pytest.skip(reason)
    try:
        started = slurm_testbed.setup()
    except slurm_testbed.ClusterUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield slurm_testbed
    finally:
        if started:
            slurm_testbed.teardown()


def pytest_collection_modifyitems(config, items):
    # Where the Slurm cluster's tests share a session with the others (`pytest tests`; `make test` runs them
    # in a process of their own), they run first, before the session's own pilot (the `rcylon` fixture) is
    # up: its loaded DFK would refuse theirs, and two RP sessions at once can cross-talk.
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)
