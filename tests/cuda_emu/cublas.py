"""cuBLAS for the emulator: ``sgemm``/``dgemm`` with cuBLAS's column-major contract on raw
pointers (leading dimensions checked), so the launchers' row-major-to-column-major
argument mapping is what gets tested."""
from __future__ import annotations

import ctypes
import functools
import types

import numpy as np

from .memory import EmulationError, check_guards

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


def _gemm(dtype, handle, transa, transb, m, n, k, alpha_p, A, lda, B, ldb, beta_p, C, ldc):
    """C (m, n) = alpha op(A) op(B) + beta C, all column-major, as cublas<t>gemm."""
    ct = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    alpha = ct.from_address(alpha_p).value
    beta = ct.from_address(beta_p).value
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


def fake_cublas() -> types.ModuleType:
    """The stand-in of ``cupy.cuda.cublas``: the constants and calls the launchers use."""
    m = types.ModuleType("cuda_emu.cublas")
    m.CUBLAS_OP_N, m.CUBLAS_OP_T = CUBLAS_OP_N, CUBLAS_OP_T
    m.CUBLAS_POINTER_MODE_HOST = 0
    m.setStream = lambda handle, stream: None
    m.setPointerMode = lambda handle, mode: None
    m.sgemm = functools.partial(_gemm, np.float32)
    m.dgemm = functools.partial(_gemm, np.float64)
    return m
