"""The executor's record of the tables its tasks wrote: what each stage produced, and what to delete."""
from __future__ import annotations

import logging
from typing import Any, Dict, List

logger = logging.getLogger(__name__)


class TableLedger:
    """Tables written by tasks, per app: counted for the user, deleted at release unless kept.

    Parameters
    ----------
    label : str
        The executor's label, for log messages.

    Attributes
    ----------
    tables : dict of str to list of TableRef
        The tables each app's tasks returned, by app name (``keep=False``
        ones until they are released).
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.tables: Dict[str, List[Any]] = {}

    def record(self, name: str, value: Any) -> None:
        """Note ``value`` if it is a table returned by app ``name``; other results are ignored."""
        if type(value).__name__ != "TableRef":  # avoid importing pyarrow for non-table results
            return
        from .table import stage_summary

        self.tables.setdefault(name, []).append(value)
        logger.info("%s: %s wrote %s", self.label, name, stage_summary([value]))

    def summary(self) -> Dict[str, Dict[str, int]]:
        """Per app: tables, rows and bytes written so far."""
        return {name: {"tables": len(refs), "rows": sum(r.num_rows for r in refs),
                       "bytes": sum(r.nbytes for r in refs)} for name, refs in self.tables.items()}

    def release(self) -> None:
        """Log bytes written per stage; delete the tables of apps that asked not to keep them."""
        summary = self.summary()
        for name, refs in self.tables.items():
            stats = summary[name]
            dropped = [r for r in refs if not r.keep]
            note = f"; deleting {len(dropped)} (keep=False)" if dropped else ""
            logger.info("%s: stage %s wrote %d table(s), %d rows, %.1f MB%s", self.label, name, stats["tables"],
                        stats["rows"], stats["bytes"] / 1e6, note)
            for ref in dropped:
                try:
                    ref.delete()
                except Exception:
                    logger.exception("%s: could not delete table %s", self.label, getattr(ref, "path", ref))
            self.tables[name] = [r for r in refs if r.keep]
