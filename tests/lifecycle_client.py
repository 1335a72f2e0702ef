"""A workflow client that the SIGKILL tests start and kill: it never shuts down.

    python lifecycle_client.py RUN_DIR [HEARTBEAT_THRESHOLD]
"""
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
    threshold = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    ex = RadicalCylonExecutor(label="victim", worker_ranks=2, heartbeat_threshold=threshold)
    parsl.load(parsl.Config(executors=[ex], run_dir=sys.argv[1], strategy="none"))
    assert busy(0).result() == 2
    busy(600)  # keeps both ranks busy while the client is killed
    print(f"ADDRESS {ex._own.dispatcher.address}", flush=True)
    print(f"SESSION {ex.session_id}", flush=True)
    time.sleep(3600)
