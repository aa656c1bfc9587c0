"""Recurrent states as the model passes them: one array (Elman, GRU) or, for an LSTM, the
pair ``(h, c)``, each of :meth:`rnn_gpu.RNN.state_shape`. ``None`` stands for zeros.

Code that carries a state between calls (the trainer, data parallelism, checkpoints,
the captured CUDA step) handles both forms through these few functions, so that it
never needs to know which cell made the state.
"""
from __future__ import annotations

from typing import Any, Callable


def is_pair(state) -> bool:
    """Whether `state` is an LSTM's ``(h, c)``."""
    return isinstance(state, (tuple, list))


def parts(state) -> tuple:
    """The arrays of `state`: ``(h,)`` or ``(h, c)``; ``()`` for None."""
    if state is None:
        return ()
    return tuple(state) if is_pair(state) else (state,)


def map_state(f: Callable[[Any], Any], state):
    """`f` applied to each array of `state`, in the same form (None stays None)."""
    if state is None:
        return None
    if is_pair(state):
        return tuple(f(a) for a in state)
    return f(state)


def from_parts(arrays, pair: bool):
    """The inverse of :func:`parts`: a pair when `pair`, else the one array."""
    arrays = tuple(arrays)
    if not arrays:
        return None
    return arrays if pair else arrays[0]
