"""What the training application computes, checked against direct computations: the
state carried from chunk to chunk, evaluation over a whole stream, the gradient of the
mean token loss, the word vocabulary's order, and the sampling temperature."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu.lm.data import EOS, UNK, Vocab, get_chunk, tokenize
from rnn_gpu.lm.sample import probabilities, sample
from rnn_gpu.lm import Trainer, evaluate

from ..helpers import randomize
from .test_train import make_text, quiet, small_config


def twin(model):
    """An independent copy of `model` (same configuration and parameter values)."""
    return rnn_gpu.RNN.from_config(model.config, backend="numpy",
                                   params={k: rnn_gpu.to_numpy(v) for k, v in model.params.items()})


@pytest.fixture
def trainer(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(make_text())
    return Trainer(small_config(tmp_path, data, clip=None, max_steps=4), console=quiet())


def test_each_step_starts_from_the_state_the_previous_one_ended_in(trainer):
    tr, h = trainer, None
    for k in range(4):
        x, y = get_chunk(tr.train_data, k * 12, 12)
        loss, _, h = twin(tr.model).loss_and_grads(x, y, h0=h)
        got, ntok = tr.train_step()
        assert ntok == y.size
        assert got == pytest.approx(loss, rel=1e-6)
        np.testing.assert_allclose(rnn_gpu.to_numpy(tr.state.hidden), h, rtol=1e-5, atol=1e-6)
        assert np.abs(h).max() > 0.1  # a state worth carrying


def test_the_optimizer_gets_the_gradient_of_the_mean_token_loss(trainer):
    tr = trainer
    handed = []
    real = tr.optimizer.step
    tr.optimizer.step = lambda grads: (handed.append({k: rnn_gpu.to_numpy(g).copy()
                                                      for k, g in grads.items()}), real(grads))
    for k in range(2):
        x, y = get_chunk(tr.train_data, k * 12, 12)
        _, grads, _ = twin(tr.model).loss_and_grads(x, y, h0=tr.state.hidden)
        tr.train_step()
        for name, g in grads.items():  # mean over all T * B tokens
            np.testing.assert_allclose(handed[k][name], g / y.size, rtol=1e-5, atol=1e-9,
                                       err_msg=name)


def test_evaluation_carries_the_state_across_chunks(trainer):
    tr = trainer
    randomize(tr.model, seed=3, scale=0.5)  # a state that matters
    src = tr.valid_data
    whole, _ = twin(tr.model).loss(src[:-1], src[1:])  # one sequence: the state never restarts
    expect = whole / src[1:].size
    assert tr.evaluate() == pytest.approx(expect, rel=1e-5)
    for bptt in (5, 12, 40):
        assert evaluate(tr.model, src, bptt) == pytest.approx(expect, rel=1e-5)
    # the same chunks each from a zero state give another number: the test can tell
    m = twin(tr.model)
    restarted = sum(m.loss(*get_chunk(src, i, 5))[0] for i in range(0, len(src) - 1, 5))
    assert abs(restarted / src[1:].size - expect) > 1e-3 * expect


def test_word_vocabulary_keeps_the_most_frequent_words():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    # rare words first, so that first appearance and frequency disagree
    weights = np.arange(1, 41, dtype=float) ** 2
    lines = [" ".join(words[:5])] + [
        " ".join(rng.choice(words, size=8, p=weights / weights.sum())) for _ in range(200)]
    text = "\n".join(lines) + "\n"
    counts = collections.Counter(t for t in tokenize(text, "word") if t != EOS)
    first_seen = list(dict.fromkeys(t for t in tokenize(text, "word") if t != EOS))
    by_count = sorted(first_seen, key=lambda w: -counts[w])  # stable: ties by first appearance
    assert by_count[:10] != first_seen[:10]
    for cap in (12, 25, None):
        v = Vocab.build([text], "word", max_size=cap)
        assert v.itos[:2] == [EOS, UNK]
        assert v.itos[2:] == by_count[: None if cap is None else cap - 2]


def test_sampling_follows_the_temperature():
    vocab = Vocab.build(["the cat sat on the mat.\n"], "char")
    m = rnn_gpu.RNN(len(vocab), 16, len(vocab), backend="numpy", seed=0)
    randomize(m, seed=1, scale=0.8)
    logits, _ = m.step(np.array([vocab.stoi["\n"]]), np.zeros((1, 16), np.float32))
    z = rnn_gpu.to_numpy(logits[0]).astype(np.float64)
    top = vocab.itos[int(np.argmax(z))]
    share = {}
    for t in (0.3, 1.0, 3.0):
        p = np.exp(z / t - (z / t).max())
        cdf = np.cumsum(p / p.sum())
        np.testing.assert_allclose(probabilities(z, t), p / p.sum(), rtol=1e-12)
        firsts = []
        for seed in range(200):  # the first token inverts the tempered CDF at the first draw
            u = np.random.default_rng(seed).random()
            want = vocab.itos[min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(cdf) - 1)]
            got = sample(m, vocab, 1, temperature=t, seed=seed)
            assert got == want, (t, seed)
            firsts.append(got)
        share[t] = firsts.count(top) / len(firsts)
    assert share[0.3] > share[1.0] > share[3.0]
