"""Cold pilot start with no route off the machine: a network namespace with only loopback, against the host's.

A compute node with no route out is where stock Radical Pilot's bootstrap
pays for its NTP look-up and ping of a public host (``dig 0.pool.ntp.org``,
``ping``) on every pilot start; this project's RP (``runtime/rp_adjust/``)
makes neither.  Each cold start (``parsl.load`` to the first result of a
2-rank task, then shutdown, as :func:`overhead.run_cycle` measures it) runs in
a fresh Python process, either as is or inside ``unshare -n`` with ``lo`` up
(root only), alternating so both sides see the same background load; with
``--rp both`` stock RP (``RCYLON_RP_STOCK=1``) is measured the same way.

    sudo python benchmarks/netns_start.py --out benchmarks/results [--repeats 3] [--rp both]

Writes ``netns_start.json`` (every start, and medians by configuration) and
``netns_start.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = "NETNS_START_RESULT "
HERE = Path(__file__).resolve().parent


def _progress(msg: str) -> None:
    print(f"[netns_start] {msg}", flush=True)


def one(run_dir: str, rp: str, ranks: int) -> None:
    """Child: one cold start and shutdown; print its figures after :data:`MARK`."""
    sys.path.insert(0, str(HERE))
    from overhead import run_cycle

    out = run_cycle(run_dir, calls=0, throughput_tasks=0, baseline_script="", measure_tasks=False,
                    ranks=ranks, rp=rp)
    print(MARK + json.dumps(out), flush=True)


def start(run_dir: str, rp: str, ranks: int, netns: bool, timeout: float) -> dict:
    """Parent: run :func:`one` in a process of its own, inside a loopback-only namespace if ``netns``."""
    child = [sys.executable, str(Path(__file__).resolve()), "--one", run_dir, "--rp", rp, "--ranks", str(ranks)]
    if netns:
        script = 'ip link set lo up && exec "$@"'
        child = ["unshare", "--net", "--", "sh", "-c", script, "sh"] + child
    t0 = time.perf_counter()
    try:
        done = subprocess.run(child, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        return {"netns": netns, "rp": rp, "ok": False, "wall_s": timeout, "error": f"timed out: {err}"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MARK)]
    if done.returncode != 0 or not lines:
        return {"netns": netns, "rp": rp, "ok": False, "wall_s": wall,
                "error": (done.stdout + done.stderr)[-3000:]}
    return {"netns": netns, "rp": rp, "ok": True, "wall_s": wall, **json.loads(lines[-1][len(MARK):])}


def summarize(starts: list) -> dict:
    med = statistics.median
    out = {}
    for rp in sorted({s["rp"] for s in starts}):
        for netns in (False, True):
            ok = [s for s in starts if s["rp"] == rp and s["netns"] == netns and s["ok"]]
            key = f"{rp}_{'loopback_only' if netns else 'host_network'}"
            out[key] = {"starts": len(ok), "failed": sum(1 for s in starts if s["rp"] == rp and s["netns"] == netns
                                                         and not s["ok"])}
            if ok:
                out[key].update({
                    "first_result_s": med([s["first_result_s"] for s in ok]),
                    "first_result_min_max_s": [min(s["first_result_s"] for s in ok),
                                               max(s["first_result_s"] for s in ok)],
                    "bootstrap_s": med([s["breakdown_s"].get("bootstrap", float("nan")) for s in ok]),
                    "shutdown_s": med([s["shutdown_s"] for s in ok if s["shutdown_s"] is not None] or [float("nan")]),
                })
        inside, outside = out[f"{rp}_loopback_only"], out[f"{rp}_host_network"]
        if "first_result_s" in inside and "first_result_s" in outside:
            out[f"{rp}_ratio_loopback_only_to_host"] = inside["first_result_s"] / outside["first_result_s"]
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = [s for s in result["starts"] if s["ok"]]
    configs = sorted({(s["rp"], s["netns"]) for s in starts})
    fig, ax = plt.subplots(figsize=(7, 4))
    data = [[s["first_result_s"] for s in starts if (s["rp"], s["netns"]) == c] for c in configs]
    ax.boxplot(data)
    ax.set_xticks(range(1, len(configs) + 1),
                  [f"{rp} RP\n{'loopback only' if ns else 'host network'}" for rp, ns in configs])
    ax.set_ylabel("seconds, parsl.load to first 2-rank result")
    ax.set_title("cold pilot start with and without a route off the machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(out: Path, args: argparse.Namespace, starts: list) -> dict:
    """Write ``netns_start.json`` with the starts so far; return it."""
    try:
        import ntplib  # noqa: F401  (radical.utils syncs its clock over NTP when it is installed)
        has_ntplib = True
    except ImportError:
        has_ntplib = False
    result = {
        "benchmark": "netns_start",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg": os.getloadavg(),
                    # what stock RP's bootstrap would run: absent tools fail at once instead of waiting
                    "dig": shutil.which("dig"), "ping": shutil.which("ping"), "ntplib": has_ntplib},
        "ranks": args.ranks,
        "summary": summarize(starts),
        "starts": starts,
    }
    (out / "netns_start.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--repeats", type=int, default=3, help="cold starts per configuration")
    parser.add_argument("--ranks", type=int, default=2, help="worker ranks")
    parser.add_argument("--rp", choices=["adjusted", "stock", "both"], default="adjusted",
                        help="Radical Pilot as runtime/rp_adjust/ adjusts it, stock, or both")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one start may take")
    parser.add_argument("--one", metavar="RUN_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.rp, args.ranks)
        return
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        sys.exit("netns_start: needs root, unshare(1) and ip(8) to make a loopback-only network namespace")
    rps = ["adjusted", "stock"] if args.rp == "both" else [args.rp]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    starts: list = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for rp in rps:
                for netns in (False, True):
                    s = start(os.path.join(tmp, f"run{i}-{rp}-{int(netns)}"), rp, args.ranks, netns, args.timeout)
                    starts.append(s)
                    _progress(f"repeat {i + 1}/{args.repeats}, rp={rp}, "
                              f"{'loopback only' if netns else 'host network'}: "
                              + (f"first result {s['first_result_s']:.2f} s" if s["ok"] else "FAILED"))
                    result = write(out, args, starts)  # after every start: an interrupted run keeps its figures
    plot(result, out / "netns_start.png")
    print(json.dumps(result["summary"], indent=2))
    failed = [s for s in starts if not s["ok"]]
    if failed:
        print(failed[0]["error"], file=sys.stderr)


if __name__ == "__main__":
    main()
