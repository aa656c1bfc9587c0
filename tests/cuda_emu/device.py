"""The emulated device: an array module standing in for ``cupy`` (NumPy underneath,
:class:`DeviceArray` for ``cupy.ndarray``, the stand-in cuBLAS, CUDA events by the wall
clock) and :func:`emulated_backend`, a :class:`rnn_gpu.backend.Backend` assembled from it,
the emulator's kernel loader and the stand-in cuBLAS, exactly as the real CuPy backend is
assembled. Nothing is put in ``sys.modules``."""
from __future__ import annotations

import contextlib
import types

import numpy as np

from rnn_gpu.backend import Backend, cuda_backend
from rnn_gpu.cuda.cublas_capi import CublasCApi

from . import streams
from .cublas import FakeLibcublas, fake_cublas
from .kernels import Loader
from .memory import (_GUARDED, DeviceArray, asarray, ascontiguousarray, empty, empty_like, ones,
                     zeros, zeros_like)


class _MemoryPool:
    """CuPy's pool as far as the bench reads it: the bytes of the live device arrays."""

    def free_all_blocks(self) -> None:
        pass

    def total_bytes(self) -> int:
        total = 0
        for ref, g in list(_GUARDED.values()):
            buf = ref()
            if buf is not None:
                total += (len(buf) - 2 * g) * buf.itemsize
        return total

    used_bytes = total_bytes


class _ArrayModule(types.ModuleType):
    """NumPy, with allocations made as guarded device arrays."""

    def __getattr__(self, name):
        return getattr(np, name)


def _matmul(*args, **kwargs):
    if streams.capturing() is not None:  # cupy.matmul goes through cuBLAS (gemmEx)
        raise NotImplementedError(streams.CUBLAS_CAPTURE_MESSAGE)
    return np.matmul(*args, **kwargs)


def fake_cupy() -> types.ModuleType:
    """A `cupy` for the launchers, the engine and the bench: NumPy underneath, DeviceArray
    for cupy.ndarray, CuPy's cuBLAS binding as a stand-in, streams with CUDA Graph
    capture (tests/cuda_emu/streams.py), CUDA events by the wall clock."""
    cp = _ArrayModule("cuda_emu.cupy")
    cp.__version__ = "emulated"
    cp.ndarray = DeviceArray
    for f in (empty, zeros, ones, asarray, empty_like, zeros_like, ascontiguousarray):
        setattr(cp, f.__name__, f)
    cp.matmul = _matmul
    cp.int32, cp.int64, cp.uint8 = np.int32, np.int64, np.uint8
    pool = _MemoryPool()
    cp.get_default_memory_pool = lambda: pool
    cuda = types.ModuleType("cuda_emu.cupy.cuda")
    cuda.cublas = fake_cublas()
    cuda.get_current_stream = streams.current
    cuda.Stream = streams.Stream
    cuda.Event = streams.Event
    cuda.device = types.SimpleNamespace(get_cublas_handle=lambda: 1)
    cuda.get_elapsed_time = lambda start, stop: 1e3 * (stop.t - start.t)
    cuda.using_allocator = lambda allocator=None: contextlib.nullcontext()
    cp.cuda = cuda
    return cp


def emulated_backend(loader: Loader | None = None, *, capi: bool = True) -> Backend:
    """The CuPy backend on the emulated device: named "cupy" (it takes the GPU paths), its
    ops a :class:`rnn_gpu.cuda.launchers.CudaOps` built from :func:`fake_cupy`, the
    emulator's kernel loader (or `loader`) and cuBLAS: through its C API on a stand-in
    libcublas (`capi`, what the real backend uses when it finds the library: capturable)
    or through CuPy's binding (which refuses calls during a capture)."""
    cp = fake_cupy()
    blas = CublasCApi(FakeLibcublas()) if capi else cp.cuda.cublas
    return cuda_backend(cp, blas, "CUDA kernels emulated on the CPU",
                        loader=Loader() if loader is None else loader)
