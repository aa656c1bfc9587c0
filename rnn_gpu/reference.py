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


def structure(params) -> tuple[int, int]:
    """(num_layers, D) of a parameter dict: layers from the "W{l}" keys, D = 2 when the
    reverse direction ("W_reverse") is present."""
    num_layers = 1
    while f"W{num_layers}" in params:
        num_layers += 1
    return num_layers, 2 if "W_reverse" in params else 1


def cell_name(base: str, layer: int, direction: int) -> str:
    """The name of a layer's parameter: "U", "U1", "W2_reverse", ..."""
    return base + (str(layer) if layer else "") + ("_reverse" if direction else "")


def param_names(num_layers: int = 1, bidirectional: bool = False) -> tuple[str, ...]:
    """Every parameter's name, in the order the initialisation draws them."""
    return tuple(param_shapes(1, 1, 1, num_layers, bidirectional))


def param_shapes(I: int, H: int, O: int, num_layers: int = 1,
                 bidirectional: bool = False) -> dict[str, tuple[int, ...]]:
    """The parameters of a stack of `num_layers` Elman layers (each with a reverse
    direction if `bidirectional`) with I inputs, H hidden units and O outputs. Layer l >= 1
    and the output layer read D*H features: [forward state, reverse state]."""
    D = 2 if bidirectional else 1
    shapes = {"U": (H, I), "W": (H, H), "V": (O, D * H), "b": (H,), "c": (O,)}
    for l in range(num_layers):
        for d in range(D):
            if l == 0 and d == 0:
                continue
            shapes[cell_name("U", l, d)] = (H, I if l == 0 else D * H)
            shapes[cell_name("W", l, d)] = (H, H)
            shapes[cell_name("b", l, d)] = (H,)
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


def forward_stack(params, x, h0, mask, hidden_activation, drop):
    """Every layer and direction, layer by layer.

    h0: (num_layers*D, B, H), index l*D + d; drop: (num_layers, T, B, D*H).
    Returns (states, feats): states[l][d] of shape (T+1, B, H) -- forward: s[0] = h0 and
    s[t+1] the state after step t; reverse (run from step T-1 down to 0): s[T] = h0 and
    s[t] the state after step t -- and feats[l] (T, B, D*H), layer l's output
    [forward state, reverse state] at each step times drop[l], what layer l+1 (or the
    output layer) reads.
    """
    num_layers, D = structure(params)
    T, B = x.shape[:2]
    states, feats = [], []
    inp = x  # layer 0 reads x, layer l > 0 the features of layer l-1
    for l in range(num_layers):
        layer = []
        for d in range(D):
            U, W, b = (params[cell_name(n, l, d)] for n in ("U", "W", "b"))
            s = np.zeros((T + 1, B, W.shape[0]))
            if d == 0:
                s[0] = h0[l * D]
                for t in range(T):
                    a = _input_projection(U, inp[t]) + s[t] @ W.T + b  # (B, H)
                    f = activation(hidden_activation, a)
                    s[t + 1] = np.where(mask[t][:, None] > 0, f, s[t])
            else:
                s[T] = h0[l * D + 1]
                for t in reversed(range(T)):
                    a = _input_projection(U, inp[t]) + s[t + 1] @ W.T + b
                    f = activation(hidden_activation, a)
                    s[t] = np.where(mask[t][:, None] > 0, f, s[t + 1])
            layer.append(s)
        states.append(layer)
        out = np.concatenate([layer[0][1:]] + ([layer[1][:T]] if D == 2 else []), axis=-1)
        feats.append(out * drop[l])  # (T, B, D*H)
        inp = feats[-1]
    return states, feats


def prepare_inputs(params, x, h0, mask, drop, loss_mask):
    """float64 copies, and h0 (num_layers*D, B, H), mask (T, B), drop (num_layers, T, B,
    D*H) and the loss weights mask * loss_mask (T, B) in their general layouts."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    num_layers, D = structure(p)
    x = np.asarray(x)
    if x.ndim == 3:
        x = x.astype(np.float64)
    T, B = x.shape[:2]
    H = p["W"].shape[0]
    h0 = np.zeros((num_layers * D, B, H)) if h0 is None else np.asarray(h0, dtype=np.float64)
    h0 = h0.reshape(num_layers * D, B, H)
    mask = np.ones((T, B)) if mask is None else np.asarray(mask, dtype=np.float64)
    weight = mask if loss_mask is None else mask * np.asarray(loss_mask, dtype=np.float64)
    drop = (np.ones((num_layers, T, B, D * H)) if drop is None
            else np.asarray(drop, dtype=np.float64).reshape(num_layers, T, B, D * H))
    return p, x, h0, mask, weight, drop


def _h_last(states, T):
    """(num_layers*D, B, H): each forward direction's state after step T-1, each reverse
    direction's after step 0; (B, H) for one unidirectional layer."""
    last = [s[T] if d == 0 else s[0] for layer in states for d, s in enumerate(layer)]
    return last[0].copy() if len(last) == 1 else np.stack(last)


def loss_and_grads(params, x, y, *, h0=None, truncate=None, mask=None,
                   hidden_activation="tanh", output="softmax", drop=None, loss_mask=None):
    """Loss (float) and gradients (dict of float64 arrays) and the last state.

    The stack's structure comes from the parameter names (see :func:`param_shapes`).
    x: ids (T, B) or floats (T, B, I); y: ids (T, B) for softmax and adaptive, floats
    (T, B, O) otherwise; h0: (B, H) for one unidirectional layer, else (num_layers*D, B, H), or None
    for zeros; mask: (T, B) of 0/1 or None; truncate: None or int >= 0 (unidirectional
    only); drop: dropout multipliers, (T, B, H) for one unidirectional layer, else
    (num_layers, T, B, D*H), or None; loss_mask: (T, B) loss weights >= 0 or None.
    """
    p, x, h0, mask, weight, drop = prepare_inputs(params, x, h0, mask, drop, loss_mask)
    num_layers, D = structure(p)
    if D == 2 and truncate is not None:
        raise ValueError("truncate: truncation is defined for unidirectional models only")
    T, B = x.shape[:2]
    k = T if truncate is None else int(truncate)
    V, c = p["V"], p["c"]

    states, feats = forward_stack(p, x, h0, mask, hidden_activation, drop)
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
        _backward_per_output(p, grads, x, states, feats, mask, drop, e_out, k,
                             hidden_activation)
    else:
        _backward_layered(p, grads, x, states, feats, mask, drop, e_out, hidden_activation)
    return loss, grads, _h_last(states, T)


def _row_loss(p, output, f, y_t) -> np.ndarray:
    """The loss per row (B,) of the output layer reading features f, targets y_t."""
    if output == "adaptive":
        scratch = {k: np.zeros_like(v) for k, v in p.items()}
        return adaptive.reference_output(p, f, y_t, np.ones(f.shape[0]), scratch)[0]
    return output_loss(output, f @ p["V"].T + p["c"], y_t)[0]


def _backward_per_output(p, grads, x, states, feats, mask, drop, e_out, k, act):
    """Unidirectional stacks, seed 001's ``bptt`` for each output t: its error enters the
    top layer at step t and runs back through steps t, t-1, ..., max(0, t-k) in every
    layer; at each step it moves down a layer through that layer's U (and the dropout
    multipliers of the layer below). The states before step t-k are held fixed."""
    num_layers = len(states)
    T = len(e_out)
    for t in reversed(range(T)):  # for each output, backwards
        from_output = e_out[t] * drop[-1][t]  # dL_t/ds_{top,t}, (B, H)
        carry = [np.zeros_like(from_output) for _ in range(num_layers)]  # dL_t/ds_{l,j}
        for j in range(t, max(0, t - k) - 1, -1):  # step t and at most k earlier ones
            above = from_output if j == t else 0.0  # error reaching layer l at step j from above
            m = mask[j][:, None]
            for l in reversed(range(num_layers)):
                U, W = p[cell_name("U", l, 0)], p[cell_name("W", l, 0)]
                s = states[l][0]
                delta = carry[l] + above
                dz = delta * activation_grad(act, s[j + 1]) * m  # (B, H)
                grads[cell_name("W", l, 0)] += dz.T @ s[j]
                grads[cell_name("b", l, 0)] += dz.sum(axis=0)
                inp = x[j] if l == 0 else feats[l - 1][j]  # what layer l read at step j
                _add_input_grad(grads[cell_name("U", l, 0)], inp, dz)
                carry[l] = dz @ W + delta * (1.0 - m)  # dL_t/ds_{l,j-1}
                if l > 0:
                    above = (dz @ U) * drop[l - 1][j]  # dL_t/ds_{l-1,j}, through layer l
    return grads


def _backward_layered(p, grads, x, states, feats, mask, drop, e_out, act):
    """Full BPTT layer by layer from the top, direction by direction: the error on a
    layer's outputs at every step (from the output layer, or from the layer above through
    its U), then the seeds' delta recursion along the direction's own time order
    (T-1 down to 0 forward, 0 up to T-1 reverse)."""
    num_layers = len(states)
    D = len(states[0])
    T = len(e_out)
    H = p["W"].shape[0]
    err = np.stack(e_out) * drop[-1]  # (T, B, D*H)
    for l in reversed(range(num_layers)):
        err_below = np.zeros_like(feats[l - 1]) if l > 0 else None
        for d in range(D):
            U, W = p[cell_name("U", l, d)], p[cell_name("W", l, d)]
            s = states[l][d]
            e = err[..., d * H:(d + 1) * H]
            carry = np.zeros_like(e[0])
            order = reversed(range(T)) if d == 0 else range(T)
            for t in order:
                s_t, s_prev = (s[t + 1], s[t]) if d == 0 else (s[t], s[t + 1])
                m = mask[t][:, None]
                delta = carry + e[t]  # dL/ds at step t
                dz = delta * activation_grad(act, s_t) * m
                grads[cell_name("W", l, d)] += dz.T @ s_prev
                grads[cell_name("b", l, d)] += dz.sum(axis=0)
                inp = x[t] if l == 0 else feats[l - 1][t]
                _add_input_grad(grads[cell_name("U", l, d)], inp, dz)
                if l > 0:
                    err_below[t] += dz @ U
                carry = dz @ W + delta * (1.0 - m)  # to the step before, in this direction
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
    t - truncate (taken from an unperturbed forward pass and held fixed), running steps
    max(0, t - truncate) .. t through every layer with `params`. Finite differences of
    this function check a truncated gradient exactly. anchor_states: (T+1, B, H) for one
    layer, or a list with one such array per layer (unidirectional stacks only).
    """
    p, x, _, mask, weight, drop = prepare_inputs(params, x, None, mask, drop, loss_mask)
    num_layers, D = structure(p)
    if D == 2:
        raise ValueError("truncate: truncation is defined for unidirectional models only")
    anchors = [anchor_states] if isinstance(anchor_states, np.ndarray) else list(anchor_states)
    T = x.shape[0]
    total = 0.0
    for t in range(T):
        start = max(0, t - truncate)
        h = [a[start] for a in anchors]  # held fixed: the gradient stops here
        for j in range(start, t + 1):
            inp = x[j]
            for l in range(num_layers):
                U, W, b = (p[cell_name(n, l, 0)] for n in ("U", "W", "b"))
                a = _input_projection(U, inp) + h[l] @ W.T + b
                h[l] = np.where(mask[j][:, None] > 0, activation(hidden_activation, a), h[l])
                inp = h[l] * drop[l][j]
        total += float((_row_loss(p, output, inp, y[t]) * weight[t]).sum())
    return total
