"""Test configuration: tests marked ``gpu`` are skipped, with the reason, unless CuPy
imports and a CUDA device is usable. CuPy is probed only when such tests are collected."""
from __future__ import annotations

import importlib
import sys
import types

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


@pytest.fixture
def cuda_ops_host(monkeypatch):
    """rnn_gpu.cuda_ops imported afresh for its host-side code, with a stand-in for
    cupy.cuda.cublas (whose shared library a machine without CUDA lacks); nothing that
    launches may be called. The kernel registry it extends is restored afterwards."""
    cupy = pytest.importorskip("cupy")
    from rnn_gpu import kernels  # noqa: PLC0415

    monkeypatch.setitem(vars(cupy.cuda), "cublas", types.SimpleNamespace(CUBLAS_OP_N=0, CUBLAS_OP_T=1))
    saved = {n: dict(s.cupy_versions) for n, s in kernels.REGISTRY.items()}
    monkeypatch.delitem(sys.modules, "rnn_gpu.cuda_ops", raising=False)
    yield importlib.import_module("rnn_gpu.cuda_ops")
    sys.modules.pop("rnn_gpu.cuda_ops", None)
    for n, spec in kernels.REGISTRY.items():
        spec.cupy_versions.clear()
        spec.cupy_versions.update(saved[n])
