"""The handle to a committed table: :class:`TableRef`.

A ``TableRef`` names a finished, immutable, partitioned table on a shared
filesystem (written by a ``cylon_app``, or existing Parquet data) and reads it
whole or by rank shares, checking what it decodes against the writer's
checksums.  It is cheap to pickle: it carries the manifest, not the data.
"""
from __future__ import annotations

import glob as _glob
import hashlib
import json
import logging
import os
import pickle
import stat
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pyarrow as pa
import pyarrow.dataset as ds

from ..engine.schemas import schema_difference
from ..engine.shares import share_bounds
from ..options import VERIFY_LEVELS
from ..tableio.errors import ManifestError, TableCorruptError, TableError, TableSchemaError
from ..tableio.formats import check_footer_rows, file_crc, inspect_parquet, read_pieces
from ..tableio.manifest import Manifest, Partition, check_partition_names, schema_to_text
from ..tableio.names import MANIFEST_NAME, PART_RE

logger = logging.getLogger(__name__)


class TableRef:
    """A handle to a finished, immutable, partitioned table on a shared filesystem.

    Cheap to pickle and pass between tasks (it carries the manifest, not the
    data); reads lazily, and checks every byte it decodes against the checksums
    its writer recorded.

    Parameters
    ----------
    manifest : Manifest
        Format, schema, partitions and content digest.
    root : str or None
        The table directory, which the partitions' plain file names are
        inside; ``None`` when the partitions carry absolute paths (external
        data).

    Notes
    -----
    Make one with :meth:`from_parquet` (existing data, or a committed table
    directory) or get one as the result of a ``cylon_app`` returning tables.

    Only a handle made by the writer (the hand-off's ``publish_result``)
    is :attr:`owned`, and it stays owned as it is pickled back to the
    client; every other handle, whatever it points at, is not, and there is
    no way to make it so.  Only owned tables can be deleted.
    """

    def __init__(self, manifest: Manifest, root: Optional[str] = None) -> None:
        if root is not None:
            check_partition_names(manifest.partitions, os.path.join(root, MANIFEST_NAME))
        self._manifest = manifest
        self._root = root
        self._owned = False
        self._keep = True
        self._digest: Optional[str] = None if manifest.info.get("external") else manifest.digest

    @classmethod
    def _written(cls, manifest: Manifest, root: str, keep: bool) -> TableRef:
        """The writer's handle to the table it has just committed: owned, with the writer's ``keep``."""
        ref = cls(manifest, root)
        ref._owned = True
        ref._keep = bool(keep)
        return ref

    # -- description ------------------------------------------------------

    @property
    def owned(self) -> bool:
        """Whether this run wrote the table (only then may :meth:`delete` remove it)."""
        return self._owned

    @property
    def keep(self) -> bool:
        """Whether the table outlives the workflow: the writer's ``keep`` option for owned tables,
        always True for data this run did not write."""
        return self._keep

    @property
    def path(self) -> Optional[str]:
        """The table directory (``None`` for a set of external files)."""
        return self._root

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def format(self) -> str:
        return self._manifest.format

    @property
    def files(self) -> List[str]:
        """Absolute paths of the partition files, in row order."""
        return [self._file(p) for p in self._manifest.partitions]

    @property
    def schema(self) -> pa.Schema:
        return self._manifest.schema

    @property
    def num_rows(self) -> int:
        return self._manifest.num_rows

    @property
    def num_partitions(self) -> int:
        return len(self._manifest.partitions)

    @property
    def partition_rows(self) -> List[int]:
        return [p.num_rows for p in self._manifest.partitions]

    @property
    def nbytes(self) -> int:
        """Bytes on disk, all partitions together."""
        return self._manifest.nbytes

    @property
    def digest(self) -> str:
        """Content identity: equal for byte-identical tables wherever they live.

        For tables written by parsl_rcylon this is the manifest's digest.  For
        external Parquet files (:meth:`from_parquet`) it needs a CRC of every
        file, computed on first use and cached.
        """
        if self._digest is None:
            # Footers alone do not pin the data (two files can differ only
            # inside a page), so external files are hashed whole.
            key = []
            for part in self._manifest.partitions:
                self._check_unchanged(part)
                key.append([part.num_rows, part.nbytes, list(part.row_groups), file_crc(self._file(part))])
            payload = json.dumps(["external", self.format, schema_to_text(self.schema), key]).encode()
            self._digest = hashlib.sha256(payload).hexdigest()
        return self._digest

    def __repr__(self) -> str:
        where = self._root or (os.path.dirname(self.files[0]) if self.files else "?")
        return (f"TableRef({where!r}, rows={self.num_rows}, partitions={self.num_partitions}, "
                f"format={self.format!r}, bytes={self.nbytes})")

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_manifest"] = self._manifest.to_json()
        state.pop("_rows_checked", None)  # checked where the plan is made, by whoever unpickles it
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        manifest = Manifest.from_json(state["_manifest"], "pickled TableRef")
        root = state.get("_root")
        if root is not None:
            check_partition_names(manifest.partitions, f"pickled TableRef of {root}")
        self.__dict__.update(state)
        self._manifest = manifest
        # Ownership travels with the writer's handle (rank 0 -> client); a
        # state without it (an older pickle) is not owned.
        self._owned = state.get("_owned") is True
        self._keep = bool(state.get("_keep", True)) if self._owned else True
        for stale in ("owned", "keep"):
            self.__dict__.pop(stale, None)

    def summary(self) -> Dict[str, Any]:
        """What the executor logs per stage: rows, bytes, partitions, write time and rate."""
        parts = self._manifest.partitions
        seconds = max((p.write_seconds for p in parts), default=0.0)
        info = self._manifest.info
        return {
            "table": self._root or "",
            "task_id": info.get("task_id"),
            "name": info.get("name"),
            "format": self.format,
            "compression": info.get("compression"),
            "num_rows": self.num_rows,
            "num_partitions": self.num_partitions,
            "nbytes": self.nbytes,
            "arrow_nbytes": info.get("arrow_nbytes"),
            "write_seconds": seconds,
            "write_gbps": (self.nbytes / seconds / 1e9) if seconds else None,
            "keep": self.keep,
        }

    # -- reading ------------------------------------------------------------

    def _file(self, part: Partition) -> str:
        """The path of ``part``; for a table directory, refused unless it is a regular file inside it.

        Names were checked to be plain when the manifest was loaded; this
        refuses a partition that is a symbolic link (or anything but a
        regular file), before any read or delete.  A missing file passes:
        the caller reports it.
        """
        if not self._root:
            return part.file
        path = os.path.join(self._root, part.file)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return path
        if not stat.S_ISREG(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise ManifestError(f"{os.path.join(self._root, MANIFEST_NAME)}: partition {part.file!r} is {kind}; "
                                "a table's partitions must be regular files inside its directory")
        return path

    def _check_unchanged(self, part: Partition) -> None:
        path = self._file(part)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise TableCorruptError(f"{path}: file is missing (table {self._root or path})") from None
        if size != part.nbytes:
            raise TableCorruptError(f"{path}: file is {size} bytes but the manifest says {part.nbytes} "
                                    "(truncated, or replaced after it was written)")

    def _check_row_counts(self) -> None:
        """Check every partition's row counts against its Parquet footer, once per handle, before a plan.

        Every footer is read (a wide table costs one small read per file per
        rank): a share plan cut from a count the files do not hold would be
        wrong on every rank, not only on the one that reads the bad file.
        """
        if self.__dict__.get("_rows_checked") or self.format != "parquet":
            return
        for part in self._manifest.partitions:
            check_footer_rows(self._file(part), part)
        self._rows_checked = True

    def _read_range(self, start: int, stop: int, columns: Optional[Sequence[str]], filter: Any,
                    verify: str, use_threads: bool = True) -> pa.Table:
        if verify not in VERIFY_LEVELS:
            raise TableError(f"verify={verify!r}: expected one of {VERIFY_LEVELS}")
        self._check_row_counts()
        if columns is not None:
            columns = list(columns)
            missing = [c for c in columns if c not in self.schema.names]
            if missing:
                raise TableError(f"columns {missing} are not in table {self!r} "
                                 f"(columns: {self.schema.names})")
        # Only the files of this range are opened (and checked): on a parallel
        # filesystem, every rank stat-ing every file of a wide table is a
        # metadata storm.  The hand-off makes one rank's failure everyone's.
        tables = []
        for part, pieces in _plan(self._manifest.partitions, start, stop):
            tables.append(read_pieces(self.format, self._file(part), part, pieces, self.schema, columns,
                                      filter, verify, use_threads=use_threads))
        target = self.schema if columns is None else pa.schema(
            [self.schema.field(c) for c in columns], metadata=self.schema.metadata)
        if not tables:
            return target.empty_table()
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def read(self, columns: Optional[Sequence[str]] = None, filter: Any = None,
             verify: str = "checksum") -> pa.Table:
        """The whole table.

        Parameters
        ----------
        columns : list of str, optional
            Columns to read (others are not decoded).
        filter : pyarrow.compute.Expression, optional
            Rows to keep; row groups whose statistics exclude it are skipped.
        verify : {"checksum", "full", "footer"}
            ``checksum`` checks the bytes of every row group read, ``full``
            every byte of every file touched, ``footer`` sizes, footers and row
            counts only.
        """
        return self._read_range(0, self.num_rows, columns, filter, verify)

    def read_share(self, rank: int, size: int, columns: Optional[Sequence[str]] = None, filter: Any = None,
                   verify: str = "checksum") -> pa.Table:
        """Rank ``rank``'s share of ``size`` ranks: rows ``share_bounds(num_rows, rank, size)``.

        Shares are cut by position in the stored table (before ``filter``), so
        they are balanced whatever the number of partitions, and their
        concatenation in rank order is :meth:`read`.  Only the row groups that
        overlap the share are read.
        """
        self._check_row_counts()
        start, stop = share_bounds(self.num_rows, rank, size)
        return self._read_range(start, stop, columns, filter, verify)

    def to_pandas(self, columns: Optional[Sequence[str]] = None, filter: Any = None, **kwargs: Any):
        """The whole table as a pandas DataFrame (``kwargs`` go to ``pyarrow.Table.to_pandas``)."""
        return self.read(columns=columns, filter=filter).to_pandas(**kwargs)

    def to_dataset(self) -> ds.Dataset:
        """A ``pyarrow.dataset.Dataset`` over the partition files (no checksums checked)."""
        for part in self._manifest.partitions:
            self._check_unchanged(part)
        fmt = "parquet" if self.format == "parquet" else "ipc"
        return ds.dataset(self.files, schema=self.schema, format=fmt)

    def verify(self, level: str = "full") -> None:
        """Check every file against the manifest without keeping the data; raises on the first problem."""
        for part in self._manifest.partitions:
            self._check_unchanged(part)
        for part in self._manifest.partitions:
            pieces = [(i, 0, 0) for i in range(len(part.row_groups))]
            read_pieces(self.format, self._file(part), part, pieces, self.schema, [], None, level)

    # -- lifecycle -----------------------------------------------------------

    def delete(self) -> None:
        """Remove the table's files: the manifest first, so no reader ever sees half a table.

        Only tables this run wrote (:attr:`owned`) can be deleted; data opened
        with :meth:`from_parquet`, a committed table directory included, is
        never touched.  The directory must still hold this very table: if
        its manifest is gone or is another table's (the name reused after a
        deletion), nothing is removed.  Deleting a table whose directory is
        gone already does nothing.

        Raises
        ------
        TableError
            The table is not owned by this run, or its directory holds
            something else now.
        ManifestError
            A partition is a symbolic link or not a regular file.
        """
        if not self._owned or not self._root:
            raise TableError(f"{self!r} refers to data parsl_rcylon did not write in this run (opened with "
                             "TableRef.from_parquet, or not a table of this run's tasks); not deleting it")
        if not os.path.isdir(self._root):
            return
        try:
            on_disk = Manifest.load(self._root)
        except ManifestError as err:
            raise TableError(f"{self._root}: not deleting: the directory no longer holds this committed "
                             f"table ({err})") from None
        if on_disk.to_json() != self._manifest.to_json():
            raise TableError(f"{self._root}: not deleting: the directory holds another table now")
        paths = self.files  # every partition checked before anything is removed
        os.unlink(os.path.join(self._root, MANIFEST_NAME))
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self._root)
        except OSError as err:
            logger.debug("table directory %s not removed: %s", self._root, err)

    # -- opening existing data -------------------------------------------------

    @classmethod
    def from_parquet(cls, path: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> TableRef:
        """A handle to existing data: a table directory, Parquet file(s), a directory of them, or a glob.

        Validated when made: a table directory's manifest must be intact and
        match its files (sizes, footers, row counts); other files must exist,
        have readable Parquet footers, and share one schema (metadata aside).
        A directory holding partitions of an uncommitted parsl_rcylon table
        is refused.
        """
        if isinstance(path, (list, tuple)):
            return cls._from_files([os.fspath(p) for p in path], str(path))
        path = os.fspath(path)
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, MANIFEST_NAME)) or _has_our_parts(path):
                return cls._open_table_dir(path)
            files = sorted(ds.dataset(path, format="parquet").files)
            if not files:
                raise TableError(f"{path}: no Parquet files in this directory")
            return cls._from_files(files, path)
        if os.path.isfile(path):
            if os.path.basename(path) == MANIFEST_NAME:
                return cls._open_table_dir(os.path.dirname(path) or ".")
            return cls._from_files([path], path)
        files = sorted(f for f in _glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise TableError(f"{path}: no such file or directory, and no file matches it as a glob")
        return cls._from_files(files, path)

    @classmethod
    def _open_table_dir(cls, directory: str) -> TableRef:
        directory = os.path.abspath(directory)
        # Never owned: this run did not write it, whoever did.
        ref = cls(Manifest.load(directory), root=directory)
        ref.verify("footer")
        return ref

    @classmethod
    def _from_files(cls, files: List[str], what: str) -> TableRef:
        for f in files:
            d = os.path.dirname(os.path.abspath(f))
            if PART_RE.match(os.path.basename(f)) and not os.path.exists(os.path.join(d, MANIFEST_NAME)):
                raise ManifestError(f"{f}: partition of an uncommitted parsl_rcylon table "
                                    f"(no {MANIFEST_NAME} in {d}); its writer did not finish")
        schema: Optional[pa.Schema] = None
        parts = []
        for f in files:
            file_schema, part = inspect_parquet(f)
            if schema is None:
                schema, first = file_schema, f
            elif not file_schema.equals(schema):
                raise TableSchemaError(f"{what}: {f} has a different schema than {first}: "
                                       f"{schema_difference(schema, file_schema, 'first', 'this')}")
            parts.append(part)
        assert schema is not None
        manifest = Manifest("parquet", schema, parts, info={"source": what, "external": True})
        ref = cls(manifest, root=None)
        # No writer checksummed these bytes; TableRef.digest hashes them on demand.
        ref._digest = None
        return ref


def _has_our_parts(directory: str) -> bool:
    try:
        return any(PART_RE.match(n) for n in os.listdir(directory))
    except OSError:
        return False


def _plan(parts: Sequence[Partition], start: int, stop: int
          ) -> Iterator[Tuple[Partition, List[Tuple[int, int, int]]]]:
    """For rows ``[start, stop)``: each overlapping partition with (row group, first, end) pieces."""
    offset = 0
    for part in parts:
        p_start, p_stop = offset, offset + part.num_rows
        offset = p_stop
        if p_stop <= start or p_start >= stop or part.num_rows == 0:
            continue
        pieces = []
        rg_start = p_start
        for i, n in enumerate(part.row_groups):
            rg_stop = rg_start + n
            lo, hi = max(start, rg_start), min(stop, rg_stop)
            if hi > lo:
                pieces.append((i, lo - rg_start, hi - rg_start))
            rg_start = rg_stop
        if pieces:
            yield part, pieces


def stage_summary(refs: Sequence[TableRef]) -> str:
    """One log line for the tables a stage wrote: rows, bytes on disk, partitions, rate."""
    rows = sum(r.num_rows for r in refs)
    nbytes = sum(r.nbytes for r in refs)
    parts = sum(r.num_partitions for r in refs)
    secs = max((r.summary()["write_seconds"] for r in refs), default=0.0)
    rate = f", {nbytes / secs / 1e9:.2f} GB/s" if secs else ""
    return f"{len(refs)} table(s), {rows} rows, {parts} partitions, {nbytes / 1e6:.1f} MB written{rate}"


# -- Parsl memoization ------------------------------------------------------------------


def _id_for_memo_tableref(ref: TableRef, output_ref: bool = False) -> bytes:
    # Content, not location: a rerun that produced the same bytes elsewhere
    # (another run directory) hits the cache.
    return pickle.dumps(["parsl_rcylon.TableRef", ref.digest])


def register_memo() -> None:
    """Teach Parsl's memoizer (``cache=True``, checkpoints) to key ``TableRef`` arguments by content.

    Registers only where Parsl is loaded already: a bare MPI job that reads
    tables must not pay for importing it.  ``parsl_rcylon.app`` calls this
    after importing Parsl, which covers a table module loaded first.
    """
    memo = sys.modules.get("parsl.dataflow.memoization")
    if memo is not None:
        memo.id_for_memo.register(TableRef, _id_for_memo_tableref)


register_memo()

__all__ = ["TableRef", "stage_summary"]
