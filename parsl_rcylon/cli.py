"""The parsl-rcylon command: benchmarks, installation checks, run-directory cleanup.

    parsl-rcylon bench paper [--quick] [--out DIR] [--ranks 1,2,4] [--rows-per-rank N] [--iterations K]
    parsl-rcylon doctor [--run-dir DIR] [--no-pilot]
    parsl-rcylon clean [--run-dir DIR] [--data-dir DIR] [--older-than HOURS] [--yes] [--force]
    parsl-rcylon up [--run-dir DIR] [--worker-ranks N] [--idle-timeout MINUTES]
    parsl-rcylon down [--run-dir DIR]

Also ``python -m parsl_rcylon ...``.  Every command prints a line per step as
it goes; ``doctor`` exits non-zero when a check fails, ``clean`` only lists
unless given ``--yes``.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

#: Oldest pyarrow the table hand-off is written for (setup.cfg's floor).
MIN_PYARROW = (15, 0)
#: Where ``up`` starts a pilot and ``down`` looks for it unless told otherwise.
UP_RUN_DIR = "runinfo/pilot"


class CliError(Exception):
    """A command cannot run as asked (bad arguments, missing directory)."""


def _say(message: str) -> None:
    print(message, flush=True)


# -- bench --------------------------------------------------------------------------------------


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


def cmd_bench_paper(args: argparse.Namespace) -> int:
    """Run the Radical-Cylon paper reproduction and write its results."""
    from .bench import paper

    given = {"out": Path(args.out), "ranks": args.ranks, "rows_per_rank": args.rows_per_rank,
             "strong_rows": args.strong_rows, "iterations": args.iterations, "op_repeats": args.op_repeats,
             "run_dir": Path(args.run_dir),
             "ops": tuple(args.ops.split(",")), "scalings": tuple(args.scaling.split(",")),
             "pipeline": not args.no_pipeline, "keep_data": args.keep_data, "resource": args.resource,
             "project": args.project, "queue": args.queue, "access_schema": args.access_schema, "nodes": args.nodes,
             "runtime": args.runtime, "ranks_per_node": args.ranks_per_node, "launcher": args.launcher}
    try:
        if args.quick:
            options = paper.quick_options(**given)
        else:
            options = paper.PaperOptions(**{k: v for k, v in given.items() if v is not None})
    except paper.BenchError as err:
        raise CliError(str(err)) from err
    try:
        result = paper.run_paper(options)
    except paper.BenchError as err:
        raise CliError(f"benchmark failed: {err}") from err
    _say(f"speedup vs batch: {_num(result['speedup_vs_batch'], '.2f', 'x')}; "
         f"operation overhead: {_num(result['overhead_pct'], '+.1f', '%')}; "
         f"pilot start-up: {_num(result['startup_s'], '.1f', ' s')}")
    return 0


def _num(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


# -- doctor -------------------------------------------------------------------------------------


@dataclass
class Check:
    """One doctor check: its name, verdict, what was found and how to fix a failure."""

    name: str
    ok: bool = False
    detail: str = ""
    fix: str = ""
    skipped: bool = False

    def line(self) -> str:
        """``OK   name: detail`` or ``FAIL name: detail`` plus the fix on the next line."""
        verdict = "SKIP" if self.skipped else ("OK  " if self.ok else "FAIL")
        text = f"{verdict} {self.name}: {self.detail}"
        if not self.ok and not self.skipped and self.fix:
            text += f"\n     fix: {self.fix}"
        return text


@dataclass
class Doctor:
    """Runs the installation checks in order, printing each verdict as it comes.

    Parameters
    ----------
    run_dir : Path
        Directory the pilot and its files would use (checked for writing).
    pilot : bool
        Start a local pilot and run a 2-rank task (about 30 s).
    say : callable
        Receives each line.
    """

    run_dir: Path
    pilot: bool = True
    say: Callable[[str], None] = _say
    checks: List[Check] = field(default_factory=list)

    def run(self) -> bool:
        """Run every check; return whether all passed."""
        steps = [self.check_python, self.check_mpiexec, self.check_mpi4py, self.check_mpi_launch,
                 self.check_radical, self.check_parsl, self.check_pyarrow, self.check_run_dir, self.check_pilot]
        for step in steps:
            check = Check(step.__name__[len("check_"):].replace("_", " "))
            try:
                step(check)
            except Exception as err:  # a check that crashed is a failed check, not a crashed doctor
                check.ok = False
                check.detail = f"{type(err).__name__}: {err}"
            self.checks.append(check)
            self.say(check.line())
        failed = [c for c in self.checks if not c.ok and not c.skipped]
        skipped = [c for c in self.checks if c.skipped]
        self.say(f"{len(self.checks) - len(failed) - len(skipped)} of {len(self.checks)} checks passed"
                 + (f", {len(skipped)} skipped" if skipped else "")
                 + (f"; failed: {', '.join(c.name for c in failed)}" if failed else ""))
        return not failed

    def _failed(self, name: str) -> bool:
        return any(c.name == name and not c.ok for c in self.checks)

    def check_python(self, check: Check) -> None:
        venv = sys.prefix != sys.base_prefix
        check.ok = sys.version_info >= (3, 10)
        check.detail = f"{sys.executable} (Python {sys.version.split()[0]}{', virtualenv' if venv else ''})"
        check.fix = "use Python 3.10 or newer"

    def check_mpiexec(self, check: Check) -> None:
        from .runtime.client.config import mpi_bin_dir

        bindir = mpi_bin_dir()
        check.fix = ("install an MPI: `pip install mpich` (puts mpiexec next to this interpreter), or load "
                     "your system's MPI module so that mpiexec is on PATH")
        if bindir is None:
            check.detail = "no mpiexec next to the interpreter or on PATH"
            return
        mpiexec = str(Path(bindir) / "mpiexec")
        proc = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=60)
        text = (proc.stdout + proc.stderr).strip()
        self.mpiexec = mpiexec
        self.mpiexec_flavour = _mpi_flavour(text)
        version = next((" ".join(ln.split()) for ln in text.splitlines() if "version" in ln.lower()), text[:80])
        check.ok = proc.returncode == 0
        check.detail = f"{mpiexec} ({self.mpiexec_flavour}; {version})"

    def check_mpi4py(self, check: Check) -> None:
        check.fix = "pip install mpi4py (built against the same MPI as mpiexec)"
        import mpi4py
        from mpi4py import MPI

        library = " ".join(MPI.Get_library_version().splitlines()[0].split())
        self.library_flavour = _mpi_flavour(library)
        check.ok = True
        check.detail = f"mpi4py {mpi4py.__version__}, MPI library: {library}"
        launcher = getattr(self, "mpiexec_flavour", None)
        if launcher and self.library_flavour != "unknown" and launcher != self.library_flavour:
            check.ok = False
            check.detail += f", but mpiexec is {launcher}"
            check.fix = ("mpiexec and mpi4py's MPI library must come from the same MPI: put the matching "
                         "mpiexec first on PATH, or reinstall mpi4py against it "
                         "(`pip install --no-binary mpi4py --force-reinstall mpi4py`)")

    def check_mpi_launch(self, check: Check) -> None:
        check.fix = ("mpiexec does not start mpi4py processes in one job: mpiexec and mpi4py must come from "
                     "the same MPI (see the checks above)")
        if not hasattr(self, "mpiexec"):
            check.skipped, check.detail = True, "no mpiexec"
            return
        # Rank 0 alone prints (two ranks' lines interleave); two singletons from a
        # mismatched MPI would each print "1 1".
        code = ("from mpi4py import MPI; c = MPI.COMM_WORLD; n = c.allreduce(1)\n"
                "if c.Get_rank() == 0: print(c.Get_size(), n)")
        proc = subprocess.run([self.mpiexec, "-n", "2", sys.executable, "-c", code], capture_output=True,
                              text=True, timeout=120)
        outputs = proc.stdout.split()
        check.ok = proc.returncode == 0 and outputs == ["2", "2"]
        check.detail = ("mpiexec -n 2 python: 2 ranks in one communicator" if check.ok else
                        f"exit {proc.returncode}, output {proc.stdout.strip()!r} {proc.stderr.strip()[-300:]!r}")

    def check_radical(self, check: Check) -> None:
        from .runtime.client.config import SUPPORTED_RP, check_radical_version

        low, high = SUPPORTED_RP
        check.fix = (f"pip install 'radical.pilot>={low[0]}.{low[1]},<{high[0]}.{high[1]}' "
                     "(the release range parsl_rcylon is tested with)")
        try:
            version = check_radical_version()
        except ImportError as err:
            check.detail = f"radical.pilot is not importable: {err}"
            return
        except Exception as err:
            check.detail = str(err).split(";")[0]
            return
        check.ok = True
        check.detail = f"radical.pilot {version} (supported: >={low[0]}.{low[1]},<{high[0]}.{high[1]})"

    def check_parsl(self, check: Check) -> None:
        check.fix = "pip install parsl"
        import parsl

        check.ok = True
        check.detail = f"parsl {parsl.__version__}"

    def check_pyarrow(self, check: Check) -> None:
        check.fix = f"pip install 'pyarrow>={MIN_PYARROW[0]}'"
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - the hand-off needs the Parquet module too

        version = tuple(int(p) for p in pyarrow.__version__.split(".")[:2])
        check.ok = version >= MIN_PYARROW
        check.detail = f"pyarrow {pyarrow.__version__} with Parquet"

    def check_run_dir(self, check: Check) -> None:
        target = self.run_dir.resolve()
        check.fix = f"choose a writable directory with --run-dir (or fix the permissions of {target})"
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".doctor-") as f:
            f.write(b"x" * 4096)
            f.flush()
        free = shutil.disk_usage(target).free
        check.ok = True
        check.detail = f"{target} is writable ({free / 2**30:.0f} GiB free)"

    def check_pilot(self, check: Check) -> None:
        if not self.pilot:
            check.skipped, check.detail = True, "--no-pilot given"
            return
        needed = ("mpiexec", "mpi4py", "mpi launch", "radical", "parsl", "run dir")
        if any(self._failed(n) for n in needed):
            check.skipped, check.detail = True, "fix the failures above first"
            return
        check.fix = ("read the executor's logs under the run directory (`<run_dir>/NNN/doctor/`); then run "
                     "`parsl-rcylon clean --run-dir DIR --yes` to end anything it left behind")
        check.ok, check.detail = smoke_test(self.run_dir)


def _mpi_flavour(text: str) -> str:
    low = text.lower()
    if "open mpi" in low or "openrte" in low or "open-mpi" in low:
        return "Open MPI"
    if "mpich" in low or "hydra" in low:
        return "MPICH"
    if "intel" in low:
        return "Intel MPI"
    return "unknown"


def _smoke(ctx: Any) -> Tuple[int, int]:
    # Module level, so that the workers import it rather than unpickle code.
    return ctx.comm.allreduce(ctx.rank + 1), ctx.size


def smoke_test(run_dir: Path, timeout: float = 240.0) -> Tuple[bool, str]:
    """Start a local pilot, run a 2-rank ``cylon_app``, shut down; return (ok, what happened)."""
    import parsl

    from . import RadicalCylonExecutor, cylon_app

    smoke = cylon_app(_smoke, ranks=2)
    executor = RadicalCylonExecutor(label="doctor", start_timeout=timeout)
    t0 = time.perf_counter()
    dfk = None
    try:
        dfk = parsl.load(parsl.Config(executors=[executor], run_dir=str(run_dir), strategy="none",
                                      initialize_logging=True))
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        value = smoke().result(timeout=120)
        task = time.perf_counter() - t1
    finally:
        if dfk is not None:
            dfk.cleanup()
        parsl.clear()
    ok = value == (3, 2)
    return ok, (f"local pilot started in {started:.1f} s, 2-rank task {task * 1e3:.0f} ms, returned {value}, "
                f"shut down in {executor.timings.get('shutdown', float('nan')):.1f} s (session {executor.session_id})")


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the installation; exit status 1 if any check failed."""
    _say(f"parsl-rcylon doctor ({'with' if not args.no_pilot else 'without'} a local pilot)")
    doctor = Doctor(run_dir=Path(args.run_dir), pilot=not args.no_pilot)
    return 0 if doctor.run() else 1


# -- clean --------------------------------------------------------------------------------------


@dataclass
class RunDir:
    """One Parsl run directory (``runinfo/NNN``) that holds Radical Pilot sessions."""

    path: Path
    sessions: List[str]
    age_hours: float
    nbytes: int
    processes: List[Any] = field(default_factory=list)
    clients: List[int] = field(default_factory=list)


def _newest_mtime(path: Path, limit: int = 20000) -> float:
    """The newest modification time under ``path`` (a live run keeps writing its logs)."""
    newest = path.stat().st_mtime
    for count, (root, dirs, files) in enumerate(os.walk(path)):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                continue
        if count > limit:
            break
    return newest


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def find_runs(run_dir: Path, older_than_hours: float = 0.0) -> List[RunDir]:
    """Run directories under ``run_dir`` that hold Radical Pilot sessions.

    ``run_dir`` is a Parsl run directory (``runinfo``, holding ``000``, ``001``,
    ...) or one of its numbered directories.  Only runs whose newest file is
    older than ``older_than_hours`` are returned.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CliError(f"{run_dir} is not a directory")
    from .runtime.layout import run_sessions

    candidates = [run_dir] + sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.is_symlink())
    now = time.time()
    runs = []
    for cand in candidates:
        sessions = run_sessions(cand)
        if not sessions:
            continue
        age = (now - _newest_mtime(cand)) / 3600.0
        if age < older_than_hours:
            continue
        runs.append(RunDir(cand, sessions, age, _size(cand)))
    return runs


def _clients(path: Path, session_pids: set) -> List[int]:
    """PIDs of this user's other processes with a file open under ``path``: a workflow still running there.

    A live Parsl client writes its log and Radical Pilot's client-side
    profiles under the run directory; its session's own processes are
    excluded, they are what ``clean`` is for.
    """
    import psutil

    prefix = str(path.resolve()) + os.sep
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid() or proc.pid in session_pids or not _same_user(proc):
            continue
        try:
            if any(f.path.startswith(prefix) for f in proc.open_files()):
                found.append(proc.pid)
        except Exception:  # vanished or not ours to inspect
            continue
    return found


def _same_user(proc: Any) -> bool:
    try:
        return proc.uids().real == os.getuid()
    except Exception:  # vanished, or no permission to look: not ours to end
        return False


def cmd_clean(args: argparse.Namespace) -> int:
    """List (and with ``--yes`` end and remove) leftover processes and run directories."""
    from .runtime.processes import end_processes, session_processes

    run_dir = Path(args.run_dir)
    if not run_dir.exists():
        _say(f"{run_dir}: nothing to clean (no such directory)")
        return 0
    runs = find_runs(run_dir, args.older_than)
    if not runs:
        _say(f"{run_dir}: no run directory with a Radical Pilot session"
             + (f" older than {args.older_than:g} h" if args.older_than else ""))
        _clean_tables([], args)
        return 0
    for run in runs:
        for sid in run.sessions:
            run.processes += [p for p in session_processes(sid) if _same_user(p)]
        run.clients = _clients(run.path, {p.pid for p in run.processes})
        _say(f"{run.path}: sessions {', '.join(run.sessions)}; last written {run.age_hours:.1f} h ago; "
             f"{run.nbytes / 2**20:.1f} MiB; {len(run.processes)} live process(es)")
        for proc in run.processes:
            _say(f"    pid {proc.pid}: {_describe_process(proc)}")
        if run.clients:
            _say(f"    in use by pid {', '.join(str(p) for p in run.clients)} (a workflow still running?): "
                 + ("--force given, cleaning it anyway" if args.force else "skipped; --force cleans it anyway"))
    in_use = [r for r in runs if r.clients and not args.force]
    _clean_tables(in_use, args)
    runs = [r for r in runs if args.force or not r.clients]
    total_procs = sum(len(r.processes) for r in runs)
    total = sum(r.nbytes for r in runs)
    if not args.yes:
        _say(f"would end {total_procs} process(es) and remove {len(runs)} run "
             f"director{'y' if len(runs) == 1 else 'ies'}, {total / 2**20:.1f} MiB; run again with --yes to do it")
        return 0
    for run in runs:
        if run.processes:
            ended = end_processes(run.processes)
            _say(f"ended {len(ended)} process(es) of {run.path.name}: {', '.join(str(p) for p in ended)}")
        shutil.rmtree(run.path, ignore_errors=True)
        _say(f"removed {run.path}" if not run.path.exists() else f"could not remove all of {run.path}")
    return 0


def _clean_tables(runs: List[RunDir], args: argparse.Namespace) -> None:
    """Leftovers of dead table writers in runs that stay (in use) and in ``--data-dir`` directories.

    Only what a certainly dead writer left goes: temporary files, uncommitted
    table directories, scratch directories (``tableio.cleanup``).
    """
    from .tableio.cleanup import remove_stale_scratch, remove_unfinished

    data_dirs = [Path(d) for d in args.data_dir or []]
    scratch_dirs = []
    for run in runs:
        for executor_dir in (p for p in run.path.iterdir() if p.is_dir() and not p.is_symlink()):
            data_dirs += [executor_dir / "data"] if (executor_dir / "data").is_dir() else []
            scratch_dirs += [executor_dir / "scratch"] if (executor_dir / "scratch").is_dir() else []
    if not data_dirs and not scratch_dirs:
        return
    if not args.yes:
        _say("would remove what dead table writers left in " + ", ".join(str(d) for d in data_dirs + scratch_dirs))
        return
    for path in data_dirs + scratch_dirs:
        clean = remove_unfinished if path in data_dirs else remove_stale_scratch
        report = clean(str(path), older_than=max(args.older_than, 1.0) * 3600)
        _say(f"{path}: removed {len(report.removed)} leftover(s) of dead writers"
             + (f", kept {len(report.kept)} of writers that may still run" if report.kept else ""))


def _describe_process(proc: Any) -> str:
    try:
        # Renamed RP components pad their titles with spaces.
        cmd = " ".join(" ".join(proc.cmdline()).split()) or proc.name()
    except Exception:
        cmd = "?"
    return cmd if len(cmd) <= 160 else cmd[:157] + "..."


# -- up / down ------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    """Start a pilot that scripts attach to, print where it is, and return leaving it running."""
    from .runtime.attach import AttachError
    from .serving import up

    options = {"label": args.label}
    if args.worker_ranks:
        options["worker_ranks"] = args.worker_ranks
    _say(f"starting a pilot in {Path(args.run_dir).resolve()} ...")
    t0 = time.monotonic()
    try:
        info = up(args.run_dir, options, idle_timeout=args.idle_timeout * 60)
    except AttachError as err:
        raise CliError(str(err)) from err
    ranks = ", ".join(f"{p['name']}: {p['workers']} x {p['ranks']} ranks" for p in info.pools)
    _say(f"pilot up in {time.monotonic() - t0:.1f} s (session {info.session}, server pid {info.pid}; {ranks})\n"
         f"  attach:  RadicalCylonExecutor(attach={info.run_dir!r})\n"
         f"  stop:    parsl-rcylon down --run-dir {info.run_dir}\n"
         f"  it ends by itself after {args.idle_timeout:g} min with no script attached")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """End the pilot ``up`` started, and wait until its processes are gone."""
    from .serving import down

    t0 = time.monotonic()
    info = down(args.run_dir)
    if info is None:
        _say(f"no pilot is up at {Path(args.run_dir).resolve()}")
        return 1
    _say(f"pilot {info.session} ended in {time.monotonic() - t0:.1f} s")
    return 0


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``parsl-rcylon``."""
    parser = argparse.ArgumentParser(prog="parsl-rcylon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="reproducible benchmarks")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    paper = bench_sub.add_parser("paper", help="reproduce the Radical-Cylon paper: overhead and pipeline speedup",
                                 description="Bare-metal mpiexec vs parsl_rcylon operation times (join, sort; "
                                             "weak and strong scaling) and a generate -> join + sort pipeline, "
                                             "batch jobs vs one pilot.")
    paper.add_argument("--quick", action="store_true",
                       help="250K rows per rank, ranks 1,2, 2 iterations: a few minutes on a laptop "
                            "(explicit options win)")
    paper.add_argument("--out", default="benchmarks/results/paper", help="directory for results.json, results.md "
                                                                         "and the figures")
    paper.add_argument("--ranks", type=_int_list, default=None, help="rank counts (default 1,2,4; --quick 1,2)")
    paper.add_argument("--rows-per-rank", type=_rows, default=None,
                       help="weak scaling rows per rank per table (default 2M; --quick 250K)")
    paper.add_argument("--strong-rows", type=_rows, default=None,
                       help="strong scaling rows per table (default rows-per-rank x largest rank count)")
    paper.add_argument("--iterations", type=int, default=None, help="measurements per mode (default 3; --quick 2)")
    paper.add_argument("--op-repeats", type=int, default=None,
                       help="runs of the operation inside each measured job/task; the first is reported, later "
                            "ones show what warm processes gain (default 2)")
    paper.add_argument("--ops", default="join,sort", help="operations to measure (join,sort)")
    paper.add_argument("--scaling", default="weak,strong", help="scalings to measure (weak,strong)")
    paper.add_argument("--no-pipeline", action="store_true", help="skip the batch vs pilot pipeline")
    paper.add_argument("--run-dir", default="runinfo", help="Parsl run directory (pilot, sandbox, tables)")
    paper.add_argument("--keep-data", action="store_true", help="keep the generated tables")
    hpc = paper.add_argument_group("batch systems", "where the pilot runs and how bare-metal jobs start "
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
    paper.set_defaults(func=cmd_bench_paper)

    doctor = sub.add_parser("doctor", help="check MPI, mpi4py, Radical Pilot, pyarrow and a local pilot")
    doctor.add_argument("--run-dir", default="runinfo", help="run directory to check and to start the pilot in")
    doctor.add_argument("--no-pilot", action="store_true", help="skip the local pilot smoke test")
    doctor.set_defaults(func=cmd_doctor)

    clean = sub.add_parser("clean", help="end leftover pilot processes and remove old run directories")
    clean.add_argument("--run-dir", default="runinfo", help="Parsl run directory to clean (default runinfo)")
    clean.add_argument("--older-than", type=float, default=0.0, metavar="HOURS",
                       help="only runs whose newest file is older than this (default 0: all)")
    clean.add_argument("--yes", action="store_true", help="do it; without this only list")
    clean.add_argument("--data-dir", action="append", metavar="DIR",
                       help="also remove what dead writers left in this table directory (repeatable)")
    clean.add_argument("--force", action="store_true",
                       help="also clean runs that another process of yours still has files open in")
    clean.set_defaults(func=cmd_clean)

    up = sub.add_parser("up", help="start a pilot that scripts attach to (notebooks, edit-run loops)",
                        description="Start a local pilot with its warm workers and return, leaving it running; "
                                    "executors made with attach=RUN_DIR use it at once.")
    up.add_argument("--run-dir", default=UP_RUN_DIR, help=f"where the pilot lives (default {UP_RUN_DIR})")
    up.add_argument("--label", default="rcylon", help="executor label of the pilot")
    up.add_argument("--worker-ranks", type=int, default=None, help="ranks of the default worker")
    up.add_argument("--idle-timeout", type=float, default=30.0, metavar="MINUTES",
                    help="end the pilot after this long with no script attached and no task (default 30)")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="end the pilot `up` started")
    down.add_argument("--run-dir", default=UP_RUN_DIR, help=f"the pilot's run directory (default {UP_RUN_DIR})")
    down.set_defaults(func=cmd_down)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``parsl-rcylon`` with ``argv``; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        # Radical Pilot warns (and risks deadlocks at fork) when the root logger
        # has handlers before it is imported: configure logging only when asked.
        import radical.pilot  # noqa: F401

        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"parsl-rcylon: error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("parsl-rcylon: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
