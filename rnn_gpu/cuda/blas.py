"""GEMM on row-major device arrays straight through cuBLAS: :class:`CublasGemm`.

cuBLAS is column-major. A row-major (p, q) array read column-major is its transpose, so
C = A B (row-major) is computed as C^T = B^T A^T (column-major): cuBLAS gets B first.
An operand that is F-contiguous (a transposed view such as W.T) is the row-major
transpose of a C-contiguous array, and is passed as that array with op = T.

The object is handed its array module and the cuBLAS binding: CuPy's
``cupy.cuda.cublas`` (which refuses any call during a CUDA Graph capture) or
:class:`rnn_gpu.cuda.cublas_capi.CublasCApi` (the C API on CuPy's handle, capturable once
a workspace is set), or a stand-in in the tests; it owns the TF32 setting and the
workspace.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger("rnn_gpu")

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_ONE = {np.dtype(np.float32): np.ones(1, np.float32), np.dtype(np.float64): np.ones(1, np.float64)}
_ZERO = {np.dtype(np.float32): np.zeros(1, np.float32), np.dtype(np.float64): np.zeros(1, np.float64)}
_CUDA_R_32F = 0
WORKSPACE_BYTES = 32 << 20  # cuBLAS's advice for Hopper (4 MiB suffice on older GPUs)


def fail(kern: str, arg: str, expected: str, got: str):
    """Raise the launchers' ValueError: kernel, argument, what was expected, what came."""
    raise ValueError(f"{kern}: {arg}: expected {expected}, got {got}")


def describe(a) -> str:
    if hasattr(a, "dtype") and hasattr(a, "shape"):
        return f"{a.dtype} array of shape {tuple(a.shape)}"
    return type(a).__name__


class CublasGemm:
    """C (m, n) <- A (m, k) @ B (k, n) + beta C on the current stream, no allocation."""

    def __init__(self, cp: Any, cublas: Any):
        self.cp = cp
        self.cublas = cublas
        self.tf32 = False
        self._cupy_compute_type = None  # cupy.matmul's float32 type before set_tf32
        self._workspace = None  # device memory cuBLAS uses instead of allocating

    @property
    def capturable(self) -> bool:
        """Whether GEMMs can be recorded into a CUDA Graph (the C-API binding can)."""
        return bool(getattr(self.cublas, "capturable", False))

    def prepare_capture(self) -> None:
        """Give cuBLAS a fixed workspace on the current device (once), so that it
        allocates nothing during a capture. RuntimeError where the binding is CuPy's."""
        if not self.capturable:
            raise RuntimeError(
                "cuBLAS is reached through CuPy's binding here, which refuses every call "
                "during stream capture (NotImplementedError in cupy.cuda.cublas); the C API "
                "of the libcublas CuPy loaded was not found, so a step cannot be captured")
        if self._workspace is None:
            self._workspace = self.cp.empty(WORKSPACE_BYTES, dtype=self.cp.uint8)
        handle = self.cp.cuda.device.get_cublas_handle()
        self.cublas.setWorkspace(handle, self._workspace.data.ptr, WORKSPACE_BYTES)

    def _operand(self, kern: str, arg: str, X):
        """(op, leading dimension) for a C- or F-contiguous 2-D operand."""
        if not isinstance(X, self.cp.ndarray):
            fail(kern, arg, "a cupy.ndarray", describe(X))
        if X.ndim != 2:
            fail(kern, arg, "a 2-D array", describe(X))
        if X.flags.c_contiguous:
            return self.cublas.CUBLAS_OP_N, max(1, X.shape[1])
        if X.flags.f_contiguous:
            return self.cublas.CUBLAS_OP_T, max(1, X.shape[0])
        fail(kern, arg, "a C- or F-contiguous array", f"strides {X.strides} for shape {X.shape}")

    def gemm(self, A, B, C, beta: float) -> None:
        """C (m, n) <- A (m, k) @ B (k, n) + beta C, beta 0 or 1, on the current stream.

        A and B may be transposed views (F-contiguous); C must be C-contiguous. float32
        uses TF32 tensor cores when :meth:`set_tf32` is on.
        """
        K, cb, cp = "gemm", self.cublas, self.cp
        if not isinstance(C, cp.ndarray):
            fail(K, "C", "a cupy.ndarray", describe(C))
        if not C.flags.c_contiguous:
            fail(K, "C", "a C-contiguous array", f"strides {C.strides} for shape {C.shape}")
        dt = C.dtype
        if dt not in _FLOATS:
            fail(K, "C", "float32 or float64", describe(C))
        opa, lda = self._operand(K, "A", A)
        opb, ldb = self._operand(K, "B", B)
        if A.dtype != dt or B.dtype != dt:
            fail(K, "A, B", f"{dt} like C", f"{A.dtype}, {B.dtype}")
        m, k = A.shape
        n = C.shape[1] if C.ndim == 2 else -1
        if B.shape[0] != k or C.shape != (m, B.shape[1]):
            fail(K, "shapes", "A (m, k), B (k, n), C (m, n)",
                 f"A {A.shape}, B {B.shape}, C {C.shape}")
        if m == 0 or n == 0:
            return
        if k == 0:
            if beta == 0:
                C.fill(0)
            return
        handle = cp.cuda.device.get_cublas_handle()
        cb.setStream(handle, cp.cuda.get_current_stream().ptr)
        cb.setPointerMode(handle, cb.CUBLAS_POINTER_MODE_HOST)
        alpha_p = _ONE[dt].ctypes.data
        beta_p = (_ONE[dt] if beta else _ZERO[dt]).ctypes.data
        # Column-major C^T (n, m) = op(B)^T-as-stored (n, k) @ op(A)^T-as-stored (k, m).
        args = (handle, opb, opa, n, m, k, alpha_p, B.data.ptr, ldb, A.data.ptr, lda, beta_p,
                C.data.ptr, max(1, n))
        if dt == np.float64:
            cb.dgemm(*args)
        elif self.tf32:
            cb.gemmEx(handle, opb, opa, n, m, k, alpha_p, B.data.ptr, _CUDA_R_32F, ldb,
                      A.data.ptr, _CUDA_R_32F, lda, beta_p, C.data.ptr, _CUDA_R_32F,
                      max(1, n), getattr(cb, "CUBLAS_COMPUTE_32F_FAST_TF32", 77),
                      getattr(cb, "CUBLAS_GEMM_DEFAULT", -1))
        else:
            cb.sgemm(*args)

    def set_tf32(self, on: bool) -> None:
        """Opt-in TF32 tensor-core math for float32 GEMMs (ours and cupy.matmul's); off by
        default and never used for float64.

        Precision: TF32 rounds each GEMM input to a 10-bit mantissa (unit roundoff 2^-11,
        about 4.9e-4) and accumulates in float32. A product of K terms is then accurate to
        about 1e-3 relative to sum |a_i b_i| rather than float32's 1e-7 scale, and
        gradients agree with the float64 reference to about 1e-2 relative (the GPU tests
        check 3e-2), against 1e-4 in plain float32. Good for training speed on sm_80+, not
        for gradient checks.

        Turning it off gives ``cupy.matmul`` back the compute type it had before the first
        call (so a user's ``CUPY_TF32=1`` still holds for CuPy's own matmul).
        """
        self.tf32 = bool(on)
        rl = getattr(getattr(self.cp, "_core", None), "_routines_linalg", None)
        if rl is None:  # pragma: no cover - depends on the CuPy version
            log.warning("rnn_gpu: cannot set CuPy's compute type; cupy.matmul follows CUPY_TF32")
            return
        tf32 = getattr(rl, "COMPUTE_TYPE_TF32", 7)
        if self.tf32 and int(self.cp.cuda.Device().compute_capability) < 80:
            self.tf32 = False
            log.warning("rnn_gpu: TF32 needs compute capability 8.0 or newer; staying in float32")
        if self._cupy_compute_type is None:
            self._cupy_compute_type = rl.get_compute_type(np.float32)
        rl.set_compute_type(np.float32, tf32 if self.tf32 else self._cupy_compute_type)
