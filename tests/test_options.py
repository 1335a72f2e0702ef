"""The options surface: cylon_app keys and values, table and engine options, environment defaults.

No pilot: the decorator is checked where it is applied, and the rank side
runs the real rank runner and engine on a one-rank communicator.
"""
from __future__ import annotations

import logging
import subprocess
import sys

import pyarrow as pa
import pytest
from mpi4py import MPI
from parsl.serialize import deserialize, pack_apply_message

from parsl_rcylon import cylon_app, engine
from parsl_rcylon.context import CylonContext
from parsl_rcylon.options import (
    ENGINE_ENV,
    EngineOptions,
    OptionError,
    Options,
    TableOptionError,
    TableOptions,
    check_table_options,
)
from parsl_rcylon.runtime.agent.rank import run_task
from parsl_rcylon.runtime.wire.task import Task
from parsl_rcylon.tableio.errors import TableError

COMM = MPI.COMM_SELF


def test_unknown_cylon_app_key_lists_the_known_ones():
    with pytest.raises(OptionError) as err:
        @cylon_app(rank=4)
        def f(ctx):
            return 1

    message = str(err.value)
    assert "unknown option 'rank'" in message
    for known in ("ranks", "cores_per_rank", "gpus_per_rank", "pool", "cache", "format", "compression",
                  "keep", "verify", "join_kernel", "join_rounds", "max_message_bytes", "walltime"):
        assert known in message


@pytest.mark.parametrize("options, words", [
    ({"format": "csv"}, ["format='csv'", "parquet"]),
    ({"format": "ipc", "compression": "snappy"}, ["compression='snappy'", "not available for ipc"]),
    ({"row_group_size": 0}, ["row_group_size=0", ">= 1"]),
    ({"keep": "no"}, ["keep='no'", "True or False"]),
    ({"verify": "all"}, ["verify='all'", "checksum"]),
    ({"use_dictionary": 3}, ["use_dictionary=3"]),
    ({"join_kernel": "fast"}, ["join_kernel='fast'", "acero"]),
    ({"join_rounds": 0}, ["join_rounds=0", ">= 1"]),
    ({"join_bucket_rows": -1}, ["join_bucket_rows=-1"]),
    ({"max_message_bytes": 2**40}, ["max_message_bytes", "between 8 and 2147483647"]),
    ({"walltime": -5}, ["walltime=-5", "positive number of seconds"]),
])
def test_bad_option_values_raise_at_decoration(options, words):
    with pytest.raises(OptionError) as err:
        cylon_app(ranks=2, **options)
    assert "cylon_app" in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_bad_table_option_is_a_table_error_too():
    with pytest.raises(TableOptionError) as err:
        TableOptions.from_options({"format": "csv"})
    assert isinstance(err.value, TableError) and isinstance(err.value, OptionError)


def test_good_options_travel_with_the_function():
    @cylon_app(ranks=2, format="Arrow", keep=False, join_rounds=2, walltime=30)
    def f(ctx):
        return 1

    assert f.func.__rcylon_options__ == {"format": "Arrow", "keep": False, "join_rounds": 2, "walltime": 30}
    parsed = Options.from_mapping(f.func.__rcylon_options__)
    assert parsed.table.format == "ipc" and parsed.table.keep is False
    assert parsed.engine.join_rounds == 2 and parsed.walltime == 30


def test_executor_table_options_check():
    assert check_table_options({"format": "ipc", "verify": "full"}, "executor") == {"format": "ipc", "verify": "full"}
    with pytest.raises(OptionError, match=r"executor: unknown option 'join_rounds'; known keys are .*compression"):
        check_table_options({"join_rounds": 2}, "executor")
    with pytest.raises(TableOptionError, match="executor: row_group_size=-1"):
        check_table_options({"row_group_size": -1}, "executor")


def test_options_reach_the_context_not_the_function():
    def f(ctx, *args, **kwargs):
        return {"args": args, "kwargs": kwargs, "walltime": ctx.options.walltime,
                "rounds": ctx.options.engine.join_rounds, "format": ctx.options.table.format}

    task = Task("t-options", "f", True, {"walltime": 30, "join_rounds": 3, "format": "ipc"})
    report, blob = run_task(task, pack_apply_message(f, (1,), {"x": 2}), COMM)
    assert report["ok"], deserialize(blob)
    assert deserialize(blob) == {"args": (1,), "kwargs": {"x": 2}, "walltime": 30, "rounds": 3,
                                           "format": "ipc"}


def test_environment_is_read_when_the_options_are(monkeypatch):
    monkeypatch.delenv(ENGINE_ENV["join_rounds"], raising=False)
    assert EngineOptions.resolve().join_rounds == EngineOptions().join_rounds
    monkeypatch.setenv(ENGINE_ENV["join_rounds"], "7")
    monkeypatch.setenv(ENGINE_ENV["join_kernel"], "Acero")
    assert EngineOptions.resolve() == EngineOptions(join_rounds=7, join_kernel="acero")
    # Given options win over the environment; a context reads it when the task starts.
    assert EngineOptions.resolve({"join_rounds": 2}).join_rounds == 2
    ctx = CylonContext(COMM, task_id="t", options={"join_bucket_rows": 5})
    assert ctx.options.engine == EngineOptions(join_rounds=7, join_kernel="acero", join_bucket_rows=5)
    monkeypatch.setenv(ENGINE_ENV["max_message_bytes"], "4")
    with pytest.raises(OptionError, match="environment variable PARSL_RCYLON_MAX_MESSAGE_BYTES=4: expected an "
                                          "integer between 8"):
        EngineOptions.resolve()


def _join_log(caplog, left, right):
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="parsl_rcylon.engine.join"):
        out = engine.join(COMM, left, right, on="k")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("join:")]
    assert len(lines) == 1, lines
    return out, lines[0]


def test_engine_reads_the_environment_on_each_call(monkeypatch, caplog):
    """Variables set after import, and changed between calls, take effect on the next operation."""
    left = pa.table({"k": list(range(10_000)), "v": list(range(10_000))})
    right = pa.table({"k": list(range(0, 20_000, 2)), "w": list(range(10_000))})
    monkeypatch.setenv(ENGINE_ENV["join_kernel"], "acero")
    monkeypatch.setenv(ENGINE_ENV["join_bucket_rows"], "1000")
    monkeypatch.setenv(ENGINE_ENV["join_rounds"], "3")
    out, line = _join_log(caplog, left, right)
    assert "10 bucket(s) in 3 round(s)" in line and "acero" in line
    assert out.num_rows == 5_000
    monkeypatch.setenv(ENGINE_ENV["join_bucket_rows"], "5000")
    monkeypatch.setenv(ENGINE_ENV["join_rounds"], "1")
    out, line = _join_log(caplog, left, right)
    assert "2 bucket(s) in 1 round(s)" in line
    assert out.num_rows == 5_000
    monkeypatch.setenv(ENGINE_ENV["join_rounds"], "none")
    with pytest.raises(engine.InvalidArgumentError, match="PARSL_RCYLON_JOIN_ROUNDS='none'"):
        engine.join(COMM, left, right, on="k")


def test_explicit_engine_options_win(monkeypatch, caplog):
    monkeypatch.setenv(ENGINE_ENV["join_kernel"], "acero")
    monkeypatch.setenv(ENGINE_ENV["join_bucket_rows"], "1000")
    left = pa.table({"k": list(range(4_000))})
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="parsl_rcylon.engine.join"):
        engine.join(COMM, left, left, on="k", options=EngineOptions(join_kernel="acero", join_bucket_rows=0))
    assert any("1 bucket(s) in 1 round(s)" in r.getMessage() for r in caplog.records)


def test_importing_tables_and_engine_does_not_start_mpi():
    code = ("import sys, parsl_rcylon.table, parsl_rcylon.engine, parsl_rcylon.options; "
            "assert 'mpi4py.MPI' not in sys.modules, 'mpi4py.MPI imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
