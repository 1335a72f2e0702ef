"""What Slurm says about a pilot's batch job: its state, why it waits, its steps, and when it ends.

Radical Pilot learns that a pilot's job ended from PSI/J's status polling
(12 to 29 s after an ``scancel``, measured), and says nothing about a job or
a job step that waits: a start-up then times out with "pilot is
PMGR_ACTIVE_PENDING" or "ranks missing".  Slurm itself knows at once, and
knows why.  The pilot's job is found by its working directory, which RP puts
under the pilot's sandbox.

:class:`SlurmJobWatch` polls ``squeue`` for the pilots' jobs and reports a
job that ended (cancelled, out of walltime, a node failed) within about a
second; :func:`describe_jobs` explains a start that stalled.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

logger = logging.getLogger(__name__)

#: Job states in which the job still holds (or waits for) its nodes.
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING",
                         "REQUEUED", "SIGNALING", "STAGE_OUT"})

#: Plain words for the final states a pilot's job may reach while the executor runs.
_WHY = {
    "CANCELLED": "was cancelled (scancel)",
    "TIMEOUT": "reached its time limit (the pilot's runtime)",
    "NODE_FAIL": "lost a node",
    "FAILED": "failed",
    "COMPLETED": "ended",
    "PREEMPTED": "was preempted",
    "OUT_OF_MEMORY": "ran out of memory",
    "BOOT_FAIL": "could not boot its nodes",
    "DEADLINE": "reached its deadline",
}


@dataclass(frozen=True)
class SlurmJob:
    """One line of ``squeue`` (or ``scontrol show job`` once it left the queue)."""

    job_id: str
    state: str
    reason: str
    workdir: str
    nodes: str


def available() -> bool:
    """Whether Slurm's commands are here to ask."""
    return shutil.which("squeue") is not None


def _run(cmd: List[str], timeout: float = 10.0) -> Optional[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("%s: %s", cmd, exc)
        return None
    return proc.stdout if proc.returncode == 0 else None


def queued_jobs() -> List[SlurmJob]:
    """Every job ``squeue`` shows."""
    out = _run(["squeue", "-h", "-o", "%i|%T|%r|%Z|%N"]) or ""
    jobs = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 5:
            jobs.append(SlurmJob(*parts))
    return jobs


def job_in(sandbox: str) -> Optional[SlurmJob]:
    """The queued job whose working directory lies under ``sandbox`` (a pilot's)."""
    root = sandbox.rstrip("/") + "/"
    for job in queued_jobs():
        if (job.workdir.rstrip("/") + "/").startswith(root):
            return job
    return None


def final_state(job_id: str) -> Optional[SlurmJob]:
    """What ``scontrol`` still knows of a job that left the queue (for ``MinJobAge`` seconds)."""
    out = _run(["scontrol", "show", "job", "-o", job_id])
    if not out:
        return None
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return SlurmJob(job_id, fields.get("JobState", "?"), fields.get("Reason", "?"), fields.get("WorkDir", ""),
                    fields.get("NodeList", ""))


def steps(job_id: str) -> str:
    """The job's steps as ``squeue --steps`` lists them (one per line)."""
    out = _run(["squeue", "-h", "--steps", "-j", job_id, "-o", "%i %j %T %N"]) or ""
    return "; ".join(line.strip() for line in out.splitlines() if line.strip())


def describe(job: SlurmJob) -> str:
    """One sentence about ``job``: its state, why, and its steps while it runs."""
    text = f"Slurm job {job.job_id} is {job.state}"
    if job.reason and job.reason not in ("None", "(null)"):
        text += f" (reason: {job.reason})"
    if job.state == "PENDING":
        text += "; it waits for nodes the partition cannot give now (squeue, sinfo and the pilot's nodes " \
                "and cores per node say why)"
    elif job.state == "RUNNING":
        running = steps(job.job_id)
        text += f" on {job.nodes}; its steps: {running or 'none'}"
        text += ("; a worker's ranks wait for their step: a step that takes whole nodes (no SLURM_OVERLAP) "
                 "or a launcher that cannot reach a node leaves them missing")
    return text


def describe_jobs(sandboxes: Mapping[str, str]) -> str:
    """Where each pilot's job stands, by pilot name (for a start that timed out); ``""`` without Slurm."""
    if not available():
        return ""
    parts = []
    for name, sandbox in sandboxes.items():
        job = job_in(sandbox)
        parts.append(f"pilot {name!r}: " + (describe(job) if job else "no Slurm job in the queue"))
    return "; " + "; ".join(parts) if parts else ""


class SlurmJobWatch:
    """Poll ``squeue`` every ``period`` seconds; call ``on_end(name, reason)`` once per pilot whose job ended.

    Parameters
    ----------
    sandboxes : mapping of str to str
        Each watched pilot's sandbox, by pilot name.
    on_end : callable
        Called from the watch's thread with the pilot's name and why its job ended.
    period : float
        Seconds between polls.
    """

    def __init__(self, sandboxes: Mapping[str, str], on_end: Callable[[str, str], None],
                 period: float = 1.0) -> None:
        self.sandboxes = dict(sandboxes)
        self.on_end = on_end
        self.period = period
        self.job_ids: Dict[str, str] = {}
        self.ended: Dict[str, str] = {}  # why each ended pilot's job ended, by pilot name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rcylon-slurm-watch", daemon=True)

    def start(self) -> SlurmJobWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.period) and self.sandboxes:
            try:
                self._poll()
            except Exception:  # a watch must not die of one odd squeue line
                logger.exception("watching the pilots' Slurm jobs")

    def _poll(self) -> None:
        queued = {job.job_id: job for job in queued_jobs()}
        for name, sandbox in list(self.sandboxes.items()):
            job_id = self.job_ids.get(name)
            if job_id is None:
                root = sandbox.rstrip("/") + "/"
                found = [j for j in queued.values() if (j.workdir.rstrip("/") + "/").startswith(root)]
                if found:
                    self.job_ids[name] = found[0].job_id
                    logger.info("pilot %r is Slurm job %s", name, found[0].job_id)
                continue
            job = queued.get(job_id)
            if job is not None and job.state in LIVE_STATES:
                continue
            if self._stop.is_set():
                return
            reason = _ended(job_id, job or final_state(job_id))
            self.ended[name] = reason
            del self.sandboxes[name]
            logger.warning("pilot %r: %s", name, reason)
            self.on_end(name, reason)

    def why_ended(self, name: str, wait: float = 3.0) -> Optional[str]:
        """Why pilot ``name``'s job ended, as Slurm says; ``None`` if its job is unknown or still live.

        Radical Pilot sometimes hears of an ended pilot before the next poll (the agent reports its own end);
        this lets its callback give Slurm's reason too.  What a poll already saw is answered from memory (Slurm
        forgets an ended job after ``MinJobAge``, 2 s on the test cluster, and RP may hear tens of seconds
        later).  A job Slurm still calls live is asked again for up to ``wait`` seconds: the pilot's end can
        reach RP before Slurm's state leaves ``RUNNING``; one still live then ended for a reason of its own.
        """
        if name in self.ended:
            return self.ended[name]
        job_id = self.job_ids.get(name)
        if job_id is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            job = final_state(job_id)
            if job is not None and job.state not in LIVE_STATES:
                return _ended(job_id, job)
            if time.monotonic() >= deadline:
                logger.debug("Slurm job %s of pilot %r is %s", job_id, name, job.state if job else "unknown")
                return None
            time.sleep(0.2)


def _ended(job_id: str, job: Optional[SlurmJob]) -> str:
    state = job.state if job else "gone"
    why = _WHY.get(state, f"is {state}") if job else "left the queue"
    reason = f"the pilot's Slurm job {job_id} {why}"
    if job and job.reason not in ("", "None", "(null)", "?"):
        reason += f" (Slurm reason: {job.reason})"
    return reason
