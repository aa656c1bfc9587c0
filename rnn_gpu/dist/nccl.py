"""Gradients summed on the GPUs with NCCL (through ``cupy.cuda.nccl``), one fused device
buffer per step.

The NCCL communicator's unique id comes from rank 0 and travels over MPI. Each step packs
every gradient into one contiguous device buffer, ``ncclAllGather``s it (all ranks' buffers
side by side, (size, n)), and adds the rows in rank order on the device: the same order,
hence the same bits, as the host path and as every other run at this N. (An
``ncclAllReduce`` moves fewer bytes, 2(N-1)/N of the buffer against N-1, but its
summation order depends on NCCL's choice of algorithm and channels.) With
RNN_GPU_GRAD_SUM=allreduce the step makes one ncclAllReduce instead: the choice for many
GPUs across nodes, where the gather's N-1 buffers per step cost more than the compute
(see the README's figures); its bits are then NCCL's (pin NCCL_ALGO and NCCL_PROTO for
repeatable runs). The step's meta (loss, clock, interrupt) is a few float64 on the host
and travels by MPI.
"""
from __future__ import annotations

import os

import numpy as np

from .comm import sum_in_rank_order

MODE_VARIABLE = "RNN_GPU_GRAD_SUM"
MODES = ("gather", "allreduce")


def sum_mode(environ=None) -> str:
    """How the NCCL path sums: "gather" (default; rank order) or "allreduce"."""
    mode = (os.environ if environ is None else environ).get(MODE_VARIABLE, "") or "gather"
    if mode not in MODES:
        raise ValueError(f"{MODE_VARIABLE}: expected one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _nccl(module=None):
    if module is not None:
        return module
    from cupy.cuda import nccl  # noqa: PLC0415 - GPU only

    return nccl


def nccl_unavailable_reason(module=None) -> str | None:
    """None when NCCL can be used through `module` (default ``cupy.cuda.nccl``), else why."""
    try:
        nccl = _nccl(module)
    except Exception as e:  # noqa: BLE001 - any import failure is a reason
        return f"cupy.cuda.nccl does not import: {type(e).__name__}: {e}"
    if not getattr(nccl, "available", True):
        return "CuPy finds no NCCL library"
    return None


class NcclSum:
    """The step's gradient sum on the device: one fused buffer, one ncclAllGather, a
    rank-order sum. Built collectively (rank 0's unique id is broadcast over MPI)."""

    def __init__(self, comm, grads: dict, xp, module=None, mode: str | None = None):
        self.comm, self.xp = comm, xp
        self.mode = sum_mode() if mode is None else mode
        self.nccl = nccl = _nccl(module)
        uid = nccl.get_unique_id() if comm.rank == 0 else None
        uid = comm.broadcast(uid)
        self.nc = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.keys = list(grads)
        dt = np.dtype(grads[self.keys[0]].dtype)
        kinds = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        if dt not in kinds:
            raise ValueError(f"grads: expected float32 or float64, got {dt}")
        self.datatype = kinds[dt]
        sizes = [int(grads[k].size) for k in self.keys]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.n = self.offsets[-1]
        self.send = xp.empty(self.n, dtype=dt)
        self.recv = xp.empty((comm.size if self.mode == "gather" else 0, self.n), dtype=dt)
        self.total = xp.empty(self.n, dtype=dt)

    def __call__(self, grads: dict, meta: np.ndarray) -> np.ndarray:
        xp = self.xp
        for k, a, b in zip(self.keys, self.offsets, self.offsets[1:]):
            self.send[a:b] = grads[k].reshape(-1)
        stream = xp.cuda.get_current_stream()
        if self.mode == "allreduce":
            self.nc.allReduce(self.send.data.ptr, self.total.data.ptr, self.n, self.datatype,
                              self.nccl.NCCL_SUM, stream.ptr)
        else:
            self.nc.allGather(self.send.data.ptr, self.recv.data.ptr, self.n, self.datatype,
                              stream.ptr)
            sum_in_rank_order([self.recv[r] for r in range(self.comm.size)], out=self.total)
        for k, a, b in zip(self.keys, self.offsets, self.offsets[1:]):
            grads[k][...] = self.total[a:b].reshape(grads[k].shape)
        metas = self.comm.allgather_bytes(np.ascontiguousarray(meta, dtype=np.float64).view(np.uint8))
        return np.stack([m.view(np.float64) for m in metas])
