"""The clear reference: BPTT exactly as the seed documents write it, in float64.

Written to be read, not to be fast. It is the oracle every fast path is tested against.

Notation (seeds 001/003): ``U`` input -> hidden (H, I), ``W`` hidden -> hidden (H, H),
``V`` hidden -> output (O, H), biases ``b`` (H,) and ``c`` (O,)::

    s_t = f(U x_t + W s_{t-1} + b)          hidden state, s_{-1} = h0
    o_t = g(V s_t + c)                       output
    L   = sum_t L_t                          summed over steps and sequences

Backward, for each output t (seed 001's ``bptt``)::

    delta   = V^T (o_t - d_t)                dL_t/ds_t
    for j = t, t-1, ..., max(0, t - truncate):
        dz  = delta * f'(s_j)                dL_t/d(pre-activation at j)
        dW += dz s_{j-1}^T ;  dU += dz x_j^T ;  db += dz
        delta = W^T dz                       dL_t/ds_{j-1}

Dropout on the output layer's input (``drop``, (T, B, H) multipliers d_t, e.g. 0 or
1/(1-p)) replaces s_t by d_t * s_t in ``o_t`` only: dV uses d_t * s_t, and the error
reaching s_t from its output is d_t * V^T (o_t - d_t). The recurrence is untouched.

A masked step (mask 0) is skipped: it adds no loss, ignores its input, and passes the
state through unchanged (s_j = s_{j-1}), so its Jacobian is the identity and no gradient
reaches the parameters through it. Truncation windows count time steps, masked or not.
Loss weights (``loss_mask``, (T, B) floats >= 0) multiply L_t: the step still runs.

With ``output="adaptive"`` the output layer is the adaptive softmax of
:mod:`rnn_gpu.heads.adaptive` (its own float64 per-token reference): the error reaching
the top features from output t is that head's dL_t/dF_t instead of V^T (o_t - d_t).

Stacks (PyTorch's wiring). Layer l of ``num_layers`` has its own U, W, b per direction
(names in :func:`param_shapes`); layer 0 reads x_t, layer l > 0 reads the features of
layer l-1, F_t = [s^fwd_t, s^rev_t] * drop_l,t (D*H of them), and the output layer reads
the top layer's. A reverse direction runs the same recursion from step T-1 down to 0:
s^rev_t = f(U x_t + W s^rev_{t+1} + b), s^rev_T = its h0. Backward, full BPTT goes
layer by layer from the top (:func:`_backward_layered`); for a unidirectional stack every
output's error runs back through its window in all layers at once
(:func:`_backward_per_output`), so that truncation holds the states of *every* layer at
step t - truncate - 1 fixed (:func:`truncated_surrogate_loss`).
"""
from __future__ import annotations

import numpy as np

from .heads import adaptive

ACTIVATIONS = ("tanh", "sigmoid", "relu")
OUTPUTS = ("softmax", "sigmoid", "linear")  # one dense layer; "adaptive": heads.adaptive
PARAM_NAMES = ("U", "W", "V", "b", "c")


CELLS = ("elman", "gru", "lstm")
GATES = {"elman": 1, "gru": 3, "lstm": 4}  # G: the rows of U, W and b per hidden unit


def structure(params) -> tuple[int, int]:
    """(num_layers, D) of a parameter dict: layers from the "W{l}" keys, D = 2 when the
    reverse direction ("W_reverse") is present."""
    num_layers = 1
    while f"W{num_layers}" in params:
        num_layers += 1
    return num_layers, 2 if "W_reverse" in params else 1


def cell_of(params) -> str:
    """The cell of a parameter dict, from W's shape (G*H, H) and GRU's "bh"."""
    W = params["W"]
    G = W.shape[0] // W.shape[1]
    if G == 3 and "bh" in params:
        return "gru"
    return "lstm" if G == 4 else "elman"


def cell_name(base: str, layer: int, direction: int) -> str:
    """The name of a layer's parameter: "U", "U1", "W2_reverse", "bh1", ..."""
    return base + (str(layer) if layer else "") + ("_reverse" if direction else "")


def param_names(num_layers: int = 1, bidirectional: bool = False,
                cell: str = "elman") -> tuple[str, ...]:
    """Every parameter's name, in the order the initialisation draws them."""
    return tuple(param_shapes(1, 1, 1, num_layers, bidirectional, cell))


def param_shapes(I: int, H: int, O: int, num_layers: int = 1,
                 bidirectional: bool = False, cell: str = "elman") -> dict[str, tuple[int, ...]]:
    """The parameters of a stack of `num_layers` layers of `cell` (each with a reverse
    direction if `bidirectional`) with I inputs, H hidden units and O outputs. Layer l >= 1
    and the output layer read D*H features: [forward state, reverse state]. A gated cell's
    U, W and b hold its G gates' rows (PyTorch's order: GRU [r, z, n], LSTM [i, f, g, o]);
    a GRU has the recurrent bias "bh" (PyTorch's bias_hh) beside "b" (bias_ih)."""
    D = 2 if bidirectional else 1
    G = GATES[cell]
    shapes = {"U": (G * H, I), "W": (G * H, H), "V": (O, D * H), "b": (G * H,), "c": (O,)}
    if cell == "gru":
        shapes["bh"] = (G * H,)
    for l in range(num_layers):
        for d in range(D):
            if l == 0 and d == 0:
                continue
            shapes[cell_name("U", l, d)] = (G * H, I if l == 0 else D * H)
            shapes[cell_name("W", l, d)] = (G * H, H)
            shapes[cell_name("b", l, d)] = (G * H,)
            if cell == "gru":
                shapes[cell_name("bh", l, d)] = (G * H,)
    return shapes


def activation(name: str, a: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(a)
    if name == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * a))  # = 1 / (1 + e^-a), without overflow
    if name == "relu":
        return np.maximum(a, 0.0)
    raise ValueError(f"hidden_activation: expected one of {', '.join(ACTIVATIONS)}, got {name!r}")


def activation_grad(name: str, s: np.ndarray) -> np.ndarray:
    """f'(a) written through the output s = f(a), as the seeds do: 1 - s^2 for tanh."""
    if name == "tanh":
        return 1.0 - s * s
    if name == "sigmoid":
        return s * (1.0 - s)
    if name == "relu":
        return (s > 0).astype(s.dtype)
    raise ValueError(f"hidden_activation: expected one of {', '.join(ACTIVATIONS)}, got {name!r}")


def output_loss(output: str, z: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loss per row and dL/dz for logits z (B, O) and targets d.

    softmax + cross-entropy (d: ids (B,)):  L = logsumexp(z) - z_d,  dL/dz = softmax(z) - onehot(d)
    sigmoid + binary cross-entropy (d: (B, O) in [0, 1], seed 002 eq. 16):
        L = sum_k d softplus(-z) + (1 - d) softplus(z),  dL/dz = sigmoid(z) - d
    linear + squared error (d: (B, O), seeds 000/002):  L = 1/2 sum_k (z - d)^2,  dL/dz = z - d
    """
    if output == "softmax":
        zmax = z.max(axis=1, keepdims=True)
        e = np.exp(z - zmax)
        lse = np.log(e.sum(axis=1)) + zmax[:, 0]
        rows = np.arange(z.shape[0])
        loss = lse - z[rows, d]
        dz = e / e.sum(axis=1, keepdims=True)
        dz[rows, d] -= 1.0
        return loss, dz
    if output == "sigmoid":
        softplus = lambda u: np.logaddexp(0.0, u)  # noqa: E731
        loss = (d * softplus(-z) + (1.0 - d) * softplus(z)).sum(axis=1)
        return loss, activation("sigmoid", z) - d
    if output == "linear":
        return 0.5 * ((z - d) ** 2).sum(axis=1), z - d
    raise ValueError(f"output: expected one of {', '.join(OUTPUTS)}, got {output!r}")


def _input_projection(U: np.ndarray, x_t: np.ndarray) -> np.ndarray:
    """U x_t for a batch: a column gather of U for ids (B,), a product for dense (B, I)."""
    if x_t.ndim == 1:
        return U[:, x_t].T  # (B, H); never a one-hot matrix
    return x_t @ U.T


def _add_input_grad(gU: np.ndarray, x_t: np.ndarray, dz: np.ndarray) -> None:
    """dU += dz x_t^T; for ids, dU[:, x_t] += dz with repeated ids adding up."""
    if x_t.ndim == 1:
        np.add.at(gU.T, x_t, dz)
    else:
        gU += dz.T @ x_t


def forward(params, x, h0, mask, hidden_activation):
    """States s of shape (T+1, B, H) with s[0] = h0 and s[t+1] the state after step t
    (one unidirectional layer: "U", "W", "b")."""
    U, W, b = params["U"], params["W"], params["b"]
    T, B = x.shape[:2]
    s = np.zeros((T + 1, B, W.shape[0]))
    s[0] = h0
    for t in range(T):
        a = _input_projection(U, x[t]) + s[t] @ W.T + b  # (B, H)
        keep = mask[t][:, None] > 0
        s[t + 1] = np.where(keep, activation(hidden_activation, a), s[t])
    return s


def sigmoid(a: np.ndarray) -> np.ndarray:
    """The logistic function 1 / (1 + e^-a), as (1 + tanh(a/2)) / 2 (never overflows)."""
    return activation("sigmoid", a)


def _cell_params(p, l: int, d: int) -> dict:
    """Layer l, direction d's U, W, b (and a GRU's bh) under their plain names."""
    out = {n: p[cell_name(n, l, d)] for n in ("U", "W", "b")}
    if cell_name("bh", l, d) in p:
        out["bh"] = p[cell_name("bh", l, d)]
    return out


def cell_step(cell: str, P: dict, x_t, h, c, act: str):
    """One step of one layer direction, before the mask: (h', c' or None, cache).

    elman:  s = f(U x + W h + b)
    gru:    r = sigma(U_r x + b_r + W_r h + bh_r)       (torch.nn.GRU)
            z = sigma(U_z x + b_z + W_z h + bh_z)
            n = tanh(U_n x + b_n + r * (W_n h + bh_n))
            h' = (1 - z) * n + z * h
    lstm:   i, f, o = sigma(U_k x + W_k h + b_k), g = tanh(U_g x + W_g h + b_g)   (torch.nn.LSTM)
            c' = f * c + i * g
            h' = o * tanh(c')
    `cache` holds what :func:`cell_step_backward` needs.
    """
    H = h.shape[1]
    gx = _input_projection(P["U"], x_t) + P["b"]  # U x + b, every gate: (B, G*H)
    gh = h @ P["W"].T  # W h, every gate
    if cell == "elman":
        s = activation(act, gx + gh)
        return s, None, {"h": h, "s": s}
    if cell == "gru":
        gh = gh + P["bh"]
        r = sigmoid(gx[:, :H] + gh[:, :H])
        z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        hn = gh[:, 2 * H:]  # W_n h + bh_n: r gates it inside the tanh
        n = np.tanh(gx[:, 2 * H:] + r * hn)
        return (1.0 - z) * n + z * h, None, {"h": h, "r": r, "z": z, "n": n, "hn": hn}
    if cell == "lstm":
        a = gx + gh
        i, f = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H])
        g, o = np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
        c_new = f * c + i * g
        return o * np.tanh(c_new), c_new, {"h": h, "c": c, "i": i, "f": f, "g": g, "o": o,
                                            "c_new": c_new}
    raise ValueError(f"cell: expected one of {', '.join(CELLS)}, got {cell!r}")


def cell_step_backward(cell: str, cache: dict, dh, dc, act: str):
    """The chain rule through one :func:`cell_step`, before the mask.

    dh = dL/dh', dc = dL/dc' (LSTM; None otherwise). Returns (dgx, dgh, dh_direct, dc_prev):
    dgx = dL/d(U x + b) and dgh = dL/d(W h (+ bh)), both (B, G*H) in the gate order;
    dh_direct the part of dL/dh that does not go through W (dL/dh = dgh W + dh_direct);
    dc_prev = dL/dc (LSTM), else None.
    """
    if cell == "elman":  # the seeds' delta: dz = delta * f'(s), the same for U, W and b
        dz = dh * activation_grad(act, cache["s"])
        return dz, dz, 0.0, None
    if cell == "gru":
        r, z, n, hn, h = (cache[k] for k in ("r", "z", "n", "hn", "h"))
        dn = dh * (1.0 - z) * (1.0 - n * n)  # h' = (1-z) n + z h  ->  through n's tanh
        dz = dh * (h - n) * z * (1.0 - z)  # dh'/dz = h - n, then sigma'
        dr = dn * hn * r * (1.0 - r)  # n's argument holds r * hn
        dgx = np.concatenate([dr, dz, dn], axis=1)  # U_n x + b_n enters n's tanh directly
        dgh = np.concatenate([dr, dz, dn * r], axis=1)  # W_n h + bh_n enters times r
        return dgx, dgh, dh * z, None
    if cell == "lstm":
        i, f, g, o, c, c_new = (cache[k] for k in ("i", "f", "g", "o", "c", "c_new"))
        tc = np.tanh(c_new)
        do = dh * tc * o * (1.0 - o)  # h' = o tanh(c')
        dct = dc + dh * o * (1.0 - tc * tc)  # dL/dc': from c' itself and through h'
        di = dct * g * i * (1.0 - i)  # c' = f c + i g
        dg = dct * i * (1.0 - g * g)
        df = dct * c * f * (1.0 - f)
        dgates = np.concatenate([di, df, dg, do], axis=1)
        return dgates, dgates, 0.0, dct * f
    raise ValueError(f"cell: expected one of {', '.join(CELLS)}, got {cell!r}")


class _Run:
    """One layer direction's forward pass: h (T+1, B, H), c (LSTM) likewise, and the
    cache of every step. Forward: h[0] = h0, h[t+1] after step t; reverse: h[T] = h0,
    h[t] after step t."""

    def __init__(self, h, c, caches):
        self.h, self.c, self.caches = h, c, caches

    def prev(self, d: int, t: int):
        """(h, c) step t read."""
        i = t if d == 0 else t + 1
        return self.h[i], None if self.c is None else self.c[i]

    def state(self):
        """What forward_stack reports for this direction: h, or (h, c) for an LSTM."""
        return self.h if self.c is None else (self.h, self.c)


def _masked_step(cell, P, inp_t, h, c, m, act):
    """cell_step with the mask: masked rows keep (h, c)."""
    h_new, c_new, cache = cell_step(cell, P, inp_t, h, c, act)
    h_new = np.where(m > 0, h_new, h)
    if c is not None:
        c_new = np.where(m > 0, c_new, c)
    return h_new, c_new, cache


def _forward_runs(p, x, h0, c0, mask, act, drop):
    """Every layer and direction, layer by layer: (runs[l][d], feats[l])."""
    num_layers, D = structure(p)
    cell = cell_of(p)
    T, B = x.shape[:2]
    runs, feats = [], []
    inp = x  # layer 0 reads x, layer l > 0 the features of layer l-1
    for l in range(num_layers):
        layer = []
        for d in range(D):
            P = _cell_params(p, l, d)
            H = P["W"].shape[1]
            h = np.zeros((T + 1, B, H))
            c = np.zeros((T + 1, B, H)) if cell == "lstm" else None
            caches = [None] * T
            first, order = (0, range(T)) if d == 0 else (T, reversed(range(T)))
            h[first] = h0[l * D + d]
            if c is not None:
                c[first] = c0[l * D + d]
            for t in order:
                src, dst = (t, t + 1) if d == 0 else (t + 1, t)
                h[dst], cd, caches[t] = _masked_step(
                    cell, P, inp[t], h[src], None if c is None else c[src],
                    mask[t][:, None], act)
                if c is not None:
                    c[dst] = cd
            layer.append(_Run(h, c, caches))
        runs.append(layer)
        out = np.concatenate([layer[0].h[1:]] + ([layer[1].h[:T]] if D == 2 else []), axis=-1)
        feats.append(out * drop[l])  # (T, B, D*H)
        inp = feats[-1]
    return runs, feats


def forward_stack(params, x, h0, mask, hidden_activation, drop):
    """Every layer and direction, layer by layer.

    h0: (num_layers*D, B, H), index l*D + d, or for an LSTM a pair (h0, c0) of those;
    drop: (num_layers, T, B, D*H). Returns (states, feats): states[l][d] of shape
    (T+1, B, H) -- forward: s[0] = h0 and s[t+1] the state after step t; reverse (run
    from step T-1 down to 0): s[T] = h0 and s[t] the state after step t -- or for an LSTM
    a pair (h states, cell states) of that layout; and feats[l] (T, B, D*H), layer l's
    output [forward state, reverse state] at each step times drop[l], what layer l+1 (or
    the output layer) reads.
    """
    h0, c0 = h0 if isinstance(h0, tuple) else (h0, None)
    runs, feats = _forward_runs(params, x, h0, c0, mask, hidden_activation, drop)
    return [[r.state() for r in layer] for layer in runs], feats


def prepare_inputs(params, x, h0, mask, drop, loss_mask):
    """float64 copies, and h0 (num_layers*D, B, H) (for an LSTM a pair (h0, c0) of them),
    mask (T, B), drop (num_layers, T, B, D*H) and the loss weights mask * loss_mask (T, B)
    in their general layouts."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    num_layers, D = structure(p)
    x = np.asarray(x)
    if x.ndim == 3:
        x = x.astype(np.float64)
    T, B = x.shape[:2]
    H = p["W"].shape[1]

    def state(a):
        if a is None:
            return np.zeros((num_layers * D, B, H))
        return np.asarray(a, dtype=np.float64).reshape(num_layers * D, B, H)

    if cell_of(p) == "lstm":
        h0 = (state(None), state(None)) if h0 is None else (state(h0[0]), state(h0[1]))
    else:
        h0 = state(h0)
    mask = np.ones((T, B)) if mask is None else np.asarray(mask, dtype=np.float64)
    weight = mask if loss_mask is None else mask * np.asarray(loss_mask, dtype=np.float64)
    drop = (np.ones((num_layers, T, B, D * H)) if drop is None
            else np.asarray(drop, dtype=np.float64).reshape(num_layers, T, B, D * H))
    return p, x, h0, mask, weight, drop


def _h_last(runs, T):
    """(num_layers*D, B, H): each forward direction's state after step T-1, each reverse
    direction's after step 0; (B, H) for one unidirectional layer; for an LSTM the pair
    (h, c) of such arrays."""
    def last(get):
        out = [get(r)[T] if d == 0 else get(r)[0] for layer in runs for d, r in enumerate(layer)]
        return out[0].copy() if len(out) == 1 else np.stack(out)
    h = last(lambda r: r.h)
    return h if runs[0][0].c is None else (h, last(lambda r: r.c))


def loss_and_grads(params, x, y, *, h0=None, truncate=None, mask=None,
                   hidden_activation="tanh", output="softmax", drop=None, loss_mask=None):
    """Loss (float) and gradients (dict of float64 arrays) and the last state.

    The stack's structure and cell come from the parameter names and shapes (see
    :func:`param_shapes`). x: ids (T, B) or floats (T, B, I); y: ids (T, B) for softmax and
    adaptive, floats (T, B, O) otherwise; h0: (B, H) for one unidirectional layer, else
    (num_layers*D, B, H), or None for zeros; for an LSTM a pair (h0, c0) of those; mask:
    (T, B) of 0/1 or None; truncate: None or int >= 0 (unidirectional only); drop:
    dropout multipliers, (T, B, H) for one unidirectional layer, else
    (num_layers, T, B, D*H), or None; loss_mask: (T, B) loss weights >= 0 or None.
    """
    p, x, h0, mask, weight, drop = prepare_inputs(params, x, h0, mask, drop, loss_mask)
    num_layers, D = structure(p)
    if D == 2 and truncate is not None:
        raise ValueError("truncate: truncation is defined for unidirectional models only")
    T, B = x.shape[:2]
    k = T if truncate is None else int(truncate)
    V, c = p["V"], p["c"]

    h0, c0 = h0 if isinstance(h0, tuple) else (h0, None)
    runs, feats = _forward_runs(p, x, h0, c0, mask, hidden_activation, drop)
    top = feats[-1]  # (T, B, D*H), what the output layer reads

    loss = 0.0
    grads = {name: np.zeros_like(v) for name, v in p.items()}
    e_out = []  # dL_t/dF_t: the error output t sends into the top features, (B, D*H)
    for t in range(T):
        if output == "adaptive":  # its own reference adds the head's gradients
            l_t, e_t = adaptive.reference_output(p, top[t], y[t], weight[t], grads)
        else:
            l_t, dz = output_loss(output, top[t] @ V.T + c, y[t])  # logits (B, O)
            dz = dz * weight[t][:, None]  # dL_t/dz_t
            grads["V"] += dz.T @ top[t]
            grads["c"] += dz.sum(axis=0)
            e_t = dz @ V
        loss += float((l_t * weight[t]).sum())
        e_out.append(e_t)

    if D == 1:
        _backward_per_output(p, grads, x, runs, feats, mask, drop, e_out, k, hidden_activation)
    else:
        _backward_layered(p, grads, x, runs, feats, mask, drop, e_out, hidden_activation)
    return loss, grads, _h_last(runs, T)


def _row_loss(p, output, f, y_t) -> np.ndarray:
    """The loss per row (B,) of the output layer reading features f, targets y_t."""
    if output == "adaptive":
        scratch = {k: np.zeros_like(v) for k, v in p.items()}
        return adaptive.reference_output(p, f, y_t, np.ones(f.shape[0]), scratch)[0]
    return output_loss(output, f @ p["V"].T + p["c"], y_t)[0]


def _step_grads(p, grads, cell, l, d, run, t, inp_t, dh, dc, m, act):
    """Back through step t of layer l, direction d: adds the step's parameter gradients
    and returns (dL/dh, dL/dc) before the step, and dL/d(U x + b) for the layer below.
    A masked row (m = 0) passes dh and dc through and adds nothing."""
    dgx, dgh, direct, dc_prev = cell_step_backward(cell, run.caches[t], dh, dc, act)
    dgx, dgh = dgx * m, dgh * m
    h_prev = run.prev(d, t)[0]
    grads[cell_name("W", l, d)] += dgh.T @ h_prev  # dW += dgh h_prev^T
    grads[cell_name("b", l, d)] += dgx.sum(axis=0)
    if cell == "gru":
        grads[cell_name("bh", l, d)] += dgh.sum(axis=0)
    _add_input_grad(grads[cell_name("U", l, d)], inp_t, dgx)  # dU += dgx x^T
    dh_prev = dgh @ p[cell_name("W", l, d)] + direct * m + dh * (1.0 - m)
    if dc is not None:
        dc_prev = dc_prev * m + dc * (1.0 - m)
    return dh_prev, dc_prev, dgx


def _backward_per_output(p, grads, x, runs, feats, mask, drop, e_out, k, act):
    """Unidirectional stacks, seed 001's ``bptt`` for each output t: its error enters the
    top layer at step t and runs back through steps t, t-1, ..., max(0, t-k) in every
    layer; at each step it moves down a layer through that layer's U (and the dropout
    multipliers of the layer below). The states (h, and an LSTM's c) before step t-k are
    held fixed."""
    num_layers = len(runs)
    cell = cell_of(p)
    T = len(e_out)
    for t in reversed(range(T)):  # for each output, backwards
        from_output = e_out[t] * drop[-1][t]  # dL_t/ds_{top,t}, (B, H)
        carry = [np.zeros_like(from_output) for _ in range(num_layers)]  # dL_t/ds_{l,j}
        carry_c = [np.zeros_like(from_output) if cell == "lstm" else None
                   for _ in range(num_layers)]  # dL_t/dc_{l,j}
        for j in range(t, max(0, t - k) - 1, -1):  # step t and at most k earlier ones
            above = from_output if j == t else 0.0  # error reaching layer l at step j from above
            m = mask[j][:, None]
            for l in reversed(range(num_layers)):
                inp = x[j] if l == 0 else feats[l - 1][j]  # what layer l read at step j
                carry[l], carry_c[l], dgx = _step_grads(
                    p, grads, cell, l, 0, runs[l][0], j, inp, carry[l] + above, carry_c[l],
                    m, act)
                if l > 0:
                    above = (dgx @ p[cell_name("U", l, 0)]) * drop[l - 1][j]  # to layer l-1
    return grads


def _backward_layered(p, grads, x, runs, feats, mask, drop, e_out, act):
    """Full BPTT layer by layer from the top, direction by direction: the error on a
    layer's outputs at every step (from the output layer, or from the layer above through
    its U), then the cell's recursion along the direction's own time order (T-1 down to
    0 forward, 0 up to T-1 reverse)."""
    num_layers = len(runs)
    D = len(runs[0])
    cell = cell_of(p)
    T = len(e_out)
    H = p["W"].shape[1]
    err = np.stack(e_out) * drop[-1]  # (T, B, D*H)
    for l in reversed(range(num_layers)):
        err_below = np.zeros_like(feats[l - 1]) if l > 0 else None
        for d in range(D):
            e = err[..., d * H:(d + 1) * H]
            carry = np.zeros_like(e[0])
            carry_c = np.zeros_like(e[0]) if cell == "lstm" else None
            for t in (reversed(range(T)) if d == 0 else range(T)):
                inp = x[t] if l == 0 else feats[l - 1][t]
                carry, carry_c, dgx = _step_grads(p, grads, cell, l, d, runs[l][d], t, inp,
                                                  carry + e[t], carry_c, mask[t][:, None], act)
                if l > 0:
                    err_below[t] += dgx @ p[cell_name("U", l, d)]
        if l > 0:
            err = err_below * drop[l - 1]
    return grads


def loss_only(params, x, y, *, h0=None, mask=None, hidden_activation="tanh", output="softmax",
              drop=None, loss_mask=None):
    """The loss alone (full forward, no truncation), in float64."""
    p, x, h0, mask, weight, drop = prepare_inputs(params, x, h0, mask, drop, loss_mask)
    _, feats = forward_stack(p, x, h0, mask, hidden_activation, drop)
    total = 0.0
    for t in range(x.shape[0]):
        total += float((_row_loss(p, output, feats[-1][t], y[t]) * weight[t]).sum())
    return total


def truncated_surrogate_loss(params, anchor_states, x, y, *, truncate, mask=None,
                             hidden_activation="tanh", output="softmax", drop=None,
                             loss_mask=None):
    """The objective whose exact gradient truncated BPTT computes.

    Output t's loss is recomputed from the states of *all* layers before step
    t - truncate (taken from an unperturbed forward pass and held fixed; an LSTM's cell
    state with its h), running steps max(0, t - truncate) .. t through every layer with
    `params`. Finite differences of this function check a truncated gradient exactly.
    anchor_states: (T+1, B, H) for one layer, or a list with one such array per layer
    (unidirectional stacks only); for an LSTM each is a pair (h states, cell states), as
    :func:`forward_stack` gives them.
    """
    p, x, _, mask, weight, drop = prepare_inputs(params, x, None, mask, drop, loss_mask)
    num_layers, D = structure(p)
    if D == 2:
        raise ValueError("truncate: truncation is defined for unidirectional models only")
    cell = cell_of(p)
    single = isinstance(anchor_states, np.ndarray) or (
        isinstance(anchor_states, tuple) and cell == "lstm")
    anchors = [anchor_states] if single else list(anchor_states)
    T = x.shape[0]
    total = 0.0
    for t in range(T):
        start = max(0, t - truncate)
        # held fixed: the gradient stops here
        h = [(a[0] if cell == "lstm" else a)[start] for a in anchors]
        c = [a[1][start] if cell == "lstm" else None for a in anchors]
        for j in range(start, t + 1):
            inp = x[j]
            for l in range(num_layers):
                h[l], c[l], _ = _masked_step(cell, _cell_params(p, l, 0), inp, h[l], c[l],
                                             mask[j][:, None], hidden_activation)
                inp = h[l] * drop[l][j]
        total += float((_row_loss(p, output, inp, y[t]) * weight[t]).sum())
    return total
