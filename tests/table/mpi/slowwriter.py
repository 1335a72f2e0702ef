"""Run under ``mpiexec``: every rank writes a large, slowly compressed partition (to be killed mid-write).

    slowwriter.py DATA_DIR ROWS

The test that starts it SIGKILLs a rank while its partition's temporary file
is being written, then checks what ``tableio.cleanup`` makes of the leftovers.
"""
from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
from mpi4py import MPI

from parsl_rcylon.context import CylonContext
from parsl_rcylon.table import publish_result


def main() -> None:
    data_dir, rows = sys.argv[1], int(sys.argv[2])
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(comm.Get_rank())
    table = pa.table({"key": np.arange(rows, dtype=np.int64), "value": rng.random(rows)})
    # gzip at its highest level: seconds per partition, a wide window to kill in.
    ctx = CylonContext(comm, task_id="victim", name="slow", data_dir=data_dir,
                       options={"compression": "gzip", "compression_level": 9, "row_group_size": 50_000})
    publish_result(ctx, table)


if __name__ == "__main__":
    main()
