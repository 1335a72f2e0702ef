"""RadicalCylonExecutor: the Parsl adapter over warm Radical Pilot workers.

Options are checked in groups (:mod:`.executor_options`); a call is admitted once
(:mod:`.runtime.client.admission`), built into a :class:`~.runtime.wire.task.Task` once, and handed to the task
backend: the dispatcher of the executor's own pilots (:mod:`.runtime.client.pilots`) or the client of an attached
pilot server (:mod:`.runtime.attach`).
"""
from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import os
import threading
import time
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import typeguard
from parsl.executors.base import ParslExecutor
from parsl.monitoring.radios.base import RadioConfig
from parsl.serialize import pack_apply_message
from parsl.utils import RepresentationMixin

from .errors import ExecutorShutdown, StartupError
from .executor_options import Allocation, DataOptions, Liveness
from .monitoring import PrivateFilesystemRadio, app_function, report_nodes
from .permissions import make_dir, make_run_dirs
from .progress import Progress, TaskBoard
from .resources import PilotSpec, ResourceSpec, WorkerPool
from .runtime.attach.client import AttachedPilot
from .runtime.client.admission import Admission
from .runtime.client.backend import TaskBackend
from .runtime.client.pilots import OwnPilots, PilotStartError
from .runtime.wire.channel import ChannelOptions
from .runtime.wire.task import Task
from .table.ledger import TableLedger
from .workdir import task_working_dir

logger = logging.getLogger(__name__)


class RadicalCylonExecutor(ParslExecutor, RepresentationMixin):
    """Run Parsl apps as MPI tasks on warm RAPTOR workers inside a Radical Pilot pilot.

    ``start()`` opens a Radical Pilot session, one pilot, a RAPTOR master and the MPI workers of each pool,
    and returns once every worker rank is ready.  ``@cylon_app`` calls run on as many ranks of a worker as
    they ask for, with a communicator of their own; plain ``python_app`` and ``bash_app`` calls run on one
    rank, so a whole pipeline lives in one pilot.  The keywords are checked in groups
    (:mod:`parsl_rcylon.executor_options`), whose classes say more about each.

    Parameters
    ----------
    label : str
        Executor label apps refer to.
    resource, runtime, project, queue, access_schema, pilot_options
        The one pilot's Radical Pilot resource label (``local.localhost``,
        ``ornl.frontier``, ...), walltime in minutes, batch settings and further
        ``PilotDescription`` keys.
    worker_ranks : int, optional
        Ranks of the single default worker.  Locally: the machine's cores, at
        least 4 (a small machine is oversubscribed so 3- and 4-rank tasks run).
    pools : list of WorkerPool, optional
        Replace the default worker with these pools (CPU and GPU pools, pools
        of different sizes, pools in different pilots).
    pilots : list of PilotSpec, optional
        Several allocations under this one executor; replaces ``resource``,
        ``runtime``, ``project``, ``queue``, ``access_schema``, ``pilot_options``.
    data_dir, table_options, sharing
        Shared directory for tables (default ``<run_dir>/<label>/data``); table
        defaults (``format``, ...); the run's modes, ``private`` or ``group``.
    address : str, optional
        Address ranks reach this process at (default: ``127.0.0.1`` locally, else this host's name); given,
        the client listens on it alone.
    heartbeat_period, heartbeat_threshold, rank_timeout, start_timeout, cancel_grace, max_worker_restarts
        Liveness (:class:`~parsl_rcylon.runtime.client.pilots.Liveness`): seconds
        between heartbeats to each host's leader rank; silence after which the pilot's processes end
        themselves; silence after which a rank's worker is lost (raise it for
        tasks that hold the GIL for minutes); the wait for the pilot and
        workers; the seconds a failed task's other ranks get before their worker
        is replaced; replacement workers per pool (``None``: no limit).
    encrypted, port_range, max_frame_bytes
        The channel (:class:`~parsl_rcylon.runtime.wire.channel.ChannelOptions`):
        CurveZMQ on every connection (``False`` keeps the token and message
        checks but lets anyone who reaches the port connect and read the
        traffic: ``docs/security.md``); the ports the client may listen on; the
        largest ZeroMQ frame a peer may send.
    max_message_bytes : int, optional
        Deprecated name of ``max_frame_bytes`` (the engine's is the bytes of one MPI call).
    attach : str, optional
        Run directory of a pilot started with ``parsl-rcylon up``: ``start()``
        connects to it (in well under a second) instead of starting a pilot,
        and ``shutdown()`` leaves it running.  Pools come from that pilot;
        options about the pilot itself are ignored (see ``docs/attach.md``).
    working_dir, task_dir : str, optional
        Parsl's staging directory (its data providers download into it), which never moves a task; the
        directory every task runs in, by default the client's cwd at submission (:mod:`parsl_rcylon.workdir`).
    remote_monitoring_radio : RadioConfig, optional
        How tasks report to a ``MonitoringHub`` (:mod:`parsl_rcylon.monitoring`).
    progress : bool
        Show the run's progress and a summary per app (:mod:`parsl_rcylon.progress`).
    """

    @typeguard.typechecked
    def __init__(
        self,
        label: str = "rcylon",
        resource: str = "local.localhost",
        worker_ranks: Optional[int] = None,
        pools: Optional[Sequence[WorkerPool]] = None,
        pilots: Optional[Sequence[PilotSpec]] = None,
        data_dir: Optional[str] = None,
        runtime: int = 24 * 60,
        project: Optional[str] = None,
        queue: Optional[str] = None,
        access_schema: Optional[str] = None,
        pilot_options: Optional[Dict[str, Any]] = None,
        address: Optional[str] = None,
        heartbeat_period: float = 2.0,
        heartbeat_threshold: float = 30.0,
        rank_timeout: float = 120.0,
        start_timeout: float = 300.0,
        table_options: Optional[Dict[str, Any]] = None,
        encrypted: bool = True,
        port_range: Optional[Tuple[int, int]] = None,
        max_frame_bytes: int = 1 << 30,
        sharing: str = "private",
        cancel_grace: float = 3.0,
        max_worker_restarts: Optional[int] = None,
        attach: Optional[str] = None,
        working_dir: Optional[str] = None,
        task_dir: Optional[str] = None,
        remote_monitoring_radio: Optional[RadioConfig] = None,
        progress: bool = False,
        max_message_bytes: Optional[int] = None,
    ) -> None:
        ParslExecutor.__init__(self)
        if max_message_bytes is not None:
            warnings.warn("RadicalCylonExecutor(max_message_bytes=...) is now max_frame_bytes", DeprecationWarning,
                          stacklevel=2)
            max_frame_bytes = max_message_bytes
        # The groups check the keywords; Parsl's repr of a config reads each keyword back as an attribute.
        self.allocation = Allocation.from_options(worker_ranks, pools, pilots, resource, runtime, project, queue,
                                                  access_schema, pilot_options)
        self.liveness = Liveness(heartbeat_period, heartbeat_threshold, rank_timeout, start_timeout, cancel_grace,
                                 max_worker_restarts)
        self.channel = ChannelOptions(encrypted, port_range, max_frame_bytes)
        self.data = DataOptions(f"executor {label!r}", data_dir, dict(table_options or {}), sharing, task_dir)
        keywords = inspect.signature(RadicalCylonExecutor.__init__).parameters
        vars(self).update({k: v for k, v in locals().items() if k in keywords and k != "self"})
        self.pools: List[WorkerPool] = list(self.allocation.pools)
        self.pilots: List[PilotSpec] = list(self.allocation.pilots)
        self.pilot_options, self.table_options = dict(pilot_options or {}), self.data.table_options
        self.task_dir = self.data.task_dir  # absolute; working_dir stays as given, as Parsl's staging directory
        self.remote_monitoring_radio = remote_monitoring_radio or PrivateFilesystemRadio(sharing)
        self.task_board = TaskBoard()
        self._progress: Optional[Progress] = None
        self._ids = itertools.count()
        self._backend: Optional[TaskBackend] = None  # where tasks go: the dispatcher, or an attached pilot
        self._own: Optional[OwnPilots] = None  # the pilots start() starts (none when attached)
        self._attached_session: Optional[str] = None
        self._admission: Optional[Admission] = None
        self._start_hooks: Dict[str, Callable[[], None]] = {}
        self._ledger = TableLedger(label)
        self._shutdown_lock = threading.Lock()
        self._is_shutdown = False
        self.timings: Dict[str, float] = {}

    @property
    def base_dir(self) -> Path:
        """Where this executor keeps every Radical Pilot artifact."""
        return Path(self.run_dir) / self.label

    @property
    def session_id(self) -> Optional[str]:
        return self._own.session_id if self._own is not None else self._attached_session

    @property
    def is_local(self) -> bool:
        """Whether every pilot runs on this machine."""
        return self.allocation.is_local

    @property
    def admission(self) -> Admission:
        """Decides whether a pool of this executor can hold a call (built on first use: run_dir comes late)."""
        if self._admission is None:
            self._admission = Admission.for_pilots(self.label, self.pools, self.pilots,
                                                   lambda: getattr(self, "run_dir", None) or os.getcwd())
        return self._admission

    def pools_of(self, pilot: PilotSpec) -> List[WorkerPool]:
        """The pools that live in ``pilot``."""
        return self.allocation.pools_of(pilot)

    @ParslExecutor.run_dir.setter  # type: ignore[attr-defined]
    def run_dir(self, value: str) -> None:  # the first value, ParslExecutor's default, is not the run's
        self._run_dir_set, self._run_dir = hasattr(self, "_run_dir"), value

    def pilot_descriptions(self) -> Dict[str, Dict[str, Any]]:
        """The ``PilotDescription`` keys ``start()`` will submit, by pilot name (sandbox ``<run_dir>/`` until set)."""
        return self.allocation.pilot_descriptions(self.base_dir if self._run_dir_set else Path("<run_dir>", self.label))

    def start(self) -> None:
        """Start session, pilot, master and workers; return when every rank is ready."""
        t0 = time.monotonic()
        if self.attach:
            self._attach(t0)
            return
        pools = {p.name: self.pools_of(p) for p in self.pilots}
        try:
            OwnPilots.preflight(self.pilots, pools)
        except PilotStartError as err:
            raise StartupError(self, str(err)) from None
        descriptions = self.allocation.pilot_descriptions(self.base_dir)  # a pool that cannot be placed fails here
        make_run_dirs(self.run_dir, self.base_dir, self.sharing)  # Parsl made runinfo/NNN with the umask
        self.data_dir = self.data_dir or str(self.base_dir / "data")
        make_dir(self.data_dir, self.sharing)
        from .tableio.cleanup import remove_leftovers  # pyarrow-free, but only a start needs it
        remove_leftovers(self.label, self.data_dir, str(self.base_dir / "scratch"))
        own = self._own = OwnPilots(self.label, self.base_dir, self.pilots, pools, self.liveness, self.channel,
                                    self.address, self.timings)
        self._use(own.dispatcher)
        try:
            own.start(descriptions, t0, on_exit=self.shutdown)
        except BaseException as exc:
            self.shutdown()
            if isinstance(exc, PilotStartError):
                raise StartupError(self, str(exc)) from exc.__cause__
            raise
        report_nodes(self, own.dispatcher.rank_hosts())  # as HTEX's interchange reports its managers
        self._started(t0, "ready")

    def _attach(self, t0: float) -> None:
        pilot = AttachedPilot.connect(self.attach)
        self.pools = pilot.info.worker_pools()
        self._admission = Admission(self.label, pilot.info.pool_shapes())
        self.data_dir = self.data_dir or pilot.info.data_dir
        self._attached_session = pilot.session_id
        self._use(pilot)
        self._started(t0, f"attached to the pilot at {self.attach}")

    def _use(self, backend: TaskBackend) -> None:
        backend.on_result = self._ledger.record
        backend.on_start = self._on_start
        self._backend = backend

    def _started(self, t0: float, what: str) -> None:
        self.timings["start"] = time.monotonic() - t0
        if self.progress:
            self._progress = Progress([self]).start()
        logger.info("%s: %s in %.2f s (%s)", self.label, what, self.timings["start"],
                    ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))

    def _on_start(self, uid: str) -> None:
        self.task_board.started(uid)
        if (hook := self._start_hooks.pop(uid, None)) is not None:
            hook()

    def validate_resource_specification(self, spec: Dict[str, Any], cylon: bool = True,
                                        name: str = "task") -> ResourceSpec:
        """Parse ``spec`` and check that some pool of this executor can ever hold it (:class:`Admission`)."""
        return self.admission.admit(spec, cylon=cylon, name=name)

    def submit(self, func: Callable, resource_specification: Dict[str, Any], *args: Any, **kwargs: Any) -> Future:
        """Send one app call to the workers; the future resolves to rank 0's value."""
        self._check_running()
        cylon = bool(getattr(app_function(func), "__rcylon_cylon__", False))
        name = getattr(func, "__name__", "task")
        spec = self.validate_resource_specification(resource_specification, cylon=cylon, name=name)
        uid = f"{self.label}.task.{next(self._ids):06d}"
        kwargs.pop("parsl_resource_specification", None)
        options = dict(self.table_options, **getattr(func, "__rcylon_options__", {}))
        task = Task.build(uid, name, cylon, options, spec, data_dir=self.data_dir,
                          cwd=task_working_dir(self.task_dir))
        fut = self._dispatch(task, pack_apply_message(func, args, kwargs))
        fut.parsl_executor_task_id = uid  # type: ignore[attr-defined]
        self.task_board.submitted(uid, name, fut)
        return fut

    def submit_packed(self, task: Task, resources: Dict[str, Any], payload: bytes,
                      on_start: Optional[Callable[[], None]] = None) -> Future:
        """Run an already packed call (``parsl-rcylon up``'s server, for attached clients).

        ``resources`` is validated as in ``submit()`` and resolved into
        ``task``; ``on_start()`` is called once the task's ranks have it.
        """
        self._check_running()
        spec = self.validate_resource_specification(resources, cylon=task.cylon, name=task.name)
        if on_start is not None:
            self._start_hooks[task.uid] = on_start
        fut = self._dispatch(task.resolve(spec), payload)
        fut.add_done_callback(lambda _: self._start_hooks.pop(task.uid, None))
        return fut

    def _check_running(self) -> None:
        if self._backend is None or self._is_shutdown:
            raise ExecutorShutdown(self, "submit() on an executor that is not running")

    def _dispatch(self, task: Task, payload: bytes) -> Future:
        # One scratch root for calls packed here and attached clients' calls; Future.cancel() withdraws the task.
        fut = self._backend.submit(dataclasses.replace(task, scratch_dir=str(self.base_dir / "scratch")), payload)
        fut.add_done_callback(lambda f, backend=self._backend: f.cancelled() and backend.cancel(task.uid))
        return fut

    def table_summary(self) -> Dict[str, Dict[str, int]]:
        """Per app: tables, rows and bytes written so far."""
        return self._ledger.summary()

    def release_tables(self) -> None:
        """Delete the tables of apps that asked not to keep them (at shutdown, or earlier to free space)."""
        self._ledger.release()

    def status(self) -> Dict[str, Dict[str, int]]:
        """Per pool: ranks, busy and idle ranks, queued and running tasks."""
        return self._backend.stats() if self._backend else {}

    def monitor_resources(self) -> bool:
        """Parsl's resource monitoring samples each task's process (rank 0's for a cylon_app)."""
        return True

    def shutdown(self) -> None:
        """Stop workers, master and pilot, close the session, and end leftovers.

        Pending and running tasks fail with ``ExecutorShutdown``.  Safe to call
        more than once and after a failed ``start()``.
        """
        with self._shutdown_lock:
            if self._is_shutdown:
                return
            self._is_shutdown = True
        t0 = time.monotonic()
        if self._progress is not None:
            self._progress.stop()  # the summary, before shutdown fails what is left
        if self._own is not None:
            self._own.stop_watching()
        if self._backend is not None:
            self._backend.stop()
        self.timings["shutdown_ranks"] = time.monotonic() - t0
        self.release_tables()
        if self._own is not None:
            self._own.close()
        self.timings["shutdown"] = time.monotonic() - t0
        logger.info("%s: shut down in %.1f s", self.label, self.timings["shutdown"])
        super().shutdown()


__all__ = ["RadicalCylonExecutor"]
