"""Batches of a task's table share for torch: one gather per batch, prefetched, in step on all ranks.

How a batch is made
    The features (and the label) are one row-major matrix (see
    :mod:`~parsl_rcylon.training.columns`: Arrow memory in place when the
    layout allows, else packed once).  An epoch is an *order of blocks*:
    ``block_size`` consecutive rows stay together, the blocks are permuted
    (``shuffle="block"``, the default).  A batch is then one ``numpy.take``
    of whole blocks into a reused buffer, contiguous copies at memory speed,
    and ``torch.from_numpy`` hands the buffer to torch without a copy.
    ``block_size=1`` gives a fully random row order at a lower rate;
    ``shuffle=None`` keeps the stored order and a batch is a view (no copy).
    ``shuffle="global"`` first redistributes rows over all ranks every epoch
    (one ``Alltoallv`` of the packed rows, through the engine's transport),
    then block-shuffles the rows received.

Same number of steps on every rank
    DDP hangs when one rank stops stepping before the others, so every rank
    yields the same number of batches: with ``drop_last=False`` the largest
    rank's count (a shorter rank wraps around to repeat some of its rows, as
    ``DistributedSampler`` pads), with ``drop_last=True`` the smallest rank's
    count of full batches (other rows of the epoch are skipped; a different
    set each epoch).  Every rank knows every rank's row count (one
    ``allgather`` when the loader is made), so no epoch needs a collective
    to agree, except the global shuffle's exchange.

Reproducible
    Epoch ``e`` of rank ``r`` depends on ``(seed, e, r)`` only; iterating the
    loader advances the epoch, :meth:`TorchLoader.set_epoch` picks one.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from ._torch import require_torch
from .columns import Matrix, as_table, check_columns, table_matrix
from .errors import LoaderError

logger = logging.getLogger(__name__)

SHUFFLES = ("block", "global", None)
#: Aim for this many blocks per batch when the caller gives no block size:
#: enough random places per batch for SGD, blocks long enough to copy fast.
BLOCKS_PER_BATCH = 16


def default_block_size(batch_size: int) -> int:
    """The largest divisor of ``batch_size`` not above ``batch_size // BLOCKS_PER_BATCH`` (at least 1)."""
    target = max(1, batch_size // BLOCKS_PER_BATCH)
    for size in range(target, 0, -1):
        if batch_size % size == 0:
            return size
    return 1


def even_split(rows: int, parts: int) -> np.ndarray:
    """How many of ``rows`` go to each of ``parts`` (sizes differ by at most one)."""
    bounds = np.array([rows * i // parts for i in range(parts + 1)], dtype=np.int64)
    return np.diff(bounds)


def steps_per_epoch(counts: Sequence[int], batch_size: int, drop_last: bool) -> int:
    """Batches every rank yields in an epoch, given every rank's row count (see the module notes)."""
    if drop_last:
        return min(c // batch_size for c in counts)
    return max(math.ceil(c / batch_size) for c in counts)


class EpochOrder:
    """One rank's order of rows for one epoch, as a permutation of blocks, and gathers by it.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``(rows, width)`` C-contiguous rows to draw from.
    block_size : int
        Rows kept together; the last, partial block (if any) comes last.
    rng : numpy.random.Generator or None
        Shuffles the full blocks; ``None`` keeps the stored order.
    """

    def __init__(self, matrix: np.ndarray, block_size: int, rng: Optional[np.random.Generator]) -> None:
        self.matrix = matrix
        self.rows = matrix.shape[0]
        self.block_size = block_size
        self.full_blocks = self.rows // block_size
        order = np.arange(self.full_blocks, dtype=np.int64)
        if rng is not None:
            rng.shuffle(order)
        if self.rows % block_size:
            order = np.append(order, self.full_blocks)
        self.order = order
        self.identity = rng is None
        usable = self.full_blocks * block_size
        # Whole blocks as rows of their own, for the one-take fast path.
        self._blocks = matrix[:usable].reshape(self.full_blocks, block_size * matrix.shape[1])

    def row_indices(self, start: int, stop: int) -> np.ndarray:
        """Rows at stream positions ``[start, stop)`` (positions past the end wrap around)."""
        if self.block_size == 1 and stop <= self.rows:
            return self.order[start:stop]
        pos = np.arange(start, stop, dtype=np.int64) % self.rows
        return self.order[pos // self.block_size] * self.block_size + pos % self.block_size

    def view(self, start: int, stop: int) -> Optional[np.ndarray]:
        """The batch as a view of the matrix, when the order is the stored one and no wrap is needed."""
        if self.identity and stop <= self.rows:
            return self.matrix[start:stop]
        return None

    def gather(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Copy the rows at positions ``[start, stop)`` into ``out[:stop - start]`` and return that part."""
        n = stop - start
        dest = out[:n]
        bs = self.block_size
        if start % bs == 0 and stop % bs == 0 and stop <= self.full_blocks * bs:
            blocks = self.order[start // bs:stop // bs]
            # mode="clip": with out=, the default "raise" buffers the output
            # (a second copy); the indices are in range by construction.
            np.take(self._blocks, blocks, axis=0, out=dest.reshape(n // bs, -1), mode="clip")
        else:
            np.take(self.matrix, self.row_indices(start, stop), axis=0, out=dest, mode="clip")
        return dest


class _Stats:
    """Where a loader's time went: waiting for batches against everything else (the training step)."""

    def __init__(self) -> None:
        self.epochs = 0
        self.batches = 0
        self.rows = 0
        self.wait = 0.0
        self.compute = 0.0
        self.gather = 0.0
        self.exchange = 0.0

    def as_dict(self, prepare: float, zero_copy: bool) -> Dict[str, Any]:
        busy = self.wait + self.compute
        return {
            "epochs": self.epochs, "batches": self.batches, "rows": self.rows,
            "wait_seconds": self.wait, "compute_seconds": self.compute, "gather_seconds": self.gather,
            "exchange_seconds": self.exchange, "prepare_seconds": prepare,
            "wait_fraction": self.wait / busy if busy else 0.0,
            "gather_rows_per_second": self.rows / self.gather if self.gather else None,
            "zero_copy": zero_copy,
        }


class TorchLoader:
    """Batches of this rank's share of a table as torch tensors, in step with the task's other ranks.

    Made with :meth:`CylonContext.torch_loader` on every rank (a collective
    call).  Iterate it once per epoch; each batch is ``(x, y)`` with ``x`` of
    shape ``(b, features)`` and ``y`` of shape ``(b,)``, or ``x`` alone when
    there is no label.  A batch's tensors live in a reused buffer: they are
    valid until the next batch is asked for (copy what you keep).

    Parameters
    ----------
    ctx : CylonContext
        The task's context (its communicator and rank).
    data : TableRef, pyarrow.Table, RecordBatch or pandas.DataFrame
        A ``TableRef`` is read as this rank's share; anything else is this rank's rows.
    features : list of str
        Feature columns: numeric or boolean, or a single ``fixed_size_list`` column.
    label : str, optional
        Label column (numeric or boolean).
    batch_size : int
        Rows per batch on each rank.
    shuffle : {"block", "global", None}
        See the module notes.
    seed : int
        Seed of every epoch's order (with the epoch and the rank).
    drop_last : bool
        Full batches only, as many as the smallest rank has; else every row at least once.
    prefetch : int, optional
        Batches a background thread prepares ahead (0: gather in the caller's
        thread).  Default: 2 when each batch is moved to a GPU or gathered row
        by row (``block_size=1``), else 0: a block gather takes microseconds,
        less than handing a batch between threads (see docs/training.md).
    block_size : int, optional
        Rows kept together by the block shuffle; must divide ``batch_size``.
    dtype : str
        Element type of ``x`` and ``y`` (``float32``).
    device : str or torch.device, optional
        Move each batch there (pinned buffers and an asynchronous copy for CUDA).
    """

    def __init__(self, ctx: Any, data: Any, features: Sequence[str], label: Optional[str] = None,
                 batch_size: int = 1024, shuffle: Optional[str] = "block", seed: int = 0,
                 drop_last: bool = False, prefetch: Optional[int] = None, block_size: Optional[int] = None,
                 dtype: str = "float32", device: Any = None) -> None:
        torch = require_torch()
        self._torch = torch
        self.ctx = ctx
        self.rank, self.size = ctx.rank, ctx.size
        where = f"task {getattr(ctx, 'task_id', '?')} rank {self.rank}"
        if isinstance(features, str):
            features = [features]
        self.features = list(features)
        self.label = label
        if shuffle not in SHUFFLES:
            raise LoaderError(f"{where}: shuffle={shuffle!r}, expected one of {SHUFFLES}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise LoaderError(f"{where}: batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.block_size = default_block_size(batch_size) if block_size is None else int(block_size)
        if self.block_size < 1 or batch_size % self.block_size:
            raise LoaderError(f"{where}: block_size={block_size!r} must be a positive divisor of "
                              f"batch_size={batch_size}")
        device = torch.device(device) if device is not None else None
        if prefetch is None:
            prefetch = 2 if (device is not None and device.type != "cpu") or self.block_size == 1 else 0
        if prefetch < 0:
            raise LoaderError(f"{where}: prefetch must be >= 0, got {prefetch}")
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.prefetch = int(prefetch)
        self.dtype = np.dtype(dtype)
        self.device = device
        self.epoch = 0
        self._stats = _Stats()
        t0 = time.perf_counter()
        self._matrix = self._load(data, where)
        self.prepare_seconds = time.perf_counter() - t0
        counts = ctx.comm.allgather(self._matrix.rows) if self.size > 1 else [self._matrix.rows]
        self.counts: List[int] = [int(c) for c in counts]
        self._check_counts(where)

    # -- setup -------------------------------------------------------------------

    def _load(self, data: Any, where: str) -> Matrix:
        """This rank's rows as a matrix; any rank's bad input raises the same error on every rank."""
        problem: Optional[str] = None
        matrix: Optional[Matrix] = None
        try:
            if type(data).__name__ == "TableRef" and hasattr(data, "read_share"):
                columns = self.features + ([self.label] if self.label is not None else [])
                missing = [c for c in columns if c not in data.schema.names]
                if missing:
                    raise LoaderError(f"columns {missing} are not in {data!r} (columns: {data.schema.names})")
                table = self.ctx.read(data, columns=columns)
            else:
                table = as_table(data, where)
            if not self.features:
                raise LoaderError("no feature columns given")
            problems = check_columns(table, self.features, self.label)
            if problems:
                raise LoaderError("; ".join(problems))
            matrix = table_matrix(table, self.features, self.label, self.dtype)
        except Exception as exc:  # every rank must hear of it, or the others wait in allgather
            problem = str(exc) if isinstance(exc, LoaderError) else f"{type(exc).__name__}: {exc}"
        problems = self.ctx.comm.allgather(problem) if self.size > 1 else [problem]
        bad = [(r, p) for r, p in enumerate(problems) if p]
        if bad:
            raise LoaderError(f"task {getattr(self.ctx, 'task_id', '?')}: torch_loader: "
                              + "; ".join(f"rank {r}: {p}" for r, p in bad))
        assert matrix is not None
        return matrix

    def _check_counts(self, where: str) -> None:
        empty = [r for r, c in enumerate(self.epoch_counts(0)) if c == 0]
        if empty:
            raise LoaderError(f"task {getattr(self.ctx, 'task_id', '?')}: torch_loader: ranks {empty} have no "
                              "rows, so they cannot step with the others; rebalance the table first "
                              "(ctx.rebalance) or use shuffle='global'")
        if self.steps(0) == 0:
            raise LoaderError(f"task {getattr(self.ctx, 'task_id', '?')}: torch_loader: with "
                              f"batch_size={self.batch_size} and drop_last={self.drop_last}, an epoch has no "
                              f"step (rows per rank: {self.counts})")

    # -- epochs ---------------------------------------------------------------------

    @property
    def width(self) -> int:
        """Number of feature values per row."""
        return self._matrix.features

    @property
    def zero_copy(self) -> bool:
        """Whether the rows are read in place from Arrow memory (no packing copy)."""
        return self._matrix.zero_copy

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (iterating advances it by one)."""
        self.epoch = int(epoch)

    def epoch_counts(self, epoch: int) -> List[int]:
        """Rows per rank in ``epoch`` (after the global shuffle's redistribution, if any)."""
        if self.shuffle != "global":
            return list(self.counts)
        received = np.zeros(self.size, dtype=np.int64)
        for count in self.counts:
            received += even_split(count, self.size)
        return [int(c) for c in received]

    def steps(self, epoch: Optional[int] = None) -> int:
        """Batches every rank yields in ``epoch`` (default: the next one)."""
        return steps_per_epoch(self.epoch_counts(self.epoch if epoch is None else epoch), self.batch_size,
                               self.drop_last)

    def __len__(self) -> int:
        return self.steps()

    def _rng(self, epoch: int, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, self.rank, salt])

    def _epoch_rows(self, epoch: int) -> np.ndarray:
        """This rank's rows for ``epoch``: its own, or what the global shuffle sent it."""
        if self.shuffle != "global" or self.size == 1:
            return self._matrix.values
        from ..engine.transport import exchange_bytes

        t0 = time.perf_counter()
        own = self._matrix.values
        # A random permutation cut into even parts: each rank gets a random
        # sample of every rank's rows, in random order.
        perm = self._rng(epoch, salt=1).permutation(own.shape[0])
        send = np.take(own, perm, axis=0, mode="clip")
        row_bytes = own.shape[1] * own.itemsize
        sendcounts = even_split(own.shape[0], self.size) * row_bytes
        recvcounts = np.array([even_split(c, self.size)[self.rank] for c in self.counts], dtype=np.int64) * row_bytes
        received = exchange_bytes(self.ctx.comm, send.view(np.uint8).reshape(-1), sendcounts, recvcounts,
                                  limit=self.ctx.options.engine.max_message_bytes)
        rows = np.frombuffer(received, dtype=own.dtype).reshape(-1, own.shape[1])
        self._stats.exchange += time.perf_counter() - t0
        return rows

    def _order(self, epoch: int) -> EpochOrder:
        rows = self._epoch_rows(epoch)
        rng = None if self.shuffle is None else self._rng(epoch)
        return EpochOrder(rows, self.block_size, rng)

    def _bounds(self, order: EpochOrder, steps: int) -> List[Tuple[int, int]]:
        """Stream positions of every batch of the epoch (see the module notes on equal steps)."""
        own_steps = math.ceil(order.rows / self.batch_size)
        end = order.rows if (not self.drop_last and own_steps == steps) else steps * self.batch_size
        return [(i * self.batch_size, min((i + 1) * self.batch_size, end)) for i in range(steps)]

    # -- iteration ------------------------------------------------------------------

    def _new_buffer(self) -> np.ndarray:
        width = self._matrix.values.shape[1]
        if self.device is not None and self.device.type == "cuda":
            pinned = self._torch.empty((self.batch_size, width), dtype=self._torch.from_numpy(
                np.empty(0, self.dtype)).dtype, pin_memory=True)
            return pinned.numpy()
        return np.empty((self.batch_size, width), dtype=self.dtype)

    def _to_torch(self, rows: np.ndarray) -> Any:
        torch = self._torch
        t = torch.from_numpy(rows)
        f = self._matrix.features
        x = t[:, :f]
        y = t[:, f] if self._matrix.has_label else None
        if self.device is not None and self.device.type != "cpu":
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True) if y is not None else None
        return (x, y) if y is not None else x

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        self.epoch += 1
        order = self._order(epoch)
        bounds = self._bounds(order, self.steps(epoch))
        self._stats.epochs += 1
        if self.prefetch == 0:
            return self._iterate_inline(order, bounds)
        return self._iterate_prefetched(order, bounds)

    def _iterate_inline(self, order: EpochOrder, bounds: List[Tuple[int, int]]) -> Iterator[Any]:
        buffer = self._new_buffer()
        stats = self._stats
        for start, stop in bounds:
            t0 = time.perf_counter()
            rows = order.view(start, stop)
            if rows is None:
                rows = order.gather(start, stop, buffer)
            batch = self._to_torch(rows)
            t1 = time.perf_counter()
            stats.gather += t1 - t0
            stats.wait += t1 - t0
            stats.batches += 1
            stats.rows += stop - start
            yield batch
            stats.compute += time.perf_counter() - t1

    def _iterate_prefetched(self, order: EpochOrder, bounds: List[Tuple[int, int]]) -> Iterator[Any]:
        free: queue.Queue = queue.Queue()
        for _ in range(self.prefetch + 1):
            free.put(self._new_buffer())
        ready: queue.Queue = queue.Queue()
        stop_event = threading.Event()
        stats = self._stats

        def produce() -> None:
            try:
                for start, stop in bounds:
                    buffer = None
                    while buffer is None:
                        if stop_event.is_set():
                            return
                        try:
                            buffer = free.get(timeout=0.1)
                        except queue.Empty:
                            continue
                    t0 = time.perf_counter()
                    rows = order.view(start, stop)
                    if rows is None:
                        rows = order.gather(start, stop, buffer)
                    stats.gather += time.perf_counter() - t0
                    ready.put((buffer, rows))
                    # Hand the GIL over now: a waiting consumer would otherwise
                    # wait out the interpreter's switch interval (5 ms) while
                    # this thread gathers the next batches.
                    time.sleep(0)
            except BaseException as exc:  # handed to the consumer, raised there
                ready.put((None, exc))

        thread = threading.Thread(target=produce, name=f"rcylon-loader-r{self.rank}", daemon=True)
        thread.start()
        held = None
        event = None
        try:
            for start, stop in bounds:
                if held is not None:
                    if event is not None:
                        event.synchronize()  # the copy to the GPU has read the buffer
                    free.put(held)
                    held = None
                t0 = time.perf_counter()
                buffer, rows = ready.get()
                if buffer is None:
                    raise LoaderError(f"task {getattr(self.ctx, 'task_id', '?')} rank {self.rank}: loader thread "
                                      f"failed: {type(rows).__name__}: {rows}") from rows
                held = buffer
                batch = self._to_torch(rows)
                event = self._copy_event()
                t1 = time.perf_counter()
                stats.wait += t1 - t0
                stats.batches += 1
                stats.rows += stop - start
                yield batch
                stats.compute += time.perf_counter() - t1
        finally:
            stop_event.set()
            thread.join(timeout=5)

    def _copy_event(self) -> Any:
        if self.device is None or self.device.type != "cuda":
            return None
        event = self._torch.cuda.Event()
        event.record()
        return event

    def stats(self) -> Dict[str, Any]:
        """Batches and rows served, and seconds waiting for data against seconds between batches (compute).

        ``wait_fraction`` near 0 means the loader keeps up with training.
        """
        return self._stats.as_dict(self.prepare_seconds, self.zero_copy)

    def __repr__(self) -> str:
        return (f"TorchLoader(rank={self.rank}/{self.size}, rows={self._matrix.rows}, width={self.width}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle!r}, block_size={self.block_size}, "
                f"steps={self.steps()}, zero_copy={self.zero_copy})")


def local_batches(table: pa.Table, features: Sequence[str], batch_size: int = 65536,
                  dtype: str = "float32") -> Iterator[Any]:
    """Batches of ``table``'s features in stored order, as torch tensors (views, no collective): for inference."""
    torch = require_torch()
    problems = check_columns(table, features, None)
    if problems:
        raise LoaderError("; ".join(problems))
    matrix = table_matrix(table, features, None, np.dtype(dtype))
    for start in range(0, matrix.rows, batch_size):
        yield torch.from_numpy(matrix.values[start:start + batch_size])
