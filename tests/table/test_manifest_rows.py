"""A manifest's row counts are checked against the Parquet footers before any share plan is cut from them.

Real tables written by the writer, then a manifest committed over them that
lies about the rows (a forged or stale one): self-consistent lies reach the
footer check, inconsistent ones are refused when the manifest loads.
"""
from __future__ import annotations

import pickle

import pyarrow as pa
import pytest

from parsl_rcylon.table import ManifestError, TableRef
from parsl_rcylon.tableio.errors import TableCorruptError
from parsl_rcylon.tableio.manifest import Manifest, Partition

from .test_table import write


@pytest.fixture
def table(tmp_path):
    return write(tmp_path / "data", pa.table({"x": pa.array(range(100), pa.int64())}), task="rows",
                 row_group_size=25)


def _forge(ref: TableRef, **changes) -> TableRef:
    """A handle on ``ref``'s files whose first partition has ``changes``, as a task receives it (pickled)."""
    m = ref.manifest
    fake = Partition(**{**m.partitions[0].__dict__, **changes})
    return pickle.loads(pickle.dumps(TableRef(Manifest(m.format, m.schema, [fake] + m.partitions[1:],
                                                       info=m.info), root=ref.path)))


def _commit(ref: TableRef, **changes) -> TableRef:
    """Commit over ``ref`` a manifest whose first partition has ``changes`` (checksum and digest redone)."""
    m = ref.manifest
    fake = Partition(**{**m.partitions[0].__dict__, **changes})
    Manifest(m.format, m.schema, [fake] + m.partitions[1:], info=m.info).write(ref.path)
    return TableRef.from_parquet(ref.path)


def test_a_true_manifest_reads_and_shares(table):
    ref = TableRef.from_parquet(table.path)
    shares = [ref.read_share(r, 3).column(0).to_pylist() for r in range(3)]
    assert sum(shares, []) == list(range(100))


@pytest.mark.parametrize("rows, groups", [(10**15, (10**15,)), (99, (25, 25, 25, 24)), (100, (50, 50))])
def test_row_counts_the_footer_does_not_hold_are_refused_before_a_plan(table, rows, groups):
    forged = _forge(table, num_rows=rows, row_groups=groups)
    assert forged.num_rows == rows + sum(p.num_rows for p in table.manifest.partitions[1:])
    for call in (lambda: forged.read_share(0, 2), lambda: forged.read_share(1, 2), forged.read):
        with pytest.raises(TableCorruptError, match=forged.files[0].replace(".", r"\.")) as err:
            call()
        assert "footer holds" in str(err.value)


def test_the_check_travels_with_no_handle(table):
    forged = _forge(table, num_rows=10**15, row_groups=(10**15,))
    with pytest.raises(TableCorruptError):
        forged.read_share(0, 2)
    clone = pickle.loads(pickle.dumps(forged))  # a rank receives the handle: it checks for itself
    with pytest.raises(TableCorruptError, match="footer holds"):
        clone.read_share(1, 2)


def test_a_partition_count_that_is_not_its_row_groups_sum_is_refused_on_load(table):
    with pytest.raises(ManifestError, match=r"claims 1000000000000000 rows but its row groups hold 100"):
        _commit(table, num_rows=10**15)
    with pytest.raises(ManifestError, match=r"claims 1000000000000000 rows but its row groups hold 100"):
        _forge(table, num_rows=10**15)


def test_a_committed_manifest_that_lies_is_refused_on_open(table):
    with pytest.raises(TableCorruptError, match=table.files[0].replace(".", r"\.")):
        _commit(table, num_rows=10**15, row_groups=(10**15,))
