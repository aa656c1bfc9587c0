"""A stand-in for ``cupy.cuda.nccl`` on the emulated device: the names and signatures of
CuPy's binding (cupy_backends/cuda/libs/nccl.pyx: ``get_unique_id() -> bytes`` of
NCCL_UNIQUE_ID_BYTES, ``NcclCommunicator(ndev, commId, rank)``, ``allGather(sendbuf,
recvbuf, count, datatype, stream)``, ``allReduce(sendbuf, recvbuf, count, datatype, op,
stream)``, ``broadcast``, buffers as device pointers), for ranks that are threads of one
process (communicators built from the same id meet at a barrier) or, with
:data:`transport` set to a host communicator (rnn_gpu.dist), processes of an MPI job; the
bytes travel between the (host) memory the emulated device arrays live in."""
from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

NCCL_UNIQUE_ID_BYTES = 128
NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_UINT32, NCCL_INT64, NCCL_UINT64 = range(6)
NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 6, 7, 8
NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = range(4)
_DTYPES = {NCCL_INT8: np.int8, NCCL_UINT8: np.uint8, NCCL_INT32: np.int32,
           NCCL_UINT32: np.uint32, NCCL_INT64: np.int64, NCCL_UINT64: np.uint64,
           NCCL_FLOAT16: np.float16, NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}

available = True
transport = None  # a rnn_gpu.dist.Communicator: ranks are processes, bytes go through it
_groups: dict[bytes, _Group] = {}
_lock = threading.Lock()
calls: list[tuple[str, int]] = []  # (operation, count) of every collective, for tests


class NcclError(RuntimeError):
    pass


def get_unique_id() -> bytes:
    return os.urandom(NCCL_UNIQUE_ID_BYTES)


def get_version() -> int:
    return 22000


class _Group:
    def __init__(self, ndev: int):
        self.ndev = ndev
        self.barrier = threading.Barrier(ndev, timeout=60)
        self.slots: list[bytes | None] = [None] * ndev


class NcclCommunicator:
    def __init__(self, ndev: int, commId: bytes, rank: int, config=None):
        if not isinstance(commId, bytes) or len(commId) != NCCL_UNIQUE_ID_BYTES:
            raise ValueError(f"commId length {len(commId)} != {NCCL_UNIQUE_ID_BYTES}.")
        if not 0 <= rank < ndev:
            raise NcclError(f"rank {rank} outside [0, {ndev})")
        self._rank = rank
        if transport is not None:
            if transport.size != ndev or transport.rank != rank:
                raise NcclError(f"rank {rank} of {ndev} on a transport of rank "
                                f"{transport.rank} of {transport.size}")
            self._group = _Group(1)
            self._group.ndev = ndev
            return
        with _lock:
            self._group = _groups.setdefault(commId, _Group(ndev))
        if self._group.ndev != ndev:
            raise NcclError(f"ndev {ndev} differs from the group's {self._group.ndev}")
        self._rank = rank

    def rank_id(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._group.ndev

    def device_id(self) -> int:
        return 0

    def destroy(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def _exchange(self, data: bytes) -> list[bytes]:
        if transport is not None:
            return [p.tobytes() for p in transport.allgather_bytes(np.frombuffer(data, np.uint8))]
        g = self._group
        g.slots[self._rank] = data
        g.barrier.wait()
        out = list(g.slots)
        g.barrier.wait()
        return out

    def allGather(self, sendbuf: int, recvbuf: int, count: int, datatype: int, stream: int) -> None:
        n = count * np.dtype(_DTYPES[datatype]).itemsize
        if self._rank == 0:
            calls.append(("allGather", count))
        for r, part in enumerate(self._exchange(ctypes.string_at(sendbuf, n))):
            ctypes.memmove(recvbuf + r * n, part, n)

    def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,
                  stream: int) -> None:
        if op != NCCL_SUM:
            raise NcclError("the stand-in reduces with NCCL_SUM only")
        dt = np.dtype(_DTYPES[datatype])
        if self._rank == 0:
            calls.append(("allReduce", count))
        parts = self._exchange(ctypes.string_at(sendbuf, count * dt.itemsize))
        total = np.frombuffer(parts[0], dtype=dt).copy()
        for p in parts[1:]:
            total += np.frombuffer(p, dtype=dt)
        ctypes.memmove(recvbuf, total.tobytes(), total.nbytes)

    def broadcast(self, sendbuff: int, recvbuff: int, count: int, datatype: int, root: int,
                  stream: int) -> None:
        n = count * np.dtype(_DTYPES[datatype]).itemsize
        parts = self._exchange(ctypes.string_at(sendbuff, n) if self._rank == root else b"")
        ctypes.memmove(recvbuff, parts[root], n)
