"""benchmarks/scale.py in its quick mode: the simulation drives the real Placement to the end, and the real
dispatcher runs tasks on fake ranks.

Speed is the benchmark's business (its JSON and plot); here only that it runs,
every accepted task starts, and its figures are sane.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", ROOT / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_scale_benchmark_runs_and_reports(tmp_path):
    result = _scale().main(["--quick", "--out", str(tmp_path), "--no-plot"])
    assert json.loads((tmp_path / "scale-quick.json").read_text())["quick"] is True
    for sim in result["simulations"]:
        for run in (sim["ours"], sim["first_fit"]):
            assert run["complete"] and run["started"] == run["tasks"] - run["refused"] > 0
            assert 0 < run["utilisation"] <= run["bound"] + 1e-9 <= 1 + 1e-9
    q = result["deep_queue"]
    assert q["complete"] and q["events"] > 0 and q["pass_ms_median"] > 0
    for stream in result["streams"]:
        assert stream["ours"]["big_tasks"] > 0
    assert result["memory"]["bytes_per_queued_task"] > 0
    costs = result["messages"]
    assert set(costs["start_task_ms"]) == set(costs["start_task_ms_encoded_per_rank"]) == {"1", "64", "1024"}
    assert costs["heartbeat_answer_us"] > 0
    guarded = result["deep_queue_heap_guard"]
    assert guarded["complete"] and guarded["heap_guard"] and guarded["events"] == q["events"]
    # the real dispatcher with fake ranks: a burst of 2,000 submissions (over the wake-up socket's
    # high-water mark of 1,000) all start on the fake ranks and complete
    (load,) = result["dispatch_load"]
    assert load["ranks"] == 64 and load["tasks"] == 2000 and load["tasks_per_s"] > 0
    assert len(load["bursts"]) == 3 and all(b["tasks_per_s"] > 0 for b in load["bursts"])
    # liveness by host: every fake host's leader registered over its own connection, its followers directly
    live = result["liveness"]
    assert live["leaders"] == 16 and live["ranks"] == 16 * 56 and live["idle_client_cpu_core_fraction"] >= 0
    assert result["targets"]["liveness_core_fraction"]["ranks"] == 16 * 56
