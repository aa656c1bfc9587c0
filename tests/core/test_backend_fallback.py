"""Without a usable GPU (CuPy missing, or installed with no driver or device), "auto"
falls back to NumPy and an explicit "cupy" request fails with the reason."""
from __future__ import annotations

import re

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu import backend


@pytest.fixture
def no_gpu(monkeypatch):
    if backend.gpu_available():
        pytest.skip("a CUDA device is usable here; the fallback applies to machines without one")
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    return backend.cupy_unavailable_reason()


def test_auto_falls_back_to_numpy(no_gpu):
    assert no_gpu  # a reason is recorded
    assert backend.get_backend("auto").name == "numpy"
    assert backend.get_backend(None).name == "numpy"


def test_explicit_cupy_request_says_why(no_gpu):
    with pytest.raises(RuntimeError, match=re.escape(no_gpu)) as info:
        backend.get_backend("cupy")
    assert "backend='numpy'" in str(info.value)  # and how to get going


def test_cpu_side_runs_with_auto(no_gpu):
    m = rnn_gpu.RNN(5, 4, 3, seed=1)  # backend "auto"
    assert m.backend.name == "numpy"
    x = np.array([[0, 1], [2, 3], [4, 0]])
    loss, grads, h = m.loss_and_grads(x, x % 3)
    assert np.isfinite(loss) and isinstance(grads["W"], np.ndarray) and h.shape == (2, 4)
