"""The ``@cylon_app`` decorator: a Parsl app that runs on N MPI ranks."""
from __future__ import annotations

import functools
import inspect
import pickle
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Union

from parsl.app.app import AppBase
from parsl.dataflow.dflow import DataFlowKernel, DataFlowKernelLoader
from parsl.dataflow.memoization import id_for_memo
from parsl.executors.errors import InvalidResourceSpecification

from .options import check_app_options
from .resources import KNOWN_KEYS, ResourceSpec, resource_keywords
from .table.ref import register_memo


class CylonFunction:
    """The callable Parsl hands to the executor: the user's function plus its needs.

    It is what travels to the ranks, so it stays small and picklable; the
    executor recognises it by ``__rcylon_cylon__`` and calls it with a
    ``CylonContext`` in front of the user's arguments.
    """

    __rcylon_cylon__ = True

    def __init__(self, func: Callable, options: Optional[Dict[str, Any]] = None) -> None:
        self.func = func
        self.__rcylon_options__ = dict(options or {})
        functools.update_wrapper(self, func)

    def __call__(self, ctx: Any, *args: Any, **kwargs: Any) -> Any:
        return self.func(ctx, *args, **kwargs)

    def __getstate__(self) -> Dict[str, Any]:
        return {"func": self.func, "options": self.__rcylon_options__}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["func"], state["options"])


class CylonApp(AppBase):
    """A Parsl app whose calls run as MPI tasks of ``spec.ranks`` ranks.

    Calls return Parsl ``AppFuture``s and mix with ``python_app`` and
    ``bash_app`` calls in one DAG.  The resource specification is checked
    when the app is called: a request no pool of the target executors can
    ever hold raises ``InvalidResourceSpecification`` at once.
    """

    def __init__(self, func: Callable, spec: ResourceSpec, data_flow_kernel: Optional[DataFlowKernel] = None,
                 executors: Union[List[str], Literal["all"]] = "all", cache: bool = False,
                 ignore_for_cache: Optional[Sequence[str]] = None,
                 options: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(CylonFunction(func, options), data_flow_kernel=data_flow_kernel, executors=executors,
                         cache=cache, ignore_for_cache=ignore_for_cache)
        self.spec = spec

    def __call__(self, *args: Any, **kwargs: Any):
        dfk = self.data_flow_kernel or DataFlowKernelLoader.dfk()
        override = kwargs.pop("parsl_resource_specification", None)
        spec = self.spec
        if override:
            spec = self.spec.merged(override, where=self.__name__)
        self._check_executors(dfk, spec)
        invocation_kwargs = dict(self.kwargs)
        invocation_kwargs.update(kwargs)
        invocation_kwargs["parsl_resource_specification"] = spec.as_dict()
        return dfk.submit(self.func, app_args=args, executors=self.executors, cache=self.cache,
                          ignore_for_cache=self.ignore_for_cache, app_kwargs=invocation_kwargs, join=False)

    def _check_executors(self, dfk: DataFlowKernel, spec: ResourceSpec) -> None:
        labels = [e for e in dfk.executors if e != "_parsl_internal"] if self.executors == "all" else self.executors
        checkers = [dfk.executors[label] for label in labels
                    if label in dfk.executors and hasattr(dfk.executors[label], "validate_resource_specification")]
        if not checkers:
            raise InvalidResourceSpecification(
                set(), f"{self.__name__}: @cylon_app needs a RadicalCylonExecutor; executors {labels} "
                       "cannot run MPI tasks")
        errors = []
        for ex in checkers:
            try:
                ex.validate_resource_specification(spec.as_dict(), cylon=True, name=self.__name__)
                return
            except InvalidResourceSpecification as err:
                errors.append(err)
        raise errors[0]


def cylon_app(function: Optional[Callable] = None, *, ranks: int = 1, cores_per_rank: int = 1,
              gpus_per_rank: int = 0, pool: Optional[str] = None,
              data_flow_kernel: Optional[DataFlowKernel] = None, cache: bool = False,
              executors: Union[List[str], Literal["all"]] = "all",
              ignore_for_cache: Optional[Sequence[str]] = None, **options: Any):
    """Make ``function`` a Parsl app that runs on ``ranks`` MPI ranks.

    The function receives a :class:`~parsl_rcylon.context.CylonContext` as its
    first argument (``ctx.comm`` is private to the task) and runs on every
    rank; the app's future resolves to rank 0's return value, or to a
    ``TableRef`` when every rank returns a table.

    Parameters
    ----------
    ranks, cores_per_rank, gpus_per_rank : int
        What each call needs; a call may override them with
        ``parsl_resource_specification={...}``.
    pool : str, optional
        Name of the worker pool to run in.
    data_flow_kernel, cache, executors, ignore_for_cache
        As for ``parsl.python_app``.
    **options
        Any other key of Parsl's resource vocabulary (``num_nodes``,
        ``ranks_per_node``, ``cores``, ``gpus``, ``memory``, ``disk``,
        ``running_time_min``, ``priority``: :mod:`parsl_rcylon.resources`);
        table options for this app's results and table arguments
        (``format``, ``compression``, ``row_group_size``, ``keep``,
        ``verify``, ...), engine options for its table operations
        (``join_kernel``, ``join_rounds``, ...), and
        ``walltime`` (seconds): see :mod:`parsl_rcylon.options`.  Table and engine
        options travel with each task to its ranks (``ctx.options``), never
        to the function.

    Raises
    ------
    parsl_rcylon.options.OptionError
        An unknown keyword (the message lists the known ones; ``rank=4`` is
        not ``ranks=4``) or a bad option value.
    parsl.executors.errors.InvalidResourceSpecification
        A bad resource value.

    Examples
    --------
    >>> @cylon_app(ranks=2)
    ... def total(ctx, n):
    ...     return ctx.comm.allreduce(n)
    """
    where = f"cylon_app({getattr(function, '__name__', '')})" if function is not None else "cylon_app"
    resources = resource_keywords(options)
    options = check_app_options(options, where, also_known=_DECORATOR_KEYS | KNOWN_KEYS)
    spec = ResourceSpec(ranks=ranks, cores_per_rank=cores_per_rank, gpus_per_rank=gpus_per_rank,
                        pool=pool).merged(resources, where="cylon_app") if resources else ResourceSpec.from_mapping(
        {"ranks": ranks, "cores_per_rank": cores_per_rank, "gpus_per_rank": gpus_per_rank, "pool": pool},
        where="cylon_app")

    def decorator(func: Callable) -> CylonApp:
        return CylonApp(func, spec, data_flow_kernel=data_flow_kernel, executors=executors, cache=cache,
                        ignore_for_cache=ignore_for_cache, options=options)

    if function is not None:
        return decorator(function)
    return decorator


#: The decorator's own keyword parameters, listed as known keys when an option is not.
_DECORATOR_KEYS = frozenset(name for name, p in inspect.signature(cylon_app).parameters.items()
                            if p.kind == p.KEYWORD_ONLY)


@id_for_memo.register(CylonFunction)
def _id_for_memo_cylon_function(fn: CylonFunction, output_ref: bool = False) -> bytes:
    # Like Parsl's rule for plain functions: name and module identify the app
    # across runs, so cache=True and checkpoints work for cylon_apps too.
    return pickle.dumps(["parsl_rcylon.CylonFunction", fn.__name__, fn.__module__,
                         sorted(fn.__rcylon_options__.items())])


register_memo()
