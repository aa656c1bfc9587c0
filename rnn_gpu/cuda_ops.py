"""Kept for one release: the CUDA launchers moved to :mod:`rnn_gpu.cuda` (a
:class:`rnn_gpu.cuda.launchers.CudaOps` is the kernel set of the CuPy backend,
``rnn_gpu.get_backend("cupy").ops``). Importing this module imports no CuPy."""
from __future__ import annotations

from .backend import get_backend
from .cuda.launchers import DEFINES, CudaOps

CupyOps = CudaOps
__all__ = ["CudaOps", "CupyOps", "DEFINES", "set_tf32", "tf32_enabled"]


def set_tf32(on: bool) -> None:
    """TF32 for float32 GEMMs on the CuPy backend (see rnn_gpu.cuda.blas.CublasGemm.set_tf32)."""
    get_backend("cupy").ops.blas.set_tf32(on)


def tf32_enabled() -> bool:
    return get_backend("cupy").ops.blas.tf32
