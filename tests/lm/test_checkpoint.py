"""Checkpoints: round trip, atomic writes, and every way a file can be bad (rnn_gpu.lm.checkpoint)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu.lm import checkpoint as ckpt
from rnn_gpu.lm.checkpoint import load_checkpoint, save_checkpoint
from rnn_gpu.lm.data import Vocab
from rnn_gpu.errors import CheckpointError
from rnn_gpu.lm.optim import Adam


def _model_and_vocab(seed=3):
    vocab = Vocab.build(["abcdefg\n"], "char")
    m = rnn_gpu.RNN(len(vocab), 6, len(vocab), backend="numpy", seed=seed)
    return m, vocab


def _x():
    return np.random.default_rng(0).integers(0, 8, size=(5, 2))


def test_round_trip_gives_identical_outputs(tmp_path):
    m, vocab = _model_and_vocab()
    opt = Adam(m.params, 1e-2)
    loss, grads, _ = m.loss_and_grads(_x(), _x())
    opt.step(grads)
    path = save_checkpoint(tmp_path / "m.npz", m, vocab=vocab, optimizer=opt,
                           train_config={"hidden": 6}, train_state={"step": 1},
                           arrays={"hidden": np.ones((2, 6), np.float32)})
    ck = load_checkpoint(path, backend="numpy")
    assert ck.vocab == vocab
    assert ck.model_config == m.config
    assert ck.train_state == {"step": 1} and ck.train_config == {"hidden": 6}
    for k, v in m.params.items():
        np.testing.assert_array_equal(rnn_gpu.to_numpy(ck.model.params[k]), v)
        assert ck.model.params[k].dtype == v.dtype
    a, _ = m.forward(_x())
    b, _ = ck.model.forward(_x())
    np.testing.assert_array_equal(a, b)
    assert set(ck.optim) == {f"{s}/{p}" for s in ("exp_avg", "exp_avg_sq") for p in m.params}
    np.testing.assert_array_equal(ck.state["hidden"], np.ones((2, 6)))


def test_file_is_a_plain_npz_without_pickles(tmp_path):
    m, vocab = _model_and_vocab()
    path = save_checkpoint(tmp_path / "m.npz", m, vocab=vocab)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        assert meta["format_version"] == 1 == ckpt.format_version(m.config)  # as ever
        assert z["param/W"].shape == (6, 6)


@pytest.mark.parametrize("kw", [{"num_layers": 2}, {"bidirectional": True},
                                {"num_layers": 2, "bidirectional": True},
                                {"output": "adaptive", "cutoffs": (3,)}])
def test_stacks_and_heads_are_format_2_and_round_trip(tmp_path, kw):
    """Models a version-1 reader would build wrongly are written as version 2, with every
    parameter, and load back as they were."""
    import rnn_gpu

    vocab = Vocab.build(["abcdefgh"])
    m = rnn_gpu.RNN(len(vocab), 5, len(vocab), backend="numpy", seed=2, **kw)
    path = save_checkpoint(tmp_path / "s.npz", m, vocab=vocab)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        assert meta["format_version"] == 2 and set(ckpt.READABLE) >= {1, 2}
        assert {f"param/{k}" for k in m.params} <= set(z.files)
    back = load_checkpoint(path, backend="numpy").model
    assert back.config == m.config
    for k, v in m.params.items():
        np.testing.assert_array_equal(np.asarray(back.params[k]), np.asarray(v), err_msg=k)


def test_atomic_write_survives_a_crash_mid_write(tmp_path, monkeypatch):
    m, vocab = _model_and_vocab()
    path = save_checkpoint(tmp_path / "m.npz", m, vocab=vocab)
    before = path.read_bytes()

    def crash(f, arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("simulated crash: disk full")

    monkeypatch.setattr(ckpt, "_write_arrays", crash)
    m2, _ = _model_and_vocab(seed=9)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, m2, vocab=vocab)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no temporary left
    monkeypatch.undo()
    np.testing.assert_array_equal(load_checkpoint(path).params["W"], m.params["W"])


def test_interrupt_mid_write_also_cleans_up(tmp_path, monkeypatch):
    m, vocab = _model_and_vocab()

    def interrupted(f, arrays):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_write_arrays", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "new.npz", m, vocab=vocab)
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint(tmp_path):
    m, vocab = _model_and_vocab()
    path = save_checkpoint(tmp_path / "m.npz", m, vocab=vocab)
    data = path.read_bytes()
    for n in (len(data) // 2, 100, 0):
        path.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(path)


def _rewrite_meta(path, **changes):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta.update(changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


def test_incompatible_version(tmp_path):
    m, vocab = _model_and_vocab()
    path = save_checkpoint(tmp_path / "m.npz", m, vocab=vocab)
    _rewrite_meta(path, format_version=99)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not an rnn-gpu checkpoint"):
        load_checkpoint(tmp_path / "other.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="single .npy"):
        load_checkpoint(tmp_path / "single.npy")


def test_missing_or_misshapen_parameter(tmp_path):
    m, vocab = _model_and_vocab()
    path = save_checkpoint(tmp_path / "m.npz", m, vocab=vocab)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["param/W"] = np.zeros((2, 2), np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CheckpointError, match="parameter W has shape"):
        load_checkpoint(tmp_path / "bad.npz")
    del arrays["param/W"]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CheckpointError, match="lacks parameter 'W'"):
        load_checkpoint(tmp_path / "bad.npz")


def test_vocabulary_must_match_model(tmp_path):
    m, _ = _model_and_vocab()
    with pytest.raises(CheckpointError, match="vocabulary of 3 tokens"):
        save_checkpoint(tmp_path / "m.npz", m, vocab=Vocab.build(["abc"]))
        load_checkpoint(tmp_path / "m.npz")


def test_missing_directory_is_reported(tmp_path):
    m, vocab = _model_and_vocab()
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "m.npz", m, vocab=vocab)


@pytest.mark.gpu
def test_gpu_checkpoint_loads_on_cpu(tmp_path):
    if not rnn_gpu.backend.gpu_available():
        pytest.skip(f"no usable GPU: {rnn_gpu.backend.cupy_unavailable_reason()}")
    vocab = Vocab.build(["abcdefg\n"], "char")
    g = rnn_gpu.RNN(len(vocab), 6, len(vocab), backend="cupy", seed=1)
    path = save_checkpoint(tmp_path / "g.npz", g, vocab=vocab)
    ck = load_checkpoint(path, backend="numpy")
    a, _ = g.forward(_x())
    b, _ = ck.model.forward(_x())
    np.testing.assert_allclose(rnn_gpu.to_numpy(a), b, rtol=1e-5, atol=1e-6)
