"""Training with the adaptive softmax at word level: the options, checkpoints, resume,
sample, eval and info all work with it, and its validation perplexity is that of the
model's exact full distribution."""
from __future__ import annotations

import numpy as np
import pytest

from rnn_gpu.cli import main
from rnn_gpu.lm import TrainConfig, Trainer, load_checkpoint

SMALL = ["--level", "word", "--hidden", "16", "--batch-size", "4", "--bptt", "6",
         "--sample-length", "5", "--no-progress"]


@pytest.fixture
def words(tmp_path):
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(300)]
    p = 1.0 / np.arange(1, 301)  # Zipf: a head of frequent words and a long tail
    text = " ".join(rng.choice(vocab, size=6000, p=p / p.sum()))
    path = tmp_path / "words.txt"
    path.write_text("\n".join(text[i:i + 80] for i in range(0, len(text), 80)))
    return path


def test_train_resume_sample_eval_info_with_the_adaptive_softmax(words, tmp_path, capsys):
    ck = tmp_path / "a.npz"
    assert main(["train", "--data", str(words), "--out", str(ck), "--output", "adaptive",
                 "--cutoffs", "20,80", "--div-value", "2", "--max-steps", "6",
                 "--eval-every", "3", *SMALL]) == 0
    c = load_checkpoint(ck)
    assert c.model.output == "adaptive" and tuple(c.model.config["cutoffs"]) == (20, 80)
    assert {"tail0_proj", "tail0_out", "tail1_proj", "tail1_out"} <= set(c.model.params)
    assert c.model.params["tail1_proj"].shape == (16 // 4, 16)  # F // div_value^2
    assert main(["train", "--resume", str(ck), "--max-steps", "8", "--sample-length", "0",
                 "--no-progress"]) == 0
    assert load_checkpoint(ck).train_state["step"] == 8
    capsys.readouterr()
    assert main(["sample", str(ck), "--length", "5", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out.split()) >= 5
    assert main(["eval", str(ck), str(words), "--no-progress"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["info", str(ck)]) == 0
    assert "adaptive" in capsys.readouterr().out


def test_validation_perplexity_is_that_of_the_full_distribution(words, tmp_path):
    tr = Trainer(TrainConfig(data=str(words), level="word", hidden=16, batch_size=4, bptt=6,
                             output="adaptive", max_steps=2, out=str(tmp_path / "b.npz"),
                             sample_length=0), progress=False)
    tr.train_step()
    val = tr.evaluate()
    x = tr.valid_data[:-1]
    y = tr.valid_data[1:]
    lp = np.asarray(tr.model.log_prob(x))  # (T, B, V), normalized over all V words
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-5)
    nll = -np.take_along_axis(lp, y[..., None], -1).mean()
    assert val == pytest.approx(nll, rel=1e-5)
    assert tuple(tr.model.config["cutoffs"]) == (len(tr.vocab) // 4,)  # the default below 2000


@pytest.mark.parametrize("argv,message", [
    (["--cutoffs", "20,80"], "--cutoffs applies to --output adaptive only"),
    (["--output", "adaptive", "--cutoffs", "80,20"], "--cutoffs: expected strictly increasing"),
    (["--output", "adaptive", "--div-value", "0"], "--div-value: expected a number > 0"),
    (["--output", "adaptive", "--cutoffs", "20,5000"], "--cutoffs:"),
])
def test_bad_adaptive_options_exit_2_with_one_line(words, tmp_path, capsys, argv, message):
    rc = main(["train", "--data", str(words), "--out", str(tmp_path / "c.npz"), *SMALL,
               "--max-steps", "1", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "c.npz").exists()
