"""A short script that attaches to a pilot `parsl-rcylon up` started, as an edit-run loop would.

    python attach_client.py PILOT_RUN_DIR PARSL_RUN_DIR

Prints ``ATTACHED <seconds>`` (parsl.load to ready), ``FIRST <seconds>``
(parsl.load to the first result) and ``OK <session id>``.  It works in
PARSL_RUN_DIR, where a bash app's relative ``outputs=`` and ``stdout=`` must
land, as with Parsl's own executors.
"""
import os
import sys
import time

import parsl
import pyarrow as pa
from parsl import bash_app, python_app
from parsl.data_provider.files import File

from parsl_rcylon import RadicalCylonExecutor, cylon_app


@cylon_app(ranks=2)
def table(ctx, rows):
    import pyarrow as pa  # apps defined in __main__ travel by value, without module globals

    return pa.table({"key": list(range(ctx.rank * rows, (ctx.rank + 1) * rows))})


@python_app
def square(x):
    return x * x


@bash_app
def write(outputs=(), stdout=None):
    return f"echo attached > {outputs[0]} && pwd"


if __name__ == "__main__":
    t0 = time.perf_counter()
    os.makedirs(sys.argv[2], exist_ok=True)
    os.chdir(sys.argv[2])
    ex = RadicalCylonExecutor(label="rcylon", attach=sys.argv[1])
    with parsl.load(parsl.Config(executors=[ex], run_dir=sys.argv[2], strategy="none",
                                 initialize_logging=False)):
        print(f"ATTACHED {ex.timings['start']:.3f}", flush=True)
        assert square(7).result() == 49
        print(f"FIRST {time.perf_counter() - t0:.3f}", flush=True)
        ref = table(5).result()
        assert ref.read().equals(pa.table({"key": list(range(10))})), ref.read()
        assert [f.result() for f in [square(i) for i in range(50)]] == [i * i for i in range(50)]
        assert write(outputs=[File("out.txt")], stdout="std.out").result() == 0
        assert open("out.txt").read() == "attached\n" and open("std.out").read() == os.getcwd() + "\n"
        print(f"OK {ex.session_id}", flush=True)
    parsl.clear()
