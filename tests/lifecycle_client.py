"""A workflow client that the SIGKILL tests start and kill: it never shuts down.

    python lifecycle_client.py RUN_DIR [HEARTBEAT_THRESHOLD]
    python lifecycle_client.py RUN_DIR --die-in-session

With ``--die-in-session`` it SIGKILLs itself as Radical Pilot's session
finishes opening (its proxy fork made, the executor's code after it not yet
run), after printing the session id and its children's PIDs.
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


def _die_in_session() -> None:
    import os
    import signal

    import psutil
    import radical.pilot as rp

    opened = rp.Session.__init__

    def open_and_die(session, *args, **kwargs):
        opened(session, *args, **kwargs)
        print(f"SESSION {session.uid}", flush=True)
        print("CHILDREN " + " ".join(str(c.pid) for c in psutil.Process().children()), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    rp.Session.__init__ = open_and_die


if __name__ == "__main__":
    if sys.argv[2:] == ["--die-in-session"]:
        _die_in_session()
        del sys.argv[2]
    threshold = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    ex = RadicalCylonExecutor(label="victim", worker_ranks=2, heartbeat_threshold=threshold)
    parsl.load(parsl.Config(executors=[ex], run_dir=sys.argv[1], strategy="none"))
    assert busy(0).result() == 2
    busy(600)  # keeps both ranks busy while the client is killed
    print(f"ADDRESS {ex._own.dispatcher.address}", flush=True)
    print(f"SESSION {ex.session_id}", flush=True)
    time.sleep(3600)
