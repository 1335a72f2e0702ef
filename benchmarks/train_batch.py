"""The preprocess-train pipeline as separate batch jobs, the baseline of benchmarks/train.py.

    mpiexec -n 2 python benchmarks/train_batch.py prepare --work DIR [--sample N]
    torchrun --nproc-per-node 2 benchmarks/train_batch.py train --work DIR [--epochs E]
    mpiexec -n 2 python benchmarks/train_batch.py score --work DIR
    python benchmarks/train_batch.py evaluate --work DIR

The same stage functions as workflows/preprocess_train.py
(workflows/flight_features.py), each job starting cold: a new launch, new
Python processes, new imports, Parquet files between jobs.  Under
``torchrun`` there is no MPI: the context's few object collectives go
through torch.distributed instead, and the training rows are read already
balanced.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workflows import flight_features as ff  # noqa: E402


def _write(ctx: Any, table: Any, directory: str) -> None:
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    pq.write_table(table, os.path.join(directory, f"part-{ctx.rank:03d}.parquet"))


def _mpi_ctx(work: str) -> Any:
    from mpi4py import MPI

    from parsl_rcylon.context import CylonContext

    return CylonContext(MPI.COMM_WORLD, task_id="batch", name="batch", data_dir=os.path.join(work, "data"))


def prepare(args: argparse.Namespace) -> None:
    import pyarrow.csv as csv

    from parsl_rcylon.table import share_bounds

    ctx = _mpi_ctx(args.work)
    flights = ff.read_flights(ctx, scale=args.scale, sample=args.sample)
    small = []
    for name in ("weather.csv", "planes.csv"):
        table = csv.read_csv(ff.data_file(name), convert_options=csv.ConvertOptions(null_values=["NA", ""]))
        lo, hi = share_bounds(table.num_rows, ctx.rank, ctx.size)
        small.append(table.slice(lo, hi - lo))
    _write(ctx, ff.prepare(ctx, flights, *small), os.path.join(args.work, "prepared"))


class _TorchComm:
    """The object collectives the training stage needs, over torch.distributed (no MPI under torchrun)."""

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's names
        import torch.distributed as dist

        return dist.get_rank()

    def Get_size(self) -> int:  # noqa: N802
        import torch.distributed as dist

        return dist.get_world_size()

    def allgather(self, value: Any) -> List[Any]:
        import torch.distributed as dist

        out: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out

    def bcast(self, value: Any, root: int = 0) -> Any:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=root)
        return box[0]


class _Group:
    """torchrun's group, as the stage's ``with ctx.torch_process_group() as pg`` expects it."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.size = dist.get_world_size()
        self.backend = dist.get_backend()

    def __enter__(self) -> _Group:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def train(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from parsl_rcylon.context import CylonContext
    from parsl_rcylon.table import TableRef, share_bounds

    dist.init_process_group("gloo")

    class TorchrunContext(CylonContext):
        def read(self, ref, columns=None, filter=None):  # the training rows, balanced over the ranks
            rows = ref.read(columns=columns, filter=filter)
            lo, hi = share_bounds(rows.num_rows, self.rank, self.size)
            return rows.slice(lo, hi - lo)

        def rebalance(self, table):
            return table

        def torch_process_group(self, backend=None, timeout=None):
            return _Group()

    ctx = TorchrunContext(_TorchComm(), task_id="batch", name="batch", data_dir=os.path.join(args.work, "data"))
    ref = ff.train(ctx, TableRef.from_parquet(os.path.join(args.work, "prepared")), epochs=args.epochs)
    if ctx.rank == 0:
        Path(args.work, "model.txt").write_text(ref.path)
    dist.destroy_process_group()


def score(args: argparse.Namespace) -> None:
    from parsl_rcylon.table import TableRef
    from parsl_rcylon.training import ModelRef

    ctx = _mpi_ctx(args.work)
    model = ModelRef.open(Path(args.work, "model.txt").read_text())
    scores = ff.score(ctx, model, TableRef.from_parquet(os.path.join(args.work, "prepared")))
    _write(ctx, scores, os.path.join(args.work, "scores"))


def evaluate(args: argparse.Namespace) -> None:
    import json

    from parsl_rcylon.table import TableRef
    from parsl_rcylon.training import ModelRef

    model = ModelRef.open(Path(args.work, "model.txt").read_text())
    metrics = ff.evaluate(TableRef.from_parquet(os.path.join(args.work, "scores")), model,
                          os.path.join(args.work, "eval"))
    print(json.dumps({"model": metrics["model"], "baseline": metrics["baseline"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["prepare", "train", "score", "evaluate"])
    parser.add_argument("--work", required=True)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--sample", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    {"prepare": prepare, "train": train, "score": score, "evaluate": evaluate}[args.stage](args)


if __name__ == "__main__":
    main()
