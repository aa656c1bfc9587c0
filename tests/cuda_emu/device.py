"""The emulated device: an array module standing in for ``cupy`` (NumPy underneath,
:class:`DeviceArray` for ``cupy.ndarray``, the stand-in cuBLAS, CUDA events by the wall
clock) and :func:`emulated_backend`, a :class:`rnn_gpu.backend.Backend` assembled from it,
the emulator's kernel loader and the stand-in cuBLAS, exactly as the real CuPy backend is
assembled. Nothing is put in ``sys.modules``."""
from __future__ import annotations

import time
import types

import numpy as np

from rnn_gpu.backend import Backend, cuda_backend

from .cublas import fake_cublas
from .kernels import Loader
from .memory import (_GUARDED, DeviceArray, EmulationError, asarray, ascontiguousarray, empty,
                     empty_like, ones, zeros, zeros_like)

class _Stream:
    ptr = 0

    def __init__(self, *args, **kwargs):
        raise EmulationError("CUDA streams and graph capture are not emulated")

    def is_capturing(self) -> bool:
        return False

    def synchronize(self) -> None:
        pass


class _Event:
    def record(self, stream=None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass


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


def fake_cupy() -> types.ModuleType:
    """A `cupy` for the launchers, the engine and the bench: NumPy underneath, DeviceArray
    for cupy.ndarray, the stand-in cuBLAS, CUDA events by the wall clock; no streams."""
    cp = _ArrayModule("cuda_emu.cupy")
    cp.__version__ = "emulated"
    cp.ndarray = DeviceArray
    for f in (empty, zeros, ones, asarray, empty_like, zeros_like, ascontiguousarray):
        setattr(cp, f.__name__, f)
    pool = _MemoryPool()
    cp.get_default_memory_pool = lambda: pool
    cuda = types.ModuleType("cuda_emu.cupy.cuda")
    cuda.cublas = fake_cublas()
    stream = object.__new__(_Stream)
    cuda.get_current_stream = lambda: stream
    cuda.Stream = _Stream
    cuda.device = types.SimpleNamespace(get_cublas_handle=lambda: 1)
    cuda.Event = _Event
    cuda.get_elapsed_time = lambda start, stop: 1e3 * (stop.t - start.t)
    cp.cuda = cuda
    return cp


def emulated_backend(loader: Loader | None = None) -> Backend:
    """The CuPy backend on the emulated device: named "cupy" (it takes the GPU paths), its
    ops a :class:`rnn_gpu.cuda.launchers.CudaOps` built from :func:`fake_cupy`, the
    emulator's kernel loader (or `loader`) and the stand-in cuBLAS."""
    cp = fake_cupy()
    return cuda_backend(cp, cp.cuda.cublas, "CUDA kernels emulated on the CPU",
                        loader=Loader() if loader is None else loader)
