"""bench/gpu_check.sh, the GPU machine's one check, in the parts that need no GPU: its
syntax, its arguments, and the steps it would run (--dry-run)."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
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
                                     "cells bench", "record"]
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

    # the cells bench: bench/cells.py on the GPU, with options it accepts
    argv = cmd["cells bench"]
    assert argv[1:4] == ["bench/cells.py", "--device", "cuda"]
    r = subprocess.run([sys.executable, *argv[1:], "--help"],
                       capture_output=True, text=True, timeout=60, cwd=SCRIPT.parents[1])
    assert r.returncode == 0 and "--device" in r.stdout, r.stderr


def _snippet(name: str) -> str:
    text = SCRIPT.read_text()
    start = text.index(f"read -r -d '' {name} <<'EOF'\n") + len(f"read -r -d '' {name} <<'EOF'\n")
    return text[start:text.index("\nEOF\n", start)]


def test_the_capture_probe_passes_on_the_emulator_and_fails_cleanly_without_the_c_api():
    """The script's capture step is rnn_gpu.bench.capture.capture_probe on the CuPy
    backend; here it runs on the emulated device, whose capture keeps CuPy's rules."""
    from rnn_gpu.bench.capture import capture_probe

    from ..helpers import cuda_device

    snippet = _snippet("CAPTURE")
    assert "from rnn_gpu.bench.capture import capture_probe" in snippet
    assert 'capture_probe(rnn_gpu.get_backend("cupy"))' in snippet
    with cuda_device("emulated") as dev:
        ok, report = capture_probe(dev.backend, T=6, B=3, H=9, V=11)
        assert ok, report
        assert "pass" in report and "allocations during capture 0" in report
        from .. import cuda_emu

        ok, report = capture_probe(cuda_emu.emulated_backend(capi=False), T=6, B=3, H=9, V=11)
    assert not ok and "the capture failed" in report and "refuses every call" in report


def test_the_record_step_counts_the_gpu_tests(tmp_path):
    """The script's last step turns pytest's junit XML into the summary line and a row."""
    xml = tmp_path / "gpu-tests.xml"
    xml.write_text('<testsuites><testsuite tests="10" failures="1" errors="1" skipped="3">'
                   "</testsuite></testsuites>")
    results, summary = tmp_path / "gpu.jsonl", tmp_path / "gpu-tests.txt"

    r = subprocess.run([sys.executable, "-c", _snippet("RECORD"),
                        str(xml), str(results), str(summary), "bench/gpu_check.sh out"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])})
    assert r.returncode == 1, r.stderr  # tests failed: the step fails
    assert summary.read_text().strip() == "gpu tests: 5 passed, 2 failed, 3 skipped"
    import json

    row = json.loads(results.read_text().splitlines()[-1])
    assert row["name"] == "gpu-tests" and row["passed"] == 5 and row["failed"] == 2
    assert row["status"] == "FAILED"
