"""The fast BPTT engine, backend-generic through ``xp`` and the backend's kernel set.

Everything that is not sequential is one large operation over all T*B rows: the input
gather (or product), the output layer, softmax-cross-entropy, dV, dc, dW (one product
over all steps), dU (one scatter-add or product) and db. Only the recurrence loops over
time, one GEMM and one fused kernel per step. Per-output truncation (seed 001's
``bptt_truncate``) keeps the L = truncate+1 live error streams of a step in one (L, B, H)
array and moves all of them back one step with a single GEMM.

A stack runs layer by layer, and each layer direction by direction, on the same
composite steps: every layer's input projection is one GEMM (or gather) over all T*B
rows, a reverse direction runs its loop from step T-1 down to 0, and layer l+1 (and the
output layer) reads the features F = [forward state, reverse state] (N, D*H) of layer l,
times its dropout multipliers. Full BPTT goes back layer by layer: the error on a layer's
features is one GEMM per direction of the layer above, over all rows. Truncated BPTT
(unidirectional) goes back step by step through all layers at once, each layer holding
its L live streams, so that each output's gradient stops at the states of every layer
truncate+1 steps back.

The engine owns the step sequence (:meth:`Engine.run_step`: forward, output layer,
backward) and the composite steps built on ``ops.gemm`` (:func:`forward_step`,
:func:`backward_step`, :func:`trunc_backward_step`); the eager calls and the captured
CUDA Graph (:class:`rnn_gpu.cuda.graph.GraphedStep`) both run :meth:`Engine.run_step`.
The kernels come from the backend: ``backend.ops`` (:mod:`rnn_gpu.ops`).

Gated cells (``cell="gru"``, ``"lstm"``) keep this structure with G*H gate rows per
layer direction: the input projection of every step and gate is one GEMM (or gather),
then per step one recurrent GEMM and one fused pointwise kernel for all gates
(``ops.gru_forward`` / ``ops.lstm_forward``); backward, per step one fused kernel for all
gate derivatives (``ops.gru_backward`` / ``ops.lstm_backward``, over the L live streams
when truncated) and one GEMM with W; dW, dU and the biases over all rows at the end.

With ``output="adaptive"`` the output layer is :class:`rnn_gpu.heads.AdaptiveHead`: it
writes the loss per token, the error on the top features and the head's gradients in
one call, and no (N, O) logits exist.

Buffers live in a workspace per input shape, allocated once and reused across calls.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import TYPE_CHECKING, Any

from .heads.adaptive import AdaptiveHead, AdaptiveSpec
from .reference import GATES, cell_name, param_shapes

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

    def __init__(self, xp, dtype, T, B, sizes, L, num_layers: int = 1, D: int = 1,
                 cell: str = "elman"):
        I, H, O = sizes
        N = T * B
        e = lambda *shape: xp.empty(shape, dtype=dtype)  # noqa: E731
        cells = num_layers * D
        G = GATES[cell]
        if cell != "elman":
            # per layer direction: the gates of every step (pre-activations, then the
            # activations, then backward their derivatives dL/d(U x + b), in place)
            self.gates = [e(T, B, G * H) for _ in range(cells)]
            self.cstates = [e(T + 1, B, H) for _ in range(cells)] if cell == "lstm" else None
            self.carry_c = [e(B, H) for _ in range(D)]  # dL/dc carried back, per direction
            if cell == "gru":
                self.hn = [e(T, B, H) for _ in range(cells)]  # W_n h + bh_n of every step
                self.dgh = [e(T, B, G * H) for _ in range(cells)]  # dL/d(W h + bh)
                self.A = [e(B, G * H) for _ in range(D)]  # one step's h W^T, per direction
            if L:
                self.DC = [e(L, B, H) for _ in range(num_layers)] if cell == "lstm" else None
                self.dG_all = [e(L, B, G * H) for _ in range(num_layers)]  # per stream
                self.dGx_all = ([e(L, B, G * H) for _ in range(num_layers)]
                                if cell == "gru" else None)
        # states per layer and direction (index l*D + d): forward S[0] = h0, S[t+1] after
        # step t; reverse S[T] = h0, S[t] after step t
        self.states = [e(T + 1, B, H) for _ in range(cells)]
        # output errors, overwritten by dz (dL/d pre-activation) in place
        self.errors = [e(T, B, H) for _ in range(cells)]
        self.S, self.E = self.states[0], self.errors[0]
        self.logits = e(N, O)  # logits, then dL/dlogits in place
        self.loss = e(N)  # loss per token
        self.carries = [e(B, H) for _ in range(D)]  # the error carried back, per direction
        self.carry = self.carries[0]
        self.UT = None  # a C-contiguous U^T, only if params["U"] is not stored that way
        self.WT: dict = {}  # C-contiguous W^T per layer direction (NumPy backend)
        self.SD = None  # (N, H) states times the output-dropout multipliers, when used
        self.features: list = [None] * num_layers  # (N, D*H) per layer, when not a view
        self.inputs: list = [None] * num_layers  # what each layer read, (N, D*H) for l > 0
        self.top = None  # what the output layer read (N, D*H)
        self.dX = None  # (N, D*H) error on a layer's features (D = 2 or dropout)
        self.keep01 = None  # (N,) rows with a non-zero loss weight (loss weights only)
        if L:
            self.G = [e(L, B, H) for _ in range(num_layers)]
            self.dz_all = [e(L, B, H) for _ in range(num_layers)]
            self.dz_all2 = [e(L, B, H) for _ in range(num_layers)]  # fused: two, alternating
            self.Gtmp = None  # (L, B, H) the error from the layer above, before dropout


class Engine:
    """Runs forward and backward for one model's sizes, activation, output and stack."""

    def __init__(self, backend: Backend, dtype, sizes: tuple[int, int, int],
                 hidden_activation: str, output: str, num_layers: int = 1,
                 bidirectional: bool = False, adaptive: AdaptiveSpec | None = None,
                 cell: str = "elman"):
        self.backend = backend
        self.cell = cell
        self.xp = backend.xp
        self.ops = backend.ops
        self.dtype = dtype
        self.sizes = sizes  # (I, H, O)
        self.act = hidden_activation
        self.output = output
        self.num_layers = int(num_layers)
        self.D = 2 if bidirectional else 1
        self._workspaces: OrderedDict[tuple, Workspace] = OrderedDict()
        # OpenBLAS multiplies a few rows (B) by a C-contiguous matrix about 1.5x faster
        # than by a transposed view: the forward recurrence uses a copy of W^T made once
        # per call. cuBLAS takes either layout at the same speed.
        self._contiguous_wt = self.ops.name == "numpy"
        xp = self.xp
        shapes = param_shapes(*sizes, self.num_layers, bool(bidirectional), cell)
        self.head = None  # the adaptive softmax, for output == "adaptive"
        if output == "adaptive":
            shapes.update(adaptive.param_shapes())
            self.head = AdaptiveHead(adaptive, xp, self.ops, dtype)
        self.grads = {k: xp.empty(shape, dtype=dtype) for k, shape in shapes.items()}
        # dU of layer 0 is stored transposed, (I, H) C-contiguous, like the model's U: the
        # token scatter-add then writes whole rows, and no transpose is ever copied.
        for d in range(self.D):
            name = cell_name("U", 0, d)
            self.grads[name] = xp.empty(self.grads[name].shape[::-1], dtype=dtype).T

    @property
    def cells(self) -> int:
        """Layers times directions: the recurrences of the stack."""
        return self.num_layers * self.D

    def state_shape(self, B: int) -> tuple[int, ...]:
        """The shape of h0 and h_last: (B, H) for one unidirectional layer, else
        (num_layers*D, B, H), index l*D + d."""
        H = self.sizes[1]
        return (B, H) if self.cells == 1 else (self.cells, B, H)

    def dropout_shape(self, T: int, B: int) -> tuple[int, ...]:
        """The shape of the dropout multipliers: (T, B, H) for one unidirectional layer,
        else (num_layers, T, B, D*H)."""
        H = self.sizes[1]
        return (T, B, H) if self.cells == 1 else (self.num_layers, T, B, self.D * H)

    # ---------------------------------------------------------------------------------

    def workspace(self, T: int, B: int, dense: bool, truncate: int | None,
                  masked: bool) -> Workspace:
        """The buffers for this shape, made on first use (the few most recent are kept)."""
        L = live_streams(T, truncate)
        key = (T, B, dense, L, masked)
        ws = self._workspaces.get(key)
        if ws is None:
            I, H, O = self.sizes  # the adaptive head makes no (N, O) logits
            ws = Workspace(self.xp, self.dtype, T, B, (I, H, 0 if self.head else O), L,
                           self.num_layers, self.D, self.cell)
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
            for v in vars(ws).values():
                for a in (v.values() if isinstance(v, dict) else
                          v if isinstance(v, list) else (v,)):
                    total += int(a.nbytes) if hasattr(a, "nbytes") else 0
        return total

    def release_workspaces(self) -> None:
        """Drop the workspaces (made again on the next call)."""
        self._workspaces.clear()

    def _drop(self, drop, T: int, B: int):
        """Dropout multipliers as (num_layers, T, B, D*H) (a view), or None."""
        if drop is None:
            return None
        return drop.reshape(self.num_layers, T, B, self.D * self.sizes[1])

    def _features(self, ws: Workspace, l: int, drop, T: int):
        """Layer l's output as the next layer (or the output layer) reads it: (N, D*H),
        [forward state, reverse state] times drop[l]. A view of the states when D = 1 and
        there is no dropout."""
        xp = self.xp
        H, D = self.sizes[1], self.D
        N = ws.logits.shape[0]
        S = ws.states[l * D]
        if D == 1 and drop is None:
            return S[1:].reshape(N, H)
        if D == 1 and self.num_layers == 1:  # today's buffer for the one-layer model
            if ws.SD is None:
                ws.SD = xp.empty((N, H), dtype=self.dtype)
            xp.multiply(S[1:].reshape(N, H), drop[l].reshape(N, H), out=ws.SD)
            return ws.SD
        F = ws.features[l]
        if F is None:
            F = ws.features[l] = xp.empty((N, D * H), dtype=self.dtype)
        if D == 1:
            xp.multiply(S[1:].reshape(N, H), drop[l].reshape(N, H), out=F)
            return F
        xp.copyto(F[:, :H], S[1:].reshape(N, H))
        xp.copyto(F[:, H:], ws.states[l * D + 1][:T].reshape(N, H))
        if drop is not None:
            F *= drop[l].reshape(N, D * H)
        return F

    def forward_states(self, ws: Workspace, params, x, h0, keep, drop=None) -> None:
        """States of every layer and direction into ws.states (h0: (B, H) for one cell,
        else (num_layers*D, B, H) or None for zeros; for an LSTM a pair (h0, c0) of
        those), and the features each layer above the first reads (ws.inputs)."""
        xp, ops = self.xp, self.ops
        T, B = x.shape[:2]
        N, H, D = T * B, self.sizes[1], self.D
        drop = self._drop(drop, T, B)
        gated = self.cell != "elman"
        h0, c0 = h0 if isinstance(h0, tuple) else (h0, None)
        fused = not gated and ops.recurrence(B, H, self.dtype) == "fused"
        inp = None
        for l in range(self.num_layers):
            ws.inputs[l] = inp
            for d in range(D):
                i = l * D + d
                U, W, b = (params[cell_name(n, l, d)] for n in ("U", "W", "b"))
                S = ws.states[i]
                # U x_t + b of every step (every gate): one gather or one GEMM
                if gated:
                    proj = ws.gates[i].reshape(N, -1)
                else:
                    proj = (S[1:] if d == 0 else S[:T]).reshape(N, H)
                if l == 0 and x.ndim == 2:  # token ids: a row gather of U^T, no one-hot
                    UT = U.T
                    if not UT.flags.c_contiguous:  # U was replaced by a C-ordered array
                        if ws.UT is None:
                            ws.UT = {}
                        if i not in ws.UT:
                            ws.UT[i] = xp.empty(UT.shape, dtype=self.dtype)
                        xp.copyto(ws.UT[i], UT)
                        UT = ws.UT[i]
                    ops.embed_gather(UT, x.reshape(N), b, proj)
                else:
                    ops.gemm(x.reshape(N, -1) if l == 0 else inp, U.T, proj, 0.0)
                    proj += b
                first = S[0] if d == 0 else S[T]
                self._initial(first, h0, i)
                if self.cell == "lstm":
                    C = ws.cstates[i]
                    self._initial(C[0] if d == 0 else C[T], c0, i)
                WT = W.T
                if self._contiguous_wt:
                    if i not in ws.WT:
                        ws.WT[i] = xp.empty(WT.shape, dtype=self.dtype)
                    xp.copyto(ws.WT[i], WT)
                    WT = ws.WT[i]
                order = range(T) if d == 0 else range(T - 1, -1, -1)  # reverse: T-1 .. 0
                if gated:
                    self._gated_forward(ws, params, i, l, d, WT, order, keep)
                else:
                    self._elman_forward(S, WT, d, order, keep, fused)
            if l + 1 < self.num_layers:
                inp = self._features(ws, l, drop, T)

    def _elman_forward(self, S, WT, d: int, order, keep, fused: bool) -> None:
        """The recurrence of one Elman layer direction: per step one fused kernel (the
        product and the activation), or the GEMM and the pointwise kernel, as the kernel
        set chooses by shape."""
        ops = self.ops
        step = ops.recur_forward if fused else partial(forward_step, ops)
        for t in order:
            src, dst = (t, t + 1) if d == 0 else (t + 1, t)
            step(S[src], WT, S[dst], None if keep is None else keep[t], self.act)

    def _initial(self, first, h0, i: int) -> None:
        """A recurrence's first state: h0's entry i (or h0 itself for one cell), or zeros."""
        if h0 is None:
            first.fill(0)
        else:
            self.xp.copyto(first, h0 if h0.ndim == 2 else h0[i])

    def _gated_forward(self, ws: Workspace, params, i: int, l: int, d: int, WT, order,
                       keep) -> None:
        """The recurrence of one gated layer direction: per step one GEMM (h W^T for all
        gates) and one fused kernel (every gate's activation and the new state)."""
        ops = self.ops
        S, P = ws.states[i], ws.gates[i]
        if self.cell == "lstm":
            C = ws.cstates[i]
            for t in order:
                src, dst = (t, t + 1) if d == 0 else (t + 1, t)
                ops.gemm(S[src], WT, P[t], 1.0)  # the pre-activations of [i, f, g, o]
                ops.lstm_forward(P[t], C[src], C[dst], S[src], S[dst],
                                 None if keep is None else keep[t])
            return
        bh, HN, A = params[cell_name("bh", l, d)], ws.hn[i], ws.A[d]
        for t in order:
            src, dst = (t, t + 1) if d == 0 else (t + 1, t)
            ops.gemm(S[src], WT, A, 0.0)  # W h for [r, z, n]: bh and r enter in the kernel
            ops.gru_forward(P[t], A, bh, S[src], S[dst], HN[t],
                            None if keep is None else keep[t])

    def output_layer(self, ws: Workspace, params, y, keep, drop=None, weight=None,
                     backward: bool = True) -> None:
        """Logits, loss per token, and dL/dlogits in place (the loss kernel of `output`).
        `drop`: multipliers on the features the output layer (and each layer) sees;
        `weight` (T, B): loss weights (mask times loss_mask), or None for `keep`.
        The adaptive head instead leaves the error on the top features in the top layer's
        errors (ws.E, or ws.dX for two directions) and its gradients in self.grads (unless
        `backward` is False: the loss alone)."""
        xp, ops = self.xp, self.ops
        N = ws.logits.shape[0]
        T = N // ws.carry.shape[0]
        F = ws.top = self._features(ws, self.num_layers - 1, self._drop(drop, T, N // T), T)
        if self.head is not None:
            w = (None if keep is None else keep.reshape(N)) if weight is None else weight.reshape(N)
            dF = None
            if backward:
                dF = self._top_error_buffer(ws, N)
            self.head.run(params, F, y.reshape(N), w, ws.loss, dF,
                          self.grads if backward else None)
            return
        ops.gemm(F, params["V"].T, ws.logits, 0.0)
        ws.logits += params["c"]
        if weight is None:
            keep_flat = None if keep is None else keep.reshape(N)
        else:
            # the kernels skip rows whose keep is 0; the others are weighted after
            if ws.keep01 is None:
                ws.keep01 = xp.empty(N, dtype=self.dtype)
            xp.not_equal(weight.reshape(N), 0, out=ws.keep01)
            keep_flat = ws.keep01
        if self.output == "softmax":
            ops.softmax_xent(ws.logits, y.reshape(N), keep_flat, ws.loss)
        elif self.output == "sigmoid":
            ops.sigmoid_bce(ws.logits, y.reshape(N, -1), keep_flat, ws.loss)
        else:
            ops.squared_error(ws.logits, y.reshape(N, -1), keep_flat, ws.loss)
        if weight is not None:
            w = weight.reshape(N)
            ws.loss *= w
            ws.logits *= w[:, None]

    def _top_error_buffer(self, ws: Workspace, N: int):
        """Where the adaptive head writes the error on the top features (N, D*H)."""
        H, D = self.sizes[1], self.D
        if D == 1:
            return ws.errors[self.num_layers - 1].reshape(N, H)
        if ws.dX is None:
            ws.dX = self.xp.empty((N, D * H), dtype=self.dtype)
        return ws.dX

    def _split_top_error(self, ws: Workspace, l: int, drop) -> None:
        """The head's error on layer l's features (in place) times drop[l], split by
        direction into ws.errors, as :meth:`_error_into_layer` leaves it."""
        H, D = self.sizes[1], self.D
        N = ws.logits.shape[0]
        if D == 1:
            if drop is not None:
                ws.errors[l] *= drop[l]
            return
        dX = ws.dX
        if drop is not None:
            dX *= drop[l].reshape(N, D * H)
        for d in range(D):
            self.xp.copyto(ws.errors[l * D + d].reshape(N, H), dX[:, d * H:(d + 1) * H])

    def _error_into_layer(self, ws: Workspace, sources, l: int, drop) -> None:
        """The error on layer l's features, sum over (A (N, k), B (k, D*H)) in `sources`
        of A @ B, times drop[l], split by direction into ws.errors."""
        xp, ops = self.xp, self.ops
        H, D = self.sizes[1], self.D
        N = ws.logits.shape[0]
        if D == 1:  # one GEMM straight into the errors
            E = ws.errors[l]
            (A, Bm), = sources
            ops.gemm(A, Bm, E.reshape(N, H), 0.0)
            if drop is not None:
                E *= drop[l]
            return
        if ws.dX is None:
            ws.dX = xp.empty((N, D * H), dtype=self.dtype)
        dX = ws.dX
        for n, (A, Bm) in enumerate(sources):
            ops.gemm(A, Bm, dX, 0.0 if n == 0 else 1.0)
        if drop is not None:
            dX *= drop[l].reshape(N, D * H)
        for d in range(D):
            xp.copyto(ws.errors[l * D + d].reshape(N, H), dX[:, d * H:(d + 1) * H])

    def _cell_grads(self, ws: Workspace, x, l: int, d: int) -> None:
        """dW, db and dU of one layer direction from its dz (in ws.errors), over all rows."""
        ops = self.ops
        g = self.grads
        T, B = x.shape[:2]
        N, H = T * B, self.sizes[1]
        i = l * self.D + d
        S = ws.states[i]
        DZ = ws.errors[i].reshape(N, H)  # dL/d(pre-activation) for every step
        prev = (S[:-1] if d == 0 else S[1:]).reshape(N, H)  # the state each step read
        ops.outer_accum(g[cell_name("W", l, d)], DZ, prev, False)  # dW = sum_t dz_t s_prev^T
        ops.bias_grad(DZ, g[cell_name("b", l, d)])
        if l > 0:
            ops.outer_accum(g[cell_name("U", l, d)], DZ, ws.inputs[l], False)  # dz^T F_{l-1}
            return
        dUT = g[cell_name("U", 0, d)].T  # (I, H), C-contiguous
        if x.ndim == 2:
            dUT.fill(0)
            ops.embed_scatter_add(dUT, x.reshape(N), DZ)
        else:
            ops.outer_accum(dUT, x.reshape(N, -1), DZ, False)  # dU^T = sum_t x_t dz_t^T

    def backward(self, ws: Workspace, params, x, keep, truncate: int | None,
                 drop=None) -> None:
        """Gradients into self.grads from the errors the output layer left in ws."""
        xp, ops = self.xp, self.ops
        g = self.grads
        T, B = x.shape[:2]
        N, H, D = T * B, self.sizes[1], self.D
        top = self.num_layers - 1
        drop = self._drop(drop, T, B)
        if self.head is not None:  # the head has written its gradients and the error
            self._split_top_error(ws, top, drop)
        else:
            dlogits = ws.logits
            ops.outer_accum(g["V"], dlogits, ws.top, False)  # dV = sum_t delta_o_t F_t^T
            ops.bias_grad(dlogits, g["c"])
            self._error_into_layer(ws, [(dlogits, params["V"])], top, drop)  # V^T delta_o
        k = lambda t: None if keep is None else keep[t]  # noqa: E731

        L = live_streams(T, truncate)
        if self.cell != "elman":
            if L:
                self._gated_backward_truncated(ws, params, x, keep, L, drop)
            else:
                self._gated_backward(ws, params, x, keep, drop)
            return
        fused = ops.recurrence(B, H, self.dtype) == "fused"
        if fused and L and self.num_layers == 1:
            self._backward_fused(ws, params["W"], T, keep, L)
            self._cell_grads(ws, x, 0, 0)
            return
        if not L:  # full BPTT, layer by layer from the top: one carried error per direction
            for l in range(top, -1, -1):
                for d in range(D):  # the recursion, then the gradients over all rows
                    self._elman_backward(ws, params, keep, fused, l, d, T)
                    self._cell_grads(ws, x, l, d)
                if l > 0:  # the error on layer l-1's features, through layer l's U
                    self._error_into_layer(
                        ws, [(ws.errors[l * D + d].reshape(N, H), params[cell_name("U", l, d)])
                             for d in range(D)], l - 1, drop)
            return

        # per-output truncation (unidirectional): in each layer L = k+1 live streams in a
        # ring, slot t % L for output t; step by step through all layers from the top
        for G in ws.G:
            G.fill(0)
        for j in range(T - 1, -1, -1):
            for l in range(top, -1, -1):
                G, dz_all, E = ws.G[l], ws.dz_all[l], ws.errors[l]
                if l == top:
                    xp.copyto(G[j % L], E[j])  # output j's stream starts here; frees t = j+L
                else:
                    self._streams_from_above(ws, params, G, ws.dz_all[l + 1], l, j, drop)
                trunc_backward_step(ops, G, ws.states[l][j + 1], k(j), dz_all, E[j],
                                    params[cell_name("W", l, 0)], self.act, j == 0)
        for l in range(top, -1, -1):
            self._cell_grads(ws, x, l, 0)

    # ---------------------------------------------------------------------------------
    # Gated cells: per step one fused kernel for every gate's derivative, then one GEMM
    # with W for the error on the state before

    def _gated_step_back(self, ws: Workspace, i: int, d: int, t: int, G, DC, keep_t, e,
                         fresh: int, dG_all, dGx_all) -> Any:
        """Back through step t of layer direction i for the streams G (L, B, H) (and an
        LSTM's DC): the fused kernel leaves the step's summed derivatives in ws.gates[i][t]
        (and a GRU's ws.dgh[i][t]); returns what the GEMM with W reads for every stream
        (dL/d(W h + bh), (L*B, G*H)) and the beta the GEMM takes."""
        ops = self.ops
        S, P = ws.states[i], ws.gates[i]
        prev, cur = (t, t + 1) if d == 0 else (t + 1, t)
        if self.cell == "lstm":
            C = ws.cstates[i]
            ops.lstm_backward(G, DC, P[t], C[prev], C[cur], keep_t, e, fresh, dG_all)
            return (P[t] if dG_all is None else dG_all), (0.0 if keep_t is None else 1.0)
        dgh = ws.dgh[i][t]
        ops.gru_backward(G, P[t], ws.hn[i][t], S[prev], keep_t, e, fresh, dG_all, dgh, dGx_all)
        return (dgh if dG_all is None else dG_all), 1.0  # G holds dh z: the GEMM adds on

    def _gated_backward(self, ws: Workspace, params, x, keep, drop) -> None:
        """Full BPTT of a gated stack, layer by layer from the top, each direction along
        its own backward order, one carried dL/dh (and dL/dc) per direction."""
        T, B = x.shape[:2]
        N, D = T * B, self.D
        drop = self._drop(drop, T, B)
        for l in range(self.num_layers - 1, -1, -1):
            for d in range(D):
                self._gated_direction_back(ws, params, keep, l, d, T)
                self._gated_cell_grads(ws, x, l, d)
            if l > 0:  # the error on layer l-1's features, through layer l's U
                self._error_into_layer(
                    ws, [(ws.gates[l * D + d].reshape(N, -1), params[cell_name("U", l, d)])
                         for d in range(D)], l - 1, drop)

    def _gated_direction_back(self, ws: Workspace, params, keep, l: int, d: int,
                              T: int) -> None:
        """Full BPTT through one gated layer direction along its own backward order."""
        B, H = ws.carry.shape
        i = l * self.D + d
        W = params[cell_name("W", l, d)]
        carry = ws.carries[d]
        G = carry.reshape(1, B, H)
        DC = ws.carry_c[d].reshape(1, B, H)
        G.fill(0)
        DC.fill(0)
        order = range(T - 1, -1, -1) if d == 0 else range(T)
        last = 0 if d == 0 else T - 1
        for t in order:
            A, beta = self._gated_step_back(ws, i, d, t, G, DC,
                                            None if keep is None else keep[t],
                                            ws.errors[i][t], 0, None, None)
            if t != last:  # the gradient stops at h0
                self.ops.gemm(A.reshape(B, -1), W, carry, beta)

    def _gated_backward_truncated(self, ws: Workspace, params, x, keep, L: int,
                                  drop) -> None:
        """Per-output truncation of a unidirectional gated stack: in each layer L live
        streams of dL/dh (and dL/dc) in a ring, slot t % L for output t, step by step
        through all layers from the top, as the Elman one."""
        xp, ops = self.xp, self.ops
        T, B = x.shape[:2]
        H = self.sizes[1]
        top = self.num_layers - 1
        drop = self._drop(drop, T, B)
        lstm = self.cell == "lstm"
        for l in range(self.num_layers):
            ws.G[l].fill(0)
            if lstm:
                ws.DC[l].fill(0)
        for j in range(T - 1, -1, -1):
            keep_j = None if keep is None else keep[j]
            for l in range(top, -1, -1):
                G = ws.G[l]
                if l == top:
                    xp.copyto(G[j % L], ws.errors[l][j])  # output j's stream starts here
                else:  # a gated layer above sends its dL/d(U x + b) through its U
                    self._streams_from_above(
                        ws, params, G, ws.dG_all[l + 1] if lstm else ws.dGx_all[l + 1], l, j,
                        drop)
                DC = None
                if lstm:
                    DC = ws.DC[l]
                    DC[j % L].fill(0)
                A, beta = self._gated_step_back(
                    ws, l, 0, j, G, DC, keep_j, None, 0, ws.dG_all[l],
                    ws.dGx_all[l] if (not lstm and l > 0) else None)
                if j > 0 and L > 1:
                    ops.gemm(A.reshape(L * B, -1), params[cell_name("W", l, 0)],
                             G.reshape(L * B, H), beta)
        for l in range(top, -1, -1):
            self._gated_cell_grads(ws, x, l, 0)

    def _gated_cell_grads(self, ws: Workspace, x, l: int, d: int) -> None:
        """dW, b (and a GRU's bh) and dU of one gated layer direction from the summed
        derivatives of every step, over all rows."""
        ops, g = self.ops, self.grads
        T, B = x.shape[:2]
        N, H = T * B, self.sizes[1]
        i = l * self.D + d
        S = ws.states[i]
        DGX = ws.gates[i].reshape(N, -1)  # dL/d(U x + b)
        DGH = DGX if self.cell == "lstm" else ws.dgh[i].reshape(N, -1)  # dL/d(W h + bh)
        prev = (S[:-1] if d == 0 else S[1:]).reshape(N, H)
        ops.outer_accum(g[cell_name("W", l, d)], DGH, prev, False)
        ops.bias_grad(DGX, g[cell_name("b", l, d)])
        if self.cell == "gru":
            ops.bias_grad(DGH, g[cell_name("bh", l, d)])
        if l > 0:
            ops.outer_accum(g[cell_name("U", l, d)], DGX, ws.inputs[l], False)
            return
        dUT = g[cell_name("U", 0, d)].T  # (I, G*H), C-contiguous
        if x.ndim == 2:
            dUT.fill(0)
            ops.embed_scatter_add(dUT, x.reshape(N), DGX)
        else:
            ops.outer_accum(dUT, x.reshape(N, -1), DGX, False)

    def _elman_backward(self, ws: Workspace, params, keep, fused: bool, l: int, d: int,
                        T: int) -> None:
        """Full BPTT through one Elman layer direction, along its own backward order
        (T-1 down to 0 forward, 0 up to T-1 reverse): ws.errors[i] holds e_t on entry,
        dz_t on exit."""
        ops = self.ops
        i = l * self.D + d
        S, E = ws.states[i], ws.errors[i]
        W = params[cell_name("W", l, d)]
        carry = ws.carries[d]
        carry.fill(0)
        k = lambda t: None if keep is None else keep[t]  # noqa: E731
        if fused:
            self._backward_fused_cell(W, carry if keep is not None else None, S, E, keep, d, T)
        elif d == 0:
            for t in range(T - 1, -1, -1):
                backward_step(ops, carry, E[t], S[t + 1], k(t), E[t], W, self.act, t == 0)
        else:  # the reverse direction's own backward order: 0 up to T-1
            for t in range(T):
                backward_step(ops, carry, E[t], S[t], k(t), E[t], W, self.act, t == T - 1)

    def _streams_from_above(self, ws: Workspace, params, G, above, l: int, j: int,
                            drop) -> None:
        """Truncated BPTT of a unidirectional stack at step j: layer l's L live streams G
        (L, B, H) receive the streams' errors of layer l+1 (`above`, (L, B, k): what
        multiplies its U), through its U and layer l's dropout multipliers; slot j % L
        starts afresh (output j's stream enters layer l here)."""
        L, B, H = G.shape
        G[j % L].fill(0)
        U = params[cell_name("U", l + 1, 0)]
        above = above.reshape(L * B, -1)
        if drop is None:
            self.ops.gemm(above, U, G.reshape(L * B, H), 1.0)
            return
        if ws.Gtmp is None:
            ws.Gtmp = self.xp.empty((L, B, H), dtype=self.dtype)
        self.ops.gemm(above, U, ws.Gtmp.reshape(L * B, H), 0.0)
        ws.Gtmp *= drop[l][j]
        G += ws.Gtmp

    def _backward_fused_cell(self, W, carry, S, E, keep, d: int, T: int) -> None:
        """Full BPTT of one layer direction with one fused recurrent-step kernel per step:
        each step's product with W and its delta update in one launch. E[t] holds e_t on
        entry, dz_t on exit; the carry holds only what passes through masked steps."""
        ops = self.ops
        k = lambda t: None if keep is None else keep[t]  # noqa: E731
        if d == 0:
            for t in range(T - 1, -1, -1):
                ops.recur_backward(E[t + 1] if t < T - 1 else None, W, carry, E[t], S[t + 1],
                                   k(t), E[t], self.act)
        else:  # the reverse direction's backward order: 0 up to T-1
            for t in range(T):
                ops.recur_backward(E[t - 1] if t > 0 else None, W, carry, E[t], S[t], k(t),
                                   E[t], self.act)

    def _backward_fused(self, ws: Workspace, W, T: int, keep, L: int) -> None:
        """Per-output truncation of one layer with one fused kernel per step (all L
        streams: the product with W, the fresh stream, the delta update and the sum)."""
        ops, S, E = self.ops, ws.S, ws.E
        G = None
        if keep is not None:
            G = ws.G[0]
            G.fill(0)
        bufs = (ws.dz_all[0], ws.dz_all2[0])
        for j in range(T - 1, -1, -1):  # slot j % L starts output j's stream (e_j)
            ops.recur_trunc_backward(bufs[(j + 1) % 2] if j < T - 1 else None, W, G, j % L,
                                     E[j], S[j + 1], None if keep is None else keep[j],
                                     bufs[j % 2], E[j], self.act)

    def run_step(self, ws: Workspace, params, x, y, h0, keep, truncate, drop=None,
                 weight=None) -> None:
        """The whole training step on device arrays, with no host read: states, loss per
        token (ws.loss) and gradients (self.grads). What eager calls and the captured
        CUDA Graph both run."""
        self.forward_states(ws, params, x, h0, keep, drop)
        self.output_layer(ws, params, y, keep, drop, weight)
        self.backward(ws, params, x, keep, truncate, drop)

    def summed_loss(self, ws: Workspace) -> float:
        """The loss of the last step run on `ws`, summed in float64 (a host read)."""
        return float(ws.loss.sum(dtype=self.xp.float64))

    def h_last(self, ws: Workspace, T: int):
        """A fresh copy of the last states (:meth:`state_shape`): each forward direction's
        after step T-1, each reverse direction's after step 0."""
        h = self._last(ws.states, T)
        return h if self.cell != "lstm" else (h, self._last(ws.cstates, T))

    def _last(self, states, T: int):
        if self.cells == 1:
            return states[0][T].copy()
        B, H = states[0].shape[1:]
        out = self.xp.empty((self.cells, B, H), dtype=self.dtype)
        for i, S in enumerate(states):
            self.xp.copyto(out[i], S[T] if i % self.D == 0 else S[0])
        return out

    # ---------------------------------------------------------------------------------

    def loss_and_grads(self, params, x, y, h0, keep, truncate, drop=None,
                       weight=None) -> tuple[float, dict, Any]:
        """x, y, h0, keep, drop, weight: validated arrays on this backend (keep: (T, B)
        0/1 or None; drop: :meth:`dropout_shape` multipliers or None; weight: (T, B) loss
        weights or None)."""
        T, B = x.shape[:2]
        ws = self.workspace(T, B, x.ndim == 3, truncate, keep is not None)
        self.run_step(ws, params, x, y, h0, keep, truncate, drop, weight)
        return self.summed_loss(ws), self.grads, self.h_last(ws, T)

    def loss(self, params, x, y, h0, keep, drop=None, weight=None) -> tuple[float, Any]:
        """Forward only: the summed loss and the last state."""
        T, B = x.shape[:2]
        ws = self.workspace(T, B, x.ndim == 3, None, keep is not None)
        self.forward_states(ws, params, x, h0, keep, drop)
        self.output_layer(ws, params, y, keep, drop, weight, backward=False)
        return self.summed_loss(ws), self.h_last(ws, T)

    def forward(self, params, x, h0, keep) -> tuple[Any, Any]:
        """Logits (T, B, O), a fresh array, and the last state (:meth:`state_shape`)."""
        T, B = x.shape[:2]
        ws = self.workspace(T, B, x.ndim == 3, None, keep is not None)
        self.forward_states(ws, params, x, h0, keep)
        N = T * B
        F = self._features(ws, self.num_layers - 1, None, T)
        if self.head is not None:  # the full log-probabilities: logits of the same softmax
            return self.head.log_prob(params, F).reshape(T, B, -1), self.h_last(ws, T)
        logits = self.xp.empty((N, self.sizes[2]), dtype=self.dtype)
        self.ops.gemm(F, params["V"].T, logits, 0.0)
        logits += params["c"]
        return logits.reshape(T, B, -1), self.h_last(ws, T)

    def log_prob(self, params, x, h0, keep) -> tuple[Any, Any]:
        """Full log-probabilities (T, B, O), a fresh array, and the last state; for the
        softmax and adaptive outputs."""
        logits, h = self.forward(params, x, h0, keep)
        if self.head is None:
            xp = self.xp
            logits -= logits.max(axis=-1, keepdims=True)
            logits -= xp.log(xp.exp(logits).sum(axis=-1, keepdims=True))
        return logits, h
