"""The MPI worker: a RAPTOR ``MPIWorker`` whose ranks take tasks from the executor.

Radical Pilot starts this class (``raptor_file``/``raptor_class``) as an MPI
job inside the pilot and registers it with the RAPTOR master.  RAPTOR's own
task path (agent scheduler, master, four queue bridges) costs about 115 ms
per task, so each rank also connects straight to the executor: the executor
places a task on a set of ranks and sends it to each of them; the ranks build
the task's private communicator with ``Create_group`` and run it.

Each rank runs two threads.  The I/O thread owns the ZeroMQ socket: it
receives tasks, answers heartbeats and sends results; the main thread runs
the tasks (MPI calls and user code stay on one thread).  If the executor
stays silent for longer than the heartbeat threshold, the rank exits: a
killed client leaves no rank behind.
"""
from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import radical.pilot as rp
import zmq
from radical.pilot.raptor.worker import Worker

from parsl_rcylon.runtime import protocol
from parsl_rcylon.runtime.rank import run_task

_INPROC = "inproc://rcylon-results"


class CylonWorker(rp.raptor.MPIWorker):
    """RAPTOR MPI worker that runs parsl_rcylon tasks on sub-communicators."""

    def __init__(self, raptor_id: str) -> None:
        from mpi4py import MPI

        self._my_term = threading.Event()
        self._my_ret = 0
        self._world = MPI.COMM_WORLD
        self._group = self._world.Get_group()
        self._rank = self._world.rank
        self._ranks = self._world.size
        self._manager = self._rank == 0
        # Registration and heartbeats with the master come from RAPTOR's
        # base worker; MPIWorker's own rank queues are not used here.
        Worker.__init__(self, manager=self._manager, rank=self._rank, raptor_id=raptor_id)
        self._tasks: queue.Queue[Optional[Dict[str, Any]]] = queue.Queue()
        self._context = zmq.Context()
        self._address = os.environ[protocol.ENV_ADDRESS]
        self._period = float(os.environ.get(protocol.ENV_HEARTBEAT, "2"))
        self._threshold = float(os.environ.get(protocol.ENV_THRESHOLD, "30"))
        self._gpu_ids = self._assign_gpus()
        self._io: Optional[threading.Thread] = None

    # -- RAPTOR worker protocol ------------------------------------------------

    def start(self) -> None:
        _preload()
        # Bind the result socket before the I/O thread connects to it.
        self._results = self._context.socket(zmq.PUSH)
        self._results.bind(_INPROC)
        self._io = threading.Thread(target=self._io_loop, name="rcylon-io", daemon=True)
        self._io.start()

    def stop(self, ret: int = 0) -> None:
        self._my_ret = ret
        self._my_term.set()
        self._tasks.put(None)

    def join(self) -> None:
        try:
            self._run_tasks()
        finally:
            self._my_term.set()
            if self._io is not None:
                self._io.join(timeout=5)
        # A clean stop exits without waiting for the other ranks: RP's
        # termination path would otherwise block in MPI_Finalize.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self._my_ret)

    # -- main thread: run tasks --------------------------------------------------

    def _run_tasks(self) -> None:
        from mpi4py import MPI

        while not self._my_term.is_set():
            task = self._tasks.get()
            if task is None:
                return
            ranks: List[int] = task["ranks"]
            comm = None
            group = None
            try:
                if len(ranks) > 1:
                    group = self._group.Incl(ranks)
                    comm = self._world.Create_group(group, tag=task.get("tag", 0))
                else:
                    comm = MPI.COMM_SELF.Dup()
                report = run_task(task, comm, gpu_ids=self._gpu_ids)
            except BaseException as exc:  # communicator setup failed
                report = {"uid": task["uid"], "rank": ranks.index(self._rank), "ok": False,
                          "setup_error": f"{type(exc).__name__}: {exc}"}
            finally:
                if comm is not None:
                    comm.Free()
                if group is not None:
                    group.Free()
            self._results.send_multipart(protocol.pack(protocol.RESULT, report), copy=False)

    # -- I/O thread ----------------------------------------------------------------

    def _io_loop(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, f"{self._uid}/{self._rank}".encode())
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(self._address)
        results = self._context.socket(zmq.PULL)
        results.connect(_INPROC)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        hello = {
            "worker": self._uid, "rank": self._rank, "size": self._ranks, "pid": os.getpid(),
            "host": socket.gethostname(), "gpus": list(self._gpu_ids),
            "pool": os.environ.get(protocol.ENV_POOL, "default"),
        }
        sock.send_multipart(protocol.pack(protocol.READY, hello))
        last_heard = time.monotonic()
        try:
            while not self._my_term.is_set():
                events = dict(poller.poll(timeout=int(self._period * 1000)))
                if results in events:
                    sock.send_multipart(results.recv_multipart(copy=False), copy=False)
                if sock in events:
                    kind, body = protocol.unpack(sock.recv_multipart())
                    last_heard = time.monotonic()
                    if kind == protocol.TASK:
                        self._tasks.put(body)
                    elif kind == protocol.HEARTBEAT:
                        sock.send_multipart(protocol.pack(protocol.ALIVE))
                    elif kind == protocol.STOP:
                        self.stop()
                        break
                if time.monotonic() - last_heard > self._threshold:
                    sys.stderr.write(
                        f"rcylon worker {self._uid} rank {self._rank}: executor silent for "
                        f"{self._threshold:.0f} s, exiting\n")
                    sys.stderr.flush()
                    os._exit(3)
            try:
                sock.send_multipart(protocol.pack(protocol.BYE, None), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        finally:
            sock.close(linger=500)
            results.close(linger=0)


    def _assign_gpus(self) -> List[int]:
        """Pick this rank's devices and hide all others, before user code imports CUDA.

        RAPTOR workers get GPUs per worker, not per rank (RP tracks cores
        only inside a worker), so each rank takes its own slice: on a batch
        system RP's per-rank ``CUDA_VISIBLE_DEVICES`` when it already names
        exactly this rank's share; otherwise the slice at
        ``offset + local_rank * gpus_per_rank`` of the node's devices.
        """
        per_rank = int(os.environ.get(protocol.ENV_GPUS_PER_RANK, "0"))
        visible = _visible_gpus()
        if not per_rank:
            return visible
        if os.environ.get(protocol.ENV_GPU_SOURCE) == "rp" and len(visible) == per_rank:
            return visible
        from mpi4py import MPI

        node = self._world.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank = node.Get_rank()
        node.Free()
        first = int(os.environ.get(protocol.ENV_GPU_OFFSET, "0")) + local_rank * per_rank
        pool = visible if len(visible) >= first + per_rank else list(range(first + per_rank))
        mine = pool[first:first + per_rank]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in mine)
        return mine


def _preload() -> None:
    """Import what every task needs while the worker starts, not in the first tasks.

    Eight ranks importing pyarrow at once on a small machine took ~10 s;
    start-up is the place to pay for it.
    """
    import parsl.serialize  # noqa: F401

    import parsl_rcylon.table  # noqa: F401


def _visible_gpus() -> List[int]:
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [int(v) for v in value.split(",") if v.strip().isdigit()]
