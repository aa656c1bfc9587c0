"""cuBLAS through its C API (ctypes), on CuPy's own handle and library: the GEMMs a CUDA
Graph can capture.

CuPy refuses every cuBLAS call on a capturing stream (``cupy_backends/cuda/libs/
cublas.pyx``: ``setStream`` raises ``NotImplementedError('calling cuBLAS API during
stream capture is currently unsupported')``, and every ``sgemm``/``dgemm``/``gemmEx``
goes through it). cuBLAS itself supports capture when it is given a workspace of its own
(``cublasSetWorkspace``) so that it allocates nothing while capturing. :class:`CublasCApi`
has the calls :class:`rnn_gpu.cuda.blas.CublasGemm` makes, with CuPy's names and
argument order, and calls the ``cublas*_v2`` functions of the libcublas that CuPy loaded
(found in the process's memory map), with argument types fixed by their C signatures.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

_p, _i, _sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t

# name -> (C function, argument types): the signatures of cublas_api.h (v2 API)
SIGNATURES = {
    "setStream": ("cublasSetStream_v2", (_p, _p)),
    "setPointerMode": ("cublasSetPointerMode_v2", (_p, _i)),
    "setWorkspace": ("cublasSetWorkspace_v2", (_p, _p, _sz)),
    "sgemm": ("cublasSgemm_v2", (_p, _i, _i, _i, _i, _i, _p, _p, _i, _p, _i, _p, _p, _i)),
    "dgemm": ("cublasDgemm_v2", (_p, _i, _i, _i, _i, _i, _p, _p, _i, _p, _i, _p, _p, _i)),
    "gemmEx": ("cublasGemmEx", (_p, _i, _i, _i, _i, _i, _p, _p, _i, _i, _p, _i, _i, _p, _p,
                                _i, _i, _i, _i)),
}


class CublasError(RuntimeError):
    """A cuBLAS call returned a status other than CUBLAS_STATUS_SUCCESS."""


class CublasCApi:
    """The cuBLAS calls of :class:`rnn_gpu.cuda.blas.CublasGemm`, through the C API.

    lib: the loaded libcublas (a ``ctypes.CDLL``), or any object with the ``cublas*``
    functions as attributes (the tests' emulator hands a stand-in)."""

    CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
    CUBLAS_POINTER_MODE_HOST = 0
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77
    CUBLAS_GEMM_DEFAULT = -1
    capturable = True  # with a workspace set (see setWorkspace)

    def __init__(self, lib: Any):
        self.lib = lib
        self._fns = {}
        for name, (cname, argtypes) in SIGNATURES.items():
            fn = getattr(lib, cname)
            try:
                fn.argtypes, fn.restype = list(argtypes), ctypes.c_int
            except AttributeError:  # a stand-in that is not a ctypes function
                pass
            self._fns[name] = (cname, fn, argtypes)

    def _call(self, name: str, *args) -> None:
        cname, fn, argtypes = self._fns[name]
        status = fn(*(t(a) for t, a in zip(argtypes, args)))
        if status != 0:
            raise CublasError(f"{cname} returned cuBLAS status {status}")

    def setStream(self, handle: int, stream: int) -> None:  # noqa: N802 - CuPy's name
        self._call("setStream", handle, stream)

    def setPointerMode(self, handle: int, mode: int) -> None:  # noqa: N802
        self._call("setPointerMode", handle, mode)

    def setWorkspace(self, handle: int, ptr: int, nbytes: int) -> None:  # noqa: N802
        self._call("setWorkspace", handle, ptr, nbytes)

    def sgemm(self, *args) -> None:
        self._call("sgemm", *args)

    def dgemm(self, *args) -> None:
        self._call("dgemm", *args)

    def gemmEx(self, *args) -> None:  # noqa: N802
        self._call("gemmEx", *args)


def loaded_libcublas() -> Path | None:
    """The libcublas shared object this process has mapped (CuPy loads it when
    ``cupy.cuda.cublas`` is imported), or None."""
    try:
        maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    except OSError:  # not Linux
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if len(line.split()) >= 6 else ""
        if Path(path).name.startswith("libcublas.so"):
            return Path(path)
    return None


def load_capi() -> CublasCApi | None:
    """:class:`CublasCApi` on the libcublas CuPy loaded, or None where it cannot be found
    (then the GEMMs go through CuPy's binding, and a step cannot be captured)."""
    path = loaded_libcublas()
    if path is None:
        return None
    try:
        return CublasCApi(ctypes.CDLL(str(path)))
    except (OSError, AttributeError):  # a libcublas without cublasSetWorkspace_v2 (old)
        return None
