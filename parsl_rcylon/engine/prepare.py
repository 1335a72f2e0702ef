"""The first step of every collective engine operation: check, agree, conform.

Each operation hands :func:`prepare` its input tables and a ``parse`` step
that checks and normalises its other arguments (keys, join type,
aggregations, ...) against this rank's tables.  :func:`prepare` runs that on
every rank inside one :func:`~.agreement.agree`, so bad input raises the same
named error on all ranks; then it checks that every rank's partition of each
table has the same column names and types, and conforms each partition to
that table's canonical schema (nullable, no metadata), so the pieces of
different ranks concatenate after an exchange.  The operation gets back its
parsed arguments, the conformed tables, what every rank said about them, and
the engine options in force.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, List, Optional, Sequence, Tuple, TypeVar

import pyarrow as pa

from ..options import EngineOptions, OptionError
from .agreement import Consensus, agree, format_ranks
from .errors import InvalidArgumentError
from .schemas import canonical_schema, check_same_schema, conform
from .transport import columnar_exchangeable
from .validation import check_table

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI

T = TypeVar("T")


@dataclass(frozen=True)
class TableFacts:
    """What a rank tells the others about its partition of one input table.

    Attributes
    ----------
    schema : pyarrow.Schema
        The partition's canonical schema (names and types).
    rows : int
        Its row count.
    columnar : bool
        Whether :func:`~.transport.exchange_columns` can move it (only
        computed when the operation asks).
    """

    schema: pa.Schema
    rows: int
    columnar: bool


@dataclass
class Prepared(Generic[T]):
    """An operation's agreed, checked input on this rank.

    Attributes
    ----------
    args : object
        What the operation's ``parse`` step returned on this rank.
    tables : list of pyarrow.Table
        This rank's input tables, conformed to their canonical schemas.
    facts : list of tuple of TableFacts
        ``facts[rank][i]``: what ``rank`` said about its partition of table ``i``.
    options : EngineOptions
        The engine options in force (the same on every rank).
    consensus : Consensus
        The agreement itself (cores of this rank's host share, ...).
    """

    args: T
    tables: List[pa.Table]
    facts: List[Tuple[TableFacts, ...]]
    options: EngineOptions
    consensus: Consensus

    def rows(self, table: int = 0) -> List[int]:
        """Every rank's row count of input ``table``, by rank."""
        return [facts[table].rows for facts in self.facts]

    def columnar(self, table: int = 0) -> bool:
        """Whether every rank's partition of input ``table`` can go by :func:`~.transport.exchange_columns`."""
        return all(facts[table].columnar for facts in self.facts)


def _nothing() -> None:
    return None


def engine_options(options: Optional[EngineOptions]) -> EngineOptions:
    """``options`` as given, or those in force now (environment variables read on this call)."""
    if isinstance(options, EngineOptions):
        return options
    try:
        return EngineOptions.resolve(options)
    except OptionError as exc:
        raise InvalidArgumentError(str(exc)) from exc


def prepare(comm: MPI.Intracomm, op: str, tables: Sequence[Tuple[str, Any]],
            parse: Callable[[], T] = _nothing, options: Optional[EngineOptions] = None,
            columnar: bool = False) -> Prepared[T]:
    """Check an operation's input on every rank, agree, check schemas across ranks, conform.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The operation's communicator; collective over all its ranks.
    op : str
        Operation name, the prefix of error messages.
    tables : sequence of (str, pyarrow.Table)
        The input tables and what to call each in messages (``"left table"``).
    parse : callable
        Checks and normalises the other arguments (after the tables were
        checked to be tables); raises a named :class:`~.errors.EngineError`
        when something is wrong.  Its result is :attr:`Prepared.args`.
    options : EngineOptions, optional
        The engine options; by default those in force now.
    columnar : bool
        Find out whether each table can be moved by columns.

    Raises
    ------
    EngineError
        On every rank, when any rank's input is bad, the ranks passed
        different numbers of tables, their partitions of a table differ in
        names or types, or they run with different engine options.
    """
    parsed: List[Any] = []

    def validate() -> Tuple[Tuple[TableFacts, ...], EngineOptions]:
        opts = engine_options(options)
        for what, table in tables:
            check_table(table, what)
        parsed.append(parse())
        facts = tuple(TableFacts(canonical_schema(t.schema), t.num_rows, columnar and columnar_exchangeable(t))
                      for _, t in tables)
        return facts, opts

    consensus = agree(comm, op, validate)
    metas = consensus.metas
    counts = sorted({len(facts) for facts, _ in metas})
    if len(counts) > 1:
        raise InvalidArgumentError(f"{op}: ranks passed different numbers of tables: {counts}")
    differ = [rank for rank, (_, opts) in enumerate(metas) if opts != metas[0][1]]
    if differ:
        raise InvalidArgumentError(f"{op}: {format_ranks(differ, len(metas))} run with other engine options "
                                   f"than rank 0 ({metas[differ[0]][1]} vs {metas[0][1]})")
    for i, (what, _) in enumerate(tables):
        check_same_schema(op, what, [facts[i].schema for facts, _ in metas])
    mine = metas[comm.Get_rank()][0]
    conformed = [conform(table, facts.schema) for (_, table), facts in zip(tables, mine, strict=True)]
    return Prepared(parsed[0], conformed, [facts for facts, _ in metas], metas[0][1], consensus)


__all__ = ["prepare", "Prepared", "TableFacts", "engine_options"]
