"""The executor on a real Slurm cluster: 2 compute nodes on this machine (cluster/setup.sh).

The pilot goes through ``sbatch``; ranks of one task sit on two hosts with
host names of their own and talk over TCP; tables cross nodes on the shared
disk.  Both of RP's launch methods for Slurm run: MPIEXEC (hydra over
``srun``) and SRUN.
"""
from __future__ import annotations

import psutil
import pytest
from parsl import python_app

from parsl_rcylon import TableRef, WorkerPool, cylon_app
from parsl_rcylon.runtime.processes import listening_sockets, session_processes
from tests import stranger as strangers

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


@pytest.fixture(scope="module")
def mpiexec_pilot(slurm_cluster, tmp_path_factory):
    """One pilot by sbatch: a pool of 4 ranks, 2 on each node, launched by hydra over srun."""
    ex, dfk = slurm_cluster.load(tmp_path_factory.mktemp("slurm"), "MPIEXEC",
                                 WorkerPool(name="spread", ranks=4, ranks_per_node=2), "slurm")
    try:
        yield ex
    finally:
        slurm_cluster.close(ex, dfk)


@cylon_app
def where(ctx):
    import socket

    return {"hosts": ctx.comm.allgather(socket.gethostname()), "sum": ctx.comm.allreduce(ctx.rank + 1),
            "size": ctx.size}


@cylon_app(ranks=2)
def make_table(ctx, rows: int):
    import socket

    import pyarrow as pa

    base = ctx.rank * rows
    return pa.table({"k": list(range(base, base + rows)), "host": [socket.gethostname()] * rows})


@cylon_app(ranks=2)
def read_table(ctx, table):
    import socket

    return {"hosts": ctx.comm.allgather(socket.gethostname()),
            "rows": ctx.comm.allreduce(table.num_rows),
            "written_on": sorted(set(ctx.comm.allreduce(table.column("host").to_pylist())))}


@python_app
def count_rows(ref: TableRef) -> dict:
    import socket

    table = ref.read()
    return {"host": socket.gethostname(), "rows": table.num_rows, "k_sum": sum(table.column("k").to_pylist())}


@cylon_app(ranks=2)
def ddp_step(ctx):
    import socket

    import torch
    import torch.distributed as dist

    torch.manual_seed(ctx.rank)
    with ctx.torch_process_group(backend="gloo") as pg:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(5):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.zeros_like(weights) for _ in range(pg.size)]
        dist.all_gather(gathered, weights)
        return {"hosts": ctx.comm.allgather(socket.gethostname()), "store": pg.store_address,
                "same_weights": all(torch.equal(gathered[0], w) for w in gathered), "size": dist.get_world_size()}


def test_pilot_is_one_sbatch_job_on_both_nodes(mpiexec_pilot, slurm_cluster):
    job = slurm_cluster.pilot_job(mpiexec_pilot)  # shutdown's check: gone from squeue, no process left
    assert job["state"] == "RUNNING" and job["nodes"] == "2", job
    assert job["nodelist"] in ("n[1-2]", "n1,n2"), job


def test_two_ranks_on_two_hosts_with_a_collective_across_them(mpiexec_pilot):
    out = where(parsl_resource_specification={"ranks": 2, "num_nodes": 2, "ranks_per_node": 1}).result(timeout=120)
    assert sorted(out["hosts"]) == ["n1", "n2"], out
    assert out["sum"] == 3 and out["size"] == 2


def test_ranks_per_node_places_exactly(mpiexec_pilot):
    packed = where(parsl_resource_specification={"ranks": 2, "num_nodes": 1, "ranks_per_node": 2})
    whole = where(parsl_resource_specification={"ranks": 4, "num_nodes": 2, "ranks_per_node": 2})
    packed, whole = packed.result(timeout=120), whole.result(timeout=120)
    assert len(set(packed["hosts"])) == 1 and packed["sum"] == 3, packed
    assert sorted(whole["hosts"]) == ["n1", "n1", "n2", "n2"] and whole["sum"] == 10, whole


def test_a_table_made_on_one_node_is_read_on_the_other_and_by_a_python_app(mpiexec_pilot):
    ref = make_table(50, parsl_resource_specification={"ranks": 2, "num_nodes": 1, "ranks_per_node": 2})
    spread = read_table(ref, parsl_resource_specification={"ranks": 2, "num_nodes": 2, "ranks_per_node": 1})
    plain = count_rows(ref)
    spread, plain = spread.result(timeout=120), plain.result(timeout=120)
    written_on = spread["written_on"]
    assert len(written_on) == 1, f"the table was meant to be written on one node: {written_on}"
    assert sorted(spread["hosts"]) == ["n1", "n2"] and spread["rows"] == 100, spread
    assert plain["rows"] == 100 and plain["k_sum"] == sum(range(100)), plain
    assert plain["host"] in ("n1", "n2")


def test_ddp_training_with_ranks_on_two_nodes(mpiexec_pilot):
    out = ddp_step(parsl_resource_specification={"ranks": 2, "num_nodes": 2, "ranks_per_node": 1}).result(timeout=300)
    assert sorted(out["hosts"]) == ["n1", "n2"] and out["size"] == 2, out
    assert out["same_weights"], "DDP replicas diverged: gradients were not averaged across nodes"
    assert out["store"].split(":")[0] in ("n1", "n2"), out


def test_a_stranger_meets_curvezmq_on_every_rp_socket_of_the_batch_pilot(mpiexec_pilot):
    # A multi-node pilot's bridges must listen beyond loopback (the agent's node is not the client's);
    # what keeps another user off them is CurveZMQ with the session's keys.  The probe's control is
    # a plain ZeroMQ socket of this user's, which it must see as NULL.
    import zmq

    ex = mpiexec_pilot
    host = strangers.host_address()
    procs = {p.pid: p for p in session_processes(ex.session_id, ex.base_dir)}
    procs.update({p.pid: p for p in psutil.Process().children(recursive=True)})
    sockets = listening_sockets(list(procs.values()) + [psutil.Process()])
    plain = zmq.Context.instance().socket(zmq.PULL)
    try:
        control = plain.bind_to_random_port("tcp://*")
        seen = strangers.probe_ports([host, "127.0.0.1"], also=[control])
    finally:
        plain.close(linger=0)
    assert seen[host][control] == "NULL", seen
    beyond = {addr.port for _, _, addr in sockets["rp_beyond_loopback"]}
    assert len(beyond) >= 10, sockets  # the agent's bridges, reachable from the other node
    owners = {addr.port: (pid, name) for pid, name, addr in sockets["rp"]}
    where_seen = {port: seen[host][port] if port in beyond else seen["127.0.0.1"][port] for port in owners}
    assert {port: (m, owners[port]) for port, m in where_seen.items() if m != "CURVE"} == {}
    out = where().result(timeout=120)  # and the run goes on
    assert out["size"] == 1
