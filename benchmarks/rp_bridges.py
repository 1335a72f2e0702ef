"""Radical Pilot's ZeroMQ bridges, stock and as ``runtime/rp_adjust/`` adjusts them, side by side.

Each round starts one process per mode holding a queue bridge, a pubsub
bridge and a getter with a callback (as RP's components hold them), then
measures: put-to-callback latency of single messages, the time to pass a
burst of 3000 messages, and, idle, the wake-ups per second (voluntary context
switches of all threads) and the cores used.  No pilot is started.

    python benchmarks/rp_bridges.py --out benchmarks/results [--rounds 3] [--idle 5]

Writes ``rp_bridges.json`` and ``rp_bridges.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parsl_rcylon.runtime import rp_adjust

PROBE = """
import json, sys, time, radical.utils as ru
path = sys.argv[1]
q = ru.zmq.Queue(channel="b_q", cfg={"uid": "b_q", "path": path}); q.start()
ps = ru.zmq.PubSub(channel="b_ps", cfg={"uid": "b_ps", "path": path}); ps.start()
got = []
g = ru.zmq.Getter("b_q", url=q.addr_get, cb=lambda msgs: got.append((time.time(), len(msgs))))
p = ru.zmq.Putter("b_q", url=q.addr_put)
time.sleep(1)
lat = []
for i in range(30):
    n = len(got); t = time.time(); p.put({"i": i})
    while len(got) == n:
        time.sleep(0.0002)
    lat.append(got[-1][0] - t); time.sleep(0.02)
n = len(got); t = time.time()
for i in range(3000):
    p.put({"b": i})
while sum(k for _, k in got[n:]) < 3000:
    time.sleep(0.001)
print(json.dumps({"latency_s": lat, "burst_3000_s": time.time() - t}), flush=True)
time.sleep(600)
"""


def _wakeups(pid: int) -> int:
    total = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except OSError:
            pass
    return total


def _cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(mode: str, idle: float, tmp: str) -> dict:
    env = dict(os.environ)
    env.pop(rp_adjust.ENV_STOCK, None)
    if mode == "adjusted":
        env.update({rp_adjust.ENV_ADJUST: str(rp_adjust.PACKAGE_DIR), rp_adjust.ENV_BIND: rp_adjust.LOOPBACK,
                    "PYTHONPATH": os.pathsep.join([str(rp_adjust.HOOK_DIR), env.get("PYTHONPATH", "")])})
    proc = subprocess.Popen([sys.executable, "-c", PROBE, tmp], env=env, stdout=subprocess.PIPE, text=True)
    try:
        out = json.loads(proc.stdout.readline())
        time.sleep(1)
        w0, c0 = _wakeups(proc.pid), _cpu(proc.pid)
        time.sleep(idle)
        out["idle_wakeups_per_s"] = (_wakeups(proc.pid) - w0) / idle
        out["idle_cores"] = (_cpu(proc.pid) - c0) / idle
    finally:
        proc.kill()
        proc.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict = {"stock": [], "adjusted": []}
    tmp = tempfile.mkdtemp(prefix="rp_bridges.")  # the bridges' logs
    for _ in range(args.rounds):
        for mode in runs:  # interleaved, so both see the same background load
            runs[mode].append(one(mode, args.idle, tmp))
    med = statistics.median
    summary = {mode: {"latency_ms": med([x for r in rs for x in r["latency_s"]]) * 1e3,
                      "burst_3000_s": med([r["burst_3000_s"] for r in rs]),
                      "idle_wakeups_per_s": med([r["idle_wakeups_per_s"] for r in rs]),
                      "idle_cores": med([r["idle_cores"] for r in rs])} for mode, rs in runs.items()}
    result = {"benchmark": "rp_bridges", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "loadavg": os.getloadavg(), "summary": summary, "runs": runs}
    (out / "rp_bridges.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    for ax, key, label in zip(axes, ("idle_wakeups_per_s", "latency_ms", "burst_3000_s"),
                              ("idle wake-ups / s", "put -> callback, ms (median)", "3000-message burst, s"),
                              strict=True):
        ax.bar(list(summary), [summary[m][key] for m in summary], color=["grey", "tab:blue"])
        ax.set_title(label)
    fig.suptitle("one queue + one pubsub bridge and a getter: stock RP vs rp_adjust")
    fig.tight_layout()
    fig.savefig(out / "rp_bridges.png", dpi=110)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
