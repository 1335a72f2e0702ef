"""The 2-node Slurm test cluster for tests: start it with cluster/setup.sh, describe it, stop it.

Set-up needs root and UTS namespaces, and installs ``slurm-wlm`` and ``munge``
where they are missing; where any of that is impossible the cluster tests
skip with what is missing.  The cluster is torn down at the end of the
session only if this session started it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import List, Optional

import parsl

from parsl_rcylon import RadicalCylonExecutor, WorkerPool
from parsl_rcylon.slurm import SlurmCluster
from tests.conftest import wait_for_no_processes

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "cluster"
NODES = ("n1", "n2")
#: Cores each test node claims (slurmd accepts more than the machine has: config_overrides).
CPUS = int(os.environ.get("RCYLON_SLURM_CPUS", "3"))
#: MPICH's default UCX netmod moves data through shared memory when it sees one machine and
#: listens on the non-loopback interface: libfabric's TCP provider over loopback is real TCP.
LOOPBACK_MPI = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "lo",
                "GLOO_SOCKET_IFNAME": "lo"}


def missing() -> Optional[str]:
    """What this machine lacks to run the test cluster, or ``None``."""
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (it installs slurm-wlm and munge and starts their daemons)"
    if shutil.which("unshare") is None:
        return "the Slurm test cluster needs unshare (util-linux) to give each node its own host name"
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"the Slurm test cluster needs UTS namespaces: unshare --uts failed: {probe.stderr.strip()}"
    return None


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the test cluster (cluster/setup.sh exit 2): tests skip with the reason."""


def setup() -> bool:
    """Start the cluster (idempotent); whether this call started it.

    Raises ``ClusterUnavailable`` where the machine cannot run it, ``RuntimeError`` where it failed.
    """
    env = dict(os.environ, RCYLON_SLURM_CPUS=str(CPUS))
    proc = subprocess.run(["bash", str(CLUSTER_DIR / "setup.sh")], capture_output=True, text=True,
                          timeout=900, env=env)
    if proc.returncode == 2:
        raise ClusterUnavailable(proc.stderr.strip())
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"cluster/setup.sh exited {proc.returncode}")
    return "already up" not in proc.stderr


def teardown() -> None:
    subprocess.run(["bash", str(CLUSTER_DIR / "teardown.sh")], capture_output=True, text=True, timeout=120)


def cluster(launch_method: str = "MPIEXEC") -> SlurmCluster:
    """The test cluster as a user describes it."""
    return SlurmCluster("rcylon.testcluster", cores_per_node=CPUS, partition="debug", launch_method=launch_method,
                        network_interface="lo", environment=LOOPBACK_MPI)


def squeue() -> List[dict]:
    """Jobs Slurm knows: id, state, node count, node list, working directory."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%D|%N|%Z"], capture_output=True, text=True,
                         check=True).stdout
    keys = ("id", "state", "nodes", "nodelist", "workdir")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]


def wait_for_no_jobs(timeout: float) -> List[dict]:
    """Poll until Slurm has no job left; return what is left at the end."""
    deadline = time.monotonic() + timeout
    left = squeue()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = squeue()
    return left


def load(run_dir: Path, launch_method: str, pool: WorkerPool, label: str, runtime: int = 20):
    """A loaded DFK with one executor whose pilot is an sbatch job on the test cluster."""
    ex = RadicalCylonExecutor(label=label, pilots=[cluster(launch_method).pilot(runtime=runtime)], pools=[pool],
                              address="127.0.0.1", start_timeout=240)
    dfk = parsl.load(parsl.Config(executors=[ex], run_dir=str(run_dir), strategy="none"))
    return ex, dfk


def pilot_job(ex: RadicalCylonExecutor) -> dict:
    """The squeue line of ``ex``'s pilot (found by its sandbox)."""
    sandbox = ex.pilot_descriptions()["main"]["sandbox"]
    jobs = [j for j in squeue() if j["workdir"].startswith(sandbox)]
    assert len(jobs) == 1, f"expected one Slurm job under the pilot's sandbox {sandbox}, squeue has {squeue()}"
    return jobs[0]


def close(ex: RadicalCylonExecutor, dfk, job_timeout: float = 20) -> None:
    """Shut down; assert that Slurm has no job and the process table no process of the run left."""
    sid = ex.session_id
    try:
        dfk.cleanup()
    finally:
        parsl.clear()
    left = wait_for_no_jobs(timeout=job_timeout)
    assert not left, f"Slurm jobs left after shutdown: {left}"
    procs = wait_for_no_processes(sid, timeout=20)
    assert not procs, f"processes of session {sid} left after shutdown: {procs}"


def lose_node(node: str) -> List[int]:
    """Kill node ``node`` as a power failure would: its slurmd and every process in its UTS namespace.

    Returns the PIDs killed.  ``setup()`` afterwards starts the whole cluster afresh.
    """
    import signal

    import psutil

    pids = dict(line.split() for line in (Path(os.environ.get("RCYLON_SLURM_DIR", "/tmp/rcylon-slurm"))
                                          / "pids").read_text().splitlines())
    slurmd = int(pids[f"slurmd-{node}"])
    uts = os.readlink(f"/proc/{slurmd}/ns/uts")
    killed = []
    for proc in psutil.process_iter():
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/uts") == uts:
                proc.send_signal(signal.SIGKILL)
                killed.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return killed
