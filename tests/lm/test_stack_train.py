"""Training a stacked model: --layers, dropout between layers, checkpoints and resume,
sampling and evaluation; --bidirectional is refused for language modelling."""
from __future__ import annotations

import numpy as np
import pytest

from rnn_gpu.cli import main
from rnn_gpu.lm import TrainConfig, Trainer, load_checkpoint

SMALL = ["--hidden", "12", "--batch-size", "3", "--bptt", "8", "--no-progress"]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("to be or not to be, that is the question.\n" * 60)
    return p


def test_train_a_two_layer_model_with_dropout_resume_sample_eval(corpus, tmp_path, capsys):
    ck = tmp_path / "s.npz"
    assert main(["train", "--data", str(corpus), "--out", str(ck), "--layers", "2",
                 "--dropout", "0.2", "--max-steps", "5", "--eval-every", "5",
                 "--sample-length", "10", *SMALL]) == 0
    assert "x 2 layers" in capsys.readouterr().out
    c = load_checkpoint(ck)
    assert c.model.num_layers == 2 and {"U1", "W1", "b1"} <= set(c.model.params)
    assert c.state["hidden"].shape == (2, 3, 12) and c.meta["format_version"] == 2
    assert main(["train", "--resume", str(ck), "--max-steps", "7", "--sample-length", "0",
                 "--no-progress"]) == 0
    assert load_checkpoint(ck).train_state["step"] == 7
    assert main(["sample", str(ck), "--length", "20", "--seed", "1"]) == 0
    assert main(["eval", str(ck), str(corpus), "--no-progress"]) == 0
    assert "perplexity" in capsys.readouterr().out


@pytest.mark.parametrize("cell,layers", [("elman", 3), ("gru", 2), ("lstm", 2)])
def test_resume_of_a_stack_is_bit_exact(corpus, tmp_path, cell, layers):
    def cfg(out, steps):
        return TrainConfig(data=str(corpus), hidden=12, batch_size=3, bptt=8, layers=layers,
                           cell=cell, dropout=0.3, max_steps=steps, eval_every=3,
                           sample_length=0, out=str(out), overwrite=True)
    a = Trainer(cfg(tmp_path / "a.npz", 6), progress=False)
    a.fit()
    b = Trainer(cfg(tmp_path / "b.npz", 3), progress=False)
    b.fit()
    b = Trainer.from_checkpoint(tmp_path / "b.npz", max_steps=6, progress=False)
    b.fit()
    for k, v in a.model.params.items():
        np.testing.assert_array_equal(np.asarray(b.model.params[k]), np.asarray(v), err_msg=k)
    ha, hb = load_checkpoint(tmp_path / "a.npz").state, load_checkpoint(tmp_path / "b.npz").state
    assert set(ha) == set(hb) == ({"hidden", "hidden_c"} if cell == "lstm" else {"hidden"})
    for k in ha:  # (layers, B, H) each
        assert ha[k].shape == (layers, 3, 12)
        np.testing.assert_array_equal(hb[k], ha[k], err_msg=k)


def test_bidirectional_is_refused_with_one_line(corpus, tmp_path, capsys):
    rc = main(["train", "--data", str(corpus), "--out", str(tmp_path / "x.npz"),
               "--bidirectional", *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and "--bidirectional" in err and "cannot" in err
    assert err.strip().count("\n") == 0 and not (tmp_path / "x.npz").exists()
