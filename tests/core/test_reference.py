"""The clear reference against central differences, for every configuration."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from rnn_gpu import reference

from ..helpers import H, I, O, central_differences, make_problem

T = 6
TRUNCATIONS = (None, 0, 1, 3, T)
CONFIGS = list(itertools.product(reference.ACTIVATIONS, reference.OUTPUTS, TRUNCATIONS,
                                 (False, True), (False, True), (False, True)))


def _params(seed=3):
    rng = np.random.default_rng(seed)
    return {"U": rng.uniform(-.6, .6, (H, I)), "W": rng.uniform(-.6, .6, (H, H)),
            "V": rng.uniform(-.6, .6, (O, H)), "b": rng.uniform(-.3, .3, H),
            "c": rng.uniform(-.3, .3, O)}


def _assert_matches_central_differences(f, p, grads, eps=1e-6):
    """Each gradient in `grads` against central differences of f(p), entry by entry."""
    for name, num in central_differences(f, p, eps).items():
        scale = max(np.abs(num).max(), 1e-12)
        assert np.abs(grads[name] - num).max() / scale < 1e-6, name


@pytest.mark.parametrize("act,out,trunc,dense,masked,with_h0", CONFIGS)
def test_reference_matches_finite_differences(act, out, trunc, dense, masked, with_h0):
    x, y, h0, mask = make_problem(out, dense, masked, with_h0, T=T)
    p = _params()
    kw = dict(hidden_activation=act, output=out)
    loss, grads, _ = reference.loss_and_grads(p, x, y, h0=h0, truncate=trunc, mask=mask, **kw)
    B = x.shape[1]
    h0z = np.zeros((B, H)) if h0 is None else h0
    maskz = np.ones((T, B)) if mask is None else mask
    anchors = reference.forward(p, x, h0z, maskz, act)
    if trunc is None or trunc >= T - 1:
        f = lambda q: reference.loss_only(q, x, y, h0=h0, mask=mask, **kw)  # noqa: E731
    else:
        f = lambda q: reference.truncated_surrogate_loss(  # noqa: E731
            q, anchors, x, y, truncate=trunc, mask=mask, **kw)
    assert loss == pytest.approx(reference.loss_only(p, x, y, h0=h0, mask=mask, **kw), rel=1e-12)
    _assert_matches_central_differences(f, p, grads)


def test_truncation_changes_the_gradient():
    """A truncated gradient really differs from the full one (the test above is not vacuous)."""
    x, y, h0, mask = make_problem("softmax", False, False, False, T=T)
    p = _params()
    _, full, _ = reference.loss_and_grads(p, x, y)
    _, trunc, _ = reference.loss_and_grads(p, x, y, truncate=1)
    assert np.abs(full["W"] - trunc["W"]).max() > 1e-4
    np.testing.assert_allclose(full["V"], trunc["V"])  # the output layer is not truncated


@pytest.mark.parametrize("out", reference.OUTPUTS)
@pytest.mark.parametrize("masked", [False, True])
def test_output_dropout_matches_finite_differences(out, masked):
    x, y, h0, mask = make_problem(out, False, masked, True, T=T)
    B = x.shape[1]
    drop = (np.random.default_rng(5).random((T, B, H)) >= 0.4) / 0.6
    p = _params()
    kw = dict(hidden_activation="tanh", output=out, h0=h0, mask=mask)
    loss, grads, _ = reference.loss_and_grads(p, x, y, drop=drop, **kw)
    assert loss == pytest.approx(reference.loss_only(p, x, y, drop=drop, **kw), rel=1e-12)
    assert loss != pytest.approx(reference.loss_only(p, x, y, **kw), rel=1e-6)  # it does something
    _assert_matches_central_differences(
        lambda q: reference.loss_only(q, x, y, drop=drop, **kw), p, grads)
