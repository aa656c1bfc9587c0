"""Kept for one release; use :mod:`rnn_gpu.lm.checkpoint`."""
from __future__ import annotations

from .lm.checkpoint import (  # noqa: F401 - re-exported
    FORMAT, FORMAT_VERSION, PARAM_NAMES, Checkpoint, atomic_write_npz, build_model,
    load_checkpoint, save_checkpoint,
)
