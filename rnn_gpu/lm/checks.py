"""Argument checks, written once for the library and for the command line's edge.

Each raises UsageError (a ValueError) worded ``<name>: expected <what>, got <value>``.
Library functions pass their argument's name (``lr``); :class:`~rnn_gpu.lm.config.TrainConfig`
and the CLI pass the option's (``--lr``), so only they speak of flags.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError


def is_int(v) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_real(v) -> bool:
    """A real number (Python or NumPy; inf and nan included), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite real number."""
    return is_real(v) and math.isfinite(v)


def expect(ok: bool, name: str, what: str, got) -> None:
    """UsageError ``name: expected what, got got`` unless `ok`."""
    if not ok:
        raise UsageError(f"{name}: expected {what}, got {got}")


def positive_int(name: str, v) -> None:
    expect(is_int(v) and v >= 1, name, "a positive integer", v)


def positive_number(name: str, v) -> None:
    expect(is_number(v) and v > 0, name, "a positive number", v)


def non_negative_number(name: str, v) -> None:
    expect(is_number(v) and v >= 0, name, "a number >= 0", v)


def one_of(name: str, v, choices) -> None:
    expect(v in choices, name, f"one of {', '.join(choices)}", repr(v))
