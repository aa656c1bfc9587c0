"""Validation: the model's mean cross-entropy per token over a stream, and perplexity."""
from __future__ import annotations

import math

import numpy as np

from ..errors import DataError
from .data import get_chunk, n_chunks


def evaluate(model, source: np.ndarray, bptt: int) -> float:
    """Mean cross-entropy per token (nats) of `model` on batchified ids `source` (rows, B),
    read in chunks of `bptt` with the hidden state carried across chunks (the model's own
    loss, :meth:`RNN.loss`, summed in float64)."""
    total, count = loss_sum(model, source, bptt)
    if count == 0:
        raise DataError("validation text is too small to evaluate on")
    return total / count


def loss_sum(model, source: np.ndarray, bptt: int) -> tuple[float, int]:
    """(summed cross-entropy in nats, tokens) of `model` on `source` (rows, B), as
    :func:`evaluate` reads it; the parts that data-parallel ranks add up."""
    total, count, h = 0.0, 0, None
    for k in range(n_chunks(source.shape[0], bptt)):
        x, y = get_chunk(source, k * bptt, bptt)
        loss, h = model.loss(x, y, h0=h)
        total += loss
        count += y.size
    return total, count


def perplexity(loss_per_token: float) -> float:
    return math.exp(loss_per_token) if loss_per_token < 700 else math.inf
