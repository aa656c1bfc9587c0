"""Gradient check: analytic BPTT gradients against central differences, in float64.

The seed tutorial's check, done right: float64 throughout (a float32 model is checked
through a float64 copy of itself), central differences, every parameter restored after
it is nudged, and a relative error that does not divide by zero where a gradient
vanishes. With truncation the analytic gradient is not the gradient of the loss but of
the truncated objective (each output's loss with the state `truncate`+1 steps back held
fixed); the check differentiates that objective, so truncated gradients are checked
exactly too.
"""
from __future__ import annotations

import math

import numpy as np

from . import reference
from .backend import to_numpy


def gradcheck(model, x, y, h0=None, truncate=None, mask=None, *, loss_mask=None,
              dropout=None, eps: float = 1e-6, max_checks: int | None = None,
              seed: int = 0) -> dict[str, float]:
    """Max relative error per parameter between the model's gradients and finite differences.

    The error of a parameter is max_i |a_i - n_i| / max_i max(|a_i|, |n_i|) over the entries
    checked (analytic a, numeric n), a norm-wise relative error that stays meaningful where
    single entries are zero. max_checks: check at most this many randomly chosen entries
    per parameter (None: all). Returns {name: err} for every parameter ("U", "W", "V",
    "b", "c", and a stack's "U1", "W_reverse", ...). Values near 1e-7 or below mean the
    gradients are right; 1e-2 or above mean a bug.
    """
    m64 = model if model.dtype == np.float64 else model.to(model.backend, dtype="float64")
    _, grads, _ = m64.loss_and_grads(x, y, h0=h0, truncate=truncate, mask=mask,
                                     loss_mask=loss_mask, dropout=dropout)
    analytic = {k: to_numpy(v).astype(np.float64, copy=True) for k, v in grads.items()}

    xh, yh = to_numpy(x), to_numpy(y)
    if h0 is None:
        h0h = None
    elif isinstance(h0, (tuple, list)):  # an LSTM's (h, c)
        h0h = tuple(to_numpy(a).astype(np.float64) for a in h0)
    else:
        h0h = to_numpy(h0).astype(np.float64)
    mh = None if mask is None else to_numpy(mask).astype(np.float64)
    lmh = None if loss_mask is None else to_numpy(loss_mask).astype(np.float64)
    dh = None if dropout is None else to_numpy(dropout).astype(np.float64)
    T = xh.shape[0]
    if truncate is None or truncate >= T - 1:
        objective = lambda: m64.loss(x, y, h0=h0, mask=mask, loss_mask=loss_mask,  # noqa: E731
                                     dropout=dropout)[0]
    else:
        p = {k: to_numpy(v) for k, v in m64.params.items()}
        pp, xx, hh, mm, _, dd = reference.prepare_inputs(p, xh, h0h, mh, dh, lmh)
        states, _ = reference.forward_stack(pp, xx, hh, mm, m64.hidden_activation, dd)
        anchors = [layer[0] for layer in states]  # each layer's states (h, c), held fixed

        def objective():
            return reference.truncated_surrogate_loss(
                {k: to_numpy(v) for k, v in m64.params.items()}, anchors, xh, yh,
                truncate=truncate, mask=mh, hidden_activation=m64.hidden_activation,
                output=m64.output, drop=dh, loss_mask=lmh)

    rng = np.random.default_rng(seed)
    errors = {}
    for name, param in m64.params.items():
        host = to_numpy(param)
        n = host.size
        idx = np.arange(n) if max_checks is None or max_checks >= n else \
            rng.choice(n, size=max_checks, replace=False)
        num = np.empty(len(idx))
        for j, i in enumerate(idx):
            at = np.unravel_index(int(i), host.shape)  # works for any memory layout
            old = float(param[at])
            param[at] = old + eps
            lp = objective()
            param[at] = old - eps
            lm = objective()
            param[at] = old
            num[j] = (lp - lm) / (2 * eps)
        a = analytic[name].reshape(-1)[idx]  # C-order flat index, as unravel_index
        scale = max(np.abs(a).max(initial=0.0), np.abs(num).max(initial=0.0))
        errors[name] = 0.0 if scale == 0 else float(np.abs(a - num).max() / scale)
    return errors


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: a normwise relative error that tolerates zeros in b (inf
    where the shapes differ or `a` holds a NaN or inf). Either backend's arrays."""
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    if a.shape != b.shape or not np.isfinite(a).all():
        return math.inf
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-30)
    return float(np.abs(a - b).max(initial=0.0) / scale)
