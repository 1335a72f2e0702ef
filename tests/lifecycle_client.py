"""A workflow client that the SIGKILL test starts and kills: it never shuts down."""
import sys
import time

import parsl

from parsl_rcylon import RadicalCylonExecutor, cylon_app


@cylon_app(ranks=2)
def busy(ctx, seconds):
    import time  # apps defined in __main__ travel by value, without module globals

    time.sleep(seconds)
    return ctx.size


if __name__ == "__main__":
    ex = RadicalCylonExecutor(label="victim", worker_ranks=2)
    parsl.load(parsl.Config(executors=[ex], run_dir=sys.argv[1], strategy="none"))
    assert busy(0).result() == 2
    busy(600)  # keeps both ranks busy while the client is killed
    print(f"SESSION {ex.session_id}", flush=True)
    time.sleep(3600)
