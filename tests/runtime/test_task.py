"""The task type: built once by the executor, the same on every side of the wire; one walltime."""
from __future__ import annotations

import pytest
from mpi4py import MPI
from parsl.serialize import deserialize, pack_apply_message

from parsl_rcylon.options import Options
from parsl_rcylon.resources import ResourceSpec
from parsl_rcylon.runtime.agent.rank import run_task
from parsl_rcylon.runtime.wire import protocol
from parsl_rcylon.runtime.wire.task import Assignment, Task
from parsl_rcylon.training.process_group import resolve_timeout


@pytest.mark.parametrize("resources, option, expected", [
    ({}, None, None),
    ({}, 30, 30),                              # the decorator's option alone
    ({"walltime": 45}, None, 45),              # the per-call resource key alone
    ({"running_time_min": 2}, 30, 120),        # Parsl's minutes win over the app's option
    ({"walltime": 45}, 30, 45),
])
def test_walltime_is_resolved_once_into_spec_and_options(resources, option, expected):
    options = {"format": "ipc"} if option is None else {"format": "ipc", "walltime": option}
    task = Task.build("u", "f", True, options, ResourceSpec.from_mapping(resources))
    assert task.walltime == expected and task.spec.walltime == expected
    assert Options.from_mapping(task.options).walltime == expected
    # The training group's collective timeout reads the same value (its default when there is none).
    assert resolve_timeout(Options.from_mapping(task.options), None) == (expected or 300.0)
    assert task.options["format"] == "ipc"


def test_the_rank_sees_the_walltime_the_dispatcher_enforces():
    def f(ctx):
        return ctx.options.walltime

    task = Task.build("t-wall", "f", True, {"walltime": 30}, ResourceSpec.from_mapping({"running_time_min": 1}))
    header = dict(task.to_wire(), **Assignment((0,), 7).to_wire())
    message = protocol.unpack(protocol.pack(protocol.TASK, header, b"p"))
    received = Task.from_wire(message.header)
    report, blob = run_task(received, pack_apply_message(f, (), {}), MPI.COMM_SELF,
                            cores=Assignment.from_wire(message.header).cores)
    assert report["ok"], deserialize(blob)
    assert deserialize(blob) == 60 == task.walltime


def test_a_task_crosses_submit_and_task_messages_unchanged():
    spec = ResourceSpec.from_mapping({"ranks": 2, "pool": "cpu", "priority": 3})
    task = Task.build("c.1", "join", True, {"keep": False}, spec, data_dir="/d", scratch_dir="/s", cwd="/w",
                      path=("/lib",))
    submitted = protocol.unpack(protocol.pack(protocol.SUBMIT, task.submit_header(), b"x"))
    back = Task.from_wire(submitted.header, ResourceSpec.from_mapping(submitted.header["resources"]))
    assert back == task
    sent = protocol.unpack(protocol.pack(protocol.TASK, dict(task.to_wire(), **Assignment((3, 4), 9, 2).to_wire()),
                                         b"x"))
    assert Task.from_wire(sent.header, spec) == task
    assert Assignment.from_wire(sent.header) == Assignment((3, 4), 9, 2)


def test_message_schemas_come_from_the_task_fields():
    required, optional, _ = protocol._SCHEMAS[protocol.TASK]
    assert set(required) == {"uid", "name", "cylon", "options", "ranks", "tag"}
    assert set(optional) == {"data_dir", "scratch_dir", "cwd", "path", "cores"}
    required, optional, _ = protocol._SCHEMAS[protocol.SUBMIT]
    assert set(required) == {"uid", "name", "cylon", "options", "resources"}
    with pytest.raises(protocol.ProtocolError, match="TASK without 'ranks'"):
        protocol.unpack(protocol.pack(protocol.TASK, Task("u", "f", False, {}).to_wire(), b"x"))
