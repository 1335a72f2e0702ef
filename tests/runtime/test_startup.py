"""The lean start-up pieces that need no pilot: RP reads the agent config, sleeps are capped, messages check."""
from __future__ import annotations

import time
import types

import pytest

from parsl_rcylon.runtime import rp_adjust
from parsl_rcylon.runtime.wire import protocol


def test_rp_reads_the_lean_agent_config_with_its_bridges(tmp_path, monkeypatch):
    import radical.utils as ru

    rp_adjust.write_agent_config(tmp_path)
    monkeypatch.setenv("RADICAL_CONFIG_USER_DIR", str(tmp_path))
    cfg = ru.Config("radical.pilot", category="agent", name=rp_adjust.resource_keys()["agent_config"])
    assert set(cfg["bridges"]) == set(rp_adjust.LEAN_AGENT_CONFIG["bridges"])
    assert set(cfg["components"]) == {"agent_staging_input", "agent_scheduling", "agent_executing",
                                      "agent_staging_output"}
    # every bridge RP's own components publish to or read from is still there
    import radical.pilot.constants as rpc

    for name in ("AGENT_STAGING_INPUT_QUEUE", "AGENT_SCHEDULING_QUEUE", "AGENT_EXECUTING_QUEUE",
                 "AGENT_STAGING_OUTPUT_QUEUE", "AGENT_COLLECTING_QUEUE", "AGENT_UNSCHEDULE_PUBSUB",
                 "CONTROL_PUBSUB", "STATE_PUBSUB"):
        assert getattr(rpc, name) in cfg["bridges"]


def test_settle_caps_only_the_module_and_only_inside():
    module = types.SimpleNamespace(time=time)
    with rp_adjust.settle(module, cap=0.01):
        t = time.monotonic()
        module.time.sleep(5)
        assert time.monotonic() - t < 1
        assert module.time.monotonic() > 0  # everything else is the real module
    assert module.time is time


def test_profiling_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv(rp_adjust.ENV_PROFILE, raising=False)
    assert rp_adjust.client_environment() == {"RADICAL_PROFILE": "False"}
    assert rp_adjust.task_environment()["RP_PROF_TGT"]  # MPIWorker reads it unconditionally
    monkeypatch.setenv(rp_adjust.ENV_PROFILE, "1")
    assert rp_adjust.client_environment() == {} and "RP_PROF_TGT" not in rp_adjust.task_environment()


@pytest.mark.parametrize("frames", [
    [protocol.SUBMIT, b'{"uid":"u","name":"f","cylon":true,"options":{},"resources":{}}'],  # no payload
    [protocol.SUBMIT, b'{"uid":"u","name":"f","cylon":1,"options":{},"resources":{}}', b"x"],
    [protocol.ATTACH, b'{"token":"t","pid":"1","host":"h"}'],
    [protocol.OUTCOME, b'{"uid":"u","ok":true}'],
    [protocol.SUBMIT, b'{"uid":"u","name":"f","cylon":true,"options":{},"resources":{},"path":"/x"}', b"x"],
])
def test_attach_messages_are_checked(frames):
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack(frames)


def test_a_valid_submit_passes():
    msg = protocol.unpack([protocol.SUBMIT, b'{"uid":"u","name":"f","cylon":true,"options":{},'
                                            b'"resources":{"ranks":2},"path":["/x"]}', b"payload"])
    assert msg.header["resources"] == {"ranks": 2} and bytes(msg.blob) == b"payload"
