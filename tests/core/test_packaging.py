"""The wheel carries the CUDA sources and the headers they include, where an installed
package looks for them."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_every_cuda_source(tmp_path):
    pytest.importorskip("setuptools", reason="building a wheel needs setuptools")
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__", "results",
                                  ".pytest_cache")
    # the top-level dist/ holds built wheels; rnn_gpu/dist is a package
    shutil.copytree(ROOT, src, ignore=lambda d, names: skip(d, names) | (
        {"dist"} if Path(d) == ROOT and "dist" in names else set()))
    out = tmp_path / "dist"
    out.mkdir()
    code = f"from setuptools import build_meta as b; print(b.build_wheel({str(out)!r}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh"))
    assert "rnn_common.cuh" in sources  # the headers the .cu files include
    for name in sources:
        assert f"rnn_gpu/cuda_kernels/{name}" in names  # where backend.kernel_dir() looks first
    assert "rnn_gpu/kernels.py" in names
    assert "rnn_gpu/lm/trainer.py" in names  # the training application, a subpackage
    assert "rnn_gpu/dist/comm.py" in names  # data-parallel training
    assert "rnn_gpu/ops/registry.py" in names and "rnn_gpu/cuda/launchers.py" in names
    assert "rnn_gpu/bench/__init__.py" in names and "rnn_gpu/bench/peers.py" in names
