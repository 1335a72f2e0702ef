"""Bare-metal and batch stages of benchmarks/paper.py: one pipeline stage as its own ``mpiexec`` job.

    mpiexec -n R python paper_job.py [--warm-up] --data-dir D --result F generate --rows N --tables 0,1
    mpiexec -n R python paper_job.py [--warm-up] [--repeat K] --data-dir D --result F join --left L.pkl --right R.pkl
    mpiexec -n R python paper_job.py [--warm-up] [--repeat K] --data-dir D --result F sort --input T.pkl
    mpiexec -n R python paper_job.py noop

It runs the very functions of :mod:`parsl_rcylon.bench.stages` that the
pilot's tasks run, with a context on ``MPI.COMM_WORLD``: same reads, same
engine, same Parquet output.  Inputs are pickled ``TableRef``/``StageResult``
files (what Parsl would ship to a task); rank 0 pickles the list of
``StageResult`` it produced to ``--result``.  ``noop`` only starts up (imports
and ``MPI_Init``) and exits: the fixed cost every batch stage pays.

Run it by path: it uses the checkout it lives in, and ``import parsl_rcylon``
is light (no Parsl, no Radical Pilot), so a batch stage pays only for what a
bare MPI job needs.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import traceback
import uuid
from typing import Any, List, Optional, Sequence


def _use_this_checkout() -> None:
    """Put the checkout this script lives in first on ``sys.path`` (run by path, ``sys.path[0]`` is benchmarks/)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)


if __name__ == "__main__":
    _use_this_checkout()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line of one bare-metal job."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="directory the output tables go to")
    parser.add_argument("--result", help="rank 0 pickles the list of StageResult here")
    parser.add_argument("--warm-up", action="store_true",
                        help="run a small untimed join and sort first (first-call imports)")
    parser.add_argument("--repeat", type=int, default=1, help="run the join or sort this many times")
    sub = parser.add_subparsers(dest="stage", required=True)
    sub.add_parser("noop")
    gen = sub.add_parser("generate")
    gen.add_argument("--rows", type=int, required=True)
    gen.add_argument("--tables", default="0,1", help="table ids to generate, comma-separated")
    join = sub.add_parser("join")
    join.add_argument("--left", required=True)
    join.add_argument("--right", required=True)
    sort = sub.add_parser("sort")
    sort.add_argument("--input", required=True)
    return parser.parse_args(argv)


def _load(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


def run(args: argparse.Namespace, comm: Any) -> List[Any]:
    """Run the stage on ``comm``; return the StageResults (meaningful on rank 0)."""
    from parsl_rcylon.bench import stages
    from parsl_rcylon.context import CylonContext

    if args.stage == "noop":
        comm.Barrier()
        return []
    # Unique per job and identical on every rank: it names the output directories.
    job = comm.bcast(uuid.uuid4().hex[:12] if comm.Get_rank() == 0 else None, root=0)

    def context(name: str) -> CylonContext:
        return CylonContext(comm, task_id=f"bare-{job}", name=name, data_dir=args.data_dir,
                            scratch_root=args.data_dir)

    if args.warm_up:
        stages.warm_up(context("warm_up"))
    if args.stage == "generate":
        return [stages.generate(context(f"generate{t}"), int(t), args.rows) for t in args.tables.split(",")]
    if args.stage == "join":
        return [stages.join(context("join"), _load(args.left), _load(args.right), repeat=args.repeat)]
    return [stages.sort(context("sort"), _load(args.input), repeat=args.repeat)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point under ``mpiexec``: run, pickle the results on rank 0, abort all ranks on error."""
    args = parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        results = run(args, comm)
    except BaseException:
        # Without an abort the other ranks would wait forever in a collective.
        sys.stderr.write(f"rank {comm.Get_rank()}: {traceback.format_exc()}")
        sys.stderr.flush()
        comm.Abort(1)
        return 1
    if comm.Get_rank() == 0 and args.result:
        tmp = f"{args.result}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(results, f)
        os.replace(tmp, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
