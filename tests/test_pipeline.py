"""The engine through the executor: a join/sort/groupby pipeline on the session's pilot, checked against pyarrow."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from parsl import python_app

from parsl_rcylon import TableRef, cylon_app
from parsl_rcylon.engine.errors import MissingColumnError

pytestmark = pytest.mark.integration

ROWS = 60_000


def _table(seed: int, rows: int, keys: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    key = rng.integers(0, keys, rows)
    return pa.table({"key": key, "v": rng.random(rows),
                     "tag": pa.array([f"t{k % 7}" for k in key]).dictionary_encode().cast(pa.string())})


@cylon_app(ranks=2)
def generate(ctx, seed: int, rows: int, keys: int) -> pa.Table:
    whole = _table(seed, rows, keys)  # every rank builds the same table and keeps its slice
    share = rows // ctx.size
    return whole.slice(ctx.rank * share, share if ctx.rank < ctx.size - 1 else rows - ctx.rank * share)


@cylon_app(ranks=3)
def join(ctx, left: pa.Table, right: pa.Table) -> pa.Table:
    return ctx.join(left, right, on="key", suffixes=("_l", "_r"))


@cylon_app(ranks=2)
def sort(ctx, table: pa.Table) -> pa.Table:
    return ctx.sort(table, ["key", "v_l", "v_r"])


@cylon_app(ranks=3)
def summarize(ctx, table: pa.Table) -> pa.Table:
    return ctx.groupby(table, ["tag_l"], [("v_r", "sum"), ("key", "count"), ("v_l", "max")])


@cylon_app(ranks=2)
def bad_join(ctx, left: pa.Table, right: pa.Table) -> pa.Table:
    right = right.drop_columns(["key"]) if ctx.rank == 1 else right
    return ctx.join(left, right, on="key")


@python_app
def count(ref: TableRef) -> int:
    return ref.read().num_rows


def _reference() -> tuple:
    left, right = _table(1, ROWS, ROWS // 4), _table(2, ROWS, ROWS // 4)
    joined = left.join(right, keys="key", join_type="inner", left_suffix="_l", right_suffix="_r")
    ordered = joined.sort_by([("key", "ascending"), ("v_l", "ascending"), ("v_r", "ascending")])
    grouped = joined.group_by("tag_l").aggregate([("v_r", "sum"), ("key", "count"), ("v_l", "max")])
    return ordered, grouped


def test_join_sort_groupby_pipeline_matches_pyarrow(rcylon):
    left, right = generate(1, ROWS, ROWS // 4), generate(2, ROWS, ROWS // 4)
    joined = join(left, right)
    ordered = sort(joined)
    grouped = summarize(joined)
    expected_order, expected_groups = _reference()

    ref = ordered.result(timeout=300)
    assert isinstance(ref, TableRef) and ref.num_partitions == 2
    got = ref.read()
    assert got.num_rows == expected_order.num_rows > ROWS  # duplicate keys: the join grows
    assert got.select(expected_order.column_names).equals(expected_order.combine_chunks())
    assert count(joined).result(timeout=120) == expected_order.num_rows

    groups = grouped.result(timeout=300).read().sort_by("tag_l")
    want = expected_groups.sort_by("tag_l")
    assert groups.column("tag_l").equals(want.column("tag_l"))
    assert groups.column("key_count").equals(want.column("key_count"))
    assert groups.column("v_l_max").equals(want.column("v_l_max"))
    assert pc.all(pc.less(pc.abs(pc.subtract(groups.column("v_r_sum"), want.column("v_r_sum"))), 1e-6)).as_py()


def test_bad_input_on_one_rank_fails_the_task_on_every_rank_without_hanging(rcylon):
    left, right = generate(3, 1000, 100), generate(4, 1000, 100)
    fut = bad_join(left, right)
    with pytest.raises(MissingColumnError, match="key") as info:
        fut.result(timeout=120)
    assert "rank 1" in str(info.value)
    # the worker is still whole: the next task runs
    assert count(generate(5, 100, 10)).result(timeout=120) == 100
