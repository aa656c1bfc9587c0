"""The versions the launchers choose by shape: bias_grad "split" (rows over the grid too,
for a small H) beside "colsum", and softmax_xent "warp" (one warp per row, for a small O)
beside "fused". Each against its twin at the edges of its rule, the rule itself, and
run-to-run equality; on a GPU (marker gpu) and on the CPU emulator in three thread
orders."""
from __future__ import annotations

import numpy as np
import pytest

from rnn_gpu import to_numpy
from rnn_gpu.cuda import launchers
from rnn_gpu.ops import numpy_ops as twins

from ..helpers import EMULATED_ORDERS, cuda_device, device_params, rel_err

TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = (np.float32, np.float64)


@pytest.fixture(scope="module", params=device_params(*EMULATED_ORDERS))
def device(request):
    with cuda_device(request.param) as dev:
        yield dev


def _check(what, got, want, dtype):
    err = rel_err(to_numpy(got), want)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g}"


# -------------------------------------------------------------------------------------
# softmax_xent


def _xent_case(rng, N, O, dtype, masked, ids=np.int64):
    z = rng.uniform(-8, 8, (N, O)).astype(dtype)
    y = rng.integers(0, O, N).astype(ids)
    keep = (rng.random(N) > 0.3).astype(dtype) if masked else None
    return z, y, keep


# O = 1 and 19 leave lanes idle, 256 = 32 * XENT_WARP_ITEMS fills the registers exactly,
# 257 and 1000 read entries past them; N = 301 is not a multiple of the rows per block.
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("O", [1, 19, 45, 256, 257, 1000])
def test_softmax_warp_matches_twin(device, O, masked, dtype):
    cp, ops = device.cp, device.ops
    rng = np.random.default_rng(O)
    for N, ids in ((301, np.int64), (9, np.int32)):
        z, y, keep = _xent_case(rng, N, O, dtype, masked, ids)
        wz, wl = z.copy(), np.empty(N, dtype)
        twins.softmax_xent(wz, y, keep, wl)
        zd, ld = cp.asarray(z), cp.empty(N, dtype)
        ops.softmax_xent_warp(zd, cp.asarray(y), None if keep is None else cp.asarray(keep), ld)
        _check(f"softmax_xent_warp O={O} N={N} dz", zd, wz, dtype)
        _check(f"softmax_xent_warp O={O} N={N} loss", ld, wl, dtype)


def test_softmax_warp_large_logits_and_bad_ids(device):
    cp, ops = device.cp, device.ops
    rng = np.random.default_rng(7)
    N, O = 13, 70
    z = rng.uniform(-700, 700, (N, O))  # exp would overflow without the max
    y = rng.integers(0, O, N)
    y[3], y[5] = -1, O  # out of range: a NaN loss, no read out of bounds
    wz, wl = z.copy(), np.empty(N)
    twins.softmax_xent(wz, np.clip(y, 0, O - 1), None, wl)
    zd, ld = cp.asarray(z), cp.empty(N)
    ops.softmax_xent_warp(zd, cp.asarray(y), None, ld)
    loss = to_numpy(ld)
    assert np.isnan(loss[[3, 5]]).all()
    good = np.ones(N, bool)
    good[[3, 5]] = False
    _check("loss", loss[good], wl[good], np.float64)
    _check("dz", to_numpy(zd)[good], wz[good], np.float64)


@pytest.mark.parametrize("O,version", [(45, "warp"), (launchers.XENT_WARP_MAX_O, "warp"),
                                       (launchers.XENT_WARP_MAX_O + 1, "fused")])
def test_softmax_xent_chooses_by_O(device, O, version):
    cp, ops = device.cp, device.ops
    z, y, keep = _xent_case(np.random.default_rng(8), 37, O, np.float32, True)
    runs = {}
    for name, fn in (("chosen", ops.softmax_xent), ("warp", ops.softmax_xent_warp),
                     ("fused", ops.softmax_xent_fused)):
        zd, ld = cp.asarray(z), cp.empty(37, np.float32)
        fn(zd, cp.asarray(y), cp.asarray(keep), ld)
        runs[name] = (to_numpy(zd).copy(), to_numpy(ld).copy())
    for a, b in zip(runs["chosen"], runs[version]):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------------------------------
# bias_grad


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("N,H", [(301, 257), (1, 5), (2, 33), (129, 33), (3001, 40)])
def test_bias_grad_split_matches_twin(device, N, H, dtype):
    cp, ops = device.cp, device.ops
    dz = np.random.default_rng(N + H).uniform(-1, 1, (N, H)).astype(dtype)
    want = np.empty(H, dtype)
    twins.bias_grad(dz, want)
    dzd = cp.asarray(dz)
    outs = []
    for _ in range(2):  # twice: the scratch is reused and the sums come out the same
        out = cp.empty(H, dtype)
        ops.bias_grad_split(dzd, out)
        _check(f"bias_grad_split N={N} H={H}", out, want, dtype)
        outs.append(to_numpy(out).copy())
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("N,H,version", [
    (2 * launchers.BIAS_SPLIT_MIN_ROWS, 257, "split"),
    (2 * launchers.BIAS_SPLIT_MIN_ROWS - 1, 257, "colsum"),  # too few rows to split
    # ceil(H / BIAS_COLS) blocks: BIAS_TARGET_BLOCKS are enough, one fewer is not
    (130, (launchers.BIAS_TARGET_BLOCKS - 1) * launchers.BIAS_COLS + 1, "colsum"),
    (130, (launchers.BIAS_TARGET_BLOCKS - 1) * launchers.BIAS_COLS, "split"),
])
def test_bias_grad_chooses_by_shape(device, N, H, version):
    cp, ops = device.cp, device.ops
    dz = cp.asarray(np.random.default_rng(9).uniform(-1, 1, (N, H)).astype(np.float32))
    chosen, want = cp.empty(H, np.float32), cp.empty(H, np.float32)
    ops.bias_grad(dz, chosen)
    getattr(ops, f"bias_grad_{version}")(dz, want)
    np.testing.assert_array_equal(to_numpy(chosen), to_numpy(want))


def test_shape_version_launchers_validate(device):
    cp, ops = device.cp, device.ops
    with pytest.raises(ValueError, match=r"bias_grad: out: expected shape \(5,\)"):
        ops.bias_grad_split(cp.zeros((300, 5), cp.float32), cp.zeros(4, cp.float32))
    with pytest.raises(ValueError, match=r"bias_grad: out: expected float32 like dz"):
        ops.bias_grad(cp.zeros((300, 5), cp.float32), cp.zeros(5, cp.float64))
    with pytest.raises(ValueError, match=r"softmax_xent: loss: expected shape \(4,\)"):
        ops.softmax_xent_warp(cp.zeros((4, 5), cp.float32), cp.zeros(4, cp.int32), None,
                              cp.zeros(3, cp.float32))
    with pytest.raises(ValueError, match=r"softmax_xent: logits: expected at least one column"):
        ops.softmax_xent_warp(cp.zeros((4, 0), cp.float32), cp.zeros(4, cp.int32), None,
                              cp.zeros(4, cp.float32))
