"""The executor's record of the tables its tasks wrote: what each stage produced, and what to delete."""
from __future__ import annotations

import logging
from typing import Any, Dict, List

from .ref import TableRef, stage_summary

logger = logging.getLogger(__name__)


class TableLedger:
    """Per app: how many tables, rows and bytes its tasks wrote; and the ``keep=False`` tables to delete.

    Only counts are kept for tables that outlive the run, so the ledger stays
    the same size over thousands of tasks; a ``keep=False`` table is held
    until :meth:`release` deletes it.

    Parameters
    ----------
    label : str
        The executor's label, for log messages.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._totals: Dict[str, Dict[str, int]] = {}
        self._doomed: Dict[str, List[TableRef]] = {}

    def record(self, name: str, value: Any) -> None:
        """Count ``value`` if it is a table returned by app ``name``; other results are ignored."""
        if not isinstance(value, TableRef):
            return
        totals = self._totals.setdefault(name, {"tables": 0, "rows": 0, "bytes": 0})
        totals["tables"] += 1
        totals["rows"] += value.num_rows
        totals["bytes"] += value.nbytes
        # A task may return a handle to data it did not write (an argument,
        # from_parquet): counted, never deleted.
        if value.owned and not value.keep:
            self._doomed.setdefault(name, []).append(value)
        logger.info("%s: %s wrote %s", self.label, name, stage_summary([value]))

    def summary(self) -> Dict[str, Dict[str, int]]:
        """Per app: tables, rows and bytes written so far."""
        return {name: dict(totals) for name, totals in self._totals.items()}

    def release(self) -> None:
        """Log what each stage wrote; delete the tables of apps that asked not to keep them."""
        for name, stats in self._totals.items():
            dropped = self._doomed.pop(name, [])
            note = f"; deleting {len(dropped)} (keep=False)" if dropped else ""
            logger.info("%s: stage %s wrote %d table(s), %d rows, %.1f MB%s", self.label, name, stats["tables"],
                        stats["rows"], stats["bytes"] / 1e6, note)
            for ref in dropped:
                try:
                    ref.delete()
                except Exception:
                    logger.exception("%s: could not delete table %s", self.label, ref.path)
