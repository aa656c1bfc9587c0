"""cuBLAS for the emulator: ``sgemm``/``dgemm`` with cuBLAS's column-major contract on raw
pointers (leading dimensions checked), so the launchers' row-major-to-column-major
argument mapping is what gets tested."""
from __future__ import annotations

import ctypes
import functools
import types

import numpy as np

from . import streams
from .errors import EmulationError
from .memory import check_guards

def _matrix(ptr: int, rows: int, cols: int, ld: int, dtype, what: str) -> np.ndarray:
    """The column-major (rows, cols) matrix at ptr with leading dimension ld, as a view."""
    if ld < max(1, rows):
        raise EmulationError(f"gemm: {what}: leading dimension {ld} < rows {rows} "
                             "(cuBLAS: CUBLAS_STATUS_INVALID_VALUE)")
    itemsize = np.dtype(dtype).itemsize
    n = (cols - 1) * ld + rows if rows and cols else 0
    flat = np.ctypeslib.as_array((ctypes.c_char * (n * itemsize)).from_address(ptr))
    flat = flat.view(dtype)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (itemsize, ld * itemsize))


def _gemm(dtype, handle, transa, transb, m, n, k, alpha_p, A, lda, B, ldb, beta_p, C, ldc,
          capturable: bool = False):
    """C (m, n) = alpha op(A) op(B) + beta C, all column-major, as cublas<t>gemm. alpha
    and beta are read from host memory at the call (CUBLAS_POINTER_MODE_HOST); the
    product is recorded into a capturing stream's graph where the binding is `capturable`."""
    ct = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    alpha = ct.from_address(alpha_p).value
    beta = ct.from_address(beta_p).value
    if not capturable and streams.capturing() is not None:
        raise NotImplementedError(streams.CUBLAS_CAPTURE_MESSAGE)
    streams.run("gemm", lambda: _product(dtype, transa, transb, m, n, k, alpha, A, lda, B,
                                         ldb, beta, C, ldc))


def _product(dtype, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    ra, ca = (m, k) if transa == CUBLAS_OP_N else (k, m)
    rb, cb = (k, n) if transb == CUBLAS_OP_N else (n, k)
    a = _matrix(A, ra, ca, lda, dtype, "A")
    b = _matrix(B, rb, cb, ldb, dtype, "B")
    c = _matrix(C, m, n, ldc, dtype, "C")
    a = a if transa == CUBLAS_OP_N else a.T
    b = b if transb == CUBLAS_OP_N else b.T
    prod = alpha * (a.astype(np.float64) @ b.astype(np.float64))
    if beta != 0:  # beta = 0: C is not read (cuBLAS), so NaN garbage there is harmless
        prod += beta * c
    c[...] = prod.astype(dtype)
    check_guards("gemm")


CUBLAS_OP_N, CUBLAS_OP_T = 0, 1


def _cupy_set_stream(handle, stream) -> None:
    # cupy_backends/cuda/libs/cublas.pyx: setStream refuses a capturing stream, and every
    # sgemm/dgemm/gemmEx calls it with the current stream first (_setStream)
    if streams.stream_is_capturing(int(stream)):
        raise NotImplementedError(streams.CUBLAS_CAPTURE_MESSAGE)


def _cupy_gemm(dtype, handle, *args):
    _cupy_set_stream(handle, streams.current().ptr)
    _gemm(dtype, handle, *args)


def _no_tf32(*args):
    raise EmulationError("gemmEx (TF32 tensor-core GEMM) is not emulated")


def fake_cublas() -> types.ModuleType:
    """The stand-in of CuPy's ``cupy.cuda.cublas``: the constants and calls the launchers
    use, with CuPy's rule that no cuBLAS call is made on a capturing stream."""
    m = types.ModuleType("cuda_emu.cublas")
    m.CUBLAS_OP_N, m.CUBLAS_OP_T = CUBLAS_OP_N, CUBLAS_OP_T
    m.CUBLAS_POINTER_MODE_HOST = 0
    m.setStream = _cupy_set_stream
    m.setPointerMode = lambda handle, mode: None
    m.sgemm = functools.partial(_cupy_gemm, np.float32)
    m.dgemm = functools.partial(_cupy_gemm, np.float64)
    m.gemmEx = _no_tf32
    return m


class FakeLibcublas:
    """A stand-in for the libcublas shared object that
    :class:`rnn_gpu.cuda.cublas_capi.CublasCApi` calls: the ``cublas*_v2`` functions with
    their C argument types checked, the stream of each handle kept, and cuBLAS's rules for
    capture: a GEMM on a capturing stream is recorded into its graph when the handle's
    stream is that stream and the handle has a workspace of its own (cublasSetWorkspace;
    otherwise cuBLAS would allocate while capturing)."""

    def __init__(self):
        from rnn_gpu.cuda.cublas_capi import SIGNATURES

        self.streams: dict[int, int] = {}
        self.workspaces: dict[int, tuple[int, int]] = {}
        self.calls: list[str] = []
        for name, (cname, argtypes) in SIGNATURES.items():
            setattr(self, cname, self._typed(cname, argtypes, getattr(self, f"_{name}")))

    @staticmethod
    def _typed(cname, argtypes, impl):
        def call(*args):
            if len(args) != len(argtypes):
                raise EmulationError(f"{cname}: {len(args)} arguments for {len(argtypes)}")
            for i, (t, a) in enumerate(zip(argtypes, args)):
                if type(a) is not t:
                    raise EmulationError(f"{cname}: argument {i}: expected {t.__name__}, got "
                                         f"{type(a).__name__}")
            return impl(*(a.value if a.value is not None else 0 for a in args))
        call.__name__ = cname
        return call

    def _setStream(self, handle, stream):  # noqa: N802
        self.calls.append("setStream")
        self.streams[handle] = stream
        return 0

    def _setPointerMode(self, handle, mode):  # noqa: N802
        return 0 if mode == 0 else 7  # host pointer mode only (CUBLAS_STATUS_INVALID_VALUE)

    def _setWorkspace(self, handle, ptr, nbytes):  # noqa: N802
        self.calls.append("setWorkspace")
        self.workspaces[handle] = (ptr, nbytes)
        return 0

    def _check_capture(self, handle, what):
        s = streams.capturing()
        if s is None:
            return
        if self.streams.get(handle, 0) != s.ptr:
            raise EmulationError(f"{what}: the handle's stream is not the capturing stream "
                                 "(call cublasSetStream with it first)")
        if handle not in self.workspaces:
            raise EmulationError(f"{what} during capture without cublasSetWorkspace: cuBLAS "
                                 "would allocate its workspace inside the graph")

    def _sgemm(self, handle, *args):
        self._check_capture(handle, "cublasSgemm_v2")
        self.calls.append("sgemm")
        _gemm(np.float32, handle, *args, capturable=True)
        return 0

    def _dgemm(self, handle, *args):
        self._check_capture(handle, "cublasDgemm_v2")
        self.calls.append("dgemm")
        _gemm(np.float64, handle, *args, capturable=True)
        return 0

    def _gemmEx(self, *args):  # noqa: N802
        raise EmulationError("cublasGemmEx (TF32 tensor-core GEMM) is not emulated")
