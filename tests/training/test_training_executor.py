"""Training stages on a real pilot: process groups on 1-3 ranks side by side, a failing rank, model hand-off."""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from parsl_rcylon import TableRef, cylon_app

pytestmark = pytest.mark.integration


@cylon_app(ranks=2)
def group_info(ctx, meet: str = "", expect: int = 0):
    """Open a group, allreduce; with ``meet``, hold the group open until ``expect`` tasks have theirs open."""
    import os
    import time

    import torch
    import torch.distributed as dist

    t0 = time.time()
    with ctx.torch_process_group() as pg:
        t = torch.tensor([float(ctx.rank + 1)])
        dist.all_reduce(t)
        if meet:
            if ctx.rank == 0:
                open(os.path.join(meet, str(ctx.task_id)), "w").close()
            deadline = time.time() + 120
            while len(os.listdir(meet)) < expect and time.time() < deadline:
                time.sleep(0.05)
            dist.barrier()
        info = {"sum": t.item(), "size": dist.get_world_size(), "address": pg.store_address,
                "backend": pg.backend, "start": t0, "end": time.time(), "setup": pg.setup_seconds,
                "met": len(os.listdir(meet)) if meet else 0}
    info["closed"] = not dist.is_initialized()
    return info


@cylon_app(ranks=2)
def failing_training(ctx, fail_rank: int):
    import torch

    pg = ctx.torch_process_group()  # no `with`: the task's end must still abort it
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(100_000):
        if ctx.rank == fail_rank and step == 50:
            raise RuntimeError(f"rank {ctx.rank} hit a bad batch")
        loss = model(torch.randn(16, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return pg.size


def run_epochs(model, opt, loader, epochs: int) -> None:
    import torch

    for _ in range(epochs):
        for x, y in loader:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


@cylon_app(ranks=2)
def make_table(ctx, rows: int):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng([3, ctx.rank])
    x = rng.normal(size=(rows, 2)).astype(np.float32)
    return pa.table({"a": x[:, 0], "b": x[:, 1], "y": (x[:, 0] - x[:, 1] > 0).astype(np.float32)})


@cylon_app(ranks=2)
def fit(ctx, table, epochs: int):
    import torch

    torch.manual_seed(0)
    with ctx.torch_process_group():
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        loader = ctx.torch_loader(table, features=["a", "b"], label="y", batch_size=128)
        run_epochs(model, opt, loader, epochs)
        return ctx.save_model(model, optimizer=opt, meta={"epochs": epochs, "stats": loader.stats()})


@cylon_app(ranks=2)
def resume(ctx, model_ref, table, epochs: int):
    import torch

    with ctx.torch_process_group():
        net = torch.nn.Linear(2, 1)
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        model_ref.load_into(net, optimizer=opt)
        model = torch.nn.parallel.DistributedDataParallel(net)
        loader = ctx.torch_loader(table, features=["a", "b"], label="y", batch_size=128)
        run_epochs(model, opt, loader, epochs)
        return ctx.save_model(model, optimizer=opt, meta={"epochs": model_ref.meta["epochs"] + epochs})


@cylon_app(ranks=3)
def score(ctx, model_ref, table):
    import pyarrow as pa
    import torch

    from parsl_rcylon.training import predict

    net = torch.nn.Linear(2, 1)
    model_ref.load_into(net)
    return pa.table({"y": table["y"], "logit": pa.array(predict(net, table, ["a", "b"]))})


def test_process_groups_side_by_side(rcylon, tmp_path) -> None:
    """Groups of 1, 2 and 3 ranks open at once on one worker, then two 2-rank groups: no collisions."""
    meet = tmp_path / "three"
    meet.mkdir()
    res = [group_info(str(meet), 3, parsl_resource_specification={"ranks": n}) for n in (1, 2, 3)]
    infos = [f.result(timeout=240) for f in res]
    for n, info in zip((1, 2, 3), infos, strict=True):
        assert info["size"] == n and info["sum"] == n * (n + 1) / 2 and info["backend"] == "gloo", info
        assert info["closed"] and info["met"] == 3, info
    assert len({i["address"] for i in infos}) == 3
    pair_dir = tmp_path / "pair"
    pair_dir.mkdir()
    a, b = (f.result(timeout=240) for f in [group_info(str(pair_dir), 2), group_info(str(pair_dir), 2)])
    assert a["address"] != b["address"] and a["sum"] == b["sum"] == 3.0
    assert a["met"] == b["met"] == 2, "the two training tasks did not have their groups open at the same time"


@pytest.mark.parametrize("fail_rank", [1, 0])
def test_failing_rank_fails_the_task_fast(rcylon, fail_rank: int) -> None:
    """A rank raising mid-DDP fails the task in seconds; the ranks then run the next training task."""
    t0 = time.time()
    fut = failing_training(fail_rank)
    with pytest.raises(Exception, match="hit a bad batch") as info:
        fut.result(timeout=120)
    # The other rank sat in an allreduce with the failed one; it is freed by the abort, not the 300 s timeout.
    assert time.time() - t0 < 60, f"the task took {time.time() - t0:.0f} s to fail"
    assert info.type is RuntimeError or "PeerFailedError" in info.type.__name__
    after = group_info().result(timeout=120)
    assert after["sum"] == 3.0 and after["closed"]


def test_model_ref_hand_off(rcylon) -> None:
    """Train, hand the ModelRef to a resume stage and to a 3-rank scoring stage that returns a TableRef."""
    table = make_table(2000)
    ref = fit(table, 3).result(timeout=240)
    assert ref.meta["epochs"] == 3 and ref.meta["stats"]["batches"] == 3 * len(range(0, 2000, 128))
    resumed = resume(ref, table, 2).result(timeout=240)
    assert resumed.meta["epochs"] == 5 and resumed.path != ref.path
    scores = score(resumed, table).result(timeout=240)
    assert isinstance(scores, TableRef) and scores.num_rows == 4000
    t = scores.read()
    accuracy = float(np.mean((t["logit"].to_numpy() > 0) == (t["y"].to_numpy() > 0.5)))
    assert accuracy > 0.95, accuracy
    assert pa.types.is_float32(t.schema.field("logit").type)
