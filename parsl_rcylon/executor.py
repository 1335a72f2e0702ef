"""RadicalCylonExecutor: Parsl tasks as MPI tasks on warm Radical Pilot workers.

The executor is the Parsl adapter: it checks its options, builds its
collaborators in ``start()`` and hands them the work.  The dispatcher
(:mod:`.runtime.dispatcher`) places tasks on worker ranks and routes their
results; :class:`~.runtime.session.PilotRuntime` owns the Radical Pilot
session, pilots, masters and workers; :class:`~.runtime.hygiene.ClientHygiene`
ends what RP leaves behind; :class:`~.ledger.TableLedger` counts the tables
tasks write.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import typeguard
from parsl.executors.base import ParslExecutor
from parsl.executors.errors import InvalidResourceSpecification
from parsl.monitoring.radios.base import RadioConfig
from parsl.serialize import pack_apply_message
from parsl.utils import RepresentationMixin

from .errors import ExecutorShutdown, StartupError
from .monitoring import PrivateFilesystemRadio, app_function
from .options import check_table_options
from .permissions import make_dir, modes
from .progress import Progress, TaskBoard
from .resources import PilotSpec, ResourceSpec, WorkerPool
from .runtime import config as rp_config
from .runtime.capacity import HostCapacity, capacity_problem, host_capacity
from .runtime.dispatcher import Dispatcher
from .runtime.gpus import missing_local_gpus
from .runtime.hygiene import ClientHygiene
from .runtime.pilot import pilot_description
from .runtime.placement import host_layout, pool_accepts
from .runtime.session import PilotRuntime
from .table.ledger import TableLedger
from .workdir import task_working_dir

logger = logging.getLogger(__name__)


class RadicalCylonExecutor(ParslExecutor, RepresentationMixin):
    """Run Parsl apps as MPI tasks on warm RAPTOR workers inside a Radical Pilot pilot.

    ``start()`` opens a Radical Pilot session, one pilot, a RAPTOR master and
    the MPI workers of each pool, and returns once every worker rank is ready.
    ``@cylon_app`` calls run on as many ranks of a worker as they ask for, with
    a communicator of their own; plain ``python_app`` and ``bash_app`` calls
    run on one rank, so a whole pipeline lives in one pilot.

    Parameters
    ----------
    label : str
        Executor label apps refer to.
    resource : str
        Radical Pilot resource label (``local.localhost``, ``ornl.frontier``, ...).
    worker_ranks : int, optional
        Ranks of the single default worker.  Locally: the machine's cores, at
        least 4 (a small machine is oversubscribed so that 3- and 4-rank tasks
        run on a laptop).
    pools : list of WorkerPool, optional
        Replace the default worker with these pools (CPU and GPU pools,
        pools of different sizes, pools in different pilots).
    pilots : list of PilotSpec, optional
        Several allocations under this one executor (for example a CPU and
        a GPU partition); replaces ``resource``, ``runtime``, ``project``,
        ``queue``, ``access_schema`` and ``pilot_options``.
    data_dir : str, optional
        Shared-filesystem directory for tables passed between stages; default
        ``<run_dir>/<label>/data``.
    runtime : int
        Pilot walltime in minutes.
    project, queue, access_schema : str, optional
        Batch-system settings passed to the pilot description.
    pilot_options : dict, optional
        Further ``radical.pilot.PilotDescription`` keys.
    address : str, optional
        Address worker ranks use to reach this process; ``127.0.0.1`` for
        local pilots, this host's name otherwise.
    heartbeat_period, heartbeat_threshold : float
        Seconds between heartbeats, and the silence after which the pilot's
        processes assume this client died and end themselves.
    rank_timeout : float
        Seconds a worker rank may leave heartbeats unanswered before its
        worker is declared lost and its tasks fail with ``WorkerLost`` (a
        rank that has exited is noticed at once where its PID is visible).
        Raise it for tasks that hold the GIL for minutes.
    start_timeout : float
        Seconds ``start()`` waits for the pilot and workers before failing.
    table_options : dict, optional
        Defaults for tables written by tasks (``format``, ``compression``, ...).
    encrypted : bool
        Authenticate and encrypt every connection between this client and the
        pilot's processes with CurveZMQ (the default).  ``False`` keeps the
        run's registration token and message checks but lets anyone who can
        reach the port connect and read the traffic: see ``docs/security.md``.
    port_range : (int, int), optional
        Lowest and highest port the client may listen on (sites that open only
        a range to compute nodes); any free port otherwise.
    max_message_bytes : int
        Largest message a peer may send; a larger one is refused unread.
    sharing : {"private", "group"}
        Modes of the run directory and everything in it: ``private``
        (0700/0600, the default) or ``group`` (0750/0640) for a team that reads
        each other's results.  Keys stay private either way.
    cancel_grace : float
        Seconds the other ranks of a failed, timed-out or cancelled task get
        to finish before their worker is ended and replaced (a rank blocked in
        a collective with a failed peer never finishes: MPI cannot free it).
    max_worker_restarts : int, optional
        Replacement workers each pool may start over the run (``None``: no
        limit).  A pool whose new workers fail to start three times in a row
        gets no more.
    attach : str, optional
        Run directory of a pilot started with ``parsl-rcylon up``: ``start()``
        connects to it (in well under a second) instead of starting a pilot,
        and ``shutdown()`` leaves it running.  Pools come from that pilot;
        options about the pilot itself are ignored (see ``docs/attach.md``).
    working_dir : str, optional
        Directory every task runs in (as HTEX's ``working_dir``); by default
        the client's current directory when the task is submitted, so
        relative paths, ``File`` objects and a ``bash_app``'s
        ``stdout=``/``stderr=`` behave as with Parsl's local executors.  On a
        cluster it must be on a filesystem the nodes share
        (:mod:`parsl_rcylon.workdir`).
    remote_monitoring_radio : parsl.monitoring.radios.base.RadioConfig, optional
        How tasks report to Parsl monitoring when the ``Config`` has a
        ``MonitoringHub``; by default Parsl's filesystem radio in a private
        directory (:mod:`parsl_rcylon.monitoring`).
    progress : bool
        Show the run's progress from ``start()`` to ``shutdown()`` (a live
        view on a terminal, periodic lines otherwise) and a summary per app
        at the end (:mod:`parsl_rcylon.progress`).
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
        max_message_bytes: int = 1 << 30,
        sharing: str = "private",
        cancel_grace: float = 3.0,
        max_worker_restarts: Optional[int] = None,
        attach: Optional[str] = None,
        working_dir: Optional[str] = None,
        remote_monitoring_radio: Optional[RadioConfig] = None,
        progress: bool = False,
    ) -> None:
        ParslExecutor.__init__(self)
        self.label = label
        self.resource = resource
        if worker_ranks is not None and worker_ranks < 1:
            raise ValueError(f"worker_ranks must be >= 1, got {worker_ranks}")
        if pools is not None and worker_ranks is not None:
            raise ValueError("give either worker_ranks or pools, not both")
        self.worker_ranks = worker_ranks
        self.pools: List[WorkerPool] = list(pools) if pools else [
            WorkerPool(name="default", ranks=worker_ranks or max(4, os.cpu_count() or 1))]
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        self.data_dir = data_dir
        self.runtime = runtime
        self.project = project
        self.queue = queue
        self.access_schema = access_schema
        self.pilot_options = dict(pilot_options or {})
        if pilots and (resource != "local.localhost" or project or queue or access_schema or pilot_options):
            raise ValueError("give either pilots=[PilotSpec(...)] or resource/project/queue/..., not both")
        self.pilots: List[PilotSpec] = list(pilots) if pilots else [PilotSpec(
            name="main", resource=resource, runtime=runtime, project=project, queue=queue,
            access_schema=access_schema, options=self.pilot_options)]
        pilot_names = [p.name for p in self.pilots]
        if len(set(pilot_names)) != len(pilot_names):
            raise ValueError(f"pilot names must be unique, got {pilot_names}")
        for pool in self.pools:
            if pool.pilot is not None and pool.pilot not in pilot_names:
                raise ValueError(f"pool {pool.name!r} names pilot {pool.pilot!r}; pilots are {pilot_names}")
        self.address = address
        self.heartbeat_period = heartbeat_period
        self.heartbeat_threshold = heartbeat_threshold
        if rank_timeout <= heartbeat_period:
            raise ValueError(f"rank_timeout ({rank_timeout} s) must exceed heartbeat_period ({heartbeat_period} s)")
        self.rank_timeout = rank_timeout
        self.start_timeout = start_timeout
        self.table_options = check_table_options(table_options, f"executor {label!r}: table_options")
        self.encrypted = encrypted
        if port_range is not None and not 0 < port_range[0] <= port_range[1] < 65536:
            raise ValueError(f"port_range must be (lowest, highest) ports within 1..65535, got {port_range}")
        self.port_range = port_range
        if max_message_bytes < 1 << 16:
            raise ValueError(f"max_message_bytes must be at least 65536, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        modes(sharing)  # raises on an unknown level
        self.sharing = sharing
        self.table_options.setdefault("sharing", sharing)  # tables follow the run unless told otherwise
        if cancel_grace <= 0:
            raise ValueError(f"cancel_grace must be positive, got {cancel_grace}")
        self.cancel_grace = cancel_grace
        if max_worker_restarts is not None and max_worker_restarts < 0:
            raise ValueError(f"max_worker_restarts must be >= 0 or None, got {max_worker_restarts}")
        self.max_worker_restarts = max_worker_restarts
        self.attach = attach
        self.working_dir = os.path.abspath(working_dir) if working_dir else None
        self.remote_monitoring_radio = remote_monitoring_radio or PrivateFilesystemRadio()
        self.progress = progress
        self.task_board = TaskBoard()
        self._progress: Optional[Progress] = None

        self._ids = itertools.count()
        self._dispatcher: Optional[Dispatcher] = None
        self._runtime: Optional[PilotRuntime] = None
        self._attached_session: Optional[str] = None
        self._hygiene: Optional[ClientHygiene] = None
        self._ledger = TableLedger(label)
        self._capacities: Dict[str, HostCapacity] = {}
        self._shutdown_lock = threading.Lock()
        self._is_shutdown = False
        self.timings: Dict[str, float] = {}

    # -- lifecycle ------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """Where this executor keeps every Radical Pilot artifact."""
        return Path(self.run_dir) / self.label

    @property
    def session_id(self) -> Optional[str]:
        if self._runtime is None:
            return self._attached_session
        return self._runtime.session_id

    @property
    def is_local(self) -> bool:
        """Whether every pilot runs on this machine."""
        return all(p.is_local for p in self.pilots)

    def pools_of(self, pilot: PilotSpec) -> List[WorkerPool]:
        """The pools that live in ``pilot``."""
        first = self.pilots[0].name
        return [p for p in self.pools if (p.pilot or first) == pilot.name]

    @property  # type: ignore[override]
    def run_dir(self) -> str:
        return self._run_dir

    @run_dir.setter
    def run_dir(self, value: str) -> None:
        self._run_dir = value
        self._run_dir_set = getattr(self, "_run_dir_set", None) is not None  # False for ParslExecutor's default

    def pilot_descriptions(self) -> Dict[str, Dict[str, Any]]:
        """The ``PilotDescription`` keys ``start()`` will submit, by pilot name; submits nothing.

        Before ``parsl.load`` the run directory is not known yet (Parsl numbers
        it at load): the sandbox reads ``<run_dir>/<label>/sandbox`` then,
        and the path the run uses once loaded.
        """
        sandbox = str(self.base_dir / "sandbox") if self._run_dir_set else f"<run_dir>/{self.label}/sandbox"
        return {spec.name: pilot_description(spec, self.pools_of(spec), sandbox) for spec in self.pilots}

    def start(self) -> None:
        """Start session, pilot, master and workers; return when every rank is ready."""
        t0 = time.monotonic()
        if self.attach:
            self._attach(t0)
            return
        rp_config.check_radical_version()
        shortfall = missing_local_gpus(p for spec in self.pilots if spec.is_local for p in self.pools_of(spec))
        if shortfall:
            raise StartupError(self, shortfall)
        self._run_dir_set = True  # whoever starts it has set run_dir (Parsl's DFK, parsl-rcylon up)
        descriptions = self.pilot_descriptions()  # a pool that cannot be placed fails here, before any job
        make_dir(self.base_dir, self.sharing)
        self.data_dir = self.data_dir or str(self.base_dir / "data")
        make_dir(self.data_dir, self.sharing)
        self._remove_leftovers()
        self._runtime = PilotRuntime(self.label, self.pilots, {p.name: self.pools_of(p) for p in self.pilots},
                                     self.base_dir, self.heartbeat_period, self.heartbeat_threshold, self.timings)
        self._runtime.prepare()
        bind = _bind_address(self.address, self.is_local)
        advertised = self.address or ("127.0.0.1" if self.is_local else _this_host())
        self._dispatcher = Dispatcher(self.base_dir, bind, advertised, heartbeat_period=self.heartbeat_period,
                                      rank_timeout=self.rank_timeout, cancel_grace=self.cancel_grace,
                                      encrypted=self.encrypted, port_range=self.port_range,
                                      max_message_bytes=self.max_message_bytes,
                                      max_worker_restarts=self.max_worker_restarts)
        self._dispatcher.on_result = self._ledger.record
        self._dispatcher.on_start = self.task_board.started
        self._dispatcher.start()
        self._hygiene = ClientHygiene(self.label, self.base_dir, self.timings)
        self._hygiene.register_atexit(self.shutdown)
        try:
            with self._hygiene.watch_forks():
                self._runtime.open_session(started=t0)
            self._hygiene.start_guard(self._runtime.session_id)
            self._runtime.launch(self._dispatcher, descriptions, max(1.0, self.start_timeout - (time.monotonic() - t0)))
        except BaseException as exc:
            reason = self._runtime.explain(exc)
            logger.error("%s: start failed: %s", self.label, reason)
            self.shutdown()
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise StartupError(self, reason) from exc
        self.timings["start"] = time.monotonic() - t0
        if self.progress:
            self._progress = Progress([self]).start()
        logger.info("%s: ready in %.1f s (%s)", self.label, self.timings["start"],
                    ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))

    def _attach(self, t0: float) -> None:
        from .runtime.attach import AttachedPilot

        pilot = AttachedPilot.connect(self.attach)
        pilot.on_result = self._ledger.record
        self.pools = pilot.info.worker_pools()
        self.data_dir = self.data_dir or pilot.info.data_dir
        self._attached_session = pilot.session_id
        self._dispatcher = pilot  # type: ignore[assignment]  # the same submit/stats/stop
        self.timings["start"] = time.monotonic() - t0
        if self.progress:
            self._progress = Progress([self]).start()
        logger.info("%s: attached to the pilot at %s in %.2f s", self.label, self.attach, self.timings["start"])

    def submit_packed(self, task: Dict[str, Any], resource_specification: Dict[str, Any],
                      payload: bytes) -> Future:
        """Run an already packed call (``parsl-rcylon up``'s server, for attached clients).

        ``task`` holds ``uid``, ``name``, ``cylon``, ``options``, ``walltime``
        and ``data_dir``; the resource spec is validated as in ``submit()``.
        """
        self._check_running()
        spec = self.validate_resource_specification(resource_specification, cylon=task["cylon"],
                                                    name=task["name"])
        return self._dispatch(task, spec, payload)

    def _check_running(self) -> None:
        if self._dispatcher is None or self._is_shutdown:
            raise ExecutorShutdown(self, "submit() on an executor that is not running")

    def _dispatch(self, task: Dict[str, Any], spec: ResourceSpec, payload: bytes) -> Future:
        # One header for calls packed here and for attached clients' calls:
        # a walltime in the resource spec wins over the app's option.
        header = dict(task, scratch_dir=str(self.base_dir / "scratch"),
                      walltime=spec.walltime or task.get("walltime"))
        return self._dispatcher.submit(task["uid"], spec, header, payload)

    def _remove_leftovers(self) -> None:
        # Writers killed in an earlier run (a rank SIGKILLed mid-write, a node
        # lost) leave temporary files and uncommitted tables; only certainly
        # dead writers' leftovers go (see tableio.cleanup).
        from .tableio.cleanup import remove_stale_scratch, remove_unfinished

        report = remove_unfinished(self.data_dir)
        report.extend(remove_stale_scratch(str(self.base_dir / "scratch")))
        if report.removed:
            logger.warning("%s: removed %d leftover(s) of writers that died in an earlier run: %s", self.label,
                           len(report.removed), report.removed[:10])

    # -- tasks ------------------------------------------------------------------------

    def validate_resource_specification(self, spec: Dict[str, Any], cylon: bool = True,
                                        name: str = "task") -> ResourceSpec:
        """Parse ``spec`` and check that some pool of this executor can ever hold it.

        A pool's ranks are taken to sit ``ranks_per_node`` to a host (all on
        one host for a local pilot, or when RP decides); once the workers
        run, the dispatcher checks against the hosts their ranks report.
        """
        parsed = ResourceSpec.from_mapping(spec, where=name)
        if not cylon and parsed.ranks > 1:
            raise InvalidResourceSpecification(
                {"ranks"}, f"{name}: a plain python/bash app runs on one rank; use @cylon_app for "
                           f"{parsed.ranks} ranks")
        pools = {p.name: p for p in self.pools}
        if parsed.pool is not None and parsed.pool not in pools:
            raise InvalidResourceSpecification({"pool"}, f"{name}: no pool named {parsed.pool!r}; "
                                                         f"pools are {_describe(self.pools)}")
        cpu_pool = any(not p.gpus_per_rank for p in self.pools)
        accepting = [p for p in self.pools if pool_accepts(parsed, p.name, self._host_layout(p), p.gpus_per_rank,
                                                           p.cores_per_rank, cpu_pool)]
        if not accepting:
            keys = {"ranks"} | {k for k, v in (("gpus_per_rank", parsed.gpus_per_rank > 0),
                                               ("cores_per_rank", parsed.cores_per_rank > 1),
                                               ("num_nodes", parsed.num_nodes is not None)) if v}
            nodes = (f" on {parsed.num_nodes} host(s), {parsed.ranks_per_node} on each"
                     if parsed.num_nodes is not None else "")
            raise InvalidResourceSpecification(
                keys, f"{name} needs {parsed.ranks} rank(s){nodes} with {parsed.gpus_per_rank} GPU(s) and "
                      f"{parsed.cores_per_rank} core(s) each, a rank's cores on one host; no pool of executor "
                      f"{self.label!r} can hold it: {_describe(self.pools)}"
                      + ("; a local pilot's ranks are all on one host" if nodes and self.is_local else ""))
        problem = capacity_problem(parsed, [(p.name, self._host_layout(p), self._capacity(p)) for p in accepting])
        if problem:
            raise InvalidResourceSpecification(problem[0], f"{name}: {problem[1]}")
        return parsed

    def _capacity(self, pool: WorkerPool) -> HostCapacity:
        pilot = next(s for s in self.pilots if s.name == (pool.pilot or self.pilots[0].name))
        if pilot.name not in self._capacities:
            self._capacities[pilot.name] = host_capacity(pilot, getattr(self, "run_dir", None) or os.getcwd())
        return self._capacities[pilot.name]

    def _host_layout(self, pool: WorkerPool) -> List[int]:
        pilot = pool.pilot or self.pilots[0].name
        local = next(s for s in self.pilots if s.name == pilot).is_local
        return host_layout(pool.ranks, None if local else pool.ranks_per_node)

    def submit(self, func: Callable, resource_specification: Dict[str, Any], *args: Any, **kwargs: Any) -> Future:
        """Send one app call to the workers; the future resolves to rank 0's value."""
        self._check_running()
        cylon = bool(getattr(app_function(func), "__rcylon_cylon__", False))
        name = getattr(func, "__name__", "task")
        spec = self.validate_resource_specification(resource_specification, cylon=cylon, name=name)
        uid = f"{self.label}.task.{next(self._ids):06d}"
        kwargs.pop("parsl_resource_specification", None)
        options = dict(self.table_options, **getattr(func, "__rcylon_options__", {}))
        task = {
            "uid": uid,
            "name": name,
            "cylon": cylon,
            "data_dir": self.data_dir,
            "options": options,
            "walltime": options.get("walltime"),
            "cwd": task_working_dir(self.working_dir),
        }
        fut = self._dispatch(task, spec, pack_apply_message(func, args, kwargs))
        fut.parsl_executor_task_id = uid  # type: ignore[attr-defined]
        self.task_board.submitted(uid, name, fut)
        return fut

    def table_summary(self) -> Dict[str, Dict[str, int]]:
        """Per app: tables, rows and bytes written so far."""
        return self._ledger.summary()

    def release_tables(self) -> None:
        """Log bytes written per stage; delete the tables of apps that asked not to keep them.

        Runs at shutdown; call it earlier to free space once later stages have read them.
        """
        self._ledger.release()

    def status(self) -> Dict[str, Dict[str, int]]:
        """Per pool: ranks, busy and idle ranks, queued and running tasks."""
        return self._dispatcher.stats() if self._dispatcher else {}

    def monitor_resources(self) -> bool:
        """Parsl's resource monitoring samples each task's process (rank 0's for a cylon_app)."""
        return True

    # -- shutdown ----------------------------------------------------------------------

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
        if self._runtime is not None:
            self._runtime.stop_watching()
        if self._dispatcher is not None:
            self._dispatcher.stop()
        self.timings["shutdown_ranks"] = time.monotonic() - t0
        self.release_tables()
        sid = self.session_id
        if self._runtime is not None:
            self._runtime.close()
        if self._hygiene is not None:
            self._hygiene.close(sid)
        self.timings["shutdown"] = time.monotonic() - t0
        logger.info("%s: shut down in %.1f s", self.label, self.timings["shutdown"])
        super().shutdown()


def _describe(pools: Sequence[WorkerPool]) -> str:
    return ", ".join(f"{p.name} ({p.workers} x {p.ranks} ranks, {p.gpus_per_rank} GPU/rank, "
                     f"{p.cores_per_rank} core(s)/rank)" for p in pools)


def _bind_address(address: Optional[str], local: bool) -> str:
    # Listen only where peers are told to connect: address= names one interface (its
    # host name resolves to it); with no address a batch pilot's ranks may come from any.
    if local and not address:
        return "127.0.0.1"
    if not address:
        return "*"
    import socket

    return socket.gethostbyname(address)


def _this_host() -> str:
    import socket

    return socket.getfqdn()


__all__ = ["RadicalCylonExecutor"]
