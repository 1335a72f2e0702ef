"""A Slurm cluster described by its users' terms, and the checks a batch pilot gets; nothing submitted."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from parsl_rcylon import RadicalCylonExecutor, WorkerPool
from parsl_rcylon.runtime.agent.pmi import missing_pmi
from parsl_rcylon.runtime.client.config import with_mpi_path
from parsl_rcylon.runtime.wire.channel import bind_address
from parsl_rcylon.slurm import SlurmCluster, SlurmClusterError


def test_a_slurm_cluster_builds_the_whole_rp_configuration():
    site = SlurmCluster("mysite.cluster", cores_per_node=64, gpus_per_node=4, partition="gpu", account="ABC123",
                        launch_method="SRUN", network_interface="ib0", constraints=["a100"],
                        environment={"FI_PROVIDER": "verbs"})
    cfg = site.resource_config()
    assert cfg["resource_manager"] == "SLURM" and cfg["schemas"]["local"]["job_manager_endpoint"] == "slurm://localhost/"
    assert (cfg["cores_per_node"], cfg["gpus_per_node"], cfg["default_queue"]) == (64, 4, "gpu")
    assert cfg["launch_methods"]["order"] == ["SRUN"]
    lines = cfg["launch_methods"]["SRUN"]["pre_exec_cached"]
    assert {"export SLURM_OVERLAP=1", "export SLURM_MPI_TYPE=pmi2", "export FI_PROVIDER=verbs"} <= set(lines)
    assert cfg["network_interface"] == "ib0" and cfg["system_architecture"]["options"] == ["a100"]
    assert cfg["virtenv_mode"] == "local"  # the client's environment on the shared filesystem


def test_a_slurm_pilot_is_sized_by_its_pools_and_carries_partition_and_account():
    site = SlurmCluster("mysite.cluster", cores_per_node=3, partition="debug", account="ABC123")
    ex = RadicalCylonExecutor(pilots=[site.pilot(runtime=30)], pools=[WorkerPool(ranks=4, ranks_per_node=2)])
    ex.run_dir = "/scratch/run"
    pd = ex.pilot_descriptions()["main"]
    # 2 ranks per node on 2 nodes leave a core on each for the RAPTOR master: 2 nodes
    assert (pd["resource"], pd["nodes"], pd["queue"], pd["project"], pd["runtime"]) == \
        ("mysite.cluster", 2, "debug", "ABC123", 30)
    assert pd["sandbox"] == "/scratch/run/rcylon/sandbox"


def test_pilot_descriptions_before_load_do_not_invent_a_sandbox():
    site = SlurmCluster("mysite.cluster", cores_per_node=8)
    ex = RadicalCylonExecutor(label="hpc", pilots=[site.pilot()], pools=[WorkerPool(ranks=2)])
    assert ex.pilot_descriptions()["main"]["sandbox"] == "<run_dir>/hpc/sandbox"


@pytest.mark.parametrize("kwargs, match", [
    ({"launch_method": "MPIRUN"}, "launch_method"),
    ({"cores_per_node": 0}, "cores_per_node"),
    ({"pmi": "none"}, "world of size 1"),
])
def test_bad_cluster_descriptions_name_the_problem(kwargs, match):
    with pytest.raises(SlurmClusterError, match=match):
        SlurmCluster("mysite.cluster", **{"cores_per_node": 8, **kwargs})


def test_batch_pilots_get_the_wheels_mpiexec_first_on_path_for_every_launch_method():
    cfg = {"launch_methods": {"order": ["MPIEXEC", "SRUN"], "MPIEXEC": {}, "SRUN": {"pre_exec_cached": ["x"]}}}
    out = with_mpi_path(cfg)
    if not (Path(sys.prefix) / "bin" / "mpiexec").exists():
        pytest.skip("this interpreter's environment has no mpiexec of its own (no mpich wheel)")
    line = f"export PATH={Path(sys.prefix) / 'bin'}:$PATH"
    assert out["launch_methods"]["MPIEXEC"]["pre_exec_cached"] == [line]
    assert out["launch_methods"]["SRUN"]["pre_exec_cached"] == [line, "x"]
    assert with_mpi_path(out) == out


def test_the_channel_binds_where_address_says():
    assert bind_address(None, local=True) == "127.0.0.1"
    assert bind_address(None, local=False) == "*"
    assert bind_address("127.0.0.1", local=False) == "127.0.0.1"
    assert bind_address("localhost", local=False) == socket.gethostbyname("localhost")


def test_srun_without_a_pmi_is_recognised():
    no_pmi = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_MPI_TYPE": "none"}
    assert "no PMI" in missing_pmi(1, no_pmi)
    assert missing_pmi(1, dict(no_pmi, PMI_SIZE="2")) is None      # pmi2 marks its ranks
    assert missing_pmi(2, no_pmi) is None                            # a world of 2 is fine
    assert missing_pmi(1, {"SLURM_STEP_NUM_TASKS": "1"}) is None    # one task: nothing to meet
    assert missing_pmi(1, {}) is None                                # not under srun


def test_slurm_pilots_are_submitted_with_no_kill_unless_the_user_said_otherwise(monkeypatch):
    from parsl_rcylon.runtime.client.config import batch_environment

    slurm = SlurmCluster("mysite.cluster", cores_per_node=4).resource_config()
    monkeypatch.delenv("SBATCH_NO_KILL", raising=False)
    assert batch_environment([slurm]) == {"SBATCH_NO_KILL": "set"}  # sbatch refuses "1"
    assert batch_environment([{"resource_manager": "PBSPRO"}]) == {} and batch_environment([]) == {}
    monkeypatch.setenv("SBATCH_NO_KILL", "0")
    assert batch_environment([slurm]) == {}, "the user's own setting wins"
