"""The benchmark peers compute the model's loss and gradients (checked against the reference)."""
from __future__ import annotations

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu.bench import peers

from ..helpers import randomize, rel_err

SIZES = (7, 5, 6)  # I, H, O: repeated token ids at T * B = 12


def _problem(T=4, B=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, SIZES[0], size=(T, B))
    y = rng.integers(0, SIZES[2], size=(T, B))
    return x, y


@pytest.mark.parametrize("truncate", [None, 100, 0, 2])
def test_seed_loop_matches_reference(truncate):
    m = randomize(rnn_gpu.RNN(*SIZES, backend="numpy", dtype="float64"), scale=0.5)
    x, y = _problem()
    rloss, rgrads, _ = m.reference_loss_and_grads(x, y, truncate=truncate)
    loss, grads = peers.SeedLoop(m.params, dtype="float64", truncate=truncate).loss_and_grads(x, y)
    assert loss == pytest.approx(rloss, rel=1e-12)
    for k in rnn_gpu.model.PARAM_NAMES:
        assert grads[k].shape == rgrads[k].shape, k
        assert rel_err(grads[k], rgrads[k]) < 1e-12, k


def test_seed_loop_float32():
    m = randomize(rnn_gpu.RNN(*SIZES, backend="numpy", dtype="float32"), scale=0.5)
    x, y = _problem()
    rloss, rgrads, _ = m.reference_loss_and_grads(x, y)
    loss, grads = peers.SeedLoop(m.params, dtype="float32").loss_and_grads(x, y)
    assert loss == pytest.approx(rloss, rel=1e-5)
    for k in rnn_gpu.model.PARAM_NAMES:
        assert grads[k].dtype == np.float32
        assert rel_err(grads[k], rgrads[k]) < 1e-5, k


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_torch_peer_matches_reference(dtype, tol):
    pytest.importorskip("torch")
    m = randomize(rnn_gpu.RNN(*SIZES, backend="numpy", dtype=dtype), scale=0.5)
    x, y = _problem()
    rloss, rgrads, _ = m.reference_loss_and_grads(x, y)
    peer = peers.TorchRNN(m.params, device="cpu", dtype=dtype)
    for _ in range(2):  # gradients are reset between calls, not accumulated
        loss, grads = peer.loss_and_grads(x, y)
    assert loss == pytest.approx(rloss, rel=tol)
    for k in rnn_gpu.model.PARAM_NAMES:
        assert grads[k].shape == rgrads[k].shape, k
        assert rel_err(grads[k], rgrads[k]) < tol, k


def test_torch_missing_is_named(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *a, **kw):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    why = peers.torch_unavailable_reason()
    assert why is not None and "PyTorch does not import" in why
    with pytest.raises(RuntimeError, match="PyTorch"):
        peers.TorchRNN({}, device="cpu")


def test_old_module_name_re_exports_the_peers():
    from rnn_gpu import peers as old

    assert old.SeedLoop is peers.SeedLoop and old.TorchRNN is peers.TorchRNN
    assert old.torch_unavailable_reason is peers.torch_unavailable_reason
