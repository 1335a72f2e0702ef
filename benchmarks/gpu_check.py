"""GPU check for a machine with NVIDIA GPUs: a 2-pool executor, a GPU task beside a CPU task.

Run where GPUs exist (not in CI):

    python benchmarks/gpu_check.py --out DIR

The GPU task must see exactly one device (``CUDA_VISIBLE_DEVICES`` and
``ctx.gpu_ids``) and compute on it with torch or cupy, whichever is
installed; the CPU task runs at the same time and sees no GPU.  Writes
``gpu_check.json``.
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
    checks = {
        "one_device_each": all(g["devices"] == 1 for g in result["gpu"]),
        "distinct_devices": len({g["cuda_visible"] for g in result["gpu"]}) == 2,
        "cpu_sees_no_gpu": result["cpu"]["cuda_visible"] == "",
        "gpu_overlaps_cpu": max(g["start"] for g in result["gpu"]) < result["cpu"]["end"],
    }
    result.update(checks=checks, when=time.strftime("%Y-%m-%dT%H:%M:%S%z"), host=os.uname().nodename)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(checks, indent=2))
    if not all(checks.values()):
        raise SystemExit("GPU check failed: " + ", ".join(k for k, v in checks.items() if not v))


if __name__ == "__main__":
    main()
