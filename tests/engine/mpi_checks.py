"""Engine checks that run on every rank: ``mpiexec -n N python mpi_checks.py --out result.json``.

Each case runs hypothesis with a fixed seed on all ranks, so every rank draws
the same whole table; each rank passes its slice to the engine, rank 0
gathers the result (with plain pickled mpi4py calls, not the engine's own
gather) and compares it with single-process pyarrow on the whole table.
The verdict of every example is agreed by all ranks before hypothesis moves
on, so the ranks stay in step even when an example fails.  Rank 0 writes one
``{"case": {"ok": bool, "error": str, "seconds": float}}`` JSON file.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import sys
import time
import traceback
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mpi4py import MPI

from parsl_rcylon import engine
from parsl_rcylon.engine import transport
from parsl_rcylon.options import ENGINE_ENV, EngineOptions

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
EXAMPLES = int(os.environ.get("ENGINE_CHECK_EXAMPLES", "25"))
CASES: Dict[str, Callable[[], None]] = {}


def case(fn: Callable[[], None]) -> Callable[[], None]:
    CASES[fn.__name__] = fn
    return fn


def prop_settings(examples: int = EXAMPLES) -> settings:
    # No shrinking and no timing-based health checks: both could make ranks
    # diverge in which examples they run, and then the collectives would hang.
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
        print_blob=False,
    )


# -- agreement helpers ---------------------------------------------------------------------------


def agree_ok(ok: bool, message: str = "") -> None:
    """Raise AssertionError on every rank if the check failed on any rank."""
    results = COMM.allgather((ok, message))
    failed = [f"rank {r}: {m}" for r, (o, m) in enumerate(results) if not o]
    if failed:
        raise AssertionError("; ".join(failed))


def run_on_all(fn: Callable[[], Any]) -> Any:
    """Call the engine; if any rank raised, raise on all (keeps hypothesis in step)."""
    try:
        result, error = fn(), ""
    except Exception as exc:  # noqa: BLE001
        result, error = None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    agree_ok(not error, error)
    return result


def check_on_root(compare: Callable[[], Optional[str]]) -> None:
    """Run ``compare`` on rank 0 (returns an error message or None); agree on it."""
    message = None
    if RANK == 0:
        try:
            message = compare()
        except Exception as exc:  # noqa: BLE001
            message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    message = COMM.bcast(message, root=0)
    agree_ok(message is None, message or "")


def gather_parts(table: pa.Table) -> Optional[List[pa.Table]]:
    return COMM.gather(table, root=0)


# -- data ----------------------------------------------------------------------------------------

KEY_TYPES = {
    "int64": (pa.int64(), st.integers(-6, 12)),
    "int32": (pa.int32(), st.integers(-3, 5)),
    "uint8": (pa.uint8(), st.integers(0, 6)),
    "string": (pa.string(), st.sampled_from(["", "a", "b", "ab", "ba", "\u00df", "x" * 30, "key-7"])),
    "large_string": (pa.large_string(), st.sampled_from(["", "q", "qq", "r"])),
    "timestamp": (pa.timestamp("us"), st.integers(0, 6).map(lambda d: dt.datetime(2024, 1, 1) + dt.timedelta(days=d))),
    "date32": (pa.date32(), st.integers(0, 6).map(lambda d: dt.date(2024, 3, 1) + dt.timedelta(days=d))),
}
VALUE_TYPES = {
    "float64": (pa.float64(), st.floats(-1e3, 1e3, allow_nan=False, width=32)),
    "int64": (pa.int64(), st.integers(-1000, 1000)),
    "string": (pa.string(), st.text(alphabet="abcxyz", max_size=5)),
}


def nullable(strategy: st.SearchStrategy, null_frequency: int = 6) -> st.SearchStrategy:
    return st.one_of(st.none(), *[strategy] * (null_frequency - 1)) if null_frequency else strategy


@st.composite
def assignments(draw: Any, n: int) -> List[int]:
    """Which rank holds each row: random, all on one rank, or some ranks empty."""
    mode = draw(st.sampled_from(["random", "one", "skip"]))
    if mode == "one":
        target = draw(st.integers(0, SIZE - 1))
        return [target] * n
    if mode == "skip" and SIZE > 1:
        allowed = draw(st.lists(st.integers(0, SIZE - 1), min_size=1, max_size=SIZE, unique=True))
        return draw(st.lists(st.sampled_from(sorted(allowed)), min_size=n, max_size=n))
    return draw(st.lists(st.integers(0, SIZE - 1), min_size=n, max_size=n))


@st.composite
def tables(draw: Any, key_types: List[str], value_cols: Dict[str, str], max_rows: int = 40,
           key_names: Optional[List[str]] = None, nulls: bool = True) -> Dict[str, Any]:
    """A whole table (as columns) and the rank of each row."""
    n = draw(st.integers(0, max_rows))
    names = key_names or [f"k{i}" for i in range(len(key_types))]
    data: Dict[str, pa.Array] = {}
    for name, kt in zip(names, key_types, strict=True):
        dtype, values = KEY_TYPES[kt]
        data[name] = pa.array(draw(st.lists(nullable(values, 6 if nulls else 0), min_size=n, max_size=n)), dtype)
    for name, vt in value_cols.items():
        dtype, values = VALUE_TYPES[vt]
        data[name] = pa.array(draw(st.lists(nullable(values, 4), min_size=n, max_size=n)), dtype)
    table = pa.table(data) if data else pa.table({"dummy": pa.array([], pa.int64())})
    return {"table": table, "ranks": draw(assignments(n))}


def split(spec: Dict[str, Any]) -> tuple:
    """(this rank's partition, the whole table in rank order)."""
    table, ranks = spec["table"], np.asarray(spec["ranks"], dtype=np.int64)
    parts = [table.filter(pa.array(ranks == r)) if len(ranks) else table.slice(0, 0) for r in range(SIZE)]
    return parts[RANK], pa.concat_tables(parts)


def norm(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def rows(table: pa.Table) -> List[tuple]:
    return [tuple(norm(v) for v in row.values()) for row in table.to_pylist()]


def same_multiset(got: pa.Table, want: pa.Table) -> Optional[str]:
    if got.schema.names != want.schema.names:
        return f"column names {got.schema.names} != {want.schema.names}"
    if [f.type for f in got.schema] != [f.type for f in want.schema]:
        return f"types {got.schema} != {want.schema}"
    a, b = Counter(rows(got)), Counter(rows(want))
    if a != b:
        return f"rows differ: extra {list((a - b).items())[:5]}, missing {list((b - a).items())[:5]}"
    return None


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return a == b


# -- cases ---------------------------------------------------------------------------------------

HOWS = ["inner", "left", "right", "outer", "semi", "anti"]
PA_HOW = {"inner": "inner", "left": "left outer", "right": "right outer", "outer": "full outer",
          "semi": "left semi", "anti": "left anti"}


@st.composite
def join_inputs(draw: Any) -> Dict[str, Any]:
    key_types = draw(st.lists(st.sampled_from(sorted(KEY_TYPES)), min_size=1, max_size=2))
    renamed = draw(st.booleans())
    left = draw(tables(key_types, {"v": "float64", "s": "string"}))
    right_keys = [f"r{i}" for i in range(len(key_types))] if renamed else None
    right = draw(tables(key_types, {"v": "int64", "w": "float64"}, key_names=right_keys))
    return {"left": left, "right": right, "how": draw(st.sampled_from(HOWS)), "renamed": renamed,
            "nkeys": len(key_types)}


def check_join(parts: Optional[List[pa.Table]], whole_left: pa.Table, whole_right: pa.Table, lk: List[str],
               rk: List[str], how: str) -> None:
    """Rank 0: the gathered join result equals pyarrow's join of the whole tables, as a multiset."""

    def compare() -> Optional[str]:
        want = whole_left.join(whole_right, keys=lk, right_keys=rk, join_type=PA_HOW[how],
                               left_suffix=None, right_suffix="_right")
        return same_multiset(pa.concat_tables(parts), want)

    check_on_root(compare)


@case
def join() -> None:
    @prop_settings()
    @given(join_inputs())
    def prop(spec: Dict[str, Any]) -> None:
        left, whole_left = split(spec["left"])
        right, whole_right = split(spec["right"])
        lk = [f"k{i}" for i in range(spec["nkeys"])]
        rk = [f"r{i}" for i in range(spec["nkeys"])] if spec["renamed"] else lk
        if spec["renamed"]:
            kwargs = {"left_on": lk, "right_on": rk}
        else:
            kwargs = {"on": lk if len(lk) > 1 else lk[0]}
        parts = gather_parts(run_on_all(lambda: engine.join(COMM, left, right, how=spec["how"], **kwargs)))
        check_join(parts, whole_left, whole_right, lk, rk, spec["how"])

    prop()


@contextlib.contextmanager
def engine_env(**values: Any) -> Iterator[None]:
    """Engine options set through their environment variables (read when an operation runs); None skips one."""
    names = {ENGINE_ENV[key]: value for key, value in values.items() if value is not None}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(value) for name, value in names.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def bucketing(bucket_rows: Optional[int] = None, rounds: Optional[int] = None, kernel: Optional[str] = None
              ) -> contextlib.AbstractContextManager:
    """The join with ``bucket_rows`` rows per bucket (both kernels) in ``rounds`` rounds; None keeps the default."""
    return engine_env(join_bucket_rows=bucket_rows, join_duckdb_bucket_rows=bucket_rows, join_rounds=rounds,
                      join_kernel=kernel)


def _join_with(bucket_rows: int, kernel: str, rounds: int) -> None:
    with bucketing(bucket_rows, rounds, kernel):
        CASES["join"]()


@case
def join_bucketed() -> None:
    """Many local buckets per rank (tiny bucket size), exchanged in 3 rounds, must not change the result."""
    _join_with(3, "auto", 3)


@case
def join_acero() -> None:
    """pyarrow's Acero kernel (the default where DuckDB is not installed), many buckets in 2 rounds."""
    _join_with(3, "acero", 2)


@st.composite
def sort_inputs(draw: Any) -> Dict[str, Any]:
    key_types = draw(st.lists(st.sampled_from(sorted(KEY_TYPES) + ["float"]), min_size=1, max_size=2))
    table_types = [k if k != "float" else "int64" for k in key_types]
    spec = draw(tables(table_types, {"v": "float64", "i": "int64"}))
    if "float" in key_types:  # float keys with NaN, to check NaN/null placement
        idx = key_types.index("float")
        n = spec["table"].num_rows
        floats = draw(st.lists(st.one_of(st.none(), st.just(float("nan")), st.floats(-3, 3, width=16)),
                               min_size=n, max_size=n))
        spec["table"] = spec["table"].set_column(idx, f"k{idx}", pa.array(floats, pa.float64()))
    style = draw(st.sampled_from(["name", "names", "tuples"]))
    orders = draw(st.lists(st.booleans(), min_size=len(key_types), max_size=len(key_types)))
    return {"spec": spec, "nkeys": len(key_types), "style": style, "ascending": orders,
            "nulls_last": draw(st.booleans())}


@case
def sort() -> None:
    @prop_settings()
    @given(sort_inputs())
    def prop(args: Dict[str, Any]) -> None:
        mine, whole = split(args["spec"])
        names = [f"k{i}" for i in range(args["nkeys"])]
        asc = args["ascending"]
        if args["style"] == "name" or args["nkeys"] == 1:
            by: Any = names[0] if args["style"] == "name" else names
            ascending: Any = asc[0] if args["style"] == "name" else asc
            names, asc = names[:1] if args["style"] == "name" else names, asc[:1] if args["style"] == "name" else asc
        elif args["style"] == "names":
            by, ascending = names, asc
        else:
            by, ascending = [(n, "ascending" if a else "descending") for n, a in zip(names, asc, strict=True)], True
        out = run_on_all(lambda: engine.sort(COMM, mine, by, ascending=ascending, nulls_last=args["nulls_last"]))
        parts = gather_parts(out)

        def compare() -> Optional[str]:
            placement = "at_end" if args["nulls_last"] else "at_start"
            keys = [(n, "ascending" if a else "descending", placement) for n, a in zip(names, asc, strict=True)]
            want = whole.take(pa.compute.sort_indices(whole, sort_keys=keys))
            got = pa.concat_tables(parts)
            if rows(got) != rows(want):
                return f"order differs:\n got  {rows(got)[:12]}\n want {rows(want)[:12]}"
            return None

        check_on_root(compare)

    prop()


FIXED_WIDTH = {
    "int64": (pa.int64(), st.integers(-6, 12)),
    "uint8": (pa.uint8(), st.integers(0, 6)),
    "int16": (pa.int16(), st.integers(-300, 300)),
    "float32": (pa.float32(), st.one_of(st.just(float("nan")), st.floats(-3, 3, width=32))),
    "timestamp": KEY_TYPES["timestamp"],
    "date32": KEY_TYPES["date32"],
    "duration": (pa.duration("ms"), st.integers(-5, 5).map(lambda s: dt.timedelta(seconds=s))),
}


@st.composite
def fixed_width_sort_inputs(draw: Any) -> Dict[str, Any]:
    """Tables of fixed-width columns without nulls: the sort's columnar exchange path."""
    types = draw(st.lists(st.sampled_from(sorted(FIXED_WIDTH)), min_size=1, max_size=4))
    n = draw(st.integers(0, 60))
    data = {f"c{i}": pa.array(draw(st.lists(FIXED_WIDTH[t][1], min_size=n, max_size=n)), FIXED_WIDTH[t][0])
            for i, t in enumerate(types)}
    nkeys = draw(st.integers(1, len(types)))
    return {"spec": {"table": pa.table(data), "ranks": draw(assignments(n))},
            "by": [(f"c{i}", draw(st.sampled_from(["ascending", "descending"]))) for i in range(nkeys)]}


@case
def sort_fixed_width() -> None:
    @prop_settings()
    @given(fixed_width_sort_inputs())
    def prop(args: Dict[str, Any]) -> None:
        mine, whole = split(args["spec"])
        assert transport.columnar_exchangeable(mine)
        parts = gather_parts(run_on_all(lambda: engine.sort(COMM, mine, args["by"])))

        def compare() -> Optional[str]:
            want = whole.take(pa.compute.sort_indices(whole, sort_keys=[(n, o, "at_end") for n, o in args["by"]]))
            got = pa.concat_tables(parts)
            if not got.schema.equals(whole.schema) or rows(got) != rows(want):
                return f"order differs:\n got  {got.schema} {rows(got)[:12]}\n want {rows(want)[:12]}"
            return None

        check_on_root(compare)

    prop()


@st.composite
def fixed_width_tables(draw: Any, key_types: List[str], prefix: str) -> Dict[str, Any]:
    n = draw(st.integers(0, 50))
    values = draw(st.lists(st.sampled_from(sorted(FIXED_WIDTH)), min_size=0, max_size=2))
    columns = {f"{prefix}{i}": t for i, t in enumerate(key_types)}
    columns.update({f"{prefix}v{i}": t for i, t in enumerate(values)})
    data = {name: pa.array(draw(st.lists(FIXED_WIDTH[t][1], min_size=n, max_size=n)), FIXED_WIDTH[t][0])
            for name, t in columns.items()}
    return {"table": pa.table(data), "ranks": draw(assignments(n))}


@case
def join_fixed_width() -> None:
    """Fixed-width columns without nulls take the columnar exchange; few and many buckets, 1-4 rounds."""

    @prop_settings()
    @given(st.data())
    def prop(data: Any) -> None:
        key_types = data.draw(st.lists(st.sampled_from(["int64", "uint8", "int16", "timestamp", "date32"]),
                                       min_size=1, max_size=2))
        left, whole_left = split(data.draw(fixed_width_tables(key_types, "l")))
        right, whole_right = split(data.draw(fixed_width_tables(key_types, "r")))
        how = data.draw(st.sampled_from(HOWS))
        bucket_rows, rounds = data.draw(st.sampled_from([3, None])), data.draw(st.sampled_from([1, 3, 4]))
        lk, rk = [f"l{i}" for i in range(len(key_types))], [f"r{i}" for i in range(len(key_types))]
        assert transport.columnar_exchangeable(left) and transport.columnar_exchangeable(right)
        with bucketing(bucket_rows, rounds):
            parts = gather_parts(run_on_all(lambda: engine.join(COMM, left, right, left_on=lk, right_on=rk,
                                                                how=how)))
        check_join(parts, whole_left, whole_right, lk, rk, how)

    prop()


AGGS = [("v", "sum"), ("v", "mean"), ("v", "min"), ("i", "max"), ("v", "var"), ("i", "std"), ("i", "sum"),
        ("v", "count"), ("s", "count_distinct"), ("v", "first"), ("i", "last"), ([], "count_all"),
        ("i", "mean"), ("s", "min"), ("v", "stddev")]
PA_FUNC = {"var": "variance", "std": "stddev"}


@st.composite
def groupby_inputs(draw: Any) -> Dict[str, Any]:
    key_types = draw(st.lists(st.sampled_from(sorted(KEY_TYPES)), min_size=1, max_size=2))
    spec = draw(tables(key_types, {"v": "float64", "i": "int64", "s": "string"}))
    aggs = draw(st.lists(st.sampled_from(AGGS), min_size=1, max_size=5, unique_by=lambda a: (str(a[0]), a[1])))
    return {"spec": spec, "nkeys": len(key_types), "aggs": aggs}


@case
def groupby() -> None:
    @prop_settings()
    @given(groupby_inputs())
    def prop(args: Dict[str, Any]) -> None:
        mine, whole = split(args["spec"])
        keys = [f"k{i}" for i in range(args["nkeys"])]
        out = run_on_all(lambda: engine.groupby(COMM, mine, keys, args["aggs"]))
        parts = gather_parts(out)

        def compare() -> Optional[str]:
            canon = [(c, PA_FUNC.get(f, f)) for c, f in args["aggs"]]
            want = whole.group_by(keys, use_threads=False).aggregate(canon)
            names = keys + [(f"{c}_{f}" if c else f) for c, f in args["aggs"]]
            want = want.rename_columns(names)
            got = pa.concat_tables(parts)
            if got.schema.names != want.schema.names:
                return f"names {got.schema.names} != {want.schema.names}"
            if [f.type for f in got.schema] != [f.type for f in want.schema]:
                return f"types {got.schema} != {want.schema}"
            by_key = {tuple(r[: len(keys)]): r for r in rows(want)}
            got_rows = rows(got)
            if len(got_rows) != len(by_key) or len({tuple(r[: len(keys)]) for r in got_rows}) != len(got_rows):
                return f"{len(got_rows)} groups (some repeated?) vs {len(by_key)}"
            for r in got_rows:
                ref = by_key.get(tuple(r[: len(keys)]))
                if ref is None or not all(close(a, b) for a, b in zip(r, ref, strict=True)):
                    return f"group {r} != {ref}"
            return None

        check_on_root(compare)

    prop()


@case
def unique() -> None:
    @prop_settings()
    @given(tables(["int32", "string"], {"v": "int64"}), st.sampled_from([None, ["k0"], "k1", ["k1", "v"]]))
    def prop(spec: Dict[str, Any], subset: Any) -> None:
        mine, whole = split(spec)
        out = run_on_all(lambda: engine.unique(COMM, mine, subset=subset))
        parts = gather_parts(out)

        def compare() -> Optional[str]:
            cols = whole.column_names if subset is None else ([subset] if isinstance(subset, str) else subset)
            seen, keep = set(), []
            for i, row in enumerate(whole.select(cols).to_pylist()):
                key = tuple(row.values())
                if key not in seen:
                    seen.add(key)
                    keep.append(i)
            return same_multiset(pa.concat_tables(parts), whole.take(pa.array(keep, pa.int64())))

        check_on_root(compare)

    prop()


@case
def shuffle() -> None:
    @prop_settings()
    @given(tables(["string", "int64"], {"v": "float64"}), st.sampled_from([["k0"], ["k1"], ["k0", "k1"]]))
    def prop(spec: Dict[str, Any], on: List[str]) -> None:
        mine, whole = split(spec)
        out = run_on_all(lambda: engine.shuffle(COMM, mine, on))
        parts = gather_parts(out)

        def compare() -> Optional[str]:
            problem = same_multiset(pa.concat_tables(parts), whole)
            if problem:
                return problem
            owner: Dict[tuple, int] = {}
            for rank, part in enumerate(parts):
                for row in part.select(on).to_pylist():
                    key = tuple(row.values())
                    if owner.setdefault(key, rank) != rank:
                        return f"key {key} on ranks {owner[key]} and {rank}"
            return None

        check_on_root(compare)

    prop()


@case
def collectives() -> None:
    @prop_settings()
    @given(tables(["string"], {"v": "int64"}), tables(["string"], {"v": "int64"}), st.integers(0, SIZE - 1))
    def prop(first: Dict[str, Any], second: Dict[str, Any], root: int) -> None:
        mine, whole = split(first)
        other, whole_other = split(second)
        total = run_on_all(lambda: engine.num_rows(COMM, mine))
        agree_ok(total == whole.num_rows, f"num_rows {total} != {whole.num_rows}")
        balanced = run_on_all(lambda: engine.rebalance(COMM, mine))
        both = run_on_all(lambda: engine.concat(COMM, [mine, other]))
        gathered = run_on_all(lambda: engine.gather(COMM, mine, root=root))
        agree_ok((gathered is None) == (RANK != root), f"gather returned {type(gathered)} on rank {RANK}")
        if RANK == root:
            agree_ok(rows(gathered) == rows(whole), "gather differs from the whole table")
        else:
            agree_ok(True)
        parts = gather_parts(balanced)
        concat_parts = gather_parts(both)

        def compare() -> Optional[str]:
            if rows(pa.concat_tables(parts)) != rows(whole):
                return "rebalance changed the rows or their order"
            counts = [p.num_rows for p in parts]
            if max(counts) - min(counts) > 1:
                return f"rebalance counts {counts}"
            return same_multiset(pa.concat_tables(concat_parts), pa.concat_tables([whole, whole_other]))

        check_on_root(compare)

    prop()


@case
def chunked_messages() -> None:
    """Exchanges above the message limit go as chunked point-to-point messages."""
    with engine_env(max_message_bytes=200):
        rng = np.random.default_rng(7 + RANK)
        n = 700 + 300 * RANK
        mine = pa.table({"k": rng.integers(0, 50, n), "s": pa.array([f"value-{x}" for x in rng.integers(0, 999, n)])})
        parts = gather_parts(mine)
        whole = pa.concat_tables(parts) if RANK == 0 else None
        sorted_parts = gather_parts(run_on_all(lambda: engine.sort(COMM, mine, ["k", "s"])))
        numbers = mine.select(["k"]).append_column("v", pa.array(rng.random(n)))  # the columnar exchange
        sorted_numbers = gather_parts(run_on_all(lambda: engine.sort(COMM, numbers, ["k", "v"])))
        all_numbers = gather_parts(numbers)
        joined = gather_parts(run_on_all(lambda: engine.join(COMM, mine, mine.rename_columns(["k", "t"]), on="k")))
        gathered = run_on_all(lambda: engine.gather(COMM, mine))

        def compare() -> Optional[str]:
            if rows(pa.concat_tables(sorted_parts)) != rows(whole.sort_by([("k", "ascending"), ("s", "ascending")])):
                return "chunked sort differs"
            want = pa.concat_tables(all_numbers).sort_by([("k", "ascending"), ("v", "ascending")])
            if rows(pa.concat_tables(sorted_numbers)) != rows(want):
                return "chunked columnar sort differs"
            if rows(gathered) != rows(whole):
                return "chunked gather differs"
            return same_multiset(pa.concat_tables(joined), whole.join(whole.rename_columns(["k", "t"]), "k"))

        check_on_root(compare)


@case
def skew_and_balance() -> None:
    """Half the rows share one key: join, groupby and sort finish; sort stays balanced."""
    rng = np.random.default_rng(11 + RANK)
    n = 3000
    keys = np.where(rng.random(n) < 0.5, 7, rng.integers(0, 10**6, n))
    mine = pa.table({"k": keys, "v": rng.random(n)})
    dim_keys = np.append(np.arange(0, 10**6, 1000, dtype=np.int64), 7)
    dim = pa.table({"k": dim_keys, "w": np.ones(len(dim_keys))})
    dim = dim if RANK == 0 else dim.slice(0, 0)
    joined = run_on_all(lambda: engine.join(COMM, mine, dim, on="k"))
    total_join = COMM.allreduce(joined.num_rows)
    want_join = COMM.allreduce(int(np.isin(keys, dim_keys).sum()))
    agree_ok(total_join == want_join, f"skewed join rows {total_join} != {want_join}")
    grouped = run_on_all(lambda: engine.groupby(COMM, mine, "k", [("v", "count")]))
    sevens = grouped.filter(pa.compute.equal(grouped.column("k"), 7)).column("v_count").to_pylist()
    count7 = COMM.allreduce(sum(sevens))
    agree_ok(count7 == COMM.allreduce(int((keys == 7).sum())), f"count of the heavy key {count7}")
    uniform = pa.table({"k": rng.integers(0, 10**9, 20000), "v": rng.random(20000)})
    for data, order in ((mine, "ascending"), (mine, "descending"), (uniform, "ascending")):
        out = run_on_all(lambda data=data, order=order: engine.sort(COMM, data, [("k", order)]))
        counts = COMM.allgather(out.num_rows)
        mean = sum(counts) / SIZE
        agree_ok(max(counts) <= 1.5 * mean + 1, f"sort partition sizes {counts}")
        parts = gather_parts(out)
        wholes = gather_parts(data)
        check_on_root(lambda parts=parts, wholes=wholes, order=order: None if rows(pa.concat_tables(parts)) == rows(
            pa.concat_tables(wholes).sort_by([("k", order)])) else f"skewed {order} sort order differs")


def expect_error(name: str, fn: Callable[[], Any], cls: type, *needles: str) -> None:
    try:
        fn()
        outcome = ("none", "returned normally")
    except Exception as exc:  # noqa: BLE001
        outcome = (type(exc).__name__, str(exc))
    outcomes = COMM.allgather(outcome)
    bad = [(r, o) for r, o in enumerate(outcomes)
           if o[0] != cls.__name__ or not all(n in o[1] for n in needles)]
    agree_ok(not bad, f"{name}: expected {cls.__name__} mentioning {needles} on every rank, got {bad}")


@case
def errors() -> None:
    """Bad input raises the same named error on every rank; nobody hangs."""
    last = SIZE - 1
    table = pa.table({"k": [1, 2, 3], "v": [1.0, 2.0, 3.0]})
    no_key = table if RANK != last else table.drop_columns(["k"])
    expect_error("missing join key", lambda: engine.join(COMM, table, no_key, on="k"),
                 engine.MissingColumnError, "'k'", f"rank {last}" if SIZE > 1 else "rank 0", "right table")
    strings = pa.table({"k": ["1", "2"], "w": [1, 2]})
    expect_error("key types across sides", lambda: engine.join(COMM, table, strings, on="k"),
                 engine.KeyTypeError, "'k'", "int64", "string")
    if SIZE > 1:
        mixed = table if RANK == 0 else pa.table({"k": ["1", "2", "3"], "v": [1.0, 2.0, 3.0]})
        expect_error("key types across ranks", lambda: engine.join(COMM, mixed, mixed, on="k"),
                     engine.SchemaMismatchError, "'k'", "rank 0", "string")
        expect_error("sort types across ranks", lambda: engine.sort(COMM, mixed, "k"),
                     engine.SchemaMismatchError, "'k'")
        expect_error("engine options across ranks",
                     lambda: engine.sort(COMM, table, "k", options=EngineOptions(join_rounds=1 + RANK)),
                     engine.InvalidArgumentError, "other engine options than rank 0")
    expect_error("unknown how", lambda: engine.join(COMM, table, table, on="k", how="sideways"),
                 engine.InvalidArgumentError, "sideways")
    expect_error("unknown aggregation", lambda: engine.groupby(COMM, table, "k", [("v", "median-ish")]),
                 engine.InvalidArgumentError, "median-ish")
    expect_error("missing aggregated column", lambda: engine.groupby(COMM, table, "k", [("nope", "sum")]),
                 engine.MissingColumnError, "'nope'")
    expect_error("missing sort column", lambda: engine.sort(COMM, table, "nope"),
                 engine.MissingColumnError, "'nope'")
    expect_error("bad sort order", lambda: engine.sort(COMM, table, [("k", "upwards")]),
                 engine.InvalidArgumentError, "upwards")
    listy = pa.table({"k": pa.array([[1], [2]]), "v": [1, 2]})
    expect_error("unhashable key", lambda: engine.shuffle(COMM, listy, "k"),
                 engine.UnsupportedTypeError, "'k'")
    expect_error("bad root", lambda: engine.gather(COMM, table, root=SIZE), engine.InvalidArgumentError, "root")
    bad_only_here = table if RANK != 0 else table.drop_columns(["v"])
    expect_error("groupby column missing on rank 0", lambda: engine.groupby(COMM, bad_only_here, "k", [("v", "sum")]),
                 engine.MissingColumnError, "'v'", "rank 0")
    # After all that, the communicator still works in step.
    total = engine.num_rows(COMM, table)
    agree_ok(total == 3 * SIZE, f"num_rows after errors: {total}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results: Dict[str, Dict[str, Any]] = {}
    for name in args.cases.split(","):
        start = time.perf_counter()
        try:
            CASES[name]()
            results[name] = {"ok": True, "error": ""}
        except Exception as exc:  # noqa: BLE001
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
        COMM.Barrier()
        if RANK == 0:
            print(f"{SIZE} ranks: {name}: {'ok' if results[name]['ok'] else 'FAILED'} "
                  f"({results[name]['seconds']} s)", flush=True)
            with open(args.out, "w") as fh:  # rewritten after each case: a hang still leaves results
                json.dump(results, fh, indent=1)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
