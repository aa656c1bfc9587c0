"""Kept for one release; use :mod:`rnn_gpu.lm.optim`."""
from __future__ import annotations

from .lm.optim import (  # noqa: F401 - re-exported
    DEFAULT_LR, OPTIMIZERS, SGD, Adagrad, Adam, Optimizer, clip_grad_norm, global_norm,
    make_optimizer,
)
