"""The options of a ``cylon_app``: one typed, checked surface.

Besides its resources (``ranks``, ``cores_per_rank``, ...), an app may set

* **table options** (:class:`TableOptions`): how the tables it returns are
  written, and how its table arguments are read;
* **engine options** (:class:`EngineOptions`): the distributed engine's knobs;
* ``walltime``: seconds the task may run before it fails with ``TaskTimeout``
  (a ``walltime`` or ``running_time_min`` resource key, when given, wins; the
  executor resolves them once, so ``ctx.options.walltime`` is the limit applied).

``@cylon_app(..., key=value)`` and the executor's ``table_options=`` are
checked where they are given (:func:`check_app_options`,
:func:`check_table_options`): an unknown key raises :class:`OptionError`
listing the known ones, a bad value raises naming the key.  The task message
carries the options as a plain dict; each rank parses it into an
:class:`Options` (``ctx.options``) when the task starts.

Engine options given nowhere take their value from an environment variable
(:data:`ENGINE_ENV`) when there is one, read when the operation runs (never
at import), and otherwise from the defaults below.

This module imports neither pyarrow nor MPI: it is imported by ``@cylon_app``
in the Parsl client.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

from .permissions import SHARING
from .table_error import TableError

FORMATS = ("parquet", "ipc")
PARQUET_CODECS = ("none", "snappy", "lz4", "zstd", "gzip", "brotli")
IPC_CODECS = ("none", "lz4", "zstd")
VERIFY_LEVELS = ("checksum", "full", "footer")
JOIN_KERNELS = ("auto", "duckdb", "acero")

# Chosen by measurement (docs/tables.md, benchmarks/handoff.py): uncompressed
# Parquet without dictionary encoding of plain columns had the fastest
# write+read of the codecs for the benchmark table.
DEFAULT_COMPRESSION = "none"
# Row groups bound how much a rank reads beyond its share at each boundary,
# and how finely a table can be split; measured in docs/tables.md.
DEFAULT_ROW_GROUP_SIZE = 256 * 1024
#: MPI counts and displacements are C ``int``: at most this many bytes per call.
MAX_MPI_BYTES = 2**31 - 1


class OptionError(ValueError):
    """An option key is unknown, or its value is not valid.

    The message says where the option was given, which key, and what is expected.
    """


class TableOptionError(OptionError, TableError):
    """A table option's value is not valid (also a :class:`~parsl_rcylon.tableio.errors.TableError`)."""


# -- value checks ---------------------------------------------------------------------------------


def _int(minimum: int, maximum: Optional[int] = None) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
                maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            return f"expected an integer {bound}"
        return ""

    return check


def _one_of(choices: Tuple[str, ...]) -> Callable[[Any], str]:
    return lambda value: "" if value in choices else f"expected one of {choices}"


def _bool(value: Any) -> str:
    return "" if isinstance(value, bool) else "expected True or False"


def _optional_int(value: Any) -> str:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return ""
    return "expected an integer or None"


def _dictionary(value: Any) -> str:
    if value == "auto" or isinstance(value, bool):
        return ""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ""
    return "expected 'auto', True, False or a list of column names"


def _seconds(value: Any) -> str:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        return ""
    return "expected a positive number of seconds"


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


# -- table options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableOptions:
    """How a task's result tables are written and its table arguments read.

    Parameters
    ----------
    format : {"parquet", "ipc"}
        File format of the partitions (``"arrow"`` is accepted for ``"ipc"``).
    compression : str
        Parquet: none, snappy, lz4, zstd, gzip, brotli.  IPC: none, lz4, zstd.
    compression_level : int, optional
        Codec level, where the codec has levels.
    row_group_size : int
        Rows per Parquet row group or IPC record batch.
    use_dictionary : "auto", bool or list of str
        Parquet dictionary encoding.  ``"auto"`` encodes only columns that are
        Arrow dictionary columns: elsewhere it costs write time for a size gain
        that a local hand-off does not need.
    keep : bool
        Whether the table outlives the workflow: the executor deletes tables
        written with ``keep=False`` when it shuts down (or when
        ``release_tables()`` is called).
    fsync : bool
        Flush every partition file, the manifest and the directories to
        stable storage before the table is committed, so that a node crash
        never leaves a committed manifest over data that was not written.
        On by default: it cost at most 8% of the hand-off where measured
        (docs/tables.md, "Durability").
    verify : {"checksum", "full", "footer"}
        How much of the files a task reads for its table arguments is checked
        against the writer's checksums (docs/tables.md, "Integrity").
    sharing : {"private", "group"}
        Who may read the tables written: ``"private"`` (directories 0700,
        files 0600: this user only) or ``"group"`` (0750/0640: the user's
        group reads, nobody else).  Set whatever the umask.
    """

    format: str = "parquet"
    compression: str = DEFAULT_COMPRESSION
    compression_level: Optional[int] = None
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    use_dictionary: Any = "auto"
    keep: bool = True
    fsync: bool = True
    verify: str = "checksum"
    sharing: str = "private"

    @classmethod
    def from_options(cls, options: Optional[Mapping[str, Any]], where: str = "table option") -> TableOptions:
        """Pick this class's keys out of ``options`` (others belong elsewhere), normalise and check them.

        ``None`` values mean the default.

        Raises
        ------
        TableOptionError
            A value is not valid; the message names ``where`` and the key.
        """
        given = {k: v for k, v in (options or {}).items() if k in TABLE_KEYS and v is not None}
        for key in ("format", "compression", "verify", "sharing"):
            if key in given:
                given[key] = _lower(given[key])
        if given.get("format") == "arrow":
            given["format"] = "ipc"
        opts = cls(**given)
        problem = opts._problem()
        if problem:
            key, why = problem
            raise TableOptionError(f"{where}: {key}={getattr(opts, key)!r}: {why}")
        return opts

    def _problem(self) -> Optional[Tuple[str, str]]:
        checks: Dict[str, Callable[[Any], str]] = {
            "format": _one_of(FORMATS),
            "compression": _one_of(PARQUET_CODECS if self.format == "parquet" else IPC_CODECS),
            "compression_level": _optional_int,
            "row_group_size": _int(1),
            "use_dictionary": _dictionary,
            "keep": _bool,
            "fsync": _bool,
            "verify": _one_of(VERIFY_LEVELS),
            "sharing": _one_of(tuple(SHARING)),
        }
        for key, check in checks.items():
            why = check(getattr(self, key))
            if why:
                if key == "compression":
                    why = f"not available for {self.format}: {why}"
                return key, why
        return None


TABLE_KEYS = frozenset(f.name for f in fields(TableOptions))


# -- engine options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineOptions:
    """The distributed engine's knobs.

    Parameters
    ----------
    join_kernel : {"auto", "duckdb", "acero"}
        The local join kernel: DuckDB where it is importable and gives
        pyarrow's exact result (``auto``), or always Acero.  Environment:
        ``PARSL_RCYLON_JOIN_KERNEL``.
    join_bucket_rows : int
        Target rows per local hash bucket for Acero, whose hash join slows
        down once its hash table leaves the cache; 0 joins a rank's rows in
        one piece.  Environment: ``PARSL_RCYLON_JOIN_BUCKET_ROWS``.
    join_duckdb_bucket_rows : int
        Least rows per bucket for DuckDB, which partitions its own hash table:
        there buckets only serve the rounds; 0 gives one bucket.
        Environment: ``PARSL_RCYLON_JOIN_DUCKDB_BUCKET_ROWS``.
    join_rounds : int
        The join's buckets are exchanged and joined in this many rounds, so a
        rank holds one round's received rows rather than both whole
        partitions.  Environment: ``PARSL_RCYLON_JOIN_ROUNDS``.
    max_message_bytes : int
        The most bytes one MPI call moves; larger exchanges go as chunked
        point-to-point messages (tests set it tiny to exercise that path).
        Environment: ``PARSL_RCYLON_MAX_MESSAGE_BYTES``.

    Notes
    -----
    docs/engine.md has the measurements behind the defaults.
    """

    join_kernel: str = "auto"
    join_bucket_rows: int = 131_072
    join_duckdb_bucket_rows: int = 65_536
    join_rounds: int = 4
    max_message_bytes: int = MAX_MPI_BYTES

    @classmethod
    def resolve(cls, options: Optional[Mapping[str, Any]] = None, where: str = "engine option",
                environ: Optional[Mapping[str, str]] = None) -> EngineOptions:
        """The options in force now: ``options``' keys, else the environment variables, else the defaults.

        Reads the environment (``os.environ`` unless ``environ`` is given)
        on every call.

        Raises
        ------
        OptionError
            A value (given or from the environment) is not valid; the message
            names the key or the variable.
        """
        env = os.environ if environ is None else environ
        given: Dict[str, Any] = {}
        for key in ENGINE_KEYS:
            value = (options or {}).get(key)
            source = f"{where}: {key}"
            if value is None and env.get(ENGINE_ENV[key]):
                value, source = env[ENGINE_ENV[key]], f"environment variable {ENGINE_ENV[key]}"
                if key != "join_kernel":
                    try:
                        value = int(value)
                    except ValueError:
                        raise OptionError(f"{source}={value!r}: expected an integer") from None
            if value is None:
                continue
            value = _lower(value)
            why = _ENGINE_CHECKS[key](value)
            if why:
                raise OptionError(f"{source}={value!r}: {why}")
            given[key] = value
        return cls(**given)


ENGINE_KEYS = frozenset(f.name for f in fields(EngineOptions))
#: The environment variable that supplies each engine option's default.
ENGINE_ENV = {
    "join_kernel": "PARSL_RCYLON_JOIN_KERNEL",
    "join_bucket_rows": "PARSL_RCYLON_JOIN_BUCKET_ROWS",
    "join_duckdb_bucket_rows": "PARSL_RCYLON_JOIN_DUCKDB_BUCKET_ROWS",
    "join_rounds": "PARSL_RCYLON_JOIN_ROUNDS",
    "max_message_bytes": "PARSL_RCYLON_MAX_MESSAGE_BYTES",
}
_ENGINE_CHECKS: Dict[str, Callable[[Any], str]] = {
    "join_kernel": _one_of(JOIN_KERNELS),
    "join_bucket_rows": _int(0),
    "join_duckdb_bucket_rows": _int(0),
    "join_rounds": _int(1),
    "max_message_bytes": _int(8, MAX_MPI_BYTES),
}


# -- all of them ----------------------------------------------------------------------------------

#: Options that are neither table nor engine options: the task's time limit.
RESERVED_KEYS = frozenset({"walltime"})
#: Every option key a ``cylon_app`` accepts besides its resources.
OPTION_KEYS = TABLE_KEYS | ENGINE_KEYS | RESERVED_KEYS


@dataclass(frozen=True)
class Options:
    """A task's options, parsed on its ranks (``ctx.options``).

    Parameters
    ----------
    table : TableOptions
        How result tables are written and table arguments read.
    engine : EngineOptions
        The engine's knobs, environment defaults applied when the task started.
    walltime : float, optional
        Seconds the task may run (``None``: no limit): the limit the dispatcher
        enforces, whether the app's option or a resource key set it.
    """

    table: TableOptions = field(default_factory=TableOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)
    walltime: Optional[float] = None

    @classmethod
    def from_mapping(cls, options: Optional[Mapping[str, Any]], where: str = "task") -> Options:
        """Parse the options dict a task message carries (keys it does not know are left alone)."""
        options = dict(options or {})
        return cls(table=TableOptions.from_options(options, where), engine=EngineOptions.resolve(options, where),
                   walltime=_walltime(options, where))


def _walltime(options: Mapping[str, Any], where: str) -> Optional[float]:
    why = _seconds(options.get("walltime"))
    if why:
        raise OptionError(f"{where}: walltime={options['walltime']!r}: {why}")
    return options.get("walltime")


def _reject_unknown(options: Mapping[str, Any], where: str, known: Iterable[str]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise OptionError(f"{where}: unknown option{plural} {', '.join(map(repr, unknown))}; "
                          f"known keys are {', '.join(sorted(known))}")


def check_app_options(options: Mapping[str, Any], where: str, also_known: Iterable[str] = ()) -> Dict[str, Any]:
    """Check a ``cylon_app``'s option keywords; return them as a plain dict.

    Parameters
    ----------
    options : mapping
        The keyword options given besides the decorator's own parameters.
    where : str
        Named in error messages (``"cylon_app(f)"``).
    also_known : iterable of str
        Further keys to list as known in the message (the decorator's own).

    Raises
    ------
    OptionError
        An unknown key (the message lists every known key) or a bad value.
    """
    _reject_unknown(options, where, OPTION_KEYS | set(also_known))
    TableOptions.from_options(options, where)
    # The environment applies on the ranks, when the task runs: not here.
    EngineOptions.resolve(options, where, environ={})
    _walltime(options, where)
    return dict(options)


def check_table_options(options: Optional[Mapping[str, Any]], where: str) -> Dict[str, Any]:
    """Check table options given as a mapping (the executor's ``table_options=``); return a plain dict.

    Raises
    ------
    OptionError
        An unknown key (the message lists the table option keys) or a bad
        value (a :class:`TableOptionError`).
    """
    options = dict(options or {})
    _reject_unknown(options, where, TABLE_KEYS)
    TableOptions.from_options(options, where)
    return options


__all__ = [
    "DEFAULT_COMPRESSION", "DEFAULT_ROW_GROUP_SIZE", "ENGINE_ENV", "ENGINE_KEYS", "EngineOptions", "OPTION_KEYS",
    "OptionError", "Options", "TABLE_KEYS", "TableOptionError", "TableOptions", "check_app_options",
    "check_table_options",
]
