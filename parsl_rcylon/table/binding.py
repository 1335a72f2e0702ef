"""Binding table arguments to a ``cylon_app`` function's parameters.

A ``TableRef`` argument normally reaches the function as this rank's share
of the table, a ``pyarrow.Table``.  The parameter's annotation can ask for
more: ``TableRef`` (also ``Optional[TableRef]``, ``List[TableRef]`` or the
string ``"TableRef"``) keeps the handle itself, ``pandas.DataFrame`` gets
the share as a DataFrame.  Refs directly inside a list, tuple (named tuples
too) or dict argument are read as well.
"""
from __future__ import annotations

import inspect
import re
import sys
import typing
from typing import Any, Callable, Dict, List, Sequence, Tuple

import pyarrow as pa

from .ref import TableRef


def holds_ref(value: Any) -> bool:
    """Whether ``value`` is a ``TableRef`` or a list, tuple or dict directly holding one."""
    if isinstance(value, TableRef):
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, TableRef) for v in value)
    if type(value) is dict:
        return any(isinstance(v, TableRef) for v in value.values())
    return False


def _mentions_tableref(annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty or annotation is None:
        return False
    if isinstance(annotation, str):
        return re.search(r"\bTableRef\b", annotation) is not None
    if isinstance(annotation, type) and issubclass(annotation, TableRef):
        return True
    return any(_mentions_tableref(a) for a in typing.get_args(annotation))


def _wants_pandas(annotation: Any) -> bool:
    pd = sys.modules.get("pandas")
    if pd is None or annotation is inspect.Parameter.empty:
        return False
    if isinstance(annotation, str):
        return re.fullmatch(r"(pd|pandas)\.DataFrame", annotation.strip()) is not None
    return annotation is pd.DataFrame


def _annotations(fn: Callable) -> Dict[str, Any]:
    """Parameter annotations, resolving string ones where possible (strings stay strings otherwise)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    raw = {name: p.annotation for name, p in sig.parameters.items()}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation naming something not importable here
        hints = {}
    return {name: hints.get(name, ann) for name, ann in raw.items()}


def _binding(fn: Callable, args: Sequence[Any], kwargs: Dict[str, Any]
             ) -> Tuple[List[Any], Dict[str, Any]]:
    """The parameter each positional and keyword argument binds to (the first parameter is ``ctx``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return [None] * len(args), {k: k for k in kwargs}
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    var_kw = next((p for p in params if p.kind == p.VAR_KEYWORD), None)
    names = [p.name for p in positional[1:]]  # skip ctx
    extra = var_pos.name if var_pos else None
    arg_names = [names[i] if i < len(names) else extra for i in range(len(args))]
    kw_names = {k: (k if k in sig.parameters and sig.parameters[k].kind != inspect.Parameter.VAR_KEYWORD
                    else (var_kw.name if var_kw else None)) for k in kwargs}
    return arg_names, kw_names


def parameter_annotations(fn: Callable, args: Sequence[Any], kwargs: Dict[str, Any]
                          ) -> Tuple[List[Any], Dict[str, Any]]:
    """The annotation of the parameter each argument binds to (``inspect.Parameter.empty`` where none)."""
    annotations = _annotations(fn)
    arg_names, kw_names = _binding(fn, args, kwargs)
    empty = inspect.Parameter.empty
    return ([annotations.get(n, empty) for n in arg_names],
            {k: annotations.get(kw_names.get(k), empty) for k in kwargs})


class ShareReader:
    """Reads this rank's shares of one task's ``TableRef`` arguments, once per distinct ref.

    Parameters
    ----------
    rank, size : int
        This rank and the task's rank count: the share to read.
    verify : str
        The table option ``verify``: how much of what is read is checked.
    """

    def __init__(self, rank: int, size: int, verify: str) -> None:
        self.rank, self.size, self.verify = rank, size, verify
        self.cache: Dict[int, pa.Table] = {}
        self.refs: List[TableRef] = []

    def share(self, ref: TableRef, pandas: bool = False) -> Any:
        key = id(ref)
        if key not in self.cache:
            self.refs.append(ref)
            self.cache[key] = ref.read_share(self.rank, self.size, verify=self.verify)
        table = self.cache[key]
        return table.to_pandas() if pandas else table

    def convert(self, value: Any, annotation: Any) -> Any:
        """``value`` as the parameter annotated ``annotation`` receives it."""
        if _mentions_tableref(annotation):
            return value
        pandas = _wants_pandas(annotation)
        if isinstance(value, TableRef):
            return self.share(value, pandas)
        # One level into containers: lists of tables are common (concat, union).
        if type(value) in (list, tuple) and any(isinstance(v, TableRef) for v in value):
            return type(value)(self.share(v) if isinstance(v, TableRef) else v for v in value)
        if isinstance(value, tuple) and hasattr(value, "_fields") and holds_ref(value):
            return type(value)(*(self.share(v) if isinstance(v, TableRef) else v for v in value))
        if type(value) is dict and any(isinstance(v, TableRef) for v in value.values()):
            return {k: self.share(v) if isinstance(v, TableRef) else v for k, v in value.items()}
        return value


__all__ = ["ShareReader", "holds_ref", "parameter_annotations"]
