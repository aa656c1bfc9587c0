"""The adaptive softmax on stacked and bidirectional features, with masks, loss weights,
an initial state and dropout: the engine's loss and gradients equal the float64
reference's, and the reference's equal central differences."""
from __future__ import annotations

import numpy as np
import pytest

import rnn_gpu

from ..helpers import make_problem, randomize, rel_err
from ..stack_configs import make_extras

SIZES = (6, 5, 23)  # I, H, O
CASES = [  # layers, bidirectional, cutoffs, truncate, dense
    (2, False, (7,), None, False), (2, True, (4, 11), None, True), (1, True, (9, 15, 20), None, False),
    (3, False, (7, 12), 1, False), (2, False, (5,), 0, True),
]


def _model(layers, bi, cutoffs, dtype="float64", backend="numpy"):
    m = rnn_gpu.RNN(*SIZES, num_layers=layers, bidirectional=bi, output="adaptive",
                    cutoffs=cutoffs, div_value=2.0, backend=backend, dtype=dtype, seed=1)
    return randomize(m, scale=0.5)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
@pytest.mark.parametrize("layers,bi,cutoffs,trunc,dense", CASES)
def test_engine_matches_reference(dtype, tol, layers, bi, cutoffs, trunc, dense):
    m = _model(layers, bi, cutoffs, dtype)
    assert m.params["tail0_proj"].shape[1] == (2 if bi else 1) * SIZES[1]  # reads D*H
    x, y, _, mask = make_problem("softmax", dense, True, False, T=6, B=4, sizes=SIZES)
    h0, lm, drop = make_extras(m, 6, 4, True, True, True)
    kw = dict(h0=h0, truncate=trunc, mask=mask, loss_mask=lm, dropout=drop)
    loss, grads, h = m.loss_and_grads(x, y, **kw)
    rloss, rgrads, rh = m.reference_loss_and_grads(x, y, **kw)
    assert loss == pytest.approx(rloss, rel=tol)
    assert set(grads) == set(rgrads) == set(m.params)
    for k in rgrads:
        assert rel_err(np.asarray(grads[k]), rgrads[k]) < tol, k
    assert rel_err(np.asarray(h), rh) < tol


@pytest.mark.parametrize("layers,bi,cutoffs,trunc,dense", CASES[:3])
def test_reference_matches_central_differences(layers, bi, cutoffs, trunc, dense):
    m = _model(layers, bi, cutoffs)
    x, y, _, mask = make_problem("softmax", dense, True, False, T=5, B=3, sizes=SIZES)
    _, lm, drop = make_extras(m, 5, 3, True, False, True)
    errs = rnn_gpu.gradcheck(m, x, y, mask=mask, loss_mask=lm, dropout=drop, max_checks=6)
    assert max(errs.values()) < 1e-6, errs
