"""The CPU emulator of the CUDA kernels (tests/cuda_emu/) catches what it claims to: a
kernel source with a barrier taken out, an out-of-bounds store or read, a divergent
barrier, an argument of the wrong type, an illegal launch or one beyond the kernel's
__launch_bounds__, a shuffle in a partial warp, a GEMM with a bad leading dimension. Each case runs a deliberately broken copy of a real
kernel source (or a real kernel called wrongly), so a clean emulated run means something."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from rnn_gpu.cuda.compile import module_source
from rnn_gpu.cuda.launchers import DEFINES
from rnn_gpu.ops import REGISTRY

from .. import cuda_emu
from ..helpers import EMULATED_ORDERS, cuda_device, rel_err


@pytest.fixture(scope="module")
def ops():
    with cuda_device("emulated") as dev:  # skips (fails in CI) without a C++ compiler
        yield dev.ops


@pytest.fixture
def broken(ops):
    """broken(filename, old, new, count=1): the emulated backend's kernel set, on a loader
    that builds kernels/<filename> with `old` (found `count` times) replaced by `new`."""

    def apply(filename, old, new, count=1):
        src = module_source(filename, DEFINES[filename])
        assert src.count(old) == count, f"{filename}: {old!r} not found {count} times"
        return cuda_emu.emulated_backend(cuda_emu.Loader({filename: src.replace(old, new)})).ops
    return apply


def _run(ops, name, version, dtype=np.float32, order=2):
    """The largest relative error of a kernel version against its twin on the registry's
    quick size, in one thread order."""
    spec = REGISTRY[name]
    args = spec.make_args(np, np.random.default_rng(0), spec.sizes["quick"], dtype)
    want = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)
    spec.twin(*want)
    got = tuple(cuda_emu.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
    saved = cuda_emu.Kernel.order
    cuda_emu.Kernel.order = order
    try:
        spec.versions(ops)[version](*got)
    finally:
        cuda_emu.Kernel.order = saved
    return max(rel_err(got[i], want[i]) for i in spec.outputs)


def _worst_over_orders(ops, name, version):
    errs = [_run(ops, name, version, order=o) for o in EMULATED_ORDERS.values()]
    return max(e if np.isfinite(e) else np.inf for e in errs)


def test_the_real_sources_agree_with_the_twins_in_every_order(ops):
    for name, version in (("softmax_xent", "fused"), ("outer_accum", "tiled"),
                          ("bias_grad", "colsum")):
        assert _worst_over_orders(ops, name, version) < 1e-5, name


MISSING_BARRIERS = [
    ("rnn_xent.cu", "softmax_xent", "fused",
     "    __syncthreads();  // the previous call's readers of shm[0] are done\n"),
    ("rnn_xent.cu", "softmax_xent", "fused",
     "        if (lane == 0) shm[0] = v;\n    }\n    __syncthreads();\n"),
    ("rnn_outer.cu", "outer_accum", "tiled",
     "        __syncthreads();  // the slab is read by all before the next one overwrites it\n"),
    ("rnn_embed.cu", "bias_grad", "colsum", "    part[threadIdx.y][threadIdx.x] = s;\n    __syncthreads();\n"),
]


@pytest.mark.parametrize("filename,name,version,with_barrier", MISSING_BARRIERS,
                         ids=lambda v: v if isinstance(v, str) and "\n" not in v else None)
def test_a_missing_barrier_changes_the_result(ops, broken, filename, name, version, with_barrier):
    without = with_barrier.replace("__syncthreads();", "")
    ops = broken(filename, with_barrier, without)
    assert _worst_over_orders(ops, name, version) > 1e-3


def test_an_out_of_bounds_store_is_caught(ops, broken):
    # the loop runs to n inclusive: one store past the end of carry and of dz
    ops = broken("rnn_backward.cu", "RNN_GRID_STRIDE_LOOP(unsigned, i, n) {\n        T c",
                 "RNN_GRID_STRIDE_LOOP(unsigned, i, n + 1) {\n        T c")
    with pytest.raises(cuda_emu.EmulationError, match="rnn_delta_step_f32: wrote outside an array"):
        _run(ops, "delta_step", "fused")


def test_an_out_of_bounds_read_brings_a_nan(ops, broken):
    ops = broken("rnn_backward.cu", "const T k = keep[i / H];", "const T k = keep[i % H];")
    assert not np.isfinite(_run(ops, "delta_step", "fused"))


def test_a_stray_pointer_is_an_illegal_address_not_a_crash(ops, broken):
    # one element past the end: reads ids[N] (a guard) and gathers from far outside UT
    old = ("RNN_GRID_STRIDE_LOOP(long long, i, n) {\n        const long long row = i / H;\n"
           "        const int h = (int)(i - row * H);\n        out[i]")
    ops = broken("rnn_embed.cu", old, old.replace("i, n)", "i, n + 1)"))
    with pytest.raises(cuda_emu.EmulationError, match="illegal address"):
        _run(ops, "embed_gather", "fused")
    assert _run(ops, "act_forward", "fused") < 1e-6  # the emulator still works afterwards


def test_a_divergent_barrier_is_reported(ops, broken):
    ops = broken("rnn_embed.cu", "    part[threadIdx.y][threadIdx.x] = s;\n    __syncthreads();\n",
           "    part[threadIdx.y][threadIdx.x] = s;\n    if (threadIdx.y > 0) __syncthreads();\n")
    with pytest.raises(cuda_emu.EmulationError, match=r"deadlocks: 480 threads wait at "
                                                      r"__syncthreads, 0 at a warp shuffle.*32 have returned"):
        _run(ops, "bias_grad", "colsum")


def test_a_block_beyond_the_launch_bounds_is_refused(ops, broken):
    ops = broken("rnn_embed.cu", "__launch_bounds__(BIAS_COLS * BIAS_ROWS)", "__launch_bounds__(256)", 2)
    with pytest.raises(cuda_emu.EmulationError, match=r"rnn_bias_grad_f32: a block of 512 "
                                                      r"threads exceeds its __launch_bounds__\(256\)"):
        _run(ops, "bias_grad", "colsum")


def _xent_kernel(ops):
    return cuda_emu.kernel("rnn_xent.cu", "rnn_softmax_xent_f32_i32", DEFINES["rnn_xent.cu"])


def _xent_args(N=3, O=70, ids=np.int32):
    return (cuda_emu.zeros((N, O), np.float32), cuda_emu.zeros(N, ids),
            cuda_emu.ones(N, np.float32), np.int32(0), cuda_emu.zeros(N, np.float32), np.int32(O))


def test_arguments_must_match_the_kernel_signature(ops):
    k = _xent_kernel(ops)
    assert k.params == ["*f", "*i", "*f", "i", "*f", "i"]
    args = _xent_args()
    k((3,), (256,), args)  # as the launcher passes them
    with pytest.raises(cuda_emu.EmulationError, match="argument 1: a int64 array passed for "
                                                      "a parameter of type code \\*i"):
        k((3,), (256,), _xent_args(ids=np.int64))
    with pytest.raises(cuda_emu.EmulationError, match="argument 5: expected a NumPy scalar of "
                                                      "type code i, got int 70"):
        k((3,), (256,), args[:5] + (70,))
    with pytest.raises(cuda_emu.EmulationError, match="argument 5: .* got int64"):
        k((3,), (256,), args[:5] + (np.int64(70),))
    with pytest.raises(cuda_emu.EmulationError, match="argument 0: expected a device array"):
        k((3,), (256,), (np.zeros((3, 70), np.float32),) + args[1:])
    with pytest.raises(cuda_emu.EmulationError, match="5 arguments for 6 parameters"):
        k((3,), (256,), args[:5])


def test_illegal_launches_and_partial_warps_are_refused(ops, monkeypatch):
    k = _xent_kernel(ops)
    with pytest.raises(cuda_emu.EmulationError, match=r"2048 threads exceeds its "
                                                      r"__launch_bounds__\(256\)"):
        k((3,), (2048,), _xent_args())
    monkeypatch.setattr(k, "max_threads", 4096)  # no launch bounds: the device's own limit
    with pytest.raises(cuda_emu.EmulationError, match=r"invalid block \(2048,1,1\)"):
        k((3,), (2048,), _xent_args())
    with pytest.raises(cuda_emu.EmulationError, match=r"invalid grid \(1,70000,1\)"):
        k((1, 70000), (256,), _xent_args())
    with pytest.raises(cuda_emu.EmulationError, match="warp shuffle in a partial warp"):
        k((3,), (48,), _xent_args())


def test_gemm_checks_the_leading_dimension():
    cublas = cuda_emu.fake_cupy().cuda.cublas
    one = np.ones(1, np.float32)
    A, B, C = (cuda_emu.zeros((4, 4), np.float32) for _ in range(3))
    p = lambda a: a.data.ptr  # noqa: E731
    cublas.sgemm(1, 0, 0, 4, 4, 4, one.ctypes.data, p(A), 4, p(B), 4, one.ctypes.data, p(C), 4)
    with pytest.raises(cuda_emu.EmulationError, match="A: leading dimension 3 < rows 4"):
        cublas.sgemm(1, 0, 0, 4, 4, 4, one.ctypes.data, p(A), 3, p(B), 4, one.ctypes.data, p(C), 4)


def test_guards_see_a_store_past_the_end():
    a = cuda_emu.zeros(10, np.float64)
    ctypes.memset(a.ctypes.data + a.nbytes, 0, 8)
    with pytest.raises(cuda_emu.EmulationError, match="1 guard elements changed"):
        cuda_emu.check_guards("test")
    cuda_emu.check_guards("test")  # the guard was restored


def test_the_emulated_backend_is_assembled_like_the_real_one():
    """A Backend named "cupy" whose ops are the real launchers on the emulated array
    module, loader and cuBLAS: nothing swapped in sys.modules, nothing shared."""
    import sys

    from rnn_gpu.cuda.cublas_capi import CublasCApi
    from rnn_gpu.cuda.launchers import CudaOps

    had = {k: sys.modules.get(k) for k in ("cupy", "cupy.cuda", "cupy.cuda.cublas")}
    be = cuda_emu.emulated_backend()
    assert be.name == "cupy" and be.is_gpu and isinstance(be.ops, CudaOps)
    assert be.xp.ndarray is cuda_emu.DeviceArray and be.ops.xp is be.xp
    assert isinstance(be.ops.blas.cublas, CublasCApi)  # the C API, as on a GPU where found
    assert isinstance(be.ops.blas.cublas.lib, cuda_emu.FakeLibcublas) and be.ops.capturable
    cupy_binding = cuda_emu.emulated_backend(capi=False)
    assert cupy_binding.ops.blas.cublas is cupy_binding.xp.cuda.cublas
    assert not cupy_binding.ops.capturable
    assert isinstance(be.ops.loader, cuda_emu.Loader)
    assert {k: sys.modules.get(k) for k in had} == had
    assert cuda_emu.emulated_backend().ops is not be.ops
