"""The fast engine against the clear reference, on the NumPy backend."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu import reference

from ..helpers import H, I, O, make_problem, randomize, rel_err

T = 6
CONFIGS = list(itertools.product(reference.ACTIVATIONS, reference.OUTPUTS, (None, 0, 1, 3, T),
                                 (False, True), (False, True), (False, True)))
TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act,out,trunc,dense,masked,with_h0", CONFIGS)
def test_engine_matches_reference(dtype, act, out, trunc, dense, masked, with_h0):
    m = randomize(rnn_gpu.RNN(I, H, O, backend="numpy", dtype=dtype, hidden_activation=act,
                              output=out))
    x, y, h0, mask = make_problem(out, dense, masked, with_h0, T=T)
    loss, grads, h_last = m.loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask)
    rloss, rgrads, rh = m.reference_loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask)
    tol = TOL[dtype]
    assert loss == pytest.approx(rloss, rel=tol)
    for k in rnn_gpu.model.PARAM_NAMES:
        assert grads[k].dtype == np.dtype(dtype)
        assert rel_err(grads[k], rgrads[k]) < tol, k
    assert rel_err(h_last, rh) < tol


def test_larger_problem_float32_and_float64():
    """Sizes with more than one of everything, repeated token ids, a longer sequence."""
    sizes = (37, 29, 41)
    for dtype in ("float64", "float32"):
        m = randomize(rnn_gpu.RNN(*sizes, backend="numpy", dtype=dtype), scale=0.3)
        x, y, h0, mask = make_problem("softmax", False, True, True, T=23, B=7, sizes=sizes)
        for trunc in (None, 4):
            loss, g, _ = m.loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask)
            rl, rg, _ = m.reference_loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask)
            assert loss == pytest.approx(rl, rel=TOL[dtype])
            for k in g:
                assert rel_err(g[k], rg[k]) < TOL[dtype], (dtype, trunc, k)


@pytest.mark.parametrize("act", reference.ACTIVATIONS)
def test_truncate_none_equals_truncate_t_minus_1(act):
    m = randomize(rnn_gpu.RNN(I, H, O, backend="numpy", dtype="float64", hidden_activation=act))
    x, y, h0, _ = make_problem("softmax", False, False, True, T=T)
    full = {k: v.copy() for k, v in m.loss_and_grads(x, y, h0=h0)[1].items()}
    for k_trunc in (T - 1, T, 10 * T):
        g = m.loss_and_grads(x, y, h0=h0, truncate=k_trunc)[1]
        for k in g:
            np.testing.assert_array_equal(g[k], full[k])
    g = m.loss_and_grads(x, y, h0=h0, truncate=T - 2)[1]
    assert np.abs(g["W"] - full["W"]).max() > 0


def test_chunked_run_equals_hand_stitched():
    """Chunks with carried state = the same chunks done by hand with the reference."""
    m = randomize(rnn_gpu.RNN(I, H, O, backend="numpy", dtype="float64"))
    rng = np.random.default_rng(5)
    x = rng.integers(0, I, size=(12, 2))
    y = rng.integers(0, O, size=(12, 2))
    h = None
    total, acc = 0.0, {k: np.zeros_like(v) for k, v in m.params.items()}
    for s in range(0, 12, 4):
        loss, g, h = m.loss_and_grads(x[s:s + 4], y[s:s + 4], h0=h)
        total += loss
        for k in acc:
            acc[k] += g[k]
    # by hand: the forward over all 12 steps gives the chunk boundary states
    p = {k: v.copy() for k, v in m.params.items()}
    states = reference.forward(p, x, np.zeros((2, H)), np.ones((12, 2)), "tanh")
    want_total, want = 0.0, {k: np.zeros_like(v) for k, v in p.items()}
    for s in range(0, 12, 4):
        loss, g, h_end = reference.loss_and_grads(p, x[s:s + 4], y[s:s + 4], h0=states[s])
        want_total += loss
        for k in want:
            want[k] += g[k]
        np.testing.assert_allclose(h_end, states[s + 4], rtol=1e-12)
    assert total == pytest.approx(want_total, rel=1e-12)
    for k in acc:
        assert rel_err(acc[k], want[k]) < 1e-10
    # and the full-sequence loss is the same number: chunking only cuts the gradient
    assert total == pytest.approx(m.loss(x, y)[0], rel=1e-12)


def test_large_logits_do_not_overflow():
    m = rnn_gpu.RNN(I, H, O, backend="numpy", dtype="float32")
    m.params["V"][...] = 3e4  # logits around 1e5: exp would overflow without the max shift
    m.params["V"][0] = -3e4
    x, y, _, _ = make_problem("softmax", False, False, False, T=4)
    loss, g, _ = m.loss_and_grads(x, y)
    assert np.isfinite(loss)
    assert all(np.isfinite(v).all() for v in g.values())
    rl, rg, _ = m.reference_loss_and_grads(x, y)
    assert loss == pytest.approx(rl, rel=1e-4)


def test_mask_skips_steps():
    """A masked tail gives the same loss, gradients and final state as the unpadded run."""
    m = randomize(rnn_gpu.RNN(I, H, O, backend="numpy", dtype="float64"))
    rng = np.random.default_rng(2)
    x = rng.integers(0, I, size=(7, 1))
    y = rng.integers(0, O, size=(7, 1))
    mask = np.ones((7, 1))
    mask[4:] = 0
    l1, g1, h1 = m.loss_and_grads(x, y, mask=mask)
    g1 = {k: v.copy() for k, v in g1.items()}
    l2, g2, h2 = m.loss_and_grads(x[:4], y[:4])
    assert l1 == pytest.approx(l2, rel=1e-13)
    np.testing.assert_allclose(h1, h2, rtol=1e-13)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-12, atol=1e-15)


def test_gradcheck_reports_small_errors_and_catches_a_wrong_gradient(monkeypatch):
    m = randomize(rnn_gpu.RNN(I, H, O, backend="numpy", dtype="float32"))
    x, y, h0, mask = make_problem("softmax", False, True, True, T=T)
    errs = rnn_gpu.gradcheck(m, x, y, h0=h0, mask=mask)
    assert set(errs) == {"U", "W", "V", "b", "c"}
    assert max(errs.values()) < 1e-6
    assert m.dtype == np.float32  # the model it was given is untouched
    errs = rnn_gpu.gradcheck(m, x, y, truncate=1, max_checks=5)
    assert max(errs.values()) < 1e-6
    # a broken delta update must show up
    from rnn_gpu.ops import NumpyOps, numpy_ops

    def wrong(carry, e, s, keep, dz, act):
        numpy_ops.delta_step(carry, e, s, keep, dz, act)
        dz *= 1.1
    monkeypatch.setattr(NumpyOps, "delta_step", staticmethod(wrong))  # what backward_step calls
    errs = rnn_gpu.gradcheck(m, x, y)
    assert errs["W"] > 1e-3


def test_buffers_are_reused_and_results_repeat():
    m = rnn_gpu.RNN(11, 8, 11, backend="numpy")
    x, y, _, _ = make_problem("softmax", False, False, False, T=5, sizes=(11, 8, 11))
    l1, g1, _ = m.loss_and_grads(x, y)
    first = {k: v.copy() for k, v in g1.items()}
    l2, g2, _ = m.loss_and_grads(x, y)
    assert l1 == l2
    assert all(g1[k] is g2[k] for k in g1)
    for k in g1:
        np.testing.assert_array_equal(g2[k], first[k])


def test_seeded_init_is_reproducible_and_in_range():
    a = rnn_gpu.RNN(7, 16, 5, backend="numpy", seed=3)
    b = rnn_gpu.RNN(7, 16, 5, backend="numpy", seed=3)
    c = rnn_gpu.RNN(7, 16, 5, backend="numpy", seed=4)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert not np.array_equal(a.params["W"], c.params["W"])
    assert np.abs(a.params["W"]).max() <= 1 / 4
    assert not a.params["b"].any() and not a.params["c"].any()
    assert a.params["U"].dtype == np.float32
    assert rnn_gpu.RNN(7, 16, 5, backend="numpy", dtype="float64").params["U"].dtype == np.float64


def test_forward_and_step_agree_with_loss():
    m = randomize(rnn_gpu.RNN(I, H, O, backend="numpy", dtype="float64"))
    x, y, h0, _ = make_problem("softmax", False, False, True, T=5)
    logits, h_last = m.forward(x, h0=h0)
    h = h0
    for t in range(5):
        lt, h = m.step(x[t], h)
        np.testing.assert_allclose(lt, logits[t], rtol=1e-12)
    np.testing.assert_allclose(h, h_last, rtol=1e-12)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, y[..., None], -1).sum()
    assert m.loss(x, y, h0=h0)[0] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("out,trunc,masked", [("softmax", None, False), ("softmax", 2, True),
                                              ("sigmoid", None, True), ("linear", 1, False)])
def test_output_dropout_matches_reference(dtype, out, trunc, masked):
    m = randomize(rnn_gpu.RNN(I, H, O, backend="numpy", dtype=dtype, output=out))
    x, y, h0, mask = make_problem(out, False, masked, True, T=T)
    drop = (np.random.default_rng(1).random((T, x.shape[1], H)) >= 0.3) / 0.7
    loss, grads, h = m.loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask, dropout=drop)
    grads = {k: v.copy() for k, v in grads.items()}
    rl, rg, rh = m.reference_loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask, dropout=drop)
    assert loss == pytest.approx(rl, rel=TOL[dtype])
    for k in grads:
        assert rel_err(grads[k], rg[k]) < TOL[dtype], k
    assert rel_err(h, rh) < TOL[dtype]
    # multipliers of one are no dropout; the same workspace then gives the plain result
    l1, g1, _ = m.loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask,
                                 dropout=np.ones_like(drop))
    l0, g0, _ = m.loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask)
    assert l1 == pytest.approx(l0, rel=1e-12) and l1 != pytest.approx(loss, rel=1e-3)
