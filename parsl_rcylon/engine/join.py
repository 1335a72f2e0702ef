"""Distributed hash join."""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple, Union

import pyarrow as pa

from ..options import EngineOptions
from .errors import InvalidArgumentError, KeyTypeError
from .kernels import acero_join, duckdb_join
from .prepare import prepare
from .schemas import canonical_schema
from .shuffle import exchange_buckets, partition_rows
from .validation import as_column_list, check_columns, check_hashable

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI

logger = logging.getLogger(__name__)

#: ``how`` values and the pyarrow join types they mean (pyarrow's own names work too).
JOIN_TYPES = {
    "inner": "inner",
    "left": "left outer",
    "right": "right outer",
    "outer": "full outer",
    "full": "full outer",
    "semi": "left semi",
    "anti": "left anti",
    "left outer": "left outer",
    "right outer": "right outer",
    "full outer": "full outer",
    "left semi": "left semi",
    "right semi": "right semi",
    "left anti": "left anti",
    "right anti": "right anti",
}

#: Most local hash buckets per rank.
MAX_BUCKETS = 256

Keys = Union[str, Sequence[str], None]


def _resolve_keys(on: Keys, left_on: Keys, right_on: Keys) -> Tuple[List[str], List[str]]:
    if on is not None:
        if left_on is not None or right_on is not None:
            raise InvalidArgumentError("give either on= or left_on=/right_on=, not both")
        keys = as_column_list(on, "on")
        return keys, list(keys)
    if left_on is None or right_on is None:
        raise InvalidArgumentError("join needs key columns: on= or both left_on= and right_on=")
    lk, rk = as_column_list(left_on, "left_on"), as_column_list(right_on, "right_on")
    if len(lk) != len(rk):
        raise InvalidArgumentError(f"left_on has {len(lk)} column(s) but right_on has {len(rk)}")
    return lk, rk


def _join_type(how: str) -> str:
    try:
        return JOIN_TYPES[how]
    except (KeyError, TypeError):
        valid = ", ".join(repr(k) for k in ("inner", "left", "right", "outer", "semi", "anti"))
        raise InvalidArgumentError(f"unknown join type how={how!r}; use one of {valid}") from None


@dataclass(frozen=True)
class _JoinArgs:
    """A join's arguments, checked and normalised on one rank."""

    join_type: str
    left_keys: List[str]
    right_keys: List[str]
    left_suffix: Optional[str]
    right_suffix: Optional[str]
    expected: pa.Schema  # the result's canonical schema, as pyarrow's join of empty inputs gives it


def _suffixes(suffixes: Tuple[str, str]) -> Tuple[Optional[str], Optional[str]]:
    try:
        left_suffix, right_suffix = suffixes
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"suffixes must be a pair of strings, got {suffixes!r}") from None
    return (left_suffix or None), (right_suffix or None)


def bucket_count(rows: int, size: int, kernel: str, options: EngineOptions) -> int:
    """Local buckets per rank for a join whose larger side has ``rows`` rows in all.

    Acero gets cache-sized buckets (``join_bucket_rows``): its hash join
    slows down more than linearly once its hash table leaves the cache, and
    the buckets come from the same hash pass as the rank assignment, so they
    cost no extra pass over the data.  DuckDB partitions its own hash table
    and runs one query on all the rank's threads, where one large query beats
    many small ones: it gets one bucket per round (fewer where a bucket would
    fall under ``join_duckdb_bucket_rows``), and on a single rank, where
    nothing is received, the whole tables in one query.  docs/engine.md has
    the measurements.
    """
    if rows <= 0:
        return 1
    if kernel == "duckdb":
        if size == 1 or options.join_duckdb_bucket_rows <= 0:
            return 1
        return int(max(1, min(options.join_rounds, rows // size // options.join_duckdb_bucket_rows)))
    if options.join_bucket_rows <= 0:
        return 1
    return int(min(MAX_BUCKETS, max(1, math.floor(rows / size / options.join_bucket_rows))))


def join(
    comm: MPI.Intracomm,
    left: pa.Table,
    right: pa.Table,
    on: Keys = None,
    left_on: Keys = None,
    right_on: Keys = None,
    how: str = "inner",
    suffixes: Tuple[str, str] = ("", "_right"),
    options: Optional[EngineOptions] = None,
) -> pa.Table:
    """Join two partitioned tables on key column(s).

    Both sides are hash-partitioned by key (rows with a null key stay where
    they are: in pyarrow, as here, a null key never matches), then every
    rank joins its rows bucket by bucket, with DuckDB where it is installed
    and pyarrow's Acero hash join otherwise (same result; see ``kernels``).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator; collective over all its ranks.
    left, right : pyarrow.Table
        This rank's partitions of the two tables.
    on : str or list of str, optional
        Key column(s) present in both tables.
    left_on, right_on : str or list of str, optional
        Key columns of each side, when their names differ.
    how : {"inner", "left", "right", "outer", "semi", "anti"}
        Join type; pyarrow's names ("left outer", "right anti", ...) work too.
    suffixes : (str, str)
        Added to non-key column names present on both sides.
    options : EngineOptions, optional
        The engine options (kernel, buckets, rounds); by default those in force now.

    Returns
    -------
    pyarrow.Table
        This rank's partition of the result, with pyarrow ``Table.join``'s
        columns and names (keys coalesced).  Row order is unspecified.

    Raises
    ------
    MissingColumnError, KeyTypeError, SchemaMismatchError, UnsupportedTypeError, InvalidArgumentError
        On every rank, when any rank's input is bad.
    """

    def parse() -> _JoinArgs:
        join_type = _join_type(how)
        lk, rk = _resolve_keys(on, left_on, right_on)
        check_columns(left, lk, "left table")
        check_columns(right, rk, "right table")
        for lname, rname in zip(lk, rk, strict=True):
            ltype, rtype = left.schema.field(lname).type, right.schema.field(rname).type
            if ltype != rtype:
                raise KeyTypeError(
                    f"key column {lname!r} of the left table is {ltype} but key column {rname!r} "
                    f"of the right table is {rtype}; cast one side first"
                )
        check_hashable(left, lk, "left table")
        lsuf, rsuf = _suffixes(suffixes)
        try:  # pyarrow itself judges the rest (payload types, clashing names) on empty slices
            trial = left.slice(0, 0).join(right.slice(0, 0), keys=lk, right_keys=rk, join_type=join_type,
                                          left_suffix=lsuf, right_suffix=rsuf)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"pyarrow cannot join these tables: {exc}") from exc
        return _JoinArgs(join_type, lk, rk, lsuf, rsuf, canonical_schema(trial.schema))

    start = time.perf_counter()
    prepared = prepare(comm, "join", [("left table", left), ("right table", right)], parse, options, columnar=True)
    validated = time.perf_counter()
    args, opts, cores = prepared.args, prepared.options, prepared.consensus.cores
    left, right = prepared.tables
    lk, rk = args.left_keys, args.right_keys
    size, rank = comm.Get_size(), comm.Get_rank()
    duck = duckdb_join(left.schema, right.schema, lk, rk, args.join_type, args.left_suffix, args.right_suffix,
                       args.expected, cores, opts.join_kernel)
    kernel = "duckdb" if duck is not None else "acero"
    nbuckets = bucket_count(max(sum(prepared.rows(0)), sum(prepared.rows(1))), size, kernel, opts)
    split = size * nbuckets > 1
    if split:
        lparts = partition_rows(left, lk, size, rank, nbuckets, nulls_stay=True, columnar=prepared.columnar(0))
        rparts = partition_rows(right, rk, size, rank, nbuckets, nulls_stay=True, columnar=prepared.columnar(1))
    partitioned = time.perf_counter()
    if duck is not None:
        run_round = _serial(duck)
    elif cores >= 2 and nbuckets > 1:
        # Small buckets leave Acero's own threads idle; joining several buckets
        # at once (Acero releases the GIL) keeps this rank's cores busy instead.
        run_round = _threaded(acero_join(lk, rk, args.join_type, args.left_suffix, args.right_suffix,
                                         use_threads=False), cores)
    else:
        run_round = _serial(acero_join(lk, rk, args.join_type, args.left_suffix, args.right_suffix,
                                       use_threads=prepared.consensus.use_threads))
    rounds = _rounds(nbuckets, opts.join_rounds)
    results: List[pa.Table] = []
    exchange_s = 0.0
    for lo, hi in rounds:
        # A few buckets at a time: this rank holds only the rows received for
        # this round (and the results so far), not both whole partitions.
        began = time.perf_counter()
        if split:
            pairs = list(zip(exchange_buckets(comm, lparts, lo, hi, limit=opts.max_message_bytes),
                             exchange_buckets(comm, rparts, lo, hi, limit=opts.max_message_bytes), strict=True))
        else:
            pairs = [(left, right)]
        exchange_s += time.perf_counter() - began
        results.extend(run_round(pairs))
        del pairs
    logger.debug("join: %d bucket(s) in %d round(s) x %d core(s), %s: validate %.3f s, partition %.3f s, "
                 "exchange %.3f s, local joins %.3f s", nbuckets, len(rounds), cores, kernel,
                 validated - start, partitioned - validated, exchange_s,
                 time.perf_counter() - partitioned - exchange_s)
    if len(results) == 1:
        return results[0]
    return pa.concat_tables(results)


def _rounds(nbuckets: int, rounds: int) -> List[Tuple[int, int]]:
    """Bucket ranges ``[lo, hi)`` exchanged and joined one after another (at most ``rounds``)."""
    count = max(1, min(nbuckets, rounds))
    bounds = [nbuckets * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _serial(run: Callable[[pa.Table, pa.Table], pa.Table]) -> Callable[[list], List[pa.Table]]:
    return lambda pairs: [run(lpart, rpart) for lpart, rpart in pairs]


def _threaded(run: Callable[[pa.Table, pa.Table], pa.Table], cores: int) -> Callable[[list], List[pa.Table]]:
    def run_all(pairs: list) -> List[pa.Table]:
        if len(pairs) == 1:
            return [run(*pairs[0])]
        with ThreadPoolExecutor(max_workers=cores) as pool:
            return list(pool.map(lambda pair: run(*pair), pairs))

    return run_all


__all__ = ["join", "JOIN_TYPES"]
