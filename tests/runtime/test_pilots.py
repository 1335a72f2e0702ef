"""Pilot descriptions for batch systems, built and checked without submitting anything."""
import pytest

from parsl_rcylon import PilotSpec, RadicalCylonExecutor, StartupError, WorkerPool
from parsl_rcylon.runtime.client.gpus import count_local_gpus
from parsl_rcylon.runtime.client.pilot import ResourceConfigError, known_resources, usable_per_node


def _descriptions(pilot: PilotSpec, *pools: WorkerPool) -> dict:
    ex = RadicalCylonExecutor(pilots=[pilot], pools=list(pools))
    ex.run_dir = "/scratch/run"
    return ex.pilot_descriptions()[pilot.name]


def test_frontier_cpu_and_gpu_pools():
    pd = _descriptions(
        PilotSpec(name="frontier", resource="ornl.frontier", project="CSC999", runtime=120),
        WorkerPool(name="cpu", ranks=112, ranks_per_node=56),
        WorkerPool(name="gpu", ranks=16, gpus_per_rank=1, cores_per_rank=7),
    )
    # 56 usable cores per node (8 reserved): cpu 2 full nodes; gpu ranks min(56 // 7, 8 GPUs) = 8
    # per node, 2 full nodes; no core left anywhere, so the RAPTOR master takes a fifth node
    assert pd == {**pd, "resource": "ornl.frontier", "project": "CSC999", "runtime": 120,
                  "queue": "batch", "nodes": 5, "sandbox": "/scratch/run/rcylon/sandbox"}
    assert "cores" not in pd and "gpus" not in pd


def test_polaris_pbs_queue_and_explicit_nodes():
    pd = _descriptions(
        PilotSpec(name="polaris", resource="anl.polaris", project="Proj", queue="prod", nodes=10),
        WorkerPool(name="gpu", ranks=8, gpus_per_rank=1),
    )
    assert (pd["resource"], pd["queue"], pd["nodes"], pd["project"]) == ("anl.polaris", "prod", 10, "Proj")


def test_frontera_needs_an_extra_node_for_the_master_when_pools_fill_nodes():
    cores, gpus = usable_per_node({"cores_per_node": 56, "gpus_per_node": 0})
    assert (cores, gpus) == (56, 0)
    pd = _descriptions(PilotSpec(name="f", resource="tacc.frontera", queue="development"),
                       WorkerPool(name="cpu", ranks=112))
    assert pd["nodes"] == 3 and pd["queue"] == "development"


def test_too_few_nodes_is_a_clear_error():
    with pytest.raises(ResourceConfigError, match=r"need 3 nodes of tacc.frontera.*nodes=1"):
        _descriptions(PilotSpec(name="f", resource="tacc.frontera", nodes=1), WorkerPool(name="cpu", ranks=112))


def test_gpu_pool_on_a_cpu_machine_is_a_clear_error():
    with pytest.raises(ResourceConfigError, match="pool 'gpu': 1 GPUs per rank, but nodes of tacc.frontera have 0"):
        _descriptions(PilotSpec(name="f", resource="tacc.frontera"), WorkerPool(name="gpu", ranks=2, gpus_per_rank=1))


def test_ranks_per_node_beyond_the_node_is_a_clear_error():
    with pytest.raises(ResourceConfigError, match="64 ranks per node need 64 cores"):
        _descriptions(PilotSpec(name="f", resource="ornl.frontier"),
                      WorkerPool(name="cpu", ranks=64, ranks_per_node=64))


def test_unknown_resource_lists_known_ones():
    with pytest.raises(ResourceConfigError, match="no configuration for resource 'nowhere.machine'"):
        _descriptions(PilotSpec(name="x", resource="nowhere.machine"), WorkerPool(name="cpu", ranks=4))
    assert "ornl.frontier" in known_resources() and "anl.polaris" in known_resources()


def test_user_supplied_resource_config_for_a_new_machine():
    cfg = {"cores_per_node": 48, "gpus_per_node": 4, "resource_manager": "SLURM",
           "launch_methods": {"order": ["SRUN"], "SRUN": {}}, "default_queue": "gpu"}
    pd = _descriptions(PilotSpec(name="x", resource="mysite.cluster", resource_config=cfg, project="p1"),
                       WorkerPool(name="gpu", ranks=8, gpus_per_rank=1), WorkerPool(name="cpu", ranks=40))
    assert (pd["nodes"], pd["queue"]) == (3, "gpu")


def test_local_pilot_holds_master_and_all_pools():
    pd = _descriptions(PilotSpec(), WorkerPool(name="a", ranks=3), WorkerPool(name="b", ranks=2, workers=2))
    assert (pd["cores"], pd["gpus"]) == (1 + 3 + 4, 0)


def test_pools_must_name_existing_pilots():
    with pytest.raises(ValueError, match="names pilot 'gpu'"):
        RadicalCylonExecutor(pilots=[PilotSpec(name="cpu")], pools=[WorkerPool(name="p", pilot="gpu")])
    with pytest.raises(ValueError, match="either pilots"):
        RadicalCylonExecutor(pilots=[PilotSpec(name="cpu")], project="p")


@pytest.mark.skipif(count_local_gpus() > 0, reason="this machine has GPUs: the missing-GPU error cannot happen")
def test_local_gpu_pool_without_gpus_fails_at_start_unless_pretending(tmp_path):
    ex = RadicalCylonExecutor(pools=[WorkerPool(name="gpu", ranks=2, gpus_per_rank=1)])
    ex.run_dir = str(tmp_path)
    with pytest.raises(StartupError, match="ask for 2 GPU\\(s\\) on this machine but it has 0.*pretend_gpus=True"):
        ex.start()


def test_a_pilot_the_batch_system_refused_is_explained_in_sbatchs_own_words(tmp_path):
    from parsl_rcylon.runtime.client.session import _launcher_errors
    from parsl_rcylon.runtime.layout import launcher_logs

    (tmp_path / "pmgr_launching.0000.log").write_text(
        "1.0 : pmgr_launching.0000 : 1 : 2 : DEBUG    : pwatcher started\n"
        "1.5 : pmgr_launching.0000 : 1 : 3 : ERROR    : bulk launch failed\nTraceback (most recent call last):\n"
        "psij.exceptions.SubmitException: sbatch: error: Invalid account or account/partition combination\n")
    (tmp_path / "pmgr_launching.0001.log").write_text("2.0 : pmgr_launching.0001 : 1 : 2 : DEBUG    : all well\n")
    text = _launcher_errors(launcher_logs(str(tmp_path)))
    assert "bulk launch failed" in text and "sbatch: error: Invalid account" in text
    assert "pwatcher" not in text and "all well" not in text
