"""Moved to :mod:`rnn_gpu.bench.peers`; this name is kept for one release."""
from __future__ import annotations

from .bench.peers import SeedLoop, TorchRNN, torch_unavailable_reason

__all__ = ["SeedLoop", "TorchRNN", "torch_unavailable_reason"]
