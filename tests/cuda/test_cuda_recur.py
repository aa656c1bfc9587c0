"""The fused recurrent-step kernels (kernels/rnn_recur.cu) on a GPU (marker gpu) and on
the CPU emulator in three thread orders: each against its NumPy twin over every case of
its arguments, then engine-like loops over T steps (forward, full and truncated
backward) against the NumPy engine's composite steps and the float64 reference, and
the launchers' checks. Sizes are not multiples of any tile (32 here)."""
from __future__ import annotations

import numpy as np
import pytest

from rnn_gpu import engine, get_backend, reference, to_numpy
from rnn_gpu.ops import numpy_ops as twins
from rnn_gpu.reference import param_shapes

from ..helpers import EMULATED_ORDERS, cuda_device, device_params, rel_err

TOL = {np.float32: 1e-5, np.float64: 1e-12}  # one launch against its twin
LOOP_TOL = {np.float32: 1e-4, np.float64: 1e-12}  # T launches against the NumPy engine
REF_TOL = 1e-10  # float64 against the reference
ACTS = reference.ACTIVATIONS
DTYPES = (np.float32, np.float64)


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


def _weights(rng, dtype, H):
    return _r(rng, dtype, H, H, lo=-1.5 / H**0.5, hi=1.5 / H**0.5)


# -------------------------------------------------------------------------------------
# One launch against the twin


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("act", ACTS)
def test_recur_forward_matches_twin(device, act, masked, dtype):
    cp, ops = device.cp, device.ops
    rng = np.random.default_rng(10)
    B, H = 37, 45
    W = _weights(rng, dtype, H)
    s_prev, s_next = _r(rng, dtype, B, H), _r(rng, dtype, B, H, lo=-2, hi=2)
    keep = (rng.random(B) > 0.3).astype(dtype) if masked else None
    want = s_next.copy()
    twins.recur_forward(s_prev, W.T, want, keep, act)
    Wd = cp.asarray(W)
    for layout, WT in (("W.T view", Wd.T), ("C-contiguous W^T", cp.asarray(W.T.copy()))):
        got = cp.asarray(s_next)
        ops.recur_forward(cp.asarray(s_prev), WT, got,
                          None if keep is None else cp.asarray(keep), act)
        _check(f"recur_forward [{layout}]", got, want, TOL[dtype])
        if masked:  # masked rows are s_prev exactly
            np.testing.assert_array_equal(to_numpy(got)[keep == 0], s_prev[keep == 0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("act", ACTS)
def test_recur_backward_matches_twin(device, act, masked, dtype):
    cp, ops = device.cp, device.ops
    rng = np.random.default_rng(11)
    B, H = 37, 45
    W = _weights(rng, dtype, H)
    keep = (rng.random(B) > 0.3).astype(dtype) if masked else None
    kd = None if keep is None else cp.asarray(keep)
    for has_next in (True, False):
        for alias in (False, True):  # dz the same array as e, as the engine calls it
            dz_next = _r(rng, dtype, B, H) if has_next else None
            carry = _r(rng, dtype, B, H) if masked else None
            e, s = _r(rng, dtype, B, H), _r(rng, dtype, B, H, lo=-0.99, hi=0.99)
            wc = None if carry is None else carry.copy()
            we = e.copy()
            wdz = we if alias else np.empty_like(e)
            twins.recur_backward(dz_next, W, wc, we, s, keep, wdz, act)
            cd = None if carry is None else cp.asarray(carry)
            ed = cp.asarray(e)
            dzd = ed if alias else cp.empty((B, H), dtype)
            for layout, Wd in (("C", cp.asarray(W)), ("F", cp.asarray(W.T.copy()).T)):
                if layout == "F":  # rerun from the same inputs
                    cd = None if carry is None else cp.asarray(carry)
                    ed = cp.asarray(e)
                    dzd = ed if alias else cp.empty((B, H), dtype)
                ops.recur_backward(None if dz_next is None else cp.asarray(dz_next), Wd, cd,
                                   ed, cp.asarray(s), kd, dzd, act)
                what = f"recur_backward [W {layout}, next={has_next}, alias={alias}]"
                _check(what + " dz", dzd, wdz, TOL[dtype])
                if masked:
                    _check(what + " carry", cd, wc, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("act", ACTS)
def test_recur_trunc_backward_matches_twin(device, act, masked, dtype):
    cp, ops = device.cp, device.ops
    rng = np.random.default_rng(12)
    B, H = 37, 45
    W = _weights(rng, dtype, H)
    keep = (rng.random(B) > 0.3).astype(dtype) if masked else None
    kd = None if keep is None else cp.asarray(keep)
    Wd = cp.asarray(W)
    for L, fresh in ((3, 0), (3, 2), (1, 0)):
        for has_prev in (True, False):
            dz_prev = _r(rng, dtype, L, B, H) if has_prev else None
            G = _r(rng, dtype, L, B, H) if masked else None
            e, s = _r(rng, dtype, B, H), _r(rng, dtype, B, H, lo=-0.99, hi=0.99)
            wG = None if G is None else G.copy()
            we = e.copy()
            wall = np.empty((L, B, H), dtype)
            twins.recur_trunc_backward(dz_prev, W, wG, fresh, we, s, keep, wall, we, act)
            Gd = None if G is None else cp.asarray(G)
            ed = cp.asarray(e)
            alld = cp.empty((L, B, H), dtype)
            ops.recur_trunc_backward(None if dz_prev is None else cp.asarray(dz_prev), Wd, Gd,
                                     fresh, ed, cp.asarray(s), kd, alld, ed, act)
            what = f"recur_trunc_backward [L={L}, fresh={fresh}, prev={has_prev}]"
            _check(what + " dz_all", alld, wall, TOL[dtype])
            _check(what + " dz_sum", ed, we, TOL[dtype])
            if masked:
                _check(what + " G", Gd, wG, TOL[dtype])


# -------------------------------------------------------------------------------------
# T launches: the engine's loops with the fused kernels


def _problem(dtype, act, masked, truncate, T=7, B=37, I=6, H=45, O=5, seed=0):
    """A dense-input problem run through the NumPy engine: params, x, y, h0, keep (T, B),
    and from the engine the states S, the output errors E (before backward) and dz."""
    rng = np.random.default_rng(seed)
    params = {k: rng.uniform(-0.5, 0.5, shape).astype(dtype)
              for k, shape in param_shapes(I, H, O).items()}
    params["W"] = _weights(rng, dtype, H)
    x = rng.normal(size=(T, B, I)).astype(dtype)
    y = rng.integers(0, O, size=(T, B))
    h0 = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
    keep = None
    if masked:  # variable lengths and a hole in the middle
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T
        keep = (np.arange(T)[:, None] < lengths[None, :]).astype(dtype)
        keep[T // 2, 0] = 0
    eng = engine.Engine(get_backend("numpy"), np.dtype(dtype), (I, H, O), act, "softmax")
    ws = eng.workspace(T, B, True, truncate, masked)
    eng.forward_states(ws, params, x, h0, keep)
    eng.output_layer(ws, params, y, keep)
    E = (ws.logits @ params["V"]).reshape(T, B, H)  # e_t = V^T delta_o_t
    eng.backward(ws, params, x, keep, truncate)
    return dict(params=params, x=x, y=y, h0=h0, keep=keep, S=ws.S.copy(), E=E,
                dz=ws.E.copy(), T=T, B=B, H=H)


def _fused_forward(dev, p, act):
    cp, ops = dev.cp, dev.ops
    T, B, H = p["T"], p["B"], p["H"]
    U, W, b = p["params"]["U"], p["params"]["W"], p["params"]["b"]
    S = cp.empty((T + 1, B, H), p["h0"].dtype)
    S[0] = p["h0"]
    S[1:] = p["x"] @ U.T + b  # U x_t + b: one product over all steps, as the engine
    Wd = cp.asarray(W)
    keep = None if p["keep"] is None else cp.asarray(p["keep"])
    for t in range(T):
        ops.recur_forward(S[t], Wd.T, S[t + 1], None if keep is None else keep[t], act)
    return S


def _fused_backward(dev, p, act, S, truncate):
    """dz (T, B, H) by T launches, in the engine's buffers: E overwritten in place."""
    cp, ops = dev.cp, dev.ops
    T, B, H = p["T"], p["B"], p["H"]
    dt = p["h0"].dtype
    E = cp.asarray(p["E"])
    Wd = cp.asarray(p["params"]["W"])
    keep = None if p["keep"] is None else cp.asarray(p["keep"])
    k = lambda t: None if keep is None else keep[t]  # noqa: E731
    L = engine.live_streams(T, truncate)
    if not L:
        carry = None if keep is None else cp.zeros((B, H), dt)
        for t in range(T - 1, -1, -1):
            ops.recur_backward(E[t + 1] if t < T - 1 else None, Wd, carry, E[t], S[t + 1],
                               k(t), E[t], act)
    else:  # two dz_all buffers: step j reads step j+1's while it writes its own
        G = None if keep is None else cp.zeros((L, B, H), dt)
        bufs = (cp.empty((L, B, H), dt), cp.empty((L, B, H), dt))
        for j in range(T - 1, -1, -1):
            ops.recur_trunc_backward(bufs[(j + 1) % 2] if j < T - 1 else None, Wd, G, j % L,
                                     E[j], S[j + 1], k(j), bufs[j % 2], E[j], act)
    return E


def _grads_from_dz(p, DZ, S):
    """dW, db, dU from dz and the states, as the engine computes them after the loop."""
    T, B, H = p["T"], p["B"], p["H"]
    dz = to_numpy(DZ).reshape(T * B, H).astype(np.float64)
    s_prev = to_numpy(S)[:-1].reshape(T * B, H).astype(np.float64)
    x = p["x"].reshape(T * B, -1).astype(np.float64)
    return {"W": dz.T @ s_prev, "b": dz.sum(axis=0), "U": dz.T @ x}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("truncate", [None, 2, 0])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("act", ACTS)
def test_fused_loops_match_engine_and_reference(device, act, masked, truncate, dtype):
    p = _problem(dtype, act, masked, truncate)
    S = _fused_forward(device, p, act)
    _check("states vs the NumPy engine", S, p["S"], LOOP_TOL[dtype])
    DZ = _fused_backward(device, p, act, S, truncate)
    _check("dz vs the NumPy engine", DZ, p["dz"], LOOP_TOL[dtype])
    if dtype is not np.float64:
        return
    ref_s = reference.forward({k: v.astype(np.float64) for k, v in p["params"].items()},
                              p["x"], p["h0"], np.ones((p["T"], p["B"])) if p["keep"] is None
                              else p["keep"], act)
    _check("states vs the reference", S, ref_s, REF_TOL)
    _, rg, _ = reference.loss_and_grads(p["params"], p["x"], p["y"], h0=p["h0"],
                                        truncate=truncate, mask=p["keep"],
                                        hidden_activation=act, output="softmax")
    for name, g in _grads_from_dz(p, DZ, S).items():
        _check(f"d{name} from the fused dz vs the reference", g, rg[name], REF_TOL)


# -------------------------------------------------------------------------------------
# The launchers' checks


def test_recur_launchers_validate(device):
    cp, ops = device.cp, device.ops
    f = cp.float32
    B, H = 4, 5
    a, W = cp.zeros((B, H), f), cp.zeros((H, H), f)
    with pytest.raises(ValueError, match=r"recur_forward: WT: expected float32 like"):
        ops.recur_forward(a, cp.zeros((H, H), cp.float64), a.copy(), None, "tanh")
    with pytest.raises(ValueError, match=r"recur_forward: WT: expected shape \(5, 5\)"):
        ops.recur_forward(a, cp.zeros((H, H + 1), f), a.copy(), None, "tanh")
    with pytest.raises(ValueError, match=r"recur_forward: WT: expected a C- or F-contiguous"):
        ops.recur_forward(a, cp.zeros((2 * H, 2 * H), f)[::2, ::2], a.copy(), None, "tanh")
    with pytest.raises(ValueError, match=r"recur_forward: s_next: expected an array that "
                                         r"does not overlap s_prev"):
        ops.recur_forward(a, W, a, None, "tanh")
    with pytest.raises(ValueError, match=r"recur_forward: keep: expected None or a float32"):
        ops.recur_forward(a, W, a.copy(), cp.ones(B + 1, f), "tanh")
    with pytest.raises(ValueError, match=r"recur_backward: carry: expected a float32 array "
                                         r"of shape \(4, 5\) with a mask, got None"):
        ops.recur_backward(None, W, None, a, a.copy(), cp.ones(B, f), a, "tanh")
    with pytest.raises(ValueError, match=r"recur_backward: dz: expected an array that does "
                                         r"not overlap dz_next"):
        ops.recur_backward(a, W, None, a.copy(), a.copy(), None, a, "tanh")
    with pytest.raises(ValueError, match=r"recur_backward: dz_next: expected shape \(4, 5\)"):
        ops.recur_backward(cp.zeros((B, H + 1), f), W, None, a, a.copy(), None, a, "tanh")
    with pytest.raises(ValueError, match=r"recur_backward: act: expected tanh, sigmoid or relu"):
        ops.recur_backward(None, W, None, a, a.copy(), None, a, "gelu")
    G = cp.zeros((3, B, H), f)
    with pytest.raises(ValueError, match=r"recur_trunc_backward: fresh: expected an int slot "
                                         r"in \[0, 3\)"):
        ops.recur_trunc_backward(None, W, None, 3, a, a.copy(), None, G, a, "tanh")
    with pytest.raises(ValueError, match=r"recur_trunc_backward: dz_all: expected an array "
                                         r"that does not overlap dz_prev"):
        ops.recur_trunc_backward(G, W, None, 0, a, a.copy(), None, G, a, "tanh")
    with pytest.raises(ValueError, match=r"recur_trunc_backward: G: expected a float32 array "
                                         r"of shape \(3, 4, 5\) with a mask"):
        ops.recur_trunc_backward(None, W, None, 0, a, a.copy(), cp.ones(B, f), G, a, "tanh")
    with pytest.raises(ValueError, match=r"recur_trunc_backward: dz_all: expected a 3-D"):
        ops.recur_trunc_backward(None, W, None, 0, a, a.copy(), None, a.copy(), a, "tanh")


# -------------------------------------------------------------------------------------
# Other tunables still compile without spills (nvcc; skipped without it unless CI)


def test_recur_compiles_with_other_tunables(tmp_path):
    from .test_kernels_compile import _USAGE, KDIR, _run_nvcc  # noqa: PLC0415

    for defines in (("-DRECUR_TM=16", "-DRECUR_TN=64", "-DRECUR_TK=16", "-DRECUR_TX=32",
                     "-DRECUR_TY=4"),
                    ("-DRECUR_TM=64", "-DRECUR_TN=64", "-DRECUR_TK=8", "-DRECUR_TX=16",
                     "-DRECUR_TY=16")):
        out = _run_nvcc("-cubin", "-arch=sm_90", "--Werror", "all-warnings", "--resource-usage",
                        *defines, str(KDIR / "rnn_recur.cu"), "-o", str(tmp_path / "r.cubin"))
        usage = {k: (int(f), int(st), int(ld)) for k, f, st, ld in _USAGE.findall(out)}
        assert len(usage) == 6, out
        for kern, spill in usage.items():
            assert spill == (0, 0, 0), (defines, kern, spill)
