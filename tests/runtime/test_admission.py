"""Admission: one object decides whether a pool can hold a call; an attached executor admits as its server does."""
from __future__ import annotations

import dataclasses
import json

import pytest
from parsl.executors.errors import InvalidResourceSpecification

from parsl_rcylon.resources import PilotSpec, WorkerPool
from parsl_rcylon.runtime.attach.info import PilotInfo
from parsl_rcylon.runtime.client.admission import Admission


def _pools():
    return [WorkerPool(name="cpu", ranks=4, pilot="main"), WorkerPool(name="wide", ranks=8, pilot="second")]


def test_pools_in_several_pilots_are_admitted_against_their_own_pilot(tmp_path):
    pilots = [PilotSpec(name="main"), PilotSpec(name="second")]
    admission = Admission.for_pilots("ex", _pools(), pilots, lambda: str(tmp_path))
    assert admission.admit({"ranks": 8}).ranks == 8
    assert admission.admit({"ranks": 2, "pool": "cpu"}).pool == "cpu"
    with pytest.raises(InvalidResourceSpecification, match=r"no pool of executor 'ex' can hold it: cpu \(1 x 4"):
        admission.admit({"ranks": 9})
    with pytest.raises(InvalidResourceSpecification, match="no pool named 'gpu'; pools are cpu"):
        admission.admit({"pool": "gpu"})
    with pytest.raises(InvalidResourceSpecification, match="plain python/bash app runs on one rank"):
        admission.admit({"ranks": 2}, cylon=False)


def test_an_attached_executor_admits_pools_that_name_a_pilot_it_does_not_have(tmp_path):
    # What a pilot server publishes in pilot.json: its pools (naming its pilots) and their shapes.
    server = Admission.for_pilots("up", _pools(), [PilotSpec(name="main"), PilotSpec(name="second")],
                                  lambda: str(tmp_path))
    shapes = [dataclasses.replace(s, capacity=server.capacity(s)).to_dict() for s in server.shapes]
    info = PilotInfo(run_dir=str(tmp_path), address="tcp://127.0.0.1:1", pid=1, started=0.0, label="up",
                     session="s", data_dir=str(tmp_path), idle_timeout=1.0, heartbeat_period=1.0,
                     heartbeat_threshold=2.0, shapes=shapes,
                     pools=[{k: getattr(p, k) for k in ("name", "ranks", "workers", "cores_per_rank", "gpus_per_rank",
                                                        "ranks_per_node", "pilot")} for p in _pools()])
    info = PilotInfo(**json.loads(json.dumps(info.__dict__)))  # as the client reads it back
    client = Admission("attached", info.pool_shapes())
    for spec in ({"ranks": 8}, {"ranks": 3, "pool": "cpu"}, {"memory": 1}):
        assert client.admit(spec) == server.admit(spec)
    huge = {"memory": 1 << 40}
    with pytest.raises(InvalidResourceSpecification, match="memory") as err:
        server.admit(huge)
    with pytest.raises(InvalidResourceSpecification, match="memory") as seen:
        client.admit(huge)
    assert str(seen.value).split(": ", 1)[1] == str(err.value).split(": ", 1)[1]
