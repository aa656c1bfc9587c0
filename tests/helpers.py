"""Random problems shared by the engine tests."""
from __future__ import annotations

import numpy as np

I, H, O = 5, 4, 3


def make_problem(output: str, dense: bool, masked: bool, with_h0: bool, T: int = 6, B: int = 3,
                 seed: int = 0, sizes=(I, H, O)):
    """x, y, h0, mask for a model of `sizes` (I, H, O); masked problems pad the ends."""
    i, h, o = sizes
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, B, i)) if dense else rng.integers(0, i, size=(T, B))
    if output == "softmax":
        y = rng.integers(0, o, size=(T, B))
    elif output == "sigmoid":
        y = rng.uniform(0, 1, size=(T, B, o))
    else:
        y = rng.normal(size=(T, B, o))
    h0 = rng.uniform(-0.5, 0.5, size=(B, h)) if with_h0 else None
    mask = None
    if masked:  # variable lengths, one hole in the middle too
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T
        mask = (np.arange(T)[:, None] < lengths[None, :]).astype(np.float64)
        mask[T // 2, 0] = 0
    return x, y, h0, mask


def randomize(model, seed: int = 1, scale: float = 0.6):
    """Give the model non-zero biases and larger weights (so every term is exercised)."""
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        v[...] = model.backend.asarray(rng.uniform(-scale, scale, size=v.shape), dtype=model.dtype)
    return model


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(np.abs(b).max(initial=0.0), 1e-30)
    return float(np.abs(a - b).max(initial=0.0) / scale)
