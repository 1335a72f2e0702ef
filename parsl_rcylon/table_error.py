"""The base of every table failure, below both the options and the table data plane.

A bad table option (:class:`~parsl_rcylon.options.TableOptionError`, raised
where a ``cylon_app`` is decorated) and a failed write or read
(:mod:`parsl_rcylon.tableio.errors`, raised on the ranks) are both a
``TableError``; this leaf module lets :mod:`parsl_rcylon.options` say so
without importing the data plane.  Import it from
:mod:`parsl_rcylon.tableio.errors`, which re-exports it.
"""
from __future__ import annotations


class TableError(Exception):
    """Base class: a table could not be written, read or handed over.

    Parameters
    ----------
    message : str
        What went wrong, naming the task, ranks, columns or file involved.
    """


__all__ = ["TableError"]
