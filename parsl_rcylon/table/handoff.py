"""The collective hand-off of tables between stages: the two calls the rank runner makes.

* :func:`resolve_arguments` runs on every rank before the user function and
  turns ``TableRef`` arguments into this rank's share.
* :func:`publish_result` runs on every rank after it and turns the ranks'
  returned tables into one committed table.

Both are collective on the task's communicator and built on the engine's
agreement step (:func:`~parsl_rcylon.engine.agreement.agree`): every rank
learns every other rank's outcome before going on, so one rank's failure
raises on all ranks and none is left waiting in a collective.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa

from ..engine.agreement import Explain, RankFailure, agree
from ..engine.schemas import rank_differences
from ..options import TableOptions
from ..permissions import make_dir, new_dir, open_new
from ..tableio.errors import MixedResultError, TableError, TableSchemaError, TableWriteError
from ..tableio.formats import SUFFIX, write_partition
from ..tableio.manifest import Manifest, fsync_dir
from ..tableio.names import MANIFEST_NAME, marker_name, partition_name, writer_tag
from .binding import ShareReader, holds_ref, parameter_annotations
from .ref import TableRef

logger = logging.getLogger(__name__)


def _task(ctx: Any) -> str:
    return f"{ctx.name or 'app'}[{ctx.task_id}]"


def _agree(ctx: Any, step: Callable[[], Any], explain: Explain) -> List[Any]:
    """Every rank's result of ``step``; raises ``explain``'s error on every rank if a rank failed."""
    return agree(ctx.runtime_comm, _task(ctx), step, explain=explain, expected=TableError).metas


def _each_rank(error: type, prefix: str) -> Explain:
    """``<prefix>: rank r: Kind: message; rank s: ...`` as ``error``."""

    def explain(failures: Sequence[RankFailure], own: Optional[BaseException]) -> BaseException:
        return error(f"{prefix}: " + "; ".join(f"rank {f.rank}: {f.text}" for f in failures))

    return explain


# -- arguments --------------------------------------------------------------------


def resolve_arguments(ctx: Any, fn: Callable, args: Sequence[Any], kwargs: Dict[str, Any]
                      ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """Replace ``TableRef`` arguments with this rank's share, as ``pyarrow.Table``.

    Called on every rank of a task before ``fn(ctx, *args, **kwargs)``.
    ``TableRef`` values passed directly, or directly inside a list, tuple or
    dict argument, become ``ref.read_share(ctx.rank, ctx.size)``; the
    parameter's annotation can ask for the handle or a DataFrame instead
    (:mod:`.binding`).  Shares are checked at the table option ``verify``'s level.

    When a table argument is present, the call is collective on ``ctx.comm``:
    if any rank fails to read its share, every rank raises (the failing rank
    its own error, the others a ``TableError`` naming that rank and its
    error), so no rank enters the user function's collectives alone.

    Returns
    -------
    (tuple, dict)
        The arguments to call ``fn`` with, after ``ctx``.
    """
    args = tuple(args)
    kwargs = dict(kwargs)
    if not any(holds_ref(v) for v in list(args) + list(kwargs.values())):
        return args, kwargs
    arg_annotations, kw_annotations = parameter_annotations(fn, args, kwargs)
    reader = ShareReader(ctx.rank, ctx.size, ctx.options.table.verify)
    converted: List[Any] = []

    def read() -> None:
        converted.append(tuple(reader.convert(v, a) for v, a in zip(args, arg_annotations, strict=True)))
        converted.append({k: reader.convert(v, kw_annotations[k]) for k, v in kwargs.items()})

    def explain(failures: Sequence[RankFailure], own: Optional[BaseException]) -> BaseException:
        if isinstance(own, TableError):
            return own
        first = failures[0]
        return TableError(f"task {_task(ctx)}: rank {first.rank} of {ctx.size} could not read "
                          f"its table share: {first.text}")

    t0 = time.perf_counter()
    _agree(ctx, read, explain)
    if reader.refs:
        rows = sum(t.num_rows for t in reader.cache.values())
        logger.debug("task %s rank %d read %d table share(s), %d rows, in %.3fs", _task(ctx), ctx.rank,
                     len(reader.refs), rows, time.perf_counter() - t0)
    return converted[0], converted[1]


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


def _unify(schemas: Sequence[pa.Schema], task: str) -> pa.Schema:
    """One schema for all ranks; a column of type null on some ranks (e.g. an empty
    pandas partition) takes the type the other ranks agree on."""
    names = schemas[0].names
    bad: List[str] = []
    if all(s.names == names for s in schemas):
        target_fields = []
        for i, name in enumerate(names):
            fields = [s.field(i) for s in schemas]
            concrete = [f for f in fields if not pa.types.is_null(f.type)]
            choice = concrete[0] if concrete else fields[0]
            if any(not f.equals(choice) for f in concrete):
                bad.append(name)
            target_fields.append(choice.with_nullable(True) if len(concrete) < len(fields) else choice)
        if not bad:
            return pa.schema(target_fields, metadata=schemas[0].metadata)
    differing, details = rank_differences(schemas)
    raise TableSchemaError(
        f"task {task}: ranks {differing} returned tables with different schemas"
        + (f" (columns {sorted(bad)})" if bad else "") + ": " + details)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", str(text)) or "task"


def _claim_directory(data_dir: str, name: str, task_id: str, sharing: str) -> str:
    """Create the task's table directory exclusively, with the mode of ``sharing``, and mark it as ours.

    ``mkdir`` is atomic and fails if the directory exists, so two writers never
    share a directory, even two runs reusing task ids over one ``data_dir``.
    The marker (:func:`~parsl_rcylon.tableio.names.marker_name`) tells a
    later cleanup which process may still commit the directory.
    """
    make_dir(data_dir, sharing)
    base = os.path.join(os.path.abspath(data_dir), f"{_safe_name(name or 'app')}-{_safe_name(task_id)}")
    for attempt in range(1000):
        path = base if attempt == 0 else f"{base}.{attempt}"
        try:
            new_dir(path, sharing)
        except FileExistsError:
            continue
        try:
            os.close(open_new(os.path.join(path, marker_name()), sharing))
        except BaseException:
            os.rmdir(path)
            raise
        return path
    raise TableWriteError(f"{base}: 1000 table directories of this name exist already")


def publish_result(ctx: Any, value: Any, ok: bool = True) -> Any:
    """Turn per-rank tables into one committed table; collective on ``ctx.comm``.

    Called on every rank after the user function returned ``value`` (``ok``)
    or raised (``ok=False``, ``value`` ignored).  The table is written with
    the task's table options (``ctx.options.table``).

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
    claimed: List[str] = []

    def status() -> Dict[str, Any]:
        nonlocal table
        error: Optional[str] = None
        if ok:
            try:
                table = _as_table(value)
            except Exception as err:
                error = f"cannot convert {type(value).__name__} to an Arrow table: {type(err).__name__}: {err}"
            if table is not None:
                try:
                    if not ctx.data_dir:
                        raise TableWriteError("the task has no data_dir to write tables to")
                    if ctx.rank == 0:
                        claimed.append(_claim_directory(ctx.data_dir, ctx.name, ctx.task_id,
                                                        ctx.options.table.sharing))
                except Exception as err:
                    error = f"{type(err).__name__}: {err}"
        return {
            "ok": ok,
            "table": table is not None,
            "type": type(value).__name__,
            "schema": table.schema if table is not None else None,
            "nbytes": table.nbytes if table is not None else 0,
            "error": error,
            "dir": claimed[0] if claimed else None,
        }

    def release() -> None:
        for directory in claimed:
            _remove_partial(directory, ())

    try:
        statuses = _agree(ctx, status, _each_rank(TableWriteError, f"task {task}: cannot publish the result table"))
    except TableError:
        release()
        raise
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
        schema = _unify([s["schema"] for s in statuses], task)
    except TableSchemaError:
        release()
        raise
    assert table is not None
    return _write_table(ctx, table, schema, statuses[0]["dir"], sum(s["nbytes"] for s in statuses))


def _write_table(ctx: Any, table: pa.Table, schema: pa.Schema, directory: str, arrow_nbytes: int
                 ) -> Optional[TableRef]:
    """Every rank writes its partition; then rank 0 commits the manifest (or removes what was written)."""
    rank, size, task = ctx.rank, ctx.size, _task(ctx)
    opts: TableOptions = ctx.options.table
    names = [partition_name(r, size, SUFFIX[opts.format]) for r in range(size)]

    def write() -> Any:
        data = table if table.schema.equals(schema, check_metadata=True) else table.cast(schema)
        return write_partition(data, directory, names[rank], opts, rank=rank)

    try:
        partitions = _agree(ctx, write, _each_rank(TableWriteError,
                                                   f"task {task}: cannot write the result table in {directory}"))
    except TableError:
        # Each rank removes its own file (ranks may sit on different nodes'
        # views of the filesystem); rank 0 then removes whatever is left.
        _remove_files(directory, [names[rank]])
        if rank == 0:
            _remove_partial(directory, names)
        raise
    ref: List[TableRef] = []

    def commit() -> None:
        if rank != 0:
            return
        try:
            manifest = Manifest(opts.format, schema, partitions, info={
                "task_id": str(ctx.task_id), "name": ctx.name, "ranks": size,
                "compression": opts.compression, "row_group_size": opts.row_group_size,
                "keep": opts.keep, "created": time.time(), "pyarrow": pa.__version__,
                "arrow_nbytes": arrow_nbytes, "writer": writer_tag(),
            })
            manifest.write(directory, fsync=opts.fsync, sharing=opts.sharing)
            if opts.fsync:
                # The table directory's own entry in data_dir.
                fsync_dir(os.path.dirname(directory))
        except BaseException:
            # The manifest goes first: a failure after its rename (the
            # directory's fsync) must not leave a committed table behind.
            _remove_partial(directory, [MANIFEST_NAME] + names)
            raise
        # Committed: the claim is over (a marker left by a crash here is
        # removed by tableio.cleanup; the table itself is complete).
        _remove_files(directory, [marker_name()])
        ref.append(TableRef._written(manifest, directory, keep=opts.keep))

    def explain(failures: Sequence[RankFailure], own: Optional[BaseException]) -> BaseException:
        return TableWriteError(f"task {task}: cannot commit the result table in {directory}: {failures[0].text}")

    _agree(ctx, commit, explain)
    if not ref:
        return None
    s = ref[0].summary()
    logger.info("task %s wrote %d rows in %d partitions, %d bytes (%s), to %s in %.3fs",
                task, s["num_rows"], s["num_partitions"], s["nbytes"], opts.format, directory,
                s["write_seconds"])
    return ref[0]


def _remove_files(directory: str, names: Sequence[str]) -> None:
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("cannot remove %s: %s", os.path.join(directory, name), err)


def _remove_partial(directory: str, names: Sequence[str]) -> None:
    """Remove the partition files of an uncommitted table, rank 0's claim on it, then the directory."""
    _remove_files(directory, list(names) + [marker_name()])
    try:
        os.rmdir(directory)
    except OSError as err:
        # Something not ours, or a killed peer's temporary file: tableio.cleanup's to judge.
        logger.warning("uncommitted table directory %s not removed: %s", directory, err)


__all__ = ["publish_result", "resolve_arguments"]
