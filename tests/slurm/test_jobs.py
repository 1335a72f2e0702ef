"""What Slurm says about a pilot's job, read from real jobs on the test cluster (no pilot, plain sbatch)."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from parsl_rcylon.runtime.client import slurmjobs

pytestmark = pytest.mark.slurm


def _sbatch(workdir, *options: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", f"--chdir={workdir}", "--output=/dev/null", *options],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def test_a_pending_job_is_explained_with_slurms_reason(slurm_cluster, tmp_path):
    job = _sbatch(tmp_path, "--begin=now+1hour", "--wrap", "true")
    try:
        text = slurmjobs.describe_jobs({"main": str(tmp_path)})
        assert f"Slurm job {job} is PENDING (reason: BeginTime)" in text, text
    finally:
        subprocess.run(["scancel", job], check=False)


def test_a_running_job_is_explained_with_its_steps(slurm_cluster, tmp_path):
    job = _sbatch(tmp_path, "-N1", "--wrap", "srun --overlap sleep 60")
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline and f"{job}.0" not in text:
            text = slurmjobs.describe_jobs({"main": str(tmp_path)})
            time.sleep(0.3)
        assert f"Slurm job {job} is RUNNING" in text and f"{job}.0" in text, text
    finally:
        subprocess.run(["scancel", job], check=False)


def test_the_watch_reports_a_cancelled_job_within_seconds(slurm_cluster, tmp_path):
    ended = []
    done = threading.Event()
    job = _sbatch(tmp_path, "-N1", "--wrap", "sleep 120")
    watch = slurmjobs.SlurmJobWatch({"main": str(tmp_path)},
                                    lambda name, why: (ended.append((name, why)), done.set()), period=0.5).start()
    try:
        deadline = time.monotonic() + 30
        while "main" not in watch.job_ids and time.monotonic() < deadline:
            time.sleep(0.1)
        assert watch.job_ids.get("main") == job
        t0 = time.monotonic()
        subprocess.run(["scancel", job], check=True)
        assert done.wait(10), "the watch did not report the cancelled job"
        assert time.monotonic() - t0 < 5
        assert len(ended) == 1 and ended[0][0] == "main", ended
        assert ended[0][1].startswith(f"the pilot's Slurm job {job} was cancelled (scancel)"), ended
        # What RP's state callback asks when it hears of the end first: the same answer, from Slurm.
        assert watch.why_ended("main").startswith(f"the pilot's Slurm job {job} was cancelled (scancel)")
        assert watch.why_ended("other") is None
    finally:
        watch.stop()
        subprocess.run(["scancel", job], check=False)
