"""The adaptive softmax on the NumPy backend: the engine against the per-token float64
reference, the reference against finite differences and against PyTorch's
AdaptiveLogSoftmaxWithLoss, full log-probabilities, the argument checks and the config."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu import reference
from rnn_gpu.gradcheck import gradcheck
from rnn_gpu.heads import AdaptiveSpec
from rnn_gpu.heads.adaptive import reference_log_prob

from ..helpers import make_problem, randomize, rel_err

SIZES = (7, 16, 23)  # I, H, O
CUTOFFS = {1: (6,), 2: (5, 12), 3: (3, 8, 15)}
TOL = {"float64": 1e-10, "float32": 1e-4}
CONFIGS = list(itertools.product((1, 2, 3), (None, 1, 5), (False, True), (False, True)))


def adaptive_model(n_clusters, dtype="float64", backend="numpy", sizes=SIZES, div_value=2.0,
                   **kw):
    m = rnn_gpu.RNN(*sizes, backend=backend, dtype=dtype, output="adaptive",
                    cutoffs=CUTOFFS[n_clusters], div_value=div_value, **kw)
    return randomize(m, scale=0.5)


def compare(m, x, y, h0=None, truncate=None, mask=None, dropout=None, tol=1e-10):
    loss, grads, h = m.loss_and_grads(x, y, h0=h0, truncate=truncate, mask=mask,
                                      dropout=dropout)
    rl, rg, rh = m.reference_loss_and_grads(x, y, h0=h0, truncate=truncate, mask=mask,
                                            dropout=dropout)
    assert set(grads) == set(rg) == set(m.params)
    assert loss == pytest.approx(rl, rel=tol)
    worst = 0.0
    for k in grads:
        assert grads[k].dtype == m.dtype and grads[k].shape == m.params[k].shape, k
        err = rel_err(grads[k], rg[k])
        assert err < tol, (k, err)
        worst = max(worst, err)
    assert rel_err(h, rh) < tol
    return worst


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n_clusters,trunc,dense,masked", CONFIGS)
def test_engine_matches_reference(dtype, n_clusters, trunc, dense, masked):
    m = adaptive_model(n_clusters, dtype)
    x, y, h0, mask = make_problem("softmax", dense, masked, True, T=6, B=5, sizes=SIZES)
    compare(m, x, y, h0, trunc, mask, tol=TOL[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_padded_rows_match_counted_rows(dtype):
    """The graph-safe variant (every cluster's GEMMs over all N rows, padding of weight 0)
    gives the same loss and gradients as GEMMs over each cluster's own rows."""
    m = adaptive_model(3, dtype)
    x, y, h0, mask = make_problem("softmax", False, True, True, T=7, B=4, sizes=SIZES)
    want = compare(m, x, y, h0, None, mask, tol=TOL[dtype])
    m._engine.head.row_bound = "padded"
    got = compare(m, x, y, h0, None, mask, tol=TOL[dtype])
    assert got == pytest.approx(want, abs=TOL[dtype])


def test_dropout_and_a_cluster_without_tokens():
    m = adaptive_model(3)
    x, y, h0, mask = make_problem("softmax", False, True, False, T=5, B=4, sizes=SIZES)
    y = np.where(y >= 15, 0, y)  # the last cluster gets no token
    rng = np.random.default_rng(3)
    drop = (rng.random((5, 4, SIZES[1])) > 0.3) / 0.7
    compare(m, x, y, None, 2, mask, drop)
    _, g, _ = m.loss_and_grads(x, y, mask=mask, dropout=drop)
    assert not g["tail2_out"].any() and not g["tail2_proj"].any()


def test_reference_against_finite_differences():
    m = adaptive_model(3)
    x, y, h0, mask = make_problem("softmax", False, True, True, T=4, B=3, sizes=SIZES)
    for trunc in (None, 1):
        errors = gradcheck(m, x, y, h0=h0, truncate=trunc, mask=mask, max_checks=30)
        assert set(errors) == set(m.params)
        assert max(errors.values()) < 1e-6, errors


def test_log_prob_is_a_normalized_distribution_that_gives_the_loss():
    m = adaptive_model(2)
    x, y, h0, _ = make_problem("softmax", False, False, True, T=5, B=3, sizes=SIZES)
    lp = m.log_prob(x, h0=h0)
    assert lp.shape == (5, 3, SIZES[2])
    np.testing.assert_allclose(np.exp(lp).sum(axis=-1), 1.0, rtol=1e-12)
    picked = np.take_along_axis(lp, y[..., None], axis=-1)[..., 0]
    assert -picked.sum() == pytest.approx(m.loss(x, y, h0=h0)[0], rel=1e-12)
    # the same as the plain per-token formula on the reference's states
    p = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
    s = reference.forward(p, x, h0, np.ones((5, 3)), "tanh")
    want = reference_log_prob(p, s[1:].reshape(15, -1)).reshape(5, 3, -1)
    assert rel_err(lp, want) < 1e-12
    # forward's logits are those log-probabilities: softmax of them is the distribution
    logits, _ = m.forward(x, h0=h0)
    np.testing.assert_allclose(logits, lp)


def test_log_prob_softmax_and_the_outputs_without_one():
    m = randomize(rnn_gpu.RNN(*SIZES, backend="numpy", dtype="float64"))
    x, y, _, _ = make_problem("softmax", False, False, False, T=4, B=2, sizes=SIZES)
    lp = m.log_prob(x)
    np.testing.assert_allclose(np.exp(lp).sum(axis=-1), 1.0, rtol=1e-12)
    picked = np.take_along_axis(lp, y[..., None], axis=-1)[..., 0]
    assert -picked.sum() == pytest.approx(m.loss(x, y)[0], rel=1e-12)
    for out in ("sigmoid", "linear"):
        with pytest.raises(ValueError, match="output: log_prob needs"):
            rnn_gpu.RNN(*SIZES, backend="numpy", output=out).log_prob(x)


# -------------------------------------------------------------------------------------
# PyTorch, one to one


def _torch_head(m):
    torch = pytest.importorskip("torch")
    spec = m.adaptive
    t = torch.nn.AdaptiveLogSoftmaxWithLoss(spec.features, spec.n_classes, list(spec.cutoffs),
                                            div_value=spec.div_value, head_bias=True).double()
    p = {k: torch.from_numpy(np.asarray(v, np.float64).copy()) for k, v in m.params.items()}
    with torch.no_grad():
        t.head.weight.copy_(p["V"])
        t.head.bias.copy_(p["c"])
        for i in range(spec.n_clusters):
            assert tuple(t.tail[i][0].weight.shape) == m.params[f"tail{i}_proj"].shape
            assert tuple(t.tail[i][1].weight.shape) == m.params[f"tail{i}_out"].shape
            t.tail[i][0].weight.copy_(p[f"tail{i}_proj"])
            t.tail[i][1].weight.copy_(p[f"tail{i}_out"])
    return torch, t


@pytest.mark.parametrize("n_clusters", [1, 2, 3])
def test_matches_torch_adaptive_log_softmax(n_clusters):
    m = adaptive_model(n_clusters, div_value=4.0 if n_clusters < 3 else 2.0)
    torch, t = _torch_head(m)
    x, y, h0, _ = make_problem("softmax", False, False, True, T=6, B=4, sizes=SIZES)
    p = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
    s = reference.forward(p, x, h0, np.ones((6, 4)), "tanh")[1:].reshape(24, -1)
    feats = torch.from_numpy(s).requires_grad_(True)
    out = t(feats, torch.from_numpy(y.reshape(-1)))
    total = -out.output.sum()  # loss summed over tokens
    total.backward()
    loss, grads, _ = m.loss_and_grads(x, y, h0=h0)
    assert loss == pytest.approx(total.item(), rel=1e-12)
    lp = m.log_prob(x, h0=h0).reshape(24, -1)
    assert rel_err(lp, t.log_prob(feats).detach().numpy()) < 1e-12
    named = {"V": t.head.weight, "c": t.head.bias}
    for i in range(m.adaptive.n_clusters):
        named[f"tail{i}_proj"], named[f"tail{i}_out"] = t.tail[i][0].weight, t.tail[i][1].weight
    for k, w in named.items():
        assert rel_err(grads[k], w.grad.numpy()) < 1e-10, k


def test_shapes_and_init_follow_torch():
    m = rnn_gpu.RNN(11, 512, 30_000, backend="numpy", output="adaptive",
                    cutoffs=(2000, 10000))
    shapes = {k: v.shape for k, v in m.params.items()}
    assert shapes["V"] == (2002, 512) and shapes["c"] == (2002,)
    assert shapes["tail0_proj"] == (128, 512) and shapes["tail0_out"] == (8000, 128)
    assert shapes["tail1_proj"] == (32, 512) and shapes["tail1_out"] == (20000, 32)
    assert np.abs(m.params["tail1_out"]).max() <= 1 / np.sqrt(32)
    assert np.abs(m.params["tail1_out"]).max() > 0.9 / np.sqrt(32)
    assert not m.params["c"].any()
    # the existing models' init stream is unchanged by the adaptive option
    a = rnn_gpu.RNN(5, 4, 9, backend="numpy", seed=3)
    b = rnn_gpu.RNN(5, 4, 9, backend="numpy", seed=3, output="adaptive", cutoffs=(4,))
    np.testing.assert_array_equal(a.params["U"], b.params["U"])
    np.testing.assert_array_equal(a.params["W"], b.params["W"])
    rng = np.random.default_rng(3)
    r = 0.5
    want = {k: rng.uniform(-r, r, s) for k, s in (("U", (4, 5)), ("W", (4, 4)), ("V", (9, 4)))}
    for k, v in want.items():
        np.testing.assert_array_equal(a.params[k], v.astype(np.float32))


# -------------------------------------------------------------------------------------
# Arguments, config


@pytest.mark.parametrize("kwargs,match", [
    ({"output": "adaptive"}, "cutoffs: output='adaptive' needs cutoffs"),
    ({"output": "adaptive", "cutoffs": ()}, "cutoffs: expected a non-empty"),
    ({"output": "adaptive", "cutoffs": (5, 5)}, "cutoffs: expected strictly increasing"),
    ({"output": "adaptive", "cutoffs": (8, 5)}, "cutoffs: expected strictly increasing"),
    ({"output": "adaptive", "cutoffs": (0, 5)}, r"cutoffs: expected values in \(0, 23\)"),
    ({"output": "adaptive", "cutoffs": (5, 23)}, r"cutoffs: expected values in \(0, 23\)"),
    ({"output": "adaptive", "cutoffs": (5, 2.5)}, "cutoffs: expected a non-empty sequence of int"),
    ({"output": "adaptive", "cutoffs": "5"}, "cutoffs: expected a sequence"),
    ({"output": "adaptive", "cutoffs": (5,), "div_value": 0}, "div_value: expected a positive"),
    ({"output": "adaptive", "cutoffs": (5,), "div_value": -2.0}, "div_value: expected a pos"),
    ({"output": "adaptive", "cutoffs": (5,), "div_value": float("nan")}, "div_value"),
    ({"output": "adaptive", "cutoffs": (5, 9), "div_value": 4.1}, "div_value: 4.1 leaves cluster 1"),
    ({"output": "adaptive", "cutoffs": (5,), "div_value": 17.0}, "div_value: 17.0 leaves cluster 0"),
    ({"output": "softmax", "cutoffs": (5,)}, "cutoffs: only used with output='adaptive'"),
    ({"output": "sigmoid", "cutoffs": (5,)}, "cutoffs: only used with output='adaptive'"),
])
def test_bad_arguments_are_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rnn_gpu.RNN(*SIZES, backend="numpy", **kwargs)


def test_targets_are_checked():
    m = adaptive_model(2)
    x = np.zeros((3, 2), np.int64)
    with pytest.raises(ValueError, match=r"y: expected class ids in \[0, 23\)"):
        m.loss_and_grads(x, np.full((3, 2), 23))
    with pytest.raises(ValueError, match="y: expected integer class ids"):
        m.loss_and_grads(x, np.zeros((3, 2, 23)))


def test_config_round_trip_and_to():
    m = adaptive_model(3, dtype="float32")
    cfg = m.config
    assert cfg["output"] == "adaptive" and cfg["cutoffs"] == [3, 8, 15]
    assert cfg["div_value"] == 2.0
    m2 = rnn_gpu.RNN.from_config(cfg, backend="numpy", params=m.params)
    assert m2.adaptive == m.adaptive and m2.param_names == m.param_names
    for k in m.params:
        np.testing.assert_array_equal(m2.params[k], m.params[k])
    m64 = m.to("numpy", dtype="float64")
    assert m64.adaptive == m.adaptive and m64.dtype == np.float64
    assert "cutoffs=(3, 8, 15)" in repr(m)
    assert "cutoffs" not in rnn_gpu.RNN(*SIZES, backend="numpy").config
    with pytest.raises(ValueError, match=r"params: missing 'tail2_out'"):
        m.load_params({k: v for k, v in m.params.items() if k != "tail2_out"})


def test_spec_from_params_recovers_the_cutoffs():
    spec = AdaptiveSpec(16, 23, (3, 8, 15), 2.0)
    shapes = spec.param_shapes()
    got = AdaptiveSpec.from_params({k: np.zeros(s) for k, s in shapes.items()})
    assert got.cutoffs == spec.cutoffs and got.n_classes == 23 and got.features == 16


def test_default_cutoffs():
    from rnn_gpu.heads import default_cutoffs  # noqa: PLC0415

    assert default_cutoffs(30_000) == (2000, 10000)
    assert default_cutoffs(13_800) == (2000, 10000)
    assert default_cutoffs(10_000) == (2000,)
    assert default_cutoffs(267_735) == (2000, 10000, 50000)
    assert default_cutoffs(65) == (16,)
    assert default_cutoffs(30_000, features=8) == (2000,)  # 8 // 4^2 = 0: one cluster
    for n in (2, 3, 65, 2000, 2001, 10_001):  # always valid arguments for the model
        rnn_gpu.RNN(3, 8, n, backend="numpy", output="adaptive",
                    cutoffs=default_cutoffs(n, features=8))
    with pytest.raises(ValueError, match="n_classes"):
        default_cutoffs(1)


def head_case(n_clusters, F=24, O=23, N=37, seed=4):
    """Features (N, F) of any width (D*H after stacking), ids, float loss weights."""
    from rnn_gpu.heads import check_adaptive  # noqa: PLC0415

    spec = check_adaptive("adaptive", CUTOFFS[n_clusters], 2.0, O, F)
    rng = np.random.default_rng(seed)
    p = {k: rng.uniform(-0.7, 0.7, s) for k, s in spec.param_shapes().items()}
    S = rng.uniform(-1, 1, (N, F))
    y = np.minimum((O * rng.random(N) ** 2).astype(np.int64), O - 1)
    w = rng.uniform(0, 2, N) * (rng.random(N) > 0.2)  # loss weights, some zero
    return spec, p, S, y, w


def run_head(head, p, S, y, w, xp=np):
    N, F = S.shape
    dt = head.dtype
    dev = {k: xp.asarray(v.astype(dt)) for k, v in p.items()}
    loss, dS = xp.empty(N, dtype=dt), xp.empty((N, F), dtype=dt)
    grads = {k: xp.empty(v.shape, dtype=dt) for k, v in p.items()}
    head.run(dev, xp.asarray(S.astype(dt)), xp.asarray(y), xp.asarray(w.astype(dt)), loss,
             dS, grads)
    return loss, dS, grads


@pytest.mark.parametrize("row_bound", ["count", "padded"])
@pytest.mark.parametrize("n_clusters", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_head_on_any_features_with_float_weights(n_clusters, dtype, row_bound):
    from rnn_gpu.heads import AdaptiveHead  # noqa: PLC0415
    from rnn_gpu.heads.adaptive import reference_output  # noqa: PLC0415
    from rnn_gpu.ops import NumpyOps  # noqa: PLC0415

    spec, p, S, y, w = head_case(n_clusters)
    rg = {k: np.zeros_like(v) for k, v in p.items()}
    rl, rdS = reference_output(p, S, y, w, rg)
    head = AdaptiveHead(spec, np, NumpyOps(), dtype, row_bound)
    loss, dS, grads = run_head(head, p, S, y, w)
    tol = TOL[dtype]
    assert rel_err(loss, rl * w) < tol
    assert rel_err(dS, rdS) < tol
    for k in rg:
        assert rel_err(grads[k], rg[k]) < tol, k


def test_config_param_shapes_without_building():
    m = adaptive_model(2)
    got = rnn_gpu.RNN.config_param_shapes(m.config)
    assert got == {k: v.shape for k, v in m.params.items()}
    plain = rnn_gpu.RNN(*SIZES, backend="numpy")
    assert rnn_gpu.RNN.config_param_shapes(plain.config) == {
        k: v.shape for k, v in plain.params.items()}
    with pytest.raises(ValueError, match="config: missing 'hidden_size'"):
        rnn_gpu.RNN.config_param_shapes({"input_size": 3, "output_size": 4})
