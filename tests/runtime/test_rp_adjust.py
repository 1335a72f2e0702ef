"""Radical Pilot's adjustments (``runtime/rp_adjust/``): each proven in a live pilot, and the version guard.

The live checks share one 2-rank local pilot: its RP processes listen on
loopback only, every RP socket does CurveZMQ with the session's keys, its
bootstrap made no DNS lookup or ping, RP left no ``/tmp/rp.agent_cfg.*``, and
its idle bridges wake rarely, and a subscriber's stop() does not wait out its poll.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import time

import parsl
import psutil
import pytest

from parsl_rcylon import RadicalCylonExecutor, cylon_app
from parsl_rcylon.runtime import rp_adjust
from parsl_rcylon.runtime.layout import sandbox_path
from parsl_rcylon.runtime.processes import listening_sockets, session_processes
from tests import stranger as strangers


def _hook_env(**extra: str) -> dict:
    env = dict(os.environ, **extra)
    env[rp_adjust.ENV_ADJUST] = str(rp_adjust.PACKAGE_DIR)
    env["PYTHONPATH"] = os.pathsep.join([str(rp_adjust.HOOK_DIR), env.get("PYTHONPATH", "")])
    env.pop(rp_adjust.ENV_STOCK, None)
    return env


def _fake_dist(tmp_path, name: str, version: str):
    info = tmp_path / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return tmp_path


def test_the_installed_release_is_the_one_written_for():
    found = rp_adjust.check_versions()
    assert found["radical.pilot"].startswith("1.103.") and found["radical.utils"].startswith("1.103.")


def test_another_release_is_refused_with_the_way_out(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_fake_dist(tmp_path, "radical.utils", "1.110.0")))
    monkeypatch.delenv(rp_adjust.ENV_STOCK, raising=False)
    with pytest.raises(rp_adjust.RadicalVersionError, match=r"radical.utils 1.103.x \(found 1.110.0\)") as err:
        rp_adjust.check_versions()
    assert rp_adjust.ENV_STOCK in str(err.value) and "insecure" in str(err.value)
    monkeypatch.setenv(rp_adjust.ENV_STOCK, "1")
    assert rp_adjust.check_versions()["radical.utils"] == "1.110.0"


def test_an_rp_process_on_another_release_refuses_to_start(tmp_path):
    # the hook runs first in every RP process of a session: a process with another radical.utils ends
    fake = _fake_dist(tmp_path, "radical.utils", "1.110.0")
    env = _hook_env()
    env["PYTHONPATH"] = os.pathsep.join([str(rp_adjust.HOOK_DIR), str(fake), env["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-c", "import radical.utils; print('started')"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "started" not in proc.stdout
    assert "radical.utils 1.103.x (found 1.110.0)" in proc.stderr


def test_the_hook_loads_the_package_by_path_and_nothing_of_parsl_rcylon():
    # every RP process of a session pays for the hook: it loads rp_adjust's modules, not the project
    code = "import sys; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], env=_hook_env(), capture_output=True, text=True,
                            timeout=60, check=True).stdout.split()
    assert {"_rcylon_rp_adjust.install", "_rcylon_rp_adjust.sockets", "_rcylon_rp_adjust.polling"} <= set(loaded)
    assert not [m for m in loaded if m.split(".")[0] in ("parsl", "parsl_rcylon", "radical")], loaded


def test_the_hook_binds_rp_bridges_of_a_process_to_loopback(tmp_path):
    # an RP bridge process of its own, started with the hook's variables, as RP starts them
    script = textwrap.dedent("""
        import psutil, radical.utils as ru
        s = ru.zmq.Server(); s.start()
        ps = ru.zmq.PubSub(channel="t_ps", cfg={"uid": "t_ps", "path": "."}); ps.start()
        q = ru.zmq.Queue(channel="t_q", cfg={"uid": "t_q", "path": "."}); q.start()
        print(s.addr, ps.addr_pub, ps.addr_sub, q.addr_put, q.addr_get)
        print(*sorted({c.laddr.ip for c in psutil.Process().net_connections() if c.status == "LISTEN"}))
    """)
    env = _hook_env(**{rp_adjust.ENV_BIND: rp_adjust.LOOPBACK})
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path,
                         timeout=120, check=True).stdout.splitlines()
    assert all(a.startswith("tcp://127.0.0.1:") for a in out[0].split()), out
    assert out[1] == "127.0.0.1"


#: An RP pubsub bridge with its publisher, and three subscribers of the test's own: one with the
#: session's keys, one that does not know the session's server key (a made-up one), one with no CurveZMQ.
CURVE_SCRIPT = textwrap.dedent("""
    import json, os, time, zmq, radical.utils as ru
    keys = json.load(open(os.environ["RCYLON_RP_CURVE"]))
    ps = ru.zmq.PubSub(channel="t_ps", cfg={"uid": "t_ps", "path": "."}); ps.start()
    got = []
    ru.zmq.Subscriber("t_ps", url=ps.addr_sub, topic="t", cb=lambda topic, msg: got.append(msg))
    pub = ru.zmq.Publisher("t_ps", url=ps.addr_pub)
    ctx, subs = zmq.Context(), {}
    session = (keys["server_public"].encode(), keys["client_public"].encode(), keys["client_secret"].encode())
    for name, triple in (("session", session), ("made-up server key", (zmq.curve_keypair()[0], *session[1:])),
                         ("no curve", None)):
        s = subs[name] = ctx.socket(zmq.SUB)
        if triple:
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = triple
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(str(ps.addr_sub))
    stranger = ctx.socket(zmq.PUB)  # a NULL publisher: what it sends must never reach a subscriber
    stranger.connect(str(ps.addr_pub))
    time.sleep(1.0)
    for i in range(3):
        pub.put("t", {"i": i})
        stranger.send_multipart([b"t", b"stranger"])
        time.sleep(0.2)
    time.sleep(0.5)
    counts = {}
    for name, s in subs.items():
        counts[name] = 0
        while s.poll(100):
            s.recv_multipart()
            counts[name] += 1
    print(json.dumps({"rp_subscriber": got, "counts": counts}))
""")


def test_the_hook_puts_rp_sockets_on_curvezmq_admitting_only_the_session(tmp_path):
    # RP's own publisher and subscriber talk; a subscriber with the session's keys hears them; one
    # that does not know the session's server key, or speaks no CurveZMQ, hears nothing, and a NULL
    # publisher reaches nobody
    keys = rp_adjust.write_keys(tmp_path / "run")
    assert oct(keys.stat().st_mode & 0o777) == "0o600" and oct(keys.parent.stat().st_mode & 0o777) == "0o700"
    env = _hook_env(**{rp_adjust.ENV_BIND: rp_adjust.LOOPBACK, rp_adjust.ENV_CURVE: str(keys)})
    proc = subprocess.run([sys.executable, "-c", CURVE_SCRIPT], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["rp_subscriber"] == [{"i": 0}, {"i": 1}, {"i": 2}], out
    assert out["counts"] == {"session": 3, "made-up server key": 0, "no curve": 0}, out


def test_a_key_file_others_may_read_is_refused(tmp_path):
    # as an RP process of the session meets it: a file it did not write itself
    keys = tmp_path / "copy.json"
    keys.write_bytes(rp_adjust.write_keys(tmp_path / "run").read_bytes())
    keys.chmod(0o640)
    with pytest.raises(rp_adjust.CurveKeyError, match="not a private file"):
        rp_adjust.read_keys(str(keys))
    link = tmp_path / "link.json"
    keys.chmod(0o600)
    link.symlink_to(keys)
    with pytest.raises(rp_adjust.CurveKeyError, match="cannot open"):
        rp_adjust.read_keys(str(link))
    assert rp_adjust.read_keys(str(keys)).client_public  # the private file itself is taken


# -- a live pilot ------------------------------------------------------------------------------------

@cylon_app(ranks=2)
def _allreduce(ctx):
    return ctx.comm.allreduce(1)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A 2-rank local pilot, with what was in /tmp before it started."""
    agent_cfgs = set(glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "rp.agent_cfg.*")))
    run_dir = tmp_path_factory.mktemp("runinfo")
    ex = RadicalCylonExecutor(label="adj", worker_ranks=2)
    dfk = parsl.load(parsl.Config(executors=[ex], run_dir=str(run_dir), strategy="none"))
    try:
        assert _allreduce().result(timeout=120) == 2
        yield ex, agent_cfgs
    finally:
        dfk.cleanup()
        parsl.clear()


def _session_tree(ex) -> list:
    procs = {p.pid: p for p in session_processes(ex.session_id, ex.base_dir)}
    for p in psutil.Process().children(recursive=True):
        procs.setdefault(p.pid, p)
    return list(procs.values())


@pytest.mark.integration
def test_no_rp_socket_of_a_local_pilot_listens_beyond_loopback(live):
    # MPI's sockets (hydra's PMI port, the ranks' netmod) are MPICH's, not RP's: docs/security.md
    ex, _ = live
    sockets = listening_sockets(_session_tree(ex) + [psutil.Process()])
    assert len(sockets["rp"]) >= 20, f"only {len(sockets['rp'])} RP sockets found: is the session's tree complete?"
    assert not sockets["rp_beyond_loopback"], f"RP sockets listening beyond loopback: {sockets}"


@pytest.mark.integration
def test_the_bootstrap_made_no_dns_lookup_nor_ping(live):
    ex, _ = live
    pilot = next(iter(ex._own.runtime._pilots.values()))
    log = (sandbox_path(pilot) / "bootstrap_0.out").read_text()
    assert "rcylon: skipped 'ping -c 1" in log
    assert "rcylon: skipped 'dig +short 0.pool.ntp.org'" in log  # the bootstrap sends its stderr there too
    assert "packets transmitted" not in log and "bytes from" not in log


@pytest.mark.integration
def test_rp_leaves_no_agent_config_in_tmp(live):
    ex, before = live
    after = set(glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "rp.agent_cfg.*")))
    assert after == before
    assert list((ex.base_dir / "tmp").glob("rp.agent_cfg.*")), "the agent configuration went elsewhere"


def _wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` (psutil counts the main thread's only)."""
    total = 0
    for task in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(task) as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except OSError:
            pass
    return total


@pytest.mark.integration
def test_idle_rp_bridges_wait_on_their_sockets(live):
    # Stock RP's queue and pubsub bridges wake every 10-30 ms while idle (>= 100 wake-ups a
    # second each); adjusted, a bridge wakes for its stop flag, its heartbeat and little else.
    ex, _ = live
    bridges = []
    for p in session_processes(ex.session_id, ex.base_dir):
        try:
            if any(kind in " ".join(p.cmdline()) for kind in ("_queue", "_pubsub")):
                bridges.append(p)
        except psutil.Error:  # ended meanwhile (a zombie of RP's start-up)
            continue
    assert len(bridges) >= 8, [p.name() for p in bridges]
    before = {p.pid: _wakeups(p.pid) for p in bridges}
    time.sleep(3.0)
    rates = {" ".join(p.cmdline()[:1]) or p.pid: (_wakeups(p.pid) - before[p.pid]) / 3.0 for p in bridges}
    # measured on a live pilot: adjusted 22-26 a second per bridge process (78 for the busiest),
    # stock 117 (no getter) to ~670 (one getter) in benchmarks/rp_bridges.py
    assert max(rates.values()) < 100, rates


# -- as another local user ------------------------------------------------------------------------

#: Run as the stranger with the system Python (the project's virtualenv may be in root's home).
STRANGER = strangers.FIND_PORTS + textwrap.dedent("""
    import json, os, socket, sys
    victim, host, base = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ports = victim_ports(victim)
    reached = []
    for port in sorted(ports):
        s = socket.socket()
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            reached.append(port)
        s.close()
    tried = {}
    for what, act in (("rename the executor directory", lambda: os.rename(base, base + ".aside")),
                      ("list the run directory", lambda: os.listdir(os.path.dirname(base)))):
        try:
            act()
            tried[what] = "done"
        except OSError as err:
            tried[what] = type(err).__name__
    print(json.dumps({"ports": sorted(ports), "reached": reached, "tried": tried}))
""")


@pytest.mark.integration
def test_a_stranger_reaches_no_rp_bridge_beyond_loopback_and_the_run_goes_on(live):
    ex, _ = live
    host = strangers.host_address()
    sockets = listening_sockets(_session_tree(ex) + [psutil.Process()])
    found = json.loads(strangers.run_as(STRANGER, str(os.getuid()), host, str(ex.base_dir), timeout=120))
    rp_ports = {addr.port for _, _, addr in sockets["rp"]}
    assert rp_ports <= set(found["ports"]), "the stranger sees the victim's ports as an attacker would"
    # (the victim's other services, root's when the tests run as root, are not this session's)
    assert not set(found["reached"]) & rp_ports, f"RP ports reached from another user at {host}: {found}"
    assert set(found["tried"].values()) == {"PermissionError"}, found["tried"]
    assert _allreduce().result(timeout=60) == 2  # and the run goes on


@pytest.mark.integration
def test_every_rp_socket_of_a_live_pilot_does_curvezmq(live):
    # What stops another user of this machine: not loopback, which she reaches too, but CurveZMQ.
    # The probe's control is a plain ZeroMQ socket of this user's, which it must see as NULL.
    import zmq

    ex, _ = live
    plain = zmq.Context.instance().socket(zmq.PULL)
    try:
        control = plain.bind_to_random_port("tcp://127.0.0.1")
        owners = {addr.port: (pid, name) for pid, name, addr in
                  listening_sockets(_session_tree(ex) + [psutil.Process()])["rp"]}
        rp_ports = set(owners)
        seen = strangers.probe_ports([rp_adjust.LOOPBACK], also=[control])[rp_adjust.LOOPBACK]
    finally:
        plain.close(linger=0)
    assert seen[control] == "NULL", seen
    assert len(rp_ports) >= 20 and rp_ports <= set(seen), (rp_ports, seen)
    assert {port: (seen[port], owners[port]) for port in rp_ports if seen[port] != "CURVE"} == {}
    # RP's agent also takes plain JSON for the control pubsub on a TCP "command port": never opened
    pilot = next(iter(ex._own.runtime._pilots.values()))
    assert not (sandbox_path(pilot) / "agent_0.ports.json").exists()
    assert _allreduce().result(timeout=60) == 2  # and the run goes on


@pytest.mark.integration
def test_a_subscriber_stops_without_waiting_out_its_poll_and_still_delivers(live):
    # RP's Subscriber listener polls 500 ms at a time and stop() joins it: each stop waited for the poll
    # to run out, about 11 of them one after another when a session closes.  Adjusted, stop() wakes the
    # listener.  A topic nobody else publishes on keeps the listener's poll undisturbed.
    import radical.utils as ru

    ex, _ = live
    session = ex._own.runtime._session
    topic = "rcylon.test.wake"
    got = []
    sub = ru.zmq.Subscriber("control_pubsub", url=session._ctrl_sub.url, topic=topic,
                            cb=lambda t, msg: got.append(msg))
    pub = ru.zmq.Publisher("control_pubsub", url=session._ctrl_pub.url)
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:  # a new subscription misses what came before it joined
        pub.put(topic, {"n": 1})
        time.sleep(0.1)
    assert got and got[0] == {"n": 1}, "the patched listener delivers messages"
    thread = sub._thread
    time.sleep(0.05)  # the listener is in a fresh 500 ms poll (stock: stop() waits ~0.45 s here)
    t = time.monotonic()
    sub.stop()
    took = time.monotonic() - t
    assert not thread.is_alive() and sub._thread is None
    assert took < 0.2, f"stop() took {took:.3f} s: it waited for the listener's 500 ms poll"
