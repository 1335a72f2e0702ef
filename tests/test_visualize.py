"""``parsl-visualize`` seen in a real browser: a monitored run of this executor next to the same run on HTEX.

A small real workflow (a python app, a bash app, a 2-rank ``cylon_app``
that sorts a Parquet table, a python app depending on both, one failing task)
runs on a real local pilot with ``MonitoringHub``, and the same shape runs on
Parsl's HighThroughputExecutor into the same database.  ``parsl-visualize``
then serves that database and headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium; Graphviz's ``dot`` for the DAG pages) loads its pages: the workflow list,
each workflow's page, every app's page, the multi-rank task's page and the
resource usage page.  What HTEX's run shows, this executor's run must show.

The pages load plotly.js, jQuery and Bootstrap from public CDNs.  Nothing
outside this machine can be reached here, so the browser is given the
plotly.js that the ``plotly`` package ships (the version its figures are
made for) before each page's scripts run, and the CDN addresses are blocked
so that they fail at once.  Set ``RCYLON_VISUALIZE_SCREENSHOT=path.png`` to
keep a screenshot of this executor's workflow page.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import parsl
import pytest
from parsl import bash_app, python_app
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors import HighThroughputExecutor
from parsl.monitoring import MonitoringHub
from parsl.providers import LocalProvider

from parsl_rcylon import RadicalCylonExecutor, cylon_app

from .conftest import wait_for_no_processes

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                       reason="no headless browser: install Debian's chromium and chromium-driver "
                              "(.ci/run does as root)"),
    # parsl-visualize's DAG pages lay the graph out with Graphviz (an error page without it, HTEX's too).
    pytest.mark.skipif(shutil.which("dot") is None, reason="no Graphviz `dot` for parsl-visualize's DAG pages: "
                                                           "install Debian's graphviz (.ci/run does as root)"),
]

#: Chromium's flags for a sandboxed CI container with no network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1800")
CDN_URLS = ["*cdn.plot.ly*", "*bootstrapcdn.com*", "*googleapis.com*", "*cdnjs.cloudflare.com*",
            "*fontawesome.com*"]
#: What parsl-visualize writes in place of a plot it could not draw.
PLOT_FAILED = "cannot be generated"
APPS = {"prepare", "hello", "spread", "combine", "broken"}


def _workflow(dfk: DataFlowKernel, multi_rank: bool) -> dict:
    """The same small workflow on either executor; return its results."""

    @python_app(data_flow_kernel=dfk)
    def prepare(n):
        return list(range(n, 0, -1))

    @bash_app(data_flow_kernel=dfk)
    def hello():
        return "echo hello"

    if multi_rank:
        @cylon_app(ranks=2, data_flow_kernel=dfk)
        def spread(ctx, values, seconds):
            import time

            import pyarrow as pa

            mine = pa.table({"v": values[ctx.rank::ctx.size]})
            end = time.time() + seconds
            while time.time() < end:  # busy, so the resource samples show CPU time
                sum(range(10_000))
            return sorted(v for part in ctx.comm.allgather(mine.column("v").to_pylist()) for v in part)
    else:
        @python_app(data_flow_kernel=dfk)
        def spread(values, seconds):
            import time

            end = time.time() + seconds
            while time.time() < end:
                sum(range(10_000))
            return sorted(values)

    @python_app(data_flow_kernel=dfk)
    def combine(values, code):
        return sum(values) + code

    @python_app(data_flow_kernel=dfk)
    def broken():
        raise ValueError("on purpose")

    values = prepare(6)
    out = {"combine": combine(spread(values, 4), hello()).result(timeout=180)}
    with pytest.raises(ValueError, match="on purpose"):
        broken().result(timeout=120)
    return out


def _monitored(config: parsl.Config) -> tuple:
    dfk = DataFlowKernel(config)
    try:
        results = _workflow(dfk, multi_rank=isinstance(config.executors[0], RadicalCylonExecutor))
        run_id = dfk.run_id
    finally:
        dfk.cleanup()
    return run_id, results


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """Both runs in one monitoring database: ``(db, {"rcylon": run_id, "htex": run_id})``."""
    base = tmp_path_factory.mktemp("visualize")
    db = base / "monitoring.db"
    runs = {}
    ex = RadicalCylonExecutor(label="rcylon-viz", worker_ranks=3)
    hub = MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_interval=1)
    runs["rcylon"], results = _monitored(parsl.Config(executors=[ex], run_dir=str(base / "rcylon"),
                                                      strategy="none", monitoring=hub))
    assert results == {"combine": 21}
    assert not wait_for_no_processes(ex.session_id, timeout=10)
    # HTEX's worker pool is a script in the interpreter's bin directory, found on PATH; its workers
    # import this module (the apps' globals) from the checkout.
    root = str(Path(__file__).resolve().parent.parent)
    worker_init = (f"export PATH={Path(sys.executable).parent}:$PATH; "
                   f"export PYTHONPATH={root}:${{PYTHONPATH:-}}")
    htex = HighThroughputExecutor(label="htex-viz", max_workers_per_node=3, address="127.0.0.1",
                                  provider=LocalProvider(init_blocks=1, max_blocks=1, worker_init=worker_init))
    hub = MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_interval=1)
    runs["htex"], results = _monitored(parsl.Config(executors=[htex], run_dir=str(base / "htex"), monitoring=hub))
    assert results == {"combine": 21}
    return db, runs


@pytest.fixture(scope="module")
def visualize(database):
    """``parsl-visualize`` serving the database on a free local port; yields its base URL."""
    db, _ = database
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "parsl-visualize"
    proc = subprocess.Popen([str(exe), "--listen", "127.0.0.1", "--port", str(port), f"sqlite:///{db}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"parsl-visualize did not serve {url}: {proc.communicate()[0]}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with plotly.js given locally and the CDNs blocked."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the `browser` extra)")
    import plotly

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(60)
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": CDN_URLS})
        plotly_js = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text()
        # A script given this way runs before the document has a <head>, which plotly.js needs: run it
        # once the head exists (the parser checks microtasks before it runs the page's first script).
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _WHEN_HEAD % json.dumps(plotly_js)})
        yield driver
    finally:
        driver.quit()


_WHEN_HEAD = """(() => {
    const source = %s;
    const run = () => { if (document.head && !window.Plotly) { (0, eval)(source); return true; } return false; };
    if (!run()) {
        const watch = new MutationObserver(() => { if (run()) watch.disconnect(); });
        watch.observe(document, {childList: true, subtree: true});
    }
})();"""


class Page:
    """One page as the browser shows it: its text and what its plots drew."""

    def __init__(self, driver, url: str) -> None:
        driver.get(url)
        self.url = url
        self.text = driver.find_element("tag name", "body").text
        # A plot plotly.js drew is an svg inside its div; one it could not draw stays an empty div.
        self.plots = driver.execute_script("""
            return Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => ({
                title: (d.querySelector('.gtitle') || {}).textContent || '',
                drawn: d.querySelector('svg.main-svg') !== null,
                points: (d.data || []).reduce((n, t) => n + ((t.x || []).length || 0), 0),
                // Each line's highest value: a "total" line at 0 means a figure the run did not report.
                peaks: Object.fromEntries((d.data || []).filter(t => t.name).map(
                    t => [t.name, Math.max(0, ...Array.from(t.y || []).filter(Number.isFinite))]))}));""")
        self.links = driver.execute_script(
            "return Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'));")

    def drawn(self) -> list:
        return sorted(p["title"] for p in self.plots if p["drawn"] and p["points"])

    def lines(self) -> dict:
        """Per plot title, its named lines."""
        return {p["title"]: sorted(p["peaks"]) for p in self.plots}

    def totals(self) -> dict:
        """Per plot title, its "Total ..." lines (cores, memory, workers of the run) that rise above zero."""
        return {p["title"]: sorted(n for n, peak in p["peaks"].items() if n.startswith("Total") and peak > 0)
                for p in self.plots}


def _task_ids(db: Path, run_id: str) -> dict:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT task_func_name, task_id FROM task WHERE run_id = ?", (run_id,)))


def _pages(driver, url: str, db: Path, run_id: str) -> dict:
    tasks = _task_ids(db, run_id)
    pages = {"workflow": Page(driver, f"{url}/workflow/{run_id}/"),
             "all tasks": Page(driver, f"{url}/workflow/{run_id}/task/"),
             "resources": Page(driver, f"{url}/workflow/{run_id}/resource_usage"),
             "dag": Page(driver, f"{url}/workflow/{run_id}/dag_group_by_states"),
             "multi-rank task": Page(driver, f"{url}/workflow/{run_id}/task/{tasks['spread']}")}
    for app in sorted(tasks):
        pages[f"app {app}"] = Page(driver, f"{url}/workflow/{run_id}/app/{app}")
    return pages


def test_parsl_visualize_shows_this_executor_as_it_shows_htex(database, visualize, browser):
    db, runs = database
    index = Page(browser, visualize + "/")
    for run_id in runs.values():
        assert f"workflow/{run_id}/" in index.links, (index.links, index.text)
    ours = _pages(browser, visualize, db, runs["rcylon"])
    theirs = _pages(browser, visualize, db, runs["htex"])
    assert set(ours) == set(theirs)

    for name, page in ours.items():
        assert PLOT_FAILED not in page.text, (name, page.text)
        assert "Internal Server Error" not in page.text, name
        # Every plot HTEX's run draws, ours draws too (same titles, each with data in it).
        assert page.drawn() == theirs[name].drawn(), (name, page.plots, theirs[name].plots)
        # ... with the same lines (a state, an app, a total), and the run's totals of cores, memory and
        # workers above zero where HTEX's are.  (The used/busy lines depend on timing: not compared.)
        assert page.lines() == theirs[name].lines(), (name, page.plots, theirs[name].plots)
        assert page.totals() == theirs[name].totals(), (name, page.plots, theirs[name].plots)

    workflow = ours["workflow"].text
    assert "Number of completed tasks: 4" in workflow and "Number of failed tasks: 1" in workflow, workflow
    for app in APPS:
        assert f"app/{app}" in ours["workflow"].links, (app, ours["workflow"].links)
    # The Gantt chart and the tasks-per-app plot: one bar per task, one line per app.
    titles = ours["workflow"].drawn()
    assert len(titles) == 2, ours["workflow"].plots

    tasks = _task_ids(db, runs["rcylon"])
    for app, task_id in tasks.items():
        assert f"/workflow/{runs['rcylon']}/task/{task_id}" in ours[f"app {app}"].links, app
    assert len([link for link in ours["all tasks"].links if "/task/" in (link or "")]) >= len(APPS)

    task = ours["multi-rank task"].text
    for state in ("launched", "running", "running_ended", "exec_done"):
        assert f" {state}\n" in task + "\n" or task.endswith(state), (state, task)
    assert "task_time_returned: 20" in task, task  # a date: the time it returned
    assert ours["multi-rank task"].drawn() == ["Memory Usage"], ours["multi-rank task"].plots

    resources = ours["resources"]
    assert {"CPU usage", "Memory usage"} <= set(resources.drawn()), resources.plots

    shot = os.environ.get("RCYLON_VISUALIZE_SCREENSHOT")
    if shot:
        browser.get(f"{visualize}/workflow/{runs['rcylon']}/")
        browser.save_screenshot(shot)
