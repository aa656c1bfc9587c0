"""Kept for one release; use :mod:`rnn_gpu.lm.schedule`."""
from __future__ import annotations

from .lm.schedule import (  # noqa: F401 - re-exported
    SCHEDULES, Cosine, Decision, Mikolov, Plateau, Schedule, make_schedule,
)
