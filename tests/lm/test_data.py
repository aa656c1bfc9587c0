"""Corpus loading, vocabularies, batching and chunking (rnn_gpu.lm.data)."""
from __future__ import annotations

import numpy as np
import pytest

from rnn_gpu.lm.data import (
    EOS, UNK, Vocab, batchify, check_trainable, default_corpus, get_chunk, iter_chunks,
    load_corpus, n_chunks, read_text, split_text, tokenize,
)
from rnn_gpu.errors import DataError, UsageError


def test_read_text_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8.*byte 3"):
        read_text(tmp_path / "latin1.txt")
    with pytest.raises(DataError, match="directory"):
        read_text(tmp_path)


def test_read_text_strips_bom(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert read_text(tmp_path / "bom.txt") == "hello"


def test_default_corpus_is_deterministic_and_large():
    a, desc = default_corpus()
    b, _ = default_corpus()
    assert a == b
    assert len(a) > 100_000
    assert "pydoc_data" in desc


def test_char_vocab_round_trip():
    v = Vocab.build(["hello world\n"], "char")
    assert v.itos == sorted(set("hello world\n"))
    ids = v.encode("hello")
    assert ids.dtype == np.int32
    assert v.decode(ids) == "hello"
    with pytest.raises(DataError, match="'z'"):
        v.encode("zebra")
    assert Vocab.from_json(v.to_json()) == v


def test_word_vocab_cap_unk_and_eos():
    text = "a a a b b c\nd a b\n"
    assert tokenize(text, "word") == ["a", "a", "a", "b", "b", "c", EOS, "d", "a", "b", EOS]
    v = Vocab.build([text], "word", max_size=4)
    assert v.itos == [EOS, UNK, "a", "b"]  # most frequent first
    ids = v.encode("a c\n")
    assert v.decode(ids) == f"a {UNK} \n"
    with pytest.raises(UsageError):
        Vocab.build([text], "word", max_size=2)


def test_split_text_char_and_word():
    tr, va = split_text("abcdefghij", 0.2, "char")
    assert (tr, va) == ("abcdefgh", "ij")
    text = "".join(f"line {i}\n" for i in range(10))
    tr, va = split_text(text, 0.3, "word")
    assert tr + va == text and va == "line 7\nline 8\nline 9\n"
    with pytest.raises(UsageError):
        split_text(text, 1.5, "char")


def test_batchify_column_layout():
    data = batchify(np.arange(11), 2)  # 11 ids -> 2 streams of 5, the last id dropped
    assert data.shape == (5, 2)
    np.testing.assert_array_equal(data[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(data[:, 1], [5, 6, 7, 8, 9])
    assert data.flags.c_contiguous


def test_chunks_cover_the_stream_with_shifted_targets():
    data = batchify(np.arange(40), 2)  # (20, 2)
    chunks = list(iter_chunks(data, 6))
    assert len(chunks) == n_chunks(20, 6) == 4  # 19 inputs in chunks of 6, 6, 6, 1
    xs = np.concatenate([x for _, x, _ in chunks])
    ys = np.concatenate([y for _, _, y in chunks])
    np.testing.assert_array_equal(xs, data[:-1])
    np.testing.assert_array_equal(ys, data[1:])
    k, x, y = list(iter_chunks(data, 6, start=3))[0]
    assert k == 3 and x.shape == (1, 2)
    x, y = get_chunk(data, 6, 6)
    np.testing.assert_array_equal(x[:, 0], np.arange(6, 12))


def test_check_trainable():
    check_trainable(2 * 9, 2, 8)
    with pytest.raises(DataError, match="too small"):
        check_trainable(2 * 9 - 1, 2, 8)


def test_load_corpus_files(tmp_path):
    (tmp_path / "t.txt").write_text("abcabcabc\n" * 10)
    (tmp_path / "v.txt").write_text("cab\n")
    c = load_corpus(tmp_path / "t.txt", valid=tmp_path / "v.txt")
    assert len(c.train) == 100 and len(c.valid) == 4
    c = load_corpus(tmp_path / "t.txt", valid_fraction=0.1)
    assert len(c.train) + len(c.valid) == 100
    c = load_corpus(tmp_path / "t.txt", level="word", valid_fraction=0.2)
    assert c.vocab.itos == [EOS, UNK, "abcabcabc"]
    with pytest.raises(UsageError):
        load_corpus(tmp_path / "t.txt", level="byte")
