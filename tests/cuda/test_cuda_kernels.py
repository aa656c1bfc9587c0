"""Each CUDA kernel against its NumPy twin, the launchers' checks, the GEMM helper and the
composite steps: on a GPU (marker gpu), and on the CPU emulator (tests/cuda_emu.py) in
three thread orders (tests/cuda_emu/), which runs the same kernel sources with cuBLAS's column-major
contract in place of cuBLAS. CUDA Graph replay and TF32 mode need a real GPU."""
from __future__ import annotations

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu import engine, reference, to_numpy
from rnn_gpu.ops import REGISTRY, NumpyOps
from rnn_gpu.ops import numpy_ops as twins

from ..helpers import EMULATED_ORDERS, cuda_device, device_params, make_problem, randomize, rel_err

TOL = {np.float32: 1e-5, np.float64: 1e-12}
ACT_KERNELS = ("act_forward", "delta_step", "trunc_delta_step")
KEEP_ARG = {"act_forward": 2, "delta_step": 3, "trunc_delta_step": 2, "softmax_xent": 2,
            "sigmoid_bce": 2, "squared_error": 2, "lstm_forward": 5, "lstm_backward": 5,
            "gru_forward": 6, "gru_backward": 4}


@pytest.fixture(scope="module", params=device_params(*EMULATED_ORDERS))
def device(request):
    with cuda_device(request.param) as dev:
        yield dev


@pytest.fixture(scope="module")
def cp(device):
    return device.cp


@pytest.fixture(scope="module")
def cuda_ops(device):
    return device.ops


@pytest.fixture(scope="module")
def gpu_cp():
    """CuPy itself, for what only a GPU can run (graphs, TF32)."""
    return rnn_gpu.get_backend("cupy").xp


def _to_device(cp, args):
    return tuple(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)


def _host_copy(args):
    return tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)


def _check(name, got, want, dtype, what=""):
    err = rel_err(to_numpy(got), want)
    assert err <= TOL[dtype], f"{name}{what}: relative error {err:.3g} > {TOL[dtype]:g}"


def _cases():
    for name, spec in REGISTRY.items():
        acts = reference.ACTIVATIONS if name in ACT_KERNELS else (None,)
        masks = (True, False) if name in KEEP_ARG else (None,)
        for act in acts:
            for masked in masks:
                for dtype in (np.float32, np.float64):
                    yield name, act, masked, dtype


@pytest.mark.parametrize("name,act,masked,dtype", list(_cases()),
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_cuda_versions_match_twin(device, cuda_ops, cp, name, act, masked, dtype):
    spec = REGISTRY[name]
    versions = spec.versions(cuda_ops)  # the registry names them, the kernel set runs them
    assert versions, f"{name}: no CUDA version"
    assert set(versions) == set(spec.cuda_versions) and "numpy" not in versions
    rng = np.random.default_rng(0)
    extra = {} if act is None else {"act": act}
    base = spec.make_args(np, rng, spec.sizes["quick"], dtype, **extra)
    if masked is False:
        base = tuple(None if i == KEEP_ARG[name] else a for i, a in enumerate(base))
    accumulates = (False, True) if name == "outer_accum" else (None,)
    for acc in accumulates:
        args = base
        if acc is not None:  # dW starts random so that accumulating is visible
            args = (rng.uniform(-1, 1, base[0].shape).astype(dtype),) + base[1:3] + (acc,)
        want = _host_copy(args)
        spec.twin(*want)
        for vname, fn in versions.items():
            got = _to_device(cp, _host_copy(args))
            fn(*got)
            for i in spec.outputs:
                _check(name, got[i], want[i], dtype, f" [{vname}] output {i} acc={acc}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ids_dtype", [np.int32, np.int64, np.uint16])
def test_id_types(cuda_ops, cp, dtype, ids_dtype):
    rng = np.random.default_rng(1)
    N, O, I, H = 45, 70, 33, 19
    z = rng.uniform(-5, 5, (N, O)).astype(dtype)
    y = rng.integers(0, O, N).astype(ids_dtype)
    loss = np.empty(N, dtype)
    zd, lossd = cp.asarray(z), cp.asarray(loss)
    cuda_ops.softmax_xent(zd, cp.asarray(y), None, lossd)
    twins.softmax_xent(z, y, None, loss)
    _check("softmax_xent", zd, z, dtype)
    _check("softmax_xent loss", lossd, loss, dtype)
    UT = rng.uniform(-1, 1, (I, H)).astype(dtype)
    ids = rng.integers(0, I, N).astype(ids_dtype)
    bias = rng.uniform(-1, 1, H).astype(dtype)
    out = cp.empty((N, H), dtype)
    cuda_ops.embed_gather(cp.asarray(UT), cp.asarray(ids), cp.asarray(bias), out)
    np.testing.assert_array_equal(to_numpy(out), UT[ids] + bias)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_softmax_large_vocabulary(cuda_ops, cp, dtype, masked):
    """O = 50,000 (not a multiple of the block), large logits, some masked rows."""
    rng = np.random.default_rng(2)
    N, O = 37, 50_000
    z = rng.uniform(-30, 30, (N, O)).astype(dtype)
    y = rng.integers(0, O, N)
    keep = (rng.random(N) > 0.3).astype(dtype) if masked else None
    loss = np.empty(N, dtype)
    zd, lossd = cp.asarray(z), cp.asarray(loss)
    cuda_ops.softmax_xent(zd, cp.asarray(y), None if keep is None else cp.asarray(keep), lossd)
    twins.softmax_xent(z, y, keep, loss)
    _check("softmax_xent", zd, z, dtype)
    _check("softmax_xent loss", lossd, loss, dtype)


def test_launchers_validate(cuda_ops, cp):
    a = cp.zeros((4, 5), cp.float32)
    with pytest.raises(ValueError, match=r"act_forward: h_prev: expected float32 like a"):
        cuda_ops.act_forward(a, cp.zeros((4, 5), cp.float64), None, "tanh")
    with pytest.raises(ValueError, match=r"act_forward: h_prev: expected shape \(4, 5\)"):
        cuda_ops.act_forward(a, cp.zeros((4, 6), cp.float32), None, "tanh")
    with pytest.raises(ValueError, match=r"act_forward: a: expected a C-contiguous array"):
        cuda_ops.act_forward(cp.zeros((5, 4), cp.float32).T, a, None, "tanh")
    with pytest.raises(ValueError, match=r"act_forward: a: expected a cupy.ndarray"):
        cuda_ops.act_forward(np.zeros((4, 5), np.float32), a, None, "tanh")
    with pytest.raises(ValueError, match=r"act_forward: act: expected tanh, sigmoid or relu"):
        cuda_ops.act_forward(a, a.copy(), None, "gelu")
    with pytest.raises(ValueError, match=r"act_forward: keep: expected None or a float32 "
                                         r"array of shape \(4,\)"):
        cuda_ops.act_forward(a, a.copy(), cp.ones(5, cp.float32), "tanh")
    with pytest.raises(ValueError, match=r"softmax_xent: y: expected an integer array"):
        cuda_ops.softmax_xent(a, cp.zeros(4, cp.float32), None, cp.zeros(4, cp.float32))
    with pytest.raises(ValueError, match=r"softmax_xent: loss: expected shape \(4,\)"):
        cuda_ops.softmax_xent(a, cp.zeros(4, cp.int32), None, cp.zeros(3, cp.float32))
    with pytest.raises(ValueError, match=r"outer_accum: dW: expected shape \(5, 3\)"):
        cuda_ops.outer_accum(cp.zeros((3, 5), cp.float32), a, cp.zeros((4, 3), cp.float32),
                             False)
    with pytest.raises(ValueError, match=r"embed_scatter_add: ids: expected an integer"):
        cuda_ops.embed_scatter_add(a, cp.zeros(3, cp.int32), cp.zeros((4, 5), cp.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_layouts_and_beta(cuda_ops, cp, dtype):
    rng = np.random.default_rng(3)
    m, k, n = 37, 29, 41
    for a_f in (False, True):
        for b_f in (False, True):
            A = rng.uniform(-1, 1, (m, k)).astype(dtype)
            B = rng.uniform(-1, 1, (k, n)).astype(dtype)
            C0 = rng.uniform(-1, 1, (m, n)).astype(dtype)
            Ad = cp.asarray(A.T.copy()).T if a_f else cp.asarray(A)  # F- or C-contiguous
            Bd = cp.asarray(B.T.copy()).T if b_f else cp.asarray(B)
            for beta in (0.0, 1.0):
                Cd = cp.asarray(C0)
                cuda_ops.gemm(Ad, Bd, Cd, beta)
                _check("gemm", Cd, A @ B + beta * C0, dtype, f" a_f={a_f} b_f={b_f} beta={beta}")


@pytest.mark.parametrize("act", reference.ACTIVATIONS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_composite_steps_match_twins(cuda_ops, cp, act, masked, dtype):
    rng = np.random.default_rng(4)
    L, B, H = 3, 7, 45
    r = lambda *s: rng.uniform(-0.9, 0.9, s).astype(dtype)  # noqa: E731
    keep = (rng.random(B) > 0.3).astype(dtype) if masked else None
    W = r(H, H)
    dev = lambda *xs: tuple(None if x is None else cp.asarray(x) for x in xs)  # noqa: E731

    s_prev, s_next = r(B, H), r(B, H)
    want = s_next.copy()
    host = NumpyOps()
    engine.forward_step(host, s_prev, W.T, want, keep, act)
    sp, sn, kd, Wd = dev(s_prev, s_next, keep, W)
    engine.forward_step(cuda_ops, sp, Wd.T, sn, kd, act)
    _check("forward_step", sn, want, dtype)

    for last in (False, True):
        carry, e, s = r(B, H), r(B, H), r(B, H)
        wc, we = carry.copy(), e.copy()
        engine.backward_step(host, wc, we, s, keep, we, W, act, last)
        cd, ed, sd, kd, Wd = dev(carry, e, s, keep, W)
        engine.backward_step(cuda_ops, cd, ed, sd, kd, ed, Wd, act, last)
        _check("backward_step dz", ed, we, dtype, f" last={last}")
        if not last:
            _check("backward_step carry", cd, wc, dtype)

        G, s = r(L, B, H), r(B, H)
        wG, wall, wsum = G.copy(), np.empty((L, B, H), dtype), np.empty((B, H), dtype)
        engine.trunc_backward_step(host, wG, s, keep, wall, wsum, W, act, last)
        Gd, sd, kd, Wd = dev(G, s, keep, W)
        alld, sumd = cp.empty((L, B, H), dtype), cp.empty((B, H), dtype)
        engine.trunc_backward_step(cuda_ops, Gd, sd, kd, alld, sumd, Wd, act, last)
        _check("trunc_backward_step dz_all", alld, wall, dtype)
        _check("trunc_backward_step dz_sum", sumd, wsum, dtype)
        if not last:
            _check("trunc_backward_step G", Gd, wG, dtype)


def test_outer_choice_is_cached_and_overridable(cuda_ops, cp, monkeypatch):
    monkeypatch.delenv("RNN_GPU_OUTER", raising=False)
    rng = np.random.default_rng(5)
    a = cp.asarray(rng.uniform(-1, 1, (301, 77)).astype(np.float32))
    b = cp.asarray(rng.uniform(-1, 1, (301, 45)).astype(np.float32))
    dW = cp.empty((77, 45), cp.float32)
    cuda_ops.outer_accum(dW, a, b, False)
    choice = cuda_ops.outer_choice(301, 77, 45, np.float32)
    assert choice in ("cublas", "tiled")
    want = to_numpy(a).T @ to_numpy(b)
    _check("outer_accum", dW, want, np.float32)
    for forced in ("cublas", "tiled"):
        monkeypatch.setenv("RNN_GPU_OUTER", forced)
        dW2 = cp.asarray(want)
        cuda_ops.outer_accum(dW2, a, b, True)
        _check(f"outer_accum {forced}", dW2, 2 * want, np.float32)
    monkeypatch.setenv("RNN_GPU_OUTER", "magic")
    with pytest.raises(ValueError, match="RNN_GPU_OUTER"):
        cuda_ops.outer_accum(dW, a, b, False)


# -------------------------------------------------------------------------------------
# TF32


@pytest.mark.gpu
def test_tf32_within_documented_tolerance(gpu_cp):
    blas = rnn_gpu.get_backend("cupy").ops.blas
    if int(gpu_cp.cuda.Device().compute_capability) < 80:
        pytest.skip("TF32 needs compute capability 8.0 or newer")
    sizes = (40, 64, 50)
    m = randomize(rnn_gpu.RNN(*sizes, backend="cupy", dtype="float32"), scale=0.3)
    x, y, h0, mask = make_problem("softmax", True, True, True, T=12, B=8, sizes=sizes)
    rl, rg, _ = m.reference_loss_and_grads(x, y, h0=h0, mask=mask)
    blas.set_tf32(True)
    try:
        assert blas.tf32
        loss, g, _ = m.loss_and_grads(x, y, h0=h0, mask=mask)
    finally:
        blas.set_tf32(False)
    assert loss == pytest.approx(rl, rel=3e-2)
    for k in g:
        assert rel_err(to_numpy(g[k]), rg[k]) < 3e-2, k
