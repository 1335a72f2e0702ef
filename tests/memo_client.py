"""Runs the same two-stage pipeline twice (see test_memo.py): the second run must reuse both stages."""
import sys

import parsl
from parsl.dataflow.memoization import BasicMemoizer
from parsl.dataflow.states import States
from parsl.utils import get_all_checkpoints

from parsl_rcylon import RadicalCylonExecutor, cylon_app


@cylon_app(ranks=2, cache=True)
def make(ctx, n):
    import pyarrow as pa

    return pa.table({"x": list(range(ctx.rank, n, ctx.size))})


@cylon_app(ranks=3, cache=True)
def double(ctx, table):
    import pyarrow.compute as pc

    return table.set_column(0, "x", pc.multiply(table["x"], 2))


if __name__ == "__main__":
    run_dir = sys.argv[1]
    memo = BasicMemoizer(checkpoint_mode="task_exit", checkpoint_files=get_all_checkpoints(run_dir))
    executor = RadicalCylonExecutor(worker_ranks=3)
    config = parsl.Config(executors=[executor], run_dir=run_dir, memoizer=memo, strategy="none")
    with parsl.load(config) as dfk:
        ref = double(make(1000)).result()
        ran = dfk.task_state_counts[States.exec_done]  # tasks that ran here, not taken from the checkpoint
        print(f"RESULT {ref.path} {ref.num_rows} {sum(ref.read()['x'].to_pylist())} {ran}", flush=True)
