"""RadicalCylonExecutor: Parsl tasks as MPI tasks on warm Radical Pilot workers."""
from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import psutil
import typeguard
from parsl.executors.base import ParslExecutor
from parsl.executors.errors import InvalidResourceSpecification
from parsl.serialize import pack_apply_message
from parsl.utils import RepresentationMixin

from .errors import ExecutorShutdown, StartupError
from .resources import PilotSpec, ResourceSpec, WorkerPool, pool_accepts
from .runtime import config as rp_config
from .runtime import protocol
from .runtime.dispatcher import Dispatcher
from .runtime.guard import process_spec
from .runtime.pilot import (
    PoolPlacement,
    local_overrides,
    pilot_description,
    place_pools,
    resource_config,
    worker_description,
)
from .runtime.processes import end_processes, end_session

logger = logging.getLogger(__name__)

_FINAL = ("DONE", "FAILED", "CANCELED")


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
        self.table_options = dict(table_options or {})

        self._ids = itertools.count()
        self._dispatcher: Optional[Dispatcher] = None
        self._session = None
        self._pmgr = None
        self._tmgr = None
        self._pilots: Dict[str, Any] = {}   # PilotSpec name -> rp.Pilot
        self._workers: Dict[str, Any] = {}  # worker uid -> rp.Task
        self._masters: Dict[str, Any] = {}  # master uid -> rp.Task
        self._startup_failure: Optional[str] = None
        self._client_forks: List[Any] = []  # psutil.Process: RP's forks of this client
        self._guard: Optional[subprocess.Popen] = None
        self._shutdown_lock = threading.Lock()
        self._is_shutdown = False
        self._owner_pid = os.getpid()
        self.timings: Dict[str, float] = {}
        self.tables: Dict[str, List[Any]] = {}  # app name -> TableRefs its tasks produced
        self.tasks_submitted = 0

    # -- lifecycle ------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """Where this executor keeps every Radical Pilot artifact."""
        return Path(self.run_dir) / self.label

    @property
    def session_id(self) -> Optional[str]:
        return self._session.uid if self._session is not None else None

    @property
    def is_local(self) -> bool:
        """Whether every pilot runs on this machine."""
        return all(p.is_local for p in self.pilots)

    def pools_of(self, pilot: PilotSpec) -> List[WorkerPool]:
        """The pools that live in ``pilot``."""
        first = self.pilots[0].name
        return [p for p in self.pools if (p.pilot or first) == pilot.name]

    def pilot_descriptions(self) -> Dict[str, Dict[str, Any]]:
        """The ``PilotDescription`` keys ``start()`` will submit, by pilot name; submits nothing."""
        return {spec.name: pilot_description(spec, self.pools_of(spec), str(self.base_dir / "sandbox"))
                for spec in self.pilots}

    def start(self) -> None:
        """Start session, pilot, master and workers; return when every rank is ready."""
        t0 = time.monotonic()
        rp_config.check_radical_version()
        self._check_local_gpus()
        descriptions = self.pilot_descriptions()  # a pool that cannot be placed fails here, before any job
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.data_dir or str(self.base_dir / "data")
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        rp_config.prepare_environment(self.base_dir, self._resource_overrides())
        import radical.pilot as rp

        bind = "127.0.0.1" if self.is_local else "*"
        advertised = self.address or ("127.0.0.1" if self.is_local else _this_host())
        self._dispatcher = Dispatcher(bind, advertised, heartbeat_period=self.heartbeat_period,
                                      rank_timeout=self.rank_timeout)
        self._dispatcher.on_result = self._record_table
        self._dispatcher.start()
        # RP leaves non-daemon threads running, and the interpreter joins those
        # before it runs atexit handlers (Parsl's cleanup among them): a script
        # that ends without shutting Parsl down would hang forever.  This hook
        # runs before that join, as concurrent.futures' own does.
        self._owner_pid = os.getpid()
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(self._shutdown_at_exit)
        try:
            launcher_home = rp_config.home_for_launcher(self.base_dir) if self.is_local else nullcontext()
            children = {c.pid for c in psutil.Process().children()}
            with launcher_home:
                self._session = rp.Session(cfg={"base": str(self.base_dir)})
                self.timings["session"] = time.monotonic() - t0
                t = time.monotonic()
                self._pmgr = rp.PilotManager(session=self._session)
                self._tmgr = rp.TaskManager(session=self._session)
                self.timings["managers"] = time.monotonic() - t
            self._client_forks = _new_forks(children)
            self._guard = self._start_guard()
            self._pmgr.register_callback(self._pilot_state_cb)
            self._tmgr.register_callback(self._task_state_cb)
            submitted = self._pmgr.submit_pilots([rp.PilotDescription(descriptions[p.name]) for p in self.pilots])
            self._pilots = {spec.name: pilot for spec, pilot in zip(self.pilots, submitted, strict=True)}
            self._tmgr.add_pilots(submitted)
            self._submit_masters_and_workers(rp)
            logger.info("%s: session %s, pilot(s) %s submitted; waiting for %d worker(s)", self.label,
                        self._session.uid, [p.uid for p in submitted], len(self._workers))
            t1 = time.monotonic()
            self._pmgr.wait_pilots(uids=[p.uid for p in submitted], state=[rp.PMGR_ACTIVE] + list(rp.FINAL),
                                   timeout=self.start_timeout)
            self.timings["pilot"] = time.monotonic() - t1
            for pilot in submitted:
                if self._startup_failure is None and pilot.state != rp.PMGR_ACTIVE:
                    self._startup_failure = f"pilot {pilot.uid} is {pilot.state}" + \
                        _tail_files(_pilot_logs(pilot))
            t2 = time.monotonic()
            left = max(1.0, self.start_timeout - (t2 - t0))
            self._dispatcher.wait_ready(left, lambda: self._startup_failure)
            self.timings["workers"] = time.monotonic() - t2
        except BaseException as exc:
            reason = str(exc)
            if isinstance(exc, TimeoutError):
                reason += self._runtime_task_states()
            if self._pilots and "pilot" not in reason:
                reason += "".join(_tail_files(_pilot_logs(p)) for p in self._pilots.values())
            logger.error("%s: start failed: %s", self.label, reason)
            self.shutdown()
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise StartupError(self, reason) from exc
        self.timings["start"] = time.monotonic() - t0
        logger.info("%s: ready in %.1f s (%s)", self.label, self.timings["start"],
                    ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))

    def _start_guard(self) -> subprocess.Popen:
        # See runtime/guard.py: RP's per-session proxy fork of this process
        # outlives a killed client unless something outside the client ends it.
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
        args = [sys.executable, "-m", "parsl_rcylon.runtime.guard", self._session.uid,
                process_spec(psutil.Process()), *(process_spec(p) for p in self._client_forks)]
        with open(self.base_dir / "guard.log", "ab") as log:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=str(self.base_dir), env=env, start_new_session=True)

    def _runtime_task_states(self) -> str:
        # Says where a start stalled: tasks left in AGENT_SCHEDULING mean the
        # pilot's scheduler never placed them, not that a worker crashed.
        try:
            states = {uid: task.state for uid, task in {**self._masters, **self._workers}.items()}
        except Exception:  # a half-built executor: nothing more to say
            return ""
        return "; Radical Pilot task states: " + ", ".join(f"{uid} {state}" for uid, state in states.items()) \
            if states else ""

    def _resource_overrides(self) -> Dict[str, Any]:
        overrides: Dict[str, Any] = {}
        for spec in self.pilots:
            if spec.is_local:
                need = local_overrides(self.pools_of(spec))
                have = overrides.get(spec.resource, {})
                for key in ("cores_per_node", "gpus_per_node"):
                    need[key] = max(need[key], have.get(key, 0))
                overrides[spec.resource] = need
            elif spec.resource_config:
                overrides[spec.resource] = dict(spec.resource_config)
        return overrides

    def _check_local_gpus(self) -> None:
        wanted = sum(p.gpus_per_rank * p.ranks * p.workers for spec in self.pilots if spec.is_local
                     for p in self.pools_of(spec) if not p.pretend_gpus)
        if wanted:
            found = count_local_gpus()
            if found < wanted:
                raise StartupError(self, f"the pools ask for {wanted} GPU(s) on this machine but it has {found}; "
                                         "declare WorkerPool(..., pretend_gpus=True) to run without GPUs")

    def _runtime_environment(self) -> Dict[str, str]:
        env = {
            protocol.ENV_ADDRESS: self._dispatcher.address,
            protocol.ENV_HEARTBEAT: str(self.heartbeat_period),
            protocol.ENV_THRESHOLD: str(self.heartbeat_threshold),
            "PYTHONUNBUFFERED": "1",
        }
        # The workers import the user's modules the same way the client does:
        # its working directory and every sys.path entry outside the interpreter.
        path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
        for entry in [os.getcwd()] + sys.path:
            real = os.path.realpath(entry or os.getcwd())
            if os.path.isdir(real) and real not in path and not any(
                    real == pre or real.startswith(pre + os.sep) for pre in prefixes):
                path.append(real)
        env["PYTHONPATH"] = os.pathsep.join(path)
        return env

    def _submit_masters_and_workers(self, rp) -> None:
        from .runtime import master, worker

        env = self._runtime_environment()
        descriptions = []
        for spec in self.pilots:
            pilot = self._pilots[spec.name]
            md = rp.TaskDescription({
                "uid": f"{self.label}.{spec.name}.master",
                "mode": rp.RAPTOR_MASTER,
                "raptor_file": master.__file__,
                "raptor_class": "CylonMaster",
                "ranks": 1,
                "environment": dict(env),
            })
            master_task = self._tmgr.submit_raptors(md, pilot_id=pilot.uid)[0]
            self._masters[master_task.uid] = master_task
            pools = self.pools_of(spec)
            cfg = {} if spec.is_local else resource_config(spec)
            placements = [PoolPlacement(p.name, p.ranks, 1, p.workers) for p in pools] if spec.is_local \
                else place_pools(spec, pools, cfg)
            gpu_offset = 0
            for pool, placement in zip(pools, placements, strict=True):
                for i in range(pool.workers):
                    uid = f"{self.label}.{pool.name}.worker.{i:03d}"
                    wenv = _pool_environment(env, pool)
                    if pool.gpus_per_rank:
                        wenv[protocol.ENV_GPUS_PER_RANK] = str(pool.gpus_per_rank)
                        wenv[protocol.ENV_GPU_OFFSET] = str(gpu_offset)
                        wenv[protocol.ENV_GPU_SOURCE] = "rp" if not spec.is_local else "local"
                        gpu_offset += pool.gpus_per_rank * pool.ranks if spec.is_local else 0
                    elif spec.is_local:
                        wenv["CUDA_VISIBLE_DEVICES"] = ""  # CPU pools never grab a GPU by accident
                    wd = {
                        "uid": uid,
                        "mode": rp.RAPTOR_WORKER,
                        "raptor_id": master_task.uid,
                        "raptor_file": worker.__file__,
                        "raptor_class": "CylonWorker",
                        "pilot": pilot.uid,
                        "environment": wenv,
                        "pre_exec": list(pool.pre_exec),
                        **worker_description(pool, placement, spec.is_local),
                    }
                    descriptions.append(rp.TaskDescription(wd))
                    self._dispatcher.expect_worker(uid, pool.ranks, pool.name, pool.gpus_per_rank)
        for task in self._tmgr.submit_workers(descriptions):
            self._workers[task.uid] = task

    def _pilot_state_cb(self, pilot, state) -> None:
        if state in _FINAL and not self._is_shutdown:
            reason = f"pilot {pilot.uid} is {state}" + _tail_files(_pilot_logs(pilot))
            self._startup_failure = self._startup_failure or reason
            for uid, task in list(self._workers.items()):
                if task.pilot == pilot.uid:
                    self._dispatcher.worker_failed(uid, reason)

    def _task_state_cb(self, task, state) -> None:
        if task.uid not in self._workers and task.uid not in self._masters:
            return
        logger.debug("%s: %s is %s", self.label, task.uid, state)
        if state not in _FINAL or self._is_shutdown:
            return
        reason = f"{task.uid} is {state}" + _tail_files(_task_logs(task))
        if task.uid in self._workers:
            self._dispatcher.worker_failed(task.uid, reason)
        else:
            for uid, worker in list(self._workers.items()):
                if worker.description.get("raptor_id") == task.uid:
                    self._dispatcher.worker_failed(uid, f"RAPTOR master ended: {reason}")
        self._startup_failure = self._startup_failure or reason

    # -- tasks ------------------------------------------------------------------------

    def validate_resource_specification(self, spec: Dict[str, Any], cylon: bool = True,
                                        name: str = "task") -> ResourceSpec:
        """Parse ``spec`` and check that some pool of this executor can ever hold it."""
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
        fitting = [p for p in self.pools if pool_accepts(parsed, p.name, p.ranks, p.gpus_per_rank, cpu_pool)]
        if not fitting:
            keys = {"ranks"} if parsed.gpus_per_rank == 0 else {"ranks", "gpus_per_rank"}
            raise InvalidResourceSpecification(
                keys, f"{name} needs {parsed.ranks} rank(s) with {parsed.gpus_per_rank} GPU(s) each; "
                      f"no pool of executor {self.label!r} can hold it: {_describe(self.pools)}")
        return parsed

    def submit(self, func: Callable, resource_specification: Dict[str, Any], *args: Any, **kwargs: Any) -> Future:
        """Send one app call to the workers; the future resolves to rank 0's value."""
        if self._dispatcher is None or self._is_shutdown:
            raise ExecutorShutdown(self, "submit() on an executor that is not running")
        cylon = bool(getattr(func, "__rcylon_cylon__", False))
        name = getattr(func, "__name__", "task")
        spec = self.validate_resource_specification(resource_specification, cylon=cylon, name=name)
        uid = f"{self.label}.task.{next(self._ids):06d}"
        self.tasks_submitted += 1
        kwargs.pop("parsl_resource_specification", None)
        message = {
            "uid": uid,
            "name": name,
            "cylon": cylon,
            "payload": pack_apply_message(func, args, kwargs),
            "data_dir": self.data_dir,
            "scratch_dir": str(self.base_dir / "scratch"),
            "options": dict(self.table_options, **getattr(func, "__rcylon_options__", {})),
        }
        fut = self._dispatcher.submit(uid, spec, message)
        fut.parsl_executor_task_id = uid  # type: ignore[attr-defined]
        return fut

    def _record_table(self, name: str, value: Any) -> None:
        if type(value).__name__ != "TableRef":  # avoid importing pyarrow for non-table results
            return
        from .table import stage_summary

        self.tables.setdefault(name, []).append(value)
        logger.info("%s: %s wrote %s", self.label, name, stage_summary([value]))

    def table_summary(self) -> Dict[str, Dict[str, int]]:
        """Per app: tables, rows and bytes written so far."""
        return {name: {"tables": len(refs), "rows": sum(r.num_rows for r in refs),
                       "bytes": sum(r.nbytes for r in refs)} for name, refs in self.tables.items()}

    def release_tables(self) -> None:
        """Log bytes written per stage; delete the tables of apps that asked not to keep them.

        Runs at shutdown; call it earlier to free space once later stages have read them.
        """
        for name, refs in self.tables.items():
            stats = self.table_summary()[name]
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

    def status(self) -> Dict[str, Dict[str, int]]:
        """Per pool: ranks, busy and idle ranks, queued and running tasks."""
        return self._dispatcher.stats() if self._dispatcher else {}

    def monitor_resources(self) -> bool:
        return False

    # -- shutdown ----------------------------------------------------------------------

    def _shutdown_at_exit(self) -> None:
        # RP forks helper processes; their exit runs this hook too, and a
        # forked copy must never touch the parent's sockets or pilot.
        if os.getpid() == self._owner_pid and not self._is_shutdown:
            logger.info("%s: interpreter exiting; shutting the executor down", self.label)
            self.shutdown()

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
        if self._dispatcher is not None:
            self._dispatcher.stop()
        self.timings["shutdown_ranks"] = time.monotonic() - t0
        self.release_tables()
        sid = self.session_id
        closers = (("tmgr", self._tmgr, {}), ("pmgr", self._pmgr, {"terminate": True}),
                   ("session", self._session, {"download": False}))
        for what, obj, kwargs in closers:
            if obj is None:
                continue
            t = time.monotonic()
            try:
                obj.close(**kwargs)
            except Exception:
                logger.exception("%s: closing the %s failed", self.label, what)
            self.timings[f"shutdown_{what}"] = time.monotonic() - t
        self._stop_guard()
        if sid:
            t = time.monotonic()
            ended = end_processes([p for p in self._client_forks if p.is_running()], grace=1.0)
            ended += end_session(sid)
            self.timings["shutdown_sweep"] = time.monotonic() - t
            if ended:
                logger.warning("%s: ended %d leftover process(es) of session %s: %s",
                               self.label, len(ended), sid, ended)
        self.timings["shutdown"] = time.monotonic() - t0
        logger.info("%s: shut down in %.1f s", self.label, self.timings["shutdown"])
        super().shutdown()

    def _stop_guard(self) -> None:
        if self._guard is None:
            return
        self._guard.terminate()
        try:
            self._guard.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._guard.kill()
            self._guard.wait()


def _new_forks(before: set) -> List[Any]:
    """Children of this process not in ``before`` that run this process's own command line: forks."""
    me = psutil.Process()
    found = []
    for child in me.children():
        try:
            if child.pid not in before and child.cmdline() == me.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    return found


def _pool_environment(env: Dict[str, str], pool: WorkerPool) -> Dict[str, str]:
    out = dict(env, **pool.environment)
    if "PYTHONPATH" in pool.environment and env.get("PYTHONPATH"):
        out["PYTHONPATH"] = os.pathsep.join([pool.environment["PYTHONPATH"], env["PYTHONPATH"]])
    out[protocol.ENV_POOL] = pool.name
    return out


def _describe(pools: Sequence[WorkerPool]) -> str:
    return ", ".join(f"{p.name} ({p.workers} x {p.ranks} ranks, {p.gpus_per_rank} GPU/rank)" for p in pools)


def _this_host() -> str:
    import socket

    return socket.getfqdn()


def _sandbox_path(thing) -> Optional[Path]:
    try:
        url = thing.sandbox if hasattr(thing, "sandbox") else None
    except Exception:
        return None
    if not url:
        return None
    path = str(url).replace("file://localhost", "").replace("file://", "")
    return Path(path)


def _pilot_logs(pilot) -> List[Path]:
    sandbox = _sandbox_path(pilot)
    if sandbox is None:
        return []
    return [sandbox / name for name in ("bootstrap_0.err", "agent_0.err", "bootstrap_0.out")]


def count_local_gpus() -> int:
    """NVIDIA GPUs on this machine (the driver's /proc entries, else nvidia-smi)."""
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return len(list(proc.iterdir()))
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 0


def _task_logs(task) -> List[Path]:
    sandbox = _sandbox_path(task)
    if sandbox is None:
        return []
    return [sandbox / f"{task.uid}.err", sandbox / f"{task.uid}.out"]


def _tail_files(paths: Sequence[Path], limit: int = 2000) -> str:
    parts = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")[-limit:].strip()
        except OSError:
            continue
        if text:
            parts.append(f"\n--- {path} (last {limit} chars) ---\n{text}")
    return "".join(parts)


__all__ = ["RadicalCylonExecutor"]
