"""The engine's operations: the :class:`Ops` protocol, the NumPy twins (the kernel set of
the NumPy backend) and the kernel registry. Nothing here imports CuPy; the CUDA versions
live in :mod:`rnn_gpu.cuda` and are named in the registry."""
from __future__ import annotations

from .numpy_ops import NumpyOps
from .protocol import Ops
from .registry import REGISTRY, KernelSpec

__all__ = ["Ops", "NumpyOps", "REGISTRY", "KernelSpec"]
