"""Training gated cells from the command line: ``rnn-gpu train --cell gru|lstm`` learns,
records the cell in its checkpoint (format version 2), resumes bit for bit (an LSTM's
(h, c) carried across the interruption), samples, evaluates and is described by
``info``; a gated cell refuses --activation; a format-1 Elman checkpoint, which has no
"cell", still loads and resumes as an Elman model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rnn_gpu.cli import main
from rnn_gpu.errors import UsageError
from rnn_gpu.lm import TrainConfig, load_checkpoint
from rnn_gpu.lm.sample import sample

SMALL = ["--hidden", "12", "--batch-size", "3", "--bptt", "8", "--backend", "numpy",
         "--no-progress", "--sample-length", "0"]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("the cat sat on the mat. the dog sat on the log.\n" * 40)
    return p


def train(corpus, out, *extra) -> int:
    return main(["train", "--data", str(corpus), "--out", str(out), "--lr", "0.02",
                 "--eval-every", "4", *SMALL, *extra])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_gated_cell_trains_resumes_exactly_samples_and_is_described(corpus, tmp_path,
                                                                      capsys, cell):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert train(corpus, a, "--cell", cell, "--max-steps", "16") == 0
    assert f"model: {cell.upper()} " in capsys.readouterr().out
    ck = load_checkpoint(a)
    assert ck.model.cell == ck.model_config["cell"] == ck.train_config["cell"] == cell
    assert ck.meta["format_version"] == 2
    assert ck.params["W"].shape == ({"gru": 3, "lstm": 4}[cell] * 12, 12)
    vals = [r["val_loss"] for r in ck.train_state["history"]]
    assert len(vals) == 4 and vals[-1] < vals[0]  # it learns
    # the carried state: h, and for an LSTM its c beside it, of (B, H)
    assert set(ck.state) == ({"hidden", "hidden_c"} if cell == "lstm" else {"hidden"})
    assert all(v.shape == (3, 12) for v in ck.state.values())

    # 8 steps, then resumed to 16: the run of 16 steps, to the bit
    assert train(corpus, b, "--cell", cell, "--max-steps", "8") == 0
    assert main(["train", "--resume", str(b), "--max-steps", "16", "--no-progress",
                 "--sample-length", "0"]) == 0
    cb = load_checkpoint(b)
    assert cb.train_state["step"] == 16
    for part in ("params", "optim", "state"):
        want, got = getattr(ck, part), getattr(cb, part)
        assert set(got) == set(want), part
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{part} {k}")
    capsys.readouterr()

    assert main(["sample", str(b), "--length", "30", "--seed", "1", "--prime", "the "]) == 0
    text = capsys.readouterr().out
    assert text == sample(cb.model, cb.vocab, 30, prime="the ", temperature=0.8, seed=1) + "\n"
    assert len(text) == len("the ") + 30 + 1
    assert main(["eval", str(b), str(corpus), "--no-progress"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["info", str(b)]) == 0
    out = capsys.readouterr().out
    V = len(cb.vocab)
    assert f"{cell.upper()} {V} -> 12 hidden -> {V} (softmax)" in " ".join(out.split())
    cell_row = next(line for line in out.splitlines() if line.strip().startswith("cell"))
    assert cell_row.split()[1] == cell


def test_a_gated_cell_refuses_an_activation(corpus, tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert train(corpus, out, "--cell", "lstm", "--activation", "relu", "--max-steps", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("rnn-gpu: error: --activation relu:") and "--cell elman" in err
    assert err.strip().count("\n") == 0 and not out.exists()
    # the default activation is accepted with any cell
    TrainConfig(cell="gru", activation="tanh").validate()
    with pytest.raises(UsageError, match=r"^--cell: expected one of elman, gru, lstm, got 'rnn'"):
        TrainConfig(cell="rnn").validate()


def test_a_format_1_elman_checkpoint_without_a_cell_loads_and_resumes_as_elman(
        corpus, tmp_path, capsys):
    path = tmp_path / "old.npz"
    assert train(corpus, path, "--max-steps", "2") == 0
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    assert meta["format_version"] == 1 and meta["model"]["cell"] == "elman"
    del meta["model"]["cell"], meta["train_config"]["cell"]  # as rnn-gpu wrote them before
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    np.savez(path, **arrays)

    ck = load_checkpoint(path)
    assert ck.model.cell == "elman" and "cell" not in ck.model_config
    assert ck.params["W"].shape == (12, 12) and set(ck.state) == {"hidden"}
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    cell_row = next(line for line in capsys.readouterr().out.splitlines()
                    if line.strip().startswith("cell"))
    assert cell_row.split()[1] == "elman"
    # a resume may name the cell the old run had without one on record
    assert main(["train", "--resume", str(path), "--cell", "elman", "--max-steps", "3",
                 "--no-progress", "--sample-length", "0"]) == 0
    new = load_checkpoint(path)
    assert new.train_state["step"] == 3 and new.model.cell == "elman"
    assert main(["train", "--resume", str(path), "--cell", "lstm", "--max-steps", "4",
                 "--no-progress", "--sample-length", "0"]) == 2
    assert "--cell lstm differs from the checkpoint's elman" in capsys.readouterr().err
