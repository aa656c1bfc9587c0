"""Stacked and bidirectional models on the CUDA launchers (a GPU, or the CPU emulator)
against the float64 reference: a sample of the configuration product, sizes that are not
multiples of any block or tile, both dtypes."""
from __future__ import annotations

import pytest

from rnn_gpu import to_numpy

from ..helpers import cuda_device, cuda_model, device_params, make_problem, randomize, rel_err
from ..stack_configs import make_extras, sample

SIZES = (5, 7, 3)
T = 5
TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.fixture(scope="module", params=device_params("emulated"))
def device(request):
    with cuda_device(request.param) as dev:
        yield dev


def _compare(m, x, y, tol, **kw):
    loss, grads, h_last = m.loss_and_grads(x, y, **kw)
    rloss, rgrads, rh = m.reference_loss_and_grads(x, y, **kw)
    assert loss == pytest.approx(rloss, rel=tol)
    assert set(grads) == set(rgrads) == set(m.param_names)
    for k in grads:
        g = to_numpy(grads[k])
        assert g.dtype == m.dtype
        assert rel_err(g, rgrads[k]) < tol, k
    assert rel_err(to_numpy(h_last), rh) < tol


# both recurrences (GEMM + pointwise kernel, or the fused step kernel), both dtypes
CONFIGS = [(r, dt, *c) for r, dt, c in zip(["gemm", "gemm", "fused", "fused"] * 6,
                                            ["float64", "float32"] * 12, sample(24, 3))]


@pytest.mark.parametrize("recur,dtype,layers,bi,act,out,trunc,dense,masked,lmask,with_h0,drop",
                         CONFIGS)
def test_cuda_stack_matches_reference(device, monkeypatch, recur, dtype, layers, bi, act, out,
                                      trunc, dense, masked, lmask, with_h0, drop):
    monkeypatch.setenv("RNN_GPU_RECUR", recur)
    m = randomize(cuda_model(device, *SIZES, num_layers=layers, bidirectional=bi, dtype=dtype,
                             hidden_activation=act, output=out))
    x, y, _, mask = make_problem(out, dense, masked, False, T=T, sizes=SIZES)
    h0, lm, dr = make_extras(m, T, x.shape[1], lmask, with_h0, drop)
    _compare(m, x, y, TOL[dtype], h0=h0, truncate=trunc, mask=mask, loss_mask=lm, dropout=dr)


@pytest.mark.parametrize("layers,bi,trunc,dtype,recur", [(2, True, None, "float32", "fused"),
                                                         (3, False, 3, "float64", "gemm"),
                                                         (2, False, 2, "float32", "fused")])
def test_cuda_stack_larger_sizes(device, monkeypatch, layers, bi, trunc, dtype, recur):
    monkeypatch.setenv("RNN_GPU_RECUR", recur)
    sizes = (37, 67, 45)
    m = randomize(cuda_model(device, *sizes, num_layers=layers, bidirectional=bi, dtype=dtype),
                  scale=0.2)
    x, y, _, mask = make_problem("softmax", False, True, False, T=11, B=5, sizes=sizes)
    h0, lm, dr = make_extras(m, 11, 5, True, True, True)
    _compare(m, x, y, TOL[dtype], h0=h0, truncate=trunc, mask=mask, loss_mask=lm, dropout=dr)
