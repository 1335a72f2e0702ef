"""Distributed group-by with partial aggregation."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..options import EngineOptions
from .aggregate import KEYS_FIRST, aggregate
from .errors import InvalidArgumentError
from .prepare import prepare
from .schemas import canonical_schema, conform
from .shuffle import hash_partition
from .validation import as_column_list, check_columns, check_hashable, unused_name

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI

logger = logging.getLogger(__name__)

#: Short spellings accepted besides pyarrow's function names.
ALIASES = {"var": "variance", "std": "stddev"}
#: Aggregations computed as partial aggregate -> shuffle -> combine.
DECOMPOSABLE = {"sum", "count", "count_all", "mean", "min", "max", "variance", "stddev", "first", "last",
                "product", "any", "all"}
#: Aggregations whose result does not change when duplicate rows are dropped:
#: ranks drop duplicates of (keys, columns) before the shuffle.
DUPLICATE_INSENSITIVE = {"count_distinct", "distinct", "min", "max", "any", "all"}
#: Aggregations that depend on row order (pyarrow runs them single-threaded).
ORDERED = {"first", "last", "first_last", "list"}

AggSpec = Union[Tuple[Any, str], Tuple[Any, str, Any]]


@dataclass
class Aggregation:
    """One requested aggregation, normalised."""

    columns: List[str]
    given: str  # the name the user wrote, minus "hash_", used for the output name
    func: str  # pyarrow's function name (aliases resolved)
    options: Any
    out_name: str
    partial: Dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> Union[str, List[str]]:
        return self.columns[0] if len(self.columns) == 1 else self.columns

    def pyarrow_spec(self) -> tuple:
        spec: tuple = (self.target, self.func)
        return spec + (self.options,) if self.options is not None else spec


def _known_functions() -> set:
    return {name[len("hash_"):] for name in pc.list_functions() if name.startswith("hash_")}


def parse_aggregations(aggs: Sequence[AggSpec]) -> List[Aggregation]:
    """Normalise pyarrow-style ``[("v", "sum"), ("w", "mean", options), ([], "count_all")]``."""
    if isinstance(aggs, tuple) and len(aggs) in (2, 3) and isinstance(aggs[1], str):
        aggs = [aggs]
    if aggs is None or isinstance(aggs, (str, bytes)):
        raise InvalidArgumentError(f"aggs must be a list of (column, function) tuples, got {aggs!r}")
    known = _known_functions()
    result = []
    for spec in aggs:
        if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3) or not isinstance(spec[1], str):
            raise InvalidArgumentError(f"aggregation {spec!r} is not a (column, function[, options]) tuple")
        target, func = spec[0], spec[1]
        options = spec[2] if len(spec) == 3 else None
        given = func[len("hash_"):] if func.startswith("hash_") else func
        canonical = ALIASES.get(given, given)
        if canonical not in known:
            raise InvalidArgumentError(
                f"unknown aggregation {func!r}; use one of {', '.join(sorted(known | set(ALIASES)))}"
            )
        columns = [target] if isinstance(target, str) else list(target)
        if not all(isinstance(c, str) for c in columns):
            raise InvalidArgumentError(
                f"aggregation target {target!r} must be a column name or a list of names"
            )
        out_name = f"{'_'.join(columns)}_{given}" if columns else given
        result.append(Aggregation(columns, given, canonical, options, out_name))
    return result


def _plan_kind(aggs: Sequence[Aggregation], schema: pa.Schema) -> str:
    """``partial`` (aggregate, shuffle partials, combine), ``distinct`` or ``raw``."""

    def decomposable(agg: Aggregation) -> bool:
        if agg.func not in DECOMPOSABLE:
            return False
        if agg.func in ("mean", "variance", "stddev") and any(
            pa.types.is_decimal(schema.field(c).type) for c in agg.columns
        ):
            return False  # pyarrow keeps decimals exact; float partials would not
        if agg.options is None:
            return True
        if agg.func in ("count", "count_all"):
            return True  # count modes combine by summing
        if agg.func in ("variance", "stddev"):
            opts = agg.options
            return bool(getattr(opts, "skip_nulls", True)) and getattr(opts, "min_count", 0) == 0
        return False

    if all(decomposable(a) for a in aggs):
        return "partial"
    if all(a.func in DUPLICATE_INSENSITIVE for a in aggs):
        return "distinct"
    return "raw"


def _ddof(agg: Aggregation) -> int:
    return int(getattr(agg.options, "ddof", 0)) if agg.options is not None else 0


def _partial_specs(aggs: List[Aggregation], schema: pa.Schema) -> List[tuple]:
    """The local aggregations, naming each partial column on the Aggregation."""
    specs: List[tuple] = []

    def add(agg: Aggregation, role: str, spec: tuple) -> None:
        # One partial column per distinct plain spec: a sum and a mean of one column share theirs.
        if len(spec) == 2 and spec in specs:
            agg.partial[role] = f"__p{specs.index(spec)}"
            return
        specs.append(spec)
        agg.partial[role] = f"__p{len(specs) - 1}"

    for agg in aggs:
        target, func = agg.target, agg.func
        if func == "mean" and agg.options is None and all(pa.types.is_float64(schema.field(c).type)
                                                          for c in agg.columns):
            # Floats: ship the sum itself (integer sums could overflow where their mean does not).
            add(agg, "n", (target, "count"))
            add(agg, "sum", (target, "sum"))
        elif func in ("mean", "variance", "stddev"):
            add(agg, "n", (target, "count"))
            add(agg, "mean", (target, "mean"))
            if func != "mean":
                add(agg, "var0", (target, "variance", pc.VarianceOptions(ddof=0)))
        else:
            add(agg, "value", agg.pyarrow_spec())
    return specs


def _rename(grouped: pa.Table, keys: List[str], names: List[str]) -> pa.Table:
    # pyarrow names partial outputs "<col>_<func>"; by position they are keys, then specs in order.
    return grouped.rename_columns(keys + names) if KEYS_FIRST else grouped.rename_columns(names + keys)


def _final_from_partials(partials: pa.Table, keys: List[str], aggs: List[Aggregation], use_threads: bool,
                         ordered: bool) -> Dict[str, Any]:
    """Combine shuffled partial rows into one row per group."""
    final_specs: List[tuple] = []
    roles: List[Tuple[int, str]] = []
    need_groups = False
    for i, agg in enumerate(aggs):
        func = agg.func
        if func in ("mean", "variance", "stddev"):
            final_specs += [(agg.partial["n"], "sum"), (agg.partial["sum"], "sum")]
            roles += [(i, "n"), (i, "sum")]
            if func != "mean":
                final_specs.append((agg.partial["m2"], "sum"))
                roles.append((i, "m2"))
                need_groups = True
            continue
        combine = {"count": "sum", "count_all": "sum"}.get(func, func)
        final_specs.append((agg.partial["value"], combine))
        roles.append((i, "value"))
    row_col = unused_name(partials.schema, "__row")
    if need_groups:
        partials = partials.append_column(row_col, pa.array(np.arange(partials.num_rows, dtype=np.int64)))
        final_specs.append((row_col, "list"))
    grouped = aggregate(partials, keys, final_specs, use_threads and not ordered and not need_groups)
    names = [f"__f{j}" for j in range(len(final_specs))]
    grouped = _rename(grouped, keys, names)
    found: Dict[Tuple[int, str], pa.ChunkedArray] = {
        role: grouped.column(names[j]) for j, role in enumerate(roles)
    }
    gid = None
    ngroups = grouped.num_rows
    if need_groups:
        lists = grouped.column(names[-1])
        flat = pc.list_flatten(lists).to_numpy()
        lengths = pc.list_value_length(lists).to_numpy()
        gid = np.empty(partials.num_rows, dtype=np.int64)
        gid[flat] = np.repeat(np.arange(ngroups, dtype=np.int64), lengths)
    out: Dict[str, Any] = {k: grouped.column(k) for k in keys}
    for i, agg in enumerate(aggs):
        if agg.func not in ("mean", "variance", "stddev"):
            out[agg.out_name] = found[(i, "value")]
            continue
        n = found[(i, "n")].to_numpy().astype(np.float64)
        s = found[(i, "sum")].fill_null(0.0).to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s / n
        if agg.func == "mean":
            out[agg.out_name] = pa.array(mean, mask=n == 0)
            continue
        m2 = found[(i, "m2")].fill_null(0.0).to_numpy()
        # Chan et al.: M2 = sum(M2_i) + sum(n_i * (mean_i - mean)^2), exact in the
        # between-partition term where the textbook sum-of-squares form cancels.
        n_i = partials.column(agg.partial["n"]).to_numpy().astype(np.float64)
        m_i = partials.column(agg.partial["mean"]).fill_null(0.0).to_numpy()
        dev = n_i * (m_i - mean[gid]) ** 2 if ngroups else np.zeros(0)
        dev[n_i == 0] = 0.0
        m2 = m2 + np.bincount(gid, weights=dev, minlength=ngroups)
        ddof = _ddof(agg)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = m2 / (n - ddof)
        result = np.sqrt(var) if agg.func == "stddev" else var
        out[agg.out_name] = pa.array(result, mask=(n - ddof) <= 0)
    return out


def _prepare_partials(partials: pa.Table, aggs: List[Aggregation]) -> pa.Table:
    """Replace each (count, mean[, var0]) triple by (count, sum, M2) so partials add up."""
    columns = {name: partials.column(name) for name in partials.column_names}
    used = set()  # what the final merge reads: the rest does not travel
    for agg in aggs:
        used |= {agg.partial[role] for role in ("value", "n", "sum") if role in agg.partial}
        if agg.func in ("variance", "stddev"):
            used.add(agg.partial["mean"])  # Chan's formula reads each partition's mean
        if agg.func not in ("mean", "variance", "stddev") or "mean" not in agg.partial:
            continue  # no mean partial: a float mean ships its sum as it is
        n = pc.cast(columns[agg.partial["n"]], pa.float64())
        mean = pc.cast(columns[agg.partial["mean"]], pa.float64())
        sum_name = agg.partial["mean"] + "_sum"
        columns[sum_name] = pc.multiply(mean, n)
        agg.partial["sum"] = sum_name
        used.add(sum_name)
        if agg.func != "mean":
            m2_name = agg.partial["var0"] + "_m2"
            columns[m2_name] = pc.multiply(pc.cast(columns[agg.partial["var0"]], pa.float64()), n)
            agg.partial["m2"] = m2_name
            used.add(m2_name)
    partial_names = {name for agg in aggs for name in agg.partial.values()}
    return pa.table({name: col for name, col in columns.items() if name not in partial_names or name in used})


def groupby(
    comm: MPI.Intracomm,
    table: pa.Table,
    keys: Union[str, Sequence[str]],
    aggs: Sequence[AggSpec],
    options: Optional[EngineOptions] = None,
) -> pa.Table:
    """Group a partitioned table by key column(s) and aggregate.

    Where the aggregations allow it (sum, count, mean, min, max, var/std,
    first/last, product, any/all) every rank aggregates its own rows first and
    only the partial results travel; count_distinct/distinct drop duplicate
    rows before travelling; anything else ships the needed columns and lets
    pyarrow aggregate after the shuffle.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator; collective over all its ranks.
    table : pyarrow.Table
        This rank's partition.
    keys : str or list of str
        Grouping column(s); null keys form a group, as in pyarrow.
    aggs : list of tuples
        pyarrow-style ``(column, function[, options])``; ``var``/``std`` are
        accepted for ``variance``/``stddev`` (ddof=0 by default, as pyarrow).
    options : EngineOptions, optional
        The engine options; by default those in force now.

    Returns
    -------
    pyarrow.Table
        This rank's groups: key columns and ``<column>_<function>`` columns,
        with pyarrow's column order and types.  Each group is on exactly one
        rank; the order of groups is unspecified.

    Raises
    ------
    MissingColumnError, SchemaMismatchError, UnsupportedTypeError, InvalidArgumentError
        On every rank, when any rank's input is bad.
    """

    def parse() -> Tuple[List[str], List[Aggregation], pa.Table]:
        key_list = as_column_list(keys, "keys")
        check_columns(table, key_list, "table")
        check_hashable(table, key_list, "table")
        parsed = parse_aggregations(aggs)
        for agg in parsed:
            check_columns(table, agg.columns, "table", role="aggregated column")
        # pyarrow judges function/type combinations on no rows; what it gives
        # is also the result's schema (the input conformed as prepare will).
        empty = conform(table.slice(0, 0), canonical_schema(table.schema))
        try:
            probe = _pyarrow_output(empty, key_list, parsed)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"pyarrow cannot aggregate this table: {exc}") from exc
        return key_list, parsed, probe

    prepared = prepare(comm, "groupby", [("table", table)], parse, options)
    (key_list, parsed, probe), table = prepared.args, prepared.tables[0]
    ordered = any(a.func in ORDERED for a in parsed)
    threads = prepared.consensus.use_threads and not ordered
    limit = prepared.options.max_message_bytes
    if comm.Get_size() == 1:
        return _pyarrow_output(table, key_list, parsed, threads)

    kind = _plan_kind(parsed, table.schema)
    logger.debug("groupby: %s plan for %s", kind, [a.out_name for a in parsed])
    needed = list(dict.fromkeys(key_list + [c for a in parsed for c in a.columns]))
    if kind == "partial":
        specs = _partial_specs(parsed, table.schema)
        local = aggregate(table, key_list, specs, threads)
        local = _rename(local, key_list, [f"__p{j}" for j in range(len(specs))])
        local = _prepare_partials(local, parsed)
        mine = hash_partition(comm, conform(local, canonical_schema(local.schema)), key_list, limit=limit)[0]
        columns = _final_from_partials(mine, key_list, parsed, threads, ordered)
        return _assemble(columns, probe)
    projected = table.select(needed)
    if kind == "distinct":
        projected = projected.group_by(needed, use_threads=threads).aggregate([])
        projected = projected.select(needed)
    mine = hash_partition(comm, conform(projected, canonical_schema(projected.schema)), key_list, limit=limit)[0]
    return _pyarrow_output(mine, key_list, parsed, threads)


def _pyarrow_output(
    table: pa.Table, keys: List[str], aggs: List[Aggregation], use_threads: bool = False
) -> pa.Table:
    grouped = aggregate(table, keys, [a.pyarrow_spec() for a in aggs], use_threads)
    names = [a.out_name for a in aggs]
    return _rename(grouped, keys, names)


def _assemble(columns: Dict[str, Any], probe: pa.Table) -> pa.Table:
    arrays = []
    for f in probe.schema:
        col = columns[f.name]
        arrays.append(col if col.type == f.type else pc.cast(col, f.type))
    return pa.Table.from_arrays(arrays, schema=probe.schema)


__all__ = ["groupby", "parse_aggregations", "Aggregation"]

