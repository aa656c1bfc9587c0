"""Communicators: the few collectives data-parallel training needs, over MPI (mpi4py) or,
for a single process, over nothing.

Every reduction here is a gather followed by a sum *in rank order*
(``((x0 + x1) + x2) + ...``), done the same way on every rank: MPI_Allreduce may pick a
different summation tree per message size or library, so its bits are not guaranteed;
this way two runs at the same number of ranks give the same bits, and every rank holds
the same result.

The MPI collectives are non-blocking requests completed under a deadline
(RNN_GPU_COLLECTIVE_TIMEOUT seconds, default 300): a rank that waits longer, or that
hears of another rank's failure while waiting, prints why and aborts the whole job
(``MPI_Abort``), so no rank hangs forever.

Example (``mpiexec -n 4 python script.py``)::

    from rnn_gpu.dist import world
    comm = world()                       # MPI when launched by mpiexec, else one process
    total = comm.allreduce_sum(np.ones(3) * comm.rank)   # the same array on every rank
    cfg = comm.broadcast({"lr": 0.1} if comm.rank == 0 else None)
    rows = comm.gather(np.arange(2) + comm.rank)          # a list on rank 0, None elsewhere
"""
from __future__ import annotations

import os
import pickle
import sys
import time
from typing import Any

import numpy as np

from .launch import collective_timeout, launched_under_mpi

ERROR_TAG = 7177  # point-to-point messages that carry a failing rank's reason to rank 0
FAIL_GRACE = 3.0  # seconds a failing rank waits for rank 0 to report it and end the job


class Communicator:
    """The collectives of a group of `size` processes; this one is `rank`."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank among the processes of this machine
    wait_seconds: float = 0.0  # spent in collectives (MPI), waiting for slower ranks included

    def allgather_bytes(self, buf: np.ndarray) -> list[np.ndarray]:
        """Every rank's 1-D uint8 `buf` (sizes may differ), in rank order, on every rank."""
        raise NotImplementedError

    def broadcast_bytes(self, buf: np.ndarray | None, root: int = 0) -> np.ndarray:
        """`root`'s 1-D uint8 `buf` on every rank (`buf` is ignored elsewhere)."""
        raise NotImplementedError

    def fail(self, message: str, code: int) -> None:
        """End the job after a failure on this rank: rank 0 prints `message`."""
        print(message, file=sys.stderr)
        raise SystemExit(code)

    def alltoall_shards(self, send: np.ndarray, bounds: list[tuple[int, int]]) -> np.ndarray:
        """Rank r's share of everyone's `send` (1-D uint8, the same size and `bounds` on
        every rank): bytes ``[bounds[r][0], bounds[r][1])`` of each rank's buffer, as
        (size, hi - lo) in rank order. This one gathers whole buffers; MPI sends shares."""
        lo, hi = bounds[self.rank]
        return np.stack([p[lo:hi] for p in self.allgather_bytes(send)])

    # ---- built on the two above ------------------------------------------------------

    def allgather(self, obj: Any) -> list:
        """Every rank's (picklable) `obj`, in rank order, on every rank."""
        parts = self.allgather_bytes(np.frombuffer(pickle.dumps(obj), dtype=np.uint8))
        return [pickle.loads(p.tobytes()) for p in parts]

    def gather(self, obj: Any, root: int = 0) -> list | None:
        """Every rank's `obj` (an array or any picklable value) as a list on `root`, None
        elsewhere."""
        parts = self.allgather(obj)
        return parts if self.rank == root else None

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """`root`'s (picklable) `obj` on every rank."""
        buf = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.rank == root else None
        return pickle.loads(self.broadcast_bytes(buf, root).tobytes())

    def allreduce_sum(self, a: np.ndarray) -> np.ndarray:
        """The sum over ranks of the host array `a` (same shape and dtype on every rank),
        added in rank order: the same bits on every rank and in every run."""
        a = np.ascontiguousarray(a)
        parts = self.allgather_bytes(a.reshape(-1).view(np.uint8))
        return sum_in_rank_order([p.view(a.dtype) for p in parts]).reshape(a.shape)


def sum_in_rank_order(parts: list, out=None):
    """``((parts[0] + parts[1]) + parts[2]) + ...``, into `out` when given."""
    if out is None:
        out = parts[0].copy() if hasattr(parts[0], "shape") and parts[0].shape else \
            np.array(parts[0], dtype=np.float64)  # a 0-d array for scalars
    else:
        out[...] = parts[0]
    for p in parts[1:]:
        out += p
    return out


class LocalCommunicator(Communicator):
    """A single process: every collective returns its input."""

    def allgather_bytes(self, buf):
        return [np.asarray(buf, dtype=np.uint8).reshape(-1).copy()]

    def broadcast_bytes(self, buf, root=0):
        return np.asarray(buf, dtype=np.uint8).reshape(-1).copy()

    def __repr__(self) -> str:
        return "LocalCommunicator()"


class MPICommunicator(Communicator):
    """MPI through mpi4py on `comm` (default COMM_WORLD), with a deadline on every
    collective (`timeout` seconds; default RNN_GPU_COLLECTIVE_TIMEOUT or 300)."""

    def __init__(self, comm=None, timeout: float | None = None):
        from mpi4py import MPI  # noqa: PLC0415 - only under MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        node.Free()
        self.timeout = collective_timeout() if timeout is None else float(timeout)
        self.wait_seconds = 0.0  # in collectives, waiting for slower ranks included

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size})"

    def _wait(self, req, what: str) -> None:
        """Complete `req`; abort the job past the deadline or on another rank's failure."""
        t0 = time.perf_counter()
        deadline, next_look, spin = t0 + self.timeout, t0 + 0.05, t0 + 1e-3
        try:
            self._test_until_done(req, what, deadline, next_look, spin)
        finally:
            self.wait_seconds += time.perf_counter() - t0

    def _test_until_done(self, req, what, deadline, next_look, spin) -> None:
        while not req.Test():
            now = time.perf_counter()
            if now > spin:  # waiting on a slower rank: let it have the core, if it shares ours
                os.sched_yield()
            if now < next_look:
                continue
            next_look = now + 0.05
            if self.rank == 0:
                self._hear_failures()
            if now > deadline:
                self._abort(f"rnn-gpu: error: rank {self.rank}: {what} did not complete within "
                            f"{self.timeout:g} s (another rank is stuck or gone; the limit is "
                            f"RNN_GPU_COLLECTIVE_TIMEOUT); aborting the job", 1)

    def _hear_failures(self) -> None:
        """Rank 0: report a failure another rank announced, and end the job."""
        st = self.MPI.Status()
        if self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=ERROR_TAG, status=st):
            code, message = self.comm.recv(source=st.Get_source(), tag=ERROR_TAG)
            self._abort(message, code)

    def _abort(self, message: str, code: int) -> None:
        print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        self.comm.Abort(code)

    def fail(self, message: str, code: int) -> None:
        """Rank 0 prints `message` and aborts the job with status `code`; another rank
        sends it to rank 0 (which reports it at its next collective) and aborts itself
        if rank 0 has not ended the job within FAIL_GRACE seconds."""
        if self.rank == 0 or self.size == 1:
            self._abort(message, code)
        req = self.comm.isend((code, message.replace("rnn-gpu: error: ", f"rnn-gpu: error: rank {self.rank}: ", 1)),
                              dest=0, tag=ERROR_TAG)
        t_end = time.perf_counter() + FAIL_GRACE
        while time.perf_counter() < t_end:
            req.Test()
            time.sleep(0.01)
        self._abort(message, code)

    def allgather_bytes(self, buf):
        MPI = self.MPI
        buf = np.ascontiguousarray(buf, dtype=np.uint8).reshape(-1)
        n = np.array([buf.size], dtype=np.int64)
        sizes = np.empty(self.size, dtype=np.int64)
        self._wait(self.comm.Iallgather(n, sizes), "allgather (sizes)")
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        if int(sizes.min()) == int(sizes.max()):
            self._wait(self.comm.Iallgather([buf, MPI.BYTE], [out, MPI.BYTE]), "allgather")
        else:
            displ = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            self._wait(self.comm.Iallgatherv([buf, MPI.BYTE],
                                             [out, (sizes.tolist(), displ.tolist()), MPI.BYTE]),
                       "allgatherv")
        ends = np.cumsum(sizes)
        return [out[e - s:e] for s, e in zip(sizes.tolist(), ends.tolist())]

    def allgather_fixed(self, buf: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Every rank's 1-D uint8 `buf` (the same size on all) into `out` (size x
        buf.size), with no size exchange: the per-step path."""
        MPI = self.MPI
        self._wait(self.comm.Iallgather([buf, MPI.BYTE], [out, MPI.BYTE]), "allgather")
        return out

    def alltoall_shards(self, send, bounds, out=None):
        MPI = self.MPI
        lo, hi = bounds[self.rank]
        out = np.empty((self.size, hi - lo), dtype=np.uint8) if out is None else out
        counts, displs = [b - a for a, b in bounds], [a for a, _ in bounds]
        self._wait(self.comm.Ialltoallv([send, (counts, displs), MPI.BYTE],
                                        [out, ([hi - lo] * self.size,
                                               [r * (hi - lo) for r in range(self.size)]),
                                         MPI.BYTE]), "alltoallv")
        return out

    def broadcast_bytes(self, buf, root=0):
        MPI = self.MPI
        n = np.array([0 if buf is None else np.asarray(buf).size], dtype=np.int64)
        self._wait(self.comm.Ibcast(n, root=root), "broadcast (size)")
        out = (np.ascontiguousarray(buf, dtype=np.uint8).reshape(-1).copy() if self.rank == root
               else np.empty(int(n[0]), dtype=np.uint8))
        self._wait(self.comm.Ibcast([out, MPI.BYTE], root=root), "broadcast")
        return out


_WORLD: Communicator | None = None


def world() -> Communicator:
    """This process's communicator: MPI's world when the launcher started several ranks
    (mpi4py is imported then, and only then), else a :class:`LocalCommunicator`."""
    global _WORLD
    if _WORLD is None:
        if launched_under_mpi():
            try:
                import mpi4py  # noqa: PLC0415
            except ImportError:
                raise RuntimeError("started as one of several MPI ranks, but mpi4py is not "
                                   "installed: pip install 'rnn-gpu[mpi]'") from None
            mpi4py.rc.thread_level = "single"
            _WORLD = MPICommunicator()
        else:
            _WORLD = LocalCommunicator()
    return _WORLD
