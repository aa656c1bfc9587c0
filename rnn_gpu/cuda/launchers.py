"""CUDA launchers for the engine's kernels: :class:`CudaOps`, the CuPy backend's kernel set.

One launcher per kernel, with the signature and the in-place semantics of its NumPy twin
in :mod:`rnn_gpu.ops.numpy_ops`. CuPy checks nothing passed to a RawKernel, so every
launcher checks dtype (float32 or float64, the same for all float arguments),
C-contiguity, shapes and that arrays are device arrays, and raises
``ValueError("kernel: arg: expected ..., got ...")``; then it computes its grid and
launches on the current stream.

A :class:`CudaOps` is handed everything device-specific: the array module (``cupy``), a
kernel loader (:class:`rnn_gpu.cuda.compile.RawModuleLoader`, or the tests' emulator) and
a GEMM object (:class:`rnn_gpu.cuda.blas.CublasGemm`). GEMMs go straight to cuBLAS so
that they can accumulate (beta = 1) and never allocate.

Environment: ``RNN_GPU_OUTER=cublas|tiled`` forces the outer-product version and
``RNN_GPU_RECUR=gemm|fused`` the recurrence (tests, benchmarks); read at each call.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .blas import CublasGemm
from .blas import describe as _desc
from .blas import fail as _fail
from .outer import OUTER_TILE, OuterChoice, tiled_fits

# Launch configuration. Each value is also passed to the .cu file as a #define, so the
# kernel and its launcher cannot disagree.
ELEM_BLOCK = 256  # pointwise kernels
XENT_BLOCK = 256  # threads per row in the loss kernels
OUTER_THREADS, OUTER_TN = 16, 16
BIAS_COLS, BIAS_ROWS = 32, 16
# bias_grad's rule for splitting rows over the grid: aim at two blocks per SM of a
# 132-SM H100 (a target from the machine's size, not a measured optimum), chunks of at
# least BIAS_SPLIT_MIN_ROWS rows (4 per thread row) so the second pass stays small.
BIAS_TARGET_BLOCKS, BIAS_SPLIT_MIN_ROWS = 264, 64
XENT_WARP_ROWS, XENT_WARP_ITEMS = 8, 8  # softmax, one warp per row: rows per block, entries
XENT_WARP_MAX_O = 32 * XENT_WARP_ITEMS  # per lane in registers; the warp version's O range
RECUR_TM, RECUR_TN, RECUR_TK = 32, 32, 32  # fused recurrent steps: output tile, k slab
RECUR_TX, RECUR_TY = 16, 8  # and their threads per block (columns, rows)
SCAN_BLOCK = 256  # rows per prefix-sum step of the adaptive softmax's partition
_MAX_BLOCKS = 65535  # grid-stride loops cover the rest

_ACT = {"tanh": 0, "sigmoid": 1, "relu": 2}
RECURRENCES = ("gemm", "fused")
_FLOAT = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_INT = {np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}
_INT32_MAX = 2**31 - 1

DEFINES = {
    "rnn_forward.cu": (("ELEM_BLOCK", str(ELEM_BLOCK)),),
    "rnn_backward.cu": (("ELEM_BLOCK", str(ELEM_BLOCK)),),
    "rnn_xent.cu": (("XENT_BLOCK", str(XENT_BLOCK)), ("XENT_WARP_ROWS", str(XENT_WARP_ROWS)),
                    ("XENT_WARP_ITEMS", str(XENT_WARP_ITEMS))),
    "rnn_outer.cu": (("OUTER_TILE", str(OUTER_TILE)), ("OUTER_THREADS", str(OUTER_THREADS)),
                     ("OUTER_TN", str(OUTER_TN))),
    "rnn_embed.cu": (("ELEM_BLOCK", str(ELEM_BLOCK)), ("BIAS_COLS", str(BIAS_COLS)),
                     ("BIAS_ROWS", str(BIAS_ROWS))),
    "rnn_recur.cu": (("RECUR_TM", str(RECUR_TM)), ("RECUR_TN", str(RECUR_TN)),
                     ("RECUR_TK", str(RECUR_TK)), ("RECUR_TX", str(RECUR_TX)),
                     ("RECUR_TY", str(RECUR_TY))),
    "rnn_adaptive.cu": (("ELEM_BLOCK", str(ELEM_BLOCK)), ("XENT_BLOCK", str(XENT_BLOCK)),
                        ("SCAN_BLOCK", str(SCAN_BLOCK))),
    "rnn_gates.cu": (("ELEM_BLOCK", str(ELEM_BLOCK)),),
}


def _shape(kern: str, arg: str, a, shape: tuple) -> None:
    if tuple(a.shape) != tuple(shape):
        _fail(kern, arg, f"shape {tuple(shape)}", _desc(a))


def _act(kern: str, act) -> np.int32:
    if act not in _ACT:
        _fail(kern, "act", "tanh, sigmoid or relu", repr(act))
    return np.int32(_ACT[act])


def _count32(kern: str, n: int) -> np.int32:
    if n > _INT32_MAX:
        _fail(kern, "size", "fewer than 2^31 elements", str(n))
    return np.int32(n)


def _blocks(n: int, block: int) -> int:
    return max(1, min(_MAX_BLOCKS, -(-n // block)))


def _keep_arg(keep, fallback):
    # A null keep pointer is never read (has_keep == 0); pass a valid array of the right
    # type anyway rather than a bare integer.
    return fallback if keep is None else keep


class CudaOps:
    """The operations the engine calls, done by the CUDA kernels and cuBLAS.

    xp: the array module (``cupy``); loader(filename, defines, name) -> kernel; blas: a
    :class:`CublasGemm` (its ``gemm`` is this kernel set's ``gemm``).
    """

    name = "cuda"

    def __init__(self, xp: Any, loader, blas: CublasGemm):
        self.xp = xp
        self.loader = loader
        self.blas = blas
        self.outer = OuterChoice()
        self._recur_choice: dict[tuple, str] = {}

    def __repr__(self) -> str:
        return f"CudaOps({getattr(self.xp, '__name__', self.xp)!r})"

    @property
    def capturable(self) -> bool:
        """Whether a whole step on this kernel set can be captured as a CUDA Graph."""
        return self.blas.capturable

    def prepare_capture(self) -> None:
        """Make ready for a capture (cuBLAS's workspace); RuntimeError if impossible."""
        self.blas.prepare_capture()

    def _kernel(self, filename: str, name: str):
        return self.loader(filename, DEFINES[filename], name)

    # ---------------------------------------------------------------------------------
    # Validation. Messages name the kernel and the argument, what was expected, what came.

    def _dev(self, kern: str, arg: str, a) -> None:
        if not isinstance(a, self.xp.ndarray):
            _fail(kern, arg, "a cupy.ndarray (these launchers run on the GPU only)", _desc(a))
        if not a.flags.c_contiguous:
            _fail(kern, arg, "a C-contiguous array", f"strides {a.strides} for shape {a.shape}")

    def _floats(self, kern: str, **arrays) -> np.dtype:
        """Check that the float arguments are device arrays sharing float32 or float64."""
        dtype = None
        for arg, a in arrays.items():
            self._dev(kern, arg, a)
            if a.dtype not in _FLOAT:
                _fail(kern, arg, "float32 or float64", _desc(a))
            if dtype is None:
                dtype, first = a.dtype, arg
            elif a.dtype != dtype:
                _fail(kern, arg, f"{dtype} like {first}", _desc(a))
        return dtype

    def _keep(self, kern: str, keep, rows: int, dtype):
        """keep: None or (rows,) 0/1 of the float dtype. Returns (pointer argument, flag)."""
        if keep is None:
            return None, np.int32(0)
        self._dev(kern, "keep", keep)
        if keep.dtype != dtype or keep.shape != (rows,):
            _fail(kern, "keep", f"None or a {dtype} array of shape ({rows},)", _desc(keep))
        return keep, np.int32(1)

    def _pointwise(self, kern: str, keep, rows: int, dtype, act, count: int):
        """The arguments every pointwise kernel takes: (keep pointer, has_keep, activation
        code, element count as int32), each checked."""
        keep, has_keep = self._keep(kern, keep, rows, dtype)
        return keep, has_keep, _act(kern, act), _count32(kern, count)

    def _ids(self, kern: str, arg: str, ids, n: int):
        """Integer ids of shape (n,). int32/int64 go to the kernel as they are; other
        integer kinds are converted to int64 (one small copy: pass int32 or int64)."""
        self._dev(kern, arg, ids)
        if ids.dtype.kind not in "iu" or ids.shape != (n,):
            _fail(kern, arg, f"an integer array of shape ({n},)", _desc(ids))
        if ids.dtype not in _INT:
            ids = ids.astype(self.xp.int64)
        return ids

    # ---------------------------------------------------------------------------------
    # Pointwise kernels

    def act_forward(self, a, h_prev, keep, act: str) -> None:
        """Hidden activation in place: a <- f(a); masked rows take h_prev. (B, H) each."""
        K = "act_forward"
        dt = self._floats(K, a=a, h_prev=h_prev)
        if a.ndim != 2:
            _fail(K, "a", "a 2-D (B, H) array", _desc(a))
        B, H = a.shape
        _shape(K, "h_prev", h_prev, (B, H))
        keep, has_keep, code, n = self._pointwise(K, keep, B, dt, act, B * H)
        if n == 0:
            return
        self._kernel("rnn_forward.cu", f"rnn_act_forward_{_FLOAT[dt]}")(
            (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
            (a, h_prev, _keep_arg(keep, a), has_keep, n, np.int32(H), code))

    def delta_step(self, carry, e, s, keep, dz, act: str) -> None:
        """Fused delta update: dz = (carry + e) f'(s) keep; carry <- (carry + e)(1 - keep).

        carry, e, s, dz: (B, H); dz may be the same array as e.
        """
        K = "delta_step"
        dt = self._floats(K, carry=carry, e=e, s=s, dz=dz)
        if carry.ndim != 2:
            _fail(K, "carry", "a 2-D (B, H) array", _desc(carry))
        B, H = carry.shape
        for arg, x in (("e", e), ("s", s), ("dz", dz)):
            _shape(K, arg, x, (B, H))
        keep, has_keep, code, n = self._pointwise(K, keep, B, dt, act, B * H)
        if n == 0:
            return
        self._kernel("rnn_backward.cu", f"rnn_delta_step_{_FLOAT[dt]}")(
            (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
            (carry, e, s, _keep_arg(keep, s), has_keep, dz, n, np.int32(H), code))

    def trunc_delta_step(self, G, s, keep, dz_all, dz_sum, act: str) -> None:
        """Truncated BPTT, all L streams: dz_all = G f'(s) keep, dz_sum = sum over streams.

        G, dz_all: (L, B, H); s, dz_sum: (B, H). With a mask, G <- G (1 - keep).
        """
        K = "trunc_delta_step"
        dt = self._floats(K, G=G, s=s, dz_all=dz_all, dz_sum=dz_sum)
        if G.ndim != 3:
            _fail(K, "G", "a 3-D (L, B, H) array", _desc(G))
        L, B, H = G.shape
        _shape(K, "s", s, (B, H))
        _shape(K, "dz_all", dz_all, (L, B, H))
        _shape(K, "dz_sum", dz_sum, (B, H))
        keep, has_keep, code, n = self._pointwise(K, keep, B, dt, act, B * H)
        if n == 0:
            return
        self._kernel("rnn_backward.cu", f"rnn_trunc_delta_step_{_FLOAT[dt]}")(
            (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
            (G, s, _keep_arg(keep, s), has_keep, dz_all, dz_sum, np.int32(L), n,
             np.int32(H), code))

    # ---------------------------------------------------------------------------------
    # Losses: one block per row

    def _loss_args(self, K: str, logits, keep, loss):
        dt = self._floats(K, logits=logits, loss=loss)
        if logits.ndim != 2:
            _fail(K, "logits", "a 2-D (N, O) array", _desc(logits))
        N, O = logits.shape
        _shape(K, "loss", loss, (N,))
        if O > _INT32_MAX:
            _fail(K, "logits", "fewer than 2^31 columns", str(O))
        keep, has_keep = self._keep(K, keep, N, dt)
        return dt, N, O, keep, has_keep

    def softmax_xent(self, logits, y, keep, loss) -> None:
        """Softmax + cross-entropy in one kernel: logits (N, O) <- softmax - onehot(y)
        (times keep), loss (N,) <- logsumexp - z_y (times keep). y: (N,) int ids (not
        range-checked here: an id outside [0, O) gives a NaN loss).

        The version follows the shape: one warp per row (:meth:`softmax_xent_warp`) when
        the row fits the warp's registers, O <= 32 * XENT_WARP_ITEMS (read once, one exp
        per entry, XENT_WARP_ROWS rows per block); one block per row
        (:meth:`softmax_xent_fused`) otherwise. A rule on the shape, not a timing."""
        if getattr(logits, "ndim", 0) == 2 and logits.shape[1] <= XENT_WARP_MAX_O:
            self.softmax_xent_warp(logits, y, keep, loss)
        else:
            self.softmax_xent_fused(logits, y, keep, loss)

    def softmax_xent_fused(self, logits, y, keep, loss) -> None:
        """softmax_xent with one XENT_BLOCK-thread block per row (any O)."""
        K = "softmax_xent"
        dt, N, O, keep, has_keep = self._loss_args(K, logits, keep, loss)
        y = self._ids(K, "y", y, N)
        if N == 0:
            return
        if O == 0:
            _fail(K, "logits", "at least one column", _desc(logits))
        self._kernel("rnn_xent.cu", f"rnn_softmax_xent_{_FLOAT[dt]}_{_INT[y.dtype]}")(
            (N,), (XENT_BLOCK,),
            (logits, y, _keep_arg(keep, loss), has_keep, loss, np.int32(O)))

    def softmax_xent_warp(self, logits, y, keep, loss) -> None:
        """softmax_xent with one warp per row, XENT_WARP_ROWS rows per block (any O; rows
        of O <= 32 * XENT_WARP_ITEMS stay in registers)."""
        K = "softmax_xent"
        dt, N, O, keep, has_keep = self._loss_args(K, logits, keep, loss)
        y = self._ids(K, "y", y, N)
        if N > _INT32_MAX:
            _fail(K, "logits", "fewer than 2^31 rows", _desc(logits))
        if N == 0:
            return
        if O == 0:
            _fail(K, "logits", "at least one column", _desc(logits))
        self._kernel("rnn_xent.cu", f"rnn_softmax_xent_warp_{_FLOAT[dt]}_{_INT[y.dtype]}")(
            (-(-N // XENT_WARP_ROWS),), (32 * XENT_WARP_ROWS,),
            (logits, y, _keep_arg(keep, loss), has_keep, loss, np.int32(N), np.int32(O)))

    def _dense_loss(self, K: str, name: str, logits, d, keep, loss) -> None:
        dt, N, O, keep, has_keep = self._loss_args(K, logits, keep, loss)
        self._floats(K, logits=logits, d=d)
        _shape(K, "d", d, (N, O))
        if N == 0:
            return
        self._kernel("rnn_xent.cu", f"{name}_{_FLOAT[dt]}")(
            (N,), (XENT_BLOCK,),
            (logits, d, _keep_arg(keep, loss), has_keep, loss, np.int32(O)))

    def sigmoid_bce(self, logits, d, keep, loss) -> None:
        """Sigmoid + binary cross-entropy: logits (N, O) <- sigmoid - d, loss (N,)."""
        self._dense_loss("sigmoid_bce", "rnn_sigmoid_bce", logits, d, keep, loss)

    def squared_error(self, logits, d, keep, loss) -> None:
        """Linear + 1/2 squared error: logits (N, O) <- z - d, loss (N,), d (N, O)."""
        self._dense_loss("squared_error", "rnn_squared_error", logits, d, keep, loss)

    # ---------------------------------------------------------------------------------
    # Token input and bias sums

    def embed_gather(self, UT, ids, bias, out) -> None:
        """out (N, H) = UT[ids] + bias; UT (I, H), ids (N,) int, bias (H,). Ids not checked."""
        K = "embed_gather"
        dt = self._floats(K, UT=UT, bias=bias, out=out)
        if UT.ndim != 2 or out.ndim != 2:
            _fail(K, "UT, out", "2-D (I, H) and (N, H) arrays", f"{_desc(UT)}, {_desc(out)}")
        N, H = out.shape
        if UT.shape[1] != H:
            _fail(K, "UT", f"shape (I, {H})", _desc(UT))
        _shape(K, "bias", bias, (H,))
        ids = self._ids(K, "ids", ids, N)
        n = N * H
        if n == 0:
            return
        self._kernel("rnn_embed.cu", f"rnn_embed_gather_{_FLOAT[dt]}_{_INT[ids.dtype]}")(
            (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
            (UT, ids, bias, out, np.int64(n), np.int32(H)))

    def embed_scatter_add(self, dUT, ids, dz) -> None:
        """dUT[ids[n]] += dz[n] with atomics (repeated ids add up; their order is not
        fixed). dUT (I, H), ids (N,) int, dz (N, H)."""
        K = "embed_scatter_add"
        dt = self._floats(K, dUT=dUT, dz=dz)
        if dUT.ndim != 2 or dz.ndim != 2:
            _fail(K, "dUT, dz", "2-D (I, H) and (N, H) arrays", f"{_desc(dUT)}, {_desc(dz)}")
        N, H = dz.shape
        if dUT.shape[1] != H:
            _fail(K, "dUT", f"shape (I, {H})", _desc(dUT))
        ids = self._ids(K, "ids", ids, N)
        n = N * H
        if n == 0:
            return
        self._kernel("rnn_embed.cu", f"rnn_embed_scatter_add_{_FLOAT[dt]}_{_INT[ids.dtype]}")(
            (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,), (dUT, ids, dz, np.int64(n), np.int32(H)))

    def _bias_args(self, K: str, dz, out):
        dt = self._floats(K, dz=dz, out=out)
        if dz.ndim != 2:
            _fail(K, "dz", "a 2-D (N, H) array", _desc(dz))
        N, H = dz.shape
        _shape(K, "out", out, (H,))
        if N > _INT32_MAX or H > _INT32_MAX:
            _fail(K, "dz", "fewer than 2^31 rows and columns", _desc(dz))
        return dt, N, H

    def bias_grad(self, dz, out) -> None:
        """out (H,) = dz (N, H) summed over rows (fixed order: deterministic).

        The version follows the shape: when one block per BIAS_COLS columns would give
        fewer than BIAS_TARGET_BLOCKS blocks and there are at least 2 * BIAS_SPLIT_MIN_ROWS
        rows, the rows are split over the grid too (:meth:`bias_grad_split`); otherwise
        :meth:`bias_grad_colsum`. A rule on the shape, not a timing; each shape always
        takes the same version, so a run's sums are reproducible."""
        N, H = dz.shape if getattr(dz, "ndim", 0) == 2 else (0, 0)
        if -(-H // BIAS_COLS) < BIAS_TARGET_BLOCKS and N >= 2 * BIAS_SPLIT_MIN_ROWS:
            self.bias_grad_split(dz, out)
        else:
            self.bias_grad_colsum(dz, out)

    def bias_grad_colsum(self, dz, out) -> None:
        """out (H,) = dz (N, H) summed over rows: one block per BIAS_COLS columns."""
        K = "bias_grad"
        dt, N, H = self._bias_args(K, dz, out)
        if H == 0:
            return
        self._kernel("rnn_embed.cu", f"rnn_bias_grad_{_FLOAT[dt]}")(
            (-(-H // BIAS_COLS),), (BIAS_COLS, BIAS_ROWS), (dz, out, np.int32(N), np.int32(H)))

    def bias_grad_split(self, dz, out) -> None:
        """out (H,) = dz (N, H) summed over rows in two passes: S row chunks of at least
        BIAS_SPLIT_MIN_ROWS rows (at least 2 chunks, enough for about BIAS_TARGET_BLOCKS
        blocks) summed into a scratch (S, H) kept per shape, then the S partial sums of
        each column in order."""
        K = "bias_grad"
        dt, N, H = self._bias_args(K, dz, out)
        if H == 0:
            return
        cols = -(-H // BIAS_COLS)
        S = max(2, min(-(-N // BIAS_SPLIT_MIN_ROWS), -(-BIAS_TARGET_BLOCKS // cols)))
        chunk = max(1, -(-N // S))
        S = max(1, -(-N // chunk))  # no empty chunk
        partial = self._scratch(("bias_grad", S, H), (S, H), dt)
        self._kernel("rnn_embed.cu", f"rnn_bias_grad_split_{_FLOAT[dt]}")(
            (cols, S), (BIAS_COLS, BIAS_ROWS),
            (dz, partial, np.int32(N), np.int32(H), np.int32(chunk)))
        self._kernel("rnn_embed.cu", f"rnn_bias_grad_finish_{_FLOAT[dt]}")(
            (_blocks(H, ELEM_BLOCK),), (ELEM_BLOCK,), (partial, out, np.int32(S), np.int32(H)))

    def _scratch(self, key: tuple, shape: tuple, dtype):
        """A device buffer kept per key: made at the first call for a shape (the eager
        warm-up before a CUDA Graph capture), reused after, never allocated in a replay."""
        bufs = self.__dict__.setdefault("_scratch_buffers", {})
        key = key + (np.dtype(dtype).char,)
        buf = bufs.get(key)
        if buf is None:
            buf = bufs[key] = self.xp.empty(shape, dtype=dtype)
        return buf

    # ---------------------------------------------------------------------------------
    # Adaptive softmax: partition, gather, scatter, weighted loss (rnn_adaptive.cu)

    def _int32(self, kern: str, arg: str, a, shape: tuple) -> None:
        self._dev(kern, arg, a)
        if a.dtype != np.int32 or tuple(a.shape) != tuple(shape):
            _fail(kern, arg, f"an int32 array of shape {tuple(shape)}", _desc(a))

    def _count(self, kern: str, count) -> None:
        self._int32(kern, "count", count, (1,))

    def adaptive_partition(self, y, bounds, head_target, idx, counts) -> None:
        """Rows by cluster, stable, on the device: idx (n, N) int32 (first counts[i] of row
        i), counts (n,) int32, head_target (N,) int32. y: (N,) int ids; bounds: (n+1,)
        int64 = c_0, ..., c_{n-1}, O."""
        K = "adaptive_partition"
        self._dev(K, "y", y)
        if y.ndim != 1:
            _fail(K, "y", "a 1-D (N,) integer array", _desc(y))
        N = y.shape[0]
        y = self._ids(K, "y", y, N)
        self._dev(K, "bounds", bounds)
        if bounds.dtype != np.int64 or bounds.ndim != 1 or bounds.shape[0] < 2:
            _fail(K, "bounds", "an int64 array of shape (n+1,), n >= 1", _desc(bounds))
        n = bounds.shape[0] - 1
        self._int32(K, "head_target", head_target, (N,))
        self._int32(K, "idx", idx, (n, N))
        self._int32(K, "counts", counts, (n,))
        _count32(K, n * N)
        self._kernel("rnn_adaptive.cu", f"rnn_adaptive_partition_{_INT[y.dtype]}")(
            (n,), (SCAN_BLOCK,), (y, bounds, np.int32(n), np.int32(N), head_target, idx, counts))

    def adaptive_gather(self, S, y, w, idx, count, lo: int, Sg, tg, wg) -> None:
        """One cluster's rows: Sg (R, F) = S[idx[r]], tg (R,) int32 = y[idx[r]] - lo, wg (R,)
        = w[idx[r]] (1 for w None) for r < min(count, R); zeros of weight 0 after that.
        S (N, F); y (N,) int; w (N,) or None; idx (N,) int32; count (1,) int32 (device)."""
        K = "adaptive_gather"
        dt = self._floats(K, S=S, Sg=Sg, wg=wg)
        if S.ndim != 2 or Sg.ndim != 2:
            _fail(K, "S, Sg", "2-D (N, F) and (R, F) arrays", f"{_desc(S)}, {_desc(Sg)}")
        N, F = S.shape
        R = Sg.shape[0]
        if Sg.shape[1] != F:
            _fail(K, "Sg", f"shape (R, {F})", _desc(Sg))
        if R > N:
            _fail(K, "Sg", f"at most {N} rows (the rows of S)", _desc(Sg))
        y = self._ids(K, "y", y, N)
        w, has_w = self._keep(K, w, N, dt)
        self._int32(K, "idx", idx, (N,))
        self._count(K, count)
        self._int32(K, "tg", tg, (R,))
        _shape(K, "wg", wg, (R,))
        if R * F == 0:
            return
        self._kernel("rnn_adaptive.cu", f"rnn_adaptive_gather_{_FLOAT[dt]}_{_INT[y.dtype]}")(
            (_blocks(R * F, ELEM_BLOCK),), (ELEM_BLOCK,),
            (S, y, _keep_arg(w, S), has_w, idx, count, np.int64(lo), Sg, tg, wg, np.int32(R),
             np.int32(F)))

    def adaptive_scatter_add(self, dS, idx, count, dSg) -> None:
        """dS[idx[r]] += dSg[r] for r < min(count, R); dS (N, F), dSg (R, F), idx (N,)
        int32, count (1,) int32 (device). No atomics: a cluster's rows are distinct."""
        K = "adaptive_scatter_add"
        dt = self._floats(K, dS=dS, dSg=dSg)
        if dS.ndim != 2 or dSg.ndim != 2:
            _fail(K, "dS, dSg", "2-D (N, F) and (R, F) arrays", f"{_desc(dS)}, {_desc(dSg)}")
        N, F = dS.shape
        R = dSg.shape[0]
        if dSg.shape[1] != F or R > N:
            _fail(K, "dSg", f"shape (R, {F}) with R <= {N}", _desc(dSg))
        self._int32(K, "idx", idx, (N,))
        self._count(K, count)
        _count32(K, N * F)
        if R * F == 0:
            return
        self._kernel("rnn_adaptive.cu", f"rnn_adaptive_scatter_add_{_FLOAT[dt]}")(
            (_blocks(R * F, ELEM_BLOCK),), (ELEM_BLOCK,),
            (dS, idx, count, dSg, np.int32(R), np.int32(F)))

    def weighted_xent(self, logits, y, w, loss) -> None:
        """Softmax + cross-entropy with a float weight per row, in one kernel: logits
        (N, K) <- w (softmax - onehot(y)), loss (N,) <- w (logsumexp - z_y). y: (N,) int32
        (an id outside [0, K) gives a NaN loss); w: (N,) or None for ones."""
        K = "weighted_xent"
        dt, N, Kc, w, has_w = self._loss_args(K, logits, w, loss)
        self._int32(K, "y", y, (N,))
        if N == 0:
            return
        if Kc == 0:
            _fail(K, "logits", "at least one column", _desc(logits))
        self._kernel("rnn_adaptive.cu", f"rnn_weighted_xent_{_FLOAT[dt]}")(
            (N,), (XENT_BLOCK,), (logits, y, _keep_arg(w, loss), has_w, loss, np.int32(Kc)))

    # ---------------------------------------------------------------------------------
    # GEMM and the outer-product accumulation (tiled kernel, cuBLAS, per-shape choice)

    def gemm(self, A, B, C, beta: float) -> None:
        """C (m, n) <- A (m, k) @ B (k, n) + beta C, beta 0 or 1 (see CublasGemm.gemm)."""
        self.blas.gemm(A, B, C, beta)

    def _outer_args(self, K: str, dW, a, b):
        dt = self._floats(K, dW=dW, a=a, b=b)
        if a.ndim != 2 or b.ndim != 2 or dW.ndim != 2:
            _fail(K, "dW, a, b", "2-D arrays", f"{_desc(dW)}, {_desc(a)}, {_desc(b)}")
        N, M = a.shape
        if b.shape[0] != N:
            _fail(K, "b", f"shape ({N}, K) to match a's rows", _desc(b))
        Kc = b.shape[1]
        _shape(K, "dW", dW, (M, Kc))
        if max(N, M, Kc) > _INT32_MAX:
            _fail(K, "a, b", "dimensions below 2^31", f"{_desc(a)}, {_desc(b)}")
        return dt, N, M, Kc

    def outer_accum_tiled(self, dW, a, b, accumulate: bool) -> None:
        """dW (M, K) (+)= a (N, M)^T b (N, K) with the shared-memory tiled kernel."""
        dt, N, M, Kc = self._outer_args("outer_accum", dW, a, b)
        if M == 0 or Kc == 0:
            return
        if not tiled_fits(M):
            _fail("outer_accum", "a", f"at most {65535 * OUTER_TILE} columns", _desc(a))
        grid = (-(-Kc // OUTER_TILE), -(-M // OUTER_TILE))
        self._kernel("rnn_outer.cu", f"rnn_outer_accum_{_FLOAT[dt]}")(
            grid, (OUTER_THREADS, OUTER_THREADS),
            (dW, a, b, np.int32(N), np.int32(M), np.int32(Kc), np.int32(bool(accumulate))))

    def outer_accum_cublas(self, dW, a, b, accumulate: bool) -> None:
        """dW (M, K) (+)= a (N, M)^T b (N, K) with one cuBLAS GEMM (beta = 1 to add)."""
        self._outer_args("outer_accum", dW, a, b)
        self.blas.gemm(a.T, b, dW, 1.0 if accumulate else 0.0)

    def outer_choice(self, N: int, M: int, K: int, dtype) -> str | None:
        """The version chosen for a shape so far (None if it has not been timed)."""
        return self.outer.get((N, M, K, np.dtype(dtype).char, self.blas.tf32))

    def _time(self, fn, reps: int = 3) -> float:
        """Median milliseconds of fn() on the current stream, after one warm-up call (which
        compiles the kernels on first use)."""
        fn()
        cuda = self.xp.cuda
        stream = cuda.get_current_stream()
        times = []
        for _ in range(reps):
            start, stop = cuda.Event(), cuda.Event()
            start.record(stream)
            fn()
            stop.record(stream)
            stop.synchronize()
            times.append(cuda.get_elapsed_time(start, stop))
        return sorted(times)[len(times) // 2]

    def _time_outer(self, name: str, dW, a, b) -> float:
        fn = getattr(self, f"outer_accum_{name}")
        return self._time(lambda: fn(dW, a, b, False))

    def outer_accum(self, dW, a, b, accumulate: bool) -> None:
        """dW (M, K) (+)= a (N, M)^T b (N, K): the tiled kernel or cuBLAS, whichever
        measured faster for this shape (timed once per (N, M, K, dtype), then cached).
        ``RNN_GPU_OUTER`` forces one. During a CUDA Graph capture an untimed shape uses
        cuBLAS (no timing there)."""
        dt, N, M, Kc = self._outer_args("outer_accum", dW, a, b)
        forced = os.environ.get("RNN_GPU_OUTER", "").strip().lower()
        if forced:
            if forced not in OuterChoice.VERSIONS:
                raise ValueError(f"RNN_GPU_OUTER: expected cublas or tiled, got {forced!r}")
            getattr(self, f"outer_accum_{forced}")(dW, a, b, accumulate)
            return
        key = (N, M, Kc, dt.char, self.blas.tf32)
        name = self.outer.get(key)
        if name is None:
            scratch = []  # made at the first timing only: dW itself may hold a sum to keep

            def time_version(v):
                if not scratch:
                    scratch.append(self.xp.empty_like(dW))
                return self._time_outer(v, scratch[0], a, b)

            capturing = self.xp.cuda.get_current_stream().is_capturing()
            name = self.outer.choose(key, M, capturing, time_version)
        getattr(self, f"outer_accum_{name}")(dW, a, b, accumulate)

    # ---------------------------------------------------------------------------------
    # Fused recurrent steps (kernels/rnn_recur.cu): one launch per time step, the step's
    # B x H x H product tiled in the kernel (no cuBLAS) with the pointwise update as its
    # epilogue. Same signatures and in-place semantics as the twins recur_forward,
    # recur_backward and recur_trunc_backward.

    def _recur_matrix(self, K: str, arg: str, a, H: int, dtype):
        """An (H, H) operand, C- or F-contiguous (W or the view W.T): the element strides
        (sk, sn) of a[k, n] for the kernel."""
        if not isinstance(a, self.xp.ndarray):
            _fail(K, arg, "a cupy.ndarray (these launchers run on the GPU only)", _desc(a))
        if a.dtype != dtype:
            _fail(K, arg, f"{dtype} like the other arrays", _desc(a))
        _shape(K, arg, a, (H, H))
        if a.flags.c_contiguous:
            return np.int64(H), np.int64(1)
        if a.flags.f_contiguous:
            return np.int64(1), np.int64(H)
        _fail(K, arg, "a C- or F-contiguous array (W or W.T)",
              f"strides {a.strides} for shape {a.shape}")

    @staticmethod
    def _disjoint(K: str, read: str, a, written: dict) -> None:
        """`a` is read whole by every block of a GEMM: no array the kernel writes may
        overlap it."""
        lo = a.data.ptr
        hi = lo + a.nbytes
        for arg, b in written.items():
            if b is not None and b.nbytes and lo < b.data.ptr + b.nbytes and b.data.ptr < hi:
                _fail(K, arg, f"an array that does not overlap {read}", f"{_desc(b)} over it")

    def _recur_grid(self, K: str, B: int, H: int) -> tuple[int, int]:
        if H > _INT32_MAX or B > 65535 * RECUR_TM:
            _fail(K, "size", f"H < 2^31 and B <= {65535 * RECUR_TM}", f"B = {B}, H = {H}")
        return (-(-H // RECUR_TN), -(-B // RECUR_TM))

    def recur_forward(self, s_prev, WT, s_next, keep, act: str) -> None:
        """One forward step in one launch: s_next <- f(s_next + s_prev @ WT), masked rows
        take s_prev. s_prev, s_next (B, H), s_next holding U x_t + b on entry; WT (H, H)
        as the engine passes it (W.T, an F-contiguous view; a C-contiguous one works too)."""
        K = "recur_forward"
        dt = self._floats(K, s_prev=s_prev, s_next=s_next)
        if s_prev.ndim != 2:
            _fail(K, "s_prev", "a 2-D (B, H) array", _desc(s_prev))
        B, H = s_prev.shape
        _shape(K, "s_next", s_next, (B, H))
        sk, sn = self._recur_matrix(K, "WT", WT, H, dt)
        keep, has_keep = self._keep(K, keep, B, dt)
        code = _act(K, act)
        self._disjoint(K, "s_prev", s_prev, {"s_next": s_next})
        grid = self._recur_grid(K, B, H)
        if B == 0 or H == 0:
            return
        self._kernel("rnn_recur.cu", f"rnn_recur_forward_{_FLOAT[dt]}")(
            grid, (RECUR_TX, RECUR_TY),
            (s_prev, WT, sk, sn, s_next, _keep_arg(keep, s_prev), has_keep, np.int32(B),
             np.int32(H), code))

    def recur_backward(self, dz_next, W, carry, e, s, keep, dz, act: str) -> None:
        """One step of full BPTT in one launch: c = dz_next @ W + carry + e,
        dz = c f'(s) keep, carry <- c (1 - keep). dz_next (B, H) or None (first step
        taken); W (H, H) C- or F-contiguous; carry (B, H) the masked pass-through, needed
        with a mask only (zeros before the first step); e, s, dz (B, H), dz may be e."""
        K = "recur_backward"
        dt = self._floats(K, e=e, s=s, dz=dz)
        if e.ndim != 2:
            _fail(K, "e", "a 2-D (B, H) array", _desc(e))
        B, H = e.shape
        _shape(K, "s", s, (B, H))
        _shape(K, "dz", dz, (B, H))
        sk, sn = self._recur_matrix(K, "W", W, H, dt)
        keep, has_keep = self._keep(K, keep, B, dt)
        if keep is not None or carry is not None:
            if carry is None:
                _fail(K, "carry", f"a {dt} array of shape ({B}, {H}) with a mask", "None")
            self._floats(K, e=e, carry=carry)
            _shape(K, "carry", carry, (B, H))
        if dz_next is not None:
            self._floats(K, e=e, dz_next=dz_next)
            _shape(K, "dz_next", dz_next, (B, H))
            self._disjoint(K, "dz_next", dz_next, {"dz": dz, "carry": carry})
        code = _act(K, act)
        grid = self._recur_grid(K, B, H)
        if B == 0 or H == 0:
            return
        self._kernel("rnn_recur.cu", f"rnn_recur_backward_{_FLOAT[dt]}")(
            grid, (RECUR_TX, RECUR_TY),
            (e if dz_next is None else dz_next, np.int32(dz_next is not None), W, sk, sn,
             dz if carry is None else carry, e, s, _keep_arg(keep, s), has_keep, dz,
             np.int32(B), np.int32(H), code))

    def recur_trunc_backward(self, dz_prev, W, G, fresh: int, e, s, keep, dz_all, dz_sum,
                             act: str) -> None:
        """One step of per-output truncated BPTT for all L streams in one launch: g = e
        in slot `fresh`, g = dz_prev @ W + G elsewhere; dz_all = g f'(s) keep, dz_sum =
        its sum over streams, G <- g (1 - keep). dz_prev (L, B, H) or None (first step
        taken), not overlapping dz_all; G (L, B, H) with a mask only; e, s, dz_sum (B, H),
        dz_sum may be e; 0 <= fresh < L."""
        K = "recur_trunc_backward"
        dt = self._floats(K, e=e, s=s, dz_all=dz_all, dz_sum=dz_sum)
        if dz_all.ndim != 3 or dz_all.shape[0] == 0:
            _fail(K, "dz_all", "a 3-D (L, B, H) array with L >= 1", _desc(dz_all))
        L, B, H = dz_all.shape
        _shape(K, "e", e, (B, H))
        _shape(K, "s", s, (B, H))
        _shape(K, "dz_sum", dz_sum, (B, H))
        sk, sn = self._recur_matrix(K, "W", W, H, dt)
        keep, has_keep = self._keep(K, keep, B, dt)
        if keep is not None or G is not None:
            if G is None:
                _fail(K, "G", f"a {dt} array of shape ({L}, {B}, {H}) with a mask", "None")
            self._floats(K, e=e, G=G)
            _shape(K, "G", G, (L, B, H))
        if dz_prev is not None:
            self._floats(K, e=e, dz_prev=dz_prev)
            _shape(K, "dz_prev", dz_prev, (L, B, H))
            self._disjoint(K, "dz_prev", dz_prev, {"dz_all": dz_all, "G": G, "dz_sum": dz_sum})
        if isinstance(fresh, bool) or not isinstance(fresh, (int, np.integer)) \
                or not 0 <= fresh < L:
            _fail(K, "fresh", f"an int slot in [0, {L})", repr(fresh))
        code = _act(K, act)
        grid = self._recur_grid(K, B, H)
        if B == 0 or H == 0:
            return
        self._kernel("rnn_recur.cu", f"rnn_recur_trunc_backward_{_FLOAT[dt]}")(
            grid, (RECUR_TX, RECUR_TY),
            (dz_all if dz_prev is None else dz_prev, np.int32(dz_prev is not None), W, sk, sn,
             dz_all if G is None else G, np.int32(fresh), e, s, _keep_arg(keep, s), has_keep,
             dz_all, dz_sum, np.int32(L), np.int32(B), np.int32(H), code))

    # ---------------------------------------------------------------------------------
    # Gated cells (kernels/rnn_gates.cu): the pointwise part of an LSTM or GRU step, all
    # the gates of a unit in one thread, beside the caller's recurrent GEMM. Same
    # signatures and in-place semantics as the twins lstm_forward, lstm_backward,
    # gru_forward and gru_backward. Gate blocks are PyTorch's: LSTM [i, f, g, o], GRU
    # [r, z, n], each H wide.

    def _gate_state(self, K: str, arg: str, a, n_gates: int, **others):
        """B, H from the (B, H) array `a`, the float dtype shared with `others`; the gates
        arrays (B, n_gates*H) must stay below 2^31 elements (32-bit indices)."""
        dt = self._floats(K, **{arg: a}, **others)
        if a.ndim != 2:
            _fail(K, arg, "a 2-D (B, H) array", _desc(a))
        B, H = a.shape
        _count32(K, n_gates * B * H)
        return dt, B, H

    @staticmethod
    def _gate_streams(K: str, G, B: int, H: int) -> int:
        """L from G (L, B, H), L >= 1."""
        if G.ndim != 3 or G.shape[0] == 0:
            _fail(K, "G", f"a 3-D (L, {B}, {H}) array with L >= 1", _desc(G))
        _shape(K, "G", G, (G.shape[0], B, H))
        return G.shape[0]

    def _gate_error(self, K: str, e, fresh, L: int, B: int, H: int, dt):
        """e: None or (B, H) of dtype dt, fresh: an int slot in [0, L). Returns (e or None,
        has_e, fresh as int32)."""
        if isinstance(fresh, bool) or not isinstance(fresh, (int, np.integer)) \
                or not 0 <= fresh < L:
            _fail(K, "fresh", f"an int slot in [0, {L})", repr(fresh))
        if e is None:
            return None, np.int32(0), np.int32(fresh)
        self._dev(K, "e", e)
        if e.dtype != dt or tuple(e.shape) != (B, H):
            _fail(K, "e", f"None or a {dt} array of shape ({B}, {H})", _desc(e))
        return e, np.int32(1), np.int32(fresh)

    def _gate_all(self, K: str, arg: str, a, L: int, B: int, width: int, dt):
        """The per-stream output (L, B, width): None allowed for L = 1 only."""
        if a is None:
            if L != 1:
                _fail(K, arg, f"a {dt} array of shape ({L}, {B}, {width}) for L = {L} > 1",
                      "None")
            return None, np.int32(0)
        self._dev(K, arg, a)
        if a.dtype != dt or tuple(a.shape) != (L, B, width):
            _fail(K, arg, f"a {dt} array of shape ({L}, {B}, {width})", _desc(a))
        return a, np.int32(1)

    def lstm_forward(self, gates, c_prev, c_next, h_prev, h_next, keep) -> None:
        """One LSTM step after its GEMM: gates (B, 4H) <- sigma(i), sigma(f), tanh(g),
        sigma(o) from their pre-activations; c_next = f c_prev + i g, h_next =
        o tanh(c_next) (B, H); rows whose keep is 0 take c_prev and h_prev."""
        K = "lstm_forward"
        dt, B, H = self._gate_state(K, "c_prev", c_prev, 4, gates=gates, c_next=c_next,
                                    h_prev=h_prev, h_next=h_next)
        _shape(K, "gates", gates, (B, 4 * H))
        for arg, x in (("c_next", c_next), ("h_prev", h_prev), ("h_next", h_next)):
            _shape(K, arg, x, (B, H))
        keep, has_keep = self._keep(K, keep, B, dt)
        n = _count32(K, B * H)
        if n == 0:
            return
        self._kernel("rnn_gates.cu", f"rnn_lstm_forward_{_FLOAT[dt]}")(
            (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
            (gates, c_prev, c_next, h_prev, h_next, _keep_arg(keep, c_prev), has_keep, n,
             np.int32(H)))

    def lstm_backward(self, G, DC, gates, c_prev, c_next, keep, e, fresh: int,
                      dG_all) -> None:
        """One LSTM step of BPTT for all L streams: G, DC (L, B, H) dL/dh', dL/dc' in;
        gates (B, 4H) the activations in, dL/d(pre-activations) summed over the streams
        out; dG_all (L, B, 4H) each stream's (None for L = 1); DC <- dL/dc (kept on masked
        rows), G <- dh' (1 - keep) with a mask; e (B, H) or None added to stream `fresh`
        first; c_prev, c_next (B, H)."""
        K = "lstm_backward"
        dt, B, H = self._gate_state(K, "c_prev", c_prev, 4, G=G, DC=DC, gates=gates,
                                    c_next=c_next)
        L = self._gate_streams(K, G, B, H)
        _shape(K, "DC", DC, (L, B, H))
        _shape(K, "gates", gates, (B, 4 * H))
        _shape(K, "c_next", c_next, (B, H))
        keep, has_keep = self._keep(K, keep, B, dt)
        e, has_e, fresh = self._gate_error(K, e, fresh, L, B, H, dt)
        dG_all, has_all = self._gate_all(K, "dG_all", dG_all, L, B, 4 * H, dt)
        n = _count32(K, B * H)
        if n == 0:
            return
        self._kernel("rnn_gates.cu", f"rnn_lstm_backward_{_FLOAT[dt]}")(
            (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
            (G, DC, gates, c_prev, c_next, _keep_arg(keep, c_prev), has_keep,
             c_prev if e is None else e, has_e, fresh, gates if dG_all is None else dG_all,
             has_all, np.int32(L), n, np.int32(H)))

    def gru_forward(self, gates, A, bh, h_prev, h_next, hn, keep) -> None:
        """One GRU step after its GEMM: gates (B, 3H) U x + b in, r, z, n out; A (B, 3H)
        h_prev W^T; bh (3H,); hn (B, H) <- A_n + bh_n; h_next (B, H) <- (1 - z) n +
        z h_prev, rows whose keep is 0 take h_prev."""
        K = "gru_forward"
        dt, B, H = self._gate_state(K, "h_prev", h_prev, 3, gates=gates, A=A, bh=bh,
                                    h_next=h_next, hn=hn)
        _shape(K, "gates", gates, (B, 3 * H))
        _shape(K, "A", A, (B, 3 * H))
        _shape(K, "bh", bh, (3 * H,))
        _shape(K, "h_next", h_next, (B, H))
        _shape(K, "hn", hn, (B, H))
        keep, has_keep = self._keep(K, keep, B, dt)
        n = _count32(K, B * H)
        if n == 0:
            return
        self._kernel("rnn_gates.cu", f"rnn_gru_forward_{_FLOAT[dt]}")(
            (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
            (gates, A, bh, h_prev, h_next, hn, _keep_arg(keep, h_prev), has_keep, n,
             np.int32(H)))

    def gru_backward(self, G, gates, hn, h_prev, keep, e, fresh: int, dGh_all,
                     dGh_sum, dGx_all=None) -> None:
        """One GRU step of BPTT for all L streams: G (L, B, H) dL/dh' in, dh' z (dh' on
        masked rows) out; gates (B, 3H) r, z, n in, dL/d(U x + b) summed over the streams
        out; dGh_all (L, B, 3H) each stream's dL/d(W h + bh) (None for L = 1), dGh_sum
        (B, 3H) their sum; hn, h_prev (B, H); e (B, H) or None added to stream `fresh`
        first; dGx_all (L, B, 3H) each stream's dL/d(U x + b), or None."""
        K = "gru_backward"
        dt, B, H = self._gate_state(K, "h_prev", h_prev, 3, G=G, gates=gates, hn=hn,
                                    dGh_sum=dGh_sum)
        L = self._gate_streams(K, G, B, H)
        _shape(K, "gates", gates, (B, 3 * H))
        _shape(K, "hn", hn, (B, H))
        _shape(K, "dGh_sum", dGh_sum, (B, 3 * H))
        keep, has_keep = self._keep(K, keep, B, dt)
        e, has_e, fresh = self._gate_error(K, e, fresh, L, B, H, dt)
        dGh_all, has_all = self._gate_all(K, "dGh_all", dGh_all, L, B, 3 * H, dt)
        has_x_all = np.int32(0)
        if dGx_all is not None:
            dGx_all, has_x_all = self._gate_all(K, "dGx_all", dGx_all, L, B, 3 * H, dt)
        n = _count32(K, B * H)
        if n == 0:
            return
        self._kernel("rnn_gates.cu", f"rnn_gru_backward_{_FLOAT[dt]}")(
            (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
            (G, gates, hn, h_prev, _keep_arg(keep, h_prev), has_keep,
             h_prev if e is None else e, has_e, fresh, dGh_sum if dGh_all is None else dGh_all,
             has_all, dGh_sum, dGh_sum if dGx_all is None else dGx_all, has_x_all,
             np.int32(L), n, np.int32(H)))

    # ---------------------------------------------------------------------------------
    # The recurrence: a cuBLAS GEMM plus a fused pointwise kernel per step ("gemm"), or
    # one fused recurrent-step kernel ("fused"), whichever measured faster per shape

    def recurrence(self, B: int, H: int, dtype) -> str:
        """"gemm" or "fused" for the per-step recurrence at (B, H, dtype): timed once per
        shape (a forward step each way), then cached. ``RNN_GPU_RECUR=gemm|fused`` forces
        one. During a capture an untimed shape takes "fused" (no timing there), as does a
        capture whose GEMMs would go through CuPy's binding."""
        forced = os.environ.get("RNN_GPU_RECUR", "").strip().lower()
        if forced:
            if forced not in RECURRENCES:
                raise ValueError(f"RNN_GPU_RECUR: expected gemm or fused, got {forced!r}")
            return forced
        key = (int(B), int(H), np.dtype(dtype).char, self.blas.tf32)
        name = self._recur_choice.get(key)
        if name is not None:
            return name
        if self.xp.cuda.get_current_stream().is_capturing():
            return "fused"
        dt = np.dtype(dtype)
        xp = self.xp
        s_prev = xp.zeros((B, H), dtype=dt)
        s_next = xp.zeros((B, H), dtype=dt)
        W = xp.zeros((H, H), dtype=dt)

        def gemm_step():
            self.blas.gemm(s_prev, W.T, s_next, 1.0)
            self.act_forward(s_next, s_prev, None, "tanh")

        t = {"gemm": self._time(gemm_step),
             "fused": self._time(lambda: self.recur_forward(s_prev, W.T, s_next, None, "tanh"))}
        name = min(t, key=t.get)
        self._recur_choice[key] = name
        return name
