"""The emulator's error."""
from __future__ import annotations


class EmulationError(RuntimeError):
    """A launch or call the GPU (or CuPy) would reject or get wrong: bad arguments, grid,
    barrier, bounds, or work a CUDA Graph capture does not allow."""
