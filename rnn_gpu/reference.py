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

With ``output="adaptive"`` the output layer is the adaptive softmax of
:mod:`rnn_gpu.heads.adaptive` (its own float64 per-token reference): the error reaching
s_t from its output is that head's dL_t/ds_t instead of V^T (o_t - d_t).

A masked step (mask 0) is skipped: it adds no loss, ignores its input, and passes the
state through unchanged (s_j = s_{j-1}), so its Jacobian is the identity and no gradient
reaches the parameters through it. Truncation windows count time steps, masked or not.
"""
from __future__ import annotations

import numpy as np

from .heads import adaptive

ACTIVATIONS = ("tanh", "sigmoid", "relu")
OUTPUTS = ("softmax", "sigmoid", "linear")  # one dense layer; "adaptive": heads.adaptive
PARAM_NAMES = ("U", "W", "V", "b", "c")


def param_shapes(I: int, H: int, O: int) -> dict[str, tuple[int, ...]]:
    """The parameters of an Elman RNN with I inputs, H hidden units and O outputs."""
    return {"U": (H, I), "W": (H, H), "V": (O, H), "b": (H,), "c": (O,)}


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


def _row_loss(p, output, f, y_t) -> np.ndarray:
    """The loss per row (B,) of the output layer reading f (B, H), targets y_t."""
    if output == "adaptive":
        scratch = {k: np.zeros_like(v) for k, v in p.items()}
        return adaptive.reference_output(p, f, y_t, np.ones(f.shape[0]), scratch)[0]
    return output_loss(output, f @ p["V"].T + p["c"], y_t)[0]


def _input_projection(U: np.ndarray, x_t: np.ndarray) -> np.ndarray:
    """U x_t for a batch: a column gather of U for ids (B,), a product for dense (B, I)."""
    if x_t.ndim == 1:
        return U[:, x_t].T  # (B, H); never a one-hot matrix
    return x_t @ U.T


def forward(params, x, h0, mask, hidden_activation):
    """States s of shape (T+1, B, H) with s[0] = h0 and s[t+1] the state after step t."""
    U, W, b = params["U"], params["W"], params["b"]
    T, B = x.shape[:2]
    s = np.zeros((T + 1, B, W.shape[0]))
    s[0] = h0
    for t in range(T):
        a = _input_projection(U, x[t]) + s[t] @ W.T + b  # (B, H)
        keep = mask[t][:, None] > 0
        s[t + 1] = np.where(keep, activation(hidden_activation, a), s[t])
    return s


def loss_and_grads(params, x, y, *, h0=None, truncate=None, mask=None,
                   hidden_activation="tanh", output="softmax", drop=None):
    """Loss (float) and gradients (dict of float64 arrays) and the last state (B, H).

    x: ids (T, B) or floats (T, B, I); y: ids (T, B) for softmax and adaptive, floats
    (T, B, O) otherwise;
    h0: (B, H) or None for zeros; mask: (T, B) of 0/1 or None; truncate: None or int >= 0;
    drop: (T, B, H) output-dropout multipliers or None.
    """
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    U, W, V, c = p["U"], p["W"], p["V"], p["c"]
    x = np.asarray(x)
    if x.ndim == 3:
        x = x.astype(np.float64)
    T, B = x.shape[:2]
    H = W.shape[0]
    h0 = np.zeros((B, H)) if h0 is None else np.asarray(h0, dtype=np.float64)
    mask = np.ones((T, B)) if mask is None else np.asarray(mask, dtype=np.float64)
    k = T if truncate is None else int(truncate)
    drop = np.ones((T, B, H)) if drop is None else np.asarray(drop, dtype=np.float64)

    s = forward(p, x, h0, mask, hidden_activation)  # (T+1, B, H)

    loss = 0.0
    grads = {name: np.zeros_like(v) for name, v in p.items()}
    e_out = []  # dL_t/d(what the output layer reads at t), (B, H)
    for t in range(T):
        f_t = drop[t] * s[t + 1]  # (B, H)
        if output == "adaptive":  # its own reference adds the head's gradients
            l_t, e_t = adaptive.reference_output(p, f_t, y[t], mask[t], grads)
        else:
            l_t, dz = output_loss(output, f_t @ V.T + c, y[t])  # logits (B, O)
            dz = dz * mask[t][:, None]  # dL_t/dz_t
            grads["V"] += dz.T @ f_t
            grads["c"] += dz.sum(axis=0)
            e_t = dz @ V
        loss += float((l_t * mask[t]).sum())
        e_out.append(e_t)

    for t in reversed(range(T)):  # for each output, backwards
        delta = e_out[t] * drop[t]  # dL_t/ds_t, (B, H)
        for j in range(t, max(0, t - k) - 1, -1):  # step t and at most k earlier ones
            m = mask[j][:, None]
            dz = delta * activation_grad(hidden_activation, s[j + 1]) * m  # (B, H)
            grads["W"] += dz.T @ s[j]
            grads["b"] += dz.sum(axis=0)
            if x.ndim == 2:
                np.add.at(grads["U"].T, x[j], dz)  # dU[:, x_j] += dz, repeated ids add up
            else:
                grads["U"] += dz.T @ x[j]
            delta = dz @ W + delta * (1.0 - m)  # dL_t/ds_{j-1}
    return loss, grads, s[T].copy()


def loss_only(params, x, y, *, h0=None, mask=None, hidden_activation="tanh", output="softmax",
              drop=None):
    """The loss alone (full forward, no truncation), in float64."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    x = np.asarray(x)
    if x.ndim == 3:
        x = x.astype(np.float64)
    T, B = x.shape[:2]
    h0 = np.zeros((B, p["W"].shape[0])) if h0 is None else np.asarray(h0, dtype=np.float64)
    mask = np.ones((T, B)) if mask is None else np.asarray(mask, dtype=np.float64)
    s = forward(p, x, h0, mask, hidden_activation)
    total = 0.0
    for t in range(T):
        st = s[t + 1] if drop is None else np.asarray(drop[t], dtype=np.float64) * s[t + 1]
        total += float((_row_loss(p, output, st, y[t]) * mask[t]).sum())
    return total


def truncated_surrogate_loss(params, anchor_states, x, y, *, truncate, mask=None,
                             hidden_activation="tanh", output="softmax"):
    """The objective whose exact gradient truncated BPTT computes.

    Output t's loss is recomputed from the state ``anchor_states[t - truncate]`` (the
    state before step t - truncate, taken from an unperturbed forward pass and held
    fixed), running steps max(0, t - truncate) .. t with `params`. Finite differences of
    this function check a truncated gradient exactly. anchor_states: (T+1, B, H).
    """
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    U, W, b = p["U"], p["W"], p["b"]
    x = np.asarray(x)
    if x.ndim == 3:
        x = x.astype(np.float64)
    T, B = x.shape[:2]
    mask = np.ones((T, B)) if mask is None else np.asarray(mask, dtype=np.float64)
    total = 0.0
    for t in range(T):
        start = max(0, t - truncate)
        h = anchor_states[start]  # held fixed: the gradient stops here
        for j in range(start, t + 1):
            a = _input_projection(U, x[j]) + h @ W.T + b
            h = np.where(mask[j][:, None] > 0, activation(hidden_activation, a), h)
        total += float((_row_loss(p, output, h, y[t]) * mask[t]).sum())
    return total
