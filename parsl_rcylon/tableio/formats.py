"""Writing one partition file, and reading a row range of one back.

Two formats share one layout description (:class:`~.manifest.Partition`):
Parquet (the default; portable, compressible, statistics for filter pruning)
and Arrow IPC files (no encoding step at all; memory-mapped on read).

Checksums are taken from a memory map of the file just written, so the bytes
hashed are the bytes on disk, with no second copy in memory.  Readers hash the
ranges they decode from the same kind of map before decoding them.
"""
from __future__ import annotations

import logging
import os
import time
import zlib
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..engine.schemas import conform
from ..options import TableOptions
from ..permissions import open_new
from .errors import TableCorruptError, TableError, TableWriteError
from .manifest import Partition, Segment, fsync_dir
from .names import temp_name

logger = logging.getLogger(__name__)

SUFFIX = {"parquet": ".parquet", "ipc": ".arrow"}


def dictionary_columns(opts: TableOptions, schema: pa.Schema) -> Any:
    """Parquet's ``use_dictionary`` for ``schema`` under ``opts.use_dictionary`` (``"auto"``: dictionary columns)."""
    if opts.use_dictionary == "auto":
        return [f.name for f in schema if pa.types.is_dictionary(f.type)]
    return opts.use_dictionary


# -- byte ranges and checksums ------------------------------------------------

def _open_map(path: str) -> pa.MemoryMappedFile:
    try:
        return pa.memory_map(path, "r")
    except FileNotFoundError:
        raise TableCorruptError(f"{path}: file is missing") from None
    except (OSError, pa.ArrowException) as err:
        raise TableCorruptError(f"{path}: cannot open: {err}") from None


def _crc(mm: pa.MemoryMappedFile, offset: int, length: int) -> int:
    if length == 0:
        return 0
    mm.seek(offset)
    # read_buffer on a memory map is a zero-copy view of the page cache
    return zlib.crc32(mm.read_buffer(length))


def _segment(mm: pa.MemoryMappedFile, start: int, end: int) -> Segment:
    return Segment(start, end - start, _crc(mm, start, end - start))


def _check_segment(mm: pa.MemoryMappedFile, seg: Segment, path: str, what: str) -> None:
    if _crc(mm, seg.offset, seg.length) != seg.crc:
        raise TableCorruptError(
            f"{path}: checksum mismatch in {what} (bytes {seg.offset}..{seg.offset + seg.length}): "
            "the file is corrupt or was changed after it was written")


# -- Parquet layout -----------------------------------------------------------

def _parquet_footer(mm: pa.MemoryMappedFile, path: str) -> Tuple[pq.FileMetaData, int]:
    """Metadata and footer offset; raises naming the file when there is no valid footer."""
    size = mm.size()
    if size < 12:
        raise TableCorruptError(f"{path}: not a Parquet file ({size} bytes; truncated?)")
    mm.seek(size - 8)
    tail = mm.read(8)
    if tail[4:] != b"PAR1":
        raise TableCorruptError(f"{path}: not a Parquet file (no footer magic; truncated or corrupt)")
    footer_start = size - 8 - int.from_bytes(tail[:4], "little")
    if footer_start < 4:
        raise TableCorruptError(f"{path}: corrupt Parquet footer length (truncated?)")
    try:
        mm.seek(0)
        metadata = pq.read_metadata(mm)
    except (OSError, pa.ArrowException) as err:
        raise TableCorruptError(f"{path}: unreadable Parquet footer: {err}") from None
    return metadata, footer_start


def _row_group_starts(metadata: pq.FileMetaData) -> Optional[List[int]]:
    starts = []
    for i in range(metadata.num_row_groups):
        rg = metadata.row_group(i)
        offsets = []
        for j in range(rg.num_columns):
            col = rg.column(j)
            off = col.dictionary_page_offset if col.has_dictionary_page else None
            offsets.append(off if off else col.data_page_offset)
        offsets = [o for o in offsets if o]
        if not offsets:
            return None
        starts.append(min(offsets))
    return starts


def parquet_layout(mm: pa.MemoryMappedFile, path: str, with_segments: bool
                   ) -> Tuple[pq.FileMetaData, Tuple[int, ...], Optional[Segment],
                              Optional[Tuple[Segment, ...]], Segment]:
    """Describe a Parquet file as head, one segment per row group, and tail."""
    metadata, footer_start = _parquet_footer(mm, path)
    size = mm.size()
    row_groups = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    tail = _segment(mm, footer_start, size)
    if not with_segments:
        return metadata, row_groups, None, None, tail
    starts = _row_group_starts(metadata)
    ok = starts is not None and all(
        4 <= a < b for a, b in zip(starts, starts[1:] + [footer_start], strict=False))
    if not ok or not starts:
        # Unusual layout (no row groups, no column chunks): checksum everything
        # before the footer as the head, which every read verifies.
        head = _segment(mm, 0, footer_start)
        return metadata, row_groups, head, tuple(Segment(footer_start, 0, 0) for _ in row_groups), tail
    head = _segment(mm, 0, starts[0])
    ends = starts[1:] + [footer_start]
    segments = tuple(_segment(mm, a, b) for a, b in zip(starts, ends, strict=False))
    return metadata, row_groups, head, segments, tail


# -- writing ------------------------------------------------------------------

def write_partition(table: pa.Table, directory: str, filename: str, opts: TableOptions,
                    rank: Optional[int] = None) -> Partition:
    """Write ``table`` to ``directory/filename`` atomically and describe the file.

    The file is made with the mode of ``opts.sharing`` before a byte goes in
    (the umask never decides), under a temporary name carrying this writer's
    tag, and renamed into place once complete; with ``opts.fsync`` the file
    and then the directory entry are flushed to stable storage first.  On
    any failure nothing of it is left: neither the temporary file nor the
    partition.

    Raises
    ------
    TableWriteError
        The file could not be written (a full disk, a quota, permissions),
        naming the partition's path.
    """
    t0 = time.perf_counter()
    final = os.path.join(directory, filename)
    tmp = os.path.join(directory, temp_name(filename))
    placed = False
    try:
        # Made here with its final mode; the writers below open it again by
        # name, which truncates it but keeps the mode.
        os.close(open_new(tmp, opts.sharing))
        writer = _write_parquet if opts.format == "parquet" else _write_ipc
        positions = writer(table, tmp, opts)
        mm = _open_map(tmp)
        try:
            if opts.format == "parquet":
                _, row_groups, head, segments, tail = parquet_layout(mm, tmp, with_segments=True)
            else:
                row_groups, head, segments, tail = _ipc_layout(mm, positions)
            nbytes = mm.size()
        finally:
            mm.close()
        if sum(row_groups) != table.num_rows:
            raise TableCorruptError(f"{final}: wrote {table.num_rows} rows but the file holds {sum(row_groups)}")
        if opts.fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
        placed = True
        if opts.fsync:
            fsync_dir(directory)
    except BaseException as err:
        for path in (tmp, final) if placed else (tmp,):
            try:
                os.unlink(path)
            except OSError:
                pass
        if isinstance(err, (OSError, pa.ArrowException)) and not isinstance(err, TableError):
            raise TableWriteError(f"{final}: cannot write this partition: {err}") from err
        raise
    return Partition(file=filename, num_rows=table.num_rows, nbytes=nbytes, row_groups=row_groups,
                     tail=tail, head=head, segments=segments, rank=rank,
                     write_seconds=time.perf_counter() - t0)


def _write_parquet(table: pa.Table, path: str, opts: TableOptions) -> None:
    # The layout is read back from the footer, which knows where row groups start.
    pq.write_table(
        table, path,
        row_group_size=opts.row_group_size,
        compression=opts.compression,
        compression_level=opts.compression_level,
        use_dictionary=dictionary_columns(opts, table.schema),
        write_statistics=True,
        store_schema=True,
    )


def _write_ipc(table: pa.Table, path: str, opts: TableOptions) -> List[Tuple[int, int]]:
    """Write an IPC file; returns (end offset, rows) of each record batch.

    The IPC footer records batch offsets but pyarrow does not expose them, so
    they are taken from the sink as the batches go out.
    """
    codec = None if opts.compression == "none" else opts.compression
    if codec is not None and opts.compression_level is not None:
        codec = pa.Codec(codec, opts.compression_level)
    options = pa.ipc.IpcWriteOptions(compression=codec)
    if any(pa.types.is_dictionary(f.type) for f in table.schema):
        # The IPC file format allows one dictionary per column for the whole file.
        table = table.unify_dictionaries()
    positions = []
    with pa.OSFile(path, "wb") as sink:
        with pa.ipc.new_file(sink, table.schema, options=options) as writer:
            for batch in table.to_batches(max_chunksize=opts.row_group_size):
                writer.write_batch(batch)
                positions.append((sink.tell(), batch.num_rows))
    return positions


def _ipc_layout(mm: pa.MemoryMappedFile, positions: List[Tuple[int, int]]
                ) -> Tuple[Tuple[int, ...], Segment, Tuple[Segment, ...], Segment]:
    # The schema message goes out with the first batch, so segment 0 covers
    # magic, schema and dictionaries, and the head is empty.
    size = mm.size()
    head = Segment(0, 0, 0)
    starts = [0] + [p for p, _ in positions[:-1]]
    ends = [p for p, _ in positions]
    segments = tuple(_segment(mm, a, b) for a, b in zip(starts, ends, strict=False))
    tail = _segment(mm, ends[-1] if ends else 0, size)
    return tuple(n for _, n in positions), head, segments, tail


# -- reading ------------------------------------------------------------------

def needed_columns(schema: pa.Schema, columns: Optional[Sequence[str]], filter: Any) -> Optional[List[str]]:
    """The columns to read so that ``filter`` can be evaluated and ``columns`` returned."""
    if columns is None:
        return None
    columns = list(columns)
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise TableError(f"columns {missing} are not in the table (columns: {schema.names})")
    if filter is None:
        return columns
    empty = schema.empty_table()

    def binds(names: List[str]) -> bool:
        try:
            empty.select(names).filter(filter)
            return True
        except (pa.ArrowException, KeyError, TypeError, ValueError):
            return False

    if binds(columns):
        return columns
    extra = [n for n in schema.names if n not in columns]
    if not binds(columns + extra):
        raise TableError(f"filter {filter} cannot be evaluated on this table (columns: {schema.names})")
    # Expressions do not list the fields they use; drop unneeded ones by probing.
    for name in list(extra):
        trial = [n for n in extra if n != name]
        if binds(columns + trial):
            extra = trial
    return columns + extra


def _finish(table: pa.Table, columns: Optional[Sequence[str]], filter: Any) -> pa.Table:
    if filter is not None:
        table = table.filter(filter)
    if columns is not None and table.column_names != list(columns):
        table = table.select(list(columns))
    return table


Piece = Tuple[int, int, int]  # (row group or batch index, first row, end row) within the file


def read_pieces(fmt: str, path: str, part: Partition, pieces: Sequence[Piece], schema: pa.Schema,
                columns: Optional[Sequence[str]], filter: Any, verify: str,
                use_threads: bool = True) -> pa.Table:
    """Read ``pieces`` of one partition file, check them against ``part``, and conform to ``schema``."""
    mm = _open_map(path)
    try:
        if mm.size() != part.nbytes:
            raise TableCorruptError(f"{path}: file is {mm.size()} bytes but the manifest says {part.nbytes} "
                                    "(truncated, or replaced after it was written)")
        _check_segment(mm, part.tail, path, "the footer")
        if fmt == "parquet":
            table = _read_parquet(mm, path, part, pieces, schema, columns, filter, verify, use_threads)
        elif fmt == "ipc":
            table = _read_ipc_file(mm, path, part, pieces, schema, columns, filter, verify)
        else:
            raise TableError(f"{path}: unknown table format {fmt!r}")
    finally:
        # Arrow keeps the mapping alive while buffers of the result use it.
        mm.close()
    target = schema if columns is None else pa.schema([schema.field(c) for c in columns],
                                                      metadata=schema.metadata)
    try:
        return conform(table, target)
    except (pa.ArrowException, ValueError) as err:
        raise TableCorruptError(f"{path}: data do not match the table's schema: {err}") from None


def _verify_segments(mm, path: str, part: Partition, indices: Iterable[int], verify: str, kind: str,
                     always: Sequence[int] = ()) -> None:
    if verify == "footer" or part.segments is None:
        return
    if part.head is not None:
        _check_segment(mm, part.head, path, "the file header")
    wanted = range(len(part.segments)) if verify == "full" else sorted(set(indices) | set(always))
    for i in wanted:
        _check_segment(mm, part.segments[i], path, f"{kind} {i}")


def _read_parquet(mm, path, part, pieces, schema, columns, filter, verify, use_threads) -> pa.Table:
    try:
        mm.seek(0)
        pf = pq.ParquetFile(mm)
    except (OSError, pa.ArrowException) as err:
        raise TableCorruptError(f"{path}: not a readable Parquet file: {err}") from None
    md = pf.metadata
    found = tuple(md.row_group(i).num_rows for i in range(md.num_row_groups))
    if found != tuple(part.row_groups):
        raise TableCorruptError(f"{path}: footer has row groups of {list(found)} rows "
                                f"but the manifest says {list(part.row_groups)}")
    wanted = [p for p in pieces if p[2] > p[1]]
    if filter is not None and wanted:
        wanted = _prune_row_groups(path, pf, wanted, filter)
    _verify_segments(mm, path, part, [p[0] for p in wanted], verify, "row group")
    if not wanted:
        return schema.empty_table() if columns is None else schema.empty_table().select(list(columns))
    read_cols = needed_columns(schema, columns, filter)
    try:
        table = pf.read_row_groups([p[0] for p in wanted], columns=read_cols, use_threads=use_threads)
    except (OSError, pa.ArrowException) as err:
        raise TableCorruptError(f"{path}: cannot decode row groups {[p[0] for p in wanted]}: {err}") from None
    # Only the first piece can start late and only the last can end early.
    first, last = wanted[0], wanted[-1]
    stop = table.num_rows - (part.row_groups[last[0]] - last[2])
    if first[1] or stop != table.num_rows:
        table = table.slice(first[1], stop - first[1])
    return _finish(table, columns, filter)


def _prune_row_groups(path: str, pf: pq.ParquetFile, pieces: List[Piece], filter: Any) -> List[Piece]:
    """Drop row groups whose statistics prove that no row passes ``filter``."""
    try:
        fragment = ds.ParquetFileFormat().make_fragment(path, row_groups=[p[0] for p in pieces])
        keep = {rg.id for rg in fragment.subset(filter, schema=pf.schema_arrow).row_groups}
    except (pa.ArrowException, TypeError, ValueError) as err:
        logger.debug("no row group pruning for %s: %s", path, err)
        return pieces
    return [p for p in pieces if p[0] in keep]


def _read_ipc_file(mm, path, part, pieces, schema, columns, filter, verify) -> pa.Table:
    wanted = [p for p in pieces if p[2] > p[1]]
    # Batch 0's segment holds the schema and dictionaries every batch depends on.
    _verify_segments(mm, path, part, [p[0] for p in wanted], verify, "record batch",
                     always=[0] if part.segments else [])
    try:
        mm.seek(0)
        reader = pa.ipc.open_file(mm)
        if reader.num_record_batches != len(part.row_groups):
            raise TableCorruptError(f"{path}: file has {reader.num_record_batches} record batches "
                                    f"but the manifest says {len(part.row_groups)}")
        batches = []
        for index, lo, hi in wanted:
            batch = reader.get_batch(index)
            if batch.num_rows != part.row_groups[index]:
                raise TableCorruptError(f"{path}: record batch {index} has {batch.num_rows} rows "
                                        f"but the manifest says {part.row_groups[index]}")
            batches.append(batch.slice(lo, hi - lo) if (lo, hi) != (0, batch.num_rows) else batch)
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except TableCorruptError:
        raise
    except (OSError, pa.ArrowException) as err:
        raise TableCorruptError(f"{path}: not a readable Arrow IPC file: {err}") from None
    return _finish(table, columns, filter)


def inspect_parquet(path: str) -> Tuple[pa.Schema, Partition]:
    """Schema and layout of an existing Parquet file (footer only, no data read)."""
    mm = _open_map(path)
    try:
        metadata, row_groups, _, _, tail = parquet_layout(mm, path, with_segments=False)
        try:
            schema = metadata.schema.to_arrow_schema()
        except (pa.ArrowException, ValueError) as err:
            raise TableCorruptError(f"{path}: Parquet schema has no Arrow equivalent: {err}") from None
        part = Partition(file=os.path.abspath(path), num_rows=metadata.num_rows, nbytes=mm.size(),
                         row_groups=row_groups, tail=tail)
    finally:
        mm.close()
    return schema, part


def file_crc(path: str) -> int:
    """CRC-32 of a whole file, through a memory map."""
    mm = _open_map(path)
    try:
        return _crc(mm, 0, mm.size())
    finally:
        mm.close()


def check_footer_rows(path: str, part: Partition) -> None:
    """Raise :class:`TableCorruptError` naming ``path`` unless its Parquet footer holds ``part``'s rows.

    Reads the footer only.  The manifest's counts are what share plans are
    cut from: a forged or stale count (``num_rows`` of 10**15) would hand
    ranks wrong shares before any of the file's bytes is read.  A file of
    another size than the manifest says, or whose footer does not match its
    checksum, is refused as the reader refuses it.  A missing file passes:
    the ranks whose share is in it report it, and the task's agreement fails
    the others.
    """
    try:
        mm = pa.memory_map(path, "r")
    except FileNotFoundError:
        return
    except (OSError, pa.ArrowException) as err:
        raise TableCorruptError(f"{path}: cannot open: {err}") from None
    try:
        if mm.size() != part.nbytes:
            raise TableCorruptError(f"{path}: file is {mm.size()} bytes but the manifest says {part.nbytes} "
                                    "(truncated, or replaced after it was written)")
        if part.tail is not None:
            _check_segment(mm, part.tail, path, "the footer")
        md, _ = _parquet_footer(mm, path)
    finally:
        mm.close()
    found = tuple(md.row_group(i).num_rows for i in range(md.num_row_groups))
    if md.num_rows != part.num_rows or found != tuple(part.row_groups):
        raise TableCorruptError(f"{path}: footer holds {md.num_rows} rows in row groups of {list(found)[:8]} "
                                f"but the manifest says {part.num_rows} rows in {list(part.row_groups)[:8]}")
