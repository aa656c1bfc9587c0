"""Optimizers, gradient clipping and learning-rate schedules (rnn_gpu.lm.optim, rnn_gpu.lm.schedule)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rnn_gpu.errors import CheckpointError, UsageError
from rnn_gpu.lm.optim import SGD, Adagrad, Adam, clip_grad_norm, global_norm, make_optimizer
from rnn_gpu.lm.schedule import Cosine, Mikolov, Plateau, Schedule, make_schedule


def _params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {"W": rng.normal(size=(3, 4)).astype(dtype), "b": rng.normal(size=4).astype(dtype)}


def _grads(step, dtype=np.float64):
    rng = np.random.default_rng(100 + step)
    return {"W": rng.normal(size=(3, 4)).astype(dtype), "b": rng.normal(size=4).astype(dtype)}


def test_clip_grad_norm_matches_pytorch_semantics():
    g = _grads(0)
    total = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
    assert global_norm(g) == pytest.approx(total)
    before = {k: v.copy() for k, v in g.items()}
    norm = clip_grad_norm(g, 1.0)
    assert norm == pytest.approx(total)  # the norm before clipping
    scale = 1.0 / (total + 1e-6)
    for k in g:
        np.testing.assert_allclose(g[k], before[k] * scale)
    assert global_norm(g) == pytest.approx(1.0, rel=1e-5)
    g2 = _grads(0)
    clip_grad_norm(g2, 1e6)  # below the limit: untouched
    np.testing.assert_array_equal(g2["W"], before["W"])


def test_clip_leaves_non_finite_gradients_alone():
    g = {"W": np.array([np.inf, 1.0])}
    assert math.isinf(clip_grad_norm(g, 1.0))


def _run(opt_factory, steps=3):
    p = _params()
    ids = {k: id(v) for k, v in p.items()}
    opt = opt_factory(p)
    for s in range(steps):
        opt.step(_grads(s))
    assert {k: id(v) for k, v in p.items()} == ids  # updated in place
    return p


def test_sgd_momentum_matches_formula():
    p = _run(lambda p: SGD(p, 0.1, momentum=0.9))
    ref, v = _params(), {k: 0 for k in ("W", "b")}
    for s in range(3):
        for k, g in _grads(s).items():
            v[k] = 0.9 * v[k] + g
            ref[k] = ref[k] - 0.1 * v[k]
    for k in p:
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-12)


def test_adagrad_matches_min_char_rnn():
    p = _run(lambda p: Adagrad(p, 0.1))
    ref, mem = _params(), {k: 0 for k in ("W", "b")}
    for s in range(3):
        for k, g in _grads(s).items():
            mem[k] = mem[k] + g * g
            ref[k] = ref[k] - 0.1 * g / np.sqrt(mem[k] + 1e-8)
    for k in p:
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-12)


def test_adam_matches_formula():
    p = _run(lambda p: Adam(p, 0.01))
    ref, m, v = _params(), {k: 0 for k in ("W", "b")}, {k: 0 for k in ("W", "b")}
    for s in range(3):
        t = s + 1
        for k, g in _grads(s).items():
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            mhat, vhat = m[k] / (1 - 0.9**t), v[k] / (1 - 0.999**t)
            ref[k] = ref[k] - 0.01 * mhat / (np.sqrt(vhat) + 1e-8)
    for k in p:
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-10)


def test_float32_params_stay_float32():
    p = _params(dtype=np.float32)
    Adam(p, 1e-3).step(_grads(0, np.float32))
    assert all(v.dtype == np.float32 for v in p.values())


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_state_dict_round_trip_continues_identically(name):
    mom = 0.5 if name == "sgd" else 0.0
    a = _params()
    oa = make_optimizer(name, a, 0.05, momentum=mom)
    for s in range(2):
        oa.step(_grads(s))
    meta, arrays = oa.state_dict()
    b = {k: v.copy() for k, v in a.items()}
    ob = make_optimizer(name, b, 0.05, momentum=mom)
    ob.load_state_dict(meta, arrays)
    for s in range(2, 4):
        oa.step(_grads(s))
        ob.step(_grads(s))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_optimizer_bad_input():
    # the library names its arguments; TrainConfig (tests/lm/test_train.py) names the options
    with pytest.raises(UsageError, match="^lr: expected a positive number, got 0.0$"):
        Adam(_params(), 0.0)
    with pytest.raises(UsageError, match="^lr: expected a positive number, got -1.0$"):
        SGD(_params(), -1.0)
    with pytest.raises(UsageError, match="^name: expected one of sgd, adagrad, adam, got 'rmsprop'$"):
        make_optimizer("rmsprop", _params())
    with pytest.raises(UsageError, match="momentum"):
        make_optimizer("adam", _params(), momentum=0.9)
    meta, arrays = Adam(_params(), 0.1).state_dict()
    with pytest.raises(CheckpointError, match="optimizer mismatch"):
        Adagrad(_params(), 0.1).load_state_dict(meta, arrays)


# -------------------------------------------------------------------------------------
# Schedules


def test_constant_schedule():
    s = make_schedule("constant", 0.1)
    assert type(s) is Schedule
    assert s.on_eval(5.0).lr == 0.1 and s.on_eval(6.0).lr == 0.1


def test_plateau_divides_by_four_when_not_improving():
    s = Plateau(1.0)
    assert s.on_eval(3.0).lr == 1.0
    assert s.on_eval(2.0).lr == 1.0
    assert s.on_eval(2.5).lr == 0.25  # worse than the best (2.0)
    assert s.on_eval(2.0).lr == 0.0625  # equal is not better
    assert s.on_eval(1.9).lr == 0.0625


def test_mikolov_schedule():
    s = Mikolov(1.0, min_improvement=1.01)
    d = s.on_eval(3.0)
    assert (d.lr, d.restore, d.stop) == (1.0, False, False)
    d = s.on_eval(2.0)  # large improvement: keep going
    assert (d.lr, d.restore, d.stop) == (1.0, False, False)
    d = s.on_eval(2.1)  # worse: restore, and the plateau starts the halving
    assert (d.lr, d.restore, d.stop) == (0.5, True, False)
    d = s.on_eval(1.5)  # improving, but halving goes on every evaluation
    assert (d.lr, d.restore, d.stop) == (0.25, False, False)
    d = s.on_eval(1.499)  # second plateau: stop
    assert d.stop and not d.restore


def test_schedule_state_round_trip():
    s = Mikolov(1.0)
    s.on_eval(3.0)
    s.on_eval(3.0)
    t = Mikolov(1.0)
    t.load_state_dict(s.state_dict())
    assert (t.lr, t.prev, t.halving) == (s.lr, s.prev, s.halving)
    with pytest.raises(CheckpointError):
        Plateau(1.0).load_state_dict(s.state_dict())
    with pytest.raises(UsageError):
        make_schedule("linear", 1.0)


def test_cosine_schedule_follows_progress_and_ignores_validation():
    s = make_schedule("cosine", 0.4)
    assert type(s) is Cosine and s.rate_at(0.0) == 0.4
    assert s.rate_at(0.5) == pytest.approx(0.2)
    assert s.rate_at(0.25) == pytest.approx(0.2 * (1 + math.sqrt(0.5)))
    assert s.on_eval(9.0).lr == pytest.approx(0.2 * (1 + math.sqrt(0.5)))  # no reaction
    assert s.rate_at(1.0) == pytest.approx(0.0, abs=1e-17)
    assert s.rate_at(1.7) == s.rate_at(1.0) and s.rate_at(-1.0) == 0.4  # clamped
    s.rate_at(0.3)
    t = Cosine(0.4)
    t.load_state_dict(s.state_dict())
    assert (t.lr, t.progress) == (0.4, 0.3)
    assert Schedule(0.1).rate_at(0.5) is None and Plateau(0.1).rate_at(0.5) is None
