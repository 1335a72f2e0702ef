"""The executor's keywords in checked groups: each group names the bad value; the old keyword still works."""
from __future__ import annotations

import pytest

from parsl_rcylon import RadicalCylonExecutor, WorkerPool
from parsl_rcylon.executor_options import Allocation, DataOptions
from parsl_rcylon.resources import PilotSpec
from parsl_rcylon.runtime.client.pilots import Liveness
from parsl_rcylon.runtime.wire.channel import ChannelOptions


@pytest.mark.parametrize("make, match", [
    (lambda: ChannelOptions(port_range=(6000, 5000)), "port_range must be"),
    (lambda: ChannelOptions(max_frame_bytes=1024), "max_frame_bytes must be at least 65536"),
    (lambda: Liveness(heartbeat_period=5, rank_timeout=5), r"rank_timeout \(5 s\) must exceed"),
    (lambda: Liveness(cancel_grace=0), "cancel_grace must be positive"),
    (lambda: Liveness(max_worker_restarts=-1), "max_worker_restarts must be >= 0"),
    (lambda: Liveness(max_heartbeats_per_s=0), "max_heartbeats_per_s must be positive"),
    (lambda: DataOptions("ex", sharing="world"), "world"),
    (lambda: DataOptions("ex", task_dir=""), "ex: task_dir must name a directory"),
    (lambda: Allocation([PilotSpec()], [WorkerPool(name="a"), WorkerPool(name="a")]), "pool names must be unique"),
    (lambda: Allocation([PilotSpec()], [WorkerPool(name="a", pilot="gpu")]), "names pilot 'gpu'; pilots are"),
    (lambda: RadicalCylonExecutor(worker_ranks=2, pools=[WorkerPool(name="a")]), "either worker_ranks or pools"),
])
def test_each_group_checks_itself(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_the_executor_keeps_its_keywords_and_their_groups():
    ex = RadicalCylonExecutor(worker_ranks=2, port_range=(5000, 6000), table_options={"format": "ipc"},
                              sharing="group")
    assert ex.channel == ChannelOptions(True, (5000, 6000), 1 << 30)
    assert ex.table_options == {"format": "ipc", "sharing": "group"} == ex.data.table_options
    assert [p.ranks for p in ex.pools] == [2] and ex.allocation.is_local
    text = repr(ex)  # Parsl's repr of a config reads every keyword back
    assert "port_range=(5000, 6000)" in text and "max_frame_bytes=1073741824" in text and "memo" not in text


def test_max_message_bytes_is_the_deprecated_name_of_max_frame_bytes():
    with pytest.warns(DeprecationWarning, match="max_frame_bytes"):
        ex = RadicalCylonExecutor(worker_ranks=2, max_message_bytes=1 << 20)
    assert ex.channel.max_frame_bytes == 1 << 20
