"""Run under ``mpiexec -n 4``: the collective failure cases of publish_result / resolve_arguments.

    scenarios.py DATA_DIR RESULT_JSON

Each scenario runs on every rank; rank 0 writes, per scenario and rank, what
came back or which exception was raised (type and message).  A scenario that
deadlocks makes the launching test time out, which is a failure too.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict

import pyarrow as pa
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tablecheck  # noqa: E402

from parsl_rcylon.context import CylonContext  # noqa: E402
from parsl_rcylon.table import TableRef, publish_result, resolve_arguments  # noqa: E402

WORLD = MPI.COMM_WORLD
RANK = WORLD.Get_rank()


def outcome(fn: Callable[[], Any]) -> Dict[str, Any]:
    try:
        value = fn()
    except Exception as err:
        return {"error": type(err).__name__, "message": str(err)}
    if isinstance(value, TableRef):
        return {"ref": value.path, "rows": value.num_rows, "digest": value.digest}
    return {"value": repr(value)}


def ctx_for(comm, task: str, data_dir: str, name: str = "stage") -> CylonContext:
    return CylonContext(comm, task_id=task, name=name, data_dir=data_dir, options={"row_group_size": 300})


def small(rank: int, value_type=pa.float64()) -> pa.Table:
    return pa.table({"key": pa.array([rank, rank + 10], pa.int64()),
                     "value": pa.array([1.5, None]).cast(value_type)})


def consumer(ctx, t: pa.Table):
    return t


def main() -> None:
    data_dir, out = sys.argv[1], sys.argv[2]
    results: Dict[str, Dict[str, Any]] = {}

    def run(name: str, fn: Callable[[], Any]) -> None:
        results[name] = outcome(fn)
        WORLD.Barrier()

    # Tables on ranks 0 and 1, other values on ranks 2 and 3.
    run("mixed", lambda: publish_result(ctx_for(WORLD, "mixed", data_dir),
                                        small(RANK) if RANK < 2 else 42))
    # Rank 2's "value" column is a string; rank 3 adds a column.
    def schema_case():
        t = small(RANK, pa.string() if RANK == 2 else pa.float64())
        if RANK == 3:
            t = t.append_column("extra", pa.array([1, 2]))
        return publish_result(ctx_for(WORLD, "schema", data_dir), t)
    run("schema", schema_case)
    # Rank 3's function raised: nothing is written, every rank gets None.
    run("failed_rank", lambda: publish_result(ctx_for(WORLD, "failed", data_dir),
                                              None if RANK == 3 else small(RANK), ok=RANK != 3))
    run("plain", lambda: publish_result(ctx_for(WORLD, "plain", data_dir), {"rank": RANK}))

    # Two 2-rank stages writing at the same time, with the same app name and
    # task id (as two runs sharing a data_dir would), and two with distinct ids.
    half = WORLD.Split(RANK // 2, RANK)
    for label, task in (("concurrent_same_id", lambda: "same"), ("concurrent_distinct", lambda: f"d{RANK // 2}")):
        def stage(task=task):
            table = tablecheck.partition(half.Get_rank(), 2, seed=RANK // 2)
            ref = publish_result(ctx_for(half, task(), data_dir), table)
            ref = half.bcast(ref, root=0)
            share = ref.read_share(half.Get_rank(), 2)
            digests = half.allgather(tablecheck.row_hashes(share))
            ok = tablecheck.digest([h for d in digests for h in d]) == tablecheck.table_digest(
                tablecheck.source(2, seed=RANK // 2))
            return {"path": ref.path, "content_ok": ok}
        results[label] = outcome(stage)
        WORLD.Barrier()
    half.Free()

    # A table whose last partition file is gone: every reader refuses, none hangs.
    ref = publish_result(ctx_for(WORLD, "victim", data_dir), tablecheck.partition(RANK, 4))
    ref = WORLD.bcast(ref, root=0)
    if RANK == 0:
        os.unlink(ref.files[3])
    WORLD.Barrier()
    run("missing_file", lambda: resolve_arguments(ctx_for(WORLD, "r1", data_dir), consumer, (ref,), {}))

    # Corrupt a byte inside row group 0 of partition 0: only rank 0's share
    # reads it; rank 0 names the file, the others name rank 0.
    ref = publish_result(ctx_for(WORLD, "victim2", data_dir), tablecheck.partition(RANK, 4))
    ref = WORLD.bcast(ref, root=0)
    if RANK == 0:
        seg = ref.manifest.partitions[0].segments[0]
        with open(ref.files[0], "r+b") as f:
            f.seek(seg.offset + seg.length // 2)
            byte = f.read(1)
            f.seek(seg.offset + seg.length // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
    WORLD.Barrier()
    run("corrupt_share", lambda: resolve_arguments(ctx_for(WORLD, "r2", data_dir), consumer, (ref,), {}))

    gathered = WORLD.gather(results, root=0)
    if RANK == 0:
        by_scenario = {name: [g[name] for g in gathered] for name in gathered[0]}
        with open(out, "w") as f:
            json.dump(by_scenario, f, indent=1)


if __name__ == "__main__":
    main()
