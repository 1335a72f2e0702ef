"""GPU check for a machine with NVIDIA GPUs: a 2-pool executor, a GPU task beside a CPU task, DDP with nccl.

Run where GPUs exist (not in CI):

    python benchmarks/gpu_check.py --out DIR

The GPU task must see exactly one device (``CUDA_VISIBLE_DEVICES`` and
``ctx.gpu_ids``) and compute on it with torch or cupy, whichever is
installed; the CPU task runs at the same time and sees no GPU.  With torch,
a DDP task (``ctx.torch_process_group()``, which picks nccl on a rank with
GPUs) trains a few steps on batches from ``ctx.torch_loader(device="cuda")``
on as many GPU ranks as the machine has GPUs (up to 2): each rank on its own
device, identical weights on every rank afterwards.  Writes ``gpu_check.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import parsl

from parsl_rcylon import RadicalCylonExecutor, WorkerPool, cylon_app


@cylon_app(ranks=1, gpus_per_rank=1)
def on_gpu(ctx, n):
    import os
    import time

    t0 = time.time()
    info = {"gpu_ids": list(ctx.gpu_ids), "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        import torch

        a = torch.randn(n, n, device="cuda")
        info.update(lib="torch", devices=torch.cuda.device_count(), name=torch.cuda.get_device_name(0),
                    checksum=float((a @ a).sum().item()))
    except ImportError:
        import cupy

        a = cupy.random.standard_normal((n, n))
        info.update(lib="cupy", devices=cupy.cuda.runtime.getDeviceCount(), checksum=float((a @ a).sum()))
    info.update(start=t0, end=time.time())
    return info


@cylon_app(ranks=2)
def on_cpu(ctx, seconds):
    import os
    import time

    t0 = time.time()
    time.sleep(seconds)
    return {"size": ctx.size, "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": t0, "end": time.time()}


@cylon_app(ranks=2, gpus_per_rank=1, pool="gpu")
def ddp_nccl(ctx, steps):
    import os

    import numpy as np
    import pyarrow as pa
    import torch
    import torch.distributed as dist

    rng = np.random.default_rng([0, ctx.rank])
    x = rng.normal(size=(4096, 16)).astype(np.float32)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(16)}, "y": (x.sum(axis=1) > 0).astype(np.float32)})
    with ctx.torch_process_group() as pg:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 1).to(pg.device))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = ctx.torch_loader(table, features=[f"f{i}" for i in range(16)], label="y", batch_size=256,
                                  device=pg.device)
        done = 0
        while done < steps:
            for xb, yb in loader:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb).squeeze(1), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                done += 1
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        copies = [torch.empty_like(weights) for _ in range(pg.size)]
        dist.all_gather(copies, weights)
        return {"backend": pg.backend, "device": str(pg.device), "size": pg.size, "gpu_ids": list(ctx.gpu_ids),
                "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "devices": torch.cuda.device_count(),
                "same_weights": all(torch.equal(c, weights) for c in copies), "steps": done,
                "batch_on": str(xb.device), "loader": loader.stats()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--n", type=int, default=8192)
    args = parser.parse_args()
    ex = RadicalCylonExecutor(label="gpucheck", pools=[WorkerPool(name="cpu", ranks=2),
                                                      WorkerPool(name="gpu", ranks=2, gpus_per_rank=1)])
    with tempfile.TemporaryDirectory() as tmp, \
            parsl.load(parsl.Config(executors=[ex], run_dir=tmp, strategy="none", initialize_logging=False)):
        cpu = on_cpu(5.0)
        gpus = [on_gpu(args.n), on_gpu(args.n)]
        result = {"gpu": [g.result() for g in gpus], "cpu": cpu.result(), "status": ex.status()}
        ddp = None
        if result["gpu"][0]["lib"] == "torch":
            ranks = min(2, _gpu_count())
            ddp = ddp_nccl(50, parsl_resource_specification={"ranks": ranks}).result()
            result["ddp"] = ddp
    checks = {
        "one_device_each": all(g["devices"] == 1 for g in result["gpu"]),
        "distinct_devices": len({g["cuda_visible"] for g in result["gpu"]}) == 2,
        "cpu_sees_no_gpu": result["cpu"]["cuda_visible"] == "",
        "gpu_overlaps_cpu": max(g["start"] for g in result["gpu"]) < result["cpu"]["end"],
    }
    if ddp is not None:
        checks.update(ddp_nccl=ddp["backend"] == "nccl" and ddp["device"] == "cuda:0" and ddp["devices"] == 1,
                      ddp_same_weights=ddp["same_weights"], ddp_batches_on_gpu=ddp["batch_on"] == "cuda:0")
    result.update(checks=checks, when=time.strftime("%Y-%m-%dT%H:%M:%S%z"), host=os.uname().nodename)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(checks, indent=2))
    if not all(checks.values()):
        raise SystemExit("GPU check failed: " + ", ".join(k for k, v in checks.items() if not v))


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":
    main()
