"""The emulated device refuses, during a CUDA Graph capture, what CuPy and the driver
refuse: each rule is broken on purpose here and the error seen. Outside a capture the
same calls work; inside one, allowed work is recorded and runs only when the graph is
launched."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from rnn_gpu.cuda.blas import CublasGemm
from rnn_gpu.cuda.cublas_capi import CublasCApi

from . import FakeLibcublas, emulated_backend, fake_cupy, streams
from .errors import EmulationError
from .memory import zeros

CUPY_MESSAGE = "calling cuBLAS API during stream capture is currently unsupported"


def _operands(cp, n=4):
    return [cp.asarray(np.arange(n * n, dtype=np.float64).reshape(n, n) / 7) for _ in range(3)]


@pytest.fixture
def capture():
    """A fresh emulated `cupy`, arrays made before the capture (A, B, C 4x4 and one of a
    single element), and a stream in capture mode; the capture is ended after."""
    cp = fake_cupy()
    arrays = (*_operands(cp), cp.asarray(np.ones((1, 1))))
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        try:
            yield cp, s, arrays
        finally:
            if s.is_capturing():
                s.end_capture()


def test_cublas_through_cupy_is_refused_as_cupy_refuses_it():
    cp = fake_cupy()
    A, B, C = _operands(cp)
    gemm = CublasGemm(cp, cp.cuda.cublas)
    gemm.gemm(A, B, C, 0.0)  # outside a capture: fine
    np.testing.assert_allclose(C, np.asarray(A) @ np.asarray(B))
    s = cp.cuda.Stream()
    with s:
        s.begin_capture()
        with pytest.raises(NotImplementedError, match=CUPY_MESSAGE):
            gemm.gemm(A, B, C, 0.0)  # CuPy's setStream checks the stream it is given
        with pytest.raises(NotImplementedError, match=CUPY_MESSAGE):
            cp.cuda.cublas.dgemm(1, 0, 0, 4, 4, 4, np.ones(1).ctypes.data, A.data.ptr, 4,
                                 B.data.ptr, 4, np.zeros(1).ctypes.data, C.data.ptr, 4)
        s.end_capture()


def test_cupy_matmul_is_refused_during_capture(capture):
    cp, _, (A, B, C, _) = capture
    with pytest.raises(NotImplementedError, match=CUPY_MESSAGE):
        cp.matmul(A, B, out=C)
    with pytest.raises(NotImplementedError, match=CUPY_MESSAGE):
        np.matmul(A, B, out=C)  # the array's own operator path


def test_the_c_api_records_gemms_once_given_a_workspace():
    cp = fake_cupy()
    A, B, C = _operands(cp)
    lib = FakeLibcublas()
    gemm = CublasGemm(cp, CublasCApi(lib))
    s = cp.cuda.Stream()
    with s:
        s.begin_capture()
        with pytest.raises(EmulationError, match="without cublasSetWorkspace"):
            gemm.gemm(A, B, C, 0.0)
        s.end_capture()
        gemm.prepare_capture()
        C.fill(0.0)
        s.begin_capture()
        gemm.gemm(A, B, C, 0.0)
        graph = s.end_capture()
    assert not np.asarray(C).any(), "a captured GEMM must not run before the launch"
    graph.launch(stream=s)
    np.testing.assert_allclose(C, np.asarray(A) @ np.asarray(B))
    assert lib.calls.count("setWorkspace") == 1


def test_the_c_api_arguments_have_their_c_types():
    lib = FakeLibcublas()
    with pytest.raises(EmulationError, match="cublasSetStream_v2: argument 1: expected c_void_p"):
        lib.cublasSetStream_v2(ctypes.c_void_p(1), ctypes.c_int(2))
    with pytest.raises(EmulationError, match="cublasSgemm_v2: 3 arguments for 14"):
        lib.cublasSgemm_v2(ctypes.c_void_p(1), ctypes.c_int(0), ctypes.c_int(0))


def test_a_gemm_on_a_handle_bound_to_another_stream_is_refused():
    cp = fake_cupy()
    A, B, C = _operands(cp)
    capi = CublasCApi(FakeLibcublas())
    gemm = CublasGemm(cp, capi)
    gemm.prepare_capture()
    s = cp.cuda.Stream()
    with s:
        s.begin_capture()
        capi.setStream(1, 0)  # rebinds the handle to the default stream behind the gemm's back
        with pytest.raises(EmulationError, match="not the capturing stream"):
            capi.sgemm(1, 0, 0, 4, 4, 4, np.ones(1, np.float32).ctypes.data, A.data.ptr, 4,
                       B.data.ptr, 4, np.zeros(1, np.float32).ctypes.data, C.data.ptr, 4)
        s.end_capture()


@pytest.mark.parametrize("read", ["get", "float", "int", "bool", "item"])
def test_host_reads_are_refused(capture, read):
    cp, _, (a4, _, _, a1) = capture
    a = a1 if read != "get" else a4
    f = {"get": lambda: a.get(), "float": lambda: float(a), "int": lambda: int(a),
         "bool": lambda: bool(a), "item": lambda: a.item()}[read]
    with pytest.raises(EmulationError, match=r"device-to-host read\) during the CUDA Graph capture"):
        f()


def test_allocations_are_refused(capture):
    cp, _, (a, _, _, _) = capture
    for alloc in (lambda: cp.empty((3,)), lambda: cp.zeros(4), lambda: a.copy(),
                  lambda: a + 1.0, lambda: a.sum(), lambda: a.astype(np.float32)):
        with pytest.raises(EmulationError, match="during the CUDA Graph capture"):
            alloc()


def test_synchronize_is_refused(capture):
    cp, s, _ = capture
    with pytest.raises(EmulationError, match="synchronize during the CUDA Graph capture"):
        s.synchronize()
    with pytest.raises(EmulationError, match="Event.synchronize during"):
        s.record().synchronize()


def test_work_on_another_stream_is_refused(capture):
    cp, _, (a, _, _, _) = capture
    other = cp.cuda.Stream()
    with other, pytest.raises(EmulationError, match="while stream .* captures"):
        a *= 2.0


def test_a_kernel_launch_on_another_stream_is_refused():
    be = emulated_backend()
    cp = be.xp
    a = cp.asarray(np.linspace(-2, 2, 12).reshape(3, 4))
    h = cp.asarray(np.zeros((3, 4)))
    s = cp.cuda.Stream()
    with s:
        s.begin_capture()
        with cp.cuda.Stream(), pytest.raises(EmulationError, match="while stream .* captures"):
            be.ops.act_forward(a, h, None, "tanh")
        s.end_capture()


def test_in_place_work_and_kernels_are_recorded_and_replayed():
    be = emulated_backend()
    cp = be.xp
    host = np.linspace(-2, 2, 12).reshape(3, 4)
    a = cp.asarray(host)
    h = zeros((3, 4))
    s = cp.cuda.Stream()
    with s:
        s.begin_capture()
        a *= 2.0  # recorded
        be.ops.act_forward(a, h, None, "tanh")  # recorded launch
        cp.copyto(h, a)
        graph = s.end_capture()
    np.testing.assert_array_equal(a, host)  # nothing ran yet
    assert [w for w, _ in graph.work] == ["multiply", "rnn_act_forward_f64", "copyto"]
    graph.launch(stream=s)
    np.testing.assert_allclose(a, np.tanh(2 * host))
    np.testing.assert_array_equal(h, a)
    graph.launch(stream=s)  # a replay reads the buffers as they are now
    np.testing.assert_allclose(a, np.tanh(2 * np.tanh(2 * host)))


def test_the_default_stream_cannot_capture():
    with pytest.raises(EmulationError, match="legacy default stream cannot capture"):
        streams.NULL.begin_capture()
