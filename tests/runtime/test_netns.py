"""No traffic off the machine: a pilot of this project starts and runs a task in a network namespace with
only loopback, and no process of it tries a DNS look-up or a connection beyond loopback.

The whole run (client, Radical Pilot's bootstrap, agent, bridges, masters, ranks) is traced with
``strace -f`` for ``connect``/``sendto``/``sendmsg``; every IPv4/IPv6 address they name must be
loopback.  Needs root (``unshare --net``) and strace.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "ip", "strace")),
                       reason="needs root, unshare(1), ip(8) and strace(1) for a traced loopback-only namespace"),
]

RUN = textwrap.dedent("""
    import sys, parsl
    from parsl_rcylon import RadicalCylonExecutor, cylon_app

    @cylon_app(ranks=2)
    def total(ctx):
        return ctx.comm.allreduce(ctx.rank + 1)

    ex = RadicalCylonExecutor(label="netns", worker_ranks=2)
    parsl.load(parsl.Config(executors=[ex], run_dir=sys.argv[1], strategy="none", initialize_logging=False))
    try:
        print("RESULT", total().result(timeout=120), flush=True)
    finally:
        parsl.dfk().cleanup()
""")

#: An address in strace's decoding of a sockaddr: sin_addr=inet_addr("a.b.c.d") or inet_pton(AF_INET6, "x").
_INET = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')
_LOOPBACK = re.compile(r"^(127\.|::1$|::ffff:127\.)")


def test_a_pilot_starts_and_runs_a_task_with_only_loopback_and_reaches_nothing_beyond(tmp_path):
    trace = tmp_path / "trace"
    script = 'ip link set lo up && exec "$@"'
    cmd = ["unshare", "--net", "--", "sh", "-c", script, "sh",
           "strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-e", "signal=none", "-o", str(trace),
           sys.executable, "-c", RUN, str(tmp_path / "runinfo")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "RESULT 3" in done.stdout, (done.stdout + done.stderr)[-4000:]
    calls = trace.read_text().splitlines()
    assert any("connect(" in c for c in calls), "strace saw no connection at all: the trace is not working"
    beyond = [c for c in calls for m in _INET.finditer(c) if not _LOOPBACK.match(m.group(1) or m.group(2))]
    assert beyond == [], "\n".join(beyond[:20])
    dns = [c for c in calls if "htons(53)" in c]
    assert dns == [], "\n".join(dns[:20])
