"""RankRegistry's per-host bookkeeping: the executor looks at host leaders and at ranks on its own host,
never at every rank; a RANK_LOST is believed only from the rank that watches the one it names."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from parsl_rcylon.runtime.client.ranks import RankRegistry
from parsl_rcylon.runtime.client.slots import WorkerSlots
from parsl_rcylon.runtime.wire import protocol


def registry(hosts, local=False, pid=1, worker="w"):
    """``hosts``: host name -> ranks (lowest leads); every rank's PID is ``pid``."""
    reg = RankRegistry()
    reg.expect(worker)
    for host, ranks in hosts.items():
        for r in ranks:
            reg.register(f"{worker}/{r}".encode(), worker, r, host, pid, local=local, leader=min(ranks))
    return reg


def test_only_leaders_are_heartbeaten():
    reg = registry({"a": [0, 1, 2], "b": [3, 4]})
    assert sorted(reg.leaders("w")) == [0, 3]
    assert len(reg.of("w")) == 5


def test_a_rank_naming_no_leader_leads_itself():
    reg = RankRegistry()
    reg.expect("w")
    for r in range(3):
        reg.register(f"w/{r}".encode(), "w", r, "a", 1, local=False)
    assert sorted(reg.leaders("w")) == [0, 1, 2]


def test_silent_followers_are_not_judged_silent_leaders_are():
    reg = registry({"a": [0, 1], "b": [2, 3]})
    now = max(e.last_seen for e in reg.of("w").values())
    for r in (1, 3):
        reg.of("w")[r].last_seen = now - 1000  # followers never answer heartbeats
    assert reg.silent_or_gone("w", now, 10.0) is None
    reg.of("w")[2].last_seen = now - 30
    assert reg.silent_or_gone("w", now, 10.0) == "rank 2 (pid 1 on b) has not answered for 30 s"


def test_a_follower_on_this_host_is_still_checked_by_pid():
    follower = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reg = RankRegistry()
    reg.expect("w")
    reg.register(b"w/0", "w", 0, "here", os.getpid(), local=True, leader=0)
    reg.register(b"w/1", "w", 1, "here", follower.pid, local=True, leader=0)
    assert reg.silent_or_gone("w", 0.0, 1e9) is None
    follower.kill()
    follower.wait()
    assert reg.silent_or_gone("w", 0.0, 1e9) == f"rank 1 (pid {follower.pid} on here) exited"


@pytest.mark.parametrize("sender, named, ok", [
    (0, 1, "rank 1 (pid 1 on a) exited (reported by rank 0, its host's leader)"),
    (1, 0, "rank 0 (pid 1 on a) exited (reported by rank 1, a rank it leads)"),
    (1, 2, None),   # a follower about another follower
    (0, 3, None),   # a leader about a rank of another host
    (2, 2, None),   # about itself
    (0, 9, None),   # a rank that is not registered
])
def test_who_may_report_a_lost_rank(sender, named, ok):
    reg = registry({"a": [0, 1, 2], "b": [3]})
    assert reg.lost_report(("w", sender), {"rank": named, "pid": 1, "host": "a", "reason": "exited"}) == ok


def test_forgetting_a_worker_forgets_its_leaders():
    reg = registry({"a": [0, 1]})
    reg.forget("w")
    assert reg.leaders("w") == {} and reg.silent_or_gone("w", 0.0, 1.0) is None


def test_a_ready_naming_a_higher_leader_is_refused():
    reg = RankRegistry()
    reg.expect("w")
    slots = WorkerSlots("w", 4)
    info = {"worker": "w", "rank": 1, "size": 4, "leader": 2}
    assert "naming rank 2 as its host's leader" in reg.refusal(b"w/1", info, slots)
    assert reg.refusal(b"w/1", dict(info, leader=0), slots) is None


def test_rank_lost_and_leader_are_checked_on_the_wire():
    lost = {"rank": 1, "pid": 2, "host": "a", "reason": "exited"}
    assert protocol.unpack(protocol.pack(protocol.RANK_LOST, lost)).header == lost
    with pytest.raises(protocol.ProtocolError, match="RANK_LOST without 'reason'"):
        protocol.unpack(protocol.pack(protocol.RANK_LOST, {k: v for k, v in lost.items() if k != "reason"}))
    with pytest.raises(protocol.ProtocolError, match="READY field 'leader' is a str"):
        protocol.unpack(protocol.pack(protocol.READY, {"token": "t", "pid": 1, "host": "h", "leader": "0"}))
    with pytest.raises(protocol.ProtocolError, match="HEARTBEAT field 'rank_timeout' is a bool"):
        protocol.unpack(protocol.pack(protocol.HEARTBEAT, {"rank_timeout": True}))


def test_heartbeats_stretch_with_many_hosts_within_the_threshold(tmp_path):
    from parsl_rcylon.runtime.client.dispatcher import Dispatcher

    d = Dispatcher(tmp_path, heartbeat_period=2.0, heartbeat_threshold=30.0, rank_timeout=120.0,
                   max_heartbeats_per_s=100.0)
    try:
        d._ranks.expect("w")
        assert d.beat_period() == 2.0  # no leaders yet
        for h in range(500):  # 500 hosts of 2 ranks: 500 leaders, 5 s at 100 heartbeats a second
            for r in (2 * h, 2 * h + 1):
                d._ranks.register(f"w/{r}".encode(), "w", r, f"n{h}", 1, local=False, leader=2 * h)
        assert d.beat_period() == 5.0
        for h in range(500, 5000):
            d._ranks.register(f"w/{2 * h}".encode(), "w", 2 * h, f"n{h}", 1, local=False, leader=2 * h)
        assert d.beat_period() == 10.0  # never beyond a third of the threshold
    finally:
        d.start()
        d.stop()
