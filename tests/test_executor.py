"""The executor end to end on a real local pilot: ranks, communicators, DAGs, errors."""
from __future__ import annotations

import time
import traceback

import pytest
from parsl import bash_app, python_app
from parsl.executors.errors import InvalidResourceSpecification

from parsl_rcylon import cylon_app

from .conftest import SESSION_RANKS

pytestmark = pytest.mark.integration


class PipelineError(Exception):
    """A user-defined exception type that must survive the trip back."""


@cylon_app(ranks=1)
def describe(ctx, sleep: float = 0.0):
    t0 = time.time()
    total = ctx.comm.allreduce(1)  # only this task's ranks take part
    time.sleep(sleep)
    ranks = ctx.comm.allgather(ctx.rank)
    return {"size": ctx.size, "total": total, "ranks": ranks, "start": t0, "end": time.time()}


@python_app
def make_numbers(n):
    return list(range(n))


@cylon_app(ranks=2)
def scatter_sum(ctx, numbers):
    mine = numbers[ctx.rank::ctx.size]
    return ctx.comm.allreduce(sum(mine))


@cylon_app(ranks=3)
def scale(ctx, value, factor):
    # each rank contributes a share; rank 0's return value is the result
    share = ctx.comm.allgather(value * factor // ctx.size if ctx.rank else value * factor - 2 * (value * factor // 3))
    return sum(share)


@cylon_app(ranks=3)
def fail_on(ctx, rank, exc_type=ValueError):
    ctx.comm.Barrier()
    if ctx.rank == rank:
        raise exc_type(f"bad input on purpose (rank {ctx.rank})")
    return ctx.rank


@cylon_app(ranks=1)
def return_unpicklable(ctx):
    return (i for i in range(3))  # generators pickle with neither pickle nor dill


def test_tasks_of_1_2_3_ranks_run_side_by_side(rcylon):
    futs = [describe(sleep=2.0, parsl_resource_specification={"ranks": n}) for n in (1, 2, 3)]
    results = [f.result(timeout=120) for f in futs]
    for n, res in zip((1, 2, 3), results, strict=True):
        assert res["size"] == n
        assert res["total"] == n, "allreduce over ctx.comm must only see the task's own ranks"
        assert res["ranks"] == list(range(n))
    latest_start = max(r["start"] for r in results)
    earliest_end = min(r["end"] for r in results)
    assert latest_start < earliest_end, f"tasks did not overlap: {results}"


def test_one_rank_task_gets_a_private_communicator(rcylon):
    res = describe().result(timeout=60)
    assert res == {**res, "size": 1, "total": 1, "ranks": [0]}


def test_dag_python_then_2_ranks_then_3_ranks(rcylon):
    numbers = make_numbers(101)
    total = scatter_sum(numbers)
    scaled = scale(total, 3)
    assert total.result(timeout=120) == sum(range(101))
    assert scaled.result(timeout=120) == 3 * sum(range(101))


@pytest.mark.parametrize("rank", [0, 2])
def test_exception_reaches_caller_with_type_traceback_and_rank(rcylon, rank):
    fut = fail_on(rank, PipelineError)
    with pytest.raises(PipelineError, match=f"bad input on purpose \\(rank {rank}\\)") as info:
        fut.result(timeout=60)
    err = info.value
    assert err.rank == rank
    text = "".join(traceback.format_exception(err))
    assert "fail_on" in text, "the remote traceback must show the user's function"
    assert f"raised on rank {rank} of 3" in text


def test_builtin_exception_type_is_kept(rcylon):
    with pytest.raises(KeyError):
        fail_on(1, KeyError).result(timeout=60)


def test_worker_stays_usable_after_failures(rcylon):
    for rank in range(3):
        with pytest.raises(ValueError):
            fail_on(rank).result(timeout=60)
    assert scatter_sum([1, 2, 3]).result(timeout=60) == 6


def test_unserializable_return_value_is_a_clear_error(rcylon):
    with pytest.raises(TypeError, match="return value of return_unpicklable cannot be serialized"):
        return_unpicklable().result(timeout=60)


def test_oversized_request_fails_at_call_time(rcylon):
    t0 = time.monotonic()
    with pytest.raises(InvalidResourceSpecification, match=f"needs {SESSION_RANKS + 1} rank"):
        describe(parsl_resource_specification={"ranks": SESSION_RANKS + 1})
    assert time.monotonic() - t0 < 5


@cylon_app(ranks=2, cores_per_rank=2)
def two_cores_each(ctx, seconds):
    time.sleep(seconds)
    return {"size": ctx.size, "cores": ctx.cores}


def test_cores_per_rank_reserves_ranks_and_tells_the_task(rcylon):
    fut = two_cores_each(3)
    deadline = time.monotonic() + 60
    while rcylon.status()["default"]["busy"] < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rcylon.status()["default"]["busy"] == 4, "2 ranks of 2 cores hold 4 one-core worker ranks"
    assert fut.result(timeout=60) == {"size": 2, "cores": 2}
    assert describe().result(timeout=60)["size"] == 1


def test_cores_no_host_has_fail_at_call_time(rcylon):
    with pytest.raises(InvalidResourceSpecification, match=f"{SESSION_RANKS + 1} core"):
        describe(parsl_resource_specification={"cores_per_rank": SESSION_RANKS + 1})


@pytest.mark.parametrize("spec, match", [
    ({"ranks": 0}, "ranks must be an integer >= 1"),
    ({"ranks": -1}, "ranks must be an integer >= 1"),
    ({"colour": "red"}, "unknown key"),
    ({"pool": "nope"}, "no pool named 'nope'"),
])
def test_invalid_requests_fail_at_call_time(rcylon, spec, match):
    with pytest.raises(InvalidResourceSpecification, match=match):
        describe(parsl_resource_specification=spec)


def test_plain_python_app_cannot_ask_for_ranks(rcylon):
    @python_app
    def plain(parsl_resource_specification=None):
        return 1

    with pytest.raises(InvalidResourceSpecification, match="use @cylon_app"):
        plain(parsl_resource_specification={"ranks": 2}).result(timeout=60)


def test_bash_app_runs_in_the_pilot(rcylon, tmp_path):
    out = tmp_path / "hello.out"

    @bash_app
    def hello(word, stdout=None):
        return f"echo hello {word}; echo rank=${{RP_RANK:-none}}"

    assert hello("pilot", stdout=str(out)).result(timeout=60) == 0
    assert out.read_text().splitlines()[0] == "hello pilot"


def test_bash_app_failure_is_reported(rcylon):
    from parsl.app.errors import BashExitFailure

    @bash_app
    def broken():
        return "exit 3"

    with pytest.raises(BashExitFailure, match="3"):
        broken().result(timeout=60)


def test_status_shows_the_pool(rcylon):
    view = rcylon.status()
    assert view["default"]["ranks"] == SESSION_RANKS
    assert view["default"]["idle"] + view["default"]["busy"] == SESSION_RANKS


def test_many_small_tasks_complete(rcylon):
    futs = [make_numbers(i) for i in range(100)]
    assert [len(f.result(timeout=120)) for f in futs] == list(range(100))


@cylon_app(ranks=2)
def make_table(ctx, n):
    import pyarrow as pa

    return pa.table({"v": list(range(ctx.rank, n, ctx.size))})


@cylon_app(ranks=2, keep=False)
def make_scratch_table(ctx, n):
    import pyarrow as pa

    return pa.table({"v": list(range(ctx.rank, n, ctx.size))})


def test_tables_are_counted_per_stage_and_released_unless_kept(rcylon):
    from pathlib import Path

    kept = make_table(1000).result(timeout=120)
    scratch = make_scratch_table(1000).result(timeout=120)
    assert (kept.num_rows, scratch.num_rows) == (1000, 1000)
    summary = rcylon.table_summary()
    assert summary["make_table"]["rows"] >= 1000 and summary["make_table"]["bytes"] > 0
    assert summary["make_scratch_table"]["rows"] >= 1000
    rcylon.release_tables()
    assert not Path(scratch.path).exists(), "keep=False tables are deleted"
    assert Path(kept.path).is_dir() and kept.read().num_rows == 1000
