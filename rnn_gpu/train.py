"""Kept for one release; use :mod:`rnn_gpu.lm.trainer`."""
from __future__ import annotations

from .lm.trainer import (  # noqa: F401 - re-exported
    DEFAULT_CHECKPOINT, DEFAULT_TIME_BUDGET, INPUT_INITS, RESUME_FIXED, TrainConfig,
    TrainResult, Trainer, evaluate, perplexity, plot_history,
)
