"""A run's state and its checkpoint (rnn_gpu.lm.state): what is saved is what is restored."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rnn_gpu.errors import CheckpointError
from rnn_gpu.lm import TrainConfig, Trainer, load_checkpoint
from rnn_gpu.lm.state import RunState, restore_run

from .test_train import make_text, quiet, small_config


@pytest.fixture
def trainer(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(make_text())
    return Trainer(small_config(tmp_path, data, schedule="mikolov", dropout=0.2, max_steps=7,
                                eval_every=3), console=quiet())


def fields(state: RunState) -> dict:
    d = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "started"}
    d["rng"] = state.rng.bit_generator.state
    return d


def test_restore_gives_back_every_field_that_was_saved(trainer, tmp_path):
    trainer.fit()
    st = trainer.state
    assert st.hidden is not None and st.prev_params and st.history and st.step == 7
    ck = load_checkpoint(trainer.save(tmp_path / "s.npz"), with_model=False)
    assert ck.train_state["corpus"] == trainer.corpus.source
    back = restore_run(ck, model=trainer.model, config=trainer.config,
                       optimizer=trainer.optimizer, schedule=trainer.schedule)
    a, b = fields(st), fields(back)
    assert a.keys() == b.keys()
    for k in a:
        if k == "hidden":
            np.testing.assert_array_equal(a[k], b[k])
        elif k == "prev_params":
            assert a[k].keys() == b[k].keys()
            for p in a[k]:
                np.testing.assert_array_equal(a[k][p], b[k][p], err_msg=p)
        else:
            assert a[k] == b[k], k
    assert back.rng.random() == st.rng.random()  # the same stream goes on


def test_a_fresh_state_saves_no_arrays():
    record, arrays = RunState(rng=np.random.default_rng(0)).to_checkpoint()
    assert arrays == {}
    assert list(record) == ["step", "epoch", "chunk", "elapsed", "tokens", "rng", "history"]


def test_bad_training_state_is_a_checkpoint_error(trainer, tmp_path):
    trainer.fit()
    ck = load_checkpoint(tmp_path / "ck.npz", with_model=False)
    kw = dict(model=trainer.model, config=trainer.config, optimizer=trainer.optimizer,
              schedule=trainer.schedule)
    del ck.meta["train_state"]["step"]
    with pytest.raises(CheckpointError, match="training state is incomplete"):
        restore_run(ck, **kw)
    ck = load_checkpoint(tmp_path / "ck.npz", with_model=False)
    ck.state["hidden"] = ck.state["hidden"][:1]
    with pytest.raises(CheckpointError, match=r"hidden state has shape \(1, 24\)"):
        restore_run(ck, **kw)
    assert isinstance(TrainConfig.from_dict(ck.train_config), TrainConfig)


@pytest.fixture
def lstm_trainer(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(make_text())
    return Trainer(small_config(tmp_path, data, cell="lstm", dropout=0.2, max_steps=4,
                                eval_every=2, out=str(tmp_path / "lstm.npz")), console=quiet())


def test_an_lstm_state_is_stored_as_hidden_and_hidden_c_and_restored_as_the_pair(
        lstm_trainer, tmp_path):
    tr = lstm_trainer
    tr.fit()
    h, c = tr.state.hidden  # the pair the model returned, carried into the next chunk
    assert h.shape == c.shape == tr.model.state_shape(4) and not np.array_equal(h, c)
    _, arrays = tr.state.to_checkpoint()
    assert set(arrays) == {"hidden", "hidden_c"}
    ck = load_checkpoint(tr.save(tmp_path / "s.npz"), with_model=False)
    np.testing.assert_array_equal(ck.state["hidden"], h)
    np.testing.assert_array_equal(ck.state["hidden_c"], c)
    back = restore_run(ck, model=tr.model, config=tr.config, optimizer=tr.optimizer,
                       schedule=tr.schedule)
    assert isinstance(back.hidden, tuple) and len(back.hidden) == 2
    np.testing.assert_array_equal(back.hidden[0], h)
    np.testing.assert_array_equal(back.hidden[1], c)


def test_a_carried_state_that_does_not_fit_the_cell_is_a_checkpoint_error(
        lstm_trainer, trainer, tmp_path):
    lstm_trainer.fit()
    path = tmp_path / "lstm.npz"
    kw = dict(model=lstm_trainer.model, config=lstm_trainer.config,
              optimizer=lstm_trainer.optimizer, schedule=lstm_trainer.schedule)
    cases = [(lambda s: s.pop("hidden_c"), r"half there: state/hidden without state/hidden_c"),
             (lambda s: s.pop("hidden"), r"half there: state/hidden_c without state/hidden"),
             (lambda s: s.update(hidden_c=s["hidden_c"][:1]),
              r"cell state has shape \(1, 24\), expected \(4, 24\) \(state/hidden_c")]
    for change, message in cases:
        ck = load_checkpoint(path, with_model=False)
        change(ck.state)
        with pytest.raises(CheckpointError, match=message):
            restore_run(ck, **kw)
    # an Elman run's checkpoint with a cell state beside its hidden state
    trainer.fit()
    ck = load_checkpoint(tmp_path / "ck.npz", with_model=False)
    assert "hidden_c" not in ck.state
    ck.state["hidden_c"] = ck.state["hidden"]
    with pytest.raises(CheckpointError, match="holds an LSTM cell state .* elman model"):
        restore_run(ck, model=trainer.model, config=trainer.config,
                    optimizer=trainer.optimizer, schedule=trainer.schedule)
