"""Parsl monitoring on a real local pilot: every task of the executor in the database, with states and times.

A small workflow (python, bash and 2-rank cylon apps, one failing task) runs
under ``MonitoringHub`` with an sqlite database in a temporary directory;
the test then reads the database as ``parsl-visualize`` would.
"""
from __future__ import annotations

import sqlite3
import stat

import parsl
import pytest
from parsl import bash_app, python_app
from parsl.dataflow.dflow import DataFlowKernel
from parsl.monitoring import MonitoringHub

from parsl_rcylon import RadicalCylonExecutor, cylon_app

from .conftest import wait_for_no_processes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory):
    """Run the workflow with monitoring on; return the database path, the run directory and the results."""
    run_dir = tmp_path_factory.mktemp("monitored")
    db = run_dir / "monitoring.db"
    ex = RadicalCylonExecutor(label="mon", worker_ranks=3)
    hub = MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_interval=1)
    config = parsl.Config(executors=[ex], run_dir=str(run_dir), strategy="none", monitoring=hub)
    results = {}
    # A DFK of its own: the session's pilot (conftest) may be loaded as Parsl's current one.
    dfk = DataFlowKernel(config)
    try:
        sid = ex.session_id

        @python_app(data_flow_kernel=dfk)
        def add(a, b):
            return a + b

        @bash_app(data_flow_kernel=dfk)
        def hello():
            return "echo hello"

        @cylon_app(ranks=2, data_flow_kernel=dfk)
        def spread(ctx, seconds):
            import time

            time.sleep(seconds)  # long enough for a resource sample
            return ctx.comm.allreduce(ctx.rank)

        @python_app(data_flow_kernel=dfk)
        def broken():
            raise ValueError("on purpose")

        results["add"] = add(1, 2).result(timeout=120)
        results["hello"] = hello().result(timeout=120)
        results["spread"] = spread(3).result(timeout=120)
        with pytest.raises(ValueError, match="on purpose"):
            broken().result(timeout=120)
        results["run_dir"] = dfk.run_dir
    finally:
        dfk.cleanup()
    assert not wait_for_no_processes(sid, timeout=10)
    return db, results


def _rows(db, sql, *args):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_the_workflow_ran_with_monitoring_on(monitored_run):
    _, results = monitored_run
    assert (results["add"], results["hello"], results["spread"]) == (3, 0, 1)


def test_every_task_of_the_executor_is_in_the_database_with_its_states(monitored_run):
    db, _ = monitored_run
    tasks = dict(_rows(db, "SELECT task_func_name, task_id FROM task"))
    assert set(tasks) == {"add", "hello", "spread", "broken"}
    tries = _rows(db, "SELECT task_id, task_executor, hostname, task_try_time_launched, task_try_time_running, "
                      "task_try_time_returned FROM try")
    assert {t[0] for t in tries} == set(tasks.values())
    for task_id, executor, hostname, launched, running, returned in tries:
        assert executor == "mon"
        # The running time comes from the rank that ran the task (its report through the radio).
        assert hostname and launched and running and returned, (task_id, hostname, launched, running, returned)
        assert launched <= running <= returned
    states = {}
    for task_id, name in _rows(db, "SELECT task_id, task_status_name FROM status"):
        states.setdefault(task_id, []).append(name)
    for name in ("add", "hello", "spread"):
        assert {"launched", "running", "running_ended", "exec_done"} <= set(states[tasks[name]]), states
    assert "failed" in states[tasks["broken"]]
    # One report per Parsl task: a 2-rank task is reported by its rank 0 only.
    assert states[tasks["spread"]].count("running") == 1


def test_resource_rows_and_a_private_radio_directory(monitored_run):
    db, results = monitored_run
    tasks = dict(_rows(db, "SELECT task_func_name, task_id FROM task"))
    sampled = _rows(db, "SELECT psutil_process_pid, psutil_process_time_user FROM resource WHERE task_id = ?",
                    tasks["spread"])
    assert sampled, "no resource row for a 3 s task sampled every second"
    radio_dir = f"{results['run_dir']}/monitor-fs-radio"
    import os

    assert stat.S_IMODE(os.stat(radio_dir).st_mode) == 0o700
    assert not os.listdir(f"{radio_dir}/new"), "every message was read into the database"
