"""Kept for one release: the kernels moved to :mod:`rnn_gpu.ops` (the NumPy twins in
:mod:`rnn_gpu.ops.numpy_ops`, the registry in :mod:`rnn_gpu.ops.registry`); a backend
carries its kernel set as ``backend.ops``. The composite steps are the engine's
(:func:`rnn_gpu.engine.forward_step`, ...)."""
from __future__ import annotations

from .ops.numpy_ops import (NumpyOps, act_forward, bias_grad, delta_step, embed_gather,
                            embed_scatter_add, outer_accum, sigmoid_bce, softmax_xent,
                            squared_error, trunc_delta_step)
from .ops.registry import REGISTRY, KernelSpec

__all__ = ["NumpyOps", "REGISTRY", "KernelSpec", "act_forward", "bias_grad", "delta_step",
           "embed_gather", "embed_scatter_add", "outer_accum", "sigmoid_bce", "softmax_xent",
           "squared_error", "trunc_delta_step", "ops_for"]


def ops_for(backend):
    """The kernel set of `backend` (its ``.ops``)."""
    return backend.ops
