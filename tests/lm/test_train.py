"""The trainer: learning, exact resume, divergence, schedules (rnn_gpu.lm.trainer)."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from rich.console import Console

import rnn_gpu
from rnn_gpu.lm.checkpoint import load_checkpoint
from rnn_gpu.errors import CheckpointError, DataError, TrainingDiverged, UsageError
from rnn_gpu.lm import TrainConfig, Trainer, evaluate

WORDS = "the a cat dog bird sat ran flew on under over mat log tree and then".split()


def make_text(n_lines=120, seed=0) -> str:
    """Pseudo-English with enough structure for a tiny model to learn in a few steps."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n_lines):
        n = int(rng.integers(4, 9))
        lines.append(" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n)) + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(make_text())
    return p


def quiet():
    return Console(file=io.StringIO(), width=200)


def small_config(tmp_path, data, **kw) -> TrainConfig:
    base = dict(data=str(data), hidden=24, batch_size=4, bptt=12, backend="numpy",
                out=str(tmp_path / "ck.npz"), optimizer="adam", lr=1e-2, sample_length=0)
    base.update(kw)
    return TrainConfig(**base)


def params_of(model):
    return {k: rnn_gpu.to_numpy(v).copy() for k, v in model.params.items()}


def test_training_lowers_validation_loss(tmp_path, text_file):
    tr = Trainer(small_config(tmp_path, text_file, max_steps=120, eval_every=30), console=quiet())
    before = tr.evaluate()
    assert before == pytest.approx(math.log(len(tr.vocab)), rel=0.15)  # about a uniform guess
    res = tr.fit()
    vals = [r["val_loss"] for r in res.history]
    assert len(vals) == 5  # every 30 steps, and at the end of the epoch (step 62)
    assert vals[-1] < vals[0] < before
    assert res.val_ppl == pytest.approx(math.exp(vals[-1]))
    assert res.steps == 120 and 118 * 4 * 12 < res.tokens <= 120 * 4 * 12  # one short chunk
    assert (tmp_path / "ck.npz").exists()
    assert len(tr.sample(30, seed=0)) == 30


def test_evaluation_is_the_engine_loss_per_token(tmp_path, text_file):
    tr = Trainer(small_config(tmp_path, text_file), console=quiet())
    x, y = tr.train_data[:12], tr.train_data[1:13]
    loss, _, _ = tr.model.loss_and_grads(x, y)
    assert evaluate(tr.model, tr.train_data[:13], 12) == pytest.approx(loss / y.size, rel=1e-5)


@pytest.mark.parametrize("schedule,dropout,cell", [
    ("constant", 0.0, "elman"), ("plateau", 0.0, "elman"), ("mikolov", 0.0, "elman"),
    ("cosine", 0.0, "elman"), ("constant", 0.3, "elman"),
    ("mikolov", 0.3, "gru"), ("mikolov", 0.3, "lstm")])
def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path, text_file, schedule, dropout,
                                                        cell):
    # 34 steps cross an epoch boundary (the corpus has 23 chunks per epoch) and several
    # scheduled evaluations; the interruption at step 17 falls mid-epoch. An LSTM carries
    # (h, c) across it.
    kw = dict(schedule=schedule, eval_every=5, lr=3e-2, batch_size=8, bptt=16, dropout=dropout,
              cell=cell)
    full = Trainer(small_config(tmp_path, text_file, max_steps=34, out=str(tmp_path / "a.npz"), **kw),
                   console=quiet())
    assert full.chunks_per_epoch < 34
    full.fit()

    # the second run is stopped at step 17 as Ctrl-C stops it, and resumed as it was saved
    first = Trainer(small_config(tmp_path, text_file, max_steps=34, out=str(tmp_path / "b.npz"), **kw),
                    console=quiet())
    real = first.train_step

    def step_then_ctrl_c():
        out = real()
        if first.state.step == 17:
            first.interrupt()  # what the SIGINT handler does
        return out

    first.train_step = step_then_ctrl_c
    assert first.fit().stop_reason == "interrupted"
    resumed = Trainer.from_checkpoint(tmp_path / "b.npz", console=quiet())
    assert resumed.state.step == 17
    resumed.fit()

    a, b = params_of(full.model), params_of(resumed.model)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert full.optimizer.lr == resumed.optimizer.lr
    assert full.optimizer.t == resumed.optimizer.t == 34
    assert full.state.rng.bit_generator.state == resumed.state.rng.bit_generator.state
    ca, cb = load_checkpoint(tmp_path / "a.npz"), load_checkpoint(tmp_path / "b.npz")
    for k in ca.optim:
        np.testing.assert_array_equal(ca.optim[k], cb.optim[k])
    assert set(ca.state) == set(cb.state)
    assert ("hidden_c" in ca.state) == (cell == "lstm")  # an LSTM's c beside its h
    for k in ca.state:  # hidden (and hidden_c), the Mikolov schedule's weights
        np.testing.assert_array_equal(ca.state[k], cb.state[k], err_msg=k)
    if cell == "lstm":
        assert isinstance(resumed.state.hidden, tuple) and len(resumed.state.hidden) == 2
    assert full.sample(40) == resumed.sample(40)


def test_resume_rejects_changed_model_options_and_vocabulary(tmp_path, text_file):
    Trainer(small_config(tmp_path, text_file, max_steps=3), console=quiet()).fit()
    ck = tmp_path / "ck.npz"
    before = ck.read_bytes()
    with pytest.raises(UsageError, match="--hidden 32 differs"):
        Trainer.from_checkpoint(ck, console=quiet(), hidden=32)
    other = tmp_path / "other.txt"
    other.write_text(make_text() + "Zebra!\n")
    with pytest.raises(CheckpointError, match="vocabulary mismatch"):
        Trainer.from_checkpoint(ck, console=quiet(), data=str(other))
    assert ck.read_bytes() == before


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, text_file):
    tr = Trainer(small_config(tmp_path, text_file, max_steps=50, eval_every=4), console=quiet())
    real = tr.model.loss_and_grads
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        loss, g, h = real(*a, **k)
        return (float("nan") if calls["n"] == 7 else loss), g, h

    tr.model.loss_and_grads = flaky
    with pytest.raises(TrainingDiverged, match="non-finite at step 7.*last good checkpoint"):
        tr.fit()
    ck = load_checkpoint(tmp_path / "ck.npz")
    assert ck.train_state["step"] == 4
    assert all(np.isfinite(v).all() for v in ck.params.values())


def test_exploding_loss_stops(tmp_path, text_file):
    cfg = small_config(tmp_path, text_file, optimizer="sgd", lr=1e4, clip=0, max_steps=200,
                       explode_threshold=1.5)
    with pytest.raises(TrainingDiverged, match="step"):
        Trainer(cfg, console=quiet()).fit()


def test_mikolov_restores_weights_when_validation_worsens(tmp_path, text_file):
    tr = Trainer(small_config(tmp_path, text_file, schedule="mikolov", max_steps=10, eval_every=5),
                 console=quiet())
    tr.fit()  # first scheduled evaluation at step 5 saves a copy, the second acts on it
    saved = {k: v.copy() for k, v in tr.state.prev_params.items()}
    tr.schedule.prev = 0.0  # pretend the last evaluation was perfect: the next is worse
    note = tr._scheduled_eval(tr.evaluate()).note
    assert "restored" in note
    for k, v in saved.items():
        np.testing.assert_array_equal(tr.model.params[k], v)


def test_cosine_schedule_anneals_to_zero_over_the_stopping_rule(tmp_path, text_file):
    # 23 chunks per epoch with these sizes; 2 epochs = 46 steps
    for stop in ({"max_steps": 30}, {"epochs": 2}):
        tr = Trainer(small_config(tmp_path, text_file, schedule="cosine", lr=0.1, batch_size=8,
                                  bptt=16, overwrite=True, **stop), console=quiet())
        seen = []
        real = tr.train_step

        def spy():
            seen.append(tr.optimizer.lr)
            return real()

        tr.train_step = spy
        tr.fit()
        n = len(seen)
        assert n == (30 if "max_steps" in stop else 2 * tr.chunks_per_epoch)
        expect = [0.05 * (1 + math.cos(math.pi * i / n)) for i in range(n)]
        np.testing.assert_allclose(seen, expect, rtol=1e-12, atol=1e-15)
        assert seen[0] == 0.1 and 0 < seen[-1] < 0.1 * (1 - math.cos(math.pi / n))


def test_cosine_schedule_over_a_time_budget_continues_after_resume(tmp_path, text_file):
    import time as _time

    tr = Trainer(small_config(tmp_path, text_file, schedule="cosine", lr=0.1, time_budget=0.6),
                 console=quiet())
    seen = []
    real = tr.train_step

    def spy():
        seen.append(tr.optimizer.lr)
        _time.sleep(0.01)
        return real()

    tr.train_step = spy
    tr.fit()
    assert seen[0] == pytest.approx(0.1, rel=1e-3) and seen[-1] < 0.01
    assert all(a >= b for a, b in zip(seen, seen[1:]))  # decreasing in time
    p = tr.schedule.progress
    assert 0.95 < p <= 1.0
    # a run stopped half way goes on from where it was, down to zero over the new budget
    half = Trainer(small_config(tmp_path, text_file, schedule="cosine", lr=0.1, time_budget=0.6,
                                out=str(tmp_path / "h.npz")), console=quiet())
    half.schedule.progress = 0.5
    half.save()
    resumed = Trainer.from_checkpoint(tmp_path / "h.npz", console=quiet(), time_budget=0.3)
    seen.clear()
    resumed.train_step = lambda: (seen.append(resumed.optimizer.lr), _time.sleep(0.01),
                                  Trainer.train_step(resumed))[-1]
    resumed.fit()
    assert seen[0] == pytest.approx(0.05, rel=0.05) and seen[-1] < 0.01


def test_dropout_draws_new_multipliers_each_step_and_is_off_in_evaluation(tmp_path, text_file):
    tr = Trainer(small_config(tmp_path, text_file, dropout=0.5, max_steps=2), console=quiet())
    seen = []
    real = tr.model.loss_and_grads

    def spy(*a, **k):
        seen.append(k["dropout"])
        return real(*a, **k)

    tr.model.loss_and_grads = spy
    before = tr.evaluate()
    assert tr.evaluate() == before  # evaluation is deterministic: no dropout there
    tr.fit()
    assert len(seen) == 2 and seen[0].shape == (12, 4, 24)
    for d in seen:
        assert set(np.unique(d)) == {0.0, 2.0}
        assert 0.4 < (d == 0).mean() < 0.6
    assert not np.array_equal(seen[0], seen[1])


def test_bad_config_values(tmp_path, text_file):
    for kw, flag in [({"hidden": 0}, "--hidden"), ({"batch_size": -2}, "--batch-size"),
                     ({"bptt": 0}, "--bptt"), ({"lr": 0.0}, "--lr"), ({"lr": -1.0}, "--lr"),
                     ({"max_steps": 0}, "--max-steps"), ({"time_budget": -5.0}, "--time-budget"),
                     ({"clip": -1.0}, "--clip"), ({"truncate": -1}, "--truncate"),
                     ({"dropout": 1.0}, "--dropout"), ({"dropout": -0.1}, "--dropout"),
                     ({"optimizer": "rmsprop"}, "--optimizer: expected one of"),
                     ({"schedule": "linear"}, "--schedule: expected one of"),
                     ({"level": "byte"}, "--level: expected char or word"),
                     ({"seed": -1}, "--seed: expected an integer >= 0"),
                     ({"out": str(tmp_path / "missing" / "ck.npz")}, "--out")]:
        with pytest.raises(UsageError, match=flag):
            Trainer(small_config(tmp_path, text_file, **kw), console=quiet())


def test_corpus_too_small(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_text("abcdefghij" * 5)
    with pytest.raises(DataError, match="too small"):
        Trainer(small_config(tmp_path, p), console=quiet())


def test_word_level_training(tmp_path, text_file):
    tr = Trainer(small_config(tmp_path, text_file, level="word", bptt=6, max_steps=20),
                 console=quiet())
    assert tr.vocab.level == "word" and "<eos>" in tr.vocab.stoi
    res = tr.fit()
    assert math.isfinite(res.val_ppl)
    assert res.val_ppl < len(tr.vocab)


def test_interrupt_stops_after_the_step_with_a_checkpoint(tmp_path, text_file):
    tr = Trainer(small_config(tmp_path, text_file, max_steps=50), console=quiet())
    real = tr.model.loss_and_grads

    def ctrl_c_at_step_3(*a, **k):
        if tr.state.step == 2:
            tr.interrupt()  # what the SIGINT handler does
        return real(*a, **k)

    tr.model.loss_and_grads = ctrl_c_at_step_3
    res = tr.fit()
    assert res.stop_reason == "interrupted" and res.steps == 3
    assert load_checkpoint(tmp_path / "ck.npz").train_state["step"] == 3


def test_builtin_fallback_corpus_fits_the_defaults(monkeypatch):
    import sys

    from rnn_gpu.lm.data import check_trainable, load_corpus

    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)
    c = load_corpus(None)
    assert "fallback" in c.source
    d = TrainConfig()
    check_trainable(len(c.train), d.batch_size, d.bptt)
