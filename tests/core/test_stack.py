"""Stacked and bidirectional models, per-token loss weights and inter-layer dropout: the
reference against central differences, the engine against the reference, the public
layouts, and PyTorch's nn.RNN as an outside oracle."""
from __future__ import annotations

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu import reference

from ..helpers import central_differences, make_problem, randomize, rel_err
from ..stack_configs import layered_and_per_output_gradients, make_extras, sample

SIZES = (5, 7, 3)  # I, H, O: not multiples of anything
T = 6
TOL = {"float64": 1e-10, "float32": 1e-4}


def _model(num_layers, bidirectional, dtype="float64", act="tanh", out="softmax", sizes=SIZES,
           scale=0.6):
    return randomize(rnn_gpu.RNN(*sizes, num_layers=num_layers, bidirectional=bidirectional,
                                 backend="numpy", dtype=dtype, hidden_activation=act,
                                 output=out), scale=scale)


def _central_differences(f, p, eps=1e-6):
    return central_differences(f, p, eps)


# -------------------------------------------------------------------------------------
# The reference against central differences


@pytest.mark.parametrize("layers,bi,act,out,trunc,dense,masked,lmask,with_h0,drop", sample(16, 1))
def test_reference_matches_finite_differences(layers, bi, act, out, trunc, dense, masked, lmask,
                                              with_h0, drop):
    m = _model(layers, bi, act=act, out=out)
    x, y, _, mask = make_problem(out, dense, masked, False, T=T, sizes=SIZES)
    h0, lm, dr = make_extras(m, T, x.shape[1], lmask, with_h0, drop)
    p = {k: np.array(v, dtype=np.float64) for k, v in m.params.items()}
    kw = dict(hidden_activation=act, output=out, mask=mask, drop=dr, loss_mask=lm)
    loss, grads, _ = reference.loss_and_grads(p, x, y, h0=h0, truncate=trunc, **kw)
    assert loss == pytest.approx(reference.loss_only(p, x, y, h0=h0, **kw), rel=1e-12)
    if trunc is None:
        f = lambda q: reference.loss_only(q, x, y, h0=h0, **kw)  # noqa: E731
    else:
        pp, xx, hh, mm, _, dd = reference.prepare_inputs(p, x, h0, mask, dr, lm)
        states, _ = reference.forward_stack(pp, xx, hh, mm, act, dd)
        anchors = [layer[0] for layer in states]
        f = lambda q: reference.truncated_surrogate_loss(  # noqa: E731
            q, anchors, x, y, truncate=trunc, **kw)
    num = _central_differences(f, p)
    for name in p:
        scale = max(np.abs(num[name]).max(), 1e-12)
        assert np.abs(grads[name] - num[name]).max() / scale < 1e-6, name


def test_truncation_stops_in_every_layer():
    """The surrogate of a truncated stack holds every layer's state fixed: its gradient
    differs from the full one in the lower layers too."""
    m = _model(3, False)
    x, y, _, _ = make_problem("softmax", False, False, False, T=T, sizes=SIZES)
    p = {k: np.array(v) for k, v in m.params.items()}
    _, full, _ = reference.loss_and_grads(p, x, y)
    _, trunc, _ = reference.loss_and_grads(p, x, y, truncate=1)
    for k in ("W", "W1", "W2", "U", "U1"):
        assert np.abs(full[k] - trunc[k]).max() > 1e-6, k
    np.testing.assert_allclose(full["V"], trunc["V"])
    _, same, _ = reference.loss_and_grads(p, x, y, truncate=T - 1)
    for k in full:
        np.testing.assert_allclose(same[k], full[k], rtol=1e-12, atol=1e-14)


def test_layered_and_per_output_backward_agree():
    """The two ways the reference writes full BPTT (per output through all layers, and
    layer by layer) give the same gradients for a unidirectional stack."""
    m = _model(3, False)
    x, y, _, mask = make_problem("softmax", True, True, False, T=T, sizes=SIZES)
    h0, lm, dr = make_extras(m, T, x.shape[1], True, True, True)
    g1, g2 = layered_and_per_output_gradients(m, x, y, mask, h0, lm, dr)
    for k in g1:
        assert rel_err(g1[k], g2[k]) < 1e-12, k


# -------------------------------------------------------------------------------------
# The engine against the reference


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("layers,bi,act,out,trunc,dense,masked,lmask,with_h0,drop", sample(40, 2))
def test_engine_matches_reference(dtype, layers, bi, act, out, trunc, dense, masked, lmask,
                                  with_h0, drop):
    m = _model(layers, bi, dtype=dtype, act=act, out=out)
    x, y, _, mask = make_problem(out, dense, masked, False, T=T, sizes=SIZES)
    h0, lm, dr = make_extras(m, T, x.shape[1], lmask, with_h0, drop)
    kw = dict(h0=h0, truncate=trunc, mask=mask, loss_mask=lm, dropout=dr)
    loss, grads, h_last = m.loss_and_grads(x, y, **kw)
    rloss, rgrads, rh = m.reference_loss_and_grads(x, y, **kw)
    tol = TOL[dtype]
    assert loss == pytest.approx(rloss, rel=tol)
    assert set(grads) == set(m.param_names) == set(rgrads)
    for k in grads:
        assert grads[k].dtype == np.dtype(dtype) and grads[k].shape == m.params[k].shape
        assert rel_err(grads[k], rgrads[k]) < tol, k
    assert h_last.shape == m.state_shape(x.shape[1])
    assert rel_err(h_last, rh) < tol


@pytest.mark.parametrize("layers,bi,trunc", [(2, True, None), (3, False, 4), (3, False, None)])
def test_engine_larger_sizes(layers, bi, trunc):
    """More than one of everything, repeated ids, a longer sequence, both dtypes."""
    sizes = (37, 29, 41)
    for dtype in ("float64", "float32"):
        m = _model(layers, bi, dtype=dtype, sizes=sizes, scale=0.3)
        x, y, _, mask = make_problem("softmax", False, True, False, T=23, B=7, sizes=sizes)
        h0, lm, dr = make_extras(m, 23, 7, True, True, True)
        kw = dict(h0=h0, truncate=trunc, mask=mask, loss_mask=lm, dropout=dr)
        loss, g, _ = m.loss_and_grads(x, y, **kw)
        rl, rg, _ = m.reference_loss_and_grads(x, y, **kw)
        assert loss == pytest.approx(rl, rel=TOL[dtype])
        for k in g:
            assert rel_err(g[k], rg[k]) < TOL[dtype], (dtype, k)


@pytest.mark.parametrize("layers,bi,trunc", [(2, False, None), (2, True, None), (3, False, 1)])
def test_gradcheck_covers_stacks(layers, bi, trunc):
    m = _model(layers, bi)
    x, y, _, mask = make_problem("softmax", False, True, False, T=5, sizes=SIZES)
    h0, lm, dr = make_extras(m, 5, x.shape[1], True, True, True)
    errs = rnn_gpu.gradcheck(m, x, y, h0=h0, truncate=trunc, mask=mask, loss_mask=lm,
                             dropout=dr, max_checks=12)
    assert set(errs) == set(m.param_names)
    assert max(errs.values()) < 1e-6, errs


# -------------------------------------------------------------------------------------
# Semantics


def test_one_layer_model_is_todays():
    """Same keys, same init stream, same config keys plus the new options at defaults."""
    m = rnn_gpu.RNN(5, 7, 3, backend="numpy", dtype="float64", seed=11)
    assert set(m.params) == set(rnn_gpu.model.PARAM_NAMES) == set(m.param_names)
    rng = np.random.default_rng(11)
    r = 1 / np.sqrt(7)
    for k, shape in (("U", (7, 5)), ("W", (7, 7)), ("V", (3, 7))):
        np.testing.assert_array_equal(m.params[k], rng.uniform(-r, r, shape))
    assert m.params["U"].T.flags.c_contiguous
    assert m.config["num_layers"] == 1 and m.config["bidirectional"] is False
    assert m.state_shape(4) == (4, 7) and m.dropout_shape(6, 4) == (6, 4, 7)


def test_stack_parameters_and_init():
    m = rnn_gpu.RNN(5, 7, 3, num_layers=3, bidirectional=True, backend="numpy", seed=2)
    want = {"U": (7, 5), "W": (7, 7), "b": (7,), "V": (3, 14), "c": (3,),
            "U_reverse": (7, 5), "W_reverse": (7, 7), "b_reverse": (7,)}
    for l in (1, 2):
        for sfx in ("", "_reverse"):
            want.update({f"U{l}{sfx}": (7, 14), f"W{l}{sfx}": (7, 7), f"b{l}{sfx}": (7,)})
    assert {k: tuple(v.shape) for k, v in m.params.items()} == want
    one = rnn_gpu.RNN(5, 7, 3, backend="numpy", seed=2)
    for k in ("U", "W"):  # the stream starts as the one-layer model's
        np.testing.assert_array_equal(m.params[k], one.params[k])
    assert all(not m.params[k].any() for k in m.params if k[0] in "bc")
    assert m.state_shape(4) == (6, 4, 7) and m.dropout_shape(6, 4) == (3, 6, 4, 14)
    m2 = rnn_gpu.RNN.from_config(m.config, backend="numpy",
                                 params={k: np.array(v) for k, v in m.params.items()})
    for k in m.params:
        np.testing.assert_array_equal(m2.params[k], m.params[k])
    c = m.config
    del c["num_layers"], c["bidirectional"]  # records of format 1: a one-layer model
    assert rnn_gpu.RNN.from_config(c, backend="numpy").param_names == rnn_gpu.model.PARAM_NAMES


def test_reverse_direction_reads_the_sequence_backwards():
    """A 1-layer bidirectional model whose forward half is zeroed out: its output is the
    reverse direction's, which equals a forward model run on the time-reversed input."""
    bi = _model(1, True)
    uni = rnn_gpu.RNN(*SIZES, backend="numpy", dtype="float64")
    H = SIZES[1]
    for k in ("U", "W", "b"):
        uni.params[k][...] = bi.params[k + "_reverse"]
    uni.params["V"][...] = bi.params["V"][:, H:]
    uni.params["c"][...] = bi.params["c"]
    bi.params["V"][:, :H] = 0
    x, _, _, _ = make_problem("softmax", False, False, False, T=T, sizes=SIZES)
    zb, hb = bi.forward(x)
    zu, hu = uni.forward(x[::-1].copy())
    np.testing.assert_allclose(zb, zu[::-1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hb[1], hu, rtol=1e-12)


@pytest.mark.parametrize("layers,bi", [(2, True), (3, False)])
def test_end_padding_is_packed_sequence_semantics(layers, bi):
    """A sequence padded at the end (mask 0) gives what it gives alone: the reverse
    direction starts at its last real step."""
    m = _model(layers, bi)
    rng = np.random.default_rng(8)
    x = rng.integers(0, SIZES[0], size=(T, 2))
    y = rng.integers(0, SIZES[2], size=(T, 2))
    mask = np.ones((T, 2))
    mask[4:, 1] = 0
    loss, g, h = m.loss_and_grads(x, y, mask=mask)
    g = {k: v.copy() for k, v in g.items()}
    l0, g0, h0 = m.loss_and_grads(x[:, :1], y[:, :1])
    g0 = {k: v.copy() for k, v in g0.items()}
    l1, g1, h1 = m.loss_and_grads(x[:4, 1:], y[:4, 1:])
    assert loss == pytest.approx(l0 + l1, rel=1e-12)
    for k in g:
        assert rel_err(g[k], g0[k] + g1[k]) < 1e-12, k
    np.testing.assert_allclose(h[:, 1], h1[:, 0], rtol=1e-12)


def test_loss_mask_weights_the_loss_and_keeps_the_step():
    m = _model(2, False)
    x, y, _, _ = make_problem("softmax", False, False, False, T=T, sizes=SIZES)
    B = x.shape[1]
    last = np.zeros((T, B))
    last[-1] = 1.0  # many-to-one: the loss at the last step only
    loss, g, h = m.loss_and_grads(x, y, loss_mask=last)
    full_h = m.forward(x)[1]
    np.testing.assert_allclose(h, full_h, rtol=1e-13)  # every step ran
    tail = m.loss(x, y, loss_mask=last)[0]
    z = m.log_prob(x)
    assert loss == pytest.approx(tail, rel=1e-13)
    assert loss == pytest.approx(-z[-1][np.arange(B), y[-1]].sum(), rel=1e-12)
    l2 = m.loss_and_grads(x, y, loss_mask=2.5 * last)[0]
    assert l2 == pytest.approx(2.5 * loss, rel=1e-13)


def test_log_prob_is_normalised():
    m = _model(2, True)
    x, y, _, _ = make_problem("softmax", False, False, False, T=T, sizes=SIZES)
    lp = m.log_prob(x)
    assert lp.shape == (T, x.shape[1], SIZES[2])
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-12)
    assert -lp[np.arange(T)[:, None], np.arange(x.shape[1]), y].sum() == pytest.approx(
        m.loss(x, y)[0], rel=1e-12)
    with pytest.raises(ValueError, match="output: log_prob needs output='softmax'"):
        _model(1, False, out="linear").log_prob(x)


def test_dropout_multiplies_every_layer_output():
    m = _model(2, True)
    x, y, _, _ = make_problem("softmax", False, False, False, T=T, sizes=SIZES)
    B = x.shape[1]
    ones = np.ones(m.dropout_shape(T, B))
    base = m.loss(x, y)[0]
    assert m.loss(x, y, dropout=ones)[0] == pytest.approx(base, rel=1e-14)
    for layer in (0, 1):
        d = ones.copy()
        d[layer, 2] = 0.0
        assert m.loss(x, y, dropout=d)[0] != pytest.approx(base, rel=1e-6), layer
    h_drop = m.loss_and_grads(x, y, dropout=(np.random.default_rng(0).random(ones.shape) > .5) * 2.)[2]
    np.testing.assert_allclose(h_drop[0], m.forward(x)[1][0])  # layer 0's recurrence undropped


def test_step_and_chunks_carry_the_stack_state():
    m = _model(3, False)
    x, _, _, _ = make_problem("softmax", False, False, False, T=T, sizes=SIZES)
    z, h = m.forward(x)
    hs = None
    for t in range(T):
        zt, hs = m.step(x[t], hs)
        np.testing.assert_allclose(zt, z[t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hs, h, rtol=1e-12)


def test_to_and_float32_keep_the_stack():
    m = _model(2, True)
    m32 = m.to("numpy", dtype="float32")
    assert m32.num_layers == 2 and m32.bidirectional and m32.dtype == np.float32
    for k in m.params:
        np.testing.assert_allclose(m32.params[k], m.params[k], rtol=1e-6)


# -------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("kw,match", [
    (dict(num_layers=0), r"num_layers: expected a positive integer, got 0"),
    (dict(num_layers=1.5), r"num_layers: expected a positive integer"),
    (dict(bidirectional="yes"), r"bidirectional: expected True or False, got 'yes'"),
])
def test_bad_stack_options(kw, match):
    with pytest.raises(ValueError, match=match):
        rnn_gpu.RNN(*SIZES, backend="numpy", **kw)


def test_bad_stack_inputs():
    m = _model(2, True)
    x, y, _, _ = make_problem("softmax", False, False, False, T=T, sizes=SIZES)
    B = x.shape[1]
    with pytest.raises(ValueError, match=r"h0: expected floats of shape \(4, 3, 7\)"):
        m.loss_and_grads(x, y, h0=np.zeros((B, 7)))
    with pytest.raises(ValueError, match=r"dropout: expected float multipliers of shape "
                                         r"\(2, 6, 3, 14\)"):
        m.loss_and_grads(x, y, dropout=np.ones((T, B, 7)))
    with pytest.raises(ValueError, match=r"loss_mask: expected float weights of shape \(6, 3\)"):
        m.loss_and_grads(x, y, loss_mask=np.ones((T, B + 1)))
    with pytest.raises(ValueError, match=r"loss_mask: expected finite weights >= 0"):
        m.loss_and_grads(x, y, loss_mask=-np.ones((T, B)))
    with pytest.raises(ValueError, match="truncate: truncation is defined for unidirectional"):
        m.loss_and_grads(x, y, truncate=2)
    with pytest.raises(ValueError, match="truncate: truncation is defined for unidirectional"):
        m.reference_loss_and_grads(x, y, truncate=2)
    with pytest.raises(ValueError, match=r"params: missing 'U1_reverse'"):
        m.load_params({k: v for k, v in m.params.items() if k != "U1_reverse"})
    with pytest.raises(ValueError, match=r"params\['U1'\]: expected shape \(7, 14\)"):
        m.load_params({**m.params, "U1": np.zeros((7, 7))})


# -------------------------------------------------------------------------------------
# PyTorch as an outside oracle


@pytest.mark.parametrize("layers,bi", [(2, True), (3, False), (1, True)])
def test_matches_pytorch_rnn(layers, bi):
    torch = pytest.importorskip("torch")
    I, H, O = SIZES
    m = _model(layers, bi, scale=0.4)
    rnn = torch.nn.RNN(I, H, num_layers=layers, bidirectional=bi, dtype=torch.float64)
    lin = torch.nn.Linear(H * (2 if bi else 1), O, dtype=torch.float64)
    with torch.no_grad():
        for l in range(layers):
            for d, sfx in enumerate(("", "_reverse")[:2 if bi else 1]):
                getattr(rnn, f"weight_ih_l{l}{sfx}").copy_(torch.tensor(m.params[reference.cell_name("U", l, d)]))
                getattr(rnn, f"weight_hh_l{l}{sfx}").copy_(torch.tensor(m.params[reference.cell_name("W", l, d)]))
                getattr(rnn, f"bias_ih_l{l}{sfx}").copy_(torch.tensor(m.params[reference.cell_name("b", l, d)]))
                getattr(rnn, f"bias_hh_l{l}{sfx}").zero_()
        lin.weight.copy_(torch.tensor(m.params["V"]))
        lin.bias.copy_(torch.tensor(m.params["c"]))
    x, y, _, _ = make_problem("softmax", True, False, False, T=T, sizes=SIZES)
    B = x.shape[1]
    h0 = np.random.default_rng(3).uniform(-.5, .5, (layers * (2 if bi else 1), B, H))
    out, hn = rnn(torch.tensor(x), torch.tensor(h0))
    logits = lin(out)
    tl = torch.nn.functional.cross_entropy(logits.reshape(T * B, O), torch.tensor(y).reshape(-1),
                                           reduction="sum")
    tl.backward()
    loss, g, h = m.loss_and_grads(x, y, h0=h0.reshape(m.state_shape(B)))
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(h.reshape(hn.shape), hn.detach().numpy(), rtol=1e-11, atol=1e-13)
    for l in range(layers):
        for d, sfx in enumerate(("", "_reverse")[:2 if bi else 1]):
            assert rel_err(g[reference.cell_name("U", l, d)], getattr(rnn, f"weight_ih_l{l}{sfx}").grad) < 1e-11
            assert rel_err(g[reference.cell_name("W", l, d)], getattr(rnn, f"weight_hh_l{l}{sfx}").grad) < 1e-11
            assert rel_err(g[reference.cell_name("b", l, d)], getattr(rnn, f"bias_ih_l{l}{sfx}").grad) < 1e-11
    assert rel_err(g["V"], lin.weight.grad) < 1e-11
