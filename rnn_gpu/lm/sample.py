"""Drawing text from a trained language model.

The model runs one step at a time on its own backend; each step's logits come to the
host, where they are scaled by 1 / temperature and normalized in float64, so rounding in
a float32 softmax can never make the probabilities fail to sum to one. The draw inverts
the cumulative distribution with one uniform number from a seeded NumPy Generator, so a
given seed always gives the same text on every backend that computes the same logits.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..errors import DataError, UsageError
from .checks import expect, is_int, non_negative_number
from .data import EOS, Vocab


def probabilities(logits, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` in float64 on the host; shape ``(O,)``."""
    z = np.asarray(to_numpy(logits), dtype=np.float64).ravel() / temperature
    z -= z.max()
    p = np.exp(z)
    return p / p.sum()


def draw(logits, temperature: float, rng: np.random.Generator) -> int:
    """One token id: argmax when `temperature` is 0, else a draw from the tempered softmax."""
    if temperature == 0:
        return int(np.argmax(to_numpy(logits)))
    cdf = np.cumsum(probabilities(logits, temperature))
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1))


def prime_ids(vocab: Vocab, prime: str, what: str = "prime") -> list[int]:
    """The token ids `prime` feeds the model; DataError for a token not in `vocab`,
    UsageError for a prime with no tokens, each naming `what`."""
    ids = [int(i) for i in vocab.encode(prime, what=what)]
    if vocab.level == "word" and ids and ids[-1] == vocab.stoi[EOS] and not prime.endswith("\n"):
        ids = ids[:-1]  # a prime on one line continues that line
    if not ids:
        raise UsageError(f"{what} holds no tokens")
    return ids


def sample(
    model,
    vocab: Vocab,
    length: int = 200,
    *,
    prime: str = "",
    temperature: float = 1.0,
    seed: int | None = 0,
    rng: np.random.Generator | None = None,
) -> str:
    """`prime` followed by `length` tokens drawn from `model`.

    Without a prime, generation starts after a newline (an ``<eos>`` at word level) when
    the vocabulary has one, else after token 0. `rng` overrides `seed`.
    """
    expect(is_int(length) and length >= 0, "length", "a non-negative integer", length)
    non_negative_number("temperature", temperature)
    if len(vocab) != model.config["input_size"]:
        raise DataError(
            f"vocabulary of {len(vocab)} tokens does not fit a model with input size "
            f"{model.config['input_size']}"
        )
    rng = rng if rng is not None else np.random.default_rng(seed)
    be = model.backend
    if prime:
        ids = prime_ids(vocab, prime)
    else:
        start = "\n" if vocab.level == "char" else EOS
        ids = [vocab.stoi.get(start, 0)]
    h = None  # a zero state to start; then the model's own (an LSTM's (h, c))
    logits = None
    for i in ids:
        logits, h = model.step(be.asarray(np.array([i], dtype=np.int32)), h)
    out: list[int] = []
    for _ in range(length):
        nxt = draw(logits[0], temperature, rng)
        out.append(nxt)
        logits, h = model.step(be.asarray(np.array([nxt], dtype=np.int32)), h)
    head = prime
    if vocab.level == "word" and head and out and not head[-1].isspace():
        head += " "
    return head + vocab.decode(out)


def next_token_log_probs(model, vocab: Vocab, text: str) -> np.ndarray:
    """Log-probabilities of the next token after each token of `text`, shape (N, V) float64
    on the host: row i is the model's distribution over the vocabulary after reading
    tokens 0..i (from a zero state), with ``vocab.itos[j]`` naming column j. Tokens not in
    the vocabulary are as in :func:`~rnn_gpu.lm.metrics.known_ids` (``<unk>``, or left out
    at character level).

    Example::

        from rnn_gpu.lm import load_checkpoint, next_token_log_probs
        ck = load_checkpoint("rnn-gpu-checkpoint.npz")
        lp = next_token_log_probs(ck.model, ck.vocab, "The quick brown fo")
        print(ck.vocab.itos[int(lp[-1].argmax())])  # the most likely next character
    """
    from .metrics import known_ids  # noqa: PLC0415

    if len(vocab) != model.config["input_size"]:
        raise DataError(
            f"vocabulary of {len(vocab)} tokens does not fit a model with input size "
            f"{model.config['input_size']}"
        )
    ids, _ = known_ids(vocab, text)
    if vocab.level == "word" and ids.size and ids[-1] == vocab.stoi[EOS] and not text.endswith("\n"):
        ids = ids[:-1]  # text on one line: what comes next on that line
    if ids.size == 0:
        raise UsageError("text holds no tokens of the model's vocabulary")
    lp = model.log_prob(model.backend.asarray(ids[:, None]))  # (N, 1, V)
    return np.asarray(to_numpy(lp)[:, 0], dtype=np.float64)
