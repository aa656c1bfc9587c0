"""bench/convergence.py's paired summary over seeds (the runs themselves take minutes and
belong to the benchmark, not the tests)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "convergence.py"


@pytest.fixture(scope="module")
def conv():
    spec = importlib.util.spec_from_file_location("convergence_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(impl, seed, ppl, **cfg):
    base = {"bench": "convergence", "impl": impl, "data": "t.txt", "budget_s": 300.0,
            "hidden": 256, "batch_size": 32, "bptt": 64, "lr": 0.002, "clip": 5.0,
            "schedule": "mikolov", "dropout": 0.0, "seed": seed, "val_ppl": ppl}
    return {**base, **cfg}


def test_pairs_by_configuration_and_seed(conv):
    rows = [
        _row("rnn-gpu", 0, 4.70), _row("pytorch", 0, 4.80),
        _row("rnn-gpu", 1, 4.90), _row("pytorch", 1, 4.85),
        _row("rnn-gpu", 2, 4.60), _row("pytorch", 2, 4.75),
        _row("rnn-gpu", 3, 4.00),  # no PyTorch run: not a pair
        _row("rnn-gpu", None, 1.0), _row("pytorch", None, 9.0),  # no seed recorded
        _row("rnn-gpu", 0, 5.00, lr=0.001), _row("pytorch", 0, 5.10, lr=0.001),
        {"bench": "convergence-sweep", "impl": "rnn-gpu", "seed": 0, "val_ppl": 1.0},
    ]
    s = conv.paired_summary(rows)
    assert [x["config"]["lr"] for x in s] == [0.002, 0.001]
    a = s[0]
    assert a["n"] == 3 and [p[0] for p in a["pairs"]] == [0, 1, 2]
    diffs = [-0.10, 0.05, -0.15]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert a["mean_diff"] == pytest.approx(mean)
    assert a["stderr_diff"] == pytest.approx(sd / math.sqrt(3))
    assert a["mean_rnn_gpu"] == pytest.approx(14.2 / 3) and a["mean_pytorch"] == pytest.approx(4.80)
    assert (a["rnn_gpu_lower"], a["pytorch_lower"]) == (2, 1)
    assert s[1]["n"] == 1 and math.isnan(s[1]["stderr_diff"])


def test_a_later_run_of_the_same_seed_replaces_the_earlier(conv):
    s = conv.paired_summary([_row("rnn-gpu", 0, 5.0), _row("pytorch", 0, 4.9),
                             _row("rnn-gpu", 0, 4.7)])
    assert s[0]["pairs"] == [(0, 4.7, 4.9)]


def test_summary_command(conv, tmp_path, capsys):
    f = tmp_path / "runs.jsonl"
    rows = [_row("rnn-gpu", 0, 4.70), _row("pytorch", 0, 4.80),
            _row("rnn-gpu", 1, 4.75), _row("pytorch", 1, 4.70)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert conv.main(["--summary", str(f)]) == 0
    out = capsys.readouterr().out
    assert "-0.100" in out and "+0.050" in out
    assert "mean     4.725     4.750      -0.025 +- 0.075 (standard error)" in out
    assert "rnn-gpu lower in 1 of 2 seeds, PyTorch lower in 1" in out


def test_summary_of_a_missing_file(conv, tmp_path, capsys):
    assert conv.main(["--summary", str(tmp_path / "none.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
