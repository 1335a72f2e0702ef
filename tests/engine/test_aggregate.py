"""The local group-by kernel (dense bincount for integer keys) against pyarrow's hash aggregation."""
from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsl_rcylon.engine import aggregate as agg_module
from parsl_rcylon.engine.aggregate import aggregate

SPECS = [("v", "sum"), ("v", "mean"), ("v", "count"), ([], "count_all"), ("w", "sum"), ("w", "mean"),
         ("w", "count")]


def assert_same_groups(got: pa.Table, want: pa.Table, key: str) -> None:
    assert got.schema == want.schema
    got, want = got.sort_by(key), want.sort_by(key)
    for name in want.column_names:
        for a, b in zip(got.column(name).to_pylist(), want.column(name).to_pylist(), strict=True):
            if isinstance(b, float):
                assert a is not None and (math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
                                          or (math.isnan(a) and math.isnan(b))), (name, a, b)
            else:
                assert a == b, (name, a, b)


@st.composite
def tables(draw: Any) -> Dict[str, Any]:
    return {"n": draw(st.integers(1, 400)), "seed": draw(st.integers(0, 2**32 - 1)),
            "key": draw(st.sampled_from(["int64", "int8", "uint64", "uint8", "int32", "sparse"])),
            "value": draw(st.sampled_from(["int64", "int32", "uint8", "huge"])),
            "null_rate": draw(st.sampled_from([0.0, 0.3, 1.0]))}


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_aggregate_is_pyarrows_group_by(case: Dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    n, kind = case["n"], case["key"]
    if kind == "uint64":  # the top of the range: offsets in wrap-around arithmetic
        keys = pa.array(rng.integers(2**64 - 50, 2**64 - 1, n, dtype=np.uint64, endpoint=True))
    elif kind == "int8":
        keys = pa.array(rng.integers(-128, 127, n, endpoint=True).astype(np.int8))
    elif kind == "sparse":  # a range far beyond the rows: pyarrow's kernel
        keys = pa.array(rng.integers(-2**60, 2**60, n))
    else:
        keys = pa.array(rng.integers(-20, 20, n)).cast(kind, safe=False)
    v = pa.array(rng.normal(size=n), mask=rng.random(n) < case["null_rate"])
    if case["value"] == "huge":  # integer sums past 2**53: pyarrow's kernel
        w = pa.array(rng.integers(2**60, 2**62, n), mask=rng.random(n) < case["null_rate"])
    else:
        w = pa.array(rng.integers(-100, 100, n), mask=rng.random(n) < case["null_rate"]).cast(case["value"],
                                                                                            safe=False)
    table = pa.table({"k": keys, "v": v, "w": w})
    if n > 3:
        table = pa.concat_tables([table.slice(0, n // 2), table.slice(n // 2)]).slice(1)
    assert_same_groups(aggregate(table, ["k"], SPECS), table.group_by("k").aggregate(SPECS), "k")


def test_dense_kernel_runs_only_where_it_applies() -> None:
    table = pa.table({"k": [3, 1, 3, 2], "v": [1.0, 2.0, None, 4.0], "s": ["a", "b", "c", "d"]})
    assert agg_module._dense(table, ["k"], [("v", "sum"), ("v", "mean")]) is not None
    assert agg_module._dense(table, ["k"], [("v", "min")]) is None  # not a sum, mean or count
    assert agg_module._dense(table, ["s"], [("v", "sum")]) is None  # not an integer key
    assert agg_module._dense(table, ["k", "s"], [("v", "sum")]) is None
    with_null_key = table.set_column(0, "k", pa.array([3, None, 3, 2]))
    assert agg_module._dense(with_null_key, ["k"], [("v", "sum")]) is None  # null keys: pyarrow
    wide = table.set_column(0, "k", pa.array([0, 10**9, 0, 5]))
    assert agg_module._dense(wide, ["k"], [("v", "sum")]) is None  # range far beyond the rows
    out = aggregate(table, ["k"], [("v", "sum"), ("v", "count")])
    assert out.to_pydict() == {"k": [1, 2, 3], "v_sum": [2.0, 4.0, 1.0], "v_count": [1, 1, 1]}


def test_partials_of_pieces_combine_to_pyarrows_result() -> None:
    # The partial plan without MPI: each piece aggregated alone, the partials
    # concatenated (as the shuffle would bring them) and merged.
    from parsl_rcylon.engine.groupby import (
        _assemble,
        _final_from_partials,
        _partial_specs,
        _prepare_partials,
        _pyarrow_output,
        _rename,
        parse_aggregations,
    )

    rng = np.random.default_rng(11)
    n = 3000
    table = pa.table({"k": rng.integers(0, 40, n), "v": pa.array(rng.normal(size=n), mask=rng.random(n) < 0.1),
                      "w": pa.array(rng.integers(-9, 9, n)).cast(pa.int32()),
                      "s": pa.array(rng.choice(["a", "b", "c"], n))})
    aggs = [("v", "sum"), ("v", "mean"), ("w", "mean"), ("v", "var"), ("w", "std"), ("v", "count"),
            ([], "count_all"), ("w", "max")]
    for keys in (["k"], ["s"], ["k", "s"]):
        parsed = parse_aggregations(aggs)
        probe = _pyarrow_output(table.slice(0, 0), keys, parsed)
        specs = _partial_specs(parsed, table.schema)
        pieces = []
        for lo, hi in ((0, 1000), (1000, 1700), (1700, n)):
            local = aggregate(table.slice(lo, hi - lo), keys, specs)
            local = _rename(local, keys, [f"__p{j}" for j in range(len(specs))])
            pieces.append(_prepare_partials(local, parsed))
        # v's mean ships as v's sum, which its sum aggregation also ships: one column for both.
        assert "mean" not in parsed[1].partial and parsed[1].partial["sum"] == parsed[0].partial["value"]
        got = _assemble(_final_from_partials(pa.concat_tables(pieces), keys, parsed, False, False), probe)
        want = _pyarrow_output(table, keys, parsed)
        key = "k" if keys == ["k"] else "s"
        if len(keys) > 1:
            got = got.append_column("ks", pc.binary_join_element_wise(pc.cast(got["k"], pa.string()), got["s"], "/"))
            want = want.append_column("ks", pc.binary_join_element_wise(pc.cast(want["k"], pa.string()),
                                                                         want["s"], "/"))
            key = "ks"
        assert_same_groups(got, want, key)
