"""The DDP step loop benchmarks/train.py times, the same code inside a ``cylon_app`` and under ``torchrun``.

    torchrun --nproc-per-node 2 benchmarks/train_ddp.py --out result.json [--steps 200]
    mpiexec -n 2 python benchmarks/train_ddp.py --mpi --out result.json

Under ``torchrun`` it joins the group from torchrun's environment (gloo);
with ``--mpi`` (under ``mpiexec``, no pilot) through
``CylonContext.torch_process_group`` on ``COMM_WORLD``; rank 0 writes the
timings; benchmarks/train.py calls :func:`ddp_steps` in a
``cylon_app`` after ``ctx.torch_process_group()``.  One intra-op thread per
rank in both (torchrun's default with several ranks per host).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Dict


def ddp_steps(steps: int = 200, batch: int = 256, width: int = 32, hidden: int = 512,
              warmup: int = 10) -> Dict[str, Any]:
    """Time ``steps`` DDP steps of an MLP on fixed random batches; the default group must exist."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x, y = torch.randn(batch, width), torch.randn(batch, 1)
    times = []
    first_step_end = None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if i == 0:
            first_step_end = time.time()
    timed = times[warmup:]
    # The slowest rank sets the pace: report rank-averaged figures.
    stats = torch.tensor([statistics.mean(timed), statistics.median(timed)], dtype=torch.float64)
    dist.all_reduce(stats)
    stats /= dist.get_world_size()
    return {"steps": steps, "batch": batch, "width": width, "hidden": hidden, "step_ms_mean": stats[0].item() * 1e3,
            "step_ms_median": stats[1].item() * 1e3, "first_step_end": first_step_end,
            "ranks": dist.get_world_size(), "backend": dist.get_backend()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--mpi", action="store_true", help="the group from the MPI communicator (under mpiexec)")
    args = parser.parse_args()
    import torch.distributed as dist

    if args.mpi:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from mpi4py import MPI

        from parsl_rcylon.context import CylonContext

        group = CylonContext(MPI.COMM_WORLD, task_id="ddp").torch_process_group()
    else:
        dist.init_process_group("gloo")
    result = ddp_steps(steps=args.steps, warmup=args.warmup)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    if args.mpi:
        group.close()
    else:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
