"""User-facing errors of the training application.

Each carries a one-line message meant for the person at the terminal: the command line
prints ``rnn-gpu: error: <message>`` on stderr and exits non-zero, with no traceback.
"""
from __future__ import annotations


class RnnGpuError(Exception):
    """Base class: a problem with the user's input, not a bug in rnn-gpu."""

    exit_code = 2


class UsageError(RnnGpuError, ValueError):
    """An option has a value that cannot work (a non-positive size or rate, say)."""


class DataError(RnnGpuError):
    """A corpus that is missing, empty, not UTF-8, or too small for the requested batch."""


class CheckpointError(RnnGpuError):
    """A checkpoint that is missing, truncated, from another format version, or that does
    not match the data or options it is used with."""


class TrainingDiverged(RnnGpuError):
    """The training loss became non-finite or exploded; training stopped."""

    exit_code = 3
