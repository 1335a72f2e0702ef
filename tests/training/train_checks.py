"""Training-layer checks that run on every rank: ``mpiexec -n N python train_checks.py --out result.json``.

Each case gets a fresh ``CylonContext`` on a duplicate of ``COMM_WORLD`` (as
a warm worker rank gets one per task) and ends it with ``ctx.end_task``, as
the rank runner does.  Every rank's verdict is gathered; rank 0 writes one
``{"case": {"ok": bool, "error": str, "seconds": float}}`` JSON file after
each case, so a hang still leaves the verdicts before it.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import time
import traceback
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from mpi4py import MPI

from parsl_rcylon.context import CylonContext
from parsl_rcylon.training import LoaderError, PeerFailedError

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
CASES: Dict[str, Callable[[CylonContext], None]] = {}
#: Seconds within which the other ranks must leave a collective after one rank failed.
FAIL_FAST_SECONDS = 10.0
#: Seconds one case may run before every thread's stack is printed and the rank exits:
#: a hang then says where it was, in the test's failure message.
CASE_TIMEOUT = float(os.environ.get("TRAIN_CASE_TIMEOUT", "90"))


def case(fn: Callable[[CylonContext], None]) -> Callable[[CylonContext], None]:
    CASES[fn.__name__] = fn
    return fn


_TASKS = iter(range(1_000_000))


def new_ctx(name: str) -> CylonContext:
    # Every rank makes the same contexts in the same order: task ids agree, as a worker's tasks do.
    return CylonContext(COMM.Dup(), task_id=f"t{next(_TASKS)}", name=name)


def share(rows_of_rank: Callable[[int], int], label_mod: int = 7) -> pa.Table:
    """This rank's rows of a table whose ``id`` runs over all ranks' rows in rank order."""
    counts = [rows_of_rank(r) for r in range(SIZE)]
    start = sum(counts[:RANK])
    ids = np.arange(start, start + counts[RANK], dtype=np.int64)
    return pa.table({"id": ids.astype(np.float64), "x": (ids * 0.5).astype(np.float32),
                     "y": (ids % label_mod).astype(np.int32)})


def epoch_ids(loader) -> List[np.ndarray]:
    """The ``id`` feature of every batch of one epoch (copied: buffers are reused)."""
    out = []
    for x, y in loader:
        ids = x[:, 0].numpy().astype(np.int64)
        assert np.array_equal(y.numpy().astype(np.int64), ids % 7), "a label does not belong to its row"
        assert np.allclose(x[:, 1].numpy(), ids * 0.5), "a feature does not belong to its row"
        out.append(ids.copy())
    return out


def all_ids(batches: List[np.ndarray]) -> np.ndarray:
    return np.concatenate(batches) if batches else np.empty(0, np.int64)


# -- process group ------------------------------------------------------------------------------


@case
def process_group(ctx: CylonContext) -> None:
    pg = ctx.torch_process_group(timeout=60)
    assert dist.is_initialized() and dist.get_world_size() == SIZE and dist.get_rank() == RANK
    assert pg.backend == "gloo" and str(pg.device) == "cpu", pg
    t = torch.tensor([float(RANK + 1)])
    dist.all_reduce(t)
    assert t.item() == SIZE * (SIZE + 1) / 2, t
    host, port = pg.store_address.split(":")
    ports = COMM.allgather(int(port))
    assert len(set(ports)) == 1 and ports[0] > 0, ports
    # The user forgets to close it: the task's end must.
    ctx.end_task(None)
    assert not dist.is_initialized() and pg.closed
    # A warm rank's next task gets a new group, on a new port.
    ctx2 = new_ctx("process_group_2")
    with ctx2.torch_process_group() as pg2:
        t = torch.ones(2)
        dist.all_reduce(t)
        assert t.tolist() == [SIZE, SIZE]
        assert pg2.store_address != pg.store_address or SIZE == 1
    assert not dist.is_initialized()
    ctx2.end_task(None)


@case
def process_group_checks(ctx: CylonContext) -> None:
    from parsl_rcylon.training import ProcessGroupError

    for backend, words in (("mpi", "not built into"), ("nccl", "needs a GPU"), ("ucc", "expected 'gloo'")):
        try:
            ctx.torch_process_group(backend=backend)
        except ProcessGroupError as exc:
            assert words in str(exc), exc
        else:
            raise AssertionError(f"backend {backend} was accepted")
    with ctx.torch_process_group():
        try:
            ctx.torch_process_group()
        except ProcessGroupError as exc:
            assert "already exists" in str(exc), exc
        else:
            raise AssertionError("a second group in one task was accepted")
    ctx.end_task(None)


def _fail_mid_training(ctx: CylonContext, use_with: bool) -> None:
    """The last rank raises in the middle of DDP training; every other rank must leave within seconds."""
    failing = SIZE - 1
    model = torch.nn.Linear(4, 1)
    pg = ctx.torch_process_group(timeout=120)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    error: Optional[BaseException] = None
    t_fail = None

    def train() -> None:
        nonlocal t_fail
        for step in range(10_000):
            if RANK == failing and step == 20:
                t_fail = time.time()
                raise ValueError("bad batch on purpose")
            loss = ddp(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    try:
        if use_with:
            with pg:
                train()
        else:
            train()
    except BaseException as exc:
        error = exc
    ctx.end_task(error)
    t_end = time.time()
    assert error is not None, "training did not fail"
    t_fails = [t for t in COMM.allgather(t_fail) if t is not None]
    assert len(t_fails) == 1
    waited = t_end - t_fails[0]
    assert waited < FAIL_FAST_SECONDS, f"rank {RANK} left {waited:.1f} s after rank {failing} failed"
    if RANK == failing:
        assert isinstance(error, ValueError), repr(error)
    elif use_with:
        assert isinstance(error, PeerFailedError) and error.failed_rank == failing, repr(error)
        assert "bad batch on purpose" in str(error), error
    else:
        # torch's own error, with a note naming the rank that failed first
        notes = " ".join(getattr(error, "__notes__", []))
        assert "bad batch on purpose" in notes and f"rank {failing}" in notes, (repr(error), notes)
    assert not dist.is_initialized()
    # The ranks are usable for the next task.
    ctx2 = new_ctx("after_failure")
    with ctx2.torch_process_group():
        t = torch.ones(1)
        dist.all_reduce(t)
        assert t.item() == SIZE
    ctx2.end_task(None)


@case
def rank_fails_in_training(ctx: CylonContext) -> None:
    _fail_mid_training(ctx, use_with=False)


@case
def rank_fails_in_training_with(ctx: CylonContext) -> None:
    _fail_mid_training(ctx, use_with=True)


# -- loader ----------------------------------------------------------------------------------------


@case
def loader_block_even(ctx: CylonContext) -> None:
    """Even shares: every row exactly once per epoch on every rank; same seed, same epochs."""
    table = share(lambda r: 5000)
    loader = ctx.torch_loader(table, features=["id", "x"], label="y", batch_size=256, seed=11)
    loader2 = ctx.torch_loader(table, features=["id", "x"], label="y", batch_size=256, seed=11)
    other = ctx.torch_loader(table, features=["id", "x"], label="y", batch_size=256, seed=12)
    own = table.column("id").to_numpy().astype(np.int64)
    epochs = [epoch_ids(loader) for _ in range(3)]
    for e, batches in enumerate(epochs):
        ids = all_ids(batches)
        assert np.array_equal(np.sort(ids), own), f"epoch {e}: rows not exactly once"
        assert len(batches) == len(loader) == loader.steps(e)
    assert not np.array_equal(all_ids(epochs[0]), all_ids(epochs[1])), "epochs 0 and 1 in the same order"
    assert not np.array_equal(all_ids(epochs[1]), all_ids(epochs[2])), "epochs 1 and 2 in the same order"
    for e in range(3):
        loader2.set_epoch(e)
        assert np.array_equal(all_ids(epoch_ids(loader2)), all_ids(epochs[e])), f"epoch {e} not reproducible"
    assert not np.array_equal(all_ids(epoch_ids(other)), all_ids(epochs[0])), "seed had no effect"
    # Not just whole-block moves: a batch draws rows from many places.
    first = epochs[0][0] - own[0]
    assert len(np.unique(first // loader.block_size)) == 256 // loader.block_size
    stats = loader.stats()
    assert stats["batches"] == 3 * len(loader) and stats["rows"] == 3 * 5000, stats
    assert stats["wait_seconds"] >= 0 and stats["compute_seconds"] > 0, stats
    ctx.end_task(None)


@case
def loader_uneven_steps(ctx: CylonContext) -> None:
    """Uneven shares: equal step counts; every own row at least once; drop_last: full batches, no repeats."""
    rows = lambda r: 1000 + 337 * r  # noqa: E731
    table = share(rows)
    own = table.column("id").to_numpy().astype(np.int64)
    most = max(-(-rows(r) // 100) for r in range(SIZE))
    for prefetch in (0, 2):
        loader = ctx.torch_loader(table, features=["id", "x"], label="y", batch_size=100, prefetch=prefetch,
                                  seed=5)
        for _ in range(2):
            batches = epoch_ids(loader)
            steps = COMM.allgather(len(batches))
            assert steps == [most] * SIZE, steps
            ids = all_ids(batches)
            counts = Counter(ids.tolist())
            assert set(counts) == set(own.tolist()), "a row is missing or foreign"
            if -(-len(own) // 100) == most:
                assert max(counts.values()) == 1, "the largest share repeated a row"
            else:
                assert len(ids) == most * 100, "a short share did not fill its batches"
    fewest = min(rows(r) // 100 for r in range(SIZE))
    loader = ctx.torch_loader(table, features=["id", "x"], label="y", batch_size=100, drop_last=True, seed=5)
    for _ in range(2):
        batches = epoch_ids(loader)
        assert COMM.allgather(len(batches)) == [fewest] * SIZE
        assert all(len(b) == 100 for b in batches)
        ids = all_ids(batches)
        assert len(np.unique(ids)) == len(ids) and np.isin(ids, own).all()
    ctx.end_task(None)


@case
def loader_global(ctx: CylonContext) -> None:
    """Global shuffle: over all ranks every row exactly once per epoch; shares change across epochs."""
    table = share(lambda r: 700 + 91 * r)
    total = sum(700 + 91 * r for r in range(SIZE))
    loader = ctx.torch_loader(table, features=["id", "x"], label="y", batch_size=64, shuffle="global", seed=3)
    seen = []
    for e in range(2):
        distinct = np.unique(all_ids(epoch_ids(loader)))
        # Each row lands on exactly one rank (a short rank may repeat some of its own to fill batches).
        assert len(distinct) == loader.epoch_counts(e)[RANK], (len(distinct), loader.epoch_counts(e))
        everything = np.concatenate(COMM.allgather(distinct))
        assert np.array_equal(np.sort(everything), np.arange(total)), f"epoch {e}: not every row exactly once"
        seen.append(distinct)
    if SIZE > 1:
        assert not np.array_equal(seen[0], seen[1]), "global shuffle sent the same rows twice"
        own = table.column("id").to_numpy().astype(np.int64)
        assert not np.array_equal(seen[0], own), "global shuffle kept the rank's own rows"
    again = ctx.torch_loader(table, features=["id", "x"], label="y", batch_size=64, shuffle="global", seed=3)
    again.set_epoch(1)
    loader.set_epoch(1)
    assert np.array_equal(all_ids(epoch_ids(again)), all_ids(epoch_ids(loader))), "global epoch not reproducible"
    ctx.end_task(None)


@case
def loader_ordered_and_zero_copy(ctx: CylonContext) -> None:
    """shuffle=None keeps stored order; a fixed_size_list column of float32 is used in place."""
    table = share(lambda r: 1000)
    loader = ctx.torch_loader(table, features=["id", "x"], label="y", batch_size=300, shuffle=None)
    ids = all_ids(epoch_ids(loader))
    assert np.array_equal(ids, table.column("id").to_numpy().astype(np.int64))
    values = np.arange(4000, dtype=np.float32)
    tensor_col = pa.FixedSizeListArray.from_arrays(pa.array(values), 4)
    loader = ctx.torch_loader(pa.table({"t": tensor_col}), features=["t"], batch_size=100, shuffle=None)
    assert loader.zero_copy and loader.width == 4
    first = next(iter(loader))
    assert first.data_ptr() == tensor_col.values.buffers()[1].address, "a shuffle=None batch was copied"
    ctx.end_task(None)


@case
def loader_errors(ctx: CylonContext) -> None:
    """Bad input on one rank raises the same named error on every rank (no rank left waiting)."""
    table = share(lambda r: 100)
    bad = table if RANK != SIZE - 1 else table.set_column(1, "x", pa.array([None] * 100, pa.float32()))
    cases = [
        (dict(data=bad, features=["id", "x"], label="y"), "nulls"),
        (dict(data=table, features=["id", "nope"], label="y"), "nope"),
        (dict(data=table, features=["id"], label="y", shuffle="sideways"), "shuffle"),
        (dict(data=table, features=["id"], batch_size=100, block_size=7), "block_size"),
        (dict(data=table, features=["id"], batch_size=1000, drop_last=True), "no step"),
        (dict(data=pa.table({"s": ["a"] * 100}), features=["s"]), "numeric"),
    ]
    if SIZE > 1:
        empty = table if RANK != 0 else table.slice(0, 0)
        cases.append((dict(data=empty, features=["id"]), "no rows"))
    for kwargs, words in cases:
        try:
            ctx.torch_loader(**kwargs)
        except LoaderError as exc:
            assert words in str(exc), (words, str(exc))
        else:
            raise AssertionError(f"accepted {kwargs.get('features')} ({words})")
    ctx.end_task(None)


# -- DDP end to end --------------------------------------------------------------------------------


@case
def ddp_training(ctx: CylonContext) -> None:
    """A model trained with DDP on the loader has the same weights on every rank, and learns."""
    torch.manual_seed(0)
    rng = np.random.default_rng([1, RANK])
    n = 4000 + 500 * RANK
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.5], dtype=np.float32) > 0).astype(np.float32)
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})
    with ctx.torch_process_group() as pg:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        loader = ctx.torch_loader(table, features=["a", "b", "c"], label="y", batch_size=200, seed=2)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        for _ in range(3):
            for xb, yb in loader:
                loss = loss_fn(model(xb).squeeze(1), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        weights = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
        everyone = COMM.allgather(weights)
        assert all(np.array_equal(w, everyone[0]) for w in everyone), "weights differ across ranks"
        with torch.no_grad():
            acc = ((model(torch.from_numpy(x)).squeeze(1) > 0).float().numpy() == y).mean()
        assert acc > 0.95, acc
        assert pg.size == SIZE
    ctx.end_task(None)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results: Dict[str, Dict[str, Any]] = {}
    for name in args.cases.split(","):
        start = time.perf_counter()
        faulthandler.dump_traceback_later(CASE_TIMEOUT, exit=True)
        ctx = new_ctx(name)
        try:
            CASES[name](ctx)
            mine = ""
        except Exception as exc:  # noqa: BLE001
            mine = f"rank {RANK}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            try:
                ctx.end_task(exc)
            except Exception:  # noqa: BLE001
                pass
        faulthandler.cancel_dump_traceback_later()
        errors = [e for e in COMM.allgather(mine) if e]
        results[name] = {"ok": not errors, "error": "\n".join(errors), "seconds": round(time.perf_counter() - start, 2)}
        if RANK == 0:
            print(f"{SIZE} ranks: {name}: {'ok' if not errors else 'FAILED'} ({results[name]['seconds']} s)",
                  flush=True)
            with open(args.out, "w") as fh:
                json.dump(results, fh, indent=1)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
