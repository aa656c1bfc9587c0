"""What the machine is: versions, NumPy's BLAS, the CPU (for `rnn-gpu info` and benchmark
records). The backends' part of the description is :func:`rnn_gpu.backend.describe`."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from .version import __version__


def machine_info() -> dict[str, str]:
    return {
        "rnn_gpu": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_name(),
        "cpu": cpu_name(),
        "threads": str(os.cpu_count()),
    }


def blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")  # NumPy >= 1.25
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # pragma: no cover - old NumPy
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
