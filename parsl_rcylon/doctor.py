"""The installation check behind ``parsl-rcylon doctor``: MPI, mpi4py, Radical Pilot, pyarrow, a local pilot.

:class:`Doctor` runs the checks in order and hands each verdict to a callback
as it comes (the command prints them); a check that crashes is a failed
check, never a crashed doctor.  :func:`smoke_test` is the last check: a local
pilot and one 2-rank ``cylon_app``.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Tuple

logger = logging.getLogger(__name__)

#: Oldest pyarrow the table hand-off is written for (setup.cfg's floor).
MIN_PYARROW = (15, 0)


def _print(message: str) -> None:
    print(message, flush=True)


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
        Receives each line (default: printed).
    """

    run_dir: Path
    pilot: bool = True
    say: Callable[[str], None] = _print
    checks: List[Check] = field(default_factory=list)

    def run(self) -> bool:
        """Run every check; return whether all passed."""
        steps = [self.check_python, self.check_mpiexec, self.check_mpi4py, self.check_mpi_launch,
                 self.check_radical, self.check_parsl, self.check_pyarrow, self.check_kernels, self.check_run_dir,
                 self.check_pilot]
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

    def check_kernels(self, check: Check) -> None:
        from .engine.kernels import active_kernels, kernel_lines

        # Informational, except that a missing DuckDB (a requirement) fails: the join would be slower.
        check.fix = "pip install duckdb (the join kernel; Acero is about 1.8x slower)"
        join = active_kernels()["join"]
        check.ok = join["kernel"] == "duckdb" or "join_kernel=" in join["why"]
        check.detail = "\n     ".join(kernel_lines())

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
