"""The trainer's input initialization and per-parameter learning rates."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rnn_gpu.errors import UsageError
from rnn_gpu.lm.optim import make_optimizer
from rnn_gpu.lm.trainer import TrainConfig, Trainer


def _corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
    text = " ".join(rng.choice(words, size=3000)) + "\n"
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_lr_scale_multiplies_one_parameter(name):
    rng = np.random.default_rng(0)
    p1 = {"U": rng.normal(size=(3, 4)), "W": rng.normal(size=(3, 3))}
    p2 = {k: v.copy() for k, v in p1.items()}
    g = {"U": rng.normal(size=(3, 4)), "W": rng.normal(size=(3, 3))}
    a = make_optimizer(name, p1, 0.01)
    b = make_optimizer(name, p2, 0.01, lr_scale={"U": 4.0})
    start = {k: v.copy() for k, v in p1.items()}
    a.step({k: v.copy() for k, v in g.items()})
    b.step({k: v.copy() for k, v in g.items()})
    np.testing.assert_array_equal(p1["W"], p2["W"])
    np.testing.assert_allclose(p2["U"] - start["U"], 4.0 * (p1["U"] - start["U"]), rtol=1e-12)


def test_embedding_init_scales_u_and_its_rate(tmp_path):
    data = _corpus(tmp_path)
    common = dict(data=str(data), hidden=16, batch_size=4, bptt=8, max_steps=1,
                  out=str(tmp_path / "ck.npz"), sample_length=0, backend="numpy")
    emb = Trainer(TrainConfig(**common), progress=False)
    uni = Trainer(TrainConfig(input_init="uniform", **common), progress=False)
    np.testing.assert_allclose(emb.model.params["U"], 4.0 * uni.model.params["U"], rtol=1e-6)
    np.testing.assert_array_equal(emb.model.params["W"], uni.model.params["W"])
    assert np.abs(emb.model.params["U"]).max() <= 1.0
    assert np.abs(emb.model.params["U"]).max() > 0.5
    assert emb.optimizer.lr_scale == {"U": 2 * math.sqrt(16)}
    own = Trainer(TrainConfig(input_lr_scale=3.0, **common), progress=False)
    assert own.optimizer.lr_scale == {"U": 3.0}
    assert uni.optimizer.lr_scale == {}
    sgd = Trainer(TrainConfig(optimizer="sgd", **common), progress=False)
    assert sgd.optimizer.lr_scale == {}  # a rate multiplier means nothing to plain SGD


def test_input_lr_scale_is_validated_and_kept_on_resume(tmp_path):
    data = _corpus(tmp_path)
    with pytest.raises(UsageError, match="--input-lr-scale: expected a positive number"):
        TrainConfig(data=str(data), input_lr_scale=0.0).validate()
    ck = tmp_path / "ck.npz"
    common = dict(data=str(data), hidden=16, batch_size=4, bptt=8, out=str(ck), sample_length=0,
                  backend="numpy")
    Trainer(TrainConfig(max_steps=2, input_lr_scale=5.0, **common), progress=False).fit()
    assert Trainer.from_checkpoint(ck, progress=False, max_steps=4).optimizer.lr_scale == {"U": 5.0}
    with pytest.raises(UsageError, match="--input-lr-scale 6.0 differs"):
        Trainer.from_checkpoint(ck, progress=False, input_lr_scale=6.0)


def test_input_init_is_validated(tmp_path):
    with pytest.raises(UsageError, match="--input-init: expected one of embedding, uniform"):
        TrainConfig(data=str(_corpus(tmp_path)), input_init="xavier").validate()
