"""A task: one app call, built once by the executor and read on every side of the wire.

The executor builds a :class:`Task` per call (:meth:`Task.build`, which
resolves the walltime once); the attached client sends it in a ``SUBMIT``,
the pilot server reads it back (:meth:`Task.from_wire`), the dispatcher
queues it and sends it to its ranks in a ``TASK`` with the ranks it got
(:class:`Assignment`), and each rank reads it back to run it.  The
``SUBMIT`` and ``TASK`` schemas of :mod:`.protocol` are derived from these
classes' fields (:func:`wire_schema`), so a field is added in one place.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ...resources import ResourceSpec

#: JSON types a wire field may hold, by the field's annotation.
_WIRE_TYPES: Dict[str, tuple] = {
    "str": (str,),
    "bool": (bool,),
    "int": (int,),
    "Dict[str, Any]": (dict,),
    "Optional[str]": (str, type(None)),
    "Tuple[str, ...]": (list,),
    "Tuple[int, ...]": (list,),
}


@dataclass(frozen=True)
class Task:
    """One app call as it travels from the executor to its ranks.

    Parameters
    ----------
    uid : str
        The executor's id of the call (the pilot server gives attached calls ids of its own).
    name : str
        The app's name, for logs, errors and the table ledger.
    cylon : bool
        A ``cylon_app`` (gets a ``CylonContext`` and may run on many ranks) or a plain app.
    options : dict
        The executor's table options and the app's own; ``walltime`` is the resolved one.
    spec : ResourceSpec
        The parsed resource specification (not sent to ranks; ``SUBMIT`` carries it as ``resources``).
    data_dir : str, optional
        Where the task's tables go.
    scratch_dir : str, optional
        Root of the ranks' private scratch directories.
    cwd : str, optional
        The working directory the task runs in.
    path : tuple of str
        The import path of an attached script, so its ranks can import its modules.
    """

    uid: str
    name: str
    cylon: bool
    options: Dict[str, Any]
    spec: ResourceSpec = field(default_factory=ResourceSpec, metadata={"wire": False})
    data_dir: Optional[str] = None
    scratch_dir: Optional[str] = None
    cwd: Optional[str] = None
    path: Tuple[str, ...] = ()

    @classmethod
    def build(cls, uid: str, name: str, cylon: bool, options: Mapping[str, Any], spec: ResourceSpec,
              **fields: Any) -> Task:
        """A task whose walltime is resolved once, into its spec and its options (:meth:`resolve`)."""
        return cls(uid=uid, name=name, cylon=cylon, options=dict(options), **fields).resolve(spec)

    def resolve(self, spec: ResourceSpec) -> Task:
        """This task with resource spec ``spec`` and the walltime resolved into both spec and options.

        The resource spec's ``walltime`` (or ``running_time_min``, already
        folded into it by :class:`~parsl_rcylon.resources.ResourceSpec`) wins
        over the app's ``walltime`` option; whichever set it, the dispatcher's
        deadline, ``ctx.options.walltime`` and the training group's collective
        timeout see the same value.
        """
        options = dict(self.options)
        walltime = spec.walltime if spec.walltime is not None else options.get("walltime")
        if walltime is not None:
            options["walltime"] = walltime
            spec = dataclasses.replace(spec, walltime=walltime)
        return dataclasses.replace(self, options=options, spec=spec)

    @property
    def walltime(self) -> Optional[float]:
        """Seconds the task may run (``None``: no limit)."""
        return self.spec.walltime

    def to_wire(self) -> Dict[str, Any]:
        """The task's wire fields, JSON-ready (the spec is not one of them)."""
        out: Dict[str, Any] = {}
        for f in _wire_fields(Task):
            value = getattr(self, f.name)
            if value is None or (f.name == "path" and not value):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def submit_header(self) -> Dict[str, Any]:
        """The header of a ``SUBMIT``: the wire fields and the resource spec."""
        return dict(self.to_wire(), resources=self.spec.as_dict())

    @classmethod
    def from_wire(cls, header: Mapping[str, Any], spec: Optional[ResourceSpec] = None) -> Task:
        """The task of a checked ``TASK`` or ``SUBMIT`` header (other keys are left alone)."""
        values = {f.name: header[f.name] for f in _wire_fields(cls) if f.name in header}
        values["path"] = tuple(p for p in values.get("path", ()) if isinstance(p, str))
        return cls(spec=spec or ResourceSpec(), **values)


@dataclass(frozen=True)
class Assignment:
    """Where the dispatcher started a task: sent with it in the ``TASK`` message.

    Parameters
    ----------
    ranks : tuple of int
        Worker ranks that run the task: task rank ``i`` on ``ranks[i]``.
    tag : int
        Tag of the communicator the ranks make for it.
    cores : int
        Cores each task rank holds.
    """

    ranks: Tuple[int, ...]
    tag: int
    cores: int = 1

    def to_wire(self) -> Dict[str, Any]:
        return {"ranks": list(self.ranks), "tag": self.tag, "cores": self.cores}

    @classmethod
    def from_wire(cls, header: Mapping[str, Any]) -> Assignment:
        return cls(ranks=tuple(header["ranks"]), tag=header["tag"], cores=header.get("cores", 1))


@functools.cache  # once per class: the dispatcher encodes every task it starts
def _wire_fields(cls: type) -> Tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.metadata.get("wire", True))


def wire_schema(cls: type) -> Tuple[Dict[str, tuple], Dict[str, tuple]]:
    """(required, optional) wire fields of ``cls`` and their JSON types, for :mod:`.protocol`."""
    required: Dict[str, tuple] = {}
    optional: Dict[str, tuple] = {}
    for f in _wire_fields(cls):
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        (optional if has_default else required)[f.name] = _WIRE_TYPES[f.type]
    return required, optional


__all__ = ["Assignment", "Task", "wire_schema"]
