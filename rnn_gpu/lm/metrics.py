"""Validation: the model's mean cross-entropy per token over a stream or a text, and perplexity."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import DataError
from .checks import positive_int
from .data import Vocab, get_chunk, n_chunks, tokenize


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


@dataclass(frozen=True)
class TextScore:
    """How well a model predicts a text: :func:`evaluate_text`."""

    loss: float  # mean cross-entropy per scored token (nats)
    tokens: int  # tokens scored: every token after the first one the vocabulary knows
    skipped: int  # characters left out because the vocabulary lacks them (char level)

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)


def known_ids(vocab: Vocab, text: str) -> tuple[np.ndarray, int]:
    """(token ids of `text`, how many characters were left out). Words the vocabulary
    lacks are ``<unk>``; a character vocabulary has no ``<unk>``, so characters it lacks
    are left out of the stream (and counted) instead of failing on the first one."""
    if vocab.unk_id is not None:
        return vocab.encode(text), 0
    toks = tokenize(text, vocab.level)
    ids = np.fromiter((vocab.stoi[t] for t in toks if t in vocab.stoi), np.int32)
    return ids, len(toks) - int(ids.shape[0])


def evaluate_text(model, vocab: Vocab, text: str, *, batch_size: int = 16, bptt: int = 256,
                  progress: Callable[[int, int], None] | None = None) -> TextScore:
    """Mean cross-entropy per token of `model` on `text`, every token after the first
    scored exactly once.

    The N - 1 targets are cut into up to `batch_size` contiguous streams read side by side
    in chunks of `bptt` steps, each stream starting from a zero state (so a stream's first
    prediction has one token of context); padding at the end of the last stream is
    masked out. `progress(done, total)` is called after every chunk."""
    positive_int("batch_size", batch_size)
    positive_int("bptt", bptt)
    ids, skipped = known_ids(vocab, text)
    n = int(ids.shape[0]) - 1  # targets
    if n < 1:
        raise DataError("the text holds fewer than 2 tokens of the model's vocabulary; "
                        "there is nothing to score")
    B = max(1, min(batch_size, n // bptt))
    L = -(-n // B)  # targets per stream
    x = np.zeros((L, B), np.int32)  # (L, B)
    y = np.zeros((L, B), np.int32)
    keep = np.zeros((L, B), bool)
    for b in range(B):
        s = b * L
        m = min(L, n - s)
        x[:m, b], y[:m, b], keep[:m, b] = ids[s:s + m], ids[s + 1:s + 1 + m], True
    total, h = 0.0, None
    chunks = -(-L // bptt)
    for k in range(chunks):
        sl = slice(k * bptt, (k + 1) * bptt)
        loss, h = model.loss(x[sl], y[sl], h0=h, mask=keep[sl])
        total += float(loss)
        if progress is not None:
            progress(k + 1, chunks)
    return TextScore(total / n, n, skipped)
