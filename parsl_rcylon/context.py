"""The context a ``cylon_app`` function receives as its first argument."""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

from .options import Options
from .permissions import make_dir
from .tableio.names import scratch_suffix

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from .table import TableRef
    from .training.loader import TorchLoader
    from .training.model import ModelRef
    from .training.process_group import TorchProcessGroup

logger = logging.getLogger(__name__)


class CylonContext:
    """One rank's view of a running ``cylon_app`` task.

    The communicator is private to this task: it spans exactly the task's
    ranks, so collectives on it never involve other tasks running beside it
    on the same worker.  Table operations are collective: every rank of the
    task calls them with its own partition and gets its partition of the
    result back.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The task's communicator (a one-rank task gets one too).
    task_id : str
        Executor task id, used in error messages and file names.
    name : str
        The app's function name.
    scratch_root : str
        Directory under which this rank's scratch directory is made on demand
        (``$TMPDIR`` or ``/tmp`` when not given).
    data_dir : str
        Shared-filesystem directory for tables produced by tasks.
    gpu_ids : sequence of int
        Devices this rank may use (also in ``CUDA_VISIBLE_DEVICES``).
    options : mapping, optional
        The task's options as its message carries them (the executor's
        ``table_options`` and the app's own), parsed into :attr:`options`.
    cores : int
        Cores this rank holds: its pool's ``cores_per_rank``, times the worker
        ranks reserved beside it when the task asked for more cores per rank
        than that.  Size thread pools by it; nothing sets them for you.
    runtime_comm : mpi4py.MPI.Intracomm, optional
        A duplicate of ``comm`` for the runtime's own collectives (default
        ``comm`` itself, right for one-rank tasks and tests).

    Attributes
    ----------
    options : parsl_rcylon.options.Options
        Table options (``options.table``), the engine options every table
        operation below runs with (``options.engine``: given ones, else the
        environment variables as they were when the task started, else the
        defaults), and ``walltime``, the task's time limit in seconds.

    Raises
    ------
    parsl_rcylon.options.OptionError
        An option's value is not valid.
    """

    def __init__(
        self,
        comm: Any,
        task_id: str,
        name: str = "",
        scratch_root: Optional[str] = None,
        data_dir: Optional[str] = None,
        gpu_ids: Sequence[int] = (),
        options: Optional[Mapping[str, Any]] = None,
        cores: int = 1,
        runtime_comm: Any = None,
    ) -> None:
        self.comm = comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        self.task_id = task_id
        self.name = name
        self.data_dir = data_dir
        self.gpu_ids: Tuple[int, ...] = tuple(gpu_ids)
        self.options = Options.from_mapping(options, where=f"task {task_id}")
        self.cores = cores
        # The runtime's own collectives (table arguments, publishing the result)
        # run here, so a collective the user left half-done on ``comm`` can
        # never be matched by one of them.
        self.runtime_comm = runtime_comm if runtime_comm is not None else comm
        self._scratch_root = scratch_root
        self._scratch: Optional[Path] = None
        self._on_end: List[Callable[[Optional[BaseException]], None]] = []

    def __repr__(self) -> str:
        return f"CylonContext(task={self.task_id!r}, rank={self.rank}, size={self.size})"

    @property
    def scratch(self) -> Path:
        """A directory private to this rank of this task (mode 0700), made on first use.

        Its name is unpredictable and it is made exclusively, so nobody else
        sharing the scratch root (``/tmp`` on a login node) can plant it or a
        link in its place.  It is removed with everything in it when the task
        ends (:meth:`close`); the scratch directories of ranks that were killed
        are removed by :func:`parsl_rcylon.tableio.cleanup.remove_stale_scratch`.
        """
        if self._scratch is None:
            root = make_dir(self._scratch_root or os.environ.get("TMPDIR") or "/tmp")
            prefix = re.sub(r"[^A-Za-z0-9_.=+-]", "_", f"{self.task_id}.rank{self.rank}.")
            self._scratch = Path(tempfile.mkdtemp(prefix=prefix, suffix=scratch_suffix(), dir=root))
        return self._scratch

    def close(self) -> None:
        """Remove this rank's scratch directory, if the task made one; the rank runner calls it at task end.

        Safe to call more than once; a failure to remove is logged, not raised
        (the task's outcome is already decided).
        """
        scratch, self._scratch = self._scratch, None
        if scratch is None:
            return
        try:
            shutil.rmtree(scratch)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("task %s rank %d: cannot remove scratch directory %s: %s", self.task_id, self.rank,
                           scratch, err)

    def __enter__(self) -> CylonContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def barrier(self) -> None:
        self.comm.Barrier()

    # -- task end ------------------------------------------------------------

    def on_task_end(self, callback: Callable[[Optional[BaseException]], None]) -> None:
        """Call ``callback(error)`` on this rank when the task's function returns (``None``) or raises.

        Callbacks run last registered first, before the task's result is
        published, so resources a task holds (a torch process group) are
        released even when the user forgets, and a warm rank starts its next
        task clean.
        """
        self._on_end.append(callback)

    def end_task(self, error: Optional[BaseException] = None) -> None:
        """Run the task-end callbacks (the rank runner calls this); a callback's error fails a task that succeeded."""
        callbacks, self._on_end = self._on_end[::-1], []
        first: Optional[BaseException] = None
        for callback in callbacks:
            try:
                callback(error)
            except BaseException as exc:  # every callback runs, whatever one does
                logger.warning("task %s rank %d: task-end callback %r failed: %s", self.task_id, self.rank,
                               callback, exc)
                first = first or exc
        if first is not None and error is None:
            raise first

    # -- distributed table operations (parsl_rcylon.engine) -----------------

    def shuffle(self, table: pa.Table, on: Union[str, List[str]]) -> pa.Table:
        """Hash-partition rows by ``on`` across the task's ranks."""
        from . import engine

        return engine.shuffle(self.comm, table, on, options=self.options.engine)

    def join(self, left: pa.Table, right: pa.Table, on=None, *, left_on=None,
             right_on=None, how: str = "inner", suffixes: Tuple[str, str] = ("", "_right")) -> pa.Table:
        """Distributed join of two partitioned tables."""
        from . import engine

        return engine.join(self.comm, left, right, on=on, left_on=left_on, right_on=right_on,
                           how=how, suffixes=suffixes, options=self.options.engine)

    def sort(self, table: pa.Table, by, ascending: Union[bool, List[bool]] = True,
             nulls_last: bool = True) -> pa.Table:
        """Global sort: ranks 0..size-1 hold consecutive, balanced runs."""
        from . import engine

        return engine.sort(self.comm, table, by, ascending=ascending, nulls_last=nulls_last,
                           options=self.options.engine)

    def groupby(self, table: pa.Table, keys, aggs) -> pa.Table:
        """Distributed group-by with pyarrow's aggregation names (``v_sum``)."""
        from . import engine

        return engine.groupby(self.comm, table, keys, aggs, options=self.options.engine)

    def unique(self, table: pa.Table, subset=None) -> pa.Table:
        from . import engine

        return engine.unique(self.comm, table, subset=subset, options=self.options.engine)

    def concat(self, tables: Sequence[pa.Table]) -> pa.Table:
        from . import engine

        return engine.concat(self.comm, tables, options=self.options.engine)

    def rebalance(self, table: pa.Table) -> pa.Table:
        from . import engine

        return engine.rebalance(self.comm, table, options=self.options.engine)

    def num_rows(self, table: pa.Table) -> int:
        from . import engine

        return engine.num_rows(self.comm, table)

    def gather(self, table: pa.Table, root: int = 0) -> Optional[pa.Table]:
        from . import engine

        return engine.gather(self.comm, table, root=root, options=self.options.engine)

    def cylon_env(self) -> Any:
        """A pycylon ``CylonEnv`` on this task's communicator (needs pycylon)."""
        from . import engine

        return engine.cylon_env(self.comm)

    # -- data plane (parsl_rcylon.table) -------------------------------------

    def read(self, ref: TableRef, columns: Optional[List[str]] = None, filter: Any = None) -> pa.Table:
        """This rank's share of ``ref``, with column projection and a filter pushed down."""
        return ref.read_share(self.rank, self.size, columns=columns, filter=filter)

    # -- training (parsl_rcylon.training; needs the `train` extra) ------------

    def torch_process_group(self, backend: Optional[str] = None,
                            timeout: Optional[float] = None) -> TorchProcessGroup:
        """``torch.distributed`` over exactly this task's ranks (collective); see docs/training.md."""
        from .training.process_group import open_process_group

        return open_process_group(self, backend=backend, timeout=timeout)

    def torch_loader(self, data: Any, features: Sequence[str], label: Optional[str] = None,
                     **kwargs: Any) -> TorchLoader:
        """Batches of this rank's share of ``data`` (a ``TableRef`` or table) as torch tensors (collective)."""
        from .training.loader import TorchLoader

        return TorchLoader(self, data, features=features, label=label, **kwargs)

    def save_model(self, model: Any, **kwargs: Any) -> ModelRef:
        """Rank 0 saves ``model`` under ``data_dir`` atomically; every rank gets the ``ModelRef`` (collective)."""
        from .training.model import save_model

        return save_model(self, model, **kwargs)
