"""Corpora for language modelling: loading, vocabularies, batching and chunking.

The layout follows PyTorch's word_language_model: a token stream of length N is cut into
``B`` contiguous streams, stored as the columns of an ``(N // B, B)`` array, and read in
chunks of ``bptt`` time steps, the hidden state carried from one chunk to the next
(truncated BPTT). Every function here works on host (NumPy) arrays; the trainer moves
each chunk to the model's backend.
"""
from __future__ import annotations

import collections
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError
from .checks import expect, is_int, is_real, one_of, positive_int

LEVELS = ("char", "word")
UNK = "<unk>"
EOS = "<eos>"

# Used only when the interpreter lacks ``pydoc_data`` (some minimal distributions strip
# it); a few paragraphs are enough for the default settings to run.
_FALLBACK_CORPUS = """\
A recurrent network reads a sequence one symbol at a time. At every step it mixes the
new input with a summary of everything it has read so far, its hidden state, and from
that state it predicts the next symbol. Training asks the network to make the observed
next symbol likely, and the gradient of that wish flows backwards through every step it
depended on: this is back propagation through time.

The hidden state is a vector of numbers. The input weights carry the current symbol into
it, the recurrent weights carry the previous state into it, and the output weights read a
prediction out of it. A squashing function such as the hyperbolic tangent keeps the state
bounded. Because the same weights are used at every step, their gradient is a sum over
steps, and the sum can be cut after a window of steps to save time and memory.

Long texts are cut into chunks. The state at the end of one chunk becomes the start of
the next, but the gradient stops at the boundary, so each update looks back at most one
chunk. Many streams are read side by side, one per column of a batch, so that a single
matrix product advances all of them together; on a graphics processor that is where the
speed comes from.

A language model is judged by its perplexity: the exponential of the average number of
nats it spends on each symbol of text it has not seen. A model that knows nothing about
an alphabet of sixty symbols has perplexity sixty; a good character model of English
prose reaches a perplexity near three or four. Watching the validation perplexity fall
is the simplest way to see that the network is learning something real about the text.

To sample from the model, feed it a short prime, then repeatedly draw the next symbol
from its predicted distribution and feed that symbol back in. A temperature below one
sharpens the distribution and makes the text more conservative; a temperature above one
flattens it and makes the text more surprising; a temperature of zero always takes the
most likely symbol.

Gradients of recurrent networks can grow without bound when the recurrent weights are
large, because the same matrix multiplies the error at every step back in time. Clipping
the norm of all gradients taken together keeps a single bad chunk from throwing the
weights far away, without changing the direction of the step. Gradients can also vanish,
shrinking at every step back, which is why a plain recurrent network remembers recent
symbols much better than distant ones.

The learning rate decides how far each step goes. Too large, and the loss jumps around
or explodes; too small, and training crawls. A common remedy watches the validation loss
after every pass over the data and lowers the rate when the loss stops falling, keeping
the best weights seen so far, and stops when lowering the rate no longer helps.

A checkpoint stores everything needed to pick a run up again: the weights, the state of
the optimizer, the position in the data, the hidden state carried between chunks and the
state of the random number generator. Written to a temporary file and renamed into place,
it is never left half written, so an interrupted run can always be resumed.
"""


# -------------------------------------------------------------------------------------
# Text


def read_text(path: str | Path, what: str = "data file") -> str:
    """The contents of a UTF-8 text file; DataError if missing, unreadable, empty or not UTF-8."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} not found: {p}")
    if p.is_dir():
        raise DataError(f"{what} is a directory, expected a text file: {p}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {what} {p}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what} {p} is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None
    if text.startswith("\ufeff"):  # a byte-order mark is not part of the text
        text = text[1:]
    if not text.strip():
        raise DataError(f"{what} {p} is empty")
    return text


def default_corpus() -> tuple[str, str]:
    """The built-in corpus: (text, description).

    It is the help text every CPython ships as ``pydoc_data.topics`` (about 0.45 MB of
    English prose and Python code), joined in sorted key order so that it is the same on
    every run of a given Python version.
    """
    try:
        from pydoc_data.topics import topics  # noqa: PLC0415
    except ImportError:
        return _FALLBACK_CORPUS, "built-in fallback text (pydoc_data is not installed)"
    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text, f"Python {platform.python_version()} documentation topics (pydoc_data.topics)"


def split_text(text: str, valid_fraction: float, level: str) -> tuple[str, str]:
    """Split off the last `valid_fraction` of `text` for validation.

    Word-level splits fall on a line boundary so that no line is cut in two.
    """
    expect(is_real(valid_fraction) and 0.0 < valid_fraction < 1.0, "valid_fraction",
           "a number in (0, 1)", valid_fraction)
    if level == "word":
        lines = text.splitlines(keepends=True)
        if len(lines) < 2:
            raise DataError("word-level validation split needs a text of at least two lines")
        n_valid = min(max(1, round(len(lines) * valid_fraction)), len(lines) - 1)
        return "".join(lines[:-n_valid]), "".join(lines[-n_valid:])
    cut = int(round(len(text) * (1.0 - valid_fraction)))
    cut = min(max(cut, 1), len(text) - 1)
    return text[:cut], text[cut:]


# -------------------------------------------------------------------------------------
# Vocabulary


def tokenize(text: str, level: str) -> list[str]:
    """Characters, or whitespace-separated words with ``<eos>`` closing every line."""
    one_of("level", level, LEVELS)
    if level == "char":
        return list(text)
    out: list[str] = []
    for line in text.splitlines():
        out.extend(line.split())
        out.append(EOS)
    return out


@dataclass
class Vocab:
    """Token <-> id mapping. ``itos[i]`` is the token with id ``i``."""

    itos: list[str]
    level: str = "char"
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        one_of("level", self.level, LEVELS)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise DataError("vocabulary has duplicate tokens")

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.level == other.level and self.itos == other.itos

    @property
    def unk_id(self) -> int | None:
        return self.stoi.get(UNK)

    @classmethod
    def build(cls, texts: list[str], level: str = "char", max_size: int | None = None) -> Vocab:
        """Build from `texts`.

        Characters: every character that occurs, in code-point order. Words: the most
        frequent words (ties in order of first appearance), capped at `max_size` entries
        including ``<unk>`` and ``<eos>``; ``<unk>`` stands for every other word.
        """
        if level == "char":
            chars = sorted(set().union(*(set(t) for t in texts)))
            return cls(chars, "char")
        one_of("level", level, LEVELS)
        if max_size is not None:
            expect(is_int(max_size) and max_size >= 3, "max_size", "an integer >= 3", max_size)
        counts: collections.Counter[str] = collections.Counter()
        for t in texts:
            counts.update(tokenize(t, "word"))
        counts.pop(EOS, None)
        counts.pop(UNK, None)
        words = [w for w, _ in counts.most_common()]
        if max_size is not None:
            words = words[: max_size - 2]
        return cls([EOS, UNK, *words], "word")

    def encode(self, text: str, *, what: str = "text") -> np.ndarray:
        """Token ids (int32) of `text`. Unknown words map to ``<unk>``; an unknown
        character is a DataError (character vocabularies have no ``<unk>``)."""
        toks = tokenize(text, self.level)
        unk = self.unk_id
        if unk is not None:
            return np.fromiter((self.stoi.get(t, unk) for t in toks), np.int32, len(toks))
        try:
            return np.fromiter((self.stoi[t] for t in toks), np.int32, len(toks))
        except KeyError as e:
            raise DataError(f"{what} holds {e.args[0]!r}, which is not in the vocabulary") from None

    def decode(self, ids) -> str:
        toks = [self.itos[int(i)] for i in np.asarray(ids).ravel()]
        if self.level == "char":
            return "".join(toks)
        out = []
        for t in toks:
            out.append("\n" if t == EOS else t + " ")
        return "".join(out)

    def to_json(self) -> dict:
        return {"level": self.level, "itos": list(self.itos)}

    @classmethod
    def from_json(cls, d: dict) -> Vocab:
        try:
            return cls(list(d["itos"]), d["level"])
        except (KeyError, TypeError) as e:
            raise DataError(f"malformed vocabulary record ({e})") from None

    def describe_difference(self, other: Vocab) -> str:
        """One line saying how `other` differs from this vocabulary."""
        if self.level != other.level:
            return f"level {self.level!r} vs {other.level!r}"
        if len(self) != len(other):
            return f"{len(self)} vs {len(other)} tokens"
        for i, (a, b) in enumerate(zip(self.itos, other.itos)):
            if a != b:
                return f"token {i} is {a!r} vs {b!r}"
        return "identical"


# -------------------------------------------------------------------------------------
# Corpus


@dataclass
class Corpus:
    """A tokenized corpus: vocabulary, training ids and validation ids (int32, host)."""

    vocab: Vocab
    train: np.ndarray  # (N_train,)
    valid: np.ndarray  # (N_valid,)
    source: str  # where the text came from, for logs and checkpoints


def load_corpus(
    data: str | Path | None = None,
    *,
    valid: str | Path | None = None,
    valid_fraction: float = 0.1,
    level: str = "char",
    vocab_size: int | None = 10000,
    vocab: Vocab | None = None,
) -> Corpus:
    """Read and tokenize a corpus.

    `data` is a UTF-8 text file, or None for the built-in corpus (:func:`default_corpus`).
    Validation text comes from `valid` when given, else from the last `valid_fraction` of
    the data. With `vocab` given (on resume) that vocabulary is used as it is, and a
    DataError says if the data does not fit it; otherwise one is built (characters: from
    training and validation text; words: from training text, capped at `vocab_size`).
    """
    one_of("level", level, LEVELS)
    if data is None:
        text, source = default_corpus()
    else:
        text, source = read_text(data), str(data)
    if valid is not None:
        train_text, valid_text = text, read_text(valid, "validation file")
    else:
        train_text, valid_text = split_text(text, valid_fraction, level)
    if vocab is None:
        if level == "char":
            vocab = Vocab.build([train_text, valid_text], "char")
        else:
            vocab = Vocab.build([train_text], "word", max_size=vocab_size)
    elif vocab.level != level:
        raise DataError(f"vocabulary mismatch: the checkpoint is {vocab.level}-level, not {level}")
    train_ids = vocab.encode(train_text, what="training text")
    valid_ids = vocab.encode(valid_text, what="validation text")
    return Corpus(vocab, train_ids, valid_ids, source)


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Cut a stream of N ids into `batch_size` contiguous streams, one per column.

    Returns an ``(N // batch_size, batch_size)`` int32 array (PyTorch's layout); the last
    ``N % batch_size`` ids are dropped.
    """
    positive_int("batch_size", batch_size)
    ids = np.asarray(ids, dtype=np.int32)
    n = ids.shape[0] // batch_size
    return np.ascontiguousarray(ids[: n * batch_size].reshape(batch_size, n).T)


def n_chunks(n_rows: int, bptt: int) -> int:
    """How many chunks :func:`iter_chunks` yields for a batchified array of `n_rows` rows."""
    return max(0, -(-(n_rows - 1) // bptt))


def get_chunk(source: np.ndarray, i: int, bptt: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``source[i:i+T]`` and targets ``source[i+1:i+1+T]``, each ``(T, B)``, where
    ``T = min(bptt, rows - 1 - i)``."""
    t = min(bptt, source.shape[0] - 1 - i)
    return source[i : i + t], source[i + 1 : i + 1 + t]


def iter_chunks(
    source: np.ndarray, bptt: int, start: int = 0
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(k, x, y)`` for chunk k = `start`, `start` + 1, ... of `source` (rows, B)."""
    for k in range(start, n_chunks(source.shape[0], bptt)):
        x, y = get_chunk(source, k * bptt, bptt)
        yield k, x, y


def check_trainable(n_tokens: int, batch_size: int, bptt: int, what: str = "training text",
                    advice: str = "smaller batch_size / bptt") -> None:
    """DataError unless `n_tokens` fill at least one batch of one full chunk; the message
    ends "use a larger text or <advice>"."""
    need = batch_size * (bptt + 1)
    if n_tokens < need:
        raise DataError(
            f"{what} is too small: {n_tokens} tokens, but one batch of one chunk needs "
            f"batch_size * (bptt + 1) = {batch_size} * ({bptt} + 1) = {need}; "
            f"use a larger text or {advice}"
        )


def corpus_summary(c: Corpus) -> str:
    return (
        f"{c.source}: {len(c.vocab)} {c.vocab.level} tokens in the vocabulary, "
        f"{len(c.train):,} training and {len(c.valid):,} validation tokens"
    )
