"""bench/cells.py, the gated cells against PyTorch: a tiny run on the CPU validates both
models and prints a timed row per configuration (the figures belong to the benchmark)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "cells.py"


def test_a_tiny_run_validates_and_times_every_configuration():
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, str(SCRIPT), "--threads", "1", "--reps", "2",
                        "--warmup", "1", "--configs", "gru1,lstm2", "--shapes", "5x3x9x11"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])})
    assert r.returncode == 0, r.stdout + r.stderr
    rows = re.findall(r"^\s+5x3x9x11\s+(\w+)\s.*?([\d.]+)x\s.*?([\d.]+e[-+]\d+)\s*$", r.stdout,
                      re.M)
    assert [row[0] for row in rows] == ["gru1", "lstm2"], r.stdout
    for _, speedup, err in rows:
        assert float(speedup) > 0 and float(err) < 1e-3  # the two models agree
    assert "smallest speedup" in r.stdout
