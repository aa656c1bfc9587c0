"""A sample of the stack configurations for the engine and reference tests: every level of
every factor appears, the full product (thousands of cases) is not run."""
from __future__ import annotations

import numpy as np

from rnn_gpu import reference

FACTORS = {
    "num_layers": (1, 2, 3),
    "bidirectional": (False, True),
    "act": reference.ACTIVATIONS,
    "out": reference.OUTPUTS,
    "trunc": (None, 0, 1, 3),
    "dense": (False, True),
    "masked": (False, True),
    "loss_mask": (False, True),
    "with_h0": (False, True),
    "dropout": (False, True),
}


def sample(n: int, seed: int) -> list[tuple]:
    """n configurations: each factor's levels repeated to n and shuffled independently, so
    each level appears about n / len(levels) times. A bidirectional case has no
    truncation (truncation is defined for unidirectional models)."""
    rng = np.random.default_rng(seed)
    cols = []
    for levels in FACTORS.values():
        col = [levels[i % len(levels)] for i in range(n)]
        rng.shuffle(col)
        cols.append(col)
    rows = []
    for row in zip(*cols):
        cfg = dict(zip(FACTORS, row))
        if cfg["bidirectional"]:
            cfg["trunc"] = None
        rows.append(tuple(cfg.values()))
    return rows


def make_extras(model, T: int, B: int, loss_mask: bool, with_h0: bool, dropout: bool,
                seed: int = 4):
    """h0, loss weights and dropout multipliers of this model's layouts (or None)."""
    rng = np.random.default_rng(seed)
    h0 = rng.uniform(-0.5, 0.5, model.state_shape(B)) if with_h0 else None
    if with_h0 and getattr(model, "cell", "elman") == "lstm":  # an LSTM's state (h, c)
        h0 = (h0, rng.uniform(-1.0, 1.0, model.state_shape(B)))
    lm = None
    if loss_mask:
        lm = rng.uniform(0.0, 2.0, (T, B))
        lm[rng.random((T, B)) < 0.3] = 0.0  # some steps run without a loss
    drop = None
    if dropout:
        drop = (rng.random(model.dropout_shape(T, B)) >= 0.3) / 0.7
    return h0, lm, drop


CELL_FACTORS = {
    "cell": ("gru", "lstm"),
    "num_layers": (1, 2),
    "bidirectional": (False, True),
    "out": reference.OUTPUTS,
    "trunc": (None, 0, 2),
    "dense": (False, True),
    "masked": (False, True),
    "loss_mask": (False, True),
    "with_h0": (False, True),
    "dropout": (False, True),
}


def cell_sample(n: int, seed: int) -> list[tuple]:
    """n configurations of the gated cells, each factor's levels balanced as in
    :func:`sample` (no truncation with a reverse direction)."""
    rng = np.random.default_rng(seed)
    cols = []
    for levels in CELL_FACTORS.values():
        col = [levels[i % len(levels)] for i in range(n)]
        rng.shuffle(col)
        cols.append(col)
    rows = []
    for row in zip(*cols):
        cfg = dict(zip(CELL_FACTORS, row))
        if cfg["bidirectional"]:
            cfg["trunc"] = None
        rows.append(tuple(cfg.values()))
    return rows


def layered_and_per_output_gradients(model, x, y, mask, h0, lm, dr):
    """The reference's two ways of writing full BPTT for a unidirectional stack (per
    output through all layers, and layer by layer), run on the same forward pass: the
    two gradient dicts, the output layer's V and c left out."""
    T = x.shape[0]
    p, xx, hh, mm, w, dd = reference.prepare_inputs(
        {k: np.array(v) for k, v in model.params.items()}, x, h0, mask, dr, lm)
    h, c = hh if isinstance(hh, tuple) else (hh, None)
    runs, feats = reference._forward_runs(p, xx, h, c, mm, "tanh", dd)
    _, dz = zip(*(reference.output_loss("softmax", feats[-1][t] @ p["V"].T + p["c"], y[t])
                  for t in range(T)))
    e_out = [(dz[t] * w[t][:, None]) @ p["V"] for t in range(T)]  # error on the top features
    g1 = {k: np.zeros_like(v) for k, v in p.items()}
    g2 = {k: np.zeros_like(v) for k, v in p.items()}
    reference._backward_per_output(p, g1, xx, runs, feats, mm, dd, e_out, T, "tanh")
    reference._backward_layered(p, g2, xx, runs, feats, mm, dd, e_out, "tanh")
    drop = ("V", "c")
    return ({k: v for k, v in g1.items() if k not in drop},
            {k: v for k, v in g2.items() if k not in drop})
