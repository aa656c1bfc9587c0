"""Output heads other than one dense layer: :mod:`.adaptive`, the adaptive softmax."""
from __future__ import annotations

from .adaptive import AdaptiveHead, AdaptiveSpec, check_adaptive, default_cutoffs

__all__ = ["AdaptiveHead", "AdaptiveSpec", "check_adaptive", "default_cutoffs"]
