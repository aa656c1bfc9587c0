"""bench/convergence.py's paired summary over seeds (the runs themselves take minutes and
belong to the benchmark, not the tests)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "convergence.py"


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


def test_best_so_far_and_the_grid(conv):
    curve = [(10.0, 6.0), (20.0, 5.0), (30.0, 5.5), (40.0, 4.9)]
    assert conv.best_by(curve, 5) is None
    assert [conv.best_by(curve, t) for t in (10, 25, 30, 100)] == [6.0, 5.0, 5.0, 4.9]
    assert conv.equal_time_grid(300) == [30, 60, 90, 120, 150, 180, 210, 240, 270, 300]
    assert conv.equal_time_grid(100) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def test_equal_wall_time_from_the_curves(conv, tmp_path, capsys):
    rows = [
        # seed 0: ours evaluates at 20 s and 40 s; theirs at 50 s and 100 s
        _row("rnn-gpu", 0, 4.6, budget_s=100.0, curve=[(20, 5.0), (40, 4.6)], train_seconds=41),
        _row("pytorch", 0, 4.7, budget_s=100.0, curve=[(50, 5.4), (100, 4.7)], train_seconds=100),
        # seed 1: ours is worse at 60 s
        _row("rnn-gpu", 1, 4.8, budget_s=100.0, curve=[(30, 5.2), (60, 4.8)], train_seconds=61),
        _row("pytorch", 1, 4.75, budget_s=100.0, curve=[(10, 5.9), (55, 4.75)], train_seconds=80),
    ]
    s = conv.paired_summary(rows)[0]
    et = {e["t"]: e for e in s["equal_time"]}
    assert 20 not in et  # seed 0's PyTorch and seed 1's rnn-gpu had not evaluated yet
    assert et[30]["n"] == 1 and et[30]["diff"] == pytest.approx(5.2 - 5.9)
    assert et[50]["n"] == 2 and et[50]["rnn_gpu"] == pytest.approx((4.6 + 5.2) / 2)
    assert et[50]["pytorch"] == pytest.approx((5.4 + 5.9) / 2) and et[50]["rnn_gpu_lower"] == 2
    assert et[60]["diff"] == pytest.approx(((4.6 - 5.4) + (4.8 - 4.75)) / 2)
    assert et[60]["rnn_gpu_lower"] == 1
    assert et[100]["diff"] == pytest.approx(((4.6 - 4.7) + (4.8 - 4.75)) / 2)
    f = tmp_path / "runs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert conv.main(["--summary", str(f)]) == 0
    out = capsys.readouterr().out
    assert "training stopped after 41 to 100 s; 1 of 4 runs used the whole budget" in out
    # medians of (41, 61) and (100, 80); ratios 0.41 and 0.7625
    assert ("stopped after (median): rnn-gpu 51 s, PyTorch 90 s; rnn-gpu's time over "
            "PyTorch's, median over seeds: 0.59") in out
    assert "at equal wall time" in out
    assert "      50     4.900     5.650      -0.750    0.050  2 of 2" in out


def test_no_equal_time_table_without_curves(conv, capsys, tmp_path):
    f = tmp_path / "runs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in (_row("rnn-gpu", 0, 4.7),
                                                          _row("pytorch", 0, 4.8))))
    assert conv.main(["--summary", str(f)]) == 0
    assert "equal wall time" not in capsys.readouterr().out


def test_cells_and_layers_are_part_of_the_configuration(conv):
    rows = [_row("rnn-gpu", 0, 4.7, cell="lstm"), _row("pytorch", 0, 4.8, cell="lstm"),
            _row("rnn-gpu", 0, 4.9, cell="gru"), _row("pytorch", 0, 5.0, cell="elman"),
            _row("rnn-gpu", 0, 4.6, cell="lstm", layers=2),
            _row("pytorch", 0, 4.65, cell="lstm", layers=2)]
    s = conv.paired_summary(rows)
    assert [(x["config"]["cell"], x["config"]["layers"], x["pairs"]) for x in s] == [
        ("lstm", None, [(0, 4.7, 4.8)]), ("lstm", 2, [(0, 4.6, 4.65)])]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_short_run_of_a_gated_cell_on_both_sides(conv, tmp_path, cell):
    pytest.importorskip("torch")
    text = tmp_path / "t.txt"
    phrase = "to be or not to be, that is the question. "
    text.write_text(phrase * 60)
    out = tmp_path / "r.jsonl"
    rc = conv.main(["--data", str(text), "--budget", "1", "--hidden", "16", "--batch-size", "4",
                    "--bptt", "8", "--threads", "1", "--cell", cell, "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["impl"] for r in rows} == {"rnn-gpu", "pytorch"}
    for r in rows:
        assert r["cell"] == cell and r["steps"] > 0 and math.isfinite(r["val_ppl"])
        assert r["val_ppl"] < len(set(phrase))  # better than a uniform guess
