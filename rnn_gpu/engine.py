"""The fast BPTT engine, backend-generic through ``xp``.

Everything that is not sequential is one large operation over all T*B rows: the input
gather (or product), the output layer, softmax-cross-entropy, dV, dc, dW (one product
over all steps), dU (one scatter-add or product) and db. Only the recurrence loops over
time, one GEMM and one fused kernel per step. Per-output truncation (seed 001's
``bptt_truncate``) keeps the L = truncate+1 live error streams of a step in one (L, B, H)
array and moves all of them back one step with a single GEMM.

Buffers live in a workspace per input shape, allocated once and reused across calls.
The kernels come from :mod:`rnn_gpu.kernels` (NumPy twins) or :mod:`rnn_gpu.cuda_ops`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .kernels import ops_for

_MAX_WORKSPACES = 4  # shapes kept alive (a training run has one, plus a shorter tail)


class Workspace:
    """Device buffers for one (T, B, input kind, truncation, mask) configuration."""

    def __init__(self, xp, dtype, T, B, sizes, dense, L, masked):
        I, H, O = sizes
        N = T * B
        e = lambda *shape: xp.empty(shape, dtype=dtype)  # noqa: E731
        self.S = e(T + 1, B, H)  # states; S[0] = h0, S[t+1] after step t
        self.E = e(T, B, H)  # output errors V^T delta_o, overwritten by dz in place
        self.logits = e(N, O)  # logits, then dL/dlogits in place
        self.loss = e(N)  # loss per token
        self.scratch = e(B, H)
        self.carry = e(B, H)
        self.UT = None  # a C-contiguous U^T, only if params["U"] is not stored that way
        self.SD = None  # (N, H) states times the output-dropout multipliers, when used
        if L > 1:
            self.G = e(L, B, H)
            self.dz_all = e(L, B, H)
            self.G_scratch = e(L, B, H) if masked else None
        elif L == 1:
            self.G = e(1, B, H)
            self.dz_all = e(1, B, H)
            self.G_scratch = None


class Engine:
    """Runs forward and backward for one model's sizes, activation and output."""

    def __init__(self, backend, dtype, sizes: tuple[int, int, int], hidden_activation: str,
                 output: str):
        self.backend = backend
        self.xp = backend.xp
        self.ops = ops_for(backend)
        self.dtype = dtype
        self.sizes = sizes  # (I, H, O)
        self.act = hidden_activation
        self.output = output
        self._workspaces: OrderedDict[tuple, Workspace] = OrderedDict()
        I, H, O = sizes
        xp = self.xp
        # dU is stored transposed, (I, H) C-contiguous, like the model's U: the token
        # scatter-add then writes whole rows, and no transpose is ever copied.
        self.grads = {
            "U": xp.empty((I, H), dtype=dtype).T, "W": xp.empty((H, H), dtype=dtype),
            "V": xp.empty((O, H), dtype=dtype), "b": xp.empty((H,), dtype=dtype),
            "c": xp.empty((O,), dtype=dtype),
        }

    # ---------------------------------------------------------------------------------

    def workspace(self, T: int, B: int, dense: bool, L: int, masked: bool) -> Workspace:
        key = (T, B, dense, L, masked)
        ws = self._workspaces.get(key)
        if ws is None:
            ws = Workspace(self.xp, self.dtype, T, B, self.sizes, dense, L, masked)
            self._workspaces[key] = ws
            while len(self._workspaces) > _MAX_WORKSPACES:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(key)
        return ws

    def _forward(self, ws: Workspace, params, x, h0, keep) -> None:
        """States into ws.S and errors/loss of the output layer into ws.logits/ws.loss."""
        xp, ops = self.xp, self.ops
        U, W, b = params["U"], params["W"], params["b"]
        T, B = x.shape[:2]
        N, H = T * B, self.sizes[1]
        S = ws.S
        S1 = S[1:].reshape(N, H)
        if x.ndim == 2:  # token ids: a row gather of U^T, never a one-hot product
            UT = U.T
            if not UT.flags.c_contiguous:  # U was replaced by a C-ordered array
                if ws.UT is None:
                    ws.UT = xp.empty(UT.shape, dtype=self.dtype)
                xp.copyto(ws.UT, UT)
                UT = ws.UT
            ops.embed_gather(UT, x.reshape(N), b, S1)
        else:
            xp.matmul(x.reshape(N, -1), U.T, out=S1)
            S1 += b
        if h0 is None:
            S[0].fill(0)
        else:
            xp.copyto(S[0], h0)
        WT = W.T
        for t in range(T):
            ops.forward_step(S[t], WT, S[t + 1], None if keep is None else keep[t], self.act,
                             ws.scratch)

    def _output_layer(self, ws: Workspace, params, y, keep, drop=None) -> None:
        """Logits, loss per token, and dL/dlogits in place (the loss kernel of `output`).
        `drop` (T, B, H): multipliers on the states the output layer sees (dropout)."""
        xp, ops = self.xp, self.ops
        N, H = ws.logits.shape[0], self.sizes[1]
        S1 = ws.S[1:].reshape(N, H)
        if drop is not None:
            if ws.SD is None:
                ws.SD = xp.empty((N, H), dtype=self.dtype)
            xp.multiply(S1, drop.reshape(N, H), out=ws.SD)
            S1 = ws.SD
        xp.matmul(S1, params["V"].T, out=ws.logits)
        ws.logits += params["c"]
        keep_flat = None if keep is None else keep.reshape(N)
        if self.output == "softmax":
            ops.softmax_xent(ws.logits, y.reshape(N), keep_flat, ws.loss)
        elif self.output == "sigmoid":
            ops.sigmoid_bce(ws.logits, y.reshape(N, -1), keep_flat, ws.loss)
        else:
            ops.squared_error(ws.logits, y.reshape(N, -1), keep_flat, ws.loss)

    def _backward(self, ws: Workspace, params, x, keep, truncate: int | None,
                  drop=None) -> None:
        xp, ops = self.xp, self.ops
        g = self.grads
        W, V = params["W"], params["V"]
        T, B = x.shape[:2]
        N, H = T * B, self.sizes[1]
        S, E = ws.S, ws.E
        S1 = S[1:].reshape(N, H) if drop is None else ws.SD  # what the output layer saw
        dlogits = ws.logits
        ops.outer_accum(g["V"], dlogits, S1, False)  # dV = sum_t delta_o_t s_t^T
        ops.bias_grad(dlogits, g["c"])
        xp.matmul(dlogits, V, out=E.reshape(N, H))  # e_t = V^T delta_o_t, all steps at once
        if drop is not None:
            E *= drop  # through the dropout multipliers

        k = truncate
        if k is None or k >= T - 1:  # full BPTT: one carried error
            carry = ws.carry
            carry.fill(0)
            for t in range(T - 1, -1, -1):
                ops.backward_step(carry, E[t], S[t + 1], None if keep is None else keep[t],
                                  E[t], W, self.act, t == 0, ws.scratch)
        else:  # per-output truncation: L = k+1 live streams in a ring, slot t % L
            L = k + 1
            G = ws.G
            G.fill(0)
            for j in range(T - 1, -1, -1):
                xp.copyto(G[j % L], E[j])  # output j's stream starts here; frees t = j+L
                ops.trunc_backward_step(G, S[j + 1], None if keep is None else keep[j],
                                        ws.dz_all, E[j], W, self.act, j == 0, ws.G_scratch)

        DZ = E.reshape(N, H)  # dL/d(pre-activation) for every step
        ops.outer_accum(g["W"], DZ, S[:-1].reshape(N, H), False)  # dW = sum_t dz_t s_{t-1}^T
        ops.bias_grad(DZ, g["b"])
        dUT = g["U"].T  # (I, H), C-contiguous
        if x.ndim == 2:
            dUT.fill(0)
            ops.embed_scatter_add(dUT, x.reshape(N), DZ)
        else:
            ops.outer_accum(dUT, x.reshape(N, -1), DZ, False)  # dU^T = sum_t x_t dz_t^T

    # ---------------------------------------------------------------------------------

    def loss_and_grads(self, params, x, y, h0, keep, truncate, drop=None) -> tuple[float, dict, Any]:
        """x, y, h0, keep, drop: validated arrays on this backend (keep: (T, B) 0/1 or
        None; drop: (T, B, H) output-dropout multipliers or None)."""
        T, B = x.shape[:2]
        L = 0 if truncate is None or truncate >= T - 1 else truncate + 1
        ws = self.workspace(T, B, x.ndim == 3, L, keep is not None)
        self._forward(ws, params, x, h0, keep)
        self._output_layer(ws, params, y, keep, drop)
        self._backward(ws, params, x, keep, truncate, drop)
        loss = float(ws.loss.sum(dtype=self.xp.float64))
        return loss, self.grads, ws.S[T].copy()

    def loss(self, params, x, y, h0, keep) -> tuple[float, Any]:
        """Forward only: the summed loss and the last state."""
        T, B = x.shape[:2]
        ws = self.workspace(T, B, x.ndim == 3, 0, keep is not None)
        self._forward(ws, params, x, h0, keep)
        self._output_layer(ws, params, y, keep)
        return float(ws.loss.sum(dtype=self.xp.float64)), ws.S[T].copy()

    def forward(self, params, x, h0, keep) -> tuple[Any, Any]:
        """Logits (T, B, O), a fresh array, and the last state (B, H)."""
        T, B = x.shape[:2]
        ws = self.workspace(T, B, x.ndim == 3, 0, keep is not None)
        self._forward(ws, params, x, h0, keep)
        N, H = T * B, self.sizes[1]
        logits = self.xp.matmul(ws.S[1:].reshape(N, H), params["V"].T)
        logits += params["c"]
        return logits.reshape(T, B, -1), ws.S[T].copy()
