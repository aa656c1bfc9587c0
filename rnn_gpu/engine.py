"""The fast BPTT engine, backend-generic through ``xp`` and the backend's kernel set.

Everything that is not sequential is one large operation over all T*B rows: the input
gather (or product), the output layer, softmax-cross-entropy, dV, dc, dW (one product
over all steps), dU (one scatter-add or product) and db. Only the recurrence loops over
time, one GEMM and one fused kernel per step. Per-output truncation (seed 001's
``bptt_truncate``) keeps the L = truncate+1 live error streams of a step in one (L, B, H)
array and moves all of them back one step with a single GEMM.

The engine owns the step sequence (:meth:`Engine.run_step`: forward, output layer,
backward) and the composite steps built on ``ops.gemm`` (:func:`forward_step`,
:func:`backward_step`, :func:`trunc_backward_step`); the eager calls and the captured
CUDA Graph (:class:`rnn_gpu.cuda.graph.GraphedStep`) both run :meth:`Engine.run_step`.
The kernels come from the backend: ``backend.ops`` (:mod:`rnn_gpu.ops`).

With ``output="adaptive"`` the output layer is :class:`rnn_gpu.heads.AdaptiveHead`: it
writes the loss per token, the output errors (into the workspace's E) and the head's
gradients in one call, and no (N, O) logits exist.

Buffers live in a workspace per input shape, allocated once and reused across calls.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .heads.adaptive import AdaptiveHead, AdaptiveSpec
from .reference import param_shapes

if TYPE_CHECKING:
    from .backend import Backend
    from .ops import Ops

_MAX_WORKSPACES = 4  # shapes kept alive (a training run has one, plus a shorter tail)


# -------------------------------------------------------------------------------------
# Composite steps: one GEMM plus one fused kernel, on any kernel set


def forward_step(ops: Ops, s_prev, WT, s_next, keep, act: str) -> None:
    """s_next <- f(s_next + s_prev @ WT), masked rows take s_prev. (B, H) each; s_next
    holds U x_t + b on entry (the GEMM accumulates onto it)."""
    ops.gemm(s_prev, WT, s_next, 1.0)
    ops.act_forward(s_next, s_prev, keep, act)


def backward_step(ops: Ops, carry, e, s, keep, dz, W, act: str, last: bool) -> None:
    """One step of the full recursion: dz from the fused delta update, then
    carry <- dz @ W (added onto the masked pass-through). dz may be the same array as e.
    On the last step (t = 0) the carry is not needed: the gradient stops at h0."""
    ops.delta_step(carry, e, s, keep, dz, act)
    if last:
        return
    ops.gemm(dz, W, carry, 0.0 if keep is None else 1.0)


def trunc_backward_step(ops: Ops, G, s, keep, dz_all, dz_sum, W, act: str, last: bool) -> None:
    """One step of per-output truncated BPTT for all L live streams: one GEMM moves them
    all back a step (added onto the masked pass-through). G, dz_all: (L, B, H)."""
    ops.trunc_delta_step(G, s, keep, dz_all, dz_sum, act)
    L, B, H = G.shape
    if last or L == 1:
        return
    ops.gemm(dz_all.reshape(L * B, H), W, G.reshape(L * B, H), 0.0 if keep is None else 1.0)


def live_streams(T: int, truncate: int | None) -> int:
    """L, the error streams per-output truncation keeps alive (0: full BPTT, one carry)."""
    return 0 if truncate is None or truncate >= T - 1 else truncate + 1


class Workspace:
    """Device buffers for one (T, B, input kind, truncation, mask) configuration."""

    def __init__(self, xp, dtype, T, B, sizes, L):
        I, H, O = sizes
        N = T * B
        e = lambda *shape: xp.empty(shape, dtype=dtype)  # noqa: E731
        self.S = e(T + 1, B, H)  # states; S[0] = h0, S[t+1] after step t
        self.E = e(T, B, H)  # output errors V^T delta_o, overwritten by dz in place
        self.logits = e(N, O)  # logits, then dL/dlogits in place
        self.loss = e(N)  # loss per token
        self.carry = e(B, H)
        self.UT = None  # a C-contiguous U^T, only if params["U"] is not stored that way
        self.SD = None  # (N, H) states times the output-dropout multipliers, when used
        if L:
            self.G = e(L, B, H)
            self.dz_all = e(L, B, H)
            self.dz_all2 = e(L, B, H)  # the fused truncated step alternates two buffers


class Engine:
    """Runs forward and backward for one model's sizes, activation and output."""

    def __init__(self, backend: Backend, dtype, sizes: tuple[int, int, int],
                 hidden_activation: str, output: str, adaptive: AdaptiveSpec | None = None):
        self.backend = backend
        self.xp = backend.xp
        self.ops = backend.ops
        self.dtype = dtype
        self.sizes = sizes  # (I, H, O)
        self.act = hidden_activation
        self.output = output
        self._workspaces: OrderedDict[tuple, Workspace] = OrderedDict()
        xp = self.xp
        shapes = param_shapes(*sizes)
        self.head = None  # the adaptive softmax, for output == "adaptive"
        if output == "adaptive":
            shapes.update(adaptive.param_shapes())
            self.head = AdaptiveHead(adaptive, xp, self.ops, dtype)
        self.grads = {k: xp.empty(shape, dtype=dtype) for k, shape in shapes.items()}
        # dU is stored transposed, (I, H) C-contiguous, like the model's U: the token
        # scatter-add then writes whole rows, and no transpose is ever copied.
        self.grads["U"] = xp.empty(self.grads["U"].shape[::-1], dtype=dtype).T

    # ---------------------------------------------------------------------------------

    def workspace(self, T: int, B: int, dense: bool, truncate: int | None,
                  masked: bool) -> Workspace:
        """The buffers for this shape, made on first use (the few most recent are kept)."""
        L = live_streams(T, truncate)
        key = (T, B, dense, L, masked)
        ws = self._workspaces.get(key)
        if ws is None:
            I, H, O = self.sizes
            ws = Workspace(self.xp, self.dtype, T, B, (I, H, 0 if self.head else O), L)
            self._workspaces[key] = ws
            while len(self._workspaces) > _MAX_WORKSPACES:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(key)
        return ws

    def buffer_bytes(self) -> int:
        """Bytes this engine keeps between calls: gradient buffers and workspaces."""
        total = sum(int(g.nbytes) for g in self.grads.values())
        for ws in self._workspaces.values():
            total += sum(int(v.nbytes) for v in vars(ws).values() if hasattr(v, "nbytes"))
        return total

    def release_workspaces(self) -> None:
        """Drop the workspaces (made again on the next call)."""
        self._workspaces.clear()

    def forward_states(self, ws: Workspace, params, x, h0, keep) -> None:
        """States into ws.S: S[0] = h0 (zeros for None), S[t+1] after step t."""
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
            ops.gemm(x.reshape(N, -1), U.T, S1, 0.0)
            S1 += b
        if h0 is None:
            S[0].fill(0)
        else:
            xp.copyto(S[0], h0)
        WT = W.T
        fused = ops.recurrence(B, H, self.dtype) == "fused"
        for t in range(T):
            k = None if keep is None else keep[t]
            if fused:  # one kernel: the product and the activation
                ops.recur_forward(S[t], WT, S[t + 1], k, self.act)
            else:
                forward_step(ops, S[t], WT, S[t + 1], k, self.act)

    def output_layer(self, ws: Workspace, params, y, keep, drop=None,
                     backward: bool = True) -> None:
        """Logits, loss per token, and dL/dlogits in place (the loss kernel of `output`).
        `drop` (T, B, H): multipliers on the states the output layer sees (dropout).
        The adaptive head instead leaves the output errors in ws.E and its gradients in
        self.grads (unless `backward` is False: the loss alone)."""
        xp, ops = self.xp, self.ops
        N, H = ws.logits.shape[0], self.sizes[1]
        S1 = ws.S[1:].reshape(N, H)
        if drop is not None:
            if ws.SD is None:
                ws.SD = xp.empty((N, H), dtype=self.dtype)
            xp.multiply(S1, drop.reshape(N, H), out=ws.SD)
            S1 = ws.SD
        keep_flat = None if keep is None else keep.reshape(N)
        if self.head is not None:
            self.head.run(params, S1, y.reshape(N), keep_flat, ws.loss,
                          ws.E.reshape(N, H) if backward else None,
                          self.grads if backward else None)
            return
        ops.gemm(S1, params["V"].T, ws.logits, 0.0)
        ws.logits += params["c"]
        if self.output == "softmax":
            ops.softmax_xent(ws.logits, y.reshape(N), keep_flat, ws.loss)
        elif self.output == "sigmoid":
            ops.sigmoid_bce(ws.logits, y.reshape(N, -1), keep_flat, ws.loss)
        else:
            ops.squared_error(ws.logits, y.reshape(N, -1), keep_flat, ws.loss)

    def backward(self, ws: Workspace, params, x, keep, truncate: int | None,
                 drop=None) -> None:
        """Gradients into self.grads from the errors the output layer left in ws."""
        xp, ops = self.xp, self.ops
        g = self.grads
        W, V = params["W"], params["V"]
        T, B = x.shape[:2]
        N, H = T * B, self.sizes[1]
        S, E = ws.S, ws.E
        S1 = S[1:].reshape(N, H) if drop is None else ws.SD  # what the output layer saw
        if self.head is None:  # (the adaptive head has done its part in output_layer)
            dlogits = ws.logits
            ops.outer_accum(g["V"], dlogits, S1, False)  # dV = sum_t delta_o_t s_t^T
            ops.bias_grad(dlogits, g["c"])
            ops.gemm(dlogits, V, E.reshape(N, H), 0.0)  # e_t = V^T delta_o_t, all steps at once
        if drop is not None:
            E *= drop  # through the dropout multipliers

        L = live_streams(T, truncate)
        if ops.recurrence(B, H, self.dtype) == "fused":
            self._backward_fused(ws, W, T, keep, L)
        elif not L:  # full BPTT: one carried error
            carry = ws.carry
            carry.fill(0)
            for t in range(T - 1, -1, -1):
                backward_step(ops, carry, E[t], S[t + 1], None if keep is None else keep[t],
                              E[t], W, self.act, t == 0)
        else:  # per-output truncation: L = k+1 live streams in a ring, slot t % L
            G = ws.G
            G.fill(0)
            for j in range(T - 1, -1, -1):
                xp.copyto(G[j % L], E[j])  # output j's stream starts here; frees t = j+L
                trunc_backward_step(ops, G, S[j + 1], None if keep is None else keep[j],
                                    ws.dz_all, E[j], W, self.act, j == 0)

        DZ = E.reshape(N, H)  # dL/d(pre-activation) for every step
        ops.outer_accum(g["W"], DZ, S[:-1].reshape(N, H), False)  # dW = sum_t dz_t s_{t-1}^T
        ops.bias_grad(DZ, g["b"])
        dUT = g["U"].T  # (I, H), C-contiguous
        if x.ndim == 2:
            dUT.fill(0)
            ops.embed_scatter_add(dUT, x.reshape(N), DZ)
        else:
            ops.outer_accum(dUT, x.reshape(N, -1), DZ, False)  # dU^T = sum_t x_t dz_t^T

    def _backward_fused(self, ws: Workspace, W, T: int, keep, L: int) -> None:
        """The recursion with one fused recurrent-step kernel per step: each step's product
        with W and its delta update in one launch. E[t] holds e_t on entry, dz_t on exit.
        The carry (and G) hold only what passes through masked steps."""
        ops, S, E = self.ops, ws.S, ws.E
        if not L:
            carry = None
            if keep is not None:
                carry = ws.carry
                carry.fill(0)
            for t in range(T - 1, -1, -1):
                ops.recur_backward(E[t + 1] if t < T - 1 else None, W, carry, E[t], S[t + 1],
                                   None if keep is None else keep[t], E[t], self.act)
            return
        G = None
        if keep is not None:
            G = ws.G
            G.fill(0)
        bufs = (ws.dz_all, ws.dz_all2)
        for j in range(T - 1, -1, -1):  # slot j % L starts output j's stream (e_j)
            ops.recur_trunc_backward(bufs[(j + 1) % 2] if j < T - 1 else None, W, G, j % L,
                                     E[j], S[j + 1], None if keep is None else keep[j],
                                     bufs[j % 2], E[j], self.act)

    def run_step(self, ws: Workspace, params, x, y, h0, keep, truncate, drop=None) -> None:
        """The whole training step on device arrays, with no host read: states, loss per
        token (ws.loss) and gradients (self.grads). What eager calls and the captured
        CUDA Graph both run."""
        self.forward_states(ws, params, x, h0, keep)
        self.output_layer(ws, params, y, keep, drop)
        self.backward(ws, params, x, keep, truncate, drop)

    def summed_loss(self, ws: Workspace) -> float:
        """The loss of the last step run on `ws`, summed in float64 (a host read)."""
        return float(ws.loss.sum(dtype=self.xp.float64))

    # ---------------------------------------------------------------------------------

    def loss_and_grads(self, params, x, y, h0, keep, truncate, drop=None) -> tuple[float, dict, Any]:
        """x, y, h0, keep, drop: validated arrays on this backend (keep: (T, B) 0/1 or
        None; drop: (T, B, H) output-dropout multipliers or None)."""
        T, B = x.shape[:2]
        ws = self.workspace(T, B, x.ndim == 3, truncate, keep is not None)
        self.run_step(ws, params, x, y, h0, keep, truncate, drop)
        return self.summed_loss(ws), self.grads, ws.S[T].copy()

    def loss(self, params, x, y, h0, keep) -> tuple[float, Any]:
        """Forward only: the summed loss and the last state."""
        T, B = x.shape[:2]
        ws = self.workspace(T, B, x.ndim == 3, None, keep is not None)
        self.forward_states(ws, params, x, h0, keep)
        self.output_layer(ws, params, y, keep, backward=False)
        return self.summed_loss(ws), ws.S[T].copy()

    def forward(self, params, x, h0, keep) -> tuple[Any, Any]:
        """Logits (T, B, O), a fresh array, and the last state (B, H). For the adaptive
        head the logits are the full log-probabilities (logits of the same softmax)."""
        T, B = x.shape[:2]
        ws = self.workspace(T, B, x.ndim == 3, None, keep is not None)
        self.forward_states(ws, params, x, h0, keep)
        N, H = T * B, self.sizes[1]
        if self.head is not None:
            logp = self.head.log_prob(params, ws.S[1:].reshape(N, H))
            return logp.reshape(T, B, -1), ws.S[T].copy()
        logits = self.xp.empty((N, self.sizes[2]), dtype=self.dtype)
        self.ops.gemm(ws.S[1:].reshape(N, H), params["V"].T, logits, 0.0)
        logits += params["c"]
        return logits.reshape(T, B, -1), ws.S[T].copy()

    def log_prob(self, params, x, h0, keep) -> tuple[Any, Any]:
        """Full log-probabilities (T, B, O), a fresh array, and the last state (B, H);
        for the softmax and adaptive outputs."""
        logits, h = self.forward(params, x, h0, keep)
        if self.head is None:
            xp = self.xp
            logits -= logits.max(axis=-1, keepdims=True)
            logits -= xp.log(xp.exp(logits).sum(axis=-1, keepdims=True))
        return logits, h
