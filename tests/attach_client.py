"""A short script that attaches to a pilot `parsl-rcylon up` started, as an edit-run loop would.

    python attach_client.py PILOT_RUN_DIR PARSL_RUN_DIR

Prints ``ATTACHED <seconds>`` (parsl.load to ready), ``FIRST <seconds>``
(parsl.load to the first result) and ``OK <session id>``.
"""
import sys
import time

import parsl
import pyarrow as pa
from parsl import python_app

from parsl_rcylon import RadicalCylonExecutor, cylon_app


@cylon_app(ranks=2)
def table(ctx, rows):
    import pyarrow as pa  # apps defined in __main__ travel by value, without module globals

    return pa.table({"key": list(range(ctx.rank * rows, (ctx.rank + 1) * rows))})


@python_app
def square(x):
    return x * x


if __name__ == "__main__":
    t0 = time.perf_counter()
    ex = RadicalCylonExecutor(label="rcylon", attach=sys.argv[1])
    with parsl.load(parsl.Config(executors=[ex], run_dir=sys.argv[2], strategy="none",
                                 initialize_logging=False)):
        print(f"ATTACHED {ex.timings['start']:.3f}", flush=True)
        assert square(7).result() == 49
        print(f"FIRST {time.perf_counter() - t0:.3f}", flush=True)
        ref = table(5).result()
        assert ref.read().equals(pa.table({"key": list(range(10))})), ref.read()
        assert [f.result() for f in [square(i) for i in range(50)]] == [i * i for i in range(50)]
        print(f"OK {ex.session_id}", flush=True)
    parsl.clear()
