"""Host-side decisions of the CUDA modules, checked without a GPU: which outer-product
version a shape gets, how TF32 mode leaves CuPy's own matmul setting, and which error a
failed CUDA Graph capture reports. Each object is built from stand-ins handed to it (a
cuBLAS binding, a kernel loader, CuPy's linear-algebra settings and device), so nothing
here launches a kernel and no module is patched."""
from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest

from rnn_gpu.cuda import outer
from rnn_gpu.cuda.blas import CublasGemm
from rnn_gpu.cuda.launchers import CudaOps

STUB_CUBLAS = types.SimpleNamespace(CUBLAS_OP_N=0, CUBLAS_OP_T=1)


def _no_launch(filename, defines, name):
    raise AssertionError(f"{name}: a host-side test must not launch a kernel")


@pytest.fixture
def cuda_ops():
    """A CudaOps on the real cupy module (CI installs it; no device is needed to build
    one), with a loader that refuses to launch and a stand-in for cuBLAS, whose shared
    library a machine without CUDA lacks."""
    cupy = pytest.importorskip("cupy")
    return CudaOps(cupy, _no_launch, CublasGemm(cupy, STUB_CUBLAS))


# -------------------------------------------------------------------------------------
# Outer-product version choice


def _timer(times: dict, calls: list):
    def time_version(name):
        calls.append(name)
        return times[name]
    return time_version


def test_outer_choice_takes_the_faster_version_and_caches_it(cuda_ops):
    calls = []
    key = (640, 256, 256, "f", False)
    name = cuda_ops.outer.choose(key, 256, False, _timer({"cublas": 0.30, "tiled": 0.12}, calls))
    assert name == "tiled" and sorted(calls) == ["cublas", "tiled"]
    assert cuda_ops.outer_choice(640, 256, 256, "float32") == "tiled"


def test_outer_choice_beyond_the_tiled_grid_is_cublas_without_timing(cuda_ops):
    M = outer.TILED_MAX_M + 1  # one column more than 65535 tiles cover
    assert not outer.tiled_fits(M) and outer.tiled_fits(M - 1)
    calls = []
    key = (8, M, 4, "f", False)
    name = cuda_ops.outer.choose(key, M, False, _timer({"cublas": 9.0, "tiled": 1.0}, calls))
    assert name == "cublas" and calls == []  # the tiled kernel would raise on this shape
    assert cuda_ops.outer_choice(8, M, 4, "float32") == "cublas"


def test_outer_choice_under_capture_is_cublas_and_left_untimed(cuda_ops):
    calls = []
    name = cuda_ops.outer.choose((16, 32, 8, "d", False), 32, True,
                                 _timer({"cublas": 1.0, "tiled": 0.5}, calls))
    assert name == "cublas" and calls == []
    assert cuda_ops.outer_choice(16, 32, 8, "float64") is None  # timed at the next eager call


def test_outer_choices_belong_to_their_kernel_set(cuda_ops):
    cupy = pytest.importorskip("cupy")
    other = CudaOps(cupy, _no_launch, CublasGemm(cupy, STUB_CUBLAS))
    cuda_ops.outer.choose((4, 8, 2, "f", False), 8, False, _timer({"cublas": 1, "tiled": 2}, []))
    assert cuda_ops.outer_choice(4, 8, 2, "float32") == "cublas"
    assert other.outer_choice(4, 8, 2, "float32") is None


# -------------------------------------------------------------------------------------
# TF32 mode and CuPy's own compute type


@pytest.fixture
def fake_linalg():
    """CuPy's matmul compute type and the device's compute capability, as stand-ins in an
    array module handed to CublasGemm."""
    cupy = pytest.importorskip("cupy")
    from cupy._core import _routines_linalg as real

    state = {"type": real.COMPUTE_TYPE_DEFAULT, "cc": "90"}
    rl = types.SimpleNamespace(
        COMPUTE_TYPE_DEFAULT=real.COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_TF32=real.COMPUTE_TYPE_TF32,
        get_compute_type=lambda dtype: state["type"],
        set_compute_type=lambda dtype, t: state.__setitem__("type", t))
    cp = types.SimpleNamespace(
        ndarray=cupy.ndarray, _core=types.SimpleNamespace(_routines_linalg=rl),
        cuda=types.SimpleNamespace(
            Device=lambda *a: types.SimpleNamespace(compute_capability=state["cc"])))
    return CublasGemm(cp, STUB_CUBLAS), rl, state


def test_tf32_off_restores_the_users_cupy_setting(fake_linalg):
    blas, rl, state = fake_linalg
    state["type"] = rl.COMPUTE_TYPE_TF32  # as CUPY_TF32=1 sets it
    blas.set_tf32(True)
    assert blas.tf32 and state["type"] == rl.COMPUTE_TYPE_TF32
    blas.set_tf32(False)
    assert not blas.tf32
    assert state["type"] == rl.COMPUTE_TYPE_TF32  # cupy.matmul keeps what the user asked for


def test_tf32_round_trip_from_cupy_default(fake_linalg):
    blas, rl, state = fake_linalg
    blas.set_tf32(True)
    assert state["type"] == rl.COMPUTE_TYPE_TF32
    blas.set_tf32(False)
    assert state["type"] == rl.COMPUTE_TYPE_DEFAULT


def test_tf32_refused_below_compute_capability_80(fake_linalg, caplog):
    blas, rl, state = fake_linalg
    state["cc"] = "75"
    with caplog.at_level(logging.WARNING, logger="rnn_gpu"):
        blas.set_tf32(True)
    assert not blas.tf32
    assert state["type"] == rl.COMPUTE_TYPE_DEFAULT
    assert "compute capability 8.0" in caplog.text


def test_tf32_is_read_when_the_backend_is_assembled(fake_linalg, monkeypatch):
    """RNN_GPU_TF32 is read by cuda_backend (each time a backend is assembled), not at import."""
    from rnn_gpu.backend import cuda_backend

    cp = fake_linalg[0].cp
    monkeypatch.delenv("RNN_GPU_TF32", raising=False)
    assert cuda_backend(cp, STUB_CUBLAS, "stand-in", loader=_no_launch).ops.blas.tf32 is False
    monkeypatch.setenv("RNN_GPU_TF32", "1")
    be = cuda_backend(cp, STUB_CUBLAS, "stand-in", loader=_no_launch)
    assert be.ops.blas.tf32 is True and be.name == "cupy" and be.xp is cp


# -------------------------------------------------------------------------------------
# The stand-ins leave nothing behind (the old test fixture attached a stub-cuBLAS module
# to the package, so every later CUDA test got a `cublas` that was the stub)


def test_stand_ins_cannot_leak_into_later_tests(cuda_ops):
    """Nothing in rnn_gpu binds CuPy or cuBLAS at module level, so a stand-in handed to
    one CudaOps can reach no other: a fresh kernel set gets exactly what it is given."""
    import rnn_gpu.cuda_ops  # noqa: F401 - the old module path, kept for one release

    assert cuda_ops.blas.cublas is STUB_CUBLAS
    for name, mod in list(sys.modules.items()):
        if name == "rnn_gpu" or name.startswith("rnn_gpu."):
            assert "cublas" not in vars(mod), f"{name} binds cublas at module level"
            assert "cupy" not in vars(mod), f"{name} binds cupy at module level"
    real = types.SimpleNamespace(CUBLAS_OP_N=0, CUBLAS_OP_T=1, tag="another binding")
    fresh = CudaOps(cuda_ops.xp, _no_launch, CublasGemm(cuda_ops.xp, real))
    assert fresh.blas.cublas is real and cuda_ops.blas.cublas is STUB_CUBLAS


# -------------------------------------------------------------------------------------
# CUDA Graph capture


class _FakeStream:
    """Enough of cupy.cuda.Stream for GraphedStep._capture: a context manager whose
    capture can be made to fail when it ends."""

    def __init__(self, end_error: Exception | None = None):
        self.end_error = end_error
        self.capturing = False
        self.events: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        self.events.append("sync")

    def begin_capture(self):
        self.capturing = True
        self.events.append("begin")

    def end_capture(self):
        self.capturing = False
        self.events.append("end")
        if self.end_error is not None:
            raise self.end_error
        return "graph"


class _FakePool:
    def malloc(self, size):
        raise AssertionError("the captured step allocated")


def _graphed_step(stream, step):
    import contextlib

    from rnn_gpu.cuda.graph import GraphedStep

    g = object.__new__(GraphedStep)  # no device: only the capture logic is under test
    g.xp = types.SimpleNamespace(
        get_default_memory_pool=_FakePool,
        cuda=types.SimpleNamespace(using_allocator=lambda alloc: contextlib.nullcontext()))
    g.engine = types.SimpleNamespace(ops=types.SimpleNamespace(prepare_capture=lambda: None))
    g.stream, g.graph, g._step = stream, None, step
    return g


def test_failed_capture_reports_the_steps_own_error():
    calls = []

    def step(params):
        calls.append(len(calls))
        if len(calls) == 2:  # the captured run, after the eager warm-up
            raise ValueError("softmax_xent: y: expected int array of shape (4, 2)")

    stream = _FakeStream(end_error=RuntimeError("cudaErrorStreamCaptureInvalidated"))
    g = _graphed_step(stream, step)
    with pytest.raises(ValueError, match="softmax_xent: y"):
        g._capture({})
    assert stream.events == ["sync", "begin", "end"] and not stream.capturing
    assert g.graph is None


def test_capture_keeps_the_graph():
    stream = _FakeStream()
    g = _graphed_step(stream, lambda params: None)
    g._capture({})
    assert g.graph == "graph" and g.capture_allocations == 0 and g._param_ptrs == ()
    assert stream.events == ["sync", "begin", "end"]
