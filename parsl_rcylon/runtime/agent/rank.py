"""Running one task on one rank: unpack, call, and report.

This module runs inside the MPI worker ranks.  It never raises: whatever the
user function does, the rank reports, so that the executor can resolve the
task's future, and the rank stays usable for the next task.

Two rules keep a failure on one rank from hanging the others:

- The moment the user function raises on a rank of a multi-rank task, the
  rank says so (``report_early``), before any collective of its own: the
  executor fails the task's future at once, even if the other ranks are
  blocked in a collective waiting for this one.
- The runtime's own collectives (reading table arguments, publishing the
  result) run on ``runtime_comm``, a duplicate of the task's communicator,
  so no status exchange of the runtime can be matched by a collective the
  user's code left half-done on ``comm``.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from parsl.app.errors import RemoteExceptionWrapper
from parsl.serialize import serialize, unpack_apply_message

from ...context import CylonContext
from ...monitoring import split_monitoring
from ...workdir import WorkingDirectoryError, working_directory
from ..wire.task import Task
from .interrupt import Interrupter

#: A rank's report: the message header and its binary frame (value or exception).
Report = Tuple[Dict[str, Any], Optional[bytes]]


def _wrap_exception(exc: BaseException, rank: int, size: int, task: Task) -> RemoteExceptionWrapper:
    where = f"raised on rank {rank} of {size} in task {task.uid} ({task.name})"
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


def _extend_path(entries: Any) -> None:
    """Make the modules of an attached script importable: its import path, after the rank's own."""
    for entry in entries:
        if isinstance(entry, str) and entry not in sys.path:
            sys.path.append(entry)


@contextlib.contextmanager
def _user_code(interrupter: Optional[Interrupter], uid: str) -> Iterator[None]:
    if interrupter is None:
        yield
    else:
        with interrupter.running(uid):
            yield


def run_task(task: Task, payload: bytes, comm: Any, runtime_comm: Any = None, gpu_ids=(),
             interrupter: Optional[Interrupter] = None,
             report_early: Optional[Callable[[Dict[str, Any], bytes], None]] = None, cores: int = 1) -> Report:
    """Run ``task`` on this rank of ``comm`` and return the rank's final report.

    Rank 0 of the task carries the return value; other ranks only say whether
    they succeeded, so a task's result crosses the network once.
    ``runtime_comm`` defaults to ``comm`` (right for one-rank tasks only).
    The task runs in its working directory (``task.cwd``, :mod:`...workdir`);
    ``cores`` is what its placement gave each task rank (``CylonContext.cores``).
    """
    try:
        with working_directory(task.cwd, f"{task.uid} ({task.name})"):
            return _run(task, payload, comm, runtime_comm, gpu_ids, interrupter, report_early, cores)
    except WorkingDirectoryError as exc:
        rank, size = comm.Get_rank(), comm.Get_size()
        blob = _portable_error(_wrap_exception(exc, rank, size, task))
        if size > 1 and report_early is not None:
            report_early({"uid": task.uid, "rank": rank, "ok": False}, blob)
        return {"uid": task.uid, "rank": rank, "ok": False}, blob


def _run(task: Task, payload: bytes, comm: Any, runtime_comm: Any, gpu_ids,
         interrupter: Optional[Interrupter],
         report_early: Optional[Callable[[Dict[str, Any], bytes], None]], cores: int) -> Report:
    rank, size = comm.Get_rank(), comm.Get_size()
    uid = task.uid
    header: Dict[str, Any] = {"uid": uid, "rank": rank, "ok": False}
    blob: Optional[bytes] = None
    value: Any = None
    ok = False
    ctx: Optional[CylonContext] = None
    try:
        _extend_path(task.path)
        fn, args, kwargs = unpack_apply_message(payload)
        kwargs.pop("parsl_resource_specification", None)
        reporting, fn, monitoring = split_monitoring(fn, kwargs)
        # One report per Parsl task: rank 0's (monitoring.py).
        call = functools.partial(reporting, **monitoring) if rank == 0 and monitoring else fn
        if task.cylon:
            from ...table import publish_result, resolve_arguments

            ctx = CylonContext(
                comm,
                task_id=uid,
                name=task.name,
                scratch_root=task.scratch_dir,
                data_dir=task.data_dir,
                gpu_ids=gpu_ids,
                options=task.options,
                cores=cores,
                runtime_comm=runtime_comm,
            )
            args, kwargs = resolve_arguments(ctx, fn, args, kwargs)
            error: Optional[BaseException] = None
            try:
                with _user_code(interrupter, uid):
                    value = call(ctx, *args, **kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                ctx.end_task(error)  # before publishing: a failed rank frees peers blocked on it (training)
        else:
            with _user_code(interrupter, uid):
                value = call(*args, **kwargs)
        ok = True
    except BaseException as exc:  # SystemExit, KeyboardInterrupt and TaskInterrupted from user code too
        blob = _portable_error(_wrap_exception(exc, rank, size, task))
        if size > 1 and report_early is not None:
            report_early(dict(header), blob)
    if ctx is not None:
        try:
            value = publish_result(ctx, value, ok=ok)
        except BaseException as exc:
            if ok:
                blob = _portable_error(_wrap_exception(exc, rank, size, task))
                ok = False
        finally:
            ctx.close()  # the rank's scratch directory goes with the task, whatever happened
    if ok and rank == 0:
        try:
            blob = serialize(value)
        except BaseException as exc:
            err = TypeError(f"return value of {task.name} cannot be serialized: {exc}")
            blob = _portable_error(_wrap_exception(err, rank, size, task))
            ok = False
    if interrupter is not None:
        interrupter.forget(uid)
    header["ok"] = ok
    sys.stdout.flush()
    sys.stderr.flush()
    return header, blob
