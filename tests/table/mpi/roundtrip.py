"""Run under ``mpiexec -n N``: write a table with publish_result, or read shares with resolve_arguments.

    roundtrip.py write DATA_DIR REF_PICKLE [--kind full|empty] [--format parquet|ipc] [--task T]
                       [--sharing private|group] [--fsync on|off]
    roundtrip.py read REF_PICKLE RESULT_JSON

``write``: rank r publishes ``tablecheck.partition(r, N)``; rank 0 pickles the TableRef.
``read``: every rank resolves ``(ref, ref)`` for ``fn(ctx, share: pa.Table, handle: TableRef)``
and rank 0 writes the share sizes, the union's row digest and its schema to RESULT_JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys

import pyarrow as pa
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tablecheck  # noqa: E402

from parsl_rcylon.context import CylonContext  # noqa: E402
from parsl_rcylon.table import TableRef, publish_result, resolve_arguments  # noqa: E402


def write(args: argparse.Namespace) -> None:
    comm = MPI.COMM_WORLD
    ctx = CylonContext(comm, task_id=args.task, name="writer", data_dir=args.data_dir,
                       options={"format": args.format, "row_group_size": 400, "sharing": args.sharing,
                                "fsync": {"on": True, "off": False, None: None}[args.fsync]})
    part = tablecheck.partition(ctx.rank, ctx.size, kind=args.kind)
    ref = publish_result(ctx, part, ok=True)
    if ctx.rank == 0:
        assert isinstance(ref, TableRef), ref
        with open(args.ref, "wb") as f:
            pickle.dump(ref, f)
    else:
        assert ref is None, ref


def consumer(ctx, share: pa.Table, handle: TableRef):
    return share, handle


def read(args: argparse.Namespace) -> None:
    comm = MPI.COMM_WORLD
    with open(args.ref, "rb") as f:
        ref = pickle.load(f)
    ctx = CylonContext(comm, task_id="reader", name="reader", data_dir=None, options={})
    new_args, _ = resolve_arguments(ctx, consumer, (ref, ref), {})
    share, handle = new_args
    assert isinstance(share, pa.Table) and handle is ref
    ok_schema = share.schema.equals(ref.schema, check_metadata=True)
    rows = comm.gather(tablecheck.row_hashes(share), root=0)
    schemas_ok = comm.gather(ok_schema, root=0)
    if ctx.rank == 0:
        result = {
            "share_rows": [len(r) for r in rows],
            "digest": tablecheck.digest([h for r in rows for h in r]),
            "schema_exact": all(schemas_ok),
            "num_rows": ref.num_rows,
            "num_partitions": ref.num_partitions,
        }
        with open(args.result, "w") as f:
            json.dump(result, f)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("data_dir")
    w.add_argument("ref")
    w.add_argument("--kind", default="full")
    w.add_argument("--format", default="parquet")
    w.add_argument("--task", default="t1")
    w.add_argument("--sharing", default="private")
    w.add_argument("--fsync", choices=["on", "off"], default=None, help="default: the option's default")
    r = sub.add_parser("read")
    r.add_argument("ref")
    r.add_argument("result")
    args = parser.parse_args()
    write(args) if args.cmd == "write" else read(args)


if __name__ == "__main__":
    main()
