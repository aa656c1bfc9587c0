"""Kept for one release; use :mod:`rnn_gpu.lm.sample`."""
from __future__ import annotations

from .lm.sample import (  # noqa: F401 - re-exported
    draw, probabilities, sample,
)
