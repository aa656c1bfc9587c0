"""Gated cells (GRU, LSTM) on the CUDA launchers (a GPU, or the CPU emulator) against the
float64 reference -- a sample of cell x layers x direction x inputs x masks x truncation
x dropout, sizes that are not multiples of any block or tile, both dtypes -- and the
whole step captured as a CUDA Graph, equal bit for bit to the eager step."""
from __future__ import annotations

import numpy as np
import pytest

from rnn_gpu import to_numpy

from ..helpers import cuda_device, cuda_model, device_params, make_problem, randomize, rel_err
from ..stack_configs import cell_sample, make_extras

SIZES = (5, 7, 3)
T = 5
TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.fixture(scope="module", params=device_params("emulated"))
def device(request):
    with cuda_device(request.param) as dev:
        yield dev


def _parts(h):
    return [to_numpy(a) for a in (h if isinstance(h, tuple) else (h,))]


def _compare(m, x, y, tol, **kw):
    loss, grads, h_last = m.loss_and_grads(x, y, **kw)
    rloss, rgrads, rh = m.reference_loss_and_grads(x, y, **kw)
    assert loss == pytest.approx(rloss, rel=tol)
    assert set(grads) == set(rgrads) == set(m.param_names)
    for k in grads:
        g = to_numpy(grads[k])
        assert g.dtype == m.dtype
        assert rel_err(g, rgrads[k]) < tol, k
    for a, b in zip(_parts(h_last), _parts(rh), strict=True):
        assert rel_err(a, b) < tol


CONFIGS = [(dt, *c) for dt, c in zip(["float64", "float32"] * 8, cell_sample(16, 7))]


@pytest.mark.parametrize("dtype,cell,layers,bi,out,trunc,dense,masked,lmask,with_h0,drop",
                         CONFIGS)
def test_cuda_cells_match_reference(device, dtype, cell, layers, bi, out, trunc, dense, masked,
                                    lmask, with_h0, drop):
    m = randomize(cuda_model(device, *SIZES, cell=cell, num_layers=layers, bidirectional=bi,
                             dtype=dtype, output=out))
    x, y, _, mask = make_problem(out, dense, masked, False, T=T, sizes=SIZES)
    h0, lm, dr = make_extras(m, T, x.shape[1], lmask, with_h0, drop)
    _compare(m, x, y, TOL[dtype], h0=h0, truncate=trunc, mask=mask, loss_mask=lm, dropout=dr)


@pytest.mark.parametrize("cell,layers,bi,trunc,dtype", [("lstm", 2, False, 3, "float32"),
                                                        ("gru", 2, True, None, "float64"),
                                                        ("gru", 2, False, 2, "float32"),
                                                        ("lstm", 1, True, None, "float64")])
def test_cuda_cells_larger_sizes(device, cell, layers, bi, trunc, dtype):
    sizes = (37, 67, 45)  # 3H and 4H past any block
    m = randomize(cuda_model(device, *sizes, cell=cell, num_layers=layers, bidirectional=bi,
                             dtype=dtype), scale=0.2)
    x, y, _, mask = make_problem("softmax", False, True, False, T=9, B=5, sizes=sizes)
    h0, lm, dr = make_extras(m, 9, 5, True, True, True)
    _compare(m, x, y, TOL[dtype], h0=h0, truncate=trunc, mask=mask, loss_mask=lm, dropout=dr)


def _snapshot(result):
    loss, grads, h = result
    return loss, {k: to_numpy(v).copy() for k, v in grads.items()}, [a.copy() for a in _parts(h)]


@pytest.mark.parametrize("cell,layers,bi,trunc", [("lstm", 2, False, 2), ("gru", 2, True, None),
                                                  ("lstm", 1, True, None), ("gru", 1, False, 1)])
def test_cuda_cells_capture_and_replay(device, cell, layers, bi, trunc):
    """The gated step captured once and replayed: the eager step's loss, gradients and
    state, bit for bit, with nothing allocated during the capture."""
    B = 3
    m = randomize(cuda_model(device, *SIZES, cell=cell, dtype="float64", num_layers=layers,
                             bidirectional=bi), scale=0.4)
    step = m.captured_step(T, B, truncate=trunc, masked=True, dropout=True)
    rng = np.random.default_rng(4)
    for seed in (0, 1):
        x, y, _, mask = make_problem("softmax", False, True, False, T=T, B=B, seed=seed,
                                     sizes=SIZES)
        h0, _, d = make_extras(m, T, B, False, True, True, seed=seed)
        want = _snapshot(m.loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask, dropout=d))
        xb, yb, h0b, keep = m._prepare(x, y, h0, mask)
        for g in m._engine.grads.values():
            g.fill(np.nan)
        got = _snapshot(step(m.params, xb, yb, h0b, keep, m.backend.asarray(d, m.dtype)))
        assert got[0] == want[0]
        for a, b in zip(got[2], want[2], strict=True):
            np.testing.assert_array_equal(a, b)
        for k in want[1]:
            np.testing.assert_array_equal(got[1][k], want[1][k], err_msg=k)
    assert step.capture_allocations == 0 and step.replays == 2
    del rng
