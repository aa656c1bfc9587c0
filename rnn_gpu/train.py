"""Kept for one release; use :mod:`rnn_gpu.lm` (TrainConfig in rnn_gpu.lm.config, Trainer in
rnn_gpu.lm.trainer, evaluate in rnn_gpu.lm.metrics, plot_history in rnn_gpu.lm.report)."""
from __future__ import annotations

from .lm import (  # noqa: F401 - re-exported
    DEFAULT_CHECKPOINT, DEFAULT_TIME_BUDGET, INPUT_INITS, RESUME_FIXED, TrainConfig,
    TrainResult, Trainer, evaluate, perplexity, plot_history,
)
