"""Running one task on one rank: unpack, call, and report.

This module runs inside the MPI worker ranks.  It never raises: whatever the
user function does, the rank reports a result dict so that the executor can
resolve the task's future, and the rank stays usable for the next task.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional

from parsl.app.errors import RemoteExceptionWrapper
from parsl.serialize import serialize, unpack_apply_message

from ..context import CylonContext


def _wrap_exception(exc: BaseException, rank: int, size: int, task: Dict[str, Any]) -> RemoteExceptionWrapper:
    where = f"raised on rank {rank} of {size} in task {task['uid']} ({task.get('name', '?')})"
    try:
        exc.add_note(where)
    except (AttributeError, TypeError):  # notes need Python 3.11 and a writable exception
        pass
    try:
        exc.rank = rank  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass
    return RemoteExceptionWrapper(type(exc), exc, exc.__traceback__)


def _portable_error(wrapper: RemoteExceptionWrapper) -> bytes:
    """Serialize an exception, falling back to a plain RuntimeError if it will not pickle."""
    try:
        return serialize(wrapper)
    except Exception as err:  # an exception holding an unpicklable object
        text = f"{wrapper.e_type.__name__}: {wrapper.e_value} (original exception not serializable: {err})"
        fallback = RuntimeError(text)
        return serialize(RemoteExceptionWrapper(RuntimeError, fallback, None))


def run_task(task: Dict[str, Any], comm: Any, gpu_ids=()) -> Dict[str, Any]:
    """Run ``task`` on this rank of ``comm`` and return the rank's report.

    Rank 0 of the task carries the return value; other ranks only say whether
    they succeeded, so a task's result crosses the network once.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    report: Dict[str, Any] = {"uid": task["uid"], "rank": rank, "ok": False}
    value: Any = None
    ok = False
    ctx: Optional[CylonContext] = None
    try:
        fn, args, kwargs = unpack_apply_message(task["payload"])
        kwargs.pop("parsl_resource_specification", None)
        if task["cylon"]:
            from ..table import publish_result, resolve_arguments

            ctx = CylonContext(
                comm,
                task_id=task["uid"],
                name=task.get("name", ""),
                scratch_root=task.get("scratch_dir"),
                data_dir=task.get("data_dir"),
                gpu_ids=gpu_ids,
                options=task.get("options"),
                cores=task.get("cores", 1),
            )
            args, kwargs = resolve_arguments(ctx, fn, args, kwargs)
            error: Optional[BaseException] = None
            try:
                value = fn(ctx, *args, **kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                ctx.end_task(error)  # before publishing: a failed rank frees peers blocked on it
        else:
            value = fn(*args, **kwargs)
        ok = True
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from user code too
        report["error"] = _portable_error(_wrap_exception(exc, rank, size, task))
    if ctx is not None:
        try:
            value = publish_result(ctx, value, ok=ok)
        except BaseException as exc:
            if ok:
                report["error"] = _portable_error(_wrap_exception(exc, rank, size, task))
                ok = False
    if ok and rank == 0:
        try:
            report["value"] = serialize(value)
        except BaseException as exc:
            err = TypeError(f"return value of {task.get('name', 'task')} cannot be serialized: {exc}")
            report["error"] = _portable_error(_wrap_exception(err, rank, size, task))
            ok = False
    report["ok"] = ok
    sys.stdout.flush()
    sys.stderr.flush()
    return report
