"""Reproduction of the Radical-Cylon paper's experiments, at this machine's scale.

    python benchmarks/paper.py [--quick] [--out DIR] [--ranks 1,2,4] [--rows-per-rank N] [--iterations K]

The paper (Sarker et al., "Radical-Cylon: A Heterogeneous Data Pipeline for
Scientific Computing") reports two things:

1. Cylon operations (join, sort) run inside Radical Pilot cost only a small
   constant over the same operations run bare-metal with ``mpiexec``, under
   weak scaling (rows per rank fixed) and strong scaling (total rows fixed);
2. a pipeline of heterogeneous join and sort stages run in one pilot is 4-15%
   faster than running each stage as its own batch launch on the same resources.

Three modes see the same data and the same Parquet hand-off
(:mod:`parsl_rcylon.bench.stages` runs in all of them):

``bare-metal``
    ``mpiexec -n R python paper_job.py <op>``: the operation timed inside,
    after a barrier, slowest rank.
``batch``
    every pipeline stage (generate, join, sort) its own ``mpiexec`` job, one
    after another, as a batch script runs them.
``parsl_rcylon``
    the same stages as ``cylon_app`` tasks in one pilot; Parsl runs
    independent stages at once (the join and the sort side by side).

Bare-metal and parsl_rcylon runs alternate (their order too) so that both see
the same background load; every figure is a median over ``iterations``.
Pilot start-up is measured and reported on its own, and not counted in the
pipeline times (as in the paper).

Entry points: this script's command line (:func:`main`) and :func:`run_paper`;
the tables and figures come from ``paper_report.py`` beside it.  Only the
stages live in the package: the pilot's ranks and the bare ``mpiexec`` jobs
import them.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# Run by path, sys.path[0] is benchmarks/ (paper_report); the checkout goes
# first too, so that the harness measures the code it sits beside.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from parsl_rcylon.bench import stages  # noqa: E402
from parsl_rcylon.bench.stages import LEFT, RIGHT, StageResult  # noqa: E402

logger = logging.getLogger(__name__)

#: The issue's targets: parsl_rcylon end to end at least this much faster than
#: batch on the heterogeneous pipeline; operation time at most this much over bare-metal.
TARGETS = {"speedup_vs_batch_min": 1.25, "overhead_pct_max": 5.0}

#: What ``--quick`` changes when the option is not given explicitly.
QUICK = {"rows_per_rank": 250_000, "iterations": 2, "ranks": (1, 2)}

Progress = Callable[[str], None]


class BenchError(RuntimeError):
    """The benchmark could not run or produced inconsistent results."""


class LaunchError(BenchError):
    """A bare-metal/batch ``mpiexec`` job failed or timed out."""


class ResultMismatchError(BenchError):
    """Two modes produced different results from the same input."""


@dataclass
class PaperOptions:
    """Settings of one reproduction run.

    Parameters
    ----------
    out : Path
        Directory for ``results.json``, ``results.md`` and the figures.
    ranks : tuple of int
        Rank counts of every operation and pipeline stage.
    rows_per_rank : int
        Weak scaling: rows per rank of each input table (the pipeline too).
    strong_rows : int, optional
        Strong scaling: total rows of each input table; default
        ``rows_per_rank * max(ranks)``.
    iterations : int
        Measurements per mode and configuration (medians are reported).
    op_repeats : int
        Runs of the operation inside each measured job or task: the first is
        the operation time (one operation per job, as in the paper); the
        later ones show what a warm process gains.
    run_dir : Path
        Parsl run directory; the pilot, its sandbox and every table live under it.
    ops, scalings : tuple of str
        Operations (``join``, ``sort``) and scalings (``weak``, ``strong``) to measure.
    pipeline : bool
        Run the batch vs parsl_rcylon pipeline comparison.
    quick : bool
        Recorded in the results (the CLI applies :data:`QUICK` defaults).
    launch_timeout : float
        Seconds one ``mpiexec`` job may take.
    keep_data : bool
        Keep the generated tables (under ``run_dir``) after the run.
    resource, project, queue, access_schema : str, optional
        Where the pilot runs (``local.localhost`` by default); on a batch
        system run the benchmark inside an allocation and pass
        ``access_schema="interactive"`` where the resource has that schema, so
        that the pilot and the bare-metal jobs share the same nodes.
    nodes, runtime : int, optional
        Pilot nodes (default: what the worker needs) and walltime in minutes.
    ranks_per_node : int, optional
        Worker ranks per node (default: as many as a node's cores allow).
    launcher : str, optional
        Command that starts a bare-metal job, with ``{ranks}`` for the rank
        count, e.g. ``"srun --overlap -n {ranks}"``; default ``mpiexec -n {ranks}``
        with the ``mpiexec`` next to this interpreter.
    """

    out: Path
    ranks: Tuple[int, ...] = (1, 2, 4)
    rows_per_rank: int = 2_000_000
    strong_rows: Optional[int] = None
    iterations: int = 3
    op_repeats: int = 2
    run_dir: Path = Path("runinfo")
    ops: Tuple[str, ...] = ("join", "sort")
    scalings: Tuple[str, ...] = ("weak", "strong")
    pipeline: bool = True
    quick: bool = False
    launch_timeout: float = 900.0
    keep_data: bool = False
    resource: str = "local.localhost"
    project: Optional[str] = None
    queue: Optional[str] = None
    access_schema: Optional[str] = None
    nodes: Optional[int] = None
    runtime: int = 120
    ranks_per_node: Optional[int] = None
    launcher: Optional[str] = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.run_dir = Path(self.run_dir)
        self.ranks = tuple(sorted(set(int(r) for r in self.ranks)))
        if not self.ranks or min(self.ranks) < 1:
            raise BenchError(f"rank counts must be positive integers, got {self.ranks}")
        if self.rows_per_rank < 1 or self.iterations < 1 or self.op_repeats < 1:
            raise BenchError("rows per rank, iterations and operation repeats must be at least 1")
        bad = set(self.ops) - {"join", "sort"} or set(self.scalings) - {"weak", "strong"}
        if bad:
            raise BenchError(f"unknown operation or scaling: {sorted(bad)}")
        if self.strong_rows is None:
            self.strong_rows = self.rows_per_rank * max(self.ranks)
        if self.launcher is not None and "{ranks}" not in self.launcher:
            raise BenchError(f"the launcher needs a {{ranks}} placeholder, got {self.launcher!r}")

    def executor_options(self) -> Dict[str, Any]:
        """Keyword arguments of the RadicalCylonExecutor that runs the parsl_rcylon mode."""
        from parsl_rcylon.resources import PilotSpec, WorkerPool

        options: Dict[str, Any] = {"pools": [WorkerPool(name="default", ranks=self.worker_ranks,
                                                        ranks_per_node=self.ranks_per_node)]}
        if self.resource != "local.localhost" or self.project or self.queue or self.access_schema or self.nodes:
            options["pilots"] = [PilotSpec(name="paper", resource=self.resource, nodes=self.nodes,
                                           runtime=self.runtime, project=self.project, queue=self.queue,
                                           access_schema=self.access_schema)]
        return options

    @property
    def worker_ranks(self) -> int:
        """Ranks of the pilot's worker: two stages of the largest size side by side."""
        return max(4, 2 * max(self.ranks))


def _print_progress(message: str) -> None:
    print(f"[paper] {message}", flush=True)


def median(values: Sequence[float]) -> float:
    """Median, or NaN for no values (a configuration that failed)."""
    return statistics.median(values) if values else float("nan")


# -- the modes -----------------------------------------------------------------------------------


class BareMetal:
    """Runs stages as ``mpiexec -n R python paper_job.py ...`` jobs.

    Parameters
    ----------
    data_dir : Path
        Where the jobs write their tables and result files.
    timeout : float
        Seconds one job may take before it is killed and reported.
    launcher : str, optional
        Launch command with a ``{ranks}`` placeholder (``srun --overlap -n {ranks}``);
        default: the ``mpiexec`` next to this interpreter (or on ``PATH``).
    """

    def __init__(self, data_dir: Path, timeout: float, launcher: Optional[str] = None) -> None:
        from parsl_rcylon.runtime.client.config import mpi_bin_dir

        if launcher is None:
            bindir = mpi_bin_dir()
            if bindir is None:
                raise BenchError("no mpiexec next to the interpreter or on PATH; run `parsl-rcylon doctor`")
            launcher = f"{shlex.quote(str(Path(bindir) / 'mpiexec'))} -n {{ranks}}"
        self.launcher = launcher
        self.script = str(Path(__file__).with_name("paper_job.py"))
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._count = 0

    def save(self, value: Any) -> str:
        """Pickle a TableRef/StageResult where the next job can read it (what Parsl would ship)."""
        self._count += 1
        path = self.data_dir / f"input-{self._count:05d}.pkl"
        with open(path, "wb") as f:
            pickle.dump(value, f)
        return str(path)

    def launch(self, ranks: int, stage_args: Sequence[str], warm_up: bool = False) -> Tuple[float, List[StageResult]]:
        """Run one job; return its wall time (launch to exit) and the StageResults of rank 0."""
        self._count += 1
        result = self.data_dir / f"result-{self._count:05d}.pkl"
        cmd = shlex.split(self.launcher.format(ranks=ranks)) + [
            sys.executable, self.script, "--data-dir", str(self.data_dir), "--result", str(result)]
        cmd += (["--warm-up"] if warm_up else []) + list(stage_args)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=self.timeout,
                                  text=True, errors="replace")
        except subprocess.TimeoutExpired as err:
            raise LaunchError(f"{' '.join(cmd)} did not finish in {self.timeout:.0f} s") from err
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise LaunchError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-3000:]}")
        if stage_args and stage_args[0] == "noop":
            return wall, []
        with open(result, "rb") as f:
            results = pickle.load(f)
        result.unlink()
        return wall, results


class Pilot:
    """The parsl_rcylon side: one executor, the stages as ``cylon_app``s.

    Parameters
    ----------
    run_dir : Path
        Parsl run directory.
    worker_ranks : int
        Ranks of the pilot's single worker.
    data_dir : Path
        Where tasks write their tables.
    executor_options : dict, optional
        Further RadicalCylonExecutor arguments (pools, pilots).
    """

    def __init__(self, run_dir: Path, worker_ranks: int, data_dir: Path,
                 executor_options: Optional[Dict[str, Any]] = None) -> None:
        self.run_dir = Path(run_dir)
        self.worker_ranks = worker_ranks
        self.data_dir = Path(data_dir)
        self.executor_options = dict(executor_options or {"worker_ranks": worker_ranks})
        self.dfk: Any = None
        self.executor: Any = None
        self.timings: Dict[str, Any] = {}

    def start(self) -> Dict[str, Any]:
        """Start the pilot and warm its worker; return the start-up timings."""
        import parsl

        from parsl_rcylon import RadicalCylonExecutor, cylon_app

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.executor = RadicalCylonExecutor(label="paper", data_dir=str(self.data_dir), **self.executor_options)
        t0 = time.perf_counter()
        self.dfk = parsl.load(parsl.Config(executors=[self.executor], run_dir=str(self.run_dir),
                                           strategy="none", initialize_logging=True))
        self.timings["load_s"] = time.perf_counter() - t0
        self.timings["executor"] = dict(self.executor.timings)
        self.timings["session_id"] = self.executor.session_id
        self.apps = {name: cylon_app(getattr(stages, name)) for name in ("generate", "join", "sort", "warm_up")}
        t1 = time.perf_counter()
        warm = self.call("warm_up", self.worker_ranks).result()
        self.timings["warm_up_s"] = time.perf_counter() - t1
        self.timings["worker"] = warm.info
        self.timings.update(idle_cpu(self.executor.session_id))
        return self.timings

    def call(self, stage: str, ranks: int, *args: Any, **kwargs: Any) -> Any:
        """Submit one stage on ``ranks`` ranks; return its Parsl future."""
        return self.apps[stage](*args, parsl_resource_specification={"ranks": ranks}, **kwargs)

    def run(self, stage: str, ranks: int, *args: Any, **kwargs: Any) -> Tuple[float, StageResult]:
        """Run one stage and wait; return the client-side wall time and its StageResult."""
        t0 = time.perf_counter()
        res = self.call(stage, ranks, *args, **kwargs).result()
        return time.perf_counter() - t0, res

    def stop(self) -> Dict[str, Any]:
        """Shut the pilot down; return the shutdown timings."""
        import parsl

        if self.dfk is None:
            return {}
        t0 = time.perf_counter()
        try:
            self.dfk.cleanup()
        finally:
            parsl.clear()
            self.dfk = None
        return {"cleanup_s": time.perf_counter() - t0, "shutdown_s": self.executor.timings.get("shutdown")}


def idle_cpu(sid: str, seconds: float = 3.0) -> Dict[str, float]:
    """Cores an idle pilot keeps busy: its processes' CPU time over ``seconds``, and this client's.

    Radical Pilot's components poll their queues even when no task runs; on a
    small machine that is a background load both modes share while measured.
    """
    from parsl_rcylon.runtime.processes import session_cpu

    used = session_cpu(sid, seconds)
    top = dict(sorted(used.by_component.items(), key=lambda kv: -kv[1])[:8])
    return {"pilot_idle_cpu_cores": sum(used.by_component.values()), "client_idle_cpu_cores": used.client,
            "pilot_processes": used.processes, "pilot_idle_cpu_by_process": top}


# -- the experiment --------------------------------------------------------------------------------


@dataclass
class OpConfig:
    """One operation measurement: ``op`` on ``ranks`` ranks of tables of ``rows`` rows."""

    op: str
    ranks: int
    rows: int
    scalings: List[str] = field(default_factory=list)
    bare_metal: List[Dict[str, Any]] = field(default_factory=list)
    parsl_rcylon: List[Dict[str, Any]] = field(default_factory=list)


def _record(wall: float, res: StageResult, wall_key: str) -> Dict[str, Any]:
    out = res.to_json()
    out[wall_key] = wall
    return out


class PaperRun:
    """One reproduction run: start the pilot, measure, shut down, summarise.

    Parameters
    ----------
    options : PaperOptions
        What to measure.
    progress : callable
        Receives one line per step and measurement.
    """

    def __init__(self, options: PaperOptions, progress: Progress = _print_progress) -> None:
        self.o = options
        self.progress = progress
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.work = self.o.run_dir / f"paper-data-{stamp}-{os.getpid()}"
        self.bare = BareMetal(self.work / "bare", options.launch_timeout, options.launcher)
        self.pilot = Pilot(self.o.run_dir, options.worker_ranks, self.work / "parsl", options.executor_options())
        self.ops: List[OpConfig] = []
        self.pipeline: List[Dict[str, Any]] = []
        self.launch: Dict[str, List[float]] = {}
        self.startup: Dict[str, Any] = {}

    # -- phases --

    def run(self) -> Dict[str, Any]:
        """Run every phase; return the results (see :func:`summarize`)."""
        o = self.o
        load_before = os.getloadavg()
        self.progress(f"ranks {list(o.ranks)}, {o.rows_per_rank:,} rows per rank (weak), {o.strong_rows:,} rows "
                      f"(strong), {o.iterations} iteration(s); load average {load_before[0]:.1f}")
        started = time.perf_counter()
        try:
            self.progress(f"starting the pilot (worker of {o.worker_ranks} ranks) in {o.run_dir} ...")
            self.startup = self.pilot.start()
            ex = self.startup["executor"]
            self.progress(f"pilot ready in {self.startup['load_s']:.1f} s (session {ex.get('session', 0):.1f}, "
                          f"managers {ex.get('managers', 0):.1f}, pilot {ex.get('pilot', 0):.1f}, workers "
                          f"{ex.get('workers', 0):.1f} s); warm-up task {self.startup['warm_up_s']:.2f} s; idle, "
                          f"its {self.startup['pilot_processes']} processes use "
                          f"{self.startup['pilot_idle_cpu_cores']:.2f} cores")
            self.measure_launches()
            if o.ops and o.scalings:
                self.measure_operations()
            if o.pipeline:
                self.measure_pipeline()
        finally:
            self.progress("shutting the pilot down ...")
            self.startup.update(self.pilot.stop())
            if not o.keep_data:
                shutil.rmtree(self.work, ignore_errors=True)
        if "shutdown_s" in self.startup:
            self.progress(f"pilot shut down in {self.startup.get('shutdown_s') or 0:.1f} s")
        return summarize(self, load_before, time.perf_counter() - started)

    def measure_launches(self) -> None:
        """The fixed cost of one batch stage: ``mpiexec`` + interpreter + imports + MPI_Init."""
        for r in self.o.ranks:
            walls = [self.bare.launch(r, ["noop"])[0] for _ in range(self.o.iterations)]
            self.launch[str(r)] = walls
            self.progress(f"empty mpiexec -n {r} job (start-up of one batch stage): median {median(walls):.2f} s")

    def _op_configs(self) -> List[OpConfig]:
        configs: Dict[Tuple[str, int, int], OpConfig] = {}
        for op in self.o.ops:
            for scaling in self.o.scalings:
                for r in self.o.ranks:
                    rows = self.o.rows_per_rank * r if scaling == "weak" else int(self.o.strong_rows or 0)
                    cfg = configs.setdefault((op, r, rows), OpConfig(op, r, rows))
                    cfg.scalings.append(scaling)
        return list(configs.values())

    def measure_operations(self) -> None:
        """Bare-metal vs parsl_rcylon operation time, alternating, on the same input tables."""
        self.ops = self._op_configs()
        for rows in sorted({c.rows for c in self.ops}):
            ranks = max(c.ranks for c in self.ops if c.rows == rows)
            t0 = time.perf_counter()
            futures = [self.pilot.call("generate", ranks, table, rows) for table in (LEFT, RIGHT)]
            inputs = [f.result() for f in futures]
            saved = [self.bare.save(res.ref) for res in inputs]
            self.progress(f"generated 2 x {rows:,} rows on {ranks} rank(s) in {time.perf_counter() - t0:.1f} s")
            for cfg in (c for c in self.ops if c.rows == rows):
                self._measure_op(cfg, inputs, saved)
            stages.delete_outputs(inputs)

    def _measure_op(self, cfg: OpConfig, inputs: List[StageResult], saved: List[str]) -> None:
        repeat = self.o.op_repeats
        args = ["--repeat", str(repeat)] + (["join", "--left", saved[0], "--right", saved[1]] if cfg.op == "join"
                                            else ["sort", "--input", saved[0]])
        refs = (inputs[0].ref, inputs[1].ref) if cfg.op == "join" else (inputs[0].ref,)
        for it in range(self.o.iterations):
            bare = parsl = None
            # Alternate which mode goes first, so that neither always runs on a warmer page cache.
            for mode in (("bare", "parsl") if it % 2 == 0 else ("parsl", "bare")):
                if mode == "bare":
                    wall, (bare,) = self.bare.launch(cfg.ranks, args, warm_up=True)
                    cfg.bare_metal.append(_record(wall, bare, "launch_wall_s"))
                else:
                    wall, parsl = self.pilot.run(cfg.op, cfg.ranks, *refs, repeat=repeat)
                    cfg.parsl_rcylon.append(_record(wall, parsl, "task_wall_s"))
            assert bare is not None and parsl is not None
            if bare.rows_out != parsl.rows_out:
                raise ResultMismatchError(f"{cfg.op} of {cfg.rows:,} rows on {cfg.ranks} rank(s): bare-metal gave "
                                          f"{bare.rows_out:,} rows, parsl_rcylon {parsl.rows_out:,}")
            stages.delete_outputs([bare, parsl])
            self.progress(f"{cfg.op:4} {'/'.join(cfg.scalings):11} {cfg.ranks} rank(s) {cfg.rows:>11,} rows "
                          f"[{it + 1}/{self.o.iterations}]: op bare-metal {_runs(bare)}, parsl_rcylon "
                          f"{_runs(parsl)}")

    def measure_pipeline(self) -> None:
        """Generate -> (join || sort): each stage a batch job vs all stages in the pilot."""
        for r in self.o.ranks:
            rows = self.o.rows_per_rank * r
            entry: Dict[str, Any] = {"ranks": r, "rows_per_table": rows, "batch": [], "parsl_rcylon": []}
            for it in range(self.o.iterations):
                for mode in (("batch", "parsl") if it % 2 == 0 else ("parsl", "batch")):
                    if mode == "batch":
                        entry["batch"].append(self._batch_pipeline(r, rows))
                    else:
                        entry["parsl_rcylon"].append(self._pilot_pipeline(r, rows))
                b, p = entry["batch"][-1], entry["parsl_rcylon"][-1]
                if [s["rows_out"] for s in b["stages"][-2:]] != [s["rows_out"] for s in p["stages"][-2:]]:
                    raise ResultMismatchError(f"pipeline on {r} rank(s): batch and parsl_rcylon joined/sorted "
                                              "different numbers of rows")
                self.progress(f"pipeline {r} rank(s) {rows:>11,} rows/table [{it + 1}/{self.o.iterations}]: "
                              f"batch {b['wall_s']:.2f} s ({', '.join(f'{s}' for s in _stage_walls(b))}), "
                              f"parsl_rcylon {p['wall_s']:.2f} s, speedup {b['wall_s'] / p['wall_s']:.2f}x")
            self.pipeline.append(entry)

    def _batch_pipeline(self, ranks: int, rows: int) -> Dict[str, Any]:
        t0 = time.perf_counter()
        w_gen, (left, right) = self.bare.launch(ranks, ["generate", "--rows", str(rows), "--tables",
                                                        f"{LEFT},{RIGHT}"])
        lpath, rpath = self.bare.save(left), self.bare.save(right)
        w_join, (joined,) = self.bare.launch(ranks, ["join", "--left", lpath, "--right", rpath])
        w_sort, (ordered,) = self.bare.launch(ranks, ["sort", "--input", lpath])
        wall = time.perf_counter() - t0
        out = {"wall_s": wall, "stages": [_record(w_gen, left, "launch_wall_s"), _record(w_gen, right, "launch_wall_s"),
                                          _record(w_join, joined, "launch_wall_s"),
                                          _record(w_sort, ordered, "launch_wall_s")]}
        stages.delete_outputs([left, right, joined, ordered])
        return out

    def _pilot_pipeline(self, ranks: int, rows: int) -> Dict[str, Any]:
        t0 = time.perf_counter()
        left = self.pilot.call("generate", ranks, LEFT, rows)
        right = self.pilot.call("generate", ranks, RIGHT, rows)
        joined = self.pilot.call("join", ranks, left, right)
        ordered = self.pilot.call("sort", ranks, left)
        results = [f.result() for f in (left, right, joined, ordered)]
        wall = time.perf_counter() - t0
        out = {"wall_s": wall, "t0": time.time() - wall,
               "stages": [_record(float("nan"), res, "task_wall_s") for res in results]}
        stages.delete_outputs(results)
        return out


def _runs(res: StageResult) -> str:
    first = f"{res.op_s:.3f} s"
    return first if len(res.op_runs) < 2 else f"{first} (then {', '.join(f'{t:.3f}' for t in res.op_runs[1:])})"


def _stage_walls(batch: Dict[str, Any]) -> List[str]:
    names = ("generate", "join", "sort")
    walls = [batch["stages"][0]["launch_wall_s"], batch["stages"][2]["launch_wall_s"],
             batch["stages"][3]["launch_wall_s"]]
    return [f"{n} {w:.2f}" for n, w in zip(names, walls, strict=True)]


# -- summary ---------------------------------------------------------------------------------------


def _machine(load_before: Tuple[float, float, float]) -> Dict[str, Any]:
    import pyarrow

    try:
        from mpi4py import MPI

        mpi = " ".join(MPI.Get_library_version().splitlines()[0].split())
    except Exception as err:  # the benchmark ran, so this is informational only
        mpi = f"unknown ({err})"
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "pyarrow": pyarrow.__version__, "mpi": mpi, "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg())}


def _op_summary(cfg: OpConfig) -> Dict[str, Any]:
    def med(records: List[Dict[str, Any]], key: str) -> float:
        return median([r[key] for r in records])

    def later(records: List[Dict[str, Any]]) -> float:
        return median([t for r in records for t in r.get("op_runs", [])[1:]])

    bare, parsl = med(cfg.bare_metal, "op_s"), med(cfg.parsl_rcylon, "op_s")
    bare_warm, parsl_warm = later(cfg.bare_metal), later(cfg.parsl_rcylon)
    return {
        "op": cfg.op, "scalings": cfg.scalings, "ranks": cfg.ranks, "rows": cfg.rows,
        "rows_per_rank": cfg.rows // cfg.ranks,
        "bare_metal_op_s": bare, "parsl_rcylon_op_s": parsl,
        "overhead_s": parsl - bare, "overhead_pct": _pct(parsl, bare),
        # Later runs in the same processes: both warm, so what is left is the pilot's own cost.
        "bare_metal_warm_op_s": bare_warm, "parsl_rcylon_warm_op_s": parsl_warm,
        "warm_overhead_pct": _pct(parsl_warm, bare_warm),
        "bare_metal_read_s": med(cfg.bare_metal, "read_s"), "parsl_rcylon_read_s": med(cfg.parsl_rcylon, "read_s"),
        "bare_metal_write_s": med(cfg.bare_metal, "write_s"),
        "parsl_rcylon_write_s": med(cfg.parsl_rcylon, "write_s"),
        "bare_metal_launch_wall_s": med(cfg.bare_metal, "launch_wall_s"),
        "parsl_rcylon_task_wall_s": med(cfg.parsl_rcylon, "task_wall_s"),
        "raw": {"bare_metal": cfg.bare_metal, "parsl_rcylon": cfg.parsl_rcylon},
    }


def _pct(value: float, base: float) -> float:
    return 100.0 * (value - base) / base if base and not math.isnan(base) else float("nan")


def _pipeline_summary(entry: Dict[str, Any]) -> Dict[str, Any]:
    batch = median([b["wall_s"] for b in entry["batch"]])
    parsl = median([p["wall_s"] for p in entry["parsl_rcylon"]])

    def stage_sum(runs: List[Dict[str, Any]], key: str) -> float:
        return median([sum(s[key] for s in run["stages"]) for run in runs])

    return {
        "ranks": entry["ranks"], "rows_per_table": entry["rows_per_table"],
        "batch_s": batch, "parsl_rcylon_s": parsl, "speedup": batch / parsl if parsl else float("nan"),
        "saved_pct": 100.0 * (batch - parsl) / batch if batch else float("nan"),
        # Where batch loses: time outside the stages' own code (mpiexec, interpreter, imports, MPI_Init).
        "batch_inside_s": stage_sum(entry["batch"], "total_s"),
        "parsl_rcylon_inside_s": stage_sum(entry["parsl_rcylon"], "total_s"),
        "raw": {"batch": entry["batch"], "parsl_rcylon": entry["parsl_rcylon"]},
    }


def summarize(run: PaperRun, load_before: Tuple[float, float, float], elapsed: float) -> Dict[str, Any]:
    """The results document: headline numbers at the top, every raw timing below."""
    ops = [_op_summary(c) for c in run.ops if c.bare_metal and c.parsl_rcylon]
    pipes = [_pipeline_summary(e) for e in run.pipeline if e["batch"] and e["parsl_rcylon"]]
    bare_total = sum(o["bare_metal_op_s"] for o in ops)
    parsl_total = sum(o["parsl_rcylon_op_s"] for o in ops)
    overhead_pct = 100.0 * (parsl_total - bare_total) / bare_total if bare_total else None
    warm = [o for o in ops if not math.isnan(o["bare_metal_warm_op_s"]) and not math.isnan(o["parsl_rcylon_warm_op_s"])]
    bare_warm = sum(o["bare_metal_warm_op_s"] for o in warm)
    warm_pct = 100.0 * (sum(o["parsl_rcylon_warm_op_s"] for o in warm) - bare_warm) / bare_warm if warm else None
    speedups = {str(p["ranks"]): p["speedup"] for p in pipes}
    speedup = min(speedups.values()) if speedups else None
    startup = dict(run.startup)
    launch = {r: median(w) for r, w in run.launch.items()}
    result: Dict[str, Any] = {
        "benchmark": "paper",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # Headline: the pipeline speedup is the smallest over the rank counts; the
        # overhead is over all operation configurations, weighted by their time.
        "speedup_vs_batch": speedup,
        "speedup_vs_batch_by_ranks": speedups,
        "overhead_pct": overhead_pct,
        "overhead_s": (parsl_total - bare_total) / len(ops) if ops else None,
        "warm_overhead_pct": warm_pct,
        "overhead_pct_by_config": {f"{o['op']}/{'+'.join(o['scalings'])}/{o['ranks']}": o["overhead_pct"]
                                   for o in ops},
        "startup_s": startup.get("load_s"),
        "batch_stage_startup_s": launch,
        "targets": TARGETS,
        "targets_met": {
            "speedup_vs_batch": speedup is not None and speedup >= TARGETS["speedup_vs_batch_min"],
            "overhead_pct": overhead_pct is not None and overhead_pct <= TARGETS["overhead_pct_max"],
        },
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(run.o).items()},
        "machine": _machine(load_before),
        "elapsed_s": elapsed,
        "startup": startup,
        "launch_raw_s": run.launch,
        "operations": ops,
        "pipeline": pipes,
    }
    return result


def write_results(result: Dict[str, Any], out: Path, progress: Progress = _print_progress) -> List[Path]:
    """Write ``results.json``, ``results.md`` and the figures into ``out``; return the paths."""
    import paper_report as report

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    paths[1].write_text(report.markdown(result))
    try:
        paths += report.plots(result, out)
    except ImportError as err:
        progress(f"no figures: {err} (pip install matplotlib)")
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def run_paper(options: PaperOptions, progress: Progress = _print_progress) -> Dict[str, Any]:
    """Run the reproduction and write its files; return the results document."""
    result = PaperRun(options, progress).run()
    for path in write_results(result, options.out, progress):
        progress(f"wrote {path}")
    return result


def quick_options(**given: Any) -> PaperOptions:
    """PaperOptions with ``--quick`` defaults for whatever is not given (None)."""
    values = {k: v for k, v in given.items() if v is not None}
    for key, value in QUICK.items():
        values.setdefault(key, value)
    return PaperOptions(quick=True, **values)


# -- command line ----------------------------------------------------------------------------------


def _int_list(text: str) -> Tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _rows(text: str) -> int:
    """``2000000``, ``2M``, ``500K``."""
    t = text.strip().upper().replace("_", "")
    mult = {"K": 10**3, "M": 10**6, "G": 10**9}.get(t[-1:], 1)
    try:
        value = int(float(t.rstrip("KMG")) * mult)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a row count such as 2000000 or 2M, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive row count, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python benchmarks/paper.py``."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/paper.py",
        description="Reproduce the Radical-Cylon paper: bare-metal mpiexec vs parsl_rcylon operation times (join, "
                    "sort; weak and strong scaling) and a generate -> join + sort pipeline, batch jobs vs one pilot.")
    parser.add_argument("--quick", action="store_true",
                        help="250K rows per rank, ranks 1,2, 2 iterations: a few minutes on a laptop "
                             "(explicit options win)")
    parser.add_argument("--out", default="benchmarks/results/paper",
                        help="directory for results.json, results.md and the figures")
    parser.add_argument("--ranks", type=_int_list, default=None, help="rank counts (default 1,2,4; --quick 1,2)")
    parser.add_argument("--rows-per-rank", type=_rows, default=None,
                        help="weak scaling rows per rank per table (default 2M; --quick 250K)")
    parser.add_argument("--strong-rows", type=_rows, default=None,
                        help="strong scaling rows per table (default rows-per-rank x largest rank count)")
    parser.add_argument("--iterations", type=int, default=None, help="measurements per mode (default 3; --quick 2)")
    parser.add_argument("--op-repeats", type=int, default=None,
                        help="runs of the operation inside each measured job/task; the first is reported, later "
                             "ones show what warm processes gain (default 2)")
    parser.add_argument("--ops", default="join,sort", help="operations to measure (join,sort)")
    parser.add_argument("--scaling", default="weak,strong", help="scalings to measure (weak,strong)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the batch vs pilot pipeline")
    parser.add_argument("--run-dir", default="runinfo", help="Parsl run directory (pilot, sandbox, tables)")
    parser.add_argument("--keep-data", action="store_true", help="keep the generated tables")
    hpc = parser.add_argument_group("batch systems", "where the pilot runs and how bare-metal jobs start "
                                                     "(see docs/benchmarks.md)")
    hpc.add_argument("--resource", default=None, help="Radical Pilot resource label (default local.localhost)")
    hpc.add_argument("--project", default=None, help="allocation to charge")
    hpc.add_argument("--queue", default=None, help="batch queue or partition")
    hpc.add_argument("--access-schema", default=None,
                     help="RP access schema, e.g. 'interactive' to run the pilot inside the current allocation")
    hpc.add_argument("--nodes", type=int, default=None, help="pilot nodes (default: what the worker needs)")
    hpc.add_argument("--runtime", type=int, default=None, help="pilot walltime in minutes (default 120)")
    hpc.add_argument("--ranks-per-node", type=int, default=None, help="worker ranks per node")
    hpc.add_argument("--launcher", default=None,
                     help="bare-metal launch command with {ranks}, e.g. 'srun --overlap -n {ranks}' "
                          "(default: mpiexec -n {ranks})")
    return parser


def _num(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the reproduction with ``argv``; return the exit status (2: bad options, 1: the benchmark failed)."""
    args = build_parser().parse_args(argv)
    given = {"out": Path(args.out), "ranks": args.ranks, "rows_per_rank": args.rows_per_rank,
             "strong_rows": args.strong_rows, "iterations": args.iterations, "op_repeats": args.op_repeats,
             "run_dir": Path(args.run_dir),
             "ops": tuple(args.ops.split(",")), "scalings": tuple(args.scaling.split(",")),
             "pipeline": not args.no_pipeline, "keep_data": args.keep_data, "resource": args.resource,
             "project": args.project, "queue": args.queue, "access_schema": args.access_schema, "nodes": args.nodes,
             "runtime": args.runtime, "ranks_per_node": args.ranks_per_node, "launcher": args.launcher}
    try:
        if args.quick:
            options = quick_options(**given)
        else:
            options = PaperOptions(**{k: v for k, v in given.items() if v is not None})
    except BenchError as err:
        print(f"paper.py: error: {err}", file=sys.stderr, flush=True)
        return 2
    try:
        result = run_paper(options)
    except BenchError as err:
        print(f"paper.py: error: benchmark failed: {err}", file=sys.stderr, flush=True)
        return 1
    print(f"speedup vs batch: {_num(result['speedup_vs_batch'], '.2f', 'x')}; "
          f"operation overhead: {_num(result['overhead_pct'], '+.1f', '%')}; "
          f"pilot start-up: {_num(result['startup_s'], '.1f', ' s')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
