"""Kept for one release: CUDA Graph capture moved to :mod:`rnn_gpu.cuda.graph`."""
from __future__ import annotations

from .cuda.graph import GraphedStep

__all__ = ["GraphedStep"]
