"""``torch.distributed`` over exactly one task's ranks, built from the task's communicator.

The rendezvous needs no fixed port and no environment variables: rank 0 of
the task starts a ``TCPStore`` on a port the kernel picks (port 0, so two
training tasks on one worker never collide, and nothing is bound then
released), broadcasts ``host:port`` over the task's mpi4py communicator, and
every rank joins ``init_process_group(store=...)`` with its task rank.  The
group is the process's default group, so DDP and plain ``dist.all_reduce``
calls work unchanged.

Teardown is guaranteed: the group registers a task-end callback on the
``CylonContext``, so a warm rank starts its next task with no group left
over even when the user never closes it.  On failure the group is aborted
rather than destroyed politely: the failing rank writes what went wrong into
the store and closes its connections, so the other ranks leave their
collective at once (gloo: connection closed by peer) instead of waiting for
the collective timeout, and report :class:`PeerFailedError` naming the rank.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from typing import Any, Optional, Set, Tuple

import psutil

from ._torch import require_torch
from .errors import PeerFailedError, ProcessGroupError

logger = logging.getLogger(__name__)

#: Seconds a collective (and the rendezvous) may wait for a peer when the
#: task states no limit: long enough for a slow first batch, short enough
#: that a hung peer fails the task in minutes, not torch's default 30.
DEFAULT_TIMEOUT = 300.0
#: The task option read for the timeout when the call gives none: the task's
#: time limit in seconds (``@cylon_app(..., walltime=...)``).
TIMEOUT_OPTION = "walltime"
#: Seconds a failing rank keeps the store up so the others can read why.
FAILURE_GRACE = 2.0
_FAILED_KEY = "rcylon/failed"
_ACK_KEY = "rcylon/failure-seen"


def resolve_timeout(options: Any, timeout: Optional[float]) -> float:
    """The collective timeout in seconds: ``timeout``, else the task's ``walltime``, else :data:`DEFAULT_TIMEOUT`.

    ``options`` is the task's options, a mapping or an object with the option as an attribute.
    """
    if timeout is None:
        value = options.get(TIMEOUT_OPTION) if isinstance(options, dict) else getattr(options, TIMEOUT_OPTION, None)
        timeout = value
    value = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    if not value > 0:
        raise ProcessGroupError(f"process group timeout must be positive, got {timeout!r}")
    return value


def choose_backend(gpu_ids, backend: Optional[str]) -> str:
    """``nccl`` when the rank owns GPUs that torch can see, else ``gloo``; an explicit choice is checked."""
    torch = require_torch()
    import torch.distributed as dist

    if backend is None:
        backend = "nccl" if gpu_ids and torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    backend = backend.lower()
    if backend == "mpi":
        raise ProcessGroupError("torch's 'mpi' backend is not built into the PyTorch wheels; use 'gloo' "
                                "(CPU) or 'nccl' (GPU): the rendezvous already comes from the task's MPI "
                                "communicator")
    if backend not in ("gloo", "nccl"):
        raise ProcessGroupError(f"backend {backend!r}: expected 'gloo' or 'nccl'")
    if backend == "nccl" and not (gpu_ids and torch.cuda.is_available()):
        raise ProcessGroupError(f"backend 'nccl' needs a GPU, but this rank has gpu_ids={list(gpu_ids)} and "
                                f"torch.cuda.is_available()={torch.cuda.is_available()}; ask for "
                                "gpus_per_rank in the cylon_app, or use 'gloo'")
    return backend


def _store_host(comm: Any) -> str:
    """The address the other ranks reach rank 0's store on: loopback when the task is on one host."""
    hosts = comm.allgather(socket.gethostname())
    if len(set(hosts)) == 1:
        return "127.0.0.1"
    return socket.getfqdn(hosts[0])


class TorchProcessGroup:
    """This task's ``torch.distributed`` default group, as a handle and a context manager.

    Made by :meth:`CylonContext.torch_process_group` on every rank of the
    task (a collective call).  Leaving the ``with`` block, or the end of the
    task, destroys the group; leaving it by an exception aborts it so that
    the other ranks stop waiting on this one.

    Attributes
    ----------
    backend : str
        ``gloo`` or ``nccl``.
    rank, size : int
        This rank and the number of ranks (the task's own).
    device : torch.device
        Where this rank computes: ``cuda:0`` (its first own GPU) with nccl, else ``cpu``.
    timeout : float
        Seconds a collective waits for its peers before it raises.
    store_address : str
        ``host:port`` of the rendezvous store on rank 0.
    """

    def __init__(self, comm: Any, task_id: str, gpu_ids=(), backend: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        torch = require_torch()
        import torch.distributed as dist

        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        self.task_id = task_id
        self.timeout = float(timeout)
        self._closed = False
        self._acked = False
        if dist.is_initialized():
            # Only a group made outside this API can be left here: ours are
            # torn down at the end of every task.
            raise ProcessGroupError(
                f"task {task_id} rank {self.rank}: a torch.distributed default group already exists in this "
                "process; call ctx.torch_process_group() once per task and do not call "
                "init_process_group yourself")
        error: Optional[str] = None
        try:
            self.backend = choose_backend(gpu_ids, backend)
        except ProcessGroupError as exc:
            error = str(exc)
        errors = comm.allgather(error)
        bad = [(r, e) for r, e in enumerate(errors) if e]
        if bad:
            raise ProcessGroupError(f"task {task_id}: " + "; ".join(f"rank {r}: {e}" for r, e in bad))
        self.device = torch.device("cuda", 0) if self.backend == "nccl" else torch.device("cpu")
        if self.backend == "nccl":
            # CUDA_VISIBLE_DEVICES holds only this rank's GPUs: device 0 is its first.
            torch.cuda.set_device(self.device)
        delta = dt.timedelta(seconds=self.timeout)
        t0 = time.perf_counter()
        self._store = self._rendezvous(comm, delta)
        kwargs = {"device_id": self.device} if self.backend == "nccl" else {}
        before = tcp_connections()
        dist.init_process_group(self.backend, store=dist.PrefixStore(f"rcylon/{task_id}", self._store),
                                rank=self.rank, world_size=self.size, timeout=delta, **kwargs)
        self._links = new_links(before, tcp_connections(), self._store_port)
        self.setup_seconds = time.perf_counter() - t0
        logger.debug("task %s rank %d: %s group of %d ranks via %s in %.3fs", task_id, self.rank, self.backend,
                     self.size, self.store_address, self.setup_seconds)

    def _rendezvous(self, comm: Any, timeout: dt.timedelta) -> Any:
        import torch.distributed as dist

        host = _store_host(comm)
        store = None
        offer: Any = None
        if self.rank == 0:
            try:
                # Port 0: the kernel picks a free one while binding, so there
                # is no window in which another task could take it.
                store = dist.TCPStore(host, 0, self.size, True, timeout, wait_for_workers=False)
                offer = (host, store.port)
            except Exception as exc:  # every rank must learn it, or they wait in bcast forever
                offer = f"{type(exc).__name__}: {exc}"
        offer = comm.bcast(offer, root=0)
        if isinstance(offer, str):
            raise ProcessGroupError(f"task {self.task_id}: rank 0 could not start the rendezvous store: {offer}")
        self.store_address = f"{offer[0]}:{offer[1]}"
        self._store_port = int(offer[1])
        if store is None:
            store = dist.TCPStore(offer[0], offer[1], self.size, False, timeout)
        return store

    # -- use -------------------------------------------------------------------

    def __enter__(self) -> TorchProcessGroup:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        peer = None if isinstance(exc, PeerFailedError) else self._peer_failure()
        self.close(failed=True, reason=exc)
        if peer is not None:
            raise peer from exc

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"TorchProcessGroup(task={self.task_id!r}, backend={self.backend!r}, rank={self.rank}, "
                f"size={self.size}, device={str(self.device)!r}, {state})")

    @property
    def closed(self) -> bool:
        return self._closed

    def _peer_failure(self) -> Optional[PeerFailedError]:
        """The failure another rank announced in the store, if any (one quick look, never a long wait)."""
        try:
            if not self._store.check([_FAILED_KEY]):
                return None
            text = self._store.get(_FAILED_KEY).decode(errors="replace")
        except Exception:  # the store went away with the failing rank 0
            return None
        rank_text, _, message = text.partition(":")
        if int(rank_text) == self.rank:
            return None
        self._seen_failure()
        return PeerFailedError(f"task {self.task_id}: rank {self.rank} stopped because rank {rank_text} of "
                               f"{self.size} failed: {message}", failed_rank=int(rank_text))

    def _seen_failure(self) -> None:
        if not self._acked:
            self._acked = True
            try:
                self._store.add(_ACK_KEY, 1)
            except Exception:  # noqa: BLE001 - rank 0 only waits a grace period for it
                pass

    def _announce_failure(self, reason: Any) -> None:
        """Tell the other ranks why this one is leaving, before closing the connections they wait on."""
        try:
            text = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
            self._store.compare_set(_FAILED_KEY, "", f"{self.rank}:{text}")
            self._seen_failure()
        except Exception as exc:  # best effort: the abort below still frees the peers
            logger.debug("task %s rank %d: could not announce failure: %s", self.task_id, self.rank, exc)

    def close(self, failed: bool = False, reason: Any = None) -> None:
        """Destroy the group (abort it when ``failed``); idempotent.

        A failing rank first records ``reason`` in the store (unless another
        rank failed first: then ``reason`` gets a note naming that rank);
        rank 0, which hosts the store, keeps it up until every rank has seen
        the failure, or :data:`FAILURE_GRACE` seconds.
        """
        if self._closed:
            return
        self._closed = True
        import torch.distributed as dist

        if failed:
            peer = self._peer_failure()
            if peer is None:
                self._announce_failure(reason if reason is not None else "failed")
            elif isinstance(reason, BaseException) and hasattr(reason, "add_note"):
                reason.add_note(str(peer))
        try:
            if dist.is_initialized():
                if failed:
                    self._abort(dist)
                else:
                    dist.destroy_process_group()
        finally:
            if failed and self.rank == 0 and self.size > 1:
                self._await_acks()
            self._store = None

    def _abort(self, dist: Any) -> None:
        # Peers blocked in a collective with this rank must get an error now,
        # not after the timeout.  nccl aborts its communicators.  gloo's
        # abort() leaves its sockets open, and destroying the group does not
        # close them either while DDP (or the traceback being handled) still
        # holds the group; so the connections the group opened are shut down
        # here, and the peers read "connection closed by peer" at once.
        try:
            if self.backend == "nccl":
                from torch.distributed.distributed_c10d import _abort_process_group

                _abort_process_group()
            else:
                shut_down(self._links)
        except Exception as exc:  # noqa: BLE001 - teardown must go on
            logger.debug("task %s rank %d: abort failed: %s", self.task_id, self.rank, exc)
        try:
            dist.destroy_process_group()
        except Exception as exc:  # noqa: BLE001
            logger.debug("task %s rank %d: destroy after abort failed: %s", self.task_id, self.rank, exc)

    def _await_acks(self) -> None:
        deadline = time.monotonic() + FAILURE_GRACE
        try:
            while time.monotonic() < deadline:
                if self._store.add(_ACK_KEY, 0) >= self.size:
                    return
                time.sleep(0.02)
        except Exception:  # noqa: BLE001 - only a courtesy to the other ranks
            return

    def on_task_end(self, error: Optional[BaseException]) -> None:
        """Task-end callback: close the group the user left open, aborting it if the task raised."""
        if not self._closed:
            if error is None:
                logger.debug("task %s rank %d: closing the process group the task left open", self.task_id,
                             self.rank)
            self.close(failed=error is not None, reason=error)


Link = Tuple[int, Tuple[Any, ...], Tuple[Any, ...]]


def tcp_connections() -> Set[Link]:
    """This process's TCP connections as ``(fd, local address, remote address)``."""
    try:
        conns = psutil.Process().net_connections(kind="tcp")
    except (psutil.Error, OSError):  # not permitted here: no abort by socket, the timeout still holds
        return set()
    return {(c.fd, tuple(c.laddr), tuple(c.raddr)) for c in conns if c.fd >= 0 and c.raddr}


def new_links(before: Set[Link], after: Set[Link], store_port: int) -> Set[Link]:
    """Connections the group opened: new since ``before``, and not to or from the rendezvous store."""
    return {link for link in after - before if store_port not in (link[1][1], link[2][1])}


def shut_down(links: Set[Link]) -> None:
    """Shut down (not close: the group still owns the descriptors) each connection still open as recorded."""
    current = tcp_connections()
    for link in links & current:
        sock = socket.socket(fileno=os.dup(link[0]))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()


def open_process_group(ctx: Any, backend: Optional[str] = None, timeout: Optional[float] = None
                       ) -> TorchProcessGroup:
    """Set up ``torch.distributed`` over ``ctx``'s ranks; collective (see :class:`TorchProcessGroup`)."""
    group = TorchProcessGroup(ctx.comm, str(ctx.task_id), gpu_ids=ctx.gpu_ids, backend=backend,
                              timeout=resolve_timeout(ctx.options, timeout))
    ctx.on_task_end(group.on_task_end)
    return group


def visible_devices() -> str:
    """``CUDA_VISIBLE_DEVICES`` of this process, for reports."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")
