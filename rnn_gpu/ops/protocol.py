"""The :class:`Ops` protocol: what the engine asks of a backend's kernel set.

Two kernel sets implement it: :class:`rnn_gpu.ops.numpy_ops.NumpyOps` (the NumPy twins)
and :class:`rnn_gpu.cuda.launchers.CudaOps` (the CUDA kernels and cuBLAS). Shapes:
B streams, H hidden units, N = T*B rows, O outputs, L live error streams; see the twins
for each operation's exact in-place semantics.
"""
from __future__ import annotations

from typing import Any, Protocol


class Ops(Protocol):
    """A kernel set. Every method writes its outputs in place and returns None."""

    name: str  # "numpy" or "cuda"

    def gemm(self, A: Any, B: Any, C: Any, beta: float) -> None:
        """C (m, n) <- A (m, k) @ B (k, n) + beta C, beta 0 or 1."""

    def act_forward(self, a: Any, h_prev: Any, keep: Any, act: str) -> None:
        """a (B, H) <- f(a); masked rows take h_prev (B, H)."""

    def delta_step(self, carry: Any, e: Any, s: Any, keep: Any, dz: Any, act: str) -> None:
        """dz (B, H) = (carry + e) f'(s) keep; carry <- (carry + e)(1 - keep)."""

    def trunc_delta_step(self, G: Any, s: Any, keep: Any, dz_all: Any, dz_sum: Any,
                         act: str) -> None:
        """dz_all (L, B, H) = G f'(s) keep; dz_sum (B, H) = its sum over streams."""

    def softmax_xent(self, logits: Any, y: Any, keep: Any, loss: Any) -> None:
        """logits (N, O) <- softmax - onehot(y); loss (N,) <- logsumexp - z_y."""

    def sigmoid_bce(self, logits: Any, d: Any, keep: Any, loss: Any) -> None:
        """logits (N, O) <- sigmoid - d; loss (N,) the binary cross-entropy."""

    def squared_error(self, logits: Any, d: Any, keep: Any, loss: Any) -> None:
        """logits (N, O) <- z - d; loss (N,) = 1/2 sum (z - d)^2."""

    def outer_accum(self, dW: Any, a: Any, b: Any, accumulate: bool) -> None:
        """dW (M, K) (+)= a (N, M)^T b (N, K)."""

    def embed_gather(self, UT: Any, ids: Any, bias: Any, out: Any) -> None:
        """out (N, H) = UT[ids] + bias."""

    def embed_scatter_add(self, dUT: Any, ids: Any, dz: Any) -> None:
        """dUT[ids[n]] += dz[n]."""

    def bias_grad(self, dz: Any, out: Any) -> None:
        """out (H,) = dz (N, H) summed over rows."""

    def recurrence(self, B: int, H: int, dtype: Any) -> str:
        """How the per-step recurrence runs at this shape: "gemm" (GEMM + fused pointwise
        kernel) or "fused" (one recurrent-step kernel, the recur_* methods)."""

    def recur_forward(self, s_prev: Any, WT: Any, s_next: Any, keep: Any, act: str) -> None:
        """s_next (B, H) <- f(s_next + s_prev @ WT); masked rows take s_prev."""

    def recur_backward(self, dz_next: Any, W: Any, carry: Any, e: Any, s: Any, keep: Any,
                       dz: Any, act: str) -> None:
        """dz (B, H) = (dz_next @ W + carry + e) f'(s) keep; carry: the pass-through."""

    def recur_trunc_backward(self, dz_prev: Any, W: Any, G: Any, fresh: int, e: Any, s: Any,
                             keep: Any, dz_all: Any, dz_sum: Any, act: str) -> None:
        """All L live streams: g = dz_prev @ W + G (e in slot `fresh`), dz_all = g f'(s)
        keep, dz_sum its sum over streams, G <- g (1 - keep)."""

    def lstm_forward(self, gates: Any, c_prev: Any, c_next: Any, h_prev: Any, h_next: Any,
                     keep: Any) -> None:
        """gates (B, 4H) <- activations of [i, f, g, o] from their pre-activations;
        c_next = f c_prev + i g, h_next = o tanh(c_next); masked rows take the old state."""

    def lstm_backward(self, G: Any, DC: Any, gates: Any, c_prev: Any, c_next: Any, keep: Any,
                      e: Any, fresh: int, dG_all: Any) -> None:
        """All L streams: gates (B, 4H) <- dL/d(pre-activations) summed over streams,
        dG_all (L, B, 4H) per stream (None for L = 1), DC <- dL/dc_prev, G <- the masked
        pass-through of dL/dh (e added to stream `fresh` first)."""

    def gru_forward(self, gates: Any, A: Any, bh: Any, h_prev: Any, h_next: Any, hn: Any,
                    keep: Any) -> None:
        """gates (B, 3H) <- [r, z, n] from U x + b and A = h_prev W^T; hn = A_n + bh_n;
        h_next = (1 - z) n + z h_prev; masked rows take h_prev."""

    def gru_backward(self, G: Any, gates: Any, hn: Any, h_prev: Any, keep: Any, e: Any,
                     fresh: int, dGh_all: Any, dGh_sum: Any, dGx_all: Any = None) -> None:
        """All L streams: gates (B, 3H) <- dL/d(U x + b) summed, dGh_all (L, B, 3H) per
        stream dL/d(W h + bh) (None for L = 1), dGh_sum its sum, G <- dL/dh z (dL/dh on
        masked rows), e added to stream `fresh` first; dGx_all (L, B, 3H) per stream
        dL/d(U x + b), or None."""
