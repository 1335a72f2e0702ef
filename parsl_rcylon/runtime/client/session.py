"""The Radical Pilot side of one executor: session, managers, pilots, RAPTOR masters and workers.

:class:`PilotRuntime` opens the session and its pilot and task managers,
submits the pilots, one RAPTOR master per pilot and the MPI workers of every
pool, turns RP's state callbacks into what the dispatcher must know (a
worker, its master or its pilot ended), explains a failed start with the
tails of the logs RP left, and closes everything in the order that takes
seconds rather than minutes.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ...resources import PilotSpec, WorkerPool
from .. import rp_adjust, startup
from ..layout import launcher_logs, pilot_logs, task_logs
from ..wire import protocol
from ..wire.channel import ENV_CHANNEL, ENV_ENCRYPTED
from . import config as rp_config
from . import slurmjobs
from .dispatcher import Dispatcher
from .pilot import PoolPlacement, local_overrides, place_pools, resource_config, worker_description

logger = logging.getLogger(__name__)

_FINAL = ("DONE", "FAILED", "CANCELED")


class PilotRuntime:
    """One Radical Pilot session with its pilots, masters and workers.

    Parameters
    ----------
    label : str
        The executor's label: prefix of every task uid, and of log messages.
    pilots : sequence of PilotSpec
        The allocations, in order.
    pools : mapping of str to list of WorkerPool
        The pools of each pilot, by pilot name.
    base_dir : Path
        Where every RP artifact of the run goes.
    heartbeat_period, heartbeat_threshold : float
        Liveness rules passed to the ranks and masters.
    timings : dict
        Where the durations of start-up and close steps are recorded.
    """

    def __init__(self, label: str, pilots: Sequence[PilotSpec], pools: Mapping[str, List[WorkerPool]],
                 base_dir: Path, heartbeat_period: float, heartbeat_threshold: float,
                 timings: Dict[str, float]) -> None:
        self.label = label
        self.pilots = list(pilots)
        self.pools = pools
        self.base_dir = base_dir
        self.dispatcher: Optional[Dispatcher] = None
        self.heartbeat_period = heartbeat_period
        self.heartbeat_threshold = heartbeat_threshold
        self.timings = timings
        self._session = None
        self._sid: Optional[str] = None
        self._pmgr = None
        self._tmgr = None
        self._keys_held = False
        self._batch_env: Dict[str, str] = {}  # what sbatch reads, for batch pilots (prepare())
        self._pilots: Dict[str, Any] = {}   # PilotSpec name -> rp.Pilot
        self._workers: Dict[str, Any] = {}  # worker uid -> rp.Task
        self._masters: Dict[str, Any] = {}  # master uid -> rp.Task
        self._descriptions: Dict[str, Dict[str, Any]] = {}  # worker uid -> its task description keys
        self._failure: Optional[str] = None
        self._closing = False
        self._ended: set = set()  # uids of pilots known to have ended
        self._slurm_sandboxes: Dict[str, str] = {}  # Slurm pilots' sandboxes, by PilotSpec name
        self._slurm_watch: Optional[slurmjobs.SlurmJobWatch] = None

    @property
    def is_local(self) -> bool:
        return all(p.is_local for p in self.pilots)

    @property
    def session_id(self) -> Optional[str]:
        return self._sid

    def choose_session_id(self) -> str:
        """The id the session will have, chosen before it opens (the guard needs it from the first fork on)."""
        import radical.utils as ru

        if self._sid is None:
            # As RP names a session itself (radical.pilot.session), so nothing downstream tells them apart.
            base = os.environ.get("RADICAL_PILOT_SID_BASE")
            self._sid = ru.generate_id(base, mode=ru.SIMPLE) if base else \
                ru.generate_id("rp.session", mode=ru.ID_PRIVATE)
        return self._sid

    # -- start ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Write the RP configuration under ``base_dir`` and point RP at it and at this interpreter."""
        overrides = self._resource_overrides()
        env = rp_config.prepare_environment(self.base_dir, overrides)
        rp_adjust.write_agent_config(Path(env["RADICAL_CONFIG_USER_DIR"]))
        os.environ.update(rp_adjust.client_environment())
        batch = [resource_config(spec) for spec in self.pilots if not spec.is_local]
        rp_config.advertise_interface(batch)
        self._batch_env = rp_config.batch_environment(batch)

    def open_session(self, started: float) -> None:
        """Open the session and its pilot and task managers.

        ``timings["session"]`` counts from ``started`` (``time.monotonic()``
        when the start began), so it includes the preparation before.
        """
        import radical.pilot as rp

        if not rp_adjust.stock() and not self._keys_held:
            rp_adjust.hold_keys(self.base_dir)  # CurveZMQ keys for RP's sockets, until close()
            self._keys_held = True
        # PSI/J writes every pilot's job script under $HOME (sbatch scripts too): keep them in the run.
        with rp_config.home_for_launcher(self.base_dir), rp_config.environment(self._batch_env), \
                rp_adjust.adjusted(self.base_dir, self.is_local):
            self._session = rp.Session(uid=self.choose_session_id(), cfg={"base": str(self.base_dir)})
            self.timings["session"] = time.monotonic() - started
            t = time.monotonic()
            self._pmgr = rp.PilotManager(session=self._session)
            self.timings["managers"] = time.monotonic() - t

    def launch(self, dispatcher: Dispatcher, descriptions: Mapping[str, Dict[str, Any]], timeout: float) -> None:
        """Submit pilots, masters and workers; return once every worker rank is ready.

        ``dispatcher`` is told about every worker before it starts, and about
        every one that ends; ``descriptions`` are the ``PilotDescription``
        keys by pilot name; ``timeout`` bounds the whole wait.
        """
        import radical.pilot as rp

        t0 = time.monotonic()
        self.dispatcher = dispatcher
        dispatcher.on_replace = self.replace_worker
        timeline = startup.PilotTimeline()
        self._pmgr.register_callback(timeline.pilot_cb)
        self._pmgr.register_callback(self._pilot_state_cb)
        timeline.submitted = time.time()
        t1 = time.monotonic()
        submitted = self._pmgr.submit_pilots([rp.PilotDescription(descriptions[p.name]) for p in self.pilots])
        self._pilots = {spec.name: pilot for spec, pilot in zip(self.pilots, submitted, strict=True)}
        self._watch_slurm_jobs(descriptions)
        # The task manager starts while the pilots boot: its components need
        # nothing from them, and the pilots' seconds hide its own.
        t = time.monotonic()
        with rp_adjust.adjusted(self.base_dir, self.is_local):
            self._tmgr = rp.TaskManager(session=self._session)
        self.timings["task_manager"] = time.monotonic() - t  # inside "pilot", not after it
        self._tmgr.register_callback(self._task_state_cb)
        self._tmgr.add_pilots(submitted)
        self._submit_masters_and_workers(rp)
        logger.info("%s: session %s, pilot(s) %s submitted; waiting for %d worker(s)", self.label,
                    self._session.uid, [p.uid for p in submitted], len(self._workers))
        self._pmgr.wait_pilots(uids=[p.uid for p in submitted], state=[rp.PMGR_ACTIVE] + list(rp.FINAL),
                               timeout=timeout)
        self.timings["pilot"] = time.monotonic() - t1
        self.timings.update(timeline.breakdown())
        for pilot in submitted:
            if self._failure is None and pilot.state != rp.PMGR_ACTIVE:
                self._failure = f"pilot {pilot.uid} is {pilot.state}" + self._slurm_view() + self._why_ended(pilot)
        t2 = time.monotonic()
        self.dispatcher.wait_ready(max(1.0, timeout - (t2 - t0)), lambda: self._failure)
        self.timings["workers"] = time.monotonic() - t2

    def explain(self, exc: BaseException) -> str:
        """Why the start failed: ``exc`` with where RP stalled and the tails of the pilots' logs."""
        reason = str(exc)
        if isinstance(exc, TimeoutError):
            reason += self._task_states() + self._slurm_view()
        if self._pilots and "pilot" not in reason:
            reason += "".join(_tail_files(pilot_logs(p)) for p in self._pilots.values())
        return reason

    def _task_states(self) -> str:
        # Says where a start stalled: tasks left in AGENT_SCHEDULING mean the
        # pilot's scheduler never placed them, not that a worker crashed.
        try:
            states = {uid: task.state for uid, task in {**self._masters, **self._workers}.items()}
        except Exception:  # a half-built runtime: nothing more to say
            return ""
        return "; Radical Pilot task states: " + ", ".join(f"{uid} {state}" for uid, state in states.items()) \
            if states else ""

    def _watch_slurm_jobs(self, descriptions: Mapping[str, Dict[str, Any]]) -> None:
        # Slurm says at once that a pilot's job ended (scancel, time limit, a node failed);
        # RP hears it from PSI/J's polling tens of seconds later.
        self._slurm_sandboxes = {
            spec.name: descriptions[spec.name]["sandbox"] for spec in self.pilots
            if not spec.is_local and str(resource_config(spec).get("resource_manager", "")).upper() == "SLURM"}
        if self._slurm_sandboxes and slurmjobs.available():
            self._slurm_watch = slurmjobs.SlurmJobWatch(self._slurm_sandboxes, self._slurm_job_ended).start()

    def _slurm_view(self) -> str:
        return slurmjobs.describe_jobs(self._slurm_sandboxes) if self._slurm_sandboxes else ""

    def _slurm_job_ended(self, name: str, reason: str) -> None:
        pilot = self._pilots.get(name)
        if pilot is not None and not self._closing:
            self._pilot_ended(pilot.uid, _ended_by_slurm(pilot.uid, name, reason))

    def _resource_overrides(self) -> Dict[str, Any]:
        overrides: Dict[str, Any] = {}
        for spec in self.pilots:
            if spec.is_local:
                need = dict(local_overrides(self.pools[spec.name]),
                            **rp_adjust.resource_keys(local=True, base=self.base_dir))
                have = overrides.get(spec.resource, {})
                for key in ("cores_per_node", "gpus_per_node"):
                    need[key] = max(need[key], have.get(key, 0))
                overrides[spec.resource] = need
            elif spec.resource_config:
                config = rp_config.with_mpi_path(dict(spec.resource_config))
                # the agent of a batch pilot runs adjusted too (CurveZMQ on its bridges above all)
                config["pre_bootstrap_0"] = (rp_adjust.pre_bootstrap(local=False, base=self.base_dir)
                                             + list(config.get("pre_bootstrap_0", ())))
                overrides[spec.resource] = config
        return overrides

    def _environment(self) -> Dict[str, str]:
        env = {
            protocol.ENV_ADDRESS: self.dispatcher.address,
            ENV_CHANNEL: self.dispatcher.channel_file,
            ENV_ENCRYPTED: "1" if self.dispatcher.encrypted else "0",
            protocol.ENV_HEARTBEAT: str(self.heartbeat_period),
            protocol.ENV_THRESHOLD: str(self.heartbeat_threshold),
            "PYTHONUNBUFFERED": "1",
            **rp_adjust.task_environment(self.is_local, self.base_dir),
        }
        # The workers import the user's modules the same way the client does:
        # its working directory and every sys.path entry outside the interpreter.
        path = rp_adjust.task_path()
        path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in path]
        path += [p for p in rp_config.user_import_path() if p not in path]
        env["PYTHONPATH"] = os.pathsep.join(path)
        return env

    def _submit_masters_and_workers(self, rp) -> None:
        from ..agent import master, worker

        env = self._environment()
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
            self.dispatcher.expect_master(md.uid)
            master_task = self._tmgr.submit_raptors(md, pilot_id=pilot.uid)[0]
            self._masters[master_task.uid] = master_task
            pools = self.pools[spec.name]
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
                    self._descriptions[uid] = wd
                    descriptions.append(rp.TaskDescription(wd))
                    self.dispatcher.expect_worker(uid, pool.ranks, pool.name, pool.gpus_per_rank,
                                                  pool.cores_per_rank)
        for task in self._tmgr.submit_workers(descriptions):
            self._workers[task.uid] = task

    # -- RP's state callbacks (RP's threads) -------------------------------------------

    def replace_worker(self, old: str, new: str) -> None:
        """Cancel worker ``old`` (its cores go back to the pilot) and start ``new``, described like it."""
        import radical.pilot as rp

        description = dict(self._descriptions.pop(old), uid=new)
        self._descriptions[new] = description
        self._tmgr.cancel_tasks(uids=[old])
        self._workers.pop(old, None)
        for task in self._tmgr.submit_workers([rp.TaskDescription(description)]):
            self._workers[task.uid] = task

    def _pilot_state_cb(self, pilot, state) -> None:
        if state not in _FINAL or self._closing:
            return
        name = next((n for n, p in self._pilots.items() if p.uid == pilot.uid), None)
        slurm = self._slurm_watch.why_ended(name) if self._slurm_watch is not None and name else None
        reason = _ended_by_slurm(pilot.uid, name, slurm) if slurm else f"pilot {pilot.uid} is {state}"
        self._pilot_ended(pilot.uid, reason + self._why_ended(pilot))

    def _why_ended(self, pilot: Any) -> str:
        # A pilot the batch system refused never ran: the launcher's log says why (sbatch's own words).
        return _launcher_errors(launcher_logs(self._session.path)) + _tail_files(pilot_logs(pilot))

    def _pilot_ended(self, uid: str, reason: str) -> None:
        # Once per pilot, whichever hears first: RP's state callback or the Slurm watch.
        if uid in self._ended:
            return
        self._ended.add(uid)
        self._failure = self._failure or reason
        if self.dispatcher is None:
            return
        if all(p.uid in self._ended or p.state in _FINAL for p in self._pilots.values()):
            from ...errors import PilotLost

            self.dispatcher.fail(PilotLost(None, reason))
            return
        for wid, task in list(self._workers.items()):
            if task.pilot == uid:
                self.dispatcher.worker_failed(wid, reason, replace=False)

    def _task_state_cb(self, task, state) -> None:
        if task.uid not in self._workers and task.uid not in self._masters:
            return
        logger.debug("%s: %s is %s", self.label, task.uid, state)
        if state not in _FINAL or self._closing:
            return
        reason = f"{task.uid} is {state}" + _tail_files(task_logs(task))
        if task.uid in self._workers:
            self.dispatcher.worker_failed(task.uid, reason)
        else:
            for uid, worker in list(self._workers.items()):
                if worker.description.get("raptor_id") == task.uid:
                    self.dispatcher.worker_failed(uid, f"RAPTOR master ended: {reason}")
        self._failure = self._failure or reason

    # -- close ----------------------------------------------------------------------

    def stop_watching(self) -> None:
        """From now on, workers and pilots that end are expected: the executor is shutting down."""
        self._closing = True
        if self._slurm_watch is not None:
            self._slurm_watch.stop()

    def close(self) -> None:
        """Close the task manager, the pilot manager (ending the pilots) and the session, in that order.

        That order takes about 1.5 s adjusted (4.5 s with stock RP); the others wait on RP's timeouts.
        """
        self.stop_watching()
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
        if self._keys_held:
            self._keys_held = False
            rp_adjust.release_keys()


def _ended_by_slurm(uid: str, name: str, why: str) -> str:
    # One wording whichever hears first, the Slurm watch or RP's callback.
    return f"pilot {uid} ({name!r}) ended: {why}"


def _pool_environment(env: Dict[str, str], pool: WorkerPool) -> Dict[str, str]:
    out = dict(env, **pool.environment)
    if "PYTHONPATH" in pool.environment and env.get("PYTHONPATH"):
        out["PYTHONPATH"] = os.pathsep.join([pool.environment["PYTHONPATH"], env["PYTHONPATH"]])
    out[protocol.ENV_POOL] = pool.name
    return out


def _launcher_errors(paths: Sequence[Path], limit: int = 1500) -> str:
    parts = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        at = text.find(" : ERROR ")
        if at >= 0:
            parts.append(f"\n--- {path} (its errors) ---\n{text[text.rfind(chr(10), 0, at) + 1:][-limit:].strip()}")
    return "".join(parts)


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
