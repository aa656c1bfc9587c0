"""Test configuration: tests marked ``gpu`` are skipped, with the reason, unless CuPy
imports and a CUDA device is usable. CuPy is probed only when such tests are collected."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    from rnn_gpu import backend  # noqa: PLC0415 - probe only when GPU tests are collected

    if backend.gpu_available():
        return
    skip = pytest.mark.skip(
        reason=f"needs CuPy and a usable CUDA device: {backend.cupy_unavailable_reason()}")
    for item in gpu_items:
        item.add_marker(skip)
