"""The engine on the CUDA launchers against the float64 reference, for every configuration
of the NumPy engine tests, larger sizes and a 50,000-word vocabulary: on a GPU (marker gpu)
and on the CPU emulator (tests/cuda_emu/), which runs the same kernel sources and
launchers with cuBLAS's column-major contract in place of cuBLAS."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu import reference, to_numpy

from ..helpers import H, I, O, cuda_device, cuda_model, device_params, make_problem, randomize, rel_err

T = 6
CONFIGS = list(itertools.product(reference.ACTIVATIONS, reference.OUTPUTS, (None, 0, 1, 2, T),
                                 (False, True), (False, True), (False, True)))
TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.fixture(scope="module", params=device_params("emulated"))
def device(request):
    with cuda_device(request.param) as dev:
        yield dev


def _compare(m, x, y, h0, trunc, mask, tol):
    loss, grads, h_last = m.loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask)
    rloss, rgrads, rh = m.reference_loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask)
    assert loss == pytest.approx(rloss, rel=tol)
    for k in rnn_gpu.model.PARAM_NAMES:
        g = to_numpy(grads[k])
        assert g.dtype == m.dtype
        assert rel_err(g, rgrads[k]) < tol, k
    assert rel_err(to_numpy(h_last), rh) < tol


def test_recurrence_choice_is_cached_and_overridable(device, monkeypatch):
    monkeypatch.delenv("RNN_GPU_RECUR", raising=False)
    ops = device.backend.ops
    first = ops.recurrence(7, 45, np.float32)
    assert first in ("gemm", "fused") and ops.recurrence(7, 45, np.float32) == first
    for forced in ("gemm", "fused"):
        monkeypatch.setenv("RNN_GPU_RECUR", forced)
        assert ops.recurrence(7, 45, np.float32) == forced
    monkeypatch.setenv("RNN_GPU_RECUR", "magic")
    with pytest.raises(ValueError, match="RNN_GPU_RECUR"):
        ops.recurrence(7, 45, np.float32)


def test_engine_runs_the_cuda_launchers(device):
    from rnn_gpu.cuda.launchers import CudaOps  # noqa: PLC0415

    m = cuda_model(device, I, H, O)
    assert m._engine.ops is device.backend.ops and isinstance(m._engine.ops, CudaOps)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("i,act,out,trunc,dense,masked,with_h0",
                         [(i, *c) for i, c in enumerate(CONFIGS)])
def test_cuda_engine_matches_reference(device, dtype, i, act, out, trunc, dense, masked,
                                       with_h0, monkeypatch):
    """Every configuration in each dtype; the recurrence alternates between its two forms
    (cuBLAS GEMM + pointwise kernel, and the fused recurrent-step kernel)."""
    recur = ("gemm", "fused")[(i + (dtype == "float32")) % 2]
    monkeypatch.setenv("RNN_GPU_RECUR", recur)
    m = randomize(cuda_model(device, I, H, O, dtype=dtype, hidden_activation=act, output=out))
    x, y, h0, mask = make_problem(out, dense, masked, with_h0, T=T)
    _compare(m, x, y, h0, trunc, mask, TOL[dtype])


@pytest.mark.parametrize("recur", ["gemm", "fused"])
@pytest.mark.parametrize("outer", ["cublas", "tiled"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_engine_larger_sizes(device, dtype, outer, recur, monkeypatch):
    """Sizes that are not multiples of any block or tile, repeated ids, both dW paths,
    both forms of the recurrence."""
    monkeypatch.setenv("RNN_GPU_OUTER", outer)
    monkeypatch.setenv("RNN_GPU_RECUR", recur)
    sizes = (37, 129, 301)
    m = randomize(cuda_model(device, *sizes, dtype=dtype), scale=0.2)
    for dense in (False, True):
        x, y, h0, mask = make_problem("softmax", dense, True, True, T=23, B=7, sizes=sizes)
        for trunc in (None, 4):
            _compare(m, x, y, h0, trunc, mask, TOL[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_engine_large_vocabulary(device, dtype):
    V = 50_000
    m = randomize(cuda_model(device, V, 64, V, dtype=dtype), scale=0.1)
    rng = np.random.default_rng(7)
    x = rng.integers(0, V, size=(5, 4))
    y = rng.integers(0, V, size=(5, 4))
    _compare(m, x, y, None, None, None, TOL[dtype])
