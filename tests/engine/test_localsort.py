"""The local sort kernel (packed 64-bit keys) against pyarrow's stable sort_indices."""
from __future__ import annotations

import decimal
from typing import Any, Dict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsl_rcylon.engine import radixsort
from parsl_rcylon.engine.errors import InvalidArgumentError
from parsl_rcylon.engine.kernels import choose_sort_kernel, numpy_sort_target, sort_kernel
from parsl_rcylon.engine.localsort import SortKey, key_codes, local_sort_indices
from parsl_rcylon.engine.radixsort import radix_sort

KINDS = ["int64", "wide_int64", "uint64", "uint8", "int32", "float64", "float32", "string", "large_string",
         "binary", "bool", "timestamp", "date32", "decimal"]


def column(kind: str, n: int, rng: np.random.Generator, null_rate: float) -> pa.Array:
    nulls = rng.random(n) < null_rate
    if kind == "int64":
        values: Any = rng.integers(-5, 5, n)
    elif kind == "wide_int64":  # the whole range: the codes do not fit above the row number
        values = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64, endpoint=True)
        values[rng.random(n) < 0.3] = values[0] if n else 0  # duplicates
    elif kind == "uint64":
        values = rng.choice(np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64), n)
    elif kind == "uint8":
        values = rng.integers(0, 256, n).astype(np.uint8)
    elif kind == "int32":
        values = rng.integers(-2**31, 2**31, n).astype(np.int32)
    elif kind in ("float64", "float32"):
        values = rng.choice([0.0, -0.0, np.nan, 1.5, -2.0, np.inf, -np.inf, 3.0, 1e-300], n)
        values = values.astype(np.float32 if kind == "float32" else np.float64)
    elif kind in ("string", "large_string", "binary"):
        # Shared prefixes longer than 8 bytes, embedded NULs and empty strings: ties in the packed prefix.
        alphabet = ["a", "b", "\x00", "é", "prefix-of-ten"]
        values = ["".join(rng.choice(alphabet, rng.integers(0, 4))) for _ in range(n)]
        dtype = {"string": pa.string(), "large_string": pa.large_string(), "binary": pa.binary()}[kind]
        if kind == "binary":
            values = [v.encode() for v in values]
        return pa.array(values, dtype, mask=nulls)
    elif kind == "bool":
        values = rng.random(n) < 0.5
    elif kind == "timestamp":
        return pa.array(rng.integers(-10**6, 10**6, n), mask=nulls).cast(pa.timestamp("us"))
    elif kind == "date32":
        return pa.array(rng.integers(0, 100, n).astype(np.int32), mask=nulls).cast(pa.date32())
    else:  # a type without a code: pyarrow sorts it
        return pa.array([None if m else decimal.Decimal(int(x)) for m, x in zip(nulls, rng.integers(0, 9, n),
                                                                                 strict=True)], pa.decimal128(5, 0))
    return pa.array(values, mask=nulls)


@st.composite
def sort_cases(draw: Any) -> Dict[str, Any]:
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3))
    n = draw(st.integers(0, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    null_rate = draw(st.sampled_from([0.0, 0.2, 1.0]))
    keys = [SortKey(f"c{i}", draw(st.booleans()), draw(st.booleans())) for i in range(len(kinds))]
    chunked = draw(st.booleans())
    sliced = draw(st.integers(0, 3))
    return {"kinds": kinds, "n": n, "seed": seed, "null_rate": null_rate, "keys": keys, "chunked": chunked,
            "sliced": sliced}


@pytest.fixture(params=["numpy", "radix"])
def kernel(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each sort kernel in turn; the radix kernel with thresholds small enough that few rows reach every path
    (partition blocks, grid chunks, buckets too big for a row, the skew fallback)."""
    monkeypatch.setenv("PARSL_RCYLON_SORT_KERNEL", request.param)
    if request.param == "radix":
        for name, value in (("SMALL", 8), ("ROW_MAX", 4), ("BLOCK", 64), ("CHUNK", 16), ("TARGET", 2)):
            monkeypatch.setattr(radixsort, name, value)
    return request.param


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=sort_cases())
def test_local_sort_is_pyarrows_stable_sort(kernel: str, case: Dict[str, Any]) -> None:
    assert sort_kernel()[0] == kernel
    rng = np.random.default_rng(case["seed"])
    n = case["n"]
    table = pa.table({f"c{i}": column(k, n, rng, case["null_rate"]) for i, k in enumerate(case["kinds"])})
    table = table.append_column("row", pa.array(np.arange(n)))
    if case["chunked"] and n > 2:
        table = pa.concat_tables([table.slice(0, n // 3), table.slice(n // 3)])
    table = table.slice(min(case["sliced"], n))
    keys = case["keys"]
    want = pc.sort_indices(table, sort_keys=[(k.name, k.order, k.placement) for k in keys]).to_numpy()
    assert local_sort_indices(table, keys).tolist() == want.tolist()


@pytest.mark.parametrize("descending", [False, True])
def test_wide_keys_tie_only_in_their_kept_bits(descending: bool) -> None:
    # 2**62 apart and 2**20 rows: the packed key keeps 44 of 63 bits, so every
    # row ties with others in the kept bits and the exact re-sort decides.
    n = 1 << 20
    rng = np.random.default_rng(5)
    values = rng.choice(np.array([0, 1, 2, 2**62, 2**62 + 3], dtype=np.int64), n)
    table = pa.table({"k": values})
    key = SortKey("k", descending, True)
    want = pc.sort_indices(table, sort_keys=[("k", key.order)]).to_numpy()
    assert np.array_equal(local_sort_indices(table, [key]), want)


def test_codes_are_exact_where_they_say_so() -> None:
    key = SortKey("k", False, True)
    codes, bits, exact = key_codes(pa.array([5, None, -3, 7], pa.int64()), key)
    assert exact and bits == 4 + 2  # a range of 10 and two bits of null/NaN class
    assert codes.tolist() == [8, 2 << 4, 0, 10]
    codes, bits, exact = key_codes(pa.array(["abcdefghi", "abcdefgh", "b"]), key)
    assert not exact and codes[0] == codes[1] < codes[2]
    assert key_codes(pa.array([decimal.Decimal(1)]), key) is None


@pytest.mark.parametrize("kind", [pa.string(), pa.large_binary()])
@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("with_short", [False, True])
def test_strings_with_a_long_shared_prefix(kind: pa.DataType, descending: bool, with_short: bool) -> None:
    # Every value starts with the same 20 bytes: the kernel reads the bytes after them.
    rng = np.random.default_rng(9)
    n = 5000
    values = ["customer-identifier-" + str(x) for x in rng.integers(0, 300, n)]
    if with_short:  # values that end inside the shared prefix, and empty ones
        values[::7] = ["customer-identifier-"[: int(k)] for k in rng.integers(0, 21, len(values[::7]))]
    array = pa.array(values, mask=rng.random(n) < 0.1)
    if kind == pa.large_binary():
        array = array.cast(pa.large_binary())
    table = pa.table({"k": array}).slice(3)
    for nulls_last in (False, True):
        key = SortKey("k", descending, nulls_last)
        want = pc.sort_indices(table, sort_keys=[("k", key.order, key.placement)]).to_numpy()
        assert np.array_equal(local_sort_indices(table, [key]), want)
    codes, _, _ = key_codes(table.column("k").combine_chunks(), SortKey("k", False, True))
    if not with_short:  # the codes tell the suffixes apart: few ties are left for pyarrow
        assert len(np.unique(codes)) > 250


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("shape", ["uniform", "skewed", "few"])
def test_each_kernel_on_many_rows(kernel: str, descending: bool, shape: str) -> None:
    # Two keys, nulls, NaN, ties, 40,000 rows: pyarrow's stable sort_indices decides.
    rng = np.random.default_rng(11)
    n = 40_000
    if shape == "uniform":
        first = rng.integers(-2**40, 2**40, n)
    elif shape == "skewed":  # most keys in a sliver of the range: the top bits bucket them badly
        first = np.minimum(rng.lognormal(0, 4, n) * 100, 2**50).astype(np.int64)
    else:
        first = rng.integers(0, 5, n)
    second = rng.choice([0.5, -1.0, np.nan, 2.0, -0.0, 0.0], n)
    table = pa.table({"a": pa.array(first, mask=rng.random(n) < 0.05),
                      "b": pa.array(second, mask=rng.random(n) < 0.05)})
    keys = [SortKey("a", descending, True), SortKey("b", not descending, False)]
    want = pc.sort_indices(table, sort_keys=[(k.name, k.order, k.placement) for k in keys]).to_numpy()
    assert np.array_equal(local_sort_indices(table, keys), want)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(n=st.integers(0, 3000), bits=st.integers(1, 64), shape=st.sampled_from(["uniform", "skewed", "three"]),
       small=st.sampled_from([0, 1, 16]), row_max=st.sampled_from([1, 4, 64]), seed=st.integers(0, 2**32 - 1))
def test_radix_sort_is_numpys_sort(n: int, bits: int, shape: str, small: int, row_max: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    high = (1 << bits) - 1
    if shape == "uniform":
        codes = rng.integers(0, high, n, dtype=np.uint64, endpoint=True)
    elif shape == "skewed":
        codes = np.minimum(rng.lognormal(0, 4, n) * 10, high).astype(np.uint64)
    else:  # three values at the top of the range: every code in one of three buckets
        codes = rng.integers(0, min(3, high + 1), n).astype(np.uint64) << np.uint64(max(0, bits - 2))
    if bits < 60:  # bits above ``bits`` that every code shares
        codes |= np.uint64(0b1011 << 60)
    want = np.sort(codes)
    assert np.array_equal(radix_sort(codes.copy(), bits, small, row_max), want)


def test_radix_sort_splits_many_codes_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # More than 2 * TARGET * 2**16 codes take the two-level path; small blocks and chunks here.
    monkeypatch.setattr(radixsort, "TARGET", 1)
    monkeypatch.setattr(radixsort, "BLOCK", 1000)
    monkeypatch.setattr(radixsort, "CHUNK", 500)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 2**64 - 1, 300_000, dtype=np.uint64, endpoint=True)
    assert np.array_equal(radix_sort(codes.copy(), 64, 64, 8), np.sort(codes))


@pytest.mark.parametrize("target, cpu, kernel", [
    ("avx512", {"vendor": "AuthenticAMD", "family": 25}, "radix"),   # Zen 4: microcoded VPCOMPRESSQ
    ("avx2", {"vendor": "AuthenticAMD", "family": 25}, "numpy"),     # Zen 3 (Frontier, Perlmutter)
    ("avx512", {"vendor": "AuthenticAMD", "family": 26}, "numpy"),   # Zen 5
    ("avx512", {"vendor": "GenuineIntel", "family": 6}, "numpy"),    # Intel's AVX-512
    ("highway", {"vendor": None, "family": None}, "numpy"),          # aarch64
    ("scalar", {"vendor": "GenuineIntel", "family": 6}, "radix"),    # no SIMD sort
])
def test_the_sort_kernel_rule(target: str, cpu: Dict[str, Any], kernel: str) -> None:
    assert choose_sort_kernel(target, cpu)[0] == kernel


def test_numpy_sort_target_follows_numpys_enabled_features() -> None:
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 feature names")
    assert numpy_sort_target(["X86_V2", "X86_V3", "X86_V4"]) == "avx512"
    assert numpy_sort_target(["AVX2", "AVX512_SKX"]) == "avx512"  # numpy < 2.4 names
    assert numpy_sort_target(["X86_V2", "X86_V3"]) == "avx2"  # NPY_DISABLE_CPU_FEATURES="X86_V4 ..."
    assert numpy_sort_target(["SSE42"]) == "scalar"


def test_a_bad_sort_kernel_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARSL_RCYLON_SORT_KERNEL", "quick")
    with pytest.raises(InvalidArgumentError, match="PARSL_RCYLON_SORT_KERNEL='quick': use one of auto, numpy, radix"):
        sort_kernel()


def test_numpys_avx2_sort_keeps_the_numpy_kernel() -> None:
    # NPY_DISABLE_CPU_FEATURES turns numpy's AVX-512 dispatch off (as on a Zen 3): the rule must then
    # keep np.sort, which is fast there, on any x86 CPU with AVX2.
    import platform
    import subprocess
    import sys

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 feature names")
    code = ("from parsl_rcylon.engine.kernels import *; f = numpy_simd_features()['found']; "
            "print(numpy_sort_target(f), sort_kernel()[0], 'AVX2' in f)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PARSL_RCYLON_SORT_KERNEL"}
    env["NPY_DISABLE_CPU_FEATURES"] = "X86_V4 AVX512_ICL AVX512_SPR AVX512_SKX"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    target, kernel, avx2 = out.stdout.split()
    if avx2 != "True":
        pytest.skip("no AVX2 on this CPU")
    assert (target, kernel) == ("avx2", "numpy"), out.stdout + out.stderr
