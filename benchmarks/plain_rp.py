"""A plain Radical Pilot RAPTOR script, no parsl_rcylon: the start-up baseline.

Stock RP 1.103 on a local pilot (only the offline resource configuration
that any script on this machine needs: ``mpiexec`` on the launcher's
``PATH``, the virtualenv), one stock RAPTOR ``Master`` and one stock
``MPIWorker`` of ``--ranks`` ranks, and one 2-rank eval task.  Prints one JSON
line: seconds from the session's start to each step and to the first result.

    python benchmarks/plain_rp.py --run-dir DIR [--ranks 4]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import radical.pilot as rp

from parsl_rcylon.runtime.client import config as rp_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--ranks", type=int, default=4)
    args = parser.parse_args()
    # Stock RP: profiling as shipped (on), whatever a parent process set.
    os.environ.pop("RADICAL_PROFILE", None)
    base = Path(args.run_dir)
    base.mkdir(parents=True, exist_ok=True)
    cores = 1 + args.ranks
    rp_config.prepare_environment(base, {"local.localhost": {
        "cores_per_node": max(cores, os.cpu_count() or 1), "fake_resources": True}})
    os.environ["HOME"] = str(base / "home")  # PSI/J's job files stay in the run directory
    os.makedirs(os.environ["HOME"], exist_ok=True)
    out = {}
    t0 = time.monotonic()
    session = rp.Session(cfg={"base": str(base)})
    try:
        out["session"] = time.monotonic() - t0
        t = time.monotonic()
        pmgr = rp.PilotManager(session=session)
        tmgr = rp.TaskManager(session=session)
        out["managers"] = time.monotonic() - t
        t = time.monotonic()
        pilot = pmgr.submit_pilots(rp.PilotDescription({
            "resource": "local.localhost", "runtime": 30, "cores": cores, "exit_on_error": False,
            "sandbox": str(base / "sandbox")}))
        tmgr.add_pilots(pilot)
        master = tmgr.submit_raptors(rp.TaskDescription({"mode": rp.RAPTOR_MASTER, "ranks": 1}),
                                     pilot_id=pilot.uid)[0]
        worker = tmgr.submit_workers(rp.TaskDescription({
            "mode": rp.RAPTOR_WORKER, "raptor_id": master.uid, "raptor_class": "MPIWorker",
            "ranks": args.ranks}))[0]
        pilot.wait(state=[rp.PMGR_ACTIVE] + list(rp.FINAL), timeout=300)
        out["pilot"] = time.monotonic() - t
        assert pilot.state == rp.PMGR_ACTIVE, pilot.state
        t = time.monotonic()
        worker.wait(state=[rp.AGENT_EXECUTING] + list(rp.FINAL), timeout=300)
        task = tmgr.submit_tasks(rp.TaskDescription({
            "mode": rp.TASK_EVAL, "code": "1 + 1", "ranks": 2, "raptor_id": master.uid}))
        task.wait(state=[rp.DONE, rp.FAILED, rp.CANCELED], timeout=300)
        out["workers_and_first_task"] = time.monotonic() - t
        assert task.state == rp.DONE, (task.state, task.stderr)
        out["first_result"] = time.monotonic() - t0
    finally:
        t = time.monotonic()
        for what in (tmgr, pmgr):
            what.close(**({"terminate": True} if what is pmgr else {}))
        session.close(download=False)
        out["shutdown"] = time.monotonic() - t
        out["sid"] = session.uid
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
