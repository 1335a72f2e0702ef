"""Tables between stages: :class:`TableRef`, and the two calls the rank runner makes.

A ``cylon_app`` that returns a ``pyarrow.Table`` (or a pandas DataFrame) on
every rank yields a :class:`TableRef`: every rank wrote its partition as a file
in ``<data_dir>/<app>-<task>/`` and rank 0 committed the table by writing its
manifest last.  A later stage receives a ``TableRef`` argument as *its rank's
share* of the rows, balanced over its own rank count whatever the writer's.

* :func:`resolve_arguments` runs on every rank before the user function.
* :func:`publish_result` runs on every rank after it (collective).
"""
from __future__ import annotations

import glob as _glob
import hashlib
import inspect
import json
import logging
import os
import pickle
import re
import sys
import time
import typing
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pyarrow as pa
import pyarrow.dataset as ds

from .tableio.errors import (
    ManifestError,
    MixedResultError,
    TableCorruptError,
    TableError,
    TableSchemaError,
    TableWriteError,
)
from .tableio.formats import (
    DEFAULT_COMPRESSION,
    DEFAULT_ROW_GROUP_SIZE,
    SUFFIX,
    VERIFY_LEVELS,
    WriteOptions,
    file_crc,
    inspect_parquet,
    read_pieces,
    write_partition,
)
from .tableio.manifest import MANIFEST_NAME, PART_PREFIX, Manifest, Partition, schema_to_text

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_COMPRESSION", "DEFAULT_ROW_GROUP_SIZE", "ManifestError", "MixedResultError", "TableCorruptError",
    "TableError", "TableRef", "TableSchemaError", "TableWriteError", "WriteOptions", "publish_result",
    "resolve_arguments", "share_bounds", "stage_summary",
]

_PART_RE = re.compile(r"^part-\d{5}-of-\d{5}\.(parquet|arrow)$")


def share_bounds(num_rows: int, rank: int, size: int) -> Tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` of ``size``: shares differ by at most one row."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a group of {size}")
    return num_rows * rank // size, num_rows * (rank + 1) // size


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
        Directory the partition file names are relative to; ``None`` when the
        partitions carry absolute paths (external data).
    owned : bool
        Whether parsl_rcylon wrote the files (only then may :meth:`delete` remove them).
    keep : bool
        The writer's ``keep`` option: whether the table should outlive the workflow.

    Notes
    -----
    Make one with :meth:`from_parquet` (existing data, or a committed table
    directory) or get one as the result of a ``cylon_app`` returning tables.
    """

    def __init__(self, manifest: Manifest, root: Optional[str] = None, owned: bool = False,
                 keep: bool = True) -> None:
        self._manifest = manifest
        self._root = root
        self.owned = owned
        self.keep = keep
        self._digest: Optional[str] = None if manifest.info.get("external") else manifest.digest

    # -- description ------------------------------------------------------

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
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        state["_manifest"] = Manifest.from_json(state["_manifest"], "pickled TableRef")
        self.__dict__.update(state)

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
        return os.path.join(self._root, part.file) if self._root else part.file

    def _check_unchanged(self, part: Partition) -> None:
        path = self._file(part)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise TableCorruptError(f"{path}: file is missing (table {self._root or path})") from None
        if size != part.nbytes:
            raise TableCorruptError(f"{path}: file is {size} bytes but the manifest says {part.nbytes} "
                                    "(truncated, or replaced after it was written)")

    def _read_range(self, start: int, stop: int, columns: Optional[Sequence[str]], filter: Any,
                    verify: str, use_threads: bool = True) -> pa.Table:
        if verify not in VERIFY_LEVELS:
            raise TableError(f"verify={verify!r}: expected one of {VERIFY_LEVELS}")
        if columns is not None:
            columns = list(columns)
            missing = [c for c in columns if c not in self.schema.names]
            if missing:
                raise TableError(f"columns {missing} are not in table {self!r} "
                                 f"(columns: {self.schema.names})")
        # Only the files of this range are opened (and checked): on a parallel
        # filesystem, every rank stat-ing every file of a wide table is a
        # metadata storm.  resolve_arguments makes one rank's failure everyone's.
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

        Only tables written by parsl_rcylon can be deleted; external data
        (:meth:`from_parquet` on files without a manifest) is never touched.
        """
        if not self.owned or not self._root:
            raise TableError(f"{self!r} refers to data parsl_rcylon did not write; not deleting it")
        try:
            os.unlink(os.path.join(self._root, MANIFEST_NAME))
        except FileNotFoundError:
            pass
        for path in self.files:
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
        manifest = Manifest.load(directory)
        ref = cls(manifest, root=directory, owned=True, keep=bool(manifest.info.get("keep", True)))
        ref.verify("footer")
        return ref

    @classmethod
    def _from_files(cls, files: List[str], what: str) -> TableRef:
        for f in files:
            d = os.path.dirname(os.path.abspath(f))
            if _PART_RE.match(os.path.basename(f)) and not os.path.exists(os.path.join(d, MANIFEST_NAME)):
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
                                       f"{_schema_diff(schema, file_schema, 'first', 'this')}")
            parts.append(part)
        assert schema is not None
        manifest = Manifest("parquet", schema, parts, info={"source": what, "external": True})
        ref = cls(manifest, root=None, owned=False)
        # No writer checksummed these bytes; TableRef.digest hashes them on demand.
        ref._digest = None
        return ref


def _has_our_parts(directory: str) -> bool:
    try:
        return any(_PART_RE.match(n) for n in os.listdir(directory))
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


# -- arguments --------------------------------------------------------------------


def _mentions_tableref(annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty or annotation is None:
        return False
    if isinstance(annotation, str):
        return re.search(r"\bTableRef\b", annotation) is not None
    if isinstance(annotation, type) and issubclass(annotation, TableRef):
        return True
    return any(_mentions_tableref(a) for a in typing.get_args(annotation))


def _wants_pandas(annotation: Any) -> bool:
    pd = sys.modules.get("pandas")
    if pd is None or annotation is inspect.Parameter.empty:
        return False
    if isinstance(annotation, str):
        return re.fullmatch(r"(pd|pandas)\.DataFrame", annotation.strip()) is not None
    return annotation is pd.DataFrame


def _annotations(fn: Callable) -> Dict[str, Any]:
    """Parameter annotations, resolving string ones where possible (strings stay strings otherwise)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    raw = {name: p.annotation for name, p in sig.parameters.items()}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation naming something not importable here
        hints = {}
    return {name: hints.get(name, ann) for name, ann in raw.items()}


def _binding(fn: Callable, args: Sequence[Any], kwargs: Dict[str, Any]):
    """Map positional and keyword arguments to parameters (the first parameter is ``ctx``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    var_kw = next((p for p in params if p.kind == p.VAR_KEYWORD), None)
    names = [p.name for p in positional[1:]]  # skip ctx
    extra = var_pos.name if var_pos else None
    arg_names = [names[i] if i < len(names) else extra for i in range(len(args))]
    kw_names = {k: (k if k in sig.parameters and sig.parameters[k].kind != inspect.Parameter.VAR_KEYWORD
                    else (var_kw.name if var_kw else None)) for k in kwargs}
    return arg_names, kw_names


class _Reader:
    """Reads the shares of one task's TableRef arguments, once per distinct ref."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.verify = (ctx.options or {}).get("verify", "checksum")
        self.cache: Dict[int, pa.Table] = {}
        self.refs: List[TableRef] = []

    def share(self, ref: TableRef, pandas: bool = False) -> Any:
        key = id(ref)
        if key not in self.cache:
            self.refs.append(ref)
            self.cache[key] = ref.read_share(self.ctx.rank, self.ctx.size, verify=self.verify)
        table = self.cache[key]
        return table.to_pandas() if pandas else table

    def convert(self, value: Any, annotation: Any) -> Any:
        if _mentions_tableref(annotation):
            return value
        pandas = _wants_pandas(annotation)
        if isinstance(value, TableRef):
            return self.share(value, pandas)
        # One level into containers: lists of tables are common (concat, union).
        if type(value) in (list, tuple) and any(isinstance(v, TableRef) for v in value):
            return type(value)(self.share(v) if isinstance(v, TableRef) else v for v in value)
        if isinstance(value, tuple) and hasattr(value, "_fields") and _holds_ref(value):
            return type(value)(*(self.share(v) if isinstance(v, TableRef) else v for v in value))
        if type(value) is dict and any(isinstance(v, TableRef) for v in value.values()):
            return {k: self.share(v) if isinstance(v, TableRef) else v for k, v in value.items()}
        return value


def resolve_arguments(ctx: Any, fn: Callable, args: Sequence[Any], kwargs: Dict[str, Any]
                      ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """Replace ``TableRef`` arguments with this rank's share, as ``pyarrow.Table``.

    Called on every rank of a task before ``fn(ctx, *args, **kwargs)``.
    ``TableRef`` values passed directly, or directly inside a list, tuple or
    dict argument, become ``ref.read_share(ctx.rank, ctx.size)``.  Parameters
    annotated with ``TableRef`` (also ``Optional[TableRef]``,
    ``List[TableRef]``, or the string ``"TableRef"``) receive the handle
    itself; parameters annotated ``pandas.DataFrame`` receive the share as a
    DataFrame.

    When a table argument is present, the call is collective on ``ctx.comm``:
    if any rank fails to read its share, every rank raises, so no rank enters
    the user function's collectives alone.

    Returns
    -------
    (tuple, dict)
        The arguments to call ``fn`` with, after ``ctx``.
    """
    args = tuple(args)
    kwargs = dict(kwargs)
    if not any(_holds_ref(v) for v in list(args) + list(kwargs.values())):
        return args, kwargs
    annotations = _annotations(fn)
    binding = _binding(fn, args, kwargs)
    arg_names, kw_names = binding if binding else ([None] * len(args), {k: k for k in kwargs})
    reader = _Reader(ctx)
    error: Optional[str] = None
    failure: Optional[Exception] = None
    t0 = time.perf_counter()
    try:
        new_args = tuple(reader.convert(v, annotations.get(n, inspect.Parameter.empty))
                         for v, n in zip(args, arg_names, strict=False))
        new_kwargs = {k: reader.convert(v, annotations.get(kw_names.get(k), inspect.Parameter.empty))
                      for k, v in kwargs.items()}
    except Exception as err:  # reported collectively below
        error = f"{type(err).__name__}: {err}"
        failure = err
    errors = _allgather(ctx, error)
    bad = [(r, e) for r, e in enumerate(errors) if e]
    if bad:
        if isinstance(failure, TableError):
            raise failure
        rank, text = bad[0]
        raise TableError(f"task {_task(ctx)}: rank {rank} of {ctx.size} could not read "
                         f"its table share: {text}")
    if reader.refs:
        rows = sum(t.num_rows for t in reader.cache.values())
        logger.debug("task %s rank %d read %d table share(s), %d rows, in %.3fs", _task(ctx), ctx.rank,
                     len(reader.refs), rows, time.perf_counter() - t0)
    return new_args, new_kwargs


def _holds_ref(value: Any) -> bool:
    if isinstance(value, TableRef):
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, TableRef) for v in value)
    if type(value) is dict:
        return any(isinstance(v, TableRef) for v in value.values())
    return False


def _allgather(ctx: Any, value: Any) -> List[Any]:
    return [value] if ctx.size == 1 else ctx.comm.allgather(value)


def _task(ctx: Any) -> str:
    return f"{ctx.name or 'app'}[{ctx.task_id}]"


# -- results ------------------------------------------------------------------------


def _as_table(value: Any) -> Optional[pa.Table]:
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame):
        # A RangeIndex is not data; anything else is kept as a column.
        keep_index = not isinstance(value.index, pd.RangeIndex)
        return pa.Table.from_pandas(value, preserve_index=keep_index)
    return None


def _schema_diff(a: pa.Schema, b: pa.Schema, a_name: str, b_name: str) -> str:
    """The columns where two schemas differ, in words."""
    out = []
    a_fields = {f.name: f for f in a}
    b_fields = {f.name: f for f in b}
    for name in a.names:
        if name not in b_fields:
            out.append(f"column {name!r} only on {a_name}")
        elif not a_fields[name].equals(b_fields[name]):
            fa, fb = a_fields[name], b_fields[name]
            extra = "" if fa.type == fb.type else f": {fa.type} on {a_name} vs {fb.type} on {b_name}"
            if fa.type == fb.type and fa.nullable != fb.nullable:
                extra = f": nullable={fa.nullable} on {a_name} vs {fb.nullable} on {b_name}"
            out.append(f"column {name!r}{extra}")
    for name in b.names:
        if name not in a_fields:
            out.append(f"column {name!r} only on {b_name}")
    if not out and a.names != b.names:
        out.append(f"column order {a.names} on {a_name} vs {b.names} on {b_name}")
    return "; ".join(out) or "schemas differ"


def _unify(schemas: Dict[int, pa.Schema], task: str) -> pa.Schema:
    """One schema for all ranks; a column of type null on some ranks (e.g. an empty
    pandas partition) takes the type the other ranks agree on."""
    ranks = sorted(schemas)
    names = schemas[ranks[0]].names
    target_fields = []
    bad_cols: Dict[str, List[int]] = {}
    if all(schemas[r].names == names for r in ranks):
        for i, name in enumerate(names):
            fields = {r: schemas[r].field(i) for r in ranks}
            concrete = [f for f in fields.values() if not pa.types.is_null(f.type)]
            choice = concrete[0] if concrete else fields[ranks[0]]
            if any(not f.equals(choice) for f in concrete):
                bad_cols[name] = [r for r in ranks if not pa.types.is_null(fields[r].type)]
            target_fields.append(choice.with_nullable(True) if len(concrete) < len(ranks) else choice)
    else:
        bad_cols["*"] = ranks
    if bad_cols:
        ref_rank = ranks[0]
        details = []
        for r in ranks[1:]:
            if not schemas[r].equals(schemas[ref_rank]):
                diff = _schema_diff(schemas[ref_rank], schemas[r], f"rank {ref_rank}", f"rank {r}")
                details.append(f"rank {ref_rank} vs rank {r}: {diff}")
        differing = sorted({r for r in ranks[1:] if not schemas[r].equals(schemas[ref_rank])} | {ref_rank})
        cols = sorted(c for c in bad_cols if c != "*")
        raise TableSchemaError(
            f"task {task}: ranks {differing} returned tables with different schemas"
            + (f" (columns {cols})" if cols else "") + ": " + "; ".join(details))
    return pa.schema(target_fields, metadata=schemas[ranks[0]].metadata)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", str(text)) or "task"


def _claim_directory(data_dir: str, name: str, task_id: str) -> str:
    """Create the task's table directory exclusively.

    ``mkdir`` is atomic and fails if the directory exists, so two writers never
    share a directory, even two runs reusing task ids over one ``data_dir``.
    """
    os.makedirs(data_dir, exist_ok=True)
    base = os.path.join(os.path.abspath(data_dir), f"{_safe_name(name or 'app')}-{_safe_name(task_id)}")
    for attempt in range(1000):
        path = base if attempt == 0 else f"{base}.{attempt}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise TableWriteError(f"{base}: 1000 table directories of this name exist already")


def publish_result(ctx: Any, value: Any, ok: bool = True) -> Any:
    """Turn per-rank tables into one committed table; collective on ``ctx.comm``.

    Called on every rank after the user function returned ``value`` (``ok``)
    or raised (``ok=False``, ``value`` ignored).

    Returns
    -------
    TableRef, value or None
        ``None`` on every rank if any rank failed; ``value`` unchanged if no
        rank returned a table; if every rank returned a table (``pyarrow.Table``,
        ``RecordBatch`` or pandas ``DataFrame``), a :class:`TableRef` on rank 0
        and ``None`` elsewhere.

    Raises
    ------
    MixedResultError
        Some ranks returned tables and others did not (on every rank).
    TableSchemaError
        The ranks' tables have different columns or types (on every rank).
    TableWriteError
        A rank could not write its partition, or rank 0 the manifest (on every rank).
    """
    task = _task(ctx)
    table: Optional[pa.Table] = None
    error: Optional[str] = None
    claimed: Optional[str] = None
    opts: Optional[WriteOptions] = None
    if ok:
        try:
            table = _as_table(value)
        except Exception as err:
            error = f"cannot convert {type(value).__name__} to an Arrow table: {type(err).__name__}: {err}"
        if table is not None:
            try:
                opts = WriteOptions.from_options(ctx.options)
                if not ctx.data_dir:
                    raise TableWriteError("the task has no data_dir to write tables to")
                if ctx.rank == 0:
                    claimed = _claim_directory(ctx.data_dir, ctx.name, ctx.task_id)
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
    status = {
        "ok": ok,
        "table": table is not None,
        "type": type(value).__name__,
        "schema": table.schema if table is not None else None,
        "rows": table.num_rows if table is not None else 0,
        "nbytes": table.nbytes if table is not None else 0,
        "error": error,
        "dir": claimed,
    }
    statuses = _allgather(ctx, status)

    def release() -> None:
        if claimed:
            try:
                os.rmdir(claimed)
            except OSError:
                pass

    if not all(s["ok"] for s in statuses):
        release()
        return None
    table_ranks = [r for r, s in enumerate(statuses) if s["table"]]
    if not table_ranks:
        return value
    if len(table_ranks) != len(statuses):
        release()
        others = [r for r, s in enumerate(statuses) if not s["table"]]
        kinds = sorted({statuses[r]["type"] for r in others})
        raise MixedResultError(f"task {task}: ranks {table_ranks} returned tables but ranks {others} "
                               f"returned {', '.join(kinds)}; return a table on every rank (an empty "
                               "one where a rank has no rows) or a non-table on every rank")
    errors = [(r, s["error"]) for r, s in enumerate(statuses) if s["error"]]
    if errors:
        release()
        raise TableWriteError(f"task {task}: cannot publish the result table: "
                              + "; ".join(f"rank {r}: {e}" for r, e in errors))
    try:
        schema = _unify({r: s["schema"] for r, s in enumerate(statuses)}, task)
    except TableSchemaError:
        release()
        raise
    directory = statuses[0]["dir"]
    assert table is not None and opts is not None
    arrow_nbytes = sum(s["nbytes"] for s in statuses)
    return _write_table(ctx, table, schema, directory, opts, task, arrow_nbytes)


def _write_table(ctx: Any, table: pa.Table, schema: pa.Schema, directory: str, opts: WriteOptions,
                 task: str, arrow_nbytes: int) -> Optional[TableRef]:
    rank, size = ctx.rank, ctx.size
    info: Any
    try:
        if not table.schema.equals(schema, check_metadata=True):
            table = table.cast(schema)
        name = f"{PART_PREFIX}{rank:05d}-of-{size:05d}{SUFFIX[opts.format]}"
        info = write_partition(table, directory, name, opts, rank=rank)
    except Exception as err:
        info = f"{type(err).__name__}: {err}"
    infos = [info] if size == 1 else ctx.comm.gather(info, root=0)
    outcome: Tuple[bool, str] = (True, "")
    ref: Optional[TableRef] = None
    if rank == 0:
        failed = [(r, i) for r, i in enumerate(infos) if not isinstance(i, Partition)]
        if failed:
            outcome = (False, f"task {task}: cannot write the result table in {directory}: "
                       + "; ".join(f"rank {r}: {e}" for r, e in failed))
            _remove_partial(directory, [i for i in infos if isinstance(i, Partition)])
        else:
            try:
                manifest = Manifest(opts.format, schema, list(infos), info={
                    "task_id": str(ctx.task_id), "name": ctx.name, "ranks": size,
                    "compression": opts.compression, "row_group_size": opts.row_group_size,
                    "keep": opts.keep, "created": time.time(), "pyarrow": pa.__version__,
                    "arrow_nbytes": arrow_nbytes,
                })
                manifest.write(directory, fsync=opts.fsync)
                ref = TableRef(manifest, root=directory, owned=True, keep=opts.keep)
            except Exception as err:
                outcome = (False, f"task {task}: cannot commit the result table in {directory}: "
                           f"{type(err).__name__}: {err}")
                _remove_partial(directory, list(infos))
    if size > 1:
        outcome = ctx.comm.bcast(outcome, root=0)
    if not outcome[0]:
        raise TableWriteError(outcome[1])
    if ref is not None:
        s = ref.summary()
        logger.info("task %s wrote %d rows in %d partitions, %d bytes (%s), to %s in %.3fs",
                    task, s["num_rows"], s["num_partitions"], s["nbytes"], opts.format, directory,
                    s["write_seconds"])
    return ref


def _remove_partial(directory: str, parts: List[Partition]) -> None:
    for part in parts:
        try:
            os.unlink(os.path.join(directory, part.file))
        except OSError:
            pass
    try:
        os.rmdir(directory)
    except OSError:
        pass


def stage_summary(refs: Sequence[TableRef]) -> str:
    """One log line for the tables a stage wrote: rows, bytes on disk, partitions, rate."""
    rows = sum(r.num_rows for r in refs)
    nbytes = sum(r.nbytes for r in refs)
    parts = sum(r.num_partitions for r in refs)
    secs = max((r.summary()["write_seconds"] for r in refs), default=0.0)
    rate = f", {nbytes / secs / 1e9:.2f} GB/s" if secs else ""
    return f"{len(refs)} table(s), {rows} rows, {parts} partitions, {nbytes / 1e6:.1f} MB written{rate}"


# -- Parsl memoization ------------------------------------------------------------------


def _register_memo() -> None:
    try:
        from parsl.dataflow.memoization import id_for_memo
    except ImportError:  # parsl is optional for reading tables
        return

    @id_for_memo.register(TableRef)
    def _id_for_memo_tableref(ref: TableRef, output_ref: bool = False) -> bytes:
        # Content, not location: a rerun that produced the same bytes elsewhere
        # (another run directory) hits the cache.
        return pickle.dumps(["parsl_rcylon.TableRef", ref.digest])


_register_memo()
