"""The CUDA kernels and launchers of :mod:`rnn_gpu.cuda` on a CPU: an emulated device for
tests (see README.md here). Nothing needs a GPU, CuPy or the CUDA toolkit; it needs the
host C++ compiler.

:func:`emulated_backend` is a :class:`rnn_gpu.backend.Backend` like the real CuPy one,
assembled from the emulated array module (:mod:`.device`), the emulator's kernel loader
(:mod:`.kernels`) and the stand-in cuBLAS (:mod:`.cublas`): an ``rnn_gpu.RNN`` made on it
runs the real launchers on the real kernel sources.
"""
from __future__ import annotations

from . import streams
from .cublas import CUBLAS_OP_N, CUBLAS_OP_T, FakeLibcublas, fake_cublas
from .device import emulated_backend, fake_cupy
from .errors import EmulationError
from .kernels import HEADER, Kernel, Library, Loader, build, compiler, kernel, launch_bounds
from .memory import (DeviceArray, asarray, ascontiguousarray, check_guards, empty, empty_like,
                     ones, zeros, zeros_like)

__all__ = ["CUBLAS_OP_N", "CUBLAS_OP_T", "DeviceArray", "EmulationError", "FakeLibcublas",
           "HEADER", "Kernel", "streams",
           "Library", "Loader", "asarray", "ascontiguousarray", "build", "check_guards",
           "compiler", "empty", "empty_like", "emulated_backend", "fake_cublas", "fake_cupy",
           "kernel", "launch_bounds", "ones", "zeros", "zeros_like"]
