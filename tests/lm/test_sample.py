"""Sampling from a model (rnn_gpu.lm.sample)."""
from __future__ import annotations

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu.lm.data import Vocab
from rnn_gpu.errors import DataError, UsageError
from rnn_gpu.lm.sample import draw, probabilities, sample


@pytest.fixture
def model_vocab():
    vocab = Vocab.build(["the cat sat on the mat.\n"], "char")
    m = rnn_gpu.RNN(len(vocab), 16, len(vocab), backend="numpy", seed=0)
    rng = np.random.default_rng(1)
    for v in m.params.values():
        v[...] = rng.normal(scale=0.8, size=v.shape)
    return m, vocab


def test_sampling_is_deterministic_for_a_seed(model_vocab):
    m, v = model_vocab
    a = sample(m, v, 80, seed=5)
    b = sample(m, v, 80, seed=5)
    c = sample(m, v, 80, seed=6)
    assert a == b and len(a) == 80
    assert a != c
    assert set(a) <= set(v.itos)


def test_prime_is_kept_and_continued(model_vocab):
    m, v = model_vocab
    s = sample(m, v, 20, prime="the ", seed=1)
    assert s.startswith("the ") and len(s) == 24
    with pytest.raises(DataError, match="'Z'"):
        sample(m, v, 5, prime="Zebra")


def test_temperature_zero_is_argmax_and_ignores_the_seed(model_vocab):
    m, v = model_vocab
    a = sample(m, v, 30, temperature=0, seed=1)
    b = sample(m, v, 30, temperature=0, seed=2)
    assert a == b
    # the first character is the argmax after the default start token ("\n")
    logits, _ = m.step(np.array([v.stoi["\n"]]), np.zeros((1, 16), np.float32))
    assert a[0] == v.itos[int(np.argmax(logits[0]))]


def test_probabilities_are_float64_and_normalized():
    logits = np.array([80.0, 79.9, -1e4, 0.0], dtype=np.float32)
    p = probabilities(logits, 0.01)
    assert p.dtype == np.float64 and abs(p.sum() - 1.0) < 1e-12
    rng = np.random.default_rng(0)
    assert all(draw(logits, 0.01, rng) in (0, 1) for _ in range(100))
    # a draw can never land past the last token, whatever the rounding
    one_hot = np.array([-1e30, -1e30, 0.0], dtype=np.float32)
    assert all(draw(one_hot, 1.0, rng) == 2 for _ in range(50))


def test_bad_arguments(model_vocab):
    m, v = model_vocab
    # the library names its arguments; the CLI (tests/lm/test_cli.py) names the options
    with pytest.raises(UsageError, match="^temperature: expected a number >= 0, got -1$"):
        sample(m, v, 5, temperature=-1)
    with pytest.raises(UsageError, match="^length: expected a non-negative integer, got -5$"):
        sample(m, v, -5)
    with pytest.raises(DataError, match="does not fit"):
        sample(m, Vocab.build(["ab"]), 5)


def test_word_level_sampling():
    v = Vocab.build(["the cat sat\non the mat\n"], "word")
    m = rnn_gpu.RNN(len(v), 8, len(v), backend="numpy", seed=2)
    s = sample(m, v, 10, prime="the cat", seed=0)
    assert s.startswith("the cat ")
    assert all(w in v.stoi for w in s.split())
