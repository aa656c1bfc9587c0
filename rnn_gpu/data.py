"""Kept for one release; use :mod:`rnn_gpu.lm.data`."""
from __future__ import annotations

from .lm.data import (  # noqa: F401 - re-exported
    EOS, LEVELS, UNK, Corpus, Vocab, batchify, check_trainable, corpus_summary,
    default_corpus, get_chunk, iter_chunks, load_corpus, n_chunks, read_text,
    split_text, tokenize,
)
