"""bench/gpu_check.sh, the GPU machine's one check, in the parts that need no GPU: its
syntax, its arguments, and the steps it would run (--dry-run)."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from rnn_gpu import bench

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60)


def test_parses_and_is_executable():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.access(SCRIPT, os.X_OK)
    assert "set -u" in SCRIPT.read_text().splitlines()[:40]


def test_usage_errors_exit_2(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("")
    for args, says in (((), "usage:"), (("--quick",), "usage:"),
                       ((str(tmp_path), "--bogus"), "unknown option --bogus"),
                       ((str(tmp_path / "a"), str(tmp_path / "b")), "one OUTDIR"),
                       ((str(a_file),), "not a folder")):
        r = _run(*args)
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)


@pytest.mark.parametrize("quick,budget_s", [(False, 300), (True, 120)])
def test_dry_run_lists_the_steps_within_the_time_budget(tmp_path, quick, budget_s):
    out = tmp_path / "out"
    r = _run(str(out), "--dry-run", *(["--quick"] if quick else []))
    assert r.returncode == 0, r.stderr
    assert not out.exists()  # nothing ran, nothing written
    steps = re.findall(r"^== (.+?) \(timeout (\d+) s\):(.*)$", r.stdout, re.M)
    assert [s[0] for s in steps] == ["environment", "capture", "gpu tests", "step bench",
                                     "record"]
    assert sum(int(s[1]) for s in steps) <= budget_s
    cmd = dict((s[0], shlex.split(s[2])) for s in steps)
    assert cmd["gpu tests"][1:3] == ["-m", "pytest"]
    assert f"--junitxml={out}/gpu-tests.xml" in cmd["gpu tests"]

    # the bench command is one the bench accepts, at the engine's three shapes
    argv = cmd["step bench"]
    assert argv[1:4] == ["-m", "rnn_gpu", "bench"]
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(argv[4:])
    assert args.shapes == list(bench.DEFAULT_SHAPES) and args.peers == {"torch"}
    assert args.backend == "cupy" and args.only == "steps" and args.quick is quick
    assert args.out == f"{out}/gpu.jsonl" and not args.gpu_tests
