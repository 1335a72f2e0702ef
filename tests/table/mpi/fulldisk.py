"""Run under ``mpiexec -n 2`` with MOUNT on a small, empty filesystem: a full disk commits nothing.

    fulldisk.py MOUNT RESULT_JSON

Scenarios, each on every rank, each starting from an empty filesystem:

* ``partitions``, ``partitions_ipc``: the ranks' partitions do not fit;
* ``manifest``: the partitions fit exactly and the manifest does not (the
  free space is set with a filler file from the sizes of a first, successful
  write of the same table);
* ``manifest_alone`` (rank 0): ``Manifest.write`` into a full filesystem.

Rank 0 writes, per scenario, what each rank raised and every path left on
the filesystem afterwards (directories and files, filler excluded).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

import numpy as np
import pyarrow as pa
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tablecheck import SelfComm  # noqa: E402

from parsl_rcylon.context import CylonContext  # noqa: E402
from parsl_rcylon.table import TableRef, publish_result  # noqa: E402
from parsl_rcylon.tableio.manifest import Manifest  # noqa: E402

WORLD = MPI.COMM_WORLD
RANK = WORLD.Get_rank()
PAGE = os.sysconf("SC_PAGE_SIZE")


def table(rows: int) -> pa.Table:
    # Random floats do not compress: the file is about 8 bytes a row.
    rng = np.random.default_rng(RANK)
    return pa.table({"key": np.arange(rows, dtype=np.int64), "value": rng.random(rows)})


def publish(data_dir: str, task: str, rows: int, fmt: str = "parquet") -> Dict[str, Any]:
    ctx = CylonContext(WORLD, task_id=task, name="full", data_dir=data_dir, options={"format": fmt})
    try:
        ref = publish_result(ctx, table(rows))
    except Exception as err:
        return {"error": type(err).__name__, "message": str(err)}
    return {"ref": ref.path if isinstance(ref, TableRef) else None, "files": ref.files if ref else None}


def leftovers(mount: str) -> List[str]:
    found = []
    for root, dirs, files in os.walk(mount):
        for name in dirs + files:
            path = os.path.join(root, name)
            if path != os.path.join(mount, "filler"):
                found.append(os.path.relpath(path, mount))
    return sorted(found)


def fill(path: str, nbytes: int) -> None:
    """A file of ``nbytes`` real (not sparse) bytes; with ``nbytes < 0``, as many as fit."""
    block = b"\xa5" * (1 << 16)
    with open(path, "wb", buffering=0) as f:
        if nbytes >= 0:
            while nbytes > 0:
                nbytes -= f.write(block[:min(len(block), nbytes)])
            return
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        # The last partial block: byte by byte until nothing fits.
        try:
            while True:
                f.write(b"\xa5" * 512)
        except OSError:
            pass


def free_bytes(mount: str) -> int:
    st = os.statvfs(mount)
    return st.f_bavail * st.f_frsize


def main() -> None:
    mount, out = sys.argv[1], sys.argv[2]
    data_dir = os.path.join(mount, "data")
    results: Dict[str, Any] = {"free_at_start": free_bytes(mount)}

    # 1. Partitions larger than the whole filesystem (two ranks, 6 MB each), in both formats
    # (pyarrow removes a Parquet file it fails to write; the IPC writer leaves it to us).
    for label, fmt in (("partitions", "parquet"), ("partitions_ipc", "ipc")):
        outcome = publish(data_dir, f"big{fmt}", rows=400_000, fmt=fmt)
        WORLD.Barrier()
        results[label] = {"outcomes": WORLD.gather(outcome, root=0), "left": leftovers(mount)}
        WORLD.Barrier()

    # 2. Partitions that fit exactly, and no room for the manifest.
    first = publish(data_dir, "probe", rows=20_000)
    sizes = WORLD.bcast([os.path.getsize(f) for f in first["files"]] if RANK == 0 else None, root=0)
    WORLD.Barrier()
    if RANK == 0:
        import shutil

        shutil.rmtree(first["ref"])
        pages = sum(-(-s // PAGE) for s in sizes)
        fill(os.path.join(mount, "filler"), free_bytes(mount) - pages * PAGE)
    WORLD.Barrier()
    outcome = publish(data_dir, "tight", rows=20_000)
    WORLD.Barrier()
    results["manifest"] = {"outcomes": WORLD.gather(outcome, root=0), "left": leftovers(mount),
                           "partition_bytes": sizes}
    WORLD.Barrier()

    # 3. Manifest.write into a full filesystem.
    if RANK == 0:
        os.unlink(os.path.join(mount, "filler"))
        ok = publish_result(CylonContext(SelfComm(), task_id="small", name="full", data_dir=data_dir,
                                         options={}), table(10))
        fill(os.path.join(mount, "filler"), -1)
        try:
            ok.manifest.write(ok.path)
            outcome = {"value": "written"}
        except Exception as err:
            outcome = {"error": type(err).__name__, "message": str(err)}
        results["manifest_alone"] = {"outcome": outcome, "left": leftovers(mount), "table": ok.path,
                                     "still_reads": Manifest.load(ok.path).num_rows}
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    WORLD.Barrier()


if __name__ == "__main__":
    main()
