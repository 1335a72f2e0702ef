"""The manifest: the single file whose atomic appearance commits a table.

A table directory holds one file per writing rank and ``_rcylon_manifest.json``.
The manifest is written last (temporary name, then ``rename``), so a directory
without one is a table whose writer never finished, and readers refuse it.

Each partition is described down to byte ranges: the file is cut into a *head*
(format magic and, for IPC, the schema message), one *segment* per row group
(Parquet) or record batch (IPC), and a *tail* (the footer).  Every range has a
CRC-32, so a reader can check exactly the bytes it is about to decode: a rank
reading two row groups of a file checksums those two, the head and the tail,
not the whole file.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa

from ..permissions import open_new
from .errors import ManifestError, TableWriteError
from .names import MANIFEST_NAME, plain_name_problem, temp_name

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """A byte range of a partition file and the CRC-32 of its bytes."""

    offset: int
    length: int
    crc: int

    def to_list(self) -> List[int]:
        return [self.offset, self.length, self.crc]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> Segment:
        offset, length, crc = (int(v) for v in values)
        return cls(offset, length, crc)


@dataclass(frozen=True)
class Partition:
    """One file of a table, as the manifest (or the file's footer) describes it.

    Parameters
    ----------
    file : str
        Path relative to the table directory; absolute for external data.
    num_rows : int
        Rows in the file.
    nbytes : int
        File size in bytes.
    row_groups : tuple of int
        Rows per row group (Parquet) or record batch (IPC), in file order.
    tail : Segment
        The footer; checked on every open.
    head : Segment or None
        Bytes before the first row group; ``None`` for external data.
    segments : tuple of Segment or None
        One per row group; ``None`` for external data, whose bytes were never
        checksummed by a writer of ours.
    rank : int or None
        The writing rank.
    write_seconds : float
        Time the rank spent writing and checksumming the file.
    """

    file: str
    num_rows: int
    nbytes: int
    row_groups: Tuple[int, ...]
    tail: Segment
    head: Optional[Segment] = None
    segments: Optional[Tuple[Segment, ...]] = None
    rank: Optional[int] = None
    write_seconds: float = 0.0

    def to_json(self) -> Dict[str, Any]:
        return {
            "file": self.file,
            "rank": self.rank,
            "num_rows": self.num_rows,
            "nbytes": self.nbytes,
            "row_groups": list(self.row_groups),
            "head": self.head.to_list() if self.head else None,
            "segments": [s.to_list() for s in self.segments] if self.segments is not None else None,
            "tail": self.tail.to_list(),
            "write_seconds": round(self.write_seconds, 6),
        }

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> Partition:
        segments = obj.get("segments")
        return cls(
            file=str(obj["file"]),
            num_rows=int(obj["num_rows"]),
            nbytes=int(obj["nbytes"]),
            row_groups=tuple(int(r) for r in obj["row_groups"]),
            tail=Segment.from_list(obj["tail"]),
            head=Segment.from_list(obj["head"]) if obj.get("head") else None,
            segments=tuple(Segment.from_list(s) for s in segments) if segments is not None else None,
            rank=obj.get("rank"),
            write_seconds=float(obj.get("write_seconds", 0.0)),
        )

    def content_key(self) -> List[Any]:
        # What identifies the bytes, not where or when they were written.
        return [
            self.num_rows, self.nbytes, list(self.row_groups),
            self.head.to_list() if self.head else None,
            [s.to_list() for s in self.segments] if self.segments is not None else None,
            self.tail.to_list(),
        ]


def schema_to_text(schema: pa.Schema) -> str:
    # The IPC encoding keeps everything a Schema holds: metadata, time zones,
    # dictionary index types, nested field names.
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def content_digest(fmt: str, schema: pa.Schema, partitions: Sequence[Partition]) -> str:
    """SHA-256 over the format, schema and per-partition byte checksums.

    Independent of directory, file names, task ids and timestamps, so the same
    table written twice gets the same digest (what memoization needs), while a
    change to any byte of any file changes it.
    """
    payload = [fmt, schema_to_text(schema), [p.content_key() for p in partitions]]
    return hashlib.sha256(_canonical(payload)).hexdigest()


@dataclass
class Manifest:
    """What commits a table: format, schema, partitions and digests.

    Parameters
    ----------
    format : str
        ``"parquet"`` or ``"ipc"``.
    schema : pyarrow.Schema
        The table's exact schema (metadata included).
    partitions : list of Partition
        In rank order; the table is their concatenation.
    info : dict
        Provenance: task id, app name, writer options, creation time.
    digest : str
        :func:`content_digest` of the above; filled in when omitted.
    """

    format: str
    schema: pa.Schema
    partitions: List[Partition]
    info: Dict[str, Any] = field(default_factory=dict)
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = content_digest(self.format, self.schema, self.partitions)

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.partitions)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.partitions)

    def to_json(self) -> Dict[str, Any]:
        body = {
            "rcylon_table": MANIFEST_VERSION,
            "format": self.format,
            "schema": schema_to_text(self.schema),
            "num_rows": self.num_rows,
            "nbytes": self.nbytes,
            "partitions": [p.to_json() for p in self.partitions],
            "info": self.info,
            "digest": self.digest,
        }
        # Guards the manifest itself against truncation or editing.
        body["manifest_sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
        return body

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Manifest:
        """Parse and self-check a manifest; ``where`` names it in errors."""
        if not isinstance(obj, dict) or "rcylon_table" not in obj:
            raise ManifestError(f"{where}: not a parsl_rcylon table manifest")
        if obj["rcylon_table"] != MANIFEST_VERSION:
            raise ManifestError(f"{where}: manifest version {obj['rcylon_table']!r} is not supported "
                                f"(this parsl_rcylon reads version {MANIFEST_VERSION})")
        body = {k: v for k, v in obj.items() if k != "manifest_sha256"}
        if hashlib.sha256(_canonical(body)).hexdigest() != obj.get("manifest_sha256"):
            raise ManifestError(f"{where}: manifest checksum does not match its content (edited or damaged)")
        try:
            manifest = cls(
                format=obj["format"],
                schema=schema_from_text(obj["schema"]),
                partitions=[Partition.from_json(p) for p in obj["partitions"]],
                info=dict(obj.get("info") or {}),
                digest=obj["digest"],
            )
        except (KeyError, TypeError, ValueError, pa.ArrowException) as err:
            raise ManifestError(f"{where}: malformed manifest: {err!r}") from err
        for part in manifest.partitions:
            # A partition's rows are its row groups' rows: a count that is not their sum (or a
            # negative one) would skew every share plan cut from it.
            if part.num_rows != sum(part.row_groups) or min(part.row_groups, default=0) < 0:
                raise ManifestError(f"{where}: partition {part.file!r} claims {part.num_rows} rows but its row "
                                    f"groups hold {sum(part.row_groups)} ({list(part.row_groups)[:8]})")
        if manifest.num_rows != obj.get("num_rows"):
            raise ManifestError(f"{where}: manifest row count {obj.get('num_rows')} does not match "
                                f"its partitions ({manifest.num_rows})")
        expected = content_digest(manifest.format, manifest.schema, manifest.partitions)
        if expected != manifest.digest:
            raise ManifestError(f"{where}: manifest digest does not match its partitions")
        return manifest

    def write(self, directory: str, fsync: bool = False, sharing: str = "private") -> str:
        """Write atomically into ``directory``; returns the manifest path.

        The file gets the mode of ``sharing`` whatever the umask.  With
        ``fsync`` the manifest and then the directory are flushed to stable
        storage before this returns.  On any failure the temporary file is
        removed and nothing is committed.

        Raises
        ------
        TableWriteError
            The manifest could not be written (full disk, permissions),
            naming its path.
        """
        path = os.path.join(directory, MANIFEST_NAME)
        tmp = os.path.join(directory, temp_name(MANIFEST_NAME))
        data = json.dumps(self.to_json(), indent=1).encode()
        placed = False
        try:
            try:
                with os.fdopen(open_new(tmp, sharing), "wb") as f:
                    f.write(data)
                    f.flush()
                    if fsync:
                        os.fsync(f.fileno())
                os.replace(tmp, path)
                placed = True
                if fsync:
                    fsync_dir(directory)
            except BaseException:
                # A manifest whose rename may not survive a crash commits nothing either.
                for leftover in (tmp, path) if placed else (tmp,):
                    try:
                        os.unlink(leftover)
                    except OSError:
                        pass
                raise
        except OSError as err:
            raise TableWriteError(f"{path}: cannot write the manifest: {err}") from err
        return path

    @classmethod
    def load(cls, directory: str) -> Manifest:
        """Read and check the manifest of the table directory ``directory``.

        Besides the manifest's own checks (:meth:`from_json`), every partition
        must be a plain file name inside ``directory``: a manifest naming an
        absolute path, ``..`` or a path with separators is refused before
        any file it names is opened.
        """
        path = os.path.join(directory, MANIFEST_NAME)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise ManifestError(f"{directory}: no {MANIFEST_NAME}: the table was never committed "
                                "(its writer failed or is still running)") from None
        try:
            obj = json.loads(raw)
        except ValueError as err:
            raise ManifestError(f"{path}: manifest is not valid JSON ({err})") from None
        manifest = cls.from_json(obj, path)
        if manifest.info.get("external"):
            raise ManifestError(f"{path}: describes external files, not a table directory's own partitions")
        check_partition_names(manifest.partitions, path)
        return manifest


def check_partition_names(partitions: Sequence[Partition], where: str) -> None:
    """Refuse partitions that are not plain file names inside the table directory.

    Raises
    ------
    ManifestError
        Naming ``where`` (the manifest) and the first bad entry.
    """
    for i, part in enumerate(partitions):
        problem = plain_name_problem(part.file)
        if problem:
            raise ManifestError(f"{where}: partition {i} names {part.file!r}, which {problem}; a table's "
                                "partitions must be plain file names inside its directory")


def fsync_dir(directory: str) -> None:
    """Flush ``directory``'s entries (names made, renamed or removed in it) to stable storage."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
