"""Training-stage benchmark: the loader, DDP in a cylon_app against torchrun, start-up, the whole pipeline.

    python benchmarks/train.py --out benchmarks/results [--quick]

Side by side in one run, results in OUT/train.json, OUT/train.md and OUT/train.png:

* Loader: one epoch of 8 float32 columns (32-byte rows) through
  ``ctx.torch_loader`` with the block shuffle, as a fraction of a plain
  memcpy of the same bytes measured in the same process; fully random row
  order (``block_size=1``) in rows/s; ``to_pandas().to_numpy()`` for scale;
  Ray Data's ``iter_torch_batches`` where ``ray`` is installed.
* DDP step time of the same loop (benchmarks/train_ddp.py) inside a
  ``cylon_app`` and under ``torchrun``, 2 ranks, gloo, one thread per rank.
* Submission to the end of the first DDP step on warm ranks, against
  ``torchrun`` launched cold.
* workflows/preprocess_train.py on the pilot against the same stages as
  batch jobs (benchmarks/train_batch.py: ``mpiexec`` for the data stages,
  ``torchrun`` for training).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import parsl  # noqa: E402

from parsl_rcylon import RadicalCylonExecutor, cylon_app  # noqa: E402

BIN = Path(sys.executable).parent
TARGETS = {"loader_memcpy_fraction_min": 0.5, "random_rows_per_s_min": 5e6, "ddp_overhead_pct_max": 5.0,
           "first_step_s_max": 0.5}


@cylon_app(ranks=2)
def ddp_app(ctx, steps: int):
    from benchmarks.train_ddp import ddp_steps

    with ctx.torch_process_group():
        return ddp_steps(steps=steps)


@cylon_app(ranks=2)
def first_step_app(ctx):
    from benchmarks.train_ddp import ddp_steps

    with ctx.torch_process_group():
        return ddp_steps(steps=1, warmup=0)["first_step_end"]


def _epoch_rate(loader: Any) -> float:
    t0 = time.perf_counter()
    rows = 0
    for x in loader:
        rows += x.shape[0]
    return rows / (time.perf_counter() - t0)


def loader_bench(rows: int, batch: int, repeats: int) -> Dict[str, Any]:
    """Loader rates on one rank, against memcpy of the same matrix in the same process."""
    from mpi4py import MPI

    from parsl_rcylon.context import CylonContext

    ctx = CylonContext(MPI.COMM_SELF, task_id="bench", name="bench")
    rng = np.random.default_rng(0)
    table = pa.table({f"c{i}": rng.random(rows, dtype=np.float32) for i in range(8)})
    features = table.column_names
    nbytes = rows * 32
    src = np.ascontiguousarray(np.stack([table[c].to_numpy() for c in features], axis=1))
    dst = np.empty_like(src)
    np.copyto(dst, src)
    memcpy = max(nbytes / _timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    out: Dict[str, Any] = {"rows": rows, "row_bytes": 32, "batch": batch, "memcpy_gbps": memcpy / 1e9}
    large = 65536
    configs = (("block", {"prefetch": 0}), ("block_prefetch", {}),
               ("block_large", {"prefetch": 0, "batch_size": large}), ("block_large_prefetch", {"batch_size": large}),
               ("random", {"block_size": 1, "prefetch": 0}),
               ("ordered", {"shuffle": None, "prefetch": 0}))
    for name, kwargs in configs:
        kwargs = {"batch_size": batch, **kwargs}
        loader = ctx.torch_loader(table, features=features, **kwargs)
        rate = max(_epoch_rate(loader) for _ in range(repeats))
        out[name] = {"rows_per_s": rate, "gbps": rate * 32 / 1e9, "memcpy_fraction": rate * 32 / memcpy,
                     "block_size": loader.block_size, "batch": kwargs["batch_size"], "prefetch": loader.prefetch,
                     "prepare_s": loader.prepare_seconds}
    pandas_s = min(_timed(lambda: table.to_pandas().to_numpy()) for _ in range(repeats))
    out["pandas_to_numpy_gbps"] = nbytes / pandas_s / 1e9
    out["ray"] = ray_bench(table, batch)
    return out


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ray_bench(table: pa.Table, batch: int) -> Dict[str, Any]:
    try:
        import ray
    except ImportError:
        return {"skipped": "ray is not installed (optional; not in this project's extras)"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.from_arrow(table)
        t0 = time.perf_counter()
        rows = sum(len(b["c0"]) for b in ds.iter_torch_batches(batch_size=batch, local_shuffle_buffer_size=batch * 4))
        return {"rows_per_s": rows / (time.perf_counter() - t0), "version": ray.__version__}
    finally:
        ray.shutdown()


def torchrun(args: List[str], env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "torchrun"), "--nproc-per-node", "2", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=True)


def ddp_compare(steps: int, repeats: int, tmp: str) -> Dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cylon, batch, bare = [], [], []
    for i in range(repeats):  # alternating, so drifts of the machine's load hit all three
        cylon.append(ddp_app(steps).result())
        out = os.path.join(tmp, f"ddp-{i}.json")
        torchrun(["benchmarks/train_ddp.py", "--out", out, "--steps", str(steps)], env)
        batch.append(json.loads(Path(out).read_text()))
        out = os.path.join(tmp, f"ddp-mpi-{i}.json")
        subprocess.run([str(BIN / "mpiexec"), "-n", "2", sys.executable, "benchmarks/train_ddp.py", "--mpi", "--out",
                        out, "--steps", str(steps)], cwd=ROOT, env=env, capture_output=True, timeout=600, check=True)
        bare.append(json.loads(Path(out).read_text()))
    c = statistics.median(r["step_ms_median"] for r in cylon)
    t = statistics.median(r["step_ms_median"] for r in batch)
    m = statistics.median(r["step_ms_median"] for r in bare)
    return {"steps": steps, "repeats": repeats, "cylon_step_ms": c, "torchrun_step_ms": t, "mpiexec_step_ms": m,
            "overhead_pct": (c - t) / t * 100, "mpiexec_overhead_pct": (m - t) / t * 100,
            "cylon_runs": cylon, "torchrun_runs": batch, "mpiexec_runs": bare}


def first_step(repeats: int, tmp: str) -> Dict[str, Any]:
    first_step_app().result()  # torch imported on the ranks: they are warm from here on
    warm = []
    for _ in range(repeats):
        t0 = time.time()
        end = first_step_app().result()
        warm.append(end - t0)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cold = []
    for i in range(min(repeats, 3)):
        out = os.path.join(tmp, f"first-{i}.json")
        t0 = time.time()
        torchrun(["benchmarks/train_ddp.py", "--out", out, "--steps", "1", "--warmup", "0"], env)
        cold.append(json.loads(Path(out).read_text())["first_step_end"] - t0)
    return {"warm_s": statistics.median(warm), "warm_runs": warm, "torchrun_cold_s": statistics.median(cold),
            "torchrun_runs": cold}


def pipeline_compare(sample: int, epochs: int, tmp: str) -> Dict[str, Any]:
    from workflows.preprocess_train import run_pipeline

    metrics = run_pipeline(os.path.join(tmp, "pipeline"), sample=sample, epochs=epochs)
    work = os.path.join(tmp, "batch")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    common = ["--work", work, "--sample", str(sample)]
    stages = [
        ("prepare (mpiexec -n 2)", [str(BIN / "mpiexec"), "-n", "2", sys.executable, "benchmarks/train_batch.py",
                                    "prepare", *common]),
        ("train (torchrun, 2 ranks)", [str(BIN / "torchrun"), "--nproc-per-node", "2", "benchmarks/train_batch.py",
                                       "train", *common, "--epochs", str(epochs)]),
        ("score (mpiexec -n 2)", [str(BIN / "mpiexec"), "-n", "2", sys.executable, "benchmarks/train_batch.py",
                                  "score", *common]),
        ("evaluate (python)", [sys.executable, "benchmarks/train_batch.py", "evaluate", *common]),
    ]
    times = {}
    for name, cmd in stages:
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=True)
        times[name] = time.perf_counter() - t0
    batch_total = sum(times.values())
    return {"sample": sample, "epochs": epochs, "rows": metrics["rows_prepared"],
            "pipeline_s": metrics["pipeline_seconds"], "batch_s": batch_total, "batch_stages_s": times,
            "speedup": batch_total / metrics["pipeline_seconds"], "auc": metrics["model"]["auc"],
            "log_loss": metrics["model"]["log_loss"], "baseline_log_loss": metrics["baseline"]["log_loss"]}


def markdown(r: Dict[str, Any]) -> str:
    ld, dd, fs, pp = r["loader"], r["ddp"], r["first_step"], r["pipeline"]
    ok = r["targets_met"]

    def verdict(key: str) -> str:
        return "met" if ok[key] else "**missed**"

    ray = ld["ray"]
    ray_line = (f"| Ray Data `iter_torch_batches` (local shuffle buffer) | {ray['rows_per_s'] / 1e6:.1f} M rows/s | | |"
                if "rows_per_s" in ray else f"| Ray Data | not measured: {ray['skipped']} | | |")
    lines = [
        "# Training stages: benchmark",
        "",
        f"{r['when']}, {r['machine']['cpus']} cores, Python {r['machine']['python']}, torch {r['machine']['torch']}; "
        f"load average {r['machine']['loadavg_before']:.1f} before, {r['machine']['loadavg_after']:.1f} after. "
        f"{'`--quick` run. ' if r['quick'] else ''}Whole run {r['elapsed_s']:.0f} s.",
        "",
        "| measure | result | target | verdict |",
        "|---|---|---|---|",
        f"| loader, block shuffle, {ld['rows']:,} rows x 32 B, batch {ld['batch']} "
        f"(block {ld['block']['block_size']}), gather in the training thread "
        f"| {ld['block']['gbps']:.2f} GB/s = **{ld['block']['memcpy_fraction']:.2f}** "
        f"of memcpy ({ld['memcpy_gbps']:.2f} GB/s) | >= 0.5 | {verdict('loader')} |",
        f"| same, prefetch thread (2 batches ahead) | {ld['block_prefetch']['memcpy_fraction']:.2f} of memcpy | | |",
        f"| same, batch 65536 | {ld['block_large']['memcpy_fraction']:.2f} of memcpy "
        f"(prefetch thread: {ld['block_large_prefetch']['memcpy_fraction']:.2f}) | | |",
        f"| loader, stored order (views, no copy) | {ld['ordered']['rows_per_s'] / 1e6:.0f} M rows/s | | |",
        f"| loader, fully random order (block_size=1) | **{ld['random']['rows_per_s'] / 1e6:.1f} M rows/s** "
        f"| >= 5 M rows/s | {verdict('random')} |",
        f"| `to_pandas().to_numpy()` of the same table | {ld['pandas_to_numpy_gbps']:.2f} GB/s | | |",
        ray_line,
        f"| DDP step, cylon_app vs torchrun (2 ranks, gloo, median of {dd['repeats']} runs of {dd['steps']} steps) "
        f"| {dd['cylon_step_ms']:.2f} ms vs {dd['torchrun_step_ms']:.2f} ms: **{dd['overhead_pct']:+.1f}%** "
        f"| within 5% | {verdict('ddp')} |",
        f"| same loop, group from `ctx.torch_process_group()` under plain `mpiexec` (no pilot) "
        f"| {dd['mpiexec_step_ms']:.2f} ms: {dd['mpiexec_overhead_pct']:+.1f}% | | |",
        f"| submission to end of first DDP step, warm ranks (median of {len(fs['warm_runs'])}) "
        f"| **{fs['warm_s']:.3f} s** (torchrun cold: {fs['torchrun_cold_s']:.1f} s) | <= 0.5 s "
        f"| {verdict('first_step')} |",
        f"| preprocess + train + score + evaluate, {pp['rows']:,} flights, {pp['epochs']} epochs "
        f"| pilot {pp['pipeline_s']:.1f} s vs batch jobs {pp['batch_s']:.1f} s: **{pp['speedup']:.2f}x** "
        "| reported | |",
        "",
        "Batch stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in pp["batch_stages_s"].items()) + ". "
        f"Pilot start-up ({r['pilot_start_s']:.1f} s, once per workflow) is not in the pipeline time. "
        f"Model on the test period: AUC {pp['auc']:.3f}, log loss {pp['log_loss']:.4f} "
        f"(baseline {pp['baseline_log_loss']:.4f}).",
        "",
    ]
    return "\n".join(lines)


def plot(r: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ld, dd, fs, pp = r["loader"], r["ddp"], r["first_step"], r["pipeline"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    names = ["memcpy", "block 8K", "8K, thread", "block 64K", "64K, thread", "random", "pandas"]
    values = [ld["memcpy_gbps"], ld["block"]["gbps"], ld["block_prefetch"]["gbps"], ld["block_large"]["gbps"],
              ld["block_large_prefetch"]["gbps"], ld["random"]["gbps"], ld["pandas_to_numpy_gbps"]]
    axes[0].bar(names, values, color=["grey", "C0", "C0", "C0", "C0", "C1", "C2"])
    axes[0].set(ylabel="GB/s", title="Loader, 32-byte rows")
    axes[1].bar(["cylon_app", "torchrun"], [dd["cylon_step_ms"], dd["torchrun_step_ms"]], color=["C0", "C3"])
    axes[1].set(ylabel="ms per step", title="DDP step, 2 ranks, gloo")
    axes[2].bar(["warm ranks", "torchrun cold"], [fs["warm_s"], fs["torchrun_cold_s"]], color=["C0", "C3"])
    axes[2].set(ylabel="s", title="Submission to first DDP step")
    axes[3].bar(["pilot", "batch jobs"], [pp["pipeline_s"], pp["batch_s"]], color=["C0", "C3"])
    axes[3].set(ylabel="s", title=f"Pipeline ({pp['speedup']:.2f}x)")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (a smoke run)")
    args = parser.parse_args()
    import torch

    t_all = time.time()
    quick = args.quick
    result: Dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M"), "quick": quick, "targets": TARGETS,
                              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "torch": torch.__version__, "loadavg_before": os.getloadavg()[0]}}
    result["loader"] = loader_bench(rows=1_000_000 if quick else 8_000_000, batch=8192, repeats=2 if quick else 3)
    print(json.dumps({k: v for k, v in result["loader"].items() if k != "ray"}, indent=1), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        ex = RadicalCylonExecutor(label="train-bench", worker_ranks=4)
        with parsl.load(parsl.Config(executors=[ex], run_dir=os.path.join(tmp, "runinfo"), strategy="none",
                                     initialize_logging=False)):
            result["pilot_start_s"] = time.time() - t0
            result["first_step"] = first_step(repeats=3 if quick else 7, tmp=tmp)
            print(json.dumps(result["first_step"]), flush=True)
            result["ddp"] = ddp_compare(steps=100 if quick else 300, repeats=1 if quick else 3, tmp=tmp)
            print({k: result["ddp"][k] for k in ("cylon_step_ms", "torchrun_step_ms", "overhead_pct")}, flush=True)
            result["pipeline"] = pipeline_compare(sample=3 if quick else 1, epochs=2 if quick else 4, tmp=tmp)
            print({k: v for k, v in result["pipeline"].items()}, flush=True)
    ld = result["loader"]
    result["targets_met"] = {
        "loader": ld["block"]["memcpy_fraction"] >= TARGETS["loader_memcpy_fraction_min"],
        "random": ld["random"]["rows_per_s"] >= TARGETS["random_rows_per_s_min"],
        "ddp": abs(result["ddp"]["overhead_pct"]) <= TARGETS["ddp_overhead_pct_max"],
        "first_step": result["first_step"]["warm_s"] <= TARGETS["first_step_s_max"],
    }
    result["machine"]["loadavg_after"] = os.getloadavg()[0]
    result["elapsed_s"] = time.time() - t_all
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "train-quick" if quick else "train"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (out / f"{stem}.md").write_text(markdown(result))
    plot(result, out / f"{stem}.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
