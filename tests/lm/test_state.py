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
