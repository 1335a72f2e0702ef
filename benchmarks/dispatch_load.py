"""Load test of the real dispatcher: thousands of fake ranks over its CurveZMQ ROUTER, tasks fed directly.

The real :class:`~parsl_rcylon.runtime.client.dispatcher.Dispatcher` (its
loop, placement, rank registry, encrypted authenticated channel, liveness)
runs in this process; its ranks are fake: a few *fake host* processes, each
holding many DEALER sockets, one per rank, with the rank's own identity,
keys, ``READY``, ``ALIVE`` answers to every heartbeat and, for every
``TASK``, an immediate ``RESULT`` (rank 0's value is a serialized ``None``).
No Parsl DataFlowKernel: :meth:`Dispatcher.submit` is called directly with
prebuilt one-rank tasks, all at once, and the clock runs from the first
submission to the last future resolved.  Each fake host process holds up to
512 ranks and reports them on nodes of 56 (Frontier's cores per node) named
for it, not this host, so ranks are judged by their answers alone, as ranks on
other nodes are.

Per rank count: seconds until every rank registered; the client process's
CPU while idle with every rank heartbeating (liveness alone: the
dispatcher's heartbeats and the ranks' answers, ZeroMQ's I/O thread and
CurveZMQ included), in % of a core and microseconds per rank per second;
one-rank tasks started and completed per second, and the client's CPU per
task: the median of three bursts of ``--tasks`` each (every burst is kept).
Fake hosts share this machine's cores with the dispatcher.

    python benchmarks/dispatch_load.py [--ranks 256,1024,4096,16384] [--tasks 30000] [--out benchmarks/results]

The largest count is what this machine holds: the client keeps one connection, one open file, per rank,
and the hard limit here is 20,000 (``ulimit -Hn``); a count the limit cannot hold is refused up front.

Writes ``dispatch_load.json`` and ``dispatch_load.png``.

    python benchmarks/dispatch_load.py --liveness [--hosts 9408] [--ranks 4096] [--rates 0,1000]

measures liveness alone, idle, side by side: every rank heartbeaten (``--ranks`` fake ranks naming no
host leader), and liveness by host (:func:`run_hosts`: ``--hosts`` fake host leaders, each host's 55
other ranks registered directly) with each ``max_heartbeats_per_s`` of ``--rates``.  Writes
``liveness.json`` and ``liveness.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import zmq

TARGET_TASKS_PER_S = 10_000.0
RANKS_PER_HOST = 512  # ranks one fake host process holds (its sockets, its poll)
CORES_PER_NODE = 56  # ranks a fake node reports: a fake host process holds several such nodes


# -- a fake host: many ranks in one process ------------------------------------------------------------


def fake_host(address: str, channel_file: str, worker: str, size: int, first: int, count: int,
              host: str, stride: int = 1) -> None:
    """Ranks ``first`` .. ``first + count - 1`` of ``worker``: register, answer heartbeats and tasks.

    They report nodes of :data:`CORES_PER_NODE` ranks, named ``host-0``, ``host-1``, ...  With
    ``stride`` > 1, the ranks are ``first``, ``first + stride``, ... (``count`` of them), each the
    leader of a host of ``stride`` ranks named ``host-<rank // stride>`` (its followers are registered
    in the dispatcher directly: :func:`run_hosts`).
    """
    from parsl.serialize import serialize

    from parsl_rcylon.runtime.wire import protocol
    from parsl_rcylon.runtime.wire.channel import ClientCredentials

    credentials = ClientCredentials.load(channel_file)
    ctx = zmq.Context()
    # epoll on the sockets' signalling descriptors, not zmq.Poller: a zmq_poll over 512 sockets costs
    # ~330 us here whatever few of them are ready, and the fake hosts share the cores with the dispatcher
    ep = select.epoll()
    socks: Dict[int, zmq.Socket] = {}
    for rank in range(first, first + count * stride, stride):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, f"{worker}/{rank}".encode())
        sock.setsockopt(zmq.LINGER, 0)
        credentials.apply(sock)
        sock.connect(address)
        ready = {"token": credentials.token, "worker": worker, "rank": rank, "size": size, "pid": os.getpid(),
                 "host": f"{host}-{(rank - first) // CORES_PER_NODE}", "gpus": [], "pool": "default"}
        if stride > 1:
            ready.update(host=f"{host}-{rank // stride}", leader=rank)
        sock.send_multipart(protocol.pack(protocol.READY, ready))
        fd = sock.getsockopt(zmq.FD)
        socks[fd] = sock
        ep.register(fd, select.EPOLLIN)
    alive = protocol.pack(protocol.ALIVE)
    value = serialize(None)
    parent = os.getppid()

    def serve(sock: zmq.Socket) -> bool:
        """Answer everything waiting on ``sock``; False once it was told to stop.

        The descriptor only says that something changed: the socket's own events are read again after
        every message (a send can swallow the descriptor's signal), until nothing waits.
        """
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = sock.recv_multipart()
            kind = frames[0]
            if kind == protocol.HEARTBEAT:
                sock.send_multipart(alive)
            elif kind == protocol.TASK:  # one-rank tasks only: this rank is task rank 0
                # the uid by hand, not json.loads: the fake ranks share the machine with the dispatcher
                raw = frames[1]
                at = raw.index(b'"uid":"') + 7
                uid = raw[at:raw.index(b'"', at)]
                sock.send_multipart([protocol.RESULT, b'{"uid":"' + uid + b'","rank":0,"ok":true}', value])
            elif kind in (protocol.STOP, protocol.EXIT):
                return False
        return True

    while socks:
        events = ep.poll(1.0)
        if not events:  # a look at every socket now and then, and at whether the load test died without a STOP
            if os.getppid() != parent:
                break
            events = [(fd, select.EPOLLIN) for fd in socks]
        for fd, _ in events:
            sock = socks.get(fd)
            if sock is not None and not serve(sock):
                ep.unregister(fd)
                del socks[fd]
                sock.close()
    ctx.term()


# -- the load test ---------------------------------------------------------------------------------------


def run(ranks: int, tasks: int, idle_s: float = 10.0, heartbeat_period: float = 2.0,
        max_heartbeats_per_s: float = 1000.0, bursts: int = 3) -> Dict[str, Any]:
    """One dispatcher, ``ranks`` fake ranks in one worker; idle liveness cost, then ``bursts`` bursts of
    ``tasks`` one-rank tasks each (the median burst is reported: the machine is shared and noisy).

    The fake ranks name no host leader, so each leads itself: the per-rank path (every rank heartbeaten).
    """
    from parsl_rcylon.resources import ResourceSpec
    from parsl_rcylon.runtime.client.dispatcher import Dispatcher
    from parsl_rcylon.runtime.wire.task import Task

    _open_files_for(ranks)
    procs: List[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Dispatcher(tmp, heartbeat_period=heartbeat_period, rank_timeout=120.0,
                       max_heartbeats_per_s=max_heartbeats_per_s)
        d.start()
        try:
            d.expect_worker("w", ranks)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
            t0 = time.perf_counter()
            for k, first in enumerate(range(0, ranks, RANKS_PER_HOST)):
                count = min(RANKS_PER_HOST, ranks - first)
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--fake-host", d.address, d.channel_file, "w", str(ranks),
                     str(first), str(count), f"fake-{socket.gethostname()}-{k}"], env=env))
            failed = lambda: next((f"fake host {p.args[-1]} exited ({p.returncode})"  # noqa: E731
                                   for p in procs if p.poll() is not None), None)
            d.wait_ready(600, failed)
            ready_s = time.perf_counter() - t0
            time.sleep(heartbeat_period)  # the first heartbeats after registration
            c0, w0 = time.process_time(), time.perf_counter()
            time.sleep(idle_s)
            idle_cpu = (time.process_time() - c0) / (time.perf_counter() - w0)
            if not tasks:
                return {"ranks": ranks, "fake_hosts": len(procs), "ready_s": ready_s,
                        "idle_client_cpu_core_fraction": idle_cpu,
                        "liveness_us_per_rank_per_s": idle_cpu / ranks * 1e6}
            spec = ResourceSpec(ranks=1)
            rows = [_burst(d, [Task.build(f"b{b}-t{i}", "noop", False, {}, spec) for i in range(tasks)])
                    for b in range(bursts)]
        finally:
            try:
                d.stop()
            finally:
                _end(procs)
    median = sorted(rows, key=lambda r: r["tasks_per_s"])[len(rows) // 2]
    return {"ranks": ranks, "fake_hosts": len(procs), "tasks": tasks, "ready_s": ready_s,
            "idle_client_cpu_core_fraction": idle_cpu,
            "liveness_us_per_rank_per_s": idle_cpu / ranks * 1e6,
            "bursts": rows, "tasks_per_s": statistics.median(r["tasks_per_s"] for r in rows),
            "tasks_per_s_min": min(r["tasks_per_s"] for r in rows),
            "client_cpu_us_per_task": statistics.median(r["client_cpu_us_per_task"] for r in rows),
            "wall_s": median["wall_s"], "submit_s": median["submit_s"]}  # of the median burst


def _burst(d: Any, calls: List[Any]) -> Dict[str, Any]:
    """Submit ``calls`` at once; the clock runs from the first submission to the last future resolved."""
    tasks = len(calls)
    done = threading.Event()
    count = [0]
    lock = threading.Lock()

    def one_done(_fut) -> None:
        with lock:
            count[0] += 1
            if count[0] == tasks:
                done.set()

    c0, w0 = time.process_time(), time.perf_counter()
    futs = []
    for call in calls:
        fut = d.submit(call, b"x" * 64)
        fut.add_done_callback(one_done)
        futs.append(fut)
    fed_s = time.perf_counter() - w0
    if not done.wait(timeout=600):
        raise RuntimeError(f"only {count[0]} of {tasks} tasks completed in 600 s")
    wall = time.perf_counter() - w0
    cpu = time.process_time() - c0
    errors = [f.exception() for f in futs if f.exception() is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} tasks failed, the first with {errors[0]!r}")
    return {"submit_s": fed_s, "wall_s": wall, "tasks_per_s": tasks / wall, "client_cpu_s": cpu,
            "client_cpu_us_per_task": cpu / tasks * 1e6}


def run_hosts(hosts: int, per_host: int = CORES_PER_NODE, idle_s: float = 10.0,
              heartbeat_period: float = 2.0, max_heartbeats_per_s: float = 1000.0) -> Dict[str, Any]:
    """Liveness by host: ``hosts`` fake host leaders connected, each host's other ranks registered directly.

    The dispatcher holds ``hosts * per_host`` ranks in its registry and placement, as after every rank's
    READY; the leaders are real CurveZMQ connections that answer every heartbeat, the followers are never
    heard from (the executor does not heartbeat them).  Returns the client's idle CPU, liveness alone.
    """
    from parsl_rcylon.runtime.client.dispatcher import Dispatcher

    _open_files_for(hosts)
    procs: List[subprocess.Popen] = []
    size = hosts * per_host
    prefix = f"fake-{socket.gethostname()}"
    with tempfile.TemporaryDirectory() as tmp:
        d = Dispatcher(tmp, heartbeat_period=heartbeat_period, rank_timeout=120.0,
                       max_heartbeats_per_s=max_heartbeats_per_s)
        d.start()
        try:
            d.expect_worker("w", size)
            t0 = time.perf_counter()
            with d._lock:  # the followers, as their READYs would register them (no sockets: never heard)
                for h in range(hosts):
                    for r in range(h * per_host + 1, (h + 1) * per_host):
                        d._ranks.register(f"w/{r}".encode(), "w", r, f"{prefix}-{h}", 0, local=False,
                                          leader=h * per_host)
                        d._placement.join("w", r, f"{prefix}-{h}")
            followers_s = time.perf_counter() - t0
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
            for first in range(0, hosts, RANKS_PER_HOST):
                count = min(RANKS_PER_HOST, hosts - first)
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--fake-host", d.address, d.channel_file, "w", str(size),
                     str(first * per_host), str(count), prefix, str(per_host)], env=env))
            failed = lambda: next((f"fake host {p.args[-2]} exited ({p.returncode})"  # noqa: E731
                                   for p in procs if p.poll() is not None), None)
            d.wait_ready(900, failed)
            ready_s = time.perf_counter() - t0
            period = d.beat_period()
            time.sleep(max(2 * period, 3.0))  # the first heartbeats; the heap guard's idle collection
            c0, w0 = time.process_time(), time.perf_counter()
            time.sleep(idle_s)
            idle_cpu = (time.process_time() - c0) / (time.perf_counter() - w0)
            with d._lock:
                leaders = len(d._ranks.leaders("w"))
                registered = len(d._ranks.of("w"))
        finally:
            try:
                d.stop()
            finally:
                _end(procs)
    return {"path": "per host", "hosts": hosts, "ranks_per_host": per_host, "ranks": registered,
            "leaders": leaders, "heartbeat_period_s": heartbeat_period,
            "max_heartbeats_per_s": None if max_heartbeats_per_s == float("inf") else max_heartbeats_per_s,
            "beat_period_s": period, "fake_host_processes": len(procs),
            "followers_registered_s": followers_s, "ready_s": ready_s,
            "idle_client_cpu_core_fraction": idle_cpu, "liveness_us_per_host_per_s": idle_cpu / hosts * 1e6,
            "liveness_us_per_rank_per_s": idle_cpu / registered * 1e6}


def liveness(hosts: int, per_rank: int, rates: Sequence[float], idle_s: float) -> Dict[str, Any]:
    """Idle liveness side by side: the per-rank path at ``per_rank`` ranks, every rank heartbeaten every
    2 s as before hosts had leaders; then ``hosts`` hosts of 56 ranks with each ``max_heartbeats_per_s``
    in ``rates`` (0: no limit, every leader every 2 s)."""
    row = run(per_rank, 0, idle_s, heartbeat_period=2.0, max_heartbeats_per_s=float("inf"))
    row.update(path="per rank", heartbeat_period_s=2.0, beat_period_s=2.0)
    rows = [row]
    print(json.dumps(row), flush=True)
    for rate in rates:
        row = run_hosts(hosts, CORES_PER_NODE, idle_s, 2.0, rate or float("inf"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"cpu_count": os.cpu_count(), "target_core_fraction": 0.05, "runs": rows}


def plot_liveness(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["runs"]
    labels = [f"{r['path']}\n{r['ranks']:,} ranks\n"
              + (f"{r['hosts']:,} hosts, " if r["path"] == "per host" else "")
              + f"beat every {r['beat_period_s']:.1f} s" for r in rows]
    fig, ax = plt.subplots(figsize=(2.2 * len(rows) + 2, 4.5))
    ax.bar(labels, [r["idle_client_cpu_core_fraction"] * 100 for r in rows],
           color=["tab:gray" if r["path"] == "per rank" else "tab:blue" for r in rows])
    most = max(r["ranks"] for r in rows)
    for i, r in enumerate(rows):
        if r["path"] == "per rank":  # the same cost per rank at the hosts' rank count
            cores = r["liveness_us_per_rank_per_s"] * most / 1e6
            ax.annotate(f"at {most:,} ranks:\n{cores:.1f} cores", (i, r["idle_client_cpu_core_fraction"] * 100),
                        ha="center", va="bottom", fontsize=8)
    ax.axhline(result["target_core_fraction"] * 100, color="r", ls="--", lw=1, label="5% of a core")
    ax.set_ylabel("client CPU while idle (liveness), % of a core")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"Liveness per rank and per host, the real dispatcher ({os.cpu_count()} cores, shared)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _open_files_for(connections: int) -> None:
    """The client holds a TCP connection, a descriptor, per fake rank: raise the soft limit to the hard one,
    and say so if that is still too few (the largest rank count this machine holds is bounded by it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = connections + 1024  # the interpreter, ZeroMQ's own descriptors, the fake hosts' pipes
    if hard != resource.RLIM_INFINITY and need > hard:
        raise RuntimeError(f"{connections} fake ranks need about {need} open files in this process; the limit "
                           f"is {hard} (ulimit -n): ask for fewer ranks or raise the limit")


def _end(procs: List[subprocess.Popen]) -> None:
    """The fake hosts leave on the dispatcher's STOP; any that does not within 20 s is killed."""
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["runs"]
    labels = [f"{r['ranks']:,}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    ax.bar(labels, [r["tasks_per_s"] for r in rows])
    ax.axhline(TARGET_TASKS_PER_S, color="r", ls="--", lw=1, label=f"{TARGET_TASKS_PER_S:,.0f} tasks/s target")
    ax.set_xlabel("fake ranks")
    ax.set_ylabel("one-rank tasks started and completed per s")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(labels, [r["idle_client_cpu_core_fraction"] * 100 for r in rows])
    ax.set_xlabel("fake ranks")
    ax.set_ylabel("client CPU while idle (liveness), % of a core")
    fig.suptitle(f"The real dispatcher with fake ranks on this machine ({os.cpu_count()} cores, shared)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="256,1024,4096,16384", help="comma-separated fake rank counts")
    parser.add_argument("--tasks", type=int, default=30000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle liveness measured")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--liveness", action="store_true",
                        help="idle liveness only: per rank at --ranks' largest, per host at --hosts (liveness.json)")
    parser.add_argument("--hosts", type=int, default=9408, help="fake hosts of 56 ranks for --liveness")
    parser.add_argument("--rates", default="0,1000",
                        help="max_heartbeats_per_s for --liveness's hosts (0: none, every leader every 2 s)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.liveness:
        result = liveness(args.hosts, max(int(x) for x in args.ranks.split(",")),
                          [float(x) for x in args.rates.split(",")], args.idle)
        out.mkdir(parents=True, exist_ok=True)
        (out / "liveness.json").write_text(json.dumps(result, indent=2))
        if not args.no_plot:
            plot_liveness(result, out / "liveness.png")
        return result
    runs = []
    for r in (int(x) for x in args.ranks.split(",")):
        row = run(r, args.tasks, args.idle)
        runs.append(row)
        print(json.dumps(row), flush=True)
    best = max(runs, key=lambda r: r["ranks"])
    result = {"cpu_count": os.cpu_count(), "ranks_per_fake_host": RANKS_PER_HOST, "runs": runs,
              "target": {"tasks_per_s_at_most_ranks": best["tasks_per_s"], "target": TARGET_TASKS_PER_S,
                         "median_tasks_per_s": statistics.median(r["tasks_per_s"] for r in runs)}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "dispatch_load.json").write_text(json.dumps(result, indent=2))
    if not args.no_plot:
        plot(result, out / "dispatch_load.png")
    print(json.dumps(result["target"]))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--fake-host":
        a = sys.argv[2:]
        fake_host(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), a[6], int(a[7]) if len(a) > 7 else 1)
    else:
        main(sys.argv[1:])
