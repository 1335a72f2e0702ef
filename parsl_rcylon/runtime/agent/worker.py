"""The MPI worker: a RAPTOR ``MPIWorker`` whose ranks take tasks from the executor.

Radical Pilot starts this class (``raptor_file``/``raptor_class``) as an MPI
job inside the pilot and registers it with the RAPTOR master.  RAPTOR's own
task path (agent scheduler, master, four queue bridges) costs about 115 ms
per task, so each rank also connects straight to the executor over the run's
authenticated channel (:mod:`.channel`: the executor's server key pinned,
the run's token at registration): the executor places a task on a set of
ranks and sends it to each of them; the ranks build the task's private
communicator with ``Create_group`` and run it.

Each rank runs two threads.  The I/O thread owns the ZeroMQ socket: it
checks every message, receives tasks, answers heartbeats, relays
cancellations to the main thread (:mod:`.interrupt`), leaves at once when
told to (``EXIT``: the worker is being replaced) and sends results; the main
thread runs the tasks (MPI calls and user code stay on one thread).  If the
executor stays silent for longer than the heartbeat threshold, the rank
exits: a killed client leaves no rank behind.

Liveness goes by host (:mod:`.host`): the executor heartbeats only the lowest
rank of the worker on each host, its leader, which watches the host's other
ranks and reports one that exits or goes silent (``RANK_LOST``); the others
leave within a second of their leader.
"""
from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import psutil
import radical.pilot as rp
import radical.pilot.raptor.worker as rp_worker
import zmq
from radical.pilot.raptor.worker import Worker

from parsl_rcylon.runtime.agent.host import WATCH_PERIOD, FollowerWatch, HostGroup, LeaderWatch, beat_dir
from parsl_rcylon.runtime.agent.interrupt import Interrupter
from parsl_rcylon.runtime.agent.pmi import MissingPMI, missing_pmi
from parsl_rcylon.runtime.agent.rank import run_task
from parsl_rcylon.runtime.rp_adjust import settle
from parsl_rcylon.runtime.wire import protocol
from parsl_rcylon.runtime.wire.channel import ClientCredentials
from parsl_rcylon.runtime.wire.task import Assignment, Task

_INPROC = "inproc://rcylon-results"
#: Exit status of a rank told to leave (EXIT); non-zero, so the launcher ends the whole job.
EXIT_REPLACED = 5


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
        problem = missing_pmi(self._ranks, os.environ)
        if problem:
            raise MissingPMI(problem)
        self._manager = self._rank == 0
        # Registration and heartbeats with the master come from RAPTOR's
        # base worker; MPIWorker's own rank queues are not used here.
        with settle(rp_worker):  # RAPTOR's start-up pause of a second for ZeroMQ, capped
            Worker.__init__(self, manager=self._manager, rank=self._rank, raptor_id=raptor_id)
        self._credentials = ClientCredentials.from_environment()
        self._tasks: queue.Queue[Optional[Tuple[Task, Assignment, bytes]]] = queue.Queue()
        self._context = zmq.Context()
        self._address = os.environ[protocol.ENV_ADDRESS]
        self._period = float(os.environ.get(protocol.ENV_HEARTBEAT, "2"))
        self._threshold = float(os.environ.get(protocol.ENV_THRESHOLD, "30"))
        self._rank_timeout = 120.0  # the executor's, once its first heartbeat says (leaders only)
        self._hostname = socket.gethostname()
        self._host = self._host_group()
        self._leader_watch: Optional[LeaderWatch] = None
        self._gpu_ids = self._assign_gpus()
        self._io: Optional[threading.Thread] = None
        self._interrupter: Optional[Interrupter] = None

    # -- RAPTOR worker protocol ------------------------------------------------

    def start(self) -> None:
        _preload()
        self._interrupter = Interrupter()  # main thread: installs its signal handler
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
            item = self._tasks.get()
            if item is None:
                return
            task, where, payload = item
            ranks: List[int] = list(where.ranks)
            comm = runtime_comm = group = None
            try:
                if len(ranks) > 1:
                    group = self._group.Incl(ranks)
                    comm = self._world.Create_group(group, tag=where.tag)
                    runtime_comm = comm.Dup()
                else:
                    comm = runtime_comm = MPI.COMM_SELF.Dup()
                header, blob = run_task(task, payload, comm, runtime_comm, gpu_ids=self._gpu_ids,
                                        interrupter=self._interrupter, report_early=self._report_early,
                                        cores=where.cores)
            except BaseException as exc:  # communicator setup failed
                header, blob = {"uid": task.uid, "rank": ranks.index(self._rank), "ok": False,
                                "setup_error": f"{type(exc).__name__}: {exc}"}, None
            finally:
                for c in {id(x): x for x in (runtime_comm, comm) if x is not None}.values():
                    c.Free()
                if group is not None:
                    group.Free()
            if blob is not None and not header["ok"]:
                _end_children()  # what an interrupted task started (a bash app's command) goes with it
            self._results.send_multipart(protocol.pack(protocol.RESULT, header, blob), copy=False)

    def _report_early(self, header: Dict[str, Any], blob: bytes) -> None:
        self._results.send_multipart(protocol.pack(protocol.ERROR, header, blob), copy=False)

    # -- I/O thread ----------------------------------------------------------------

    def _io_loop(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, f"{self._uid}/{self._rank}".encode())
        sock.setsockopt(zmq.LINGER, 2000)
        self._credentials.apply(sock)
        sock.connect(self._address)
        results = self._context.socket(zmq.PULL)
        results.connect(_INPROC)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        hello = {
            "token": self._credentials.token, "worker": self._uid, "rank": self._rank, "size": self._ranks,
            "pid": os.getpid(), "host": self._hostname, "gpus": list(self._gpu_ids),
            "pool": os.environ.get(protocol.ENV_POOL, "default"), "leader": self._host.leader,
        }
        follower = None
        if self._host.leader != self._rank:
            follower = FollowerWatch(self._host, self._rank, self._threshold)
        elif not self._host.alone:
            self._leader_watch = LeaderWatch(self._host, self._hostname)
        sock.send_multipart(protocol.pack(protocol.READY, hello))
        last_heard = time.monotonic()
        wait = self._period if self._host.alone else min(self._period, WATCH_PERIOD)
        try:
            while not self._my_term.is_set():
                events = dict(poller.poll(timeout=int(wait * 1000)))
                if results in events:
                    sock.send_multipart(results.recv_multipart(copy=False), copy=False)
                if sock in events:
                    last_heard = time.monotonic()
                    if not self._on_message(sock, sock.recv_multipart(copy=False)):
                        break
                now = time.monotonic()
                if follower is not None:  # hears from the executor through its leader
                    if follower.due(now):
                        follower.beat(now)
                        if follower.leader_gone():
                            self._leader_gone(sock)
                    continue
                if now - last_heard > self._threshold:
                    self._leave(3, f"executor silent for {self._threshold:.0f} s")
                if self._leader_watch is not None and self._leader_watch.due(now):
                    for lost in self._leader_watch.check(now, self._rank_timeout):
                        sock.send_multipart(protocol.pack(protocol.RANK_LOST, lost))
            try:
                sock.send_multipart(protocol.pack(protocol.BYE), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        finally:
            sock.close(linger=500)
            results.close(linger=0)
            if self._leader_watch is not None:
                self._leader_watch.close()

    def _on_message(self, sock: zmq.Socket, frames: List[Any]) -> bool:
        """Act on one message from the executor; False when the rank should stop."""
        try:
            message = protocol.unpack(frames)
        except protocol.ProtocolError as err:
            sys.stderr.write(f"rcylon worker {self._uid} rank {self._rank}: dropped a message: {err}\n")
            return True
        kind, header = message.kind, message.header
        if kind == protocol.TASK:
            self._tasks.put((Task.from_wire(header), Assignment.from_wire(header), bytes(message.blob)))
        elif kind == protocol.HEARTBEAT:
            self._rank_timeout = float(header.get("rank_timeout", self._rank_timeout))
            sock.send_multipart(protocol.pack(protocol.ALIVE))
        elif kind == protocol.CANCEL:
            self._interrupter.request(header["uid"], header.get("reason", "cancelled by the executor"))
        elif kind == protocol.EXIT:
            self._leave(EXIT_REPLACED, f"told to exit: {header.get('reason', '')}")
        elif kind == protocol.STOP:
            self.stop()
            return False
        return True

    def _leave(self, status: int, why: str) -> None:
        """End this rank at once, whatever the main thread is doing (it may be stuck in MPI)."""
        sys.stderr.write(f"rcylon worker {self._uid} rank {self._rank}: {why}; exiting\n")
        sys.stderr.flush()
        if self._leader_watch is not None:
            self._leader_watch.close()
        _end_children()
        os._exit(status)

    def _leader_gone(self, sock: zmq.Socket) -> None:
        """This follower's leader exited: say so to the executor (it may not see that host), and leave."""
        lead = self._host
        sock.send_multipart(protocol.pack(protocol.RANK_LOST, {
            "rank": lead.leader, "pid": lead.leader_pid, "host": self._hostname, "reason": "exited"}))
        time.sleep(0.2)  # ZeroMQ's I/O thread sends it; os._exit would drop it
        self._leave(3, f"the leader of this host, rank {lead.leader} (pid {lead.leader_pid}), exited")

    def _host_group(self) -> HostGroup:
        """This worker's ranks on this host (the lowest leads), with their PIDs and the leader's private directory.

        Collective over the worker's ranks: every rank calls it once, in ``__init__``.
        """
        from mpi4py import MPI

        node = self._world.Split_type(MPI.COMM_TYPE_SHARED, key=self._rank)
        try:
            ranks = node.allgather(self._rank)
            pids = node.allgather(os.getpid())
            made = beat_dir() if node.Get_rank() == 0 and node.Get_size() > 1 else ""
            where = node.bcast(made, root=0)
        finally:
            node.Free()
        return HostGroup(tuple(ranks), tuple(pids), where)

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


def _end_children() -> None:
    """End the processes this rank started (a bash app's command, a tool a task left running)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


def _visible_gpus() -> List[int]:
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [int(v) for v in value.split(",") if v.strip().isdigit()]
