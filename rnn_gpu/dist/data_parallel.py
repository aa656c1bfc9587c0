"""Data-parallel training: what the :class:`~rnn_gpu.lm.Trainer` asks of its ranks.

With N ranks and a global batch of B streams, rank r owns the streams
``[r*B/N, (r+1)*B/N)`` of the single-process column layout: it trains on those columns,
carries their hidden states (B/N, H; an LSTM's h and c), and draws the dropout multipliers of the whole
(T, B, H) batch from the run's random stream (the same on every rank) to take its slice.
So each stream sees the same data, state and mask at any N.

Per step, one fused buffer per rank -- every gradient, then float64 (loss, seconds,
interrupted) -- is gathered to all ranks and summed in rank order
(:func:`~rnn_gpu.dist.comm.sum_in_rank_order`); the trainer then scales by the global
token count, clips with the global norm and steps: the same arithmetic on every rank.
On a GPU the gradients travel by NCCL (:mod:`rnn_gpu.dist.nccl`) when it is available,
else through host MPI (said once). Validation columns are split the same way and the
loss sums reduced; checkpoints gather the states of all B streams to rank 0, which alone
writes, so a checkpoint is the one a single process would write.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time

import numpy as np

from ..backend import to_numpy
from ..errors import RnnGpuError, UsageError
from ..states import from_parts, is_pair, map_state
from ..states import parts as state_parts
from .comm import Communicator, LocalCommunicator, sum_in_rank_order, world

META = 3  # float64 (loss, rank's clock in seconds, interrupted) after the gradients


class DistributedError(RnnGpuError):
    """The ranks of a data-parallel run disagree (their parameters drifted apart)."""

    exit_code = 1


def stream_range(batch_size: int, rank: int, size: int, name: str = "batch_size") -> tuple[int, int]:
    """[lo, hi) of the streams rank `rank` of `size` owns; UsageError (naming the
    argument `name`) unless `size` divides `batch_size`."""
    if batch_size % size:
        raise UsageError(f"{name} {batch_size} is not divisible by the number of MPI "
                         f"ranks {size}: each rank takes batch_size / ranks streams")
    per = batch_size // size
    return rank * per, (rank + 1) * per


def split_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """[lo, hi) of rank `rank`'s share of `n` columns (contiguous; shares differ by <= 1)."""
    return rank * n // size, (rank + 1) * n // size


def select_device(local_rank: int, backend: str, log=None) -> int | None:
    """Make device ``local_rank % device_count`` CuPy's current one (the devices are those
    CUDA_VISIBLE_DEVICES shows); None when there is no GPU to pick or `backend` is numpy."""
    if backend == "numpy":
        return None
    try:
        import cupy  # noqa: PLC0415
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no CuPy or no device: the backend says why later
        return None
    if n < 1:
        return None
    dev = local_rank % n
    cupy.cuda.Device(dev).use()
    return dev


class DataParallel:
    """The trainer's view of its ranks. `comm` None: :func:`~rnn_gpu.dist.world`; with
    one rank every method is the identity and costs nothing."""

    def __init__(self, batch_size: int, backend: str = "auto", comm: Communicator | None = None,
                 *, nccl=None, name: str = "batch_size"):
        self.comm = comm = world() if comm is None else comm
        self.size, self.rank = comm.size, comm.rank
        self.is_root = comm.rank == 0
        self.batch_size = batch_size
        self.lo, self.hi = stream_range(batch_size, comm.rank, comm.size, name)
        self.device = select_device(comm.local_rank, backend) if comm.size > 1 else None
        self._nccl_module = nccl  # a cupy.cuda.nccl stand-in (tests); None: the real one
        self._summer = None  # made on the first step, when the grads' backend is known
        self._agreed_interrupt = False
        self._clock = 0.0  # rank 0's seconds at the last step

    @property
    def comm_seconds(self) -> float:
        """Seconds this rank has spent in collectives (waiting for slower ranks included)."""
        return self.comm.wait_seconds

    @property
    def active(self) -> bool:
        return self.size > 1

    # ---- data ------------------------------------------------------------------------

    def streams(self, data: np.ndarray) -> np.ndarray:
        """This rank's columns of batchified `data` (rows, B)."""
        return data if not self.active else np.ascontiguousarray(data[:, self.lo:self.hi])

    def local_hidden(self, hidden):
        """This rank's streams of a state restored from a checkpoint (or None): the
        streams are the next-to-last axis of (B, H) and of a stack's (L*D, B, H); an
        LSTM's pair (h, c) is split element by element."""
        if hidden is None or not self.active:
            return hidden
        return map_state(lambda a: a[..., self.lo:self.hi, :].copy(), hidden)

    def local_dropout(self, drop):
        """This rank's streams of the dropout multipliers drawn for the whole batch, (T, B, H)
        or a stack's (L, T, B, D*H): the streams are the next-to-last axis."""
        if drop is None or not self.active:
            return drop
        return np.ascontiguousarray(drop[..., self.lo:self.hi, :])

    def console(self, console):
        """Rank 0 prints; the other ranks get a quiet console."""
        if self.is_root:
            return console
        from rich.console import Console  # noqa: PLC0415
        return Console(quiet=True)

    # ---- the step --------------------------------------------------------------------

    def sum_step(self, grads: dict, loss: float, ntok: int, interrupted: bool,
                 seconds: float, backend) -> tuple[float, int]:
        """Sum `grads` (in place) and `loss` over ranks; returns (global loss, global
        tokens). Also agrees on an interrupt (any rank's) and on the clock (rank 0's)."""
        if not self.active:
            return loss, ntok
        if self._summer is None:
            self._summer = make_summer(self.comm, grads, backend, self._nccl_module,
                                       say=self._say)
        meta = np.array([loss, seconds, 1.0 if interrupted else 0.0], dtype=np.float64)
        metas = self._summer(grads, meta)  # (size, META)
        self._agreed_interrupt = bool(metas[:, 2].any())
        self._clock = float(metas[0, 1])
        return float(sum_in_rank_order(list(metas[:, 0]))), ntok * self.size

    @property
    def shards(self) -> bool:
        """True when each rank updates only its shard (the host path): the trainer then
        calls :meth:`update` instead of scaling, clipping and stepping itself."""
        return isinstance(self._summer, ShardedStep)

    def update(self, inv: float, max_norm: float | None, optimizer) -> float:
        """The sharded step after :meth:`sum_step`: scale, clip, step, share; the norm."""
        return self._summer.update(inv, max_norm, optimizer)

    def gather_optimizer(self, optimizer) -> None:
        """Before a checkpoint: every rank's optimizer state made whole."""
        if self.shards:
            self._summer.gather_state(optimizer)

    def interrupted(self, local: bool) -> bool:
        """Stop now? Under MPI, only what the ranks agreed at the last step counts, so
        every rank stops after the same step."""
        return self._agreed_interrupt if self.active else local

    def seconds(self, start: float) -> float:
        """Training seconds for the stopping rules and schedules: rank 0's clock at the
        last step under MPI, so every rank takes the same decisions."""
        return self._clock if self.active else time.perf_counter() - start

    def _say(self, line: str) -> None:
        if self.is_root:
            print(f"rnn-gpu: {line}", file=sys.stderr, flush=True)

    # ---- evaluation and checkpoints ----------------------------------------------------

    def evaluate(self, model, source: np.ndarray, bptt: int) -> float:
        """Mean validation loss per token over all ranks' columns of `source` (rows, E)."""
        from ..lm.metrics import evaluate, loss_sum  # noqa: PLC0415

        if not self.active:
            return evaluate(model, source, bptt)
        lo, hi = split_range(source.shape[1], self.rank, self.size)
        total, count = loss_sum(model, source[:, lo:hi], bptt) if hi > lo else (0.0, 0)
        parts = self.comm.allgather((total, count))
        total = sum_in_rank_order([np.float64(t) for t, _ in parts])
        count = sum(c for _, c in parts)
        return float(total) / count

    def check_in_step(self, params: dict, step: int) -> None:
        """DistributedError on every rank unless all ranks hold the same parameters."""
        if not self.active:
            return
        h = hashlib.blake2b(digest_size=16)
        for k in sorted(params):
            h.update(np.ascontiguousarray(to_numpy(params[k])).tobytes())
        sums = self.comm.allgather(h.hexdigest())
        if len(set(sums)) > 1:
            raise DistributedError(
                f"the ranks' parameters differ at step {step} (checksums "
                f"{', '.join(f'rank {r}: {s[:12]}' for r, s in enumerate(sums))}); stopping")

    def full_hidden(self, hidden, backend):
        """The states of all streams ((B, H), a stack's (L*D, B, H), an LSTM's pair of
        those), gathered to rank 0 in stream order (None on the other ranks, and when no
        state is carried); the identity with one rank. One collective for either form."""
        if not self.active:
            return hidden
        parts = self.comm.gather(None if hidden is None else
                                 tuple(to_numpy(a) for a in state_parts(hidden)))
        if parts is None or parts[0] is None:
            return None
        # streams: the next-to-last axis of every element
        whole = [backend.asarray(np.concatenate(p, axis=-2)) for p in zip(*parts)]
        return from_parts(whole, is_pair(hidden))

    def root_verdict(self, check) -> None:
        """Run `check()` on rank 0 only and share its verdict: the error it raised (an
        RnnGpuError or OSError) is raised on every rank."""
        if not self.active:
            check()
            return
        err = None
        if self.is_root:
            try:
                check()
            except (RnnGpuError, OSError) as e:
                err = e
        err = self.comm.broadcast(err)
        if err is not None:
            raise err


def make_summer(comm: Communicator, grads: dict, backend, nccl_module=None, *, say=print):
    """The step's gradient sum for `grads` on `backend`: a callable (grads, meta) ->
    (size, META) metas. On GPUs it sums the gradients over ranks in place; on the host
    (:class:`ShardedStep`) each rank gets the sum of its shard and updates that."""
    if backend.is_gpu:
        from .nccl import NcclSum, nccl_unavailable_reason  # noqa: PLC0415

        why = nccl_unavailable_reason(nccl_module)
        if why is None:
            return NcclSum(comm, grads, backend.xp, nccl_module)
        say(f"NCCL is unavailable ({why}); gradients are summed through host MPI "
            "(pip install nvidia-nccl-cu12 for the device path)")
        return HostSum(comm, grads, backend.xp)
    return ShardedStep(comm, grads)


class HostSum:
    """Gradients summed through host MPI: packed into one host buffer with the step's
    meta, gathered from all ranks in one call, summed in rank order, unpacked."""

    def __init__(self, comm, grads: dict, xp):
        self.comm, self.xp = comm, xp
        self.keys = list(grads)
        self.dtype = np.dtype(grads[self.keys[0]].dtype)
        sizes = [int(grads[k].size) for k in self.keys]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.n = self.offsets[-1]
        self.nbytes = self.n * self.dtype.itemsize + META * 8
        self.send = np.empty(self.nbytes, dtype=np.uint8)
        self.recv = np.empty((comm.size, self.nbytes), dtype=np.uint8)
        self.total = np.empty(self.n, dtype=self.dtype)
        self._dev = None  # the device side of the fused buffer (GPU backends)

    def __call__(self, grads: dict, meta: np.ndarray) -> np.ndarray:
        g = self.send[: self.n * self.dtype.itemsize].view(self.dtype)
        if self.xp is np:
            for k, a, b in zip(self.keys, self.offsets, self.offsets[1:]):
                g[a:b] = grads[k].reshape(-1)
        else:  # one fused device buffer, one copy each way
            if self._dev is None:
                self._dev = self.xp.empty(self.n, dtype=self.dtype)
            for k, a, b in zip(self.keys, self.offsets, self.offsets[1:]):
                self._dev[a:b] = grads[k].reshape(-1)
            g[:] = to_numpy(self._dev)
        self.send[self.n * self.dtype.itemsize:].view(np.float64)[:] = meta
        gather = getattr(self.comm, "allgather_fixed", None)
        if gather is not None:
            gather(self.send, self.recv)
        else:
            self.recv[...] = np.stack(self.comm.allgather_bytes(self.send))
        body = self.recv[:, : self.n * self.dtype.itemsize].view(self.dtype)  # (size, n)
        sum_in_rank_order(list(body), out=self.total)
        total = self.total if self.xp is np else self.xp.asarray(self.total)
        for k, a, b in zip(self.keys, self.offsets, self.offsets[1:]):
            grads[k][...] = total[a:b].reshape(grads[k].shape)
        return self.recv[:, self.n * self.dtype.itemsize:].copy().view(np.float64)  # (size, META)


class ShardedStep:
    """The host path: the flat gradient vector is cut into N contiguous shards; each
    rank receives its shard of every rank's gradients (one all-to-all, (N-1)/N of the
    buffer), sums them in rank order, scales, clips with the global norm (the ranks'
    squared norms added in rank order) and steps the optimizer on its shard only; the
    updated shards are then gathered by every rank. The optimizer's arithmetic is per
    element, so the parameters are those of one process stepping the whole vector; the
    optimizer's state is current on each rank for its shard only, and gathered before a
    checkpoint (:meth:`gather_state`)."""

    def __init__(self, comm, grads: dict):
        self.comm = comm
        self.keys = list(grads)
        self.dtype = dt = np.dtype(grads[self.keys[0]].dtype)
        sizes = [int(grads[k].size) for k in self.keys]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.n = n = self.offsets[-1]
        self.bounds = [split_range(n, r, comm.size) for r in range(comm.size)]
        self.lo, self.hi = lo, hi = self.bounds[comm.rank]
        # (key, lo, hi) of each parameter's part in this rank's shard, and where it sits
        self.pieces = [(k, max(a, lo) - a, min(b, hi) - a, max(a, lo) - lo)
                       for k, a, b in zip(self.keys, self.offsets, self.offsets[1:])
                       if a < hi and b > lo]
        # every flat vector lists each parameter's elements in its memory order (U is
        # column-major), so that a shard of it is a view of the parameters and state
        self.orders = {k: memory_order(grads[k]) for k in self.keys}
        self.flat = np.empty(n, dtype=dt)
        self.shard = np.empty(hi - lo, dtype=dt)
        self.recv = np.empty((comm.size, (hi - lo) * dt.itemsize), dtype=np.uint8)
        self.byte_bounds = [(a * dt.itemsize, b * dt.itemsize) for a, b in self.bounds]

    def __call__(self, grads: dict, meta: np.ndarray) -> np.ndarray:
        for k, a, b in zip(self.keys, self.offsets, self.offsets[1:]):
            self.flat[a:b] = grads[k].reshape(-1, order=self.orders[k])
        metas = self.comm.allgather_bytes(np.ascontiguousarray(meta, np.float64).view(np.uint8))
        send = self.flat.view(np.uint8)
        if isinstance(self.comm, _MPI_TYPES()):
            parts = self.comm.alltoall_shards(send, self.byte_bounds, self.recv)
        else:
            parts = self.comm.alltoall_shards(send, self.byte_bounds)
        sum_in_rank_order(list(parts.view(self.dtype)), out=self.shard)
        return np.stack([m.view(np.float64) for m in metas])

    def update(self, inv: float, max_norm: float | None, optimizer) -> float:
        """Scale this rank's summed shard by `inv`, clip with the global norm, step
        `optimizer` on the shard, share the updated parameters; returns the norm (not
        finite: nothing is updated)."""
        from ..lm.optim import clip_factor  # noqa: PLC0415

        for k in self.keys:
            if memory_order(optimizer.params[k]) != self.orders[k]:
                raise ValueError(f"params[{k!r}]: laid out unlike its gradient")
        g = self.shard
        g *= self.dtype.type(inv)
        sq = self.comm.allgather(float(np.vdot(g, g)))
        norm = math.sqrt(float(sum_in_rank_order([np.float64(x) for x in sq])))
        if not math.isfinite(norm):
            return norm
        f = clip_factor(norm, max_norm)
        if f is not None:
            g *= self.dtype.type(f)
        optimizer.step_pieces([(k, a, b, g[o:o + b - a]) for k, a, b, o in self.pieces])
        self._share({k: optimizer.params[k] for k in self.keys})
        return norm

    def _share(self, arrays: dict) -> None:
        """Every rank's shard of the flat `arrays` (keyed like the gradients) into all."""
        mine = self.flat[self.lo:self.hi]
        for k, a, b, o in self.pieces:
            mine[o:o + b - a] = flat_view(arrays[k])[a:b]
        for (lo, hi), part in zip(self.bounds, self.comm.allgather_bytes(mine.view(np.uint8))):
            self.flat[lo:hi] = part.view(self.dtype)
        for k, a, b in zip(self.keys, self.offsets, self.offsets[1:]):
            flat_view(arrays[k])[:] = self.flat[a:b]

    def gather_state(self, optimizer) -> None:
        """Make every rank's optimizer state whole (each rank updated its shard only)."""
        for slot in optimizer.state.values():
            self._share(slot)


def flat_view(a):
    from ..lm.optim import flat_view as f  # noqa: PLC0415 - rnn_gpu.lm imports this module

    return f(a)


def memory_order(a) -> str:
    from ..lm.optim import memory_order as f  # noqa: PLC0415

    return f(a)


def _MPI_TYPES():
    from .comm import MPICommunicator  # noqa: PLC0415

    return (MPICommunicator,)
