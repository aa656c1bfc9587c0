"""bench/adaptive.py at a tiny size: it validates, times every contender and writes rows."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "adaptive.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_adaptive", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_adaptive_bench_runs(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "rows.jsonl"
    args = ["--vocab", "500", "--hidden", "32", "--bptt", "5", "--batch", "4", "--cutoffs",
            "50,200", "--reps", "2", "--warmup", "1", "--json", str(out)]
    try:
        import torch  # noqa: F401,PLC0415
    except ImportError:
        args.append("--no-torch")
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert "validate adaptive float32 vs float64" in printed and "speedup of adaptive" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["name"] == "rnn_gpu full softmax" and rows[1]["name"] == "rnn_gpu adaptive"
    for r in rows:
        assert r["min_s"] <= r["median_s"] <= r["max_s"] and r["tokens_per_s"] > 0


def test_zipf_stream_is_sorted_by_frequency():
    bench = _load()
    ids = bench.zipf_stream(1000, 20_000, 1.0, seed=0)
    counts = [int((ids == k).sum()) for k in (0, 10, 100)]
    assert counts[0] > counts[1] > counts[2]
    with pytest.raises(ValueError):
        bench.zipf_stream(0, 10, 1.0, seed=0)


def test_adaptive_convergence_runs_a_gated_cell(tmp_path):
    """bench/adaptive_convergence.py --cell lstm: both models train and evaluate, the
    LSTM's (h, c) state carried across chunks."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    script = Path(__file__).resolve().parents[2] / "bench" / "adaptive_convergence.py"
    rng = np.random.default_rng(0)
    words = [f"w{int(k)}" for k in rng.zipf(1.3, 4000) % 300]
    text = tmp_path / "words.txt"
    text.write_text("\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12)))
    r = subprocess.run([sys.executable, str(script), "--data", str(text), "--budget", "1",
                        "--eval-every", "1", "--hidden", "16", "--batch", "4", "--bptt", "5",
                        "--cell", "lstm", "--cutoffs", "20,100"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["cell"] == "lstm"
    for name in ("full softmax", "adaptive"):
        run = summary["runs"][name]
        assert run["steps"] > 0 and np.isfinite(run["final_ppl"]) and run["curve"]
