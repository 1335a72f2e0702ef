"""Heterogeneous pools: routing, GPU slices, two pilots in one DAG, packing."""
from __future__ import annotations

import time

import pytest
from parsl import Config, python_app
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors.errors import InvalidResourceSpecification

from parsl_rcylon import PilotSpec, RadicalCylonExecutor, WorkerPool, cylon_app

from .conftest import SESSION_RANKS, wait_for_no_processes

pytestmark = pytest.mark.integration


def _where(ctx):
    import os

    return {"pool": os.environ.get("RCYLON_POOL"), "size": ctx.size, "gpus": list(ctx.gpu_ids),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _gather_where(ctx, hold: float = 0.0):
    import time

    time.sleep(hold)
    return ctx.comm.allgather(_where(ctx))


@pytest.fixture(scope="module")
def two_pilots(tmp_path_factory):
    """One executor, a CPU pilot and a (pretend) GPU pilot, driven by its own DFK."""
    ex = RadicalCylonExecutor(
        label="het",
        pilots=[PilotSpec(name="cpus"), PilotSpec(name="gpus")],
        pools=[WorkerPool(name="cpu", ranks=3, pilot="cpus"),
               WorkerPool(name="gpu", ranks=2, gpus_per_rank=1, pilot="gpus", pretend_gpus=True)],
    )
    dfk = DataFlowKernel(Config(executors=[ex], run_dir=str(tmp_path_factory.mktemp("het")), strategy="none"))
    sid = ex.session_id
    try:
        yield dfk, ex
    finally:
        dfk.cleanup()
    assert wait_for_no_processes(sid, timeout=10) == []


def test_routing_by_gpu_need_name_and_size(two_pilots):
    dfk, ex = two_pilots
    where = cylon_app(ranks=1, data_flow_kernel=dfk)(_gather_where)
    assert [w["pool"] for w in where().result(timeout=120)] == ["cpu"]
    assert [w["pool"] for w in where(parsl_resource_specification={"gpus_per_rank": 1}).result(timeout=120)] \
        == ["gpu"]
    assert [w["pool"] for w in where(parsl_resource_specification={"pool": "gpu"}).result(timeout=120)] == ["gpu"]
    big = where(parsl_resource_specification={"ranks": 3}).result(timeout=120)
    assert [w["pool"] for w in big] == ["cpu"] * 3
    with pytest.raises(InvalidResourceSpecification, match=r"needs 3 rank\(s\) with 1 GPU.*gpu \(1 x 2 ranks"):
        where(parsl_resource_specification={"ranks": 3, "gpus_per_rank": 1})
    with pytest.raises(InvalidResourceSpecification, match=r"needs 4 rank\(s\).*cpu \(1 x 3 ranks"):
        where(parsl_resource_specification={"ranks": 4})
    view = ex.status()
    assert (view["cpu"]["ranks"], view["gpu"]["ranks"]) == (3, 2)


def test_each_gpu_rank_sees_only_its_own_device(two_pilots):
    dfk, _ = two_pilots
    where = cylon_app(ranks=2, gpus_per_rank=1, data_flow_kernel=dfk)(_gather_where)
    ranks = where().result(timeout=120)
    assert [r["gpus"] for r in ranks] == [[0], [1]]
    assert [r["cuda"] for r in ranks] == ["0", "1"]
    # two concurrent one-rank GPU tasks never share a device
    one = cylon_app(ranks=1, gpus_per_rank=1, data_flow_kernel=dfk)(_gather_where)
    a, b = one(2.0), one(2.0)
    assert sorted(a.result(timeout=120)[0]["gpus"] + b.result(timeout=120)[0]["gpus"]) == [0, 1]
    # CPU ranks see no GPU at all
    cpu = cylon_app(ranks=1, data_flow_kernel=dfk)(_gather_where)
    assert cpu().result(timeout=120)[0]["cuda"] == ""


def test_one_dag_across_two_pilots(two_pilots):
    dfk, _ = two_pilots

    def prepare(ctx, n):
        return ctx.comm.allreduce(sum(range(ctx.rank, n, ctx.size)))

    def train(ctx, total):
        import os

        return {"total": total * ctx.size, "device": os.environ["CUDA_VISIBLE_DEVICES"]}

    def report(result, pool_of_prepare):
        return f"{result['total']} on GPU {result['device']} after {pool_of_prepare}"

    prep = cylon_app(ranks=3, data_flow_kernel=dfk)(prepare)
    fit = cylon_app(ranks=1, gpus_per_rank=1, data_flow_kernel=dfk)(train)
    summary = python_app(data_flow_kernel=dfk)(report)
    out = summary(fit(prep(100)), "cpu").result(timeout=180)
    assert out in (f"{sum(range(100))} on GPU 0 after cpu", f"{sum(range(100))} on GPU 1 after cpu")


@cylon_app(ranks=1)
def timed(ctx, seconds):
    import time

    t0 = time.time()
    ctx.comm.Barrier()
    time.sleep(seconds)
    return (ctx.size, t0, time.time())


def test_packing_40_mixed_tasks(rcylon):
    sizes = [1, 2, 3, 4, 1, 1, 2, 4] * 5
    t0 = time.time()
    futs = [timed(0.3, parsl_resource_specification={"ranks": n}) for n in sizes]
    results = [f.result(timeout=300) for f in futs]
    makespan = time.time() - t0
    assert [r[0] for r in results] == sizes
    # at some moment the pool ran several tasks at once, never more ranks than it has
    events = sorted([(s, n) for (n, s, _) in results] + [(e, -n) for (n, _, e) in results])
    busy, peak = 0, 0
    for _, delta in events:
        busy += delta
        peak = max(peak, busy)
    assert 2 <= peak <= SESSION_RANKS
    # speed belongs to benchmarks/packing.py; here only the shape of the schedule is checked
    print(f"40 tasks: makespan {makespan:.1f} s, peak ranks in use {peak}")


def test_big_task_is_not_starved_by_a_stream_of_small_ones(rcylon):
    blockers = [timed(1.0, parsl_resource_specification={"ranks": 1}) for _ in range(SESSION_RANKS - 1)]
    big = timed(0.1, parsl_resource_specification={"ranks": SESSION_RANKS})
    stream = [timed(1.0, parsl_resource_specification={"ranks": 1}) for _ in range(40)]
    big_start = big.result(timeout=300)[1]
    late_starts = sorted(f.result(timeout=300)[1] for f in stream)
    for f in blockers:
        f.result(timeout=60)
    # the big task ran before the tail of the stream submitted after it
    assert big_start < late_starts[-1]
    assert sum(1 for s in late_starts if s < big_start) <= 16 + SESSION_RANKS
