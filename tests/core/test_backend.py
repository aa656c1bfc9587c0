"""The backend shim on a machine where NumPy is the backend."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu import backend


def test_numpy_backend_and_helpers():
    b = backend.get_backend("numpy")
    assert b.name == "numpy" and b.xp is np and not b.is_gpu
    a = b.asarray([1.0, 2.0], dtype=np.float32)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(backend.to_numpy(a), [1.0, 2.0])
    assert backend.array_module(a, np.zeros(2)) is np


def test_environment_variable_selects_numpy(monkeypatch):
    monkeypatch.setenv("RNN_GPU_BACKEND", "numpy")
    assert backend.get_backend().name == "numpy"
    assert backend.get_backend(None).name == "numpy"


def test_mixing_backends_is_a_type_error():
    class FakeCupyArray:  # what a cupy.ndarray looks like to the shim
        __module__ = "cupy._core.core"
        shape = (2, 2)
    fake = FakeCupyArray()
    with pytest.raises(TypeError, match="different backends"):
        backend.array_module(np.zeros(2), fake)
    m = rnn_gpu.RNN(3, 2, 3, backend="numpy")
    with pytest.raises(TypeError, match="x: got a CuPy array but this model runs on NumPy"):
        m.loss_and_grads(fake, np.zeros((2, 2), dtype=int))


def test_import_touches_no_gpu():
    """Importing rnn_gpu neither imports CuPy nor probes a device."""
    code = ("import sys, rnn_gpu; import rnn_gpu.model, rnn_gpu.engine; "
            "assert 'cupy' not in sys.modules, 'cupy imported'; "
            "assert rnn_gpu.backend._probe_cupy.cache_info().currsize == 0; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_cupy_request_without_gpu_says_why():
    if backend.gpu_available():
        pytest.skip("a GPU is usable here: the no-GPU error path cannot be exercised")
    with pytest.raises(RuntimeError, match=r"backend 'cupy' is not usable: .*To fix: "):
        backend.get_backend("cupy")
    assert backend.get_backend("auto").name == "numpy"


def test_describe_lists_versions():
    info = backend.describe()
    for key in ("rnn_gpu", "python", "numpy", "blas", "cupy", "backend"):
        assert key in info and info[key]
    assert info["rnn_gpu"] == rnn_gpu.__version__


def test_kernel_sources_are_found():
    d = backend.kernel_dir()
    assert any(d.glob("*.cu"))
