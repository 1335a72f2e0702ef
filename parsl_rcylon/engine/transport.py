"""Moving Arrow tables between ranks.

* :func:`exchange_tables` sends table pieces to their destination ranks.  Each
  piece is written as one Arrow IPC stream into a single contiguous byte buffer
  and the buffers travel with ``Alltoallv`` (counts with ``Alltoall``), never
  pickled.  Received pieces are read back zero-copy from the receive buffer.
  Transfers larger than MPI's ``int`` counts allow are split into chunked
  point-to-point messages.
* :func:`exchange_columns` does the same for tables of fixed-width columns
  without nulls, column by column as raw values: every column arrives as one
  contiguous buffer, so the result has one chunk per column.

``mpi4py.MPI`` is imported by :func:`_mpi` when data first moves, not with
this module: importing it initialises MPI, and the engine is also imported
where that must not happen (the Parsl client, through the table layer).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence

import numpy as np
import pyarrow as pa

from .hashing import fixed_width_values

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py import MPI

logger = logging.getLogger(__name__)

#: Tag of the chunked point-to-point path; collectives have their own context,
#: so only a user's own point-to-point traffic with this tag could interfere.
_CHUNK_TAG = 0x7C71


def _mpi() -> Any:
    from mpi4py import MPI

    return MPI


def exchange_counts(comm: MPI.Intracomm, counts: np.ndarray) -> np.ndarray:
    """All-to-all of int64 counts: ``counts`` holds an equal block for each rank, in rank order."""
    received = np.empty_like(counts, dtype=np.int64)
    int64 = _mpi().INT64_T
    comm.Alltoall([np.ascontiguousarray(counts, dtype=np.int64), int64], [received, int64])
    return received


# -- Arrow IPC framing ---------------------------------------------------------------------------


def _ipc_size(table: pa.Table) -> int:
    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.size()


def _read_stream(buffer: pa.Buffer) -> pa.Table:
    # Reading from an in-memory buffer is zero-copy: the table's buffers point
    # into the receive buffer, which stays alive as long as they do.
    return pa.ipc.open_stream(buffer).read_all()


# -- byte transport ------------------------------------------------------------------------------


def _displacements(counts: np.ndarray) -> np.ndarray:
    displs = np.zeros(len(counts), dtype=np.int64)
    if len(counts) > 1:
        np.cumsum(counts[:-1], out=displs[1:])
    return displs


def exchange_bytes(
    comm: MPI.Intracomm, sendbuf: np.ndarray, sendcounts: np.ndarray, recvcounts: np.ndarray, *, limit: int
) -> pa.Buffer:
    """All-to-all exchange of contiguous byte ranges.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        Communicator.
    sendbuf : numpy.ndarray of uint8
        Bytes for rank 0, then rank 1, ...
    sendcounts, recvcounts : numpy.ndarray of int64
        Bytes to send to / receive from each rank.
    limit : int
        The most bytes one MPI call may move (``EngineOptions.max_message_bytes``).

    Returns
    -------
    pyarrow.Buffer
        Bytes from rank 0, then rank 1, ... (allocated by Arrow's memory pool).
    """
    MPI = _mpi()
    size = comm.Get_size()
    total_send = int(sendcounts.sum())
    total_recv = int(recvcounts.sum())
    received = pa.allocate_buffer(total_recv)
    recvbuf = np.frombuffer(received, dtype=np.uint8)
    sdispls = _displacements(sendcounts)
    rdispls = _displacements(recvcounts)
    # Every rank must take the same path, so the decision uses the global maximum.
    largest = comm.allreduce(max(total_send, total_recv), op=MPI.MAX)
    if largest <= limit:
        comm.Alltoallv(
            [sendbuf, (sendcounts.tolist(), sdispls.tolist()), MPI.BYTE],
            [recvbuf, (recvcounts.tolist(), rdispls.tolist()), MPI.BYTE],
        )
        return received
    logger.debug("exchange of up to %d bytes per rank: chunked point-to-point (limit %d)", largest, limit)
    rank = comm.Get_rank()
    own = int(sendcounts[rank])
    recvbuf[rdispls[rank] : rdispls[rank] + own] = sendbuf[sdispls[rank] : sdispls[rank] + own]
    requests = []
    # Receives first so that large sends find a posted buffer.
    for offset in range(1, size):
        src = (rank - offset) % size
        start, count = int(rdispls[src]), int(recvcounts[src])
        for pos in range(0, count, limit):
            piece = recvbuf[start + pos : start + min(count, pos + limit)]
            requests.append(comm.Irecv([piece, MPI.BYTE], source=src, tag=_CHUNK_TAG))
    for offset in range(1, size):
        dst = (rank + offset) % size
        start, count = int(sdispls[dst]), int(sendcounts[dst])
        for pos in range(0, count, limit):
            piece = sendbuf[start + pos : start + min(count, pos + limit)]
            requests.append(comm.Isend([piece, MPI.BYTE], dest=dst, tag=_CHUNK_TAG))
    MPI.Request.Waitall(requests)
    return received


def exchange_tables(
    comm: MPI.Intracomm, provide: Callable[[int], Sequence[pa.Table]], nbuckets: int = 1, *, limit: int
) -> List[List[pa.Table]]:
    """Send each rank its pieces; return what arrived, per bucket and source.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        Communicator.
    provide : callable
        ``provide(d)`` returns the ``nbuckets`` tables (same schema on every
        rank) destined for rank ``d``.  It is called once per rank, other
        ranks first and this rank last, so each piece can be materialised
        just before it is serialised and dropped right after: at no time are
        all of them, the send buffer and the receive buffer alive together.
    nbuckets : int
        Pieces per destination rank.
    limit : int
        The most bytes one MPI call may move.

    Returns
    -------
    list of lists of pyarrow.Table
        ``result[b][s]``: the rows rank ``s`` sent for bucket ``b``, in the
        order ``s`` sent them.  Concatenating over ``s`` keeps the global row
        order, which stable operations (sort, first/last) rely on.
    """
    size, rank = comm.Get_size(), comm.Get_rank()
    sizes = np.zeros((size, nbuckets), dtype=np.int64)
    outgoing: List[Optional[Sequence[pa.Table]]] = [None] * size
    for dst in range(size):
        if dst == rank:
            continue  # our own rows never leave the process
        outgoing[dst] = provide(dst)
        for bucket, piece in enumerate(outgoing[dst]):
            if piece.num_rows:
                sizes[dst, bucket] = _ipc_size(piece)
    # Arrow's allocator for both buffers: memory freed by the pieces is reused at once.
    send = pa.allocate_buffer(int(sizes.sum()))
    if send.size:
        sink = pa.FixedSizeBufferWriter(send)
        for dst in range(size):
            if dst == rank:
                continue
            for bucket, piece in enumerate(outgoing[dst]):
                if sizes[dst, bucket]:
                    with pa.ipc.new_stream(sink, piece.schema) as writer:
                        writer.write_table(piece)
            outgoing[dst] = None
        sink.close()
    outgoing = []
    recv_sizes = exchange_counts(comm, sizes)
    received = exchange_bytes(comm, np.frombuffer(send, dtype=np.uint8), sizes.sum(axis=1),
                              recv_sizes.sum(axis=1), limit=limit)
    del send
    # The allocator keeps freed pages for reuse; hand the pieces' and the send
    # buffer's back now so that they do not add to this rank's peak footprint.
    pa.default_memory_pool().release_unused()
    own = list(provide(rank))
    result: List[List[pa.Table]] = [[own[b]] * size for b in range(nbuckets)]
    empty = own[0].schema.empty_table()
    offset = 0
    for src in range(size):
        if src == rank:
            continue
        for bucket in range(nbuckets):
            nbytes = int(recv_sizes[src, bucket])
            result[bucket][src] = _read_stream(received.slice(offset, nbytes)) if nbytes else empty
            offset += nbytes
    return result


# -- columnar exchange ---------------------------------------------------------------------------


def fixed_width(dtype: pa.DataType) -> bool:
    """Whether a column of ``dtype`` is one values buffer of whole-byte elements (plus validity)."""
    return ((pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_temporal(dtype))
            and not pa.types.is_interval(dtype) and dtype.bit_width % 8 == 0)


def columnar_exchangeable(table: pa.Table) -> bool:
    """Whether :func:`exchange_columns` can move ``table``: fixed-width columns, no nulls."""
    return all(fixed_width(f.type) for f in table.schema) and not any(c.null_count for c in table.columns)


def _raw_values(column: pa.ChunkedArray, width: int) -> np.ndarray:
    dtype = np.dtype(f"u{width}")
    views = [fixed_width_values(c, dtype) for c in column.chunks if len(c)]
    if len(views) == 1:
        return views[0]
    return np.concatenate(views) if views else np.zeros(0, dtype=dtype)


def exchange_columns(comm: MPI.Intracomm, table: pa.Table, order: np.ndarray, starts: np.ndarray,
                     rows_in: Optional[np.ndarray] = None, *, limit: int) -> pa.Table:
    """Send rows ``order[starts[d]:starts[d + 1]]`` of ``table`` to rank ``d``; return what arrived.

    For tables :func:`columnar_exchangeable` accepts (the caller decides for
    all ranks).  Each column travels on its own as raw values, so only one
    column's send buffer exists at a time, this rank's own rows are not
    copied into a separate piece, and every column arrives as one contiguous
    buffer: rows from rank 0 first, then rank 1, ..., each in the order sent.
    A later gather from such a table reads one chunk per column (Arrow's
    ``take`` concatenates chunked columns first) and can free each column as
    soon as it has been gathered.  ``rows_in`` (rows from each rank), where
    the caller already exchanged its counts, saves the count ``Alltoall``;
    ``limit`` is the most bytes one MPI call may move.
    """
    rows_out = np.diff(starts).astype(np.int64)
    if rows_in is None:
        rows_in = exchange_counts(comm, rows_out)
    total = int(rows_in.sum())
    # Arrow's take gathers these scattered rows faster than np.take (docs/engine.md).
    indices = pa.array(order)
    arrays = []
    for field, column in zip(table.schema, table.columns, strict=True):
        width = field.type.bit_width // 8
        send = _raw_values(column.take(indices), width)
        received = exchange_bytes(comm, send.view(np.uint8), rows_out * width, rows_in * width, limit=limit)
        del send
        arrays.append(pa.Array.from_buffers(field.type, total, [None, received]))
    return pa.Table.from_arrays(arrays, schema=table.schema)
