"""The engine's kernels: NumPy twins here, CUDA versions in ``kernels/*.cu``.

Each operation the engine hands to a kernel has a NumPy twin with the same signature.
The NumPy engine runs the twins; the CuPy engine runs the CUDA versions, and the GPU
tests compare each CUDA version with its twin. :data:`REGISTRY` lists every kernel and
every version of it, and is what tests, ``rnn-gpu bench`` and the docs iterate.

Conventions: all arrays of one call share one float dtype (float32 or float64), are
C-contiguous, and live on one backend; ``keep`` is a (B,) or (N,) 0/1 float array
(1 = step is real, 0 = masked) or None; ``act`` is "tanh", "sigmoid" or "relu".
Outputs are written in place into the arrays passed.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# -------------------------------------------------------------------------------------
# NumPy twins


def act_forward(a, h_prev, keep, act: str) -> None:
    """Hidden activation in place: a <- f(a); masked rows take h_prev.

    a, h_prev: (B, H); a holds U x_t + b + W h_prev on entry, the new state on exit.
    """
    if act == "tanh":
        np.tanh(a, out=a)
    elif act == "sigmoid":  # 1/(1+e^-a) = (1 + tanh(a/2)) / 2, never overflows
        a *= 0.5
        np.tanh(a, out=a)
        a += 1.0
        a *= 0.5
    elif act == "relu":
        np.maximum(a, 0.0, out=a)
    else:
        raise ValueError(f"act: expected tanh, sigmoid or relu, got {act!r}")
    if keep is not None:
        np.copyto(a, h_prev, where=(keep == 0)[:, None])


def _act_grad(s, act: str, out) -> None:
    """out <- f'(a) written through s = f(a)."""
    if act == "tanh":  # 1 - s^2
        np.multiply(s, s, out=out)
        np.subtract(1.0, out, out=out)
    elif act == "sigmoid":  # s (1 - s)
        np.subtract(1.0, s, out=out)
        out *= s
    elif act == "relu":
        np.greater(s, 0, out=out)  # casts True/False to 1/0
    else:
        raise ValueError(f"act: expected tanh, sigmoid or relu, got {act!r}")


def delta_step(carry, e, s, keep, dz, act: str) -> None:
    """Fused recurrent delta update for one step (seed: delta = (W^T delta) * (1 - s^2)).

    carry: (B, H) = W^T dz_{t+1} (the error flowing back from step t+1)
    e:     (B, H) = V^T delta_o_t (the error from this step's output)
    s:     (B, H) = s_t, the state this step produced
    dz:    (B, H) out: dL/d(pre-activation) = (carry + e) * f'(s) * keep
    carry is scratch: on exit it holds (carry + e) * (1 - keep), the part that passes
    through masked steps unchanged, onto which the caller's GEMM adds W^T dz; without a
    mask it holds carry + e, which the caller's GEMM overwrites.
    """
    carry += e
    _act_grad(s, act, dz)
    dz *= carry
    if keep is not None:
        dz *= keep[:, None]
        carry *= (1.0 - keep)[:, None]


def trunc_delta_step(G, s, keep, dz_all, dz_sum, act: str) -> None:
    """Per-output truncated BPTT: one step for all live error streams at once.

    G:      (L, B, H) streams, G[i] = dL_t/ds_j for the outputs t still within their window
    s:      (B, H) = s_j
    dz_all: (L, B, H) out: G * f'(s) * keep
    dz_sum: (B, H) out: dz_all summed over streams (what step j contributes to dW, dU, db)
    With a mask, G is overwritten with G * (1 - keep) (the pass-through part).
    """
    fp = dz_sum  # f'(s) goes in the output's storage until the sum overwrites it
    _act_grad(s, act, fp)
    if keep is not None:
        fp *= keep[:, None]
    np.multiply(G, fp, out=dz_all)
    np.sum(dz_all, axis=0, out=dz_sum)
    if keep is not None:
        G *= (1.0 - keep)[:, None]


def softmax_xent(logits, y, keep, loss) -> None:
    """Softmax + cross-entropy, forward and backward in one pass per row.

    logits: (N, O) in: z; out: dL/dz = softmax(z) - onehot(y), times keep
    y: (N,) int ids; loss: (N,) out: logsumexp(z) - z_y, times keep
    Large inputs are split by rows over the CPU's cores (NumPy releases the GIL).
    """
    _split_rows(_softmax_xent_rows, logits, y, keep, loss)


def _softmax_xent_rows(logits, y, keep, loss) -> None:
    rows = np.arange(logits.shape[0])
    zmax = logits.max(axis=1)
    zy = logits[rows, y] - zmax
    logits -= zmax[:, None]
    np.exp(logits, out=logits)
    ssum = logits.sum(axis=1)
    np.subtract(np.log(ssum), zy, out=loss)
    logits *= (1.0 / ssum)[:, None]
    logits[rows, y] -= 1.0
    if keep is not None:
        loss *= keep
        logits *= keep[:, None]


_POOL = None
_PARALLEL_MIN = 1 << 20  # elements; below this a thread hand-off costs more than it saves


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _split_rows(fn, a, *rest) -> None:
    """Run fn(a, *rest) over row ranges in parallel threads when `a` is large.

    Every argument that is an array with a.shape[0] rows is sliced alike; None passes.
    """
    global _POOL
    n = a.shape[0]
    parts = min(_cores(), n)
    if a.size < _PARALLEL_MIN or parts < 2:
        fn(a, *rest)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="rnn_gpu")
    cuts = [n * i // parts for i in range(parts + 1)]
    sl = lambda v, i: v[cuts[i]:cuts[i + 1]] if v is not None else None  # noqa: E731
    futures = [_POOL.submit(fn, sl(a, i), *(sl(v, i) for v in rest)) for i in range(1, parts)]
    fn(sl(a, 0), *(sl(v, 0) for v in rest))
    for f in futures:
        f.result()


def sigmoid_bce(logits, d, keep, loss) -> None:
    """Sigmoid + binary cross-entropy (seed 002 eq. 16), in one pass per row.

    logits: (N, O) in: z; out: sigmoid(z) - d, times keep; d: (N, O) in [0, 1]
    loss: (N,) out: sum_k d softplus(-z) + (1 - d) softplus(z) = softplus(z) - d z
    """
    _split_rows(_sigmoid_bce_rows, logits, d, keep, loss)


def _sigmoid_bce_rows(logits, d, keep, loss) -> None:
    # softplus(z) = max(z, 0) + log1p(exp(-|z|)): exact and never overflows
    t = np.abs(logits)
    np.negative(t, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)
    t += np.maximum(logits, 0.0)
    t -= d * logits
    np.sum(t, axis=1, out=loss)
    np.multiply(logits, 0.5, out=logits)  # sigmoid(z) = (1 + tanh(z/2)) / 2
    np.tanh(logits, out=logits)
    logits += 1.0
    logits *= 0.5
    logits -= d
    if keep is not None:
        loss *= keep
        logits *= keep[:, None]


def squared_error(logits, d, keep, loss) -> None:
    """Linear output + squared error 1/2 sum_k (z - d)^2 (seeds 000, 002).

    logits: (N, O) in: z; out: z - d, times keep; loss: (N,) out
    """
    logits -= d
    np.einsum("nk,nk->n", logits, logits, out=loss)
    loss *= 0.5
    if keep is not None:
        loss *= keep
        logits *= keep[:, None]


def outer_accum(dW, a, b, accumulate: bool) -> None:
    """Sum of outer products over rows: dW (+)= a^T b, a (N, M), b (N, K), dW (M, K).

    dW = sum_t delta_t s_{t-1}^T and dV = sum_t delta_o_t s_t^T, with all T*B rows at once.
    """
    if accumulate:
        dW += a.T @ b
    else:
        np.matmul(a.T, b, out=dW)


def embed_gather(UT, ids, bias, out) -> None:
    """Token input: out[n] = UT[ids[n]] + bias (a column gather of U; no one-hot).

    UT: (I, H) the transpose of U; ids: (N,) int; bias: (H,); out: (N, H)
    """
    np.take(UT, ids, axis=0, out=out)
    out += bias


def embed_scatter_add(dUT, ids, dz) -> None:
    """Token input backward: dUT[ids[n]] += dz[n]; repeated ids add up.

    dUT: (I, H) the transpose of dU; ids: (N,) int; dz: (N, H)
    """
    n = ids.shape[0]
    if n == 0:
        return
    order = np.argsort(ids, kind="stable")
    sid = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sid[1:] != sid[:-1])))
    if 2 * len(starts) > n:  # mostly distinct ids: one flat scatter-add over all elements
        H = dz.shape[1]
        flat = (ids[:, None] * H + np.arange(H)).reshape(-1)
        np.add.at(dUT.reshape(-1), flat, dz.reshape(-1))
        return
    # many repeats: sum each id's rows as one contiguous block after a stable sort
    d = dz[order]
    bounds = np.append(starts, n)
    for i in range(len(starts)):
        dUT[sid[starts[i]]] += d[bounds[i]:bounds[i + 1]].sum(axis=0)


def bias_grad(dz, out) -> None:
    """out (H,) = dz (N, H) summed over rows."""
    np.sum(dz, axis=0, out=out)


# -------------------------------------------------------------------------------------
# Registry: one entry per kernel, every version of it, and how to make test data.


@dataclass
class KernelSpec:
    """One kernel: its NumPy twin, its versions per backend, and its cost model.

    make_args(xp, rng, size, dtype) -> tuple of arguments for the kernel (host RNG);
    outputs(args) -> indices of the arguments it writes (compared against the twin);
    flops(size) and nbytes(size) -> the work one call does (for GFLOP/s and GB/s).
    """

    name: str
    source: str | None  # CUDA file in kernels/, None for a pure-library operation
    twin: Callable[..., Any]
    make_args: Callable[..., tuple]
    outputs: tuple[int, ...]
    flops: Callable[[dict], float]
    nbytes: Callable[[dict], float]
    sizes: dict[str, dict]  # "quick" and "full" problem sizes
    doc: str = ""
    cupy_versions: dict[str, Callable[..., Any]] = field(default_factory=dict)


def _rand(xp, rng, shape, dtype, lo=-1.0, hi=1.0):
    return xp.asarray(rng.uniform(lo, hi, size=shape).astype(dtype))


def _keep(xp, rng, n, dtype):
    return xp.asarray((rng.random(n) > 0.25).astype(dtype))


def _mk_act_forward(xp, rng, sz, dtype, act="tanh"):
    B, H = sz["B"], sz["H"]
    return (_rand(xp, rng, (B, H), dtype, -3, 3), _rand(xp, rng, (B, H), dtype),
            _keep(xp, rng, B, dtype), act)


def _mk_delta_step(xp, rng, sz, dtype, act="tanh"):
    B, H = sz["B"], sz["H"]
    return (_rand(xp, rng, (B, H), dtype), _rand(xp, rng, (B, H), dtype),
            _rand(xp, rng, (B, H), dtype, -0.99, 0.99), _keep(xp, rng, B, dtype),
            xp.empty((B, H), dtype=dtype), act)


def _mk_trunc(xp, rng, sz, dtype, act="tanh"):
    L, B, H = sz["L"], sz["B"], sz["H"]
    return (_rand(xp, rng, (L, B, H), dtype), _rand(xp, rng, (B, H), dtype, -0.99, 0.99),
            _keep(xp, rng, B, dtype), xp.empty((L, B, H), dtype=dtype),
            xp.empty((B, H), dtype=dtype), act)


def _mk_xent(xp, rng, sz, dtype):
    N, O = sz["N"], sz["O"]
    return (_rand(xp, rng, (N, O), dtype, -8, 8), xp.asarray(rng.integers(0, O, N)),
            _keep(xp, rng, N, dtype), xp.empty(N, dtype=dtype))


def _mk_dense_target(xp, rng, sz, dtype):
    N, O = sz["N"], sz["O"]
    return (_rand(xp, rng, (N, O), dtype, -8, 8), _rand(xp, rng, (N, O), dtype, 0, 1),
            _keep(xp, rng, N, dtype), xp.empty(N, dtype=dtype))


def _mk_outer(xp, rng, sz, dtype):
    N, M, K = sz["N"], sz["M"], sz["K"]
    return (xp.empty((M, K), dtype=dtype), _rand(xp, rng, (N, M), dtype),
            _rand(xp, rng, (N, K), dtype), False)


def _mk_gather(xp, rng, sz, dtype):
    N, I, H = sz["N"], sz["I"], sz["H"]
    return (_rand(xp, rng, (I, H), dtype), xp.asarray(rng.integers(0, I, N)),
            _rand(xp, rng, (H,), dtype), xp.empty((N, H), dtype=dtype))


def _mk_scatter(xp, rng, sz, dtype):
    N, I, H = sz["N"], sz["I"], sz["H"]
    return (_rand(xp, rng, (I, H), dtype), xp.asarray(rng.integers(0, I, N)),
            _rand(xp, rng, (N, H), dtype))


def _mk_bias(xp, rng, sz, dtype):
    N, H = sz["N"], sz["H"]
    return (_rand(xp, rng, (N, H), dtype), xp.empty((H,), dtype=dtype))


# Sizes are deliberately not multiples of any block size.
_BH = {"quick": {"B": 33, "H": 257}, "full": {"B": 64, "H": 1024}}
_NO = {"quick": {"N": 301, "O": 1000}, "full": {"N": 3200, "O": 10000}}
_F = 4  # bytes per float32 element; the cost model counts float32

REGISTRY: dict[str, KernelSpec] = {}


def _register(spec: KernelSpec) -> None:
    REGISTRY[spec.name] = spec


_register(KernelSpec(
    "act_forward", "rnn_forward.cu", act_forward, _mk_act_forward, (0,),
    flops=lambda z: 0.0, nbytes=lambda z: 3 * z["B"] * z["H"] * _F, sizes=_BH,
    doc="hidden activation in place after the recurrent GEMM, with the mask"))
_register(KernelSpec(
    "delta_step", "rnn_backward.cu", delta_step, _mk_delta_step, (0, 4),
    flops=lambda z: 0.0, nbytes=lambda z: 5 * z["B"] * z["H"] * _F, sizes=_BH,
    doc="adds the output error and applies f'(s) and the mask: the seed's delta update"))
_register(KernelSpec(
    "trunc_delta_step", "rnn_backward.cu", trunc_delta_step, _mk_trunc, (0, 3, 4),
    flops=lambda z: 0.0,
    nbytes=lambda z: (3 * z["L"] + 2) * z["B"] * z["H"] * _F,
    sizes={"quick": {"L": 5, "B": 33, "H": 257}, "full": {"L": 8, "B": 64, "H": 1024}},
    doc="per-output truncated BPTT: every live error stream of a step at once"))
_register(KernelSpec(
    "softmax_xent", "rnn_xent.cu", softmax_xent, _mk_xent, (0, 3),
    flops=lambda z: 0.0, nbytes=lambda z: 2 * z["N"] * z["O"] * _F, sizes=_NO,
    doc="max, log-sum-exp, loss and softmax - onehot in place, one pass per row"))
_register(KernelSpec(
    "sigmoid_bce", "rnn_xent.cu", sigmoid_bce, _mk_dense_target, (0, 3),
    flops=lambda z: 0.0, nbytes=lambda z: 3 * z["N"] * z["O"] * _F, sizes=_NO,
    doc="sigmoid + binary cross-entropy loss and error in place"))
_register(KernelSpec(
    "squared_error", "rnn_xent.cu", squared_error, _mk_dense_target, (0, 3),
    flops=lambda z: 0.0, nbytes=lambda z: 3 * z["N"] * z["O"] * _F, sizes=_NO,
    doc="linear output + squared error loss and error in place"))
_register(KernelSpec(
    "outer_accum", "rnn_outer.cu", outer_accum, _mk_outer, (0,),
    flops=lambda z: 2.0 * z["N"] * z["M"] * z["K"],
    nbytes=lambda z: (z["N"] * (z["M"] + z["K"]) + z["M"] * z["K"]) * _F,
    sizes={"quick": {"N": 333, "M": 257, "K": 129}, "full": {"N": 3200, "M": 1024, "K": 1024}},
    doc="dW = sum_t delta_t s_{t-1}^T over all T*B rows (tiled kernel or cuBLAS)"))
_register(KernelSpec(
    "embed_gather", "rnn_embed.cu", embed_gather, _mk_gather, (3,),
    flops=lambda z: 0.0, nbytes=lambda z: 2 * z["N"] * z["H"] * _F,
    sizes={"quick": {"N": 301, "I": 65, "H": 257}, "full": {"N": 3200, "I": 10000, "H": 1024}},
    doc="token input: gather rows of U^T plus the bias"))
_register(KernelSpec(
    "embed_scatter_add", "rnn_embed.cu", embed_scatter_add, _mk_scatter, (0,),
    flops=lambda z: z["N"] * z["H"], nbytes=lambda z: 3 * z["N"] * z["H"] * _F,
    sizes={"quick": {"N": 301, "I": 65, "H": 257}, "full": {"N": 3200, "I": 10000, "H": 1024}},
    doc="token input backward: scatter-add rows into dU^T (atomics on the GPU)"))
_register(KernelSpec(
    "bias_grad", "rnn_embed.cu", bias_grad, _mk_bias, (1,),
    flops=lambda z: z["N"] * z["H"], nbytes=lambda z: z["N"] * z["H"] * _F,
    sizes={"quick": {"N": 301, "H": 257}, "full": {"N": 3200, "H": 1024}},
    doc="bias gradient: column sums of the errors"))


# -------------------------------------------------------------------------------------
# Composite steps: a GEMM plus a fused kernel. The CUDA side does the GEMM with cuBLAS
# (accumulating with beta = 1 where it can); here NumPy's matmul does it.


def forward_step(s_prev, WT, s_next, keep, act: str, scratch) -> None:
    """s_next <- f(s_next + s_prev @ WT): s_next holds U x_t + b on entry. (B, H) each."""
    np.matmul(s_prev, WT, out=scratch)
    s_next += scratch
    act_forward(s_next, s_prev, keep, act)


def backward_step(carry, e, s, keep, dz, W, act: str, last: bool, scratch) -> None:
    """One step of the full recursion: dz from delta_step, then carry <- W^T dz (+ pass).

    dz may be the same array as e. On the last step (t = 0) the carry is not needed:
    the gradient stops at h0.
    """
    delta_step(carry, e, s, keep, dz, act)
    if last:
        return
    if keep is None:
        np.matmul(dz, W, out=carry)
    else:
        np.matmul(dz, W, out=scratch)
        carry += scratch


def trunc_backward_step(G, s, keep, dz_all, dz_sum, W, act: str, last: bool, scratch) -> None:
    """One step of per-output truncated BPTT for all L live streams (one GEMM for all).

    scratch: (L, B, H).
    """
    trunc_delta_step(G, s, keep, dz_all, dz_sum, act)
    L, B, H = G.shape
    if last or L == 1:
        return
    if keep is None:
        np.matmul(dz_all.reshape(L * B, H), W, out=G.reshape(L * B, H))
    else:
        np.matmul(dz_all.reshape(L * B, H), W, out=scratch.reshape(L * B, H))
        G += scratch


class NumpyOps:
    """The operations the engine calls, done by the NumPy twins."""

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


def ops_for(backend) -> Any:
    """The kernel set for a backend: the NumPy twins, or the CUDA launchers."""
    if backend.name == "numpy":
        return NumpyOps
    from . import cuda_ops  # noqa: PLC0415 - only where CuPy runs

    return cuda_ops.CupyOps
