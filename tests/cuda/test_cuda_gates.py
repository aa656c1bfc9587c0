"""The gated cells' pointwise kernels (kernels/rnn_gates.cu: LSTM and GRU, forward and
backward) on a GPU (marker gpu) and on the CPU emulator in three thread orders: each
launch against its NumPy twin over every case of its arguments (mask or none; L = 1 with
and without the per-stream output, L > 1; this step's error e or none), short loops of
steps with the recurrent GEMM against the same loops on the twins, the launchers' checks,
and the four kernels captured in a CUDA Graph and replayed. Sizes are not multiples of 32
nor of the block (256)."""
from __future__ import annotations

import numpy as np
import pytest

from rnn_gpu import to_numpy
from rnn_gpu.ops import NumpyOps
from rnn_gpu.ops import numpy_ops as twins

from ..helpers import EMULATED_ORDERS, cuda_device, device_params, rel_err

TOL = {np.float32: 1e-5, np.float64: 1e-12}  # one launch against its twin
LOOP_TOL = {np.float32: 1e-4, np.float64: 1e-12}  # T steps against the twins' loop
DTYPES = (np.float32, np.float64)
SIZES = ((3, 37), (5, 130))  # (B, H): one partial block; B*H = 650, three blocks
STREAMS = ((1, False), (1, True), (3, True))  # (L, per-stream output given)


@pytest.fixture(scope="module", params=device_params(*EMULATED_ORDERS))
def device(request):
    with cuda_device(request.param) as dev:
        yield dev


def _check(what, got, want, tol):
    err = rel_err(to_numpy(got), want)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"
    return err


def _r(rng, dtype, *shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, shape).astype(dtype)


def _keep(rng, dtype, B, masked):
    if not masked:
        return None
    keep = (rng.random(B) > 0.4).astype(dtype)
    keep[0], keep[-1] = 0, 1  # both kinds of row, whatever the draw
    return keep


def _acts(rng, dtype, B, H, tanh_blocks):
    """Gate activations: (0, 1) for a sigmoid block, (-1, 1) for a tanh one."""
    return np.concatenate([_r(rng, dtype, B, H, lo=-1.0 if t else 0.0) for t in tanh_blocks],
                          axis=1)


def _run(device, method, host_args):
    """The kernel on copies of `host_args` on the device; the device arguments after it."""
    cp = device.cp
    args = tuple(cp.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in host_args)
    getattr(device.ops, method)(*args)
    return args


def _twin(fn, host_args):
    args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in host_args)
    fn(*args)
    return args


def _ids(v):
    return getattr(v, "__name__", str(v))


# -------------------------------------------------------------------------------------
# One launch against the twin


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B,H", SIZES)
def test_lstm_forward_matches_twin(device, B, H, masked, dtype):
    rng = np.random.default_rng(20)
    keep = _keep(rng, dtype, B, masked)
    args = (_r(rng, dtype, B, 4 * H, lo=-4, hi=4), _r(rng, dtype, B, H, lo=-2, hi=2),
            np.full((B, H), np.nan, dtype), _r(rng, dtype, B, H),
            np.full((B, H), np.nan, dtype), keep)
    want = _twin(twins.lstm_forward, args)
    got = _run(device, "lstm_forward", args)
    for i, what in ((0, "gates"), (2, "c_next"), (4, "h_next")):
        _check(f"lstm_forward {what}", got[i], want[i], TOL[dtype])
    if masked:  # masked rows are the old state exactly
        np.testing.assert_array_equal(to_numpy(got[2])[keep == 0], args[1][keep == 0])
        np.testing.assert_array_equal(to_numpy(got[4])[keep == 0], args[3][keep == 0])


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B,H", SIZES)
def test_gru_forward_matches_twin(device, B, H, masked, dtype):
    rng = np.random.default_rng(21)
    keep = _keep(rng, dtype, B, masked)
    args = (_r(rng, dtype, B, 3 * H, lo=-2, hi=2), _r(rng, dtype, B, 3 * H),
            _r(rng, dtype, 3 * H, lo=-0.5, hi=0.5), _r(rng, dtype, B, H),
            np.full((B, H), np.nan, dtype), np.full((B, H), np.nan, dtype), keep)
    want = _twin(twins.gru_forward, args)
    got = _run(device, "gru_forward", args)
    for i, what in ((0, "gates"), (4, "h_next"), (5, "hn")):
        _check(f"gru_forward {what}", got[i], want[i], TOL[dtype])
    if masked:
        np.testing.assert_array_equal(to_numpy(got[4])[keep == 0], args[3][keep == 0])


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("with_e", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("L,per_stream", STREAMS)
@pytest.mark.parametrize("B,H", SIZES)
def test_lstm_backward_matches_twin(device, B, H, L, per_stream, masked, with_e, dtype):
    rng = np.random.default_rng(22)
    keep = _keep(rng, dtype, B, masked)
    fresh = L - 1
    args = (_r(rng, dtype, L, B, H), _r(rng, dtype, L, B, H),
            _acts(rng, dtype, B, H, (False, False, True, False)),
            _r(rng, dtype, B, H, lo=-2, hi=2), _r(rng, dtype, B, H, lo=-2, hi=2), keep,
            _r(rng, dtype, B, H) if with_e else None, fresh,
            np.full((L, B, 4 * H), np.nan, dtype) if per_stream else None)
    want = _twin(twins.lstm_backward, args)
    got = _run(device, "lstm_backward", args)
    outs = ((0, "G"), (1, "DC"), (2, "gates")) + (((8, "dG_all"),) if per_stream else ())
    for i, what in outs:
        _check(f"lstm_backward {what}", got[i], want[i], TOL[dtype])
    if masked:  # masked rows keep their cell error and get no gate derivatives
        rows = keep == 0
        np.testing.assert_array_equal(to_numpy(got[1])[:, rows], args[1][:, rows])
        assert not to_numpy(got[2])[rows].any()
    if not masked and not with_e:  # G is left as it came
        np.testing.assert_array_equal(to_numpy(got[0]), args[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("with_e", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("L,per_stream", STREAMS)
@pytest.mark.parametrize("B,H", SIZES)
def test_gru_backward_matches_twin(device, B, H, L, per_stream, masked, with_e, dtype):
    rng = np.random.default_rng(23)
    keep = _keep(rng, dtype, B, masked)
    fresh = L // 2
    args = (_r(rng, dtype, L, B, H), _acts(rng, dtype, B, H, (False, False, True)),
            _r(rng, dtype, B, H, lo=-1.5, hi=1.5), _r(rng, dtype, B, H), keep,
            _r(rng, dtype, B, H) if with_e else None, fresh,
            np.full((L, B, 3 * H), np.nan, dtype) if per_stream else None,
            np.full((B, 3 * H), np.nan, dtype),
            np.full((L, B, 3 * H), np.nan, dtype) if per_stream else None)  # dGx_all
    want = _twin(twins.gru_backward, args)
    got = _run(device, "gru_backward", args)
    outs = ((0, "G"), (1, "gates"), (8, "dGh_sum")) + (
        ((7, "dGh_all"), (9, "dGx_all")) if per_stream else ())
    for i, what in outs:
        _check(f"gru_backward {what}", got[i], want[i], TOL[dtype])
    if masked:  # masked rows pass dh' through whole, with no gate derivatives
        rows = keep == 0
        dh = args[0].copy()
        if with_e:
            dh[fresh] += args[5]
        np.testing.assert_array_equal(to_numpy(got[0])[:, rows], dh[:, rows])
        assert not to_numpy(got[1])[rows].any() and not to_numpy(got[8])[rows].any()


# -------------------------------------------------------------------------------------
# T steps with the recurrent GEMM (full BPTT, L = 1), on the device and on the twins


def _lstm_loop(ops, xp, X, W, E, keep):
    """Forward then back over T steps; returns (per-step gate derivatives, G, DC, h)."""
    T, B, H4 = X.shape
    H = H4 // 4
    dt = X.dtype
    gates = xp.asarray(X.copy())
    c = xp.zeros((T + 1, B, H), dtype=dt)
    h = xp.zeros((T + 1, B, H), dtype=dt)
    c[0] = 0.5
    h[0] = -0.25
    for t in range(T):
        ops.gemm(h[t], W.T, gates[t], 1.0)
        ops.lstm_forward(gates[t], c[t], c[t + 1], h[t], h[t + 1],
                         None if keep is None else keep[t])
    G = xp.zeros((1, B, H), dtype=dt)
    DC = xp.zeros((1, B, H), dtype=dt)
    for t in reversed(range(T)):
        k = None if keep is None else keep[t]
        ops.lstm_backward(G, DC, gates[t], c[t], c[t + 1], k, E[t], 0, None)
        ops.gemm(gates[t], W, G[0], 0.0 if k is None else 1.0)  # G[0] (+)= dG W
    return gates, G, DC, h


def _gru_loop(ops, xp, X, W, bh, E, keep):
    T, B, H3 = X.shape
    H = H3 // 3
    dt = X.dtype
    gates = xp.asarray(X.copy())
    A = xp.zeros((B, 3 * H), dtype=dt)
    h = xp.zeros((T + 1, B, H), dtype=dt)
    hn = xp.zeros((T, B, H), dtype=dt)
    h[0] = 0.3
    for t in range(T):
        ops.gemm(h[t], W.T, A, 0.0)
        ops.gru_forward(gates[t], A, bh, h[t], h[t + 1], hn[t],
                        None if keep is None else keep[t])
    G = xp.zeros((1, B, H), dtype=dt)
    dGh = xp.zeros((T, B, 3 * H), dtype=dt)
    for t in reversed(range(T)):
        ops.gru_backward(G, gates[t], hn[t], h[t], None if keep is None else keep[t], E[t], 0,
                         None, dGh[t])
        ops.gemm(dGh[t], W, G[0], 1.0)  # G[0] += dGh W
    return gates, G, dGh, h


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_loops_match_the_twins(device, cell, masked, dtype):
    cp = device.cp
    rng = np.random.default_rng(24)
    T, B, H = 5, 3, 37
    n_gates = 4 if cell == "lstm" else 3
    X = _r(rng, dtype, T, B, n_gates * H, lo=-2, hi=2)
    W = _r(rng, dtype, n_gates * H, H, lo=-1.5 / H**0.5, hi=1.5 / H**0.5)
    E = _r(rng, dtype, T, B, H)
    keep = (rng.random((T, B)) > 0.3).astype(dtype) if masked else None
    dev = lambda a: None if a is None else cp.asarray(a)  # noqa: E731
    if cell == "lstm":
        want = _lstm_loop(NumpyOps(), np, X, W, E, keep)
        got = _lstm_loop(device.ops, cp, X, dev(W), dev(E), dev(keep))
        names = ("dG per step", "G", "DC", "h")
    else:
        bh = _r(rng, dtype, 3 * H, lo=-0.5, hi=0.5)
        want = _gru_loop(NumpyOps(), np, X, W, bh, E, keep)
        got = _gru_loop(device.ops, cp, X, dev(W), dev(bh), dev(E), dev(keep))
        names = ("dx per step", "G", "dGh per step", "h")
    for what, g, w in zip(names, got, want):
        _check(f"{cell} loop {what}", g, w, LOOP_TOL[dtype])


# -------------------------------------------------------------------------------------
# The launchers' checks


def test_launchers_validate(device):
    cp, ops = device.cp, device.ops
    B, H, L = 3, 5, 2
    f32 = lambda *s: cp.zeros(s, cp.float32)  # noqa: E731
    with pytest.raises(ValueError, match=r"lstm_forward: gates: expected shape \(3, 20\)"):
        ops.lstm_forward(f32(B, 3 * H), f32(B, H), f32(B, H), f32(B, H), f32(B, H), None)
    with pytest.raises(ValueError, match=r"lstm_forward: h_next: expected float32 like c_prev"):
        ops.lstm_forward(f32(B, 4 * H), f32(B, H), f32(B, H), f32(B, H),
                         cp.zeros((B, H), cp.float64), None)
    with pytest.raises(ValueError, match=r"lstm_forward: keep: expected None or a float32 "
                                         r"array of shape \(3,\)"):
        ops.lstm_forward(f32(B, 4 * H), f32(B, H), f32(B, H), f32(B, H), f32(B, H), f32(B + 1))
    with pytest.raises(ValueError, match=r"gru_forward: bh: expected shape \(15,\)"):
        ops.gru_forward(f32(B, 3 * H), f32(B, 3 * H), f32(H), f32(B, H), f32(B, H), f32(B, H),
                        None)
    with pytest.raises(ValueError, match=r"gru_forward: A: expected a C-contiguous array"):
        ops.gru_forward(f32(B, 3 * H), f32(3 * H, B).T, f32(3 * H), f32(B, H), f32(B, H),
                        f32(B, H), None)
    with pytest.raises(ValueError, match=r"lstm_backward: dG_all: expected a float32 array of "
                                         r"shape \(2, 3, 20\) for L = 2 > 1, got None"):
        ops.lstm_backward(f32(L, B, H), f32(L, B, H), f32(B, 4 * H), f32(B, H), f32(B, H), None,
                          None, 0, None)
    with pytest.raises(ValueError, match=r"lstm_backward: DC: expected shape \(2, 3, 5\)"):
        ops.lstm_backward(f32(L, B, H), f32(1, B, H), f32(B, 4 * H), f32(B, H), f32(B, H), None,
                          None, 0, f32(L, B, 4 * H))
    with pytest.raises(ValueError, match=r"lstm_backward: fresh: expected an int slot in "
                                         r"\[0, 2\), got 2"):
        ops.lstm_backward(f32(L, B, H), f32(L, B, H), f32(B, 4 * H), f32(B, H), f32(B, H), None,
                          f32(B, H), 2, f32(L, B, 4 * H))
    with pytest.raises(ValueError, match=r"gru_backward: e: expected None or a float32 array "
                                         r"of shape \(3, 5\)"):
        ops.gru_backward(f32(L, B, H), f32(B, 3 * H), f32(B, H), f32(B, H), None, f32(B, H + 1),
                         0, f32(L, B, 3 * H), f32(B, 3 * H))
    with pytest.raises(ValueError, match=r"gru_backward: dGh_all: expected a float32 array of "
                                         r"shape \(2, 3, 15\)"):
        ops.gru_backward(f32(L, B, H), f32(B, 3 * H), f32(B, H), f32(B, H), None, None, 0,
                         f32(L, B, 4 * H), f32(B, 3 * H))
    with pytest.raises(ValueError, match=r"gru_backward: G: expected a 3-D \(L, 3, 5\) array"):
        ops.gru_backward(f32(B, H), f32(B, 3 * H), f32(B, H), f32(B, H), None, None, 0, None,
                         f32(B, 3 * H))
    with pytest.raises(ValueError, match=r"gru_backward: h_prev: expected a cupy.ndarray"):
        ops.gru_backward(f32(L, B, H), f32(B, 3 * H), f32(B, H), np.zeros((B, H), np.float32),
                         None, None, 0, f32(L, B, 3 * H), f32(B, 3 * H))


def test_empty_shapes_launch_nothing(device):
    cp, ops = device.cp, device.ops
    z = lambda *s: cp.zeros(s, cp.float64)  # noqa: E731
    ops.lstm_forward(z(0, 16), z(0, 4), z(0, 4), z(0, 4), z(0, 4), None)
    ops.gru_backward(z(1, 2, 0), z(2, 0), z(2, 0), z(2, 0), None, None, 0, None, z(2, 0))


# -------------------------------------------------------------------------------------
# Capture: the four launchers issue kernels only (no host read, no allocation), so they
# record into a CUDA Graph and replay on the buffers as they are at launch.


def test_the_kernels_capture_and_replay(device):
    cp, ops = device.cp, device.ops
    rng = np.random.default_rng(25)
    L, B, H, dt = 3, 5, 130, np.float64
    keep = _keep(rng, dt, B, True)
    lf = (_r(rng, dt, B, 4 * H, lo=-3, hi=3), _r(rng, dt, B, H), np.zeros((B, H), dt),
          _r(rng, dt, B, H), np.zeros((B, H), dt), keep)
    lb = (_r(rng, dt, L, B, H), _r(rng, dt, L, B, H),
          _acts(rng, dt, B, H, (False, False, True, False)), _r(rng, dt, B, H),
          _r(rng, dt, B, H), keep, _r(rng, dt, B, H), 1, np.zeros((L, B, 4 * H), dt))
    gf = (_r(rng, dt, B, 3 * H), _r(rng, dt, B, 3 * H), _r(rng, dt, 3 * H), _r(rng, dt, B, H),
          np.zeros((B, H), dt), np.zeros((B, H), dt), None)
    gb = (_r(rng, dt, 1, B, H), _acts(rng, dt, B, H, (False, False, True)), _r(rng, dt, B, H),
          _r(rng, dt, B, H), None, None, 0, None, np.zeros((B, 3 * H), dt))
    calls = (("lstm_forward", twins.lstm_forward, lf), ("lstm_backward", twins.lstm_backward, lb),
             ("gru_forward", twins.gru_forward, gf), ("gru_backward", twins.gru_backward, gb))
    dev = {name: tuple(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
           for name, _, args in calls}  # every buffer made before the capture
    emulated = device.kind != "cuda"
    if emulated:
        from ..cuda_emu import memory

        reads = len(memory.HOST_READS)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        for name, _, _ in calls:
            getattr(ops, name)(*dev[name])
        graph = s.end_capture()
    if emulated:
        assert memory.HOST_READS[reads:] == []
        assert [w for w, _ in graph.work] == [f"rnn_{name}_f64" for name, _, _ in calls]
        np.testing.assert_array_equal(to_numpy(dev["lstm_forward"][0]), lf[0])  # not run yet
    for replay in range(2):  # each replay reads the buffers as they are now
        for name, twin, args in calls:
            twin(*args)
        graph.launch(stream=s)
        s.synchronize()
        for name, _, args in calls:
            for i, a in enumerate(args):
                if isinstance(a, np.ndarray):
                    _check(f"{name} replay {replay} argument {i}", dev[name][i], a, TOL[dt])
