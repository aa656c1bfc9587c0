"""Gated cells (GRU, LSTM): the reference against central differences and against
PyTorch's nn.GRU / nn.LSTM, the engine against the reference, and the public layouts."""
from __future__ import annotations

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu import reference

from ..helpers import central_differences, make_problem, randomize, rel_err
from ..stack_configs import cell_sample, layered_and_per_output_gradients, make_extras

SIZES = (5, 7, 3)  # I, H, O: not multiples of anything
T = 6
TOL = {"float64": 1e-10, "float32": 1e-4}


def _model(cell, num_layers=1, bidirectional=False, dtype="float64", out="softmax",
           sizes=SIZES, scale=0.6, **kw):
    return randomize(rnn_gpu.RNN(*sizes, cell=cell, num_layers=num_layers,
                                 bidirectional=bidirectional, backend="numpy", dtype=dtype,
                                 output=out, **kw), scale=scale)


def _h_parts(h, cell):
    return list(h) if cell == "lstm" else [h]


# -------------------------------------------------------------------------------------
# The reference against central differences


@pytest.mark.parametrize("cell,layers,bi,out,trunc,dense,masked,lmask,with_h0,drop",
                         cell_sample(12, 5))
def test_reference_matches_finite_differences(cell, layers, bi, out, trunc, dense, masked,
                                              lmask, with_h0, drop):
    m = _model(cell, layers, bi, out=out)
    x, y, _, mask = make_problem(out, dense, masked, False, T=T, sizes=SIZES)
    h0, lm, dr = make_extras(m, T, x.shape[1], lmask, with_h0, drop)
    p = {k: np.array(v, dtype=np.float64) for k, v in m.params.items()}
    kw = dict(output=out, mask=mask, drop=dr, loss_mask=lm)
    loss, grads, _ = reference.loss_and_grads(p, x, y, h0=h0, truncate=trunc, **kw)
    assert loss == pytest.approx(reference.loss_only(p, x, y, h0=h0, **kw), rel=1e-12)
    if trunc is None:
        f = lambda q: reference.loss_only(q, x, y, h0=h0, **kw)  # noqa: E731
    else:
        pp, xx, hh, mm, _, dd = reference.prepare_inputs(p, x, h0, mask, dr, lm)
        states, _ = reference.forward_stack(pp, xx, hh, mm, "tanh", dd)
        anchors = [layer[0] for layer in states]  # (h, c) for an LSTM: both held fixed
        f = lambda q: reference.truncated_surrogate_loss(  # noqa: E731
            q, anchors, x, y, truncate=trunc, **kw)
    num = central_differences(f, p)
    for name in p:
        scale = max(np.abs(num[name]).max(), 1e-12)
        assert np.abs(grads[name] - num[name]).max() / scale < 1e-6, name


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_truncation_holds_the_cell_state(cell):
    """truncate=k differs from full BPTT in every layer, and truncate >= T-1 is full BPTT."""
    m = _model(cell, 2)
    x, y, _, _ = make_problem("softmax", False, False, False, T=T, sizes=SIZES)
    p = {k: np.array(v) for k, v in m.params.items()}
    _, full, _ = reference.loss_and_grads(p, x, y)
    _, trunc, _ = reference.loss_and_grads(p, x, y, truncate=1)
    for k in ("W", "W1", "U", "U1"):
        assert rel_err(trunc[k], full[k]) > 1e-6, k
    _, same, _ = reference.loss_and_grads(p, x, y, truncate=T - 1)
    for k in full:
        np.testing.assert_allclose(same[k], full[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_layered_and_per_output_backward_agree(cell):
    m = _model(cell, 2)
    x, y, _, mask = make_problem("softmax", True, True, False, T=T, sizes=SIZES)
    h0, lm, dr = make_extras(m, T, x.shape[1], True, True, True)
    g1, g2 = layered_and_per_output_gradients(m, x, y, mask, h0, lm, dr)
    for k in g1:
        assert rel_err(g1[k], g2[k]) < 1e-12, k


# -------------------------------------------------------------------------------------
# The engine against the reference


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell,layers,bi,out,trunc,dense,masked,lmask,with_h0,drop",
                         cell_sample(24, 6))
def test_engine_matches_reference(dtype, cell, layers, bi, out, trunc, dense, masked, lmask,
                                  with_h0, drop):
    m = _model(cell, layers, bi, dtype=dtype, out=out)
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
    for a, b in zip(_h_parts(h_last, cell), _h_parts(rh, cell), strict=True):
        assert a.shape == m.state_shape(x.shape[1])
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("cell,layers,bi,trunc", [("gru", 2, True, None), ("lstm", 2, False, 4),
                                                  ("lstm", 1, True, None), ("gru", 2, False, 3)])
def test_engine_larger_sizes(cell, layers, bi, trunc):
    """Sizes past any tile, repeated ids, a longer sequence, both dtypes."""
    sizes = (37, 29, 41)
    for dtype in ("float64", "float32"):
        m = _model(cell, layers, bi, dtype=dtype, sizes=sizes, scale=0.3)
        x, y, _, mask = make_problem("softmax", False, True, False, T=19, B=7, sizes=sizes)
        h0, lm, dr = make_extras(m, 19, 7, True, True, True)
        kw = dict(h0=h0, truncate=trunc, mask=mask, loss_mask=lm, dropout=dr)
        loss, g, _ = m.loss_and_grads(x, y, **kw)
        rl, rg, _ = m.reference_loss_and_grads(x, y, **kw)
        assert loss == pytest.approx(rl, rel=TOL[dtype])
        for k in g:
            assert rel_err(g[k], rg[k]) < TOL[dtype], (dtype, k)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_engine_with_the_adaptive_head(cell):
    sizes = (11, 9, 23)
    m = _model(cell, 2, False, out="adaptive", sizes=sizes, cutoffs=(5, 12), div_value=2.0,
               scale=0.4)
    x, y, _, mask = make_problem("softmax", False, True, False, T=7, B=4, sizes=sizes)
    h0, lm, dr = make_extras(m, 7, 4, True, True, True)
    for trunc in (None, 2):
        kw = dict(h0=h0, truncate=trunc, mask=mask, loss_mask=lm, dropout=dr)
        loss, g, _ = m.loss_and_grads(x, y, **kw)
        rl, rg, _ = m.reference_loss_and_grads(x, y, **kw)
        assert loss == pytest.approx(rl, rel=1e-10)
        for k in g:
            assert rel_err(g[k], rg[k]) < 1e-10, k


@pytest.mark.parametrize("cell,layers,bi,trunc", [("gru", 2, False, 1), ("lstm", 1, True, None),
                                                  ("lstm", 2, False, None)])
def test_gradcheck_covers_cells(cell, layers, bi, trunc):
    m = _model(cell, layers, bi)
    x, y, _, mask = make_problem("softmax", False, True, False, T=5, sizes=SIZES)
    h0, lm, dr = make_extras(m, 5, x.shape[1], True, True, True)
    errs = rnn_gpu.gradcheck(m, x, y, h0=h0, truncate=trunc, mask=mask, loss_mask=lm,
                             dropout=dr, max_checks=12)
    assert set(errs) == set(m.param_names)
    assert max(errs.values()) < 1e-6, errs


# -------------------------------------------------------------------------------------
# Layouts and semantics


def test_parameter_layouts():
    gru = rnn_gpu.RNN(5, 7, 3, cell="gru", num_layers=2, bidirectional=True, backend="numpy")
    assert gru.params["U"].shape == (21, 5) and gru.params["W"].shape == (21, 7)
    assert gru.params["b"].shape == gru.params["bh"].shape == (21,)
    assert gru.params["U1_reverse"].shape == (21, 14) and "bh1_reverse" in gru.params
    assert gru.params["V"].shape == (3, 14)
    lstm = rnn_gpu.RNN(5, 7, 3, cell="lstm", num_layers=2, backend="numpy")
    assert lstm.params["U"].shape == (28, 5) and lstm.params["U1"].shape == (28, 7)
    assert not any(k.startswith("bh") for k in lstm.params)
    for k in ("b", "b1"):  # forget gates start open, the other biases at zero
        np.testing.assert_array_equal(lstm.params[k][7:14], 1.0)
        np.testing.assert_array_equal(np.delete(lstm.params[k], np.s_[7:14]), 0.0)
    np.testing.assert_array_equal(gru.params["b"], 0.0)
    assert set(gru.param_names) == set(gru.params)
    assert rnn_gpu.RNN.config_param_shapes(gru.config) == gru.param_shapes
    assert lstm.config["cell"] == "lstm" and "cell='lstm'" in repr(lstm)


def test_elman_is_unchanged_by_the_cell_option():
    a = rnn_gpu.RNN(5, 7, 3, backend="numpy", seed=4)
    b = rnn_gpu.RNN(5, 7, 3, cell="elman", backend="numpy", seed=4)
    assert a.config["cell"] == "elman" and set(a.params) == set(rnn_gpu.model.PARAM_NAMES)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    cfg = dict(a.config)
    del cfg["cell"]  # a record written before cells existed
    assert rnn_gpu.RNN.from_config(cfg, backend="numpy").cell == "elman"


@pytest.mark.parametrize("kw,match", [
    (dict(cell="rnn"), r"cell: expected one of elman, gru, lstm"),
    (dict(cell="lstm", hidden_activation="relu"), r"hidden_activation: .*leave"),
    (dict(cell="gru", hidden_activation="sigmoid"), r"hidden_activation"),
])
def test_bad_cell_options(kw, match):
    with pytest.raises(ValueError, match=match):
        rnn_gpu.RNN(5, 7, 3, backend="numpy", **kw)


def test_lstm_state_is_a_pair():
    m = _model("lstm", 2)
    x, y, _, _ = make_problem("softmax", False, False, False, T=T, sizes=SIZES)
    B = x.shape[1]
    sh = m.state_shape(B)
    loss, _, (h, c) = m.loss_and_grads(x, y)
    assert h.shape == c.shape == sh and not np.allclose(h, c)
    with pytest.raises(ValueError, match=r"h0: an LSTM's state is a pair"):
        m.loss_and_grads(x, y, h0=np.zeros(sh))
    with pytest.raises(ValueError, match=r"h0: expected floats of shape"):
        m.loss_and_grads(x, y, h0=(np.zeros(sh), np.zeros((1, B, 7))))
    with pytest.raises(ValueError, match=r"h0: expected two arrays"):
        m.loss_and_grads(x, y, h0=(np.zeros(sh), None))
    with pytest.raises(ValueError, match=r"h0: expected finite"):
        m.loss_and_grads(x, y, h0=(np.zeros(sh), np.full(sh, np.nan)))
    # the cell state matters: another c0 gives another loss
    other = m.loss(x, y, h0=(np.zeros(sh), np.ones(sh)))[0]
    assert other != pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_chunks_and_steps_carry_the_state(cell):
    """Two chunks with the carried state give the loss of one long call; step() through
    the sequence gives forward()'s logits."""
    m = _model(cell, 2, scale=0.4)
    x, y, _, _ = make_problem("softmax", False, False, False, T=8, sizes=SIZES)
    whole = m.loss(x, y)[0]
    l1, h = m.loss(x[:3], y[:3])
    l2, _ = m.loss(x[3:], y[3:], h0=h)
    assert l1 + l2 == pytest.approx(whole, rel=1e-12)
    logits, _ = m.forward(x)
    h = None
    for t in range(8):
        out, h = m.step(x[t], h)
        np.testing.assert_allclose(out, logits[t], rtol=1e-12, atol=1e-14)
    lp = m.log_prob(x)
    np.testing.assert_allclose(np.exp(lp).sum(axis=-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_to_float32_and_back_keeps_the_cell(cell):
    m = _model(cell, 1, True)
    m32 = m.to("numpy", dtype="float32")
    assert m32.cell == cell and m32.dtype == np.float32
    for k in m.params:
        np.testing.assert_allclose(m32.params[k], m.params[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_end_padding_is_packed_sequence_semantics(cell):
    """A bidirectional layer over end-padded sequences gives each sequence's own loss, as
    if it ran alone (its reverse direction starts at the sequence's last real step)."""
    m = _model(cell, 1, True, scale=0.4)
    x, y, _, _ = make_problem("softmax", False, False, False, T=6, B=3, sizes=SIZES)
    lengths = [6, 4, 2]
    mask = (np.arange(6)[:, None] < np.array(lengths)[None, :]).astype(float)
    total = m.loss(x, y, mask=mask)[0]
    alone = sum(m.loss(x[:n, b:b + 1], y[:n, b:b + 1])[0] for b, n in enumerate(lengths))
    assert total == pytest.approx(alone, rel=1e-12)


# -------------------------------------------------------------------------------------
# PyTorch as an outside oracle


@pytest.mark.parametrize("cell,layers,bi", [("gru", 2, True), ("lstm", 2, True),
                                            ("gru", 1, False), ("lstm", 1, False)])
def test_matches_pytorch(cell, layers, bi):
    torch = pytest.importorskip("torch")
    I, H, O = SIZES
    D = 2 if bi else 1
    m = _model(cell, layers, bi, scale=0.4)
    net = (torch.nn.GRU if cell == "gru" else torch.nn.LSTM)(
        I, H, num_layers=layers, bidirectional=bi, dtype=torch.float64)
    lin = torch.nn.Linear(H * D, O, dtype=torch.float64)
    name = reference.cell_name
    with torch.no_grad():
        for l in range(layers):
            for d, sfx in enumerate(("", "_reverse")[:D]):
                getattr(net, f"weight_ih_l{l}{sfx}").copy_(torch.tensor(m.params[name("U", l, d)]))
                getattr(net, f"weight_hh_l{l}{sfx}").copy_(torch.tensor(m.params[name("W", l, d)]))
                getattr(net, f"bias_ih_l{l}{sfx}").copy_(torch.tensor(m.params[name("b", l, d)]))
                if cell == "gru":
                    getattr(net, f"bias_hh_l{l}{sfx}").copy_(torch.tensor(m.params[name("bh", l, d)]))
                else:  # rnn-gpu's b is bias_ih + bias_hh
                    getattr(net, f"bias_hh_l{l}{sfx}").zero_()
        lin.weight.copy_(torch.tensor(m.params["V"]))
        lin.bias.copy_(torch.tensor(m.params["c"]))
    x, y, _, _ = make_problem("softmax", True, False, False, T=T, sizes=SIZES)
    B = x.shape[1]
    rng = np.random.default_rng(3)
    h0 = rng.uniform(-.5, .5, (layers * D, B, H))
    c0 = rng.uniform(-1, 1, (layers * D, B, H))
    if cell == "gru":
        out, hn = net(torch.tensor(x), torch.tensor(h0))
        ours_h0 = h0.reshape(m.state_shape(B))
    else:
        out, (hn, cn) = net(torch.tensor(x), (torch.tensor(h0), torch.tensor(c0)))
        ours_h0 = (h0.reshape(m.state_shape(B)), c0.reshape(m.state_shape(B)))
    tl = torch.nn.functional.cross_entropy(lin(out).reshape(T * B, O),
                                           torch.tensor(y).reshape(-1), reduction="sum")
    tl.backward()
    loss, g, h = m.loss_and_grads(x, y, h0=ours_h0)
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    if cell == "lstm":
        h, c = h
        np.testing.assert_allclose(c.reshape(cn.shape), cn.detach().numpy(), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(h.reshape(hn.shape), hn.detach().numpy(), rtol=1e-11, atol=1e-13)
    for l in range(layers):
        for d, sfx in enumerate(("", "_reverse")[:D]):
            grad = lambda w: getattr(net, f"{w}_l{l}{sfx}").grad  # noqa: E731
            assert rel_err(g[name("U", l, d)], grad("weight_ih")) < 1e-11
            assert rel_err(g[name("W", l, d)], grad("weight_hh")) < 1e-11
            assert rel_err(g[name("b", l, d)], grad("bias_ih")) < 1e-11
            if cell == "gru":
                assert rel_err(g[name("bh", l, d)], grad("bias_hh")) < 1e-11
    assert rel_err(g["V"], lin.weight.grad) < 1e-11
