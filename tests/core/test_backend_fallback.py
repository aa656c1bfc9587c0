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


class _ProbeCupy:
    """What the probe asks of CuPy: a RawKernel to compile and launch, arrays, a GEMM;
    each can be made to fail or to compute a wrong result."""

    float32 = np.float32

    def __init__(self, compile_error=None, kernel_adds=True, gemm_error=None, gemm_scale=1.0):
        self.compile_error, self.kernel_adds = compile_error, kernel_adds
        self.gemm_error, self.gemm_scale = gemm_error, gemm_scale

    def RawKernel(self, code, name, options=()):  # noqa: N802 - CuPy's name
        if self.compile_error:
            raise self.compile_error
        assert name in code and "--std=c++14" in options

        def launch(grid, block, args):
            x, n = args
            if self.kernel_adds:
                x += np.arange(int(n), dtype=x.dtype)
        return launch

    def ones(self, n, dtype):
        return np.ones(n, dtype)

    def full(self, shape, v, dtype):
        probe = self

        class M(np.ndarray):
            def __matmul__(self, other):
                if probe.gemm_error:
                    raise probe.gemm_error
                return np.asarray(self) @ np.asarray(other) * probe.gemm_scale
        return np.full(shape, v, dtype).view(M)


def test_the_probe_runs_a_kernel_and_a_gemm_before_cupy_is_chosen():
    assert backend._run_probe(_ProbeCupy()) is None
    why = backend._run_probe(_ProbeCupy(compile_error=RuntimeError("nvrtc: libnvrtc.so.12 not found")))
    assert "cannot compile or launch a kernel" in why and "libnvrtc" in why
    assert "rnn-gpu[cuda12]" in why
    assert "wrong result" in backend._run_probe(_ProbeCupy(kernel_adds=False))
    why = backend._run_probe(_ProbeCupy(gemm_error=ImportError('Failure finding "libcublasLt.so.*"')))
    assert "cannot run a cuBLAS GEMM" in why and "libcublasLt" in why
    assert "wrong result for a test GEMM" in backend._run_probe(_ProbeCupy(gemm_scale=0.5))
