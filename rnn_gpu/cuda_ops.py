"""CUDA launchers for the engine's kernels (the CuPy backend's :class:`CupyOps`).

One launcher per kernel, with the signature and the in-place semantics of its NumPy twin
in :mod:`rnn_gpu.kernels`. CuPy checks nothing passed to a RawKernel, so every launcher
checks dtype (float32 or float64, the same for all float arguments), C-contiguity, shapes
and that arrays are CuPy arrays, and raises ``ValueError("kernel: arg: expected ..., got
...")``; then it computes its grid and launches on the current stream. The CUDA sources
are ``kernels/*.cu``, compiled once per set of ``#define``s through
:func:`rnn_gpu.backend.raw_module`.

GEMMs go straight to cuBLAS (``sgemm``/``dgemm``, or ``gemmEx`` in TF32 mode) so that they
can accumulate (beta = 1) and never allocate: the recurrent product adds onto U x_t + b in
place, and a CUDA Graph can capture every call.

Imported only on the CuPy backend (by :func:`rnn_gpu.kernels.ops_for`); importing it
registers the CUDA versions in :data:`rnn_gpu.kernels.REGISTRY`.

Environment: ``RNN_GPU_TF32=1`` turns TF32 on at import (see :func:`set_tf32`);
``RNN_GPU_OUTER=cublas|tiled`` forces the outer-product version (tests, benchmarks).
"""
from __future__ import annotations

import functools
import logging
import os

import cupy
import numpy as np
from cupy.cuda import cublas

from . import kernels as _k
from .backend import raw_module

log = logging.getLogger("rnn_gpu")

# Launch configuration. Each value is also passed to the .cu file as a #define, so the
# kernel and its launcher cannot disagree.
ELEM_BLOCK = 256  # pointwise kernels
XENT_BLOCK = 256  # threads per row in the loss kernels
OUTER_TILE, OUTER_THREADS, OUTER_TN = 64, 16, 16
BIAS_COLS, BIAS_ROWS = 32, 16
_MAX_BLOCKS = 65535  # grid-stride loops cover the rest

_ACT = {"tanh": 0, "sigmoid": 1, "relu": 2}
_FLOAT = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_INT = {np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}
_INT32_MAX = 2**31 - 1

_DEFINES = {
    "rnn_forward.cu": (("ELEM_BLOCK", str(ELEM_BLOCK)),),
    "rnn_backward.cu": (("ELEM_BLOCK", str(ELEM_BLOCK)),),
    "rnn_xent.cu": (("XENT_BLOCK", str(XENT_BLOCK)),),
    "rnn_outer.cu": (("OUTER_TILE", str(OUTER_TILE)), ("OUTER_THREADS", str(OUTER_THREADS)),
                     ("OUTER_TN", str(OUTER_TN))),
    "rnn_embed.cu": (("ELEM_BLOCK", str(ELEM_BLOCK)), ("BIAS_COLS", str(BIAS_COLS)),
                     ("BIAS_ROWS", str(BIAS_ROWS))),
}


@functools.lru_cache(maxsize=None)
def _kernel(filename: str, name: str):
    """The compiled kernel `name` of kernels/<filename> (module and function memoized)."""
    return raw_module(filename, _DEFINES[filename]).get_function(name)


# -------------------------------------------------------------------------------------
# Validation. Messages name the kernel and the argument, what was expected, what came.


def _fail(kern: str, arg: str, expected: str, got: str):
    raise ValueError(f"{kern}: {arg}: expected {expected}, got {got}")


def _desc(a) -> str:
    if isinstance(a, cupy.ndarray):
        return f"{a.dtype} array of shape {tuple(a.shape)}"
    return type(a).__name__


def _dev(kern: str, arg: str, a) -> None:
    if not isinstance(a, cupy.ndarray):
        _fail(kern, arg, "a cupy.ndarray (these launchers run on the GPU only)", _desc(a))
    if not a.flags.c_contiguous:
        _fail(kern, arg, "a C-contiguous array", f"strides {a.strides} for shape {a.shape}")


def _floats(kern: str, **arrays) -> np.dtype:
    """Check that the float arguments are device arrays sharing float32 or float64."""
    dtype = None
    for arg, a in arrays.items():
        _dev(kern, arg, a)
        if a.dtype not in _FLOAT:
            _fail(kern, arg, "float32 or float64", _desc(a))
        if dtype is None:
            dtype, first = a.dtype, arg
        elif a.dtype != dtype:
            _fail(kern, arg, f"{dtype} like {first}", _desc(a))
    return dtype


def _shape(kern: str, arg: str, a, shape: tuple) -> None:
    if tuple(a.shape) != tuple(shape):
        _fail(kern, arg, f"shape {tuple(shape)}", _desc(a))


def _keep(kern: str, keep, rows: int, dtype):
    """keep: None or (rows,) 0/1 of the float dtype. Returns (pointer argument, flag)."""
    if keep is None:
        return None, np.int32(0)
    _dev(kern, "keep", keep)
    if keep.dtype != dtype or keep.shape != (rows,):
        _fail(kern, "keep", f"None or a {dtype} array of shape ({rows},)", _desc(keep))
    return keep, np.int32(1)


def _ids(kern: str, arg: str, ids, n: int):
    """Integer ids of shape (n,). int32/int64 go to the kernel as they are; other integer
    kinds are converted to int64 (one small copy: pass int32 or int64 to avoid it)."""
    _dev(kern, arg, ids)
    if ids.dtype.kind not in "iu":
        _fail(kern, arg, f"an integer array of shape ({n},)", _desc(ids))
    if ids.shape != (n,):
        _fail(kern, arg, f"an integer array of shape ({n},)", _desc(ids))
    if ids.dtype not in _INT:
        ids = ids.astype(cupy.int64)
    return ids


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


# -------------------------------------------------------------------------------------
# Pointwise kernels


def act_forward(a, h_prev, keep, act: str) -> None:
    """Hidden activation in place: a <- f(a); masked rows take h_prev. (B, H) each."""
    K = "act_forward"
    dt = _floats(K, a=a, h_prev=h_prev)
    if a.ndim != 2:
        _fail(K, "a", "a 2-D (B, H) array", _desc(a))
    B, H = a.shape
    _shape(K, "h_prev", h_prev, (B, H))
    keep, has_keep = _keep(K, keep, B, dt)
    code = _act(K, act)
    n = _count32(K, B * H)
    if n == 0:
        return
    _kernel("rnn_forward.cu", f"rnn_act_forward_{_FLOAT[dt]}")(
        (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
        (a, h_prev, _keep_arg(keep, a), has_keep, n, np.int32(H), code))


def delta_step(carry, e, s, keep, dz, act: str) -> None:
    """Fused delta update: dz = (carry + e) f'(s) keep; carry <- (carry + e)(1 - keep).

    carry, e, s, dz: (B, H); dz may be the same array as e.
    """
    K = "delta_step"
    dt = _floats(K, carry=carry, e=e, s=s, dz=dz)
    if carry.ndim != 2:
        _fail(K, "carry", "a 2-D (B, H) array", _desc(carry))
    B, H = carry.shape
    for arg, x in (("e", e), ("s", s), ("dz", dz)):
        _shape(K, arg, x, (B, H))
    keep, has_keep = _keep(K, keep, B, dt)
    code = _act(K, act)
    n = _count32(K, B * H)
    if n == 0:
        return
    _kernel("rnn_backward.cu", f"rnn_delta_step_{_FLOAT[dt]}")(
        (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
        (carry, e, s, _keep_arg(keep, s), has_keep, dz, n, np.int32(H), code))


def trunc_delta_step(G, s, keep, dz_all, dz_sum, act: str) -> None:
    """Truncated BPTT, all L streams: dz_all = G f'(s) keep, dz_sum = sum over streams.

    G, dz_all: (L, B, H); s, dz_sum: (B, H). With a mask, G <- G (1 - keep).
    """
    K = "trunc_delta_step"
    dt = _floats(K, G=G, s=s, dz_all=dz_all, dz_sum=dz_sum)
    if G.ndim != 3:
        _fail(K, "G", "a 3-D (L, B, H) array", _desc(G))
    L, B, H = G.shape
    _shape(K, "s", s, (B, H))
    _shape(K, "dz_all", dz_all, (L, B, H))
    _shape(K, "dz_sum", dz_sum, (B, H))
    keep, has_keep = _keep(K, keep, B, dt)
    code = _act(K, act)
    n = _count32(K, B * H)
    if n == 0:
        return
    _kernel("rnn_backward.cu", f"rnn_trunc_delta_step_{_FLOAT[dt]}")(
        (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,),
        (G, s, _keep_arg(keep, s), has_keep, dz_all, dz_sum, np.int32(L), n, np.int32(H),
         code))


# -------------------------------------------------------------------------------------
# Losses: one block per row


def _loss_args(K: str, logits, keep, loss):
    dt = _floats(K, logits=logits, loss=loss)
    if logits.ndim != 2:
        _fail(K, "logits", "a 2-D (N, O) array", _desc(logits))
    N, O = logits.shape
    _shape(K, "loss", loss, (N,))
    if O > _INT32_MAX:
        _fail(K, "logits", "fewer than 2^31 columns", str(O))
    keep, has_keep = _keep(K, keep, N, dt)
    return dt, N, O, keep, has_keep


def softmax_xent(logits, y, keep, loss) -> None:
    """Softmax + cross-entropy in one kernel: logits (N, O) <- softmax - onehot(y) (times
    keep), loss (N,) <- logsumexp - z_y (times keep). y: (N,) int ids (not range-checked
    here: an id outside [0, O) gives a NaN loss)."""
    K = "softmax_xent"
    dt, N, O, keep, has_keep = _loss_args(K, logits, keep, loss)
    y = _ids(K, "y", y, N)
    if N == 0:
        return
    if O == 0:
        _fail(K, "logits", "at least one column", _desc(logits))
    _kernel("rnn_xent.cu", f"rnn_softmax_xent_{_FLOAT[dt]}_{_INT[y.dtype]}")(
        (N,), (XENT_BLOCK,), (logits, y, _keep_arg(keep, loss), has_keep, loss, np.int32(O)))


def _dense_loss(K: str, name: str, logits, d, keep, loss) -> None:
    dt, N, O, keep, has_keep = _loss_args(K, logits, keep, loss)
    _floats(K, logits=logits, d=d)
    _shape(K, "d", d, (N, O))
    if N == 0:
        return
    _kernel("rnn_xent.cu", f"{name}_{_FLOAT[dt]}")(
        (N,), (XENT_BLOCK,), (logits, d, _keep_arg(keep, loss), has_keep, loss, np.int32(O)))


def sigmoid_bce(logits, d, keep, loss) -> None:
    """Sigmoid + binary cross-entropy: logits (N, O) <- sigmoid - d, loss (N,), d (N, O)."""
    _dense_loss("sigmoid_bce", "rnn_sigmoid_bce", logits, d, keep, loss)


def squared_error(logits, d, keep, loss) -> None:
    """Linear + 1/2 squared error: logits (N, O) <- z - d, loss (N,), d (N, O)."""
    _dense_loss("squared_error", "rnn_squared_error", logits, d, keep, loss)


# -------------------------------------------------------------------------------------
# Token input and bias sums


def embed_gather(UT, ids, bias, out) -> None:
    """out (N, H) = UT[ids] + bias; UT (I, H), ids (N,) int, bias (H,). Ids not checked."""
    K = "embed_gather"
    dt = _floats(K, UT=UT, bias=bias, out=out)
    if UT.ndim != 2 or out.ndim != 2:
        _fail(K, "UT, out", "2-D (I, H) and (N, H) arrays", f"{_desc(UT)}, {_desc(out)}")
    N, H = out.shape
    if UT.shape[1] != H:
        _fail(K, "UT", f"shape (I, {H})", _desc(UT))
    _shape(K, "bias", bias, (H,))
    ids = _ids(K, "ids", ids, N)
    n = N * H
    if n == 0:
        return
    _kernel("rnn_embed.cu", f"rnn_embed_gather_{_FLOAT[dt]}_{_INT[ids.dtype]}")(
        (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,), (UT, ids, bias, out, np.int64(n), np.int32(H)))


def embed_scatter_add(dUT, ids, dz) -> None:
    """dUT[ids[n]] += dz[n] with atomics (repeated ids add up; their order is not fixed).

    dUT (I, H), ids (N,) int, dz (N, H).
    """
    K = "embed_scatter_add"
    dt = _floats(K, dUT=dUT, dz=dz)
    if dUT.ndim != 2 or dz.ndim != 2:
        _fail(K, "dUT, dz", "2-D (I, H) and (N, H) arrays", f"{_desc(dUT)}, {_desc(dz)}")
    N, H = dz.shape
    if dUT.shape[1] != H:
        _fail(K, "dUT", f"shape (I, {H})", _desc(dUT))
    ids = _ids(K, "ids", ids, N)
    n = N * H
    if n == 0:
        return
    _kernel("rnn_embed.cu", f"rnn_embed_scatter_add_{_FLOAT[dt]}_{_INT[ids.dtype]}")(
        (_blocks(n, ELEM_BLOCK),), (ELEM_BLOCK,), (dUT, ids, dz, np.int64(n), np.int32(H)))


def bias_grad(dz, out) -> None:
    """out (H,) = dz (N, H) summed over rows (fixed order: deterministic)."""
    K = "bias_grad"
    dt = _floats(K, dz=dz, out=out)
    if dz.ndim != 2:
        _fail(K, "dz", "a 2-D (N, H) array", _desc(dz))
    N, H = dz.shape
    _shape(K, "out", out, (H,))
    if N > _INT32_MAX or H > _INT32_MAX:
        _fail(K, "dz", "fewer than 2^31 rows and columns", _desc(dz))
    if H == 0:
        return
    _kernel("rnn_embed.cu", f"rnn_bias_grad_{_FLOAT[dt]}")(
        (-(-H // BIAS_COLS),), (BIAS_COLS, BIAS_ROWS), (dz, out, np.int32(N), np.int32(H)))


# -------------------------------------------------------------------------------------
# GEMM: C (+)= A @ B on row-major data, straight through cuBLAS.
#
# cuBLAS is column-major. A row-major (p, q) array read column-major is its transpose, so
# C = A B (row-major) is computed as C^T = B^T A^T (column-major): cuBLAS gets B first.
# An operand that is F-contiguous (a transposed view such as W.T) is the row-major
# transpose of a C-contiguous array, and is passed as that array with op = T.

_TF32 = False
_CUPY_COMPUTE_TYPE = None  # cupy.matmul's float32 compute type before set_tf32 changed it
_ONE = {np.dtype(np.float32): np.ones(1, np.float32), np.dtype(np.float64): np.ones(1, np.float64)}
_ZERO = {np.dtype(np.float32): np.zeros(1, np.float32), np.dtype(np.float64): np.zeros(1, np.float64)}
_CUDA_R_32F = 0
_COMPUTE_32F_FAST_TF32 = getattr(cublas, "CUBLAS_COMPUTE_32F_FAST_TF32", 77)
_GEMM_DEFAULT = getattr(cublas, "CUBLAS_GEMM_DEFAULT", -1)


def _operand(kern: str, arg: str, X):
    """(op, leading dimension) for a C- or F-contiguous 2-D operand."""
    if not isinstance(X, cupy.ndarray):
        _fail(kern, arg, "a cupy.ndarray", _desc(X))
    if X.ndim != 2:
        _fail(kern, arg, "a 2-D array", _desc(X))
    if X.flags.c_contiguous:
        return cublas.CUBLAS_OP_N, max(1, X.shape[1])
    if X.flags.f_contiguous:
        return cublas.CUBLAS_OP_T, max(1, X.shape[0])
    _fail(kern, arg, "a C- or F-contiguous array", f"strides {X.strides} for shape {X.shape}")


def gemm(A, B, C, beta: float) -> None:
    """C (m, n) <- A (m, k) @ B (k, n) + beta C, beta 0 or 1, on the current stream.

    A and B may be transposed views (F-contiguous); C must be C-contiguous. No allocation.
    float32 uses TF32 tensor cores when :func:`set_tf32` is on.
    """
    K = "gemm"
    dt = _floats(K, C=C)
    opa, lda = _operand(K, "A", A)
    opb, ldb = _operand(K, "B", B)
    if A.dtype != dt or B.dtype != dt:
        _fail(K, "A, B", f"{dt} like C", f"{A.dtype}, {B.dtype}")
    m, k = A.shape
    n = C.shape[1] if C.ndim == 2 else -1
    if B.shape[0] != k or C.shape != (m, B.shape[1]):
        _fail(K, "shapes", "A (m, k), B (k, n), C (m, n)",
              f"A {A.shape}, B {B.shape}, C {C.shape}")
    if m == 0 or n == 0:
        return
    if k == 0:
        if beta == 0:
            C.fill(0)
        return
    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)  # also under graph capture
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    alpha_p = _ONE[dt].ctypes.data
    beta_p = (_ONE[dt] if beta else _ZERO[dt]).ctypes.data
    # Column-major C^T (n, m) = op(B)^T-as-stored (n, k) @ op(A)^T-as-stored (k, m).
    args = (handle, opb, opa, n, m, k, alpha_p, B.data.ptr, ldb, A.data.ptr, lda, beta_p,
            C.data.ptr, max(1, n))
    if dt == np.float64:
        cublas.dgemm(*args)
    elif _TF32:
        cublas.gemmEx(handle, opb, opa, n, m, k, alpha_p, B.data.ptr, _CUDA_R_32F, ldb,
                      A.data.ptr, _CUDA_R_32F, lda, beta_p, C.data.ptr, _CUDA_R_32F,
                      max(1, n), _COMPUTE_32F_FAST_TF32, _GEMM_DEFAULT)
    else:
        cublas.sgemm(*args)


def set_tf32(on: bool) -> None:
    """Opt-in TF32 tensor-core math for float32 GEMMs (ours and cupy.matmul's); off by
    default and never used for float64.

    Precision: TF32 rounds each GEMM input to a 10-bit mantissa (unit roundoff 2^-11, about
    4.9e-4) and accumulates in float32. A product of K terms is then accurate to about
    1e-3 relative to sum |a_i b_i| rather than float32's 1e-7 scale, and gradients agree
    with the float64 reference to about 1e-2 relative (the GPU tests check 3e-2), against
    1e-4 in plain float32. Good for training speed on sm_80+, not for gradient checks.

    Turning it off gives ``cupy.matmul`` back the compute type it had before the first
    :func:`set_tf32` call (so a user's ``CUPY_TF32=1`` still holds for CuPy's own matmul).
    """
    global _TF32, _CUPY_COMPUTE_TYPE
    _TF32 = bool(on)
    try:
        from cupy._core import _routines_linalg as rl  # noqa: PLC0415 - private CuPy API

        tf32 = getattr(rl, "COMPUTE_TYPE_TF32", 7)
        if _TF32 and int(cupy.cuda.Device().compute_capability) < 80:
            _TF32 = False
            log.warning("rnn_gpu: TF32 needs compute capability 8.0 or newer; staying in float32")
        if _CUPY_COMPUTE_TYPE is None:
            _CUPY_COMPUTE_TYPE = rl.get_compute_type(np.float32)
        rl.set_compute_type(np.float32, tf32 if _TF32 else _CUPY_COMPUTE_TYPE)
    except (ImportError, AttributeError):  # pragma: no cover - depends on the CuPy version
        log.warning("rnn_gpu: cannot set CuPy's compute type; cupy.matmul follows CUPY_TF32")


def tf32_enabled() -> bool:
    return _TF32


# -------------------------------------------------------------------------------------
# Outer-product accumulation: the tiled kernel, cuBLAS, and the per-shape choice


def _outer_args(K: str, dW, a, b):
    dt = _floats(K, dW=dW, a=a, b=b)
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


_TILED_MAX_M = 65535 * OUTER_TILE  # the tiled grid's y dimension covers M in tiles


def tiled_fits(M: int) -> bool:
    """Whether the tiled kernel's grid can cover M columns of `a` (gridDim.y <= 65535)."""
    return M <= _TILED_MAX_M


def outer_accum_tiled(dW, a, b, accumulate: bool) -> None:
    """dW (M, K) (+)= a (N, M)^T b (N, K) with the shared-memory tiled kernel."""
    dt, N, M, Kc = _outer_args("outer_accum", dW, a, b)
    if M == 0 or Kc == 0:
        return
    if not tiled_fits(M):
        _fail("outer_accum", "a", f"at most {_TILED_MAX_M} columns", _desc(a))
    grid = (-(-Kc // OUTER_TILE), -(-M // OUTER_TILE))
    _kernel("rnn_outer.cu", f"rnn_outer_accum_{_FLOAT[dt]}")(
        grid, (OUTER_THREADS, OUTER_THREADS),
        (dW, a, b, np.int32(N), np.int32(M), np.int32(Kc), np.int32(bool(accumulate))))


def outer_accum_cublas(dW, a, b, accumulate: bool) -> None:
    """dW (M, K) (+)= a (N, M)^T b (N, K) with one cuBLAS GEMM (beta = 1 to accumulate)."""
    _outer_args("outer_accum", dW, a, b)
    gemm(a.T, b, dW, 1.0 if accumulate else 0.0)


OUTER_VERSIONS = {"cublas": outer_accum_cublas, "tiled": outer_accum_tiled}
_OUTER_CHOICE: dict[tuple, str] = {}  # (N, M, K, dtype char, tf32) -> version name


def outer_choice(N: int, M: int, K: int, dtype) -> str | None:
    """The version chosen for a shape so far (None if it has not been timed)."""
    return _OUTER_CHOICE.get((N, M, K, np.dtype(dtype).char, _TF32))


def _time_outer(name: str, dW, a, b, reps: int = 3) -> float:
    fn = OUTER_VERSIONS[name]
    fn(dW, a, b, False)  # warm-up (compiles the kernel on first use)
    stream = cupy.cuda.get_current_stream()
    times = []
    for _ in range(reps):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        fn(dW, a, b, False)
        stop.record(stream)
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return sorted(times)[len(times) // 2]


def outer_accum(dW, a, b, accumulate: bool) -> None:
    """dW (M, K) (+)= a (N, M)^T b (N, K): the tiled kernel or cuBLAS, whichever measured
    faster for this shape (timed once per (N, M, K, dtype), then cached). ``RNN_GPU_OUTER``
    forces one. During a CUDA Graph capture an untimed shape uses cuBLAS (no timing there).
    """
    dt, N, M, Kc = _outer_args("outer_accum", dW, a, b)
    forced = os.environ.get("RNN_GPU_OUTER", "").strip().lower()
    if forced:
        if forced not in OUTER_VERSIONS:
            raise ValueError(f"RNN_GPU_OUTER: expected cublas or tiled, got {forced!r}")
        OUTER_VERSIONS[forced](dW, a, b, accumulate)
        return
    key = (N, M, Kc, dt.char, _TF32)
    name = _OUTER_CHOICE.get(key)
    if name is None:
        scratch = []  # made at the first timing only: dW itself may hold a sum to keep

        def time_version(v):
            if not scratch:
                scratch.append(cupy.empty_like(dW))
            return _time_outer(v, scratch[0], a, b)

        capturing = cupy.cuda.get_current_stream().is_capturing()
        name = choose_outer(key, M, capturing, time_version)
    OUTER_VERSIONS[name](dW, a, b, accumulate)


def choose_outer(key: tuple, M: int, capturing: bool, time_version) -> str:
    """The outer-product version for an untimed shape `key`: cuBLAS where the tiled grid
    cannot cover M (chosen for good) or during a graph capture (no timing there; left
    untimed), else the faster of ``time_version(name)`` (ms) over OUTER_VERSIONS, cached."""
    if not tiled_fits(M):
        _OUTER_CHOICE[key] = "cublas"
        return "cublas"
    if capturing:
        return "cublas"
    t = {v: time_version(v) for v in OUTER_VERSIONS}
    name = min(t, key=t.get)
    _OUTER_CHOICE[key] = name
    log.debug("rnn_gpu: outer_accum %s: %s -> %s", key,
              ", ".join(f"{v} {ms:.3f} ms" for v, ms in t.items()), name)
    return name


# -------------------------------------------------------------------------------------
# Composite steps: one cuBLAS GEMM plus one fused kernel


def forward_step(s_prev, WT, s_next, keep, act: str, scratch) -> None:
    """s_next <- f(s_next + s_prev @ WT), masked rows take s_prev. (B, H) each.

    The GEMM accumulates onto s_next (which holds U x_t + b) with beta = 1, so `scratch`
    is not used; it stays in the signature of the twin.
    """
    gemm(s_prev, WT, s_next, 1.0)
    act_forward(s_next, s_prev, keep, act)


def backward_step(carry, e, s, keep, dz, W, act: str, last: bool, scratch) -> None:
    """dz from the fused delta update, then carry <- dz @ W (+ the masked pass-through,
    accumulated with beta = 1; `scratch` is not used). dz may be e. No GEMM on the last step.
    """
    delta_step(carry, e, s, keep, dz, act)
    if last:
        return
    gemm(dz, W, carry, 0.0 if keep is None else 1.0)


def trunc_backward_step(G, s, keep, dz_all, dz_sum, W, act: str, last: bool, scratch) -> None:
    """One step of per-output truncated BPTT for all L streams; one GEMM moves them all
    back a step (accumulating onto the masked pass-through; `scratch` is not used)."""
    trunc_delta_step(G, s, keep, dz_all, dz_sum, act)
    L, B, H = G.shape
    if last or L == 1:
        return
    gemm(dz_all.reshape(L * B, H), W, G.reshape(L * B, H), 0.0 if keep is None else 1.0)


class CupyOps:
    """The operations the engine calls, done by the CUDA kernels and cuBLAS."""

    act_forward = staticmethod(act_forward)
    delta_step = staticmethod(delta_step)
    trunc_delta_step = staticmethod(trunc_delta_step)
    softmax_xent = staticmethod(softmax_xent)
    sigmoid_bce = staticmethod(sigmoid_bce)
    squared_error = staticmethod(squared_error)
    outer_accum = staticmethod(outer_accum)
    embed_gather = staticmethod(embed_gather)
    embed_scatter_add = staticmethod(embed_scatter_add)
    bias_grad = staticmethod(bias_grad)
    forward_step = staticmethod(forward_step)
    backward_step = staticmethod(backward_step)
    trunc_backward_step = staticmethod(trunc_backward_step)


# -------------------------------------------------------------------------------------
# Registry: the CUDA versions beside their twins, for tests and benchmarks.

_VERSIONS = {
    "act_forward": {"fused": act_forward},
    "delta_step": {"fused": delta_step},
    "trunc_delta_step": {"fused": trunc_delta_step},
    "softmax_xent": {"fused": softmax_xent},
    "sigmoid_bce": {"fused": sigmoid_bce},
    "squared_error": {"fused": squared_error},
    "outer_accum": {"cublas": outer_accum_cublas, "tiled": outer_accum_tiled},
    "embed_gather": {"fused": embed_gather},
    "embed_scatter_add": {"atomic": embed_scatter_add},
    "bias_grad": {"colsum": bias_grad},
}
for _name, _versions in _VERSIONS.items():
    _k.REGISTRY[_name].cupy_versions.update(_versions)

if os.environ.get("RNN_GPU_TF32", "").strip().lower() in ("1", "true", "yes", "on"):
    set_tf32(True)
