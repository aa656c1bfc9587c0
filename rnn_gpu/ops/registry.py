"""The kernel registry: one entry per kernel of the engine, every version of it, how to
make test data for it and what one call costs. Tests, ``rnn-gpu bench`` and the docs
iterate :data:`REGISTRY`; the CUDA versions are named (methods of
:class:`rnn_gpu.cuda.launchers.CudaOps`), not imported, so reading the registry never
touches CuPy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .numpy_ops import (act_forward, adaptive_gather, adaptive_partition, adaptive_scatter_add,
                        bias_grad, delta_step, embed_gather, embed_scatter_add, gru_backward,
                        gru_forward, lstm_backward, lstm_forward, outer_accum, recur_backward,
                        recur_forward, recur_trunc_backward, sigmoid_bce, softmax_xent,
                        squared_error, trunc_delta_step, weighted_xent)


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
    cuda_versions: dict[str, str]  # version name -> the method of CudaOps that runs it
    doc: str = ""

    def versions(self, ops) -> dict[str, Callable[..., Any]]:
        """This kernel's versions in the kernel set `ops` (a backend's ``.ops``): the
        twin for NumPy, every CUDA version (bound launchers) for a CUDA kernel set."""
        if getattr(ops, "name", None) == "numpy":
            return {"numpy": self.twin}
        return {v: getattr(ops, method) for v, method in self.cuda_versions.items()}


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


def _bounds(sz):
    O = sz["O"]
    return np.array([O // 5, O // 2, (4 * O) // 5, O], dtype=np.int64)  # 3 tail clusters


def _targets(rng, sz):
    """Ids with a frequency-like skew (every cluster gets some, the shortlist most)."""
    O = sz["O"]
    return np.minimum((O * rng.random(sz["N"]) ** 3).astype(np.int64), O - 1)


def _mk_partition(xp, rng, sz, dtype):
    N, b = sz["N"], _bounds(sz)
    return (xp.asarray(_targets(rng, sz)), xp.asarray(b), xp.zeros(N, dtype=np.int32),
            xp.zeros((len(b) - 1, N), dtype=np.int32), xp.zeros(len(b) - 1, dtype=np.int32))


def _cluster_rows(rng, sz, i=1):
    """(y, idx, count, lo) of cluster i, partitioned by the twin on the host."""
    N, b = sz["N"], _bounds(sz)
    y = _targets(rng, sz)
    ht, idx = np.zeros(N, np.int32), np.zeros((len(b) - 1, N), np.int32)
    counts = np.zeros(len(b) - 1, np.int32)
    adaptive_partition(y, b, ht, idx, counts)
    return y, idx[i].copy(), counts[i:i + 1].copy(), int(b[i])


def _mk_cluster_gather(xp, rng, sz, dtype):
    N, F = sz["N"], sz["F"]
    y, idx, count, lo = _cluster_rows(rng, sz)
    w = (rng.random(N) > 0.25) * rng.uniform(0.5, 2.0, N)  # float weights, some zero
    R = N  # the fixed-size (padded) buffer: the rows past count are zeroed
    return (_rand(xp, rng, (N, F), dtype), xp.asarray(y), xp.asarray(w.astype(dtype)),
            xp.asarray(idx), xp.asarray(count), lo, xp.empty((R, F), dtype=dtype),
            xp.empty(R, dtype=np.int32), xp.empty(R, dtype=dtype))


def _mk_cluster_scatter(xp, rng, sz, dtype):
    N, F = sz["N"], sz["F"]
    _, idx, count, _ = _cluster_rows(rng, sz)
    return (_rand(xp, rng, (N, F), dtype), xp.asarray(idx), xp.asarray(count),
            _rand(xp, rng, (N, F), dtype))


def _mk_weighted_xent(xp, rng, sz, dtype):
    N, O = sz["N"], sz["O"]
    w = (rng.random(N) > 0.25) * rng.uniform(0.5, 2.0, N)
    return (_rand(xp, rng, (N, O), dtype, -8, 8),
            xp.asarray(rng.integers(0, O, N).astype(np.int32)), xp.asarray(w.astype(dtype)),
            xp.empty(N, dtype=dtype))



# Sizes are deliberately not multiples of any block size.
_BH = {"quick": {"B": 33, "H": 257}, "full": {"B": 64, "H": 1024}}
_NO = {"quick": {"N": 301, "O": 1000}, "full": {"N": 3200, "O": 10000}}
_F = 4  # bytes per float32 element; the cost model counts float32

_FUSED = lambda name: {"fused": name}  # noqa: E731 - one CUDA version, same name
REGISTRY: dict[str, KernelSpec] = {}


def _register(spec: KernelSpec) -> None:
    REGISTRY[spec.name] = spec


_register(KernelSpec(
    "act_forward", "rnn_forward.cu", act_forward, _mk_act_forward, (0,),
    flops=lambda z: 0.0, nbytes=lambda z: 3 * z["B"] * z["H"] * _F, sizes=_BH,
    cuda_versions=_FUSED("act_forward"),
    doc="hidden activation in place after the recurrent GEMM, with the mask"))
_register(KernelSpec(
    "delta_step", "rnn_backward.cu", delta_step, _mk_delta_step, (0, 4),
    flops=lambda z: 0.0, nbytes=lambda z: 5 * z["B"] * z["H"] * _F, sizes=_BH,
    cuda_versions=_FUSED("delta_step"),
    doc="adds the output error and applies f'(s) and the mask: the seed's delta update"))
_register(KernelSpec(
    "trunc_delta_step", "rnn_backward.cu", trunc_delta_step, _mk_trunc, (0, 3, 4),
    flops=lambda z: 0.0,
    nbytes=lambda z: (3 * z["L"] + 2) * z["B"] * z["H"] * _F,
    sizes={"quick": {"L": 5, "B": 33, "H": 257}, "full": {"L": 8, "B": 64, "H": 1024}},
    cuda_versions=_FUSED("trunc_delta_step"),
    doc="per-output truncated BPTT: every live error stream of a step at once"))
_register(KernelSpec(
    "softmax_xent", "rnn_xent.cu", softmax_xent, _mk_xent, (0, 3),
    flops=lambda z: 0.0, nbytes=lambda z: 2 * z["N"] * z["O"] * _F, sizes=_NO,
    cuda_versions={"fused": "softmax_xent_fused", "warp": "softmax_xent_warp"},
    doc="max, log-sum-exp, loss and softmax - onehot in place: a block per row, or a warp "
        "per row for a small O (the launcher chooses by O)"))
_register(KernelSpec(
    "sigmoid_bce", "rnn_xent.cu", sigmoid_bce, _mk_dense_target, (0, 3),
    flops=lambda z: 0.0, nbytes=lambda z: 3 * z["N"] * z["O"] * _F, sizes=_NO,
    cuda_versions=_FUSED("sigmoid_bce"),
    doc="sigmoid + binary cross-entropy loss and error in place"))
_register(KernelSpec(
    "squared_error", "rnn_xent.cu", squared_error, _mk_dense_target, (0, 3),
    flops=lambda z: 0.0, nbytes=lambda z: 3 * z["N"] * z["O"] * _F, sizes=_NO,
    cuda_versions=_FUSED("squared_error"),
    doc="linear output + squared error loss and error in place"))
_register(KernelSpec(
    "outer_accum", "rnn_outer.cu", outer_accum, _mk_outer, (0,),
    flops=lambda z: 2.0 * z["N"] * z["M"] * z["K"],
    nbytes=lambda z: (z["N"] * (z["M"] + z["K"]) + z["M"] * z["K"]) * _F,
    sizes={"quick": {"N": 333, "M": 257, "K": 129}, "full": {"N": 3200, "M": 1024, "K": 1024}},
    cuda_versions={"cublas": "outer_accum_cublas", "tiled": "outer_accum_tiled"},
    doc="dW = sum_t delta_t s_{t-1}^T over all T*B rows (tiled kernel or cuBLAS)"))
_register(KernelSpec(
    "embed_gather", "rnn_embed.cu", embed_gather, _mk_gather, (3,),
    flops=lambda z: 0.0, nbytes=lambda z: 2 * z["N"] * z["H"] * _F,
    sizes={"quick": {"N": 301, "I": 65, "H": 257}, "full": {"N": 3200, "I": 10000, "H": 1024}},
    cuda_versions=_FUSED("embed_gather"),
    doc="token input: gather rows of U^T plus the bias"))
_register(KernelSpec(
    "embed_scatter_add", "rnn_embed.cu", embed_scatter_add, _mk_scatter, (0,),
    flops=lambda z: z["N"] * z["H"], nbytes=lambda z: 3 * z["N"] * z["H"] * _F,
    sizes={"quick": {"N": 301, "I": 65, "H": 257}, "full": {"N": 3200, "I": 10000, "H": 1024}},
    cuda_versions={"atomic": "embed_scatter_add"},
    doc="token input backward: scatter-add rows into dU^T (atomics on the GPU)"))
_register(KernelSpec(
    "bias_grad", "rnn_embed.cu", bias_grad, _mk_bias, (1,),
    flops=lambda z: z["N"] * z["H"], nbytes=lambda z: z["N"] * z["H"] * _F,
    sizes={"quick": {"N": 301, "H": 257}, "full": {"N": 3200, "H": 1024}},
    cuda_versions={"colsum": "bias_grad_colsum", "split": "bias_grad_split"},
    doc="bias gradient: column sums of the errors (rows also split over the grid for a "
        "small H; the launcher chooses by shape)"))


# -------------------------------------------------------------------------------------
# Fused recurrent steps (kernels/rnn_recur.cu): a step's recurrent GEMM and its pointwise
# update in one launch. W is scaled so that the products stay in the activations' range.

def _mk_recur_forward(xp, rng, sz, dtype, act="tanh"):
    B, H = sz["B"], sz["H"]
    W = _rand(xp, rng, (H, H), dtype, -1.5 / H**0.5, 1.5 / H**0.5)
    return (_rand(xp, rng, (B, H), dtype), W.T, _rand(xp, rng, (B, H), dtype),
            _keep(xp, rng, B, dtype), act)


def _mk_recur_backward(xp, rng, sz, dtype, act="tanh"):
    B, H = sz["B"], sz["H"]
    W = _rand(xp, rng, (H, H), dtype, -1.5 / H**0.5, 1.5 / H**0.5)
    return (_rand(xp, rng, (B, H), dtype), W, _rand(xp, rng, (B, H), dtype),
            _rand(xp, rng, (B, H), dtype), _rand(xp, rng, (B, H), dtype, -0.99, 0.99),
            _keep(xp, rng, B, dtype), xp.empty((B, H), dtype=dtype), act)


def _mk_recur_trunc(xp, rng, sz, dtype, act="tanh"):
    L, B, H = sz["L"], sz["B"], sz["H"]
    W = _rand(xp, rng, (H, H), dtype, -1.5 / H**0.5, 1.5 / H**0.5)
    return (_rand(xp, rng, (L, B, H), dtype), W, _rand(xp, rng, (L, B, H), dtype), L // 2,
            _rand(xp, rng, (B, H), dtype), _rand(xp, rng, (B, H), dtype, -0.99, 0.99),
            _keep(xp, rng, B, dtype), xp.empty((L, B, H), dtype=dtype),
            xp.empty((B, H), dtype=dtype), act)


_RECUR_BH = {"quick": {"B": 37, "H": 45}, "full": {"B": 64, "H": 1024}}

_register(KernelSpec(
    "recur_forward", "rnn_recur.cu", recur_forward, _mk_recur_forward, (2,),
    flops=lambda z: 2.0 * z["B"] * z["H"] * z["H"],
    nbytes=lambda z: (z["H"] * z["H"] + 4 * z["B"] * z["H"]) * _F, sizes=_RECUR_BH,
    cuda_versions={"fused": "recur_forward"},
    doc="one forward step: the recurrent GEMM with the activation and mask as its epilogue"))
_register(KernelSpec(
    "recur_backward", "rnn_recur.cu", recur_backward, _mk_recur_backward, (2, 6),
    flops=lambda z: 2.0 * z["B"] * z["H"] * z["H"],
    nbytes=lambda z: (z["H"] * z["H"] + 7 * z["B"] * z["H"]) * _F, sizes=_RECUR_BH,
    cuda_versions={"fused": "recur_backward"},
    doc="one full-BPTT step: W^T dz_{t+1} with the delta update as its epilogue"))
_register(KernelSpec(
    "recur_trunc_backward", "rnn_recur.cu", recur_trunc_backward, _mk_recur_trunc, (2, 7, 8),
    flops=lambda z: 2.0 * z["L"] * z["B"] * z["H"] * z["H"],
    nbytes=lambda z: (z["L"] * z["H"] * z["H"] + (4 * z["L"] + 3) * z["B"] * z["H"]) * _F,
    sizes={"quick": {"L": 3, "B": 37, "H": 45}, "full": {"L": 8, "B": 64, "H": 1024}},
    cuda_versions={"fused": "recur_trunc_backward"},
    doc="one truncated-BPTT step for all L live streams: (L*B) x H x H GEMM + epilogue"))


# -------------------------------------------------------------------------------------
# Gated cells (kernels/rnn_gates.cu): the pointwise part of an LSTM or GRU step beside its
# GEMM. Backward inputs are activations in their ranges (sigmoid gates in (0, 1), tanh
# ones in (-1, 1)); L live streams, with this step's output error in stream L // 2. The
# errors (G, DC, e) are small, |.| <= 1/4: the bench calls a kernel over and over on the
# same arguments, and each backward call leaves derivatives in `gates` that the next one
# reads as activations; from small errors the iterates decay (to zeros, but the masked
# rows of G, which gain e once a call) instead of overflowing.
_ERR = 0.25

def _gate_acts(xp, rng, B, H, dtype, tanh_blocks):
    """(B, k*H) gate activations: block j in (-1, 1) if j is in tanh_blocks, else (0, 1)."""
    blocks = [rng.uniform(-1.0 if t else 0.0, 1.0, (B, H)) for t in tanh_blocks]
    return xp.asarray(np.concatenate(blocks, axis=1).astype(dtype))


def _mk_lstm_forward(xp, rng, sz, dtype):
    B, H = sz["B"], sz["H"]
    return (_rand(xp, rng, (B, 4 * H), dtype, -3, 3), _rand(xp, rng, (B, H), dtype, -2, 2),
            xp.empty((B, H), dtype=dtype), _rand(xp, rng, (B, H), dtype),
            xp.empty((B, H), dtype=dtype), _keep(xp, rng, B, dtype))


def _mk_lstm_backward(xp, rng, sz, dtype):
    L, B, H = sz["L"], sz["B"], sz["H"]
    return (_rand(xp, rng, (L, B, H), dtype, -_ERR, _ERR),
            _rand(xp, rng, (L, B, H), dtype, -_ERR, _ERR),
            _gate_acts(xp, rng, B, H, dtype, (False, False, True, False)),
            _rand(xp, rng, (B, H), dtype, -2, 2), _rand(xp, rng, (B, H), dtype, -2, 2),
            _keep(xp, rng, B, dtype), _rand(xp, rng, (B, H), dtype, -_ERR, _ERR), L // 2,
            xp.empty((L, B, 4 * H), dtype=dtype))


def _mk_gru_forward(xp, rng, sz, dtype):
    B, H = sz["B"], sz["H"]
    return (_rand(xp, rng, (B, 3 * H), dtype, -2, 2), _rand(xp, rng, (B, 3 * H), dtype),
            _rand(xp, rng, (3 * H,), dtype, -0.5, 0.5), _rand(xp, rng, (B, H), dtype),
            xp.empty((B, H), dtype=dtype), xp.empty((B, H), dtype=dtype),
            _keep(xp, rng, B, dtype))


def _mk_gru_backward(xp, rng, sz, dtype):
    L, B, H = sz["L"], sz["B"], sz["H"]
    return (_rand(xp, rng, (L, B, H), dtype, -_ERR, _ERR),
            _gate_acts(xp, rng, B, H, dtype, (False, False, True)),
            _rand(xp, rng, (B, H), dtype, -1.5, 1.5), _rand(xp, rng, (B, H), dtype),
            _keep(xp, rng, B, dtype), _rand(xp, rng, (B, H), dtype, -_ERR, _ERR), L // 2,
            xp.empty((L, B, 3 * H), dtype=dtype), xp.empty((B, 3 * H), dtype=dtype),
            xp.empty((L, B, 3 * H), dtype=dtype))


_GATES_LBH = {"quick": {"L": 3, "B": 33, "H": 257}, "full": {"L": 8, "B": 64, "H": 1024}}

_register(KernelSpec(
    "lstm_forward", "rnn_gates.cu", lstm_forward, _mk_lstm_forward, (0, 2, 4),
    flops=lambda z: 0.0, nbytes=lambda z: 12 * z["B"] * z["H"] * _F, sizes=_BH,
    cuda_versions=_FUSED("lstm_forward"),
    doc="LSTM step after its GEMM: the four gates' activations, the new cell and hidden "
        "state, with the mask"))
_register(KernelSpec(
    "lstm_backward", "rnn_gates.cu", lstm_backward, _mk_lstm_backward, (0, 1, 2, 8),
    flops=lambda z: 0.0, nbytes=lambda z: (8 * z["L"] + 11) * z["B"] * z["H"] * _F,
    sizes=_GATES_LBH, cuda_versions=_FUSED("lstm_backward"),
    doc="LSTM step of BPTT for all L streams: the gates' derivatives per stream and "
        "summed, the cell error passed back"))
_register(KernelSpec(
    "gru_forward", "rnn_gates.cu", gru_forward, _mk_gru_forward, (0, 4, 5),
    flops=lambda z: 0.0, nbytes=lambda z: (12 * z["B"] + 3) * z["H"] * _F, sizes=_BH,
    cuda_versions=_FUSED("gru_forward"),
    doc="GRU step after its GEMM: reset and update gates, candidate, new state, with the "
        "mask"))
_register(KernelSpec(
    "gru_backward", "rnn_gates.cu", gru_backward, _mk_gru_backward, (0, 1, 7, 8, 9),
    flops=lambda z: 0.0, nbytes=lambda z: (8 * z["L"] + 12) * z["B"] * z["H"] * _F,
    sizes=_GATES_LBH, cuda_versions=_FUSED("gru_backward"),
    doc="GRU step of BPTT for all L streams: the gates' derivatives at U x + b and at "
        "W h + bh, per stream and summed"))


# -------------------------------------------------------------------------------------
# Adaptive softmax (kernels/rnn_adaptive.cu)

_NF = {"quick": {"N": 301, "O": 1000, "F": 67}, "full": {"N": 3200, "O": 30000, "F": 512}}
_register(KernelSpec(
    "adaptive_partition", "rnn_adaptive.cu", adaptive_partition, _mk_partition, (2, 3, 4),
    flops=lambda z: 0.0, nbytes=lambda z: (8 + 4 * 3 + 4) * z["N"], sizes=_NF,
    cuda_versions=_FUSED("adaptive_partition"),
    doc="adaptive softmax: a stable partition of the rows by cluster, and the head's targets"))
_register(KernelSpec(
    "adaptive_gather", "rnn_adaptive.cu", adaptive_gather, _mk_cluster_gather, (6, 7, 8),
    flops=lambda z: 0.0, nbytes=lambda z: 2 * z["N"] * z["F"] * _F, sizes=_NF,
    cuda_versions=_FUSED("adaptive_gather"),
    doc="adaptive softmax: one cluster's rows, targets and weights into fixed-size buffers"))
_register(KernelSpec(
    "adaptive_scatter_add", "rnn_adaptive.cu", adaptive_scatter_add, _mk_cluster_scatter, (0,),
    flops=lambda z: z["N"] * z["F"], nbytes=lambda z: 3 * z["N"] * z["F"] * _F, sizes=_NF,
    cuda_versions=_FUSED("adaptive_scatter_add"),
    doc="adaptive softmax: one cluster's row errors added back to their rows (no atomics)"))
_register(KernelSpec(
    "weighted_xent", "rnn_adaptive.cu", weighted_xent, _mk_weighted_xent, (0, 3),
    flops=lambda z: 0.0, nbytes=lambda z: 2 * z["N"] * z["O"] * _F, sizes=_NO,
    cuda_versions=_FUSED("weighted_xent"),
    doc="softmax + cross-entropy with a float weight per row (the adaptive head and tails)"))
