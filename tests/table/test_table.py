"""Tables between stages: TableRef, publish_result, resolve_arguments.

Single-process tests use stand-in communicators (one rank, or threads as
ranks); the ``mpi`` tests at the end run the same calls under ``mpiexec``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent / "mpi"))

import tablecheck  # noqa: E402
from tablecheck import SelfComm, run_ranks  # noqa: E402

from parsl_rcylon.context import CylonContext  # noqa: E402
from parsl_rcylon.table import (  # noqa: E402
    ManifestError,
    MixedResultError,
    TableCorruptError,
    TableError,
    TableRef,
    TableSchemaError,
    TableWriteError,
    WriteOptions,
    publish_result,
    resolve_arguments,
    share_bounds,
    stage_summary,
)
from parsl_rcylon.tableio.manifest import MANIFEST_NAME  # noqa: E402

MPI_DIR = Path(__file__).parent / "mpi"


def ctx1(data_dir, task="t1", name="f", **options) -> CylonContext:
    return CylonContext(SelfComm(), task_id=task, name=name, data_dir=str(data_dir), options=options)


def write(data_dir, table, task="t1", **options) -> TableRef:
    ref = publish_result(ctx1(data_dir, task=task, **options), table)
    assert isinstance(ref, TableRef)
    return ref


def write_ranks(data_dir, parts: List[pa.Table], task="t1", **options) -> TableRef:
    def rank(comm):
        ctx = CylonContext(comm, task_id=task, name="f", data_dir=str(data_dir), options=options)
        return publish_result(ctx, parts[comm.Get_rank()])

    out = run_ranks(len(parts), rank)
    for r in out:
        if isinstance(r, BaseException):
            raise r
    assert all(r is None for r in out[1:])
    return out[0]


def edge_table() -> pa.Table:
    tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
    return pa.table(
        {
            "i8": pa.array([1, None, -3], pa.int8()),
            "u64": pa.array([2**64 - 1, 0, None], pa.uint64()),
            "f": pa.array([1.5, float("nan"), None]),
            "s": pa.array(["a", None, ""]),
            "ls": pa.array(["x" * 1000, None, "ü"], pa.large_string()),
            "b": pa.array([b"\x00\x01", None, b""], pa.binary()),
            "l": pa.array([[1, 2], None, []], pa.list_(pa.int32())),
            "ll": pa.array([[["a"]], [], None], pa.large_list(pa.list_(pa.string()))),
            "st": pa.array([{"a": 1, "b": "x"}, None, {"a": None, "b": None}]),
            "m": pa.array([[("k", 1)], None, []], pa.map_(pa.string(), pa.int64())),
            "d8": pa.array(["u", "v", "u"]).dictionary_encode().cast(pa.dictionary(pa.int8(), pa.string())),
            "d": pa.array(["u", None, "u"]).dictionary_encode(),
            "ts": pa.array([dt.datetime(2020, 1, 1, tzinfo=tz), None, dt.datetime(2021, 6, 1, tzinfo=tz)],
                           pa.timestamp("ns", tz="Asia/Kolkata")),
            "tsu": pa.array([1, 2, 3], pa.timestamp("ms", tz="UTC")),
            "naive": pa.array([1, None, 3], pa.timestamp("s")),
            "dur": pa.array([1, 2, None], pa.duration("ms")),
            "date": pa.array([1, 2, None], pa.date32()),
            "dec": pa.array([1, 2, None], pa.decimal128(10, 2)),
            "n": pa.array([None, None, None], pa.null()),
        },
        metadata={"owner": "test"},
    )


def assert_exact(got: pa.Table, want: pa.Table) -> None:
    assert got.schema.equals(want.schema, check_metadata=True), (got.schema, want.schema)
    assert str(got.schema) == str(want.schema)
    assert got.num_rows == want.num_rows
    # Row by row on Python values: Table.equals calls NaN unequal to itself.
    assert tablecheck.row_hashes(got) == tablecheck.row_hashes(want), "content differs"


# -- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_round_trip_exact_types(tmp_path, fmt):
    table = edge_table()
    ref = write(tmp_path, table, format=fmt, row_group_size=2)
    assert ref.format == fmt and ref.num_rows == 3 and ref.num_partitions == 1
    assert_exact(ref.read(), table)
    assert_exact(pickle.loads(pickle.dumps(ref)).read(), table)
    assert_exact(TableRef.from_parquet(ref.path).read(), table)


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
@pytest.mark.parametrize("compression", ["none", "zstd", "lz4"])
def test_round_trip_codecs(tmp_path, fmt, compression):
    table = tablecheck.source(1)
    ref = write(tmp_path, table, format=fmt, compression=compression, row_group_size=256)
    assert_exact(ref.read(), table)
    assert ref.manifest.info["compression"] == compression


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_zero_row_and_all_empty_partitions(tmp_path, fmt):
    full = tablecheck.source(3)  # rank 1 of 3 holds no rows
    parts = [tablecheck.partition(r, 3) for r in range(3)]
    ref = write_ranks(tmp_path / "a", parts, format=fmt, row_group_size=500)
    assert ref.partition_rows == [p.num_rows for p in parts] and parts[1].num_rows == 0
    assert_exact(ref.read(), full)
    empty = [tablecheck.partition(r, 3, kind="empty") for r in range(3)]
    ref = write_ranks(tmp_path / "b", empty, format=fmt)
    assert ref.num_rows == 0
    got = ref.read()
    assert_exact(got, tablecheck.SCHEMA.empty_table())
    for m in (1, 2, 5):
        assert all(ref.read_share(r, m).num_rows == 0 for r in range(m))


def test_pandas_result(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [1, 2, 3], "s": ["x", None, "z"]})
    ref = write(tmp_path, df)
    assert ref.to_pandas().equals(df)
    indexed = df.set_index("s")
    ref = write(tmp_path, indexed, task="t2")
    assert ref.to_pandas().equals(indexed)


def test_empty_pandas_partition_takes_the_others_types(tmp_path):
    pd = pytest.importorskip("pandas")
    full = pd.DataFrame({"a": [1, 2], "s": ["x", "y"]})
    empty = pa.table({"a": pa.array([], pa.null()), "s": pa.array([], pa.null())})
    ref = write_ranks(tmp_path, [full, empty])
    want = pa.Table.from_pandas(full, preserve_index=False).schema
    assert ref.schema.field("a").type == pa.int64() and ref.schema.field("s").type == want.field("s").type
    assert ref.read().column("s").to_pylist() == ["x", "y"]


# -- shares ------------------------------------------------------------------------


def test_share_bounds_balanced():
    for n in (0, 1, 7, 100, 10**9 + 7):
        for size in (1, 2, 3, 4, 7):
            bounds = [share_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        share_bounds(10, 3, 3)


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
@pytest.mark.parametrize("writers,readers", [(1, 1), (2, 3), (3, 2), (4, 1), (1, 4), (3, 7)])
def test_shares_cover_table_in_order(tmp_path, fmt, writers, readers):
    parts = [tablecheck.partition(r, writers) for r in range(writers)]
    ref = write_ranks(tmp_path, parts, format=fmt, row_group_size=333)
    shares = [ref.read_share(r, readers) for r in range(readers)]
    sizes = [s.num_rows for s in shares]
    assert max(sizes) - min(sizes) <= 1
    assert_exact(pa.concat_tables(shares), pa.concat_tables(parts))


def test_share_reads_only_overlapping_row_groups(tmp_path, monkeypatch):
    from parsl_rcylon.tableio import formats

    ref = write(tmp_path, tablecheck.source(1), row_group_size=100)  # 1500 rows, 15 row groups
    seen = []
    orig = pq.ParquetFile.read_row_groups

    def spy(self, row_groups, *a, **k):
        seen.append(list(row_groups))
        return orig(self, row_groups, *a, **k)

    monkeypatch.setattr(formats.pq.ParquetFile, "read_row_groups", spy)
    share = ref.read_share(1, 3)  # rows 500..1000
    assert share.num_rows == 500 and seen == [[5, 6, 7, 8, 9]]


def test_columns_and_filter(tmp_path):
    table = tablecheck.source(1)
    ref = write(tmp_path, table, row_group_size=200)
    expr = (pc.field("key") >= 700) & pc.field("name").is_valid()
    got = ref.read(columns=["value", "key"], filter=expr)
    want = table.filter(expr).select(["value", "key"])
    assert_exact(got, pa.table(want.columns, schema=pa.schema(
        [table.schema.field("value"), table.schema.field("key")], metadata=table.schema.metadata)))
    shares = [ref.read_share(r, 3, columns=["big"], filter=pc.field("key") < 100) for r in range(3)]
    assert [s.num_rows for s in shares] == [100, 0, 0]
    assert shares[0].column_names == ["big"]
    with pytest.raises(TableError, match="nope"):
        ref.read(columns=["nope"])


def test_ctx_read_uses_share(tmp_path):
    ref = write(tmp_path, tablecheck.source(1))

    def rank(comm):
        ctx = CylonContext(comm, task_id="r", name="g", data_dir=str(tmp_path))
        return ctx.read(ref, columns=["key"])

    shares = run_ranks(2, rank)
    assert [s.num_rows for s in shares] == [750, 750]


def test_to_dataset_and_pandas(tmp_path):
    table = tablecheck.source(2)
    ref = write_ranks(tmp_path, [tablecheck.partition(r, 2) for r in range(2)])
    dset = ref.to_dataset()
    assert isinstance(dset, ds.Dataset)
    assert dset.count_rows() == table.num_rows
    assert dset.to_table(filter=pc.field("key") == 5).num_rows == 1
    assert len(ref.to_pandas()) == table.num_rows


# -- resolve_arguments ------------------------------------------------------------------


def test_resolve_arguments_annotations(tmp_path):
    ref = write(tmp_path, tablecheck.source(1))
    other = write(tmp_path, tablecheck.source(1, seed=3), task="t2")
    ctx = ctx1(tmp_path)

    def fn(ctx, a, b: pa.Table, c: TableRef, d: TableRef, e: Optional[TableRef] = None,
           *rest: TableRef, f=None, g: List[TableRef] = (), **kw):
        pass

    args, kwargs = resolve_arguments(ctx, fn, (ref, other, ref, ref, ref, ref, 5),
                                     {"f": [ref, 1], "g": [ref], "h": {"x": ref}, "i": (ref,)})
    assert isinstance(args[0], pa.Table) and isinstance(args[1], pa.Table)
    assert args[0].num_rows == ref.num_rows and not args[0].equals(args[1])
    assert args[2] is ref and args[3] is ref and args[4] is ref and args[5] is ref
    assert args[6] == 5
    assert isinstance(kwargs["f"][0], pa.Table) and kwargs["f"][1] == 1
    assert kwargs["g"] == [ref]
    assert isinstance(kwargs["h"]["x"], pa.Table) and isinstance(kwargs["i"], tuple)
    assert isinstance(kwargs["i"][0], pa.Table)


def test_resolve_arguments_string_annotations_unresolvable(tmp_path):
    ref = write(tmp_path, tablecheck.source(1))
    ns: Dict[str, object] = {}
    exec("from __future__ import annotations\n"
         "def fn(ctx, a: TableRef, b: NotImportable, c: Optional[TableRef]): pass", ns)
    args, _ = resolve_arguments(ctx1(tmp_path), ns["fn"], (ref, ref, ref), {})
    assert args[0] is ref and isinstance(args[1], pa.Table) and args[2] is ref


def test_resolve_arguments_pandas_annotation(tmp_path):
    pd = pytest.importorskip("pandas")
    ref = write(tmp_path, pa.table({"a": [1, 2]}))

    def fn(ctx, df: pd.DataFrame, t):
        pass

    args, _ = resolve_arguments(ctx1(tmp_path), fn, (ref, ref), {})
    assert isinstance(args[0], pd.DataFrame) and isinstance(args[1], pa.Table)


def test_resolve_arguments_without_tables_is_identity(tmp_path):
    args, kwargs = resolve_arguments(ctx1(tmp_path), len, (1, "x"), {"k": [2]})
    assert args == (1, "x") and kwargs == {"k": [2]}


def test_resolve_arguments_fails_on_every_rank(tmp_path):
    parts = [tablecheck.partition(r, 2) for r in range(2)]
    ref = write_ranks(tmp_path, parts, row_group_size=100)
    assert ref.partition_rows == [1500, 0]
    seg = ref.manifest.partitions[0].segments[-1]
    with open(ref.files[0], "r+b") as f:  # a byte inside the last row group: only rank 2 of 3 reads it
        f.seek(seg.offset + 10)
        f.write(b"\xff\xfe")

    def rank(comm):
        ctx = CylonContext(comm, task_id="r", name="g", data_dir=str(tmp_path))
        return resolve_arguments(ctx, lambda ctx, t: None, (ref,), {})

    out = run_ranks(3, rank)
    assert all(isinstance(e, TableError) for e in out)
    assert isinstance(out[2], TableCorruptError) and ref.files[0] in str(out[2])
    assert "row group 14" in str(out[2])
    assert "rank 2 of 3" in str(out[0]) and ref.files[0] in str(out[0])


# -- publish_result ------------------------------------------------------------------


def test_publish_not_ok_writes_nothing(tmp_path):
    def rank(comm):
        ctx = CylonContext(comm, task_id="t", name="f", data_dir=str(tmp_path))
        ok = comm.Get_rank() != 1
        return publish_result(ctx, pa.table({"a": [1]}) if ok else None, ok=ok)

    assert run_ranks(3, rank) == [None, None, None]
    assert os.listdir(tmp_path) == []


def test_publish_non_tables_returns_value(tmp_path):
    def rank(comm):
        ctx = CylonContext(comm, task_id="t", name="f", data_dir=str(tmp_path))
        return publish_result(ctx, {"rank": comm.Get_rank()})

    assert run_ranks(2, rank) == [{"rank": 0}, {"rank": 1}]
    assert os.listdir(tmp_path) == []


def test_publish_mixed_raises_everywhere(tmp_path):
    def rank(comm):
        ctx = CylonContext(comm, task_id="t9", name="stage", data_dir=str(tmp_path))
        return publish_result(ctx, pa.table({"a": [1]}) if comm.Get_rank() != 2 else "oops")

    out = run_ranks(3, rank)
    for err in out:
        assert isinstance(err, MixedResultError)
        assert "stage[t9]" in str(err) and "ranks [0, 1] returned tables" in str(err)
        assert "ranks [2] returned str" in str(err)
    assert os.listdir(tmp_path) == []


def test_publish_schema_mismatch_names_ranks_and_columns(tmp_path):
    def rank(comm):
        ctx = CylonContext(comm, task_id="t3", name="stage", data_dir=str(tmp_path))
        r = comm.Get_rank()
        t = pa.table({"k": [1], "v": pa.array(["x"]) if r == 1 else pa.array([1.0])})
        if r == 2:
            t = t.rename_columns(["k", "w"])
        return publish_result(ctx, t)

    out = run_ranks(3, rank)
    for err in out:
        assert isinstance(err, TableSchemaError), err
        msg = str(err)
        assert "stage[t3]" in msg and "ranks [0, 1, 2]" in msg
        assert "column 'v': double on rank 0 vs string on rank 1" in msg
        assert "column 'w' only on rank 2" in msg
    assert os.listdir(tmp_path) == []


def test_publish_nullability_mismatch_is_a_schema_error(tmp_path):
    def rank(comm):
        ctx = CylonContext(comm, task_id="t", name="f", data_dir=str(tmp_path))
        nullable = comm.Get_rank() == 0
        return publish_result(ctx, pa.table({"k": [1]}, schema=pa.schema([pa.field("k", pa.int64(), nullable)])))

    out = run_ranks(2, rank)
    assert all(isinstance(e, TableSchemaError) and "nullable" in str(e) for e in out)


def test_publish_write_failure_raises_everywhere(tmp_path, monkeypatch):
    from parsl_rcylon.table import handoff

    real = handoff.write_partition

    def flaky(table, directory, name, opts, rank=None):
        if rank == 1:
            raise OSError(28, "No space left on device")
        return real(table, directory, name, opts, rank=rank)

    monkeypatch.setattr(handoff, "write_partition", flaky)

    def rank(comm):
        ctx = CylonContext(comm, task_id="t", name="f", data_dir=str(tmp_path))
        return publish_result(ctx, pa.table({"a": [comm.Get_rank()]}))

    out = run_ranks(2, rank)
    assert all(isinstance(e, TableWriteError) and "rank 1" in str(e) and "No space" in str(e) for e in out)
    assert os.listdir(tmp_path) == []


def test_publish_without_data_dir(tmp_path):
    ctx = CylonContext(SelfComm(), task_id="t", name="f", data_dir=None)
    with pytest.raises(TableWriteError, match="data_dir"):
        publish_result(ctx, pa.table({"a": [1]}))


def test_bad_options(tmp_path):
    with pytest.raises(TableError, match="format"):
        publish_result(ctx1(tmp_path, format="csv"), pa.table({"a": [1]}))
    with pytest.raises(TableError, match="compression"):
        WriteOptions.from_options({"format": "ipc", "compression": "snappy"})
    with pytest.raises(TableError, match="row_group_size"):
        WriteOptions.from_options({"row_group_size": 0})
    assert WriteOptions.from_options({"format": "arrow", "other": 1}).format == "ipc"


def test_directories_never_shared(tmp_path):
    a = write(tmp_path, pa.table({"a": [1]}), task="same")
    b = write(tmp_path, pa.table({"a": [2]}), task="same")
    assert a.path != b.path
    assert a.read().column("a").to_pylist() == [1] and b.read().column("a").to_pylist() == [2]


def test_no_temporary_files_left(tmp_path):
    ref = write_ranks(tmp_path, [tablecheck.partition(r, 3) for r in range(3)])
    names = sorted(os.listdir(ref.path))
    assert names == [MANIFEST_NAME, "part-00000-of-00003.parquet", "part-00001-of-00003.parquet",
                     "part-00002-of-00003.parquet"]


# -- integrity ------------------------------------------------------------------


@pytest.fixture
def committed(tmp_path) -> TableRef:
    return write_ranks(tmp_path, [tablecheck.partition(r, 3) for r in range(3)], row_group_size=250)


def test_missing_file(committed):
    os.unlink(committed.files[2])
    with pytest.raises(TableCorruptError, match=f"{committed.files[2]}: file is missing"):
        committed.read()
    assert committed.read_share(0, 3).num_rows == 1024  # a share without the file reads

    def rank(comm):  # ... but resolve_arguments fails every rank of the task
        ctx = CylonContext(comm, task_id="r", name="g", data_dir=None)
        return resolve_arguments(ctx, lambda ctx, t: None, (committed,), {})

    out = run_ranks(3, rank)
    assert all(isinstance(e, TableError) and f"{committed.files[2]}: file is missing" in str(e) for e in out)
    assert "rank 1 of 3 could not read its table share" in str(out[0])
    with pytest.raises(TableCorruptError, match="part-00002-of-00003.parquet: file is missing"):
        TableRef.from_parquet(committed.path)


def test_truncated_file(committed):
    path = committed.files[0]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(TableCorruptError, match=f"{path}: file is .* bytes but the manifest says"):
        committed.read()
    with pytest.raises(TableCorruptError, match="part-00000-of-00003.parquet"):
        TableRef.from_parquet(committed.path)


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_corrupt_data_byte(tmp_path, fmt):
    ref = write(tmp_path, tablecheck.source(1), format=fmt, row_group_size=250)
    seg = ref.manifest.partitions[0].segments[3]
    with open(ref.files[0], "r+b") as f:
        f.seek(seg.offset + seg.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))
    kind = "row group 3" if fmt == "parquet" else "record batch 3"
    with pytest.raises(TableCorruptError, match=f"{ref.files[0]}: checksum mismatch in {kind}"):
        ref.read()
    # Shares not touching the damaged row group read fine ...
    assert ref.read_share(0, 3).num_rows == 500
    # ... unless asked to check the whole file.
    with pytest.raises(TableCorruptError, match="checksum mismatch"):
        ref.read_share(0, 3, verify="full")
    with pytest.raises(TableCorruptError):
        ref.verify()


@pytest.mark.parametrize("index", [2, 1])  # partition 1 holds no rows: still checked on open
def test_corrupt_footer(committed, index):
    path = committed.files[index]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size - 30)
        f.write(b"\xa5" * 8)
    if committed.partition_rows[index]:
        with pytest.raises(TableCorruptError, match=f"{path}: checksum mismatch in the footer"):
            committed.read()
    with pytest.raises(TableCorruptError, match=f"{path}: checksum mismatch in the footer"):
        TableRef.from_parquet(committed.path)


def test_replaced_file_same_size_detected(tmp_path):
    a = write(tmp_path, pa.table({"a": pa.array(range(100), pa.int64())}), task="a")
    b = write(tmp_path, pa.table({"a": pa.array(range(1, 101), pa.int64())}), task="b")
    assert os.path.getsize(a.files[0]) == os.path.getsize(b.files[0])
    shutil.copy(b.files[0], a.files[0])
    with pytest.raises(TableCorruptError, match=a.files[0]):
        a.read()


def test_not_parquet_at_all(committed):
    path = committed.files[0]
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"x" * size)
    with pytest.raises(TableCorruptError, match=f"{path}: "):
        committed.read()
    with pytest.raises(TableCorruptError, match=f"{path}: not a Parquet file"):
        TableRef.from_parquet(path)


def test_directory_without_manifest_refused(committed):
    os.unlink(os.path.join(committed.path, MANIFEST_NAME))
    with pytest.raises(ManifestError, match=f"{committed.path}: no {MANIFEST_NAME}: the table was never committed"):
        TableRef.from_parquet(committed.path)
    with pytest.raises(ManifestError, match="part-00000-of-00003.parquet: partition of an uncommitted"):
        TableRef.from_parquet(os.path.join(committed.path, "*.parquet"))


def test_edited_manifest_refused(committed):
    path = os.path.join(committed.path, MANIFEST_NAME)
    obj = json.loads(Path(path).read_text())
    obj["partitions"][0]["num_rows"] += 1
    Path(path).write_text(json.dumps(obj))
    with pytest.raises(ManifestError, match=f"{path}: manifest checksum does not match"):
        TableRef.from_parquet(committed.path)
    Path(path).write_text("{not json")
    with pytest.raises(ManifestError, match=f"{path}: manifest is not valid JSON"):
        TableRef.from_parquet(committed.path)


def test_manifest_not_matching_files(committed):
    # A consistent manifest (checksums recomputed) that lies about row counts.
    from parsl_rcylon.tableio.manifest import Manifest, Partition

    m = committed.manifest
    p0 = m.partitions[0]
    fake = Partition(**{**p0.__dict__, "row_groups": (p0.row_groups[0] + 1,) + p0.row_groups[1:],
                        "num_rows": p0.num_rows + 1})
    Manifest(m.format, m.schema, [fake] + m.partitions[1:], info=m.info).write(committed.path)
    with pytest.raises(TableCorruptError, match=f"{committed.files[0]}: footer has row groups of"):
        TableRef.from_parquet(committed.path)


# -- external data ------------------------------------------------------------------


def test_from_parquet_external(tmp_path):
    t = tablecheck.source(1)
    d = tmp_path / "ext"
    d.mkdir()
    pq.write_table(t.slice(0, 700), d / "a.parquet", row_group_size=100)
    pq.write_table(t.slice(700), d / "b.parquet")
    for source in (d, str(d / "*.parquet"), [d / "a.parquet", d / "b.parquet"]):
        ref = TableRef.from_parquet(source)
        assert ref.num_partitions == 2 and ref.num_rows == t.num_rows
        # External files read as pyarrow reads them (list children named "element").
        want = pa.concat_tables([pq.read_table(d / "a.parquet"), pq.read_table(d / "b.parquet")])
        assert_exact(ref.read(), want)
        assert_exact(pa.concat_tables([ref.read_share(r, 3) for r in range(3)]), want)
    assert not ref.owned
    with pytest.raises(TableError, match="did not write"):
        ref.delete()
    assert (d / "a.parquet").exists()


def test_from_parquet_rejects(tmp_path):
    with pytest.raises(TableError, match="no file matches"):
        TableRef.from_parquet(tmp_path / "nothing*.parquet")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "x.parquet")
    pq.write_table(pa.table({"a": ["s"]}), tmp_path / "y.parquet")
    with pytest.raises(TableSchemaError, match=r"y\.parquet has a different schema than .*x\.parquet: column 'a'"):
        TableRef.from_parquet(tmp_path / "*.parquet")
    ref = TableRef.from_parquet(tmp_path / "x.parquet")
    pq.write_table(pa.table({"a": [2]}), tmp_path / "x.parquet")  # changed after the handle was made
    with pytest.raises(TableCorruptError, match="x.parquet"):
        ref.read()


# -- lifecycle, summary, memoization --------------------------------------------------


def test_delete_removes_manifest_first(committed, monkeypatch):
    removed = []
    real = os.unlink
    monkeypatch.setattr(os, "unlink", lambda p: (removed.append(os.path.basename(p)), real(p)))
    root = committed.path
    committed.delete()
    assert removed[0] == MANIFEST_NAME and len(removed) == 4
    assert not os.path.exists(root)


def test_keep_option_and_summary(tmp_path):
    ref = write(tmp_path, tablecheck.source(1), keep=False)
    assert ref.keep is False and pickle.loads(pickle.dumps(ref)).keep is False
    s = ref.summary()
    assert s["num_rows"] == 1500 and s["nbytes"] == os.path.getsize(ref.files[0]) == ref.nbytes
    assert s["arrow_nbytes"] > 0 and s["write_seconds"] > 0
    assert "1 table(s), 1500 rows, 1 partitions" in stage_summary([ref])


def test_memo_identity(tmp_path):
    from parsl.dataflow.memoization import id_for_memo

    parts = [tablecheck.partition(r, 2) for r in range(2)]
    a = write_ranks(tmp_path / "run1", parts)
    b = write_ranks(tmp_path / "run2", parts, task="other")
    c = write_ranks(tmp_path / "run3", [parts[0].slice(1), parts[1]])
    assert a.path != b.path
    assert id_for_memo(a) == id_for_memo(b) == id_for_memo(pickle.loads(pickle.dumps(a)))
    assert id_for_memo(a) != id_for_memo(c)
    assert id_for_memo([a, 1]) == id_for_memo([b, 1])
    ext1 = TableRef.from_parquet(a.files[0])
    ext2 = TableRef.from_parquet(b.files[0])
    ext3 = TableRef.from_parquet(c.files[1])
    assert id_for_memo(ext1) == id_for_memo(ext2) != id_for_memo(ext3)


# -- under mpiexec ------------------------------------------------------------------

MPIEXEC = Path(sys.executable).parent / "mpiexec"


def mpirun(n: int, script: str, *args: str, timeout: float = 90) -> None:
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, str(MPI_DIR / script), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout}s (deadlock?)")
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out.decode(errors='replace')[-4000:]}"


CASES = [(1, 1, "parquet", "full"), (2, 3, "parquet", "full"), (3, 2, "parquet", "full"),
         (4, 1, "parquet", "full"), (1, 4, "parquet", "full"), (2, 3, "ipc", "full"),
         (3, 2, "parquet", "empty")]


@pytest.mark.mpi
@pytest.mark.parametrize("writers,readers,fmt,kind", CASES)
def test_mpi_round_trip(tmp_path, writers, readers, fmt, kind):
    ref_file = tmp_path / "ref.pkl"
    result_file = tmp_path / "result.json"
    mpirun(writers, "roundtrip.py", "write", str(tmp_path / "data"), str(ref_file), "--kind", kind,
           "--format", fmt)
    mpirun(readers, "roundtrip.py", "read", str(ref_file), str(result_file))
    result = json.loads(result_file.read_text())
    want = tablecheck.source(writers, kind=kind)
    assert result["num_partitions"] == writers
    assert result["num_rows"] == want.num_rows == sum(result["share_rows"])
    assert len(result["share_rows"]) == readers
    assert max(result["share_rows"]) - min(result["share_rows"]) <= 1
    assert result["digest"] == tablecheck.table_digest(want)
    assert result["schema_exact"]


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> Dict[str, list]:
    d = tmp_path_factory.mktemp("scenarios")
    mpirun(4, "scenarios.py", str(d / "data"), str(d / "out.json"), timeout=120)
    return json.loads((d / "out.json").read_text())


@pytest.mark.mpi
def test_mpi_mixed(scenarios):
    for r in scenarios["mixed"]:
        assert r["error"] == "MixedResultError"
        assert "stage[mixed]: ranks [0, 1] returned tables but ranks [2, 3] returned int" in r["message"]


@pytest.mark.mpi
def test_mpi_schema_mismatch(scenarios):
    for r in scenarios["schema"]:
        assert r["error"] == "TableSchemaError"
        assert "stage[schema]: ranks [0, 2, 3]" in r["message"]
        assert "column 'value': double on rank 0 vs string on rank 2" in r["message"]
        assert "column 'extra' only on rank 3" in r["message"]


@pytest.mark.mpi
def test_mpi_failed_rank_and_plain_values(scenarios):
    assert [r["value"] for r in scenarios["failed_rank"]] == ["None"] * 4
    assert [r["value"] for r in scenarios["plain"]] == [repr({"rank": i}) for i in range(4)]


@pytest.mark.mpi
def test_mpi_concurrent_stages(scenarios):
    for label in ("concurrent_same_id", "concurrent_distinct"):
        values = [eval(r["value"]) for r in scenarios[label]]  # noqa: S307 - our own repr
        assert all(v["content_ok"] for v in values)
        assert values[0]["path"] == values[1]["path"] != values[2]["path"] == values[3]["path"]


@pytest.mark.mpi
def test_mpi_missing_file_fails_every_reader(scenarios):
    # Ranks 2 and 3 hold rows of the lost partition; ranks 0 and 1 fail with them.
    errors = [r["error"] for r in scenarios["missing_file"]]
    assert errors == ["TableError", "TableError", "TableCorruptError", "TableCorruptError"]
    for r in scenarios["missing_file"]:
        assert "stage-victim/part-00003-of-00004.parquet: file is missing" in r["message"]
    assert "rank 2 of 4 could not read its table share" in scenarios["missing_file"][0]["message"]


@pytest.mark.mpi
def test_mpi_corrupt_share_fails_every_reader(scenarios):
    first, *others = scenarios["corrupt_share"]
    assert first["error"] == "TableCorruptError"
    assert "part-00000-of-00004.parquet: checksum mismatch in row group 0" in first["message"]
    for r in others:
        assert r["error"] == "TableError"
        assert "rank 0 of 4 could not read its table share" in r["message"]
        assert "part-00000-of-00004.parquet" in r["message"]
