"""Parsl's resource-specification vocabulary: each key's meaning, its effect on placement, refusals.

No pilot: parsing, the executor's checks before start, and the placement
policy with simulated workers.  The integration part (tests/test_workdir.py's
pilot) checks priority order and refusals on a real pilot.
"""
from __future__ import annotations

import time

import psutil
import pytest
from parsl.executors.errors import InvalidResourceSpecification

from parsl_rcylon import PilotSpec, RadicalCylonExecutor, ResourceSpec, WorkerPool, cylon_app
from parsl_rcylon.resources import KNOWN_KEYS
from parsl_rcylon.runtime.client.placement import Placement

PARSL_KEYS = {"num_ranks", "num_nodes", "ranks_per_node", "cores", "gpus", "memory", "disk", "running_time_min",
              "priority"}


def test_every_parsl_key_is_known():
    assert PARSL_KEYS <= KNOWN_KEYS


@pytest.mark.parametrize("given, expected", [
    ({"num_ranks": 4}, {"ranks": 4}),
    ({"num_nodes": 2, "ranks_per_node": 3}, {"ranks": 6, "num_nodes": 2, "ranks_per_node": 3}),
    ({"num_ranks": 6, "num_nodes": 3}, {"ranks": 6, "num_nodes": 3, "ranks_per_node": 2}),
    ({"num_ranks": 6, "ranks_per_node": 3}, {"ranks": 6, "num_nodes": 2, "ranks_per_node": 3}),
    ({"cores": 4}, {"ranks": 1, "cores_per_rank": 4}),
    ({"cores": 6, "ranks": 3}, {"ranks": 3, "cores_per_rank": 2}),
    ({"gpus": 2}, {"ranks": 1, "gpus_per_rank": 2}),
    ({"gpus": 4, "num_ranks": 2, "gpus_per_rank": 2}, {"ranks": 2, "gpus_per_rank": 2}),
    ({"memory": 1, "disk": 10}, {"ranks": 1, "memory": 1, "disk": 10}),
    ({"running_time_min": 2}, {"ranks": 1, "walltime": 120}),
    ({"running_time_min": 0.5, "walltime": 30}, {"ranks": 1, "walltime": 30}),
    ({"priority": -3}, {"ranks": 1, "priority": -3}),
    ({"cores": 1, "memory": 1}, {"ranks": 1, "cores_per_rank": 1, "memory": 1}),
])
def test_each_key_has_its_meaning(given, expected):
    spec = ResourceSpec.from_mapping(given)
    assert spec == ResourceSpec(**expected)
    # What a spec says survives the trip through Parsl (as a dict) unchanged.
    assert ResourceSpec.from_mapping(spec.as_dict()) == spec


@pytest.mark.parametrize("given, keys, words", [
    ({"cores": 3, "ranks": 2}, {"cores"}, "evenly"),
    ({"cores": 4, "cores_per_rank": 1}, {"cores", "cores_per_rank"}, "disagree"),
    ({"gpus": 1, "ranks": 2}, {"gpus"}, "evenly"),
    ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 3}, {"num_ranks"}, "num_nodes \\* ranks_per_node"),
    ({"num_ranks": 5, "num_nodes": 2}, {"num_nodes"}, "evenly"),
    ({"running_time_min": 1, "walltime": 30}, {"walltime"}, "disagree"),
    ({"running_time_min": 0}, {"running_time_min"}, "positive number of minutes"),
    ({"priority": "high"}, {"priority"}, "lower runs first"),
    ({"memory": -1}, {"memory"}, "integer >= 0"),
    ({"disk": 1.5}, {"disk"}, "integer >= 0"),
    ({"num_nodes": 0}, {"num_nodes"}, "integer >= 1"),
    ({"cpus": 2}, {"cpus"}, "known keys are"),
])
def test_bad_values_are_refused_naming_the_key(given, keys, words):
    with pytest.raises(InvalidResourceSpecification, match=words) as err:
        ResourceSpec.from_mapping(given, where="myapp")
    assert keys <= set(err.value.invalid_keys)
    assert "myapp" in str(err.value)


def test_unknown_key_lists_every_known_key():
    with pytest.raises(InvalidResourceSpecification) as err:
        ResourceSpec.from_mapping({"cpus": 1})
    for key in KNOWN_KEYS:
        assert key in str(err.value)


def test_a_call_override_replaces_keys_of_the_same_meaning():
    base = ResourceSpec(ranks=4, cores_per_rank=2, walltime=10)
    assert base.merged({"num_ranks": 2}).ranks == 2
    assert base.merged({"cores": 8}).cores_per_rank == 2, "8 cores over 4 ranks"
    assert base.merged({"num_nodes": 2, "ranks_per_node": 3}).ranks == 6
    assert base.merged({"num_nodes": 2}).ranks_per_node == 2, "4 ranks on 2 hosts"
    assert base.merged({"running_time_min": 1}).walltime == 60
    assert base.merged({"priority": 1}).priority == 1 and base.merged({"priority": 1}).ranks == 4


def test_decorator_takes_the_vocabulary_as_keywords():
    @cylon_app(num_nodes=1, ranks_per_node=2, priority=5, memory=10)
    def f(ctx):
        return 1

    assert (f.spec.ranks, f.spec.num_nodes, f.spec.priority, f.spec.memory) == (2, 1, 5, 10)
    with pytest.raises(InvalidResourceSpecification, match="evenly"):
        @cylon_app(ranks=3, cores=4)
        def g(ctx):
            return 1


# -- refused where no pool can satisfy them (before start) ------------------------------------------


def test_local_executor_refuses_more_than_one_node_and_too_much_memory_or_disk():
    ex = RadicalCylonExecutor(worker_ranks=4)
    assert ex.validate_resource_specification({"num_nodes": 1, "ranks_per_node": 4}).ranks == 4
    with pytest.raises(InvalidResourceSpecification, match=r"on 2 host\(s\).*local pilot's ranks are all on one host"):
        ex.validate_resource_specification({"num_nodes": 2, "ranks_per_node": 1})
    machine = psutil.virtual_memory().total >> 20
    assert ex.validate_resource_specification({"memory": machine // 2}).memory == machine // 2
    with pytest.raises(InvalidResourceSpecification, match=r"memory=.* MB exceeds the .* MB of 1 host"):
        ex.validate_resource_specification({"memory": machine + 1})
    with pytest.raises(InvalidResourceSpecification, match=r"disk=.* exceeds .*free disk"):
        ex.validate_resource_specification({"disk": 1 << 40})
    with pytest.raises(InvalidResourceSpecification, match="one rank"):
        ex.validate_resource_specification({"num_nodes": 1, "ranks_per_node": 2}, cylon=False)
    assert ex.validate_resource_specification({"cores": 2, "gpus": 0, "priority": 1}, cylon=False).cores_per_rank == 2
    with pytest.raises(InvalidResourceSpecification, match="gpus_per_rank"):
        ex.validate_resource_specification({"gpus": 1})


def test_cluster_pools_take_nodes_and_are_checked_against_the_resource_config():
    ex = RadicalCylonExecutor(
        pilots=[PilotSpec(name="m", resource="ornl.frontier", resource_config={"mem_per_node": 1000})],
        pools=[WorkerPool(name="p", ranks=8, ranks_per_node=4, pilot="m")])
    spec = ex.validate_resource_specification({"num_nodes": 2, "ranks_per_node": 4, "memory": 1500})
    assert (spec.ranks, spec.num_nodes) == (8, 2)
    with pytest.raises(InvalidResourceSpecification, match=r"memory=2500 MB exceeds the 2000 MB of 2 host"):
        ex.validate_resource_specification({"num_nodes": 2, "ranks_per_node": 1, "memory": 2500})
    with pytest.raises(InvalidResourceSpecification, match=r"on 3 host\(s\)"):
        ex.validate_resource_specification({"num_nodes": 3, "ranks_per_node": 1})
    with pytest.raises(InvalidResourceSpecification, match=r"on 1 host\(s\), 5 on each"):
        ex.validate_resource_specification({"num_nodes": 1, "ranks_per_node": 5})


# -- honoured by placement -------------------------------------------------------------------------


def _placement(hosts):
    p = Placement()
    p.add_worker("w", len(hosts))
    for rank, host in enumerate(hosts):
        p.join("w", rank, host)
    return p


def test_priority_orders_the_waiting_tasks_lower_first_unprioritised_last():
    p = _placement(["a"])
    p.enqueue("running", ResourceSpec())
    assert [t.uid for t in p.place()] == ["running"]
    for uid, priority in (("none1", None), ("p5", 5), ("p1", 1), ("none2", None), ("p5b", 5), ("neg", -2.5)):
        p.enqueue(uid, ResourceSpec(priority=priority))
    assert p.waiting() == ["neg", "p1", "p5", "p5b", "none1", "none2"]
    order = []
    for finished in ["running", "neg", "p1", "p5", "p5b", "none1"]:
        p.finish(finished)
        started = p.place()
        order += [t.uid for t in started]
    assert order == ["neg", "p1", "p5", "p5b", "none1", "none2"]
    assert not p.busy() or p.waiting() == []


def test_num_nodes_places_exactly_ranks_per_node_on_each_host():
    p = _placement(["a", "a", "a", "b", "b", "b", "c", "c"])
    p.enqueue("two_by_two", ResourceSpec(ranks=4, num_nodes=2, ranks_per_node=2))
    placed = p.place()[0]
    hosts = [["a", "a", "a", "b", "b", "b", "c", "c"][r] for r in placed.ranks]
    assert sorted(hosts.count(h) for h in set(hosts)) == [2, 2] and len(set(hosts)) == 2
    assert "c" in hosts, "best fit: the host with the fewest free ranks that suffice"
    assert hosts == sorted(hosts), "task ranks in host order"
    # Free now: one rank on a host of a/b and the whole other one; c is full.
    p.enqueue("three_by_one", ResourceSpec(ranks=3, num_nodes=3, ranks_per_node=1))
    p.enqueue("one_host_of_2", ResourceSpec(ranks=2, num_nodes=1, ranks_per_node=2))
    started = {t.uid: t for t in p.place()}
    assert set(started) == {"one_host_of_2"}, "three hosts with a free rank do not exist yet"
    p.finish("two_by_two")
    placed = p.place()
    assert [t.uid for t in placed] == ["three_by_one"]
    assert len({["a", "a", "a", "b", "b", "b", "c", "c"][r] for r in placed[0].ranks}) == 3


def test_num_nodes_unreachable_on_one_host_is_not_accepted():
    p = _placement(["localhost"] * 6)
    assert p.accepts(ResourceSpec(ranks=6, num_nodes=1, ranks_per_node=6))
    assert not p.accepts(ResourceSpec(ranks=2, num_nodes=2, ranks_per_node=1))


# -- on a real pilot ---------------------------------------------------------------------------------


@cylon_app(ranks=1)
def stamp(ctx, seconds=0.0):
    import time

    t0 = time.time()
    time.sleep(seconds)
    return {"start": t0, "size": ctx.size, "cores": ctx.cores}


@pytest.mark.integration
def test_priority_orders_waiting_tasks_on_a_real_pilot(rcylon):
    from .conftest import SESSION_RANKS

    whole = {"ranks": SESSION_RANKS}
    blocker = stamp(2.0, parsl_resource_specification=whole)
    time.sleep(0.5)  # the blocker holds every rank: the others wait in the queue together
    waiting = {name: stamp(0.2, parsl_resource_specification={**whole, **extra})
               for name, extra in (("none", {}), ("five", {"priority": 5}), ("one", {"priority": 1}))}
    starts = {name: fut.result(timeout=120)["start"] for name, fut in waiting.items()}
    assert blocker.result(timeout=60)["size"] == SESSION_RANKS
    assert sorted(starts, key=starts.get) == ["one", "five", "none"], starts


@pytest.mark.integration
def test_vocabulary_is_honoured_or_refused_on_a_real_pilot(rcylon):
    from parsl_rcylon import TaskTimeout

    assert stamp(parsl_resource_specification={"cores": 2}).result(timeout=120)["cores"] == 2
    got = stamp(parsl_resource_specification={"num_nodes": 1, "ranks_per_node": 3, "memory": 1, "disk": 1,
                                              "gpus": 0}).result(timeout=120)
    assert got["size"] == 3
    with pytest.raises(InvalidResourceSpecification, match=r"on 2 host\(s\)"):
        stamp(parsl_resource_specification={"num_nodes": 2, "ranks_per_node": 1})
    with pytest.raises(TaskTimeout, match="walltime of 1.2 s"):
        stamp(30.0, parsl_resource_specification={"running_time_min": 0.02}).result(timeout=60)
