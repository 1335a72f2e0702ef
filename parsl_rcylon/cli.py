"""The parsl-rcylon command: installation checks, run-directory cleanup, a pilot that stays up.

    parsl-rcylon doctor [--run-dir DIR] [--no-pilot]
    parsl-rcylon clean [--run-dir DIR] [--data-dir DIR] [--older-than HOURS] [--yes] [--force]
    parsl-rcylon up [--run-dir DIR] [--worker-ranks N] [--idle-timeout MINUTES]
    parsl-rcylon down [--run-dir DIR]

Also ``python -m parsl_rcylon ...``.  Every command prints a line per step as
it goes; ``doctor`` exits non-zero when a check fails, ``clean`` only lists
unless given ``--yes``.  The work is done by library modules
(:mod:`~parsl_rcylon.doctor`, :mod:`~parsl_rcylon.runs`); this module parses
the command line and calls them.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

logger = logging.getLogger(__name__)

#: Where ``up`` starts a pilot and ``down`` looks for it unless told otherwise.
UP_RUN_DIR = "runinfo/pilot"


class CliError(Exception):
    """A command cannot run as asked (bad arguments, missing directory)."""


def _say(message: str) -> None:
    print(message, flush=True)


# -- doctor -------------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the installation; exit status 1 if any check failed."""
    from .doctor import Doctor

    _say(f"parsl-rcylon doctor ({'with' if not args.no_pilot else 'without'} a local pilot)")
    doctor = Doctor(run_dir=Path(args.run_dir), pilot=not args.no_pilot, say=_say)
    return 0 if doctor.run() else 1


# -- clean --------------------------------------------------------------------------------------


def cmd_clean(args: argparse.Namespace) -> int:
    """List (and with ``--yes`` end and remove) leftover processes and run directories."""
    from .runs import RunDirError, clean

    try:
        clean(Path(args.run_dir), older_than_hours=args.older_than, data_dirs=[Path(d) for d in args.data_dir or []],
              remove=args.yes, force=args.force, say=_say)
    except RunDirError as err:
        raise CliError(str(err)) from err
    return 0


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
    from .runtime.attach import AttachError
    from .serving import down

    t0 = time.monotonic()
    try:
        info = down(args.run_dir)
    except AttachError as err:
        raise CliError(str(err)) from err
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
