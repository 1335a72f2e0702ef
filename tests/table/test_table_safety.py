"""Tables on a shared machine: contained manifests, ownership, and file modes whatever the umask.

Real files throughout; the ownership and mode cases that cross processes run
the writer under ``mpiexec``.
"""
from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pyarrow as pa
import pytest

from parsl_rcylon.context import CylonContext
from parsl_rcylon.table import ManifestError, TableError, TableRef
from parsl_rcylon.table.ledger import TableLedger
from parsl_rcylon.tableio.manifest import MANIFEST_NAME, Manifest, Partition

from .test_table import mpirun, tablecheck, write, write_ranks


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def rows(ref: TableRef) -> list:
    return ref.read().column(0).to_pylist()


@pytest.fixture
def two_tables(tmp_path):
    """Tables a and b in sibling directories, same schema, different rows."""
    a = write(tmp_path / "data", pa.table({"x": pa.array([1, 2, 3], pa.int64())}), task="a")
    b = write(tmp_path / "data", pa.table({"x": pa.array([7, 8, 9], pa.int64())}), task="b")
    return a, b


def rewrite_manifest(ref: TableRef, file_name: str) -> str:
    """Commit, in ref's directory, a self-consistent manifest whose partition 0 is ``file_name``."""
    m = ref.manifest
    fake = Partition(**{**m.partitions[0].__dict__, "file": file_name})
    return Manifest(m.format, m.schema, [fake] + m.partitions[1:], info=m.info).write(ref.path)


# -- containment ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["dotdot", "absolute", "subdirectory"])
def test_manifest_naming_a_file_outside_its_directory_is_refused(two_tables, how):
    a, b = two_tables
    target = b.files[0]
    name = {"dotdot": os.path.join("..", os.path.basename(b.path), os.path.basename(target)),
            "absolute": target,
            "subdirectory": "sub/part-00000-of-00001.parquet"}[how]
    manifest_path = rewrite_manifest(a, name)
    with pytest.raises(ManifestError) as err:
        TableRef.from_parquet(a.path)
    assert manifest_path in str(err.value) and repr(name) in str(err.value)
    assert "plain file names inside its directory" in str(err.value)
    with pytest.raises(ManifestError, match="plain file names"):
        Manifest.load(a.path)
    # The other table was neither read nor touched through it.
    assert os.path.exists(target) and rows(b) == [7, 8, 9]


def test_forged_handle_naming_a_file_outside_is_refused(two_tables):
    a, b = two_tables
    m = a.manifest
    outside = Partition(**{**m.partitions[0].__dict__, "file": "../" + os.path.basename(b.path) + "/x.parquet"})
    forged = Manifest(m.format, m.schema, [outside], info=m.info)
    with pytest.raises(ManifestError, match=r"partition 0 names '\.\./"):
        TableRef._written(forged, a.path, keep=False)
    with pytest.raises(ManifestError):
        TableRef(forged, a.path)
    # A pickle carrying such a manifest (as a peer could send) is refused when it is loaded.
    smuggled = TableRef.__new__(TableRef)
    smuggled.__dict__.update(a.__dict__, _manifest=forged)
    blob = pickle.dumps(smuggled)
    with pytest.raises(ManifestError, match="pickled TableRef"):
        pickle.loads(blob)


def test_symlinked_partition_is_refused_before_any_read_or_delete(two_tables, tmp_path):
    a, b = two_tables
    # Same bytes behind the link: the checksums alone would not notice.
    twin = write(tmp_path / "elsewhere", pa.table({"x": pa.array([1, 2, 3], pa.int64())}), task="a")
    os.unlink(a.files[0])
    os.symlink(twin.files[0], a.files[0])
    for attempt in (lambda: TableRef.from_parquet(a.path), a.read, lambda: a.read_share(0, 2), a.verify,
                    a.to_dataset):
        with pytest.raises(ManifestError, match="is a symbolic link"):
            attempt()
    with pytest.raises(ManifestError, match=f"{a.path}/{MANIFEST_NAME}: partition 'part-00000-of-00001.parquet'"):
        a.delete()
    # Nothing was removed: not the link's target, not a's manifest.
    assert os.path.exists(twin.files[0]) and rows(twin) == [1, 2, 3]
    assert os.path.exists(os.path.join(a.path, MANIFEST_NAME))


def test_partition_that_is_a_directory_is_refused(two_tables):
    a, _ = two_tables
    os.unlink(a.files[0])
    os.mkdir(a.files[0])
    with pytest.raises(ManifestError, match="is not a regular file"):
        a.read()


def test_external_files_keep_absolute_paths_and_may_be_links(tmp_path):
    import pyarrow.parquet as pq

    real = tmp_path / "real.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), real)
    link = tmp_path / "link.parquet"
    os.symlink(real, link)
    ref = TableRef.from_parquet(link)
    assert ref.files == [str(link)] and rows(ref) == [1, 2] and not ref.owned
    back = pickle.loads(pickle.dumps(ref))
    assert back.files == [str(link)] and not back.owned


# -- ownership ------------------------------------------------------------------------------


def test_from_parquet_never_owns_a_committed_table(tmp_path):
    written = write(tmp_path, pa.table({"x": [1]}), keep=False)
    assert written.owned and not written.keep
    for path in (written.path, os.path.join(written.path, MANIFEST_NAME)):
        opened = TableRef.from_parquet(path)
        assert not opened.owned
        # Data this run did not write outlives it, whatever its writer's keep was.
        assert opened.keep
        with pytest.raises(TableError, match="did not write in this run"):
            opened.delete()
        assert rows(opened) == [1]
        back = pickle.loads(pickle.dumps(opened))
        assert not back.owned and back.keep


def test_ownership_cannot_be_set_by_accident(tmp_path):
    ref = TableRef.from_parquet(write(tmp_path, pa.table({"x": [1]})).path)
    with pytest.raises(AttributeError):
        ref.owned = True
    with pytest.raises(AttributeError):
        ref.keep = False
    with pytest.raises(TypeError):
        TableRef(ref.manifest, ref.path, owned=True)  # type: ignore[call-arg]
    assert not TableRef(ref.manifest, ref.path).owned


def test_old_pickles_carry_no_ownership(tmp_path):
    ref = write(tmp_path, pa.table({"x": [1]}), keep=False)
    state = ref.__getstate__()
    for key in ("_owned", "_keep"):
        state.pop(key)
    state.update(owned=True, keep=False)  # how a handle pickled before ownership was private looked
    old = TableRef.__new__(TableRef)
    old.__setstate__(state)
    assert not old.owned and old.keep and "owned" not in old.__dict__
    with pytest.raises(TableError, match="did not write"):
        old.delete()


def test_ledger_deletes_only_owned_tables(tmp_path):
    mine = write(tmp_path, pa.table({"x": [1]}), task="mine", keep=False)
    theirs_ref = write(tmp_path, pa.table({"x": [2]}), task="theirs", keep=False)
    theirs = TableRef.from_parquet(theirs_ref.path)  # a task returned a handle to data it opened
    ledger = TableLedger("test")
    ledger.record("stage", pickle.loads(pickle.dumps(mine)))
    ledger.record("passthrough", theirs)
    ledger.release()
    assert not os.path.exists(mine.path)
    assert os.path.exists(theirs.path) and rows(theirs) == [2]
    assert ledger.summary()["passthrough"] == {"tables": 1, "rows": 1, "bytes": theirs.nbytes}


def test_stale_handle_never_deletes_a_reused_directory(tmp_path):
    first = write(tmp_path, pa.table({"x": [1]}), task="same")
    stale = pickle.loads(pickle.dumps(first))
    first.delete()
    assert not os.path.exists(first.path)
    stale.delete()  # gone already: nothing to do
    second = write(tmp_path, pa.table({"x": [2]}), task="same")
    assert second.path == first.path  # the name is free again and is reused
    with pytest.raises(TableError, match="holds another table now"):
        stale.delete()
    assert rows(second) == [2]
    os.unlink(os.path.join(second.path, MANIFEST_NAME))
    with pytest.raises(TableError, match="no longer holds this committed table"):
        second.delete()
    assert os.path.exists(second.files[0])


@pytest.mark.mpi
def test_handle_from_real_ranks_is_owned_and_from_parquet_is_not(tmp_path):
    ref_file = tmp_path / "ref.pkl"
    mpirun(2, "roundtrip.py", "write", str(tmp_path / "data"), str(ref_file))
    with open(ref_file, "rb") as f:
        written = pickle.load(f)  # as the client unpickles a task's result
    opened = TableRef.from_parquet(written.path)
    assert written.owned and not opened.owned
    with pytest.raises(TableError, match="did not write"):
        opened.delete()
    assert opened.num_rows == tablecheck.source(2).num_rows
    written.delete()
    assert not os.path.exists(written.path)


# -- modes -------------------------------------------------------------------------------------


MODES = {"private": (0o700, 0o600), "group": (0o750, 0o640)}


def assert_table_modes(ref_path: str, data_dir: Path, sharing: str) -> None:
    dir_mode, file_mode = MODES[sharing]
    assert mode(data_dir) == dir_mode, oct(mode(data_dir))
    assert mode(ref_path) == dir_mode, oct(mode(ref_path))
    names = sorted(os.listdir(ref_path))
    assert MANIFEST_NAME in names and len(names) >= 2
    for name in names:
        assert mode(os.path.join(ref_path, name)) == file_mode, (name, oct(mode(os.path.join(ref_path, name))))


@pytest.mark.parametrize("sharing", ["private", "group"])
@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_table_modes_whatever_the_umask(tmp_path, umask, sharing, fmt):
    data_dir = tmp_path / "made" / "data"  # made by the writer
    ref = write_ranks(data_dir, [tablecheck.partition(r, 3) for r in range(3)], sharing=sharing, format=fmt)
    assert_table_modes(ref.path, data_dir, sharing)
    assert mode(tmp_path / "made") == MODES[sharing][0]


@pytest.mark.mpi
@pytest.mark.parametrize("sharing", ["private", "group"])
def test_table_modes_under_mpiexec(tmp_path, umask, sharing):
    # The ranks inherit the umask from mpiexec, which inherits it from here.
    data_dir = tmp_path / "data"
    ref_file = tmp_path / "ref.pkl"
    mpirun(3, "roundtrip.py", "write", str(data_dir), str(ref_file), "--sharing", sharing)
    with open(ref_file, "rb") as f:
        ref = pickle.load(f)
    assert_table_modes(ref.path, data_dir, sharing)


def test_manifest_write_modes(tmp_path, umask):
    ref = write(tmp_path, pa.table({"x": [1]}))
    os.unlink(os.path.join(ref.path, MANIFEST_NAME))
    ref.manifest.write(ref.path)
    assert mode(os.path.join(ref.path, MANIFEST_NAME)) == 0o600
    ref.manifest.write(ref.path, sharing="group")
    assert mode(os.path.join(ref.path, MANIFEST_NAME)) == 0o640
    assert json.loads(Path(ref.path, MANIFEST_NAME).read_text())["num_rows"] == 1


def test_scratch_is_private_whatever_the_umask(tmp_path, umask):
    root = tmp_path / "scratch-root"
    ctx = CylonContext(tablecheck.SelfComm(), task_id="ex.task.000007", name="f", scratch_root=str(root))
    path = ctx.scratch
    assert path.parent == root and path.name.startswith("ex.task.000007.rank0.")
    assert mode(root) == 0o700 and mode(path) == 0o700
    (path / "f").write_text("x")
    again = CylonContext(tablecheck.SelfComm(), task_id="ex.task.000007", name="f", scratch_root=str(root))
    assert again.scratch != path  # never shared, even for the same task id


def test_sharing_option_is_checked():
    from parsl_rcylon.options import TableOptionError, TableOptions, check_table_options

    assert TableOptions.from_options({"sharing": "GROUP"}).sharing == "group"
    assert TableOptions().sharing == "private"
    with pytest.raises(TableOptionError, match=r"sharing='world': expected one of \('private', 'group'\)"):
        TableOptions.from_options({"sharing": "world"})
    assert check_table_options({"sharing": "group"}, "executor") == {"sharing": "group"}
