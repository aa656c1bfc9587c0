"""Peers that `rnn-gpu bench` times the training step against.

* :class:`SeedLoop`: seed 001's per-sequence NumPy implementation (``forward_propagation``
  and ``bptt``, one sequence at a time, one time step at a time), made runnable: biases
  added, the loss computed from the same forward pass, and a loop over the B sequences.
* :class:`TorchRNN`: the standard PyTorch model, ``Embedding + nn.RNN(tanh) + Linear`` with
  cross-entropy summed over all tokens, forward and backward, on the CPU or on CUDA (where
  nn.RNN runs cuDNN).

Both take the parameters of an :class:`rnn_gpu.RNN` (U (H, I), W (H, H), V (O, H), b (H,),
c (O,)) so they compute the same loss and the same gradients as the model, which the bench
checks before it times anything. Token inputs and softmax output only, tanh hidden units.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_numpy


def _softmax(z: np.ndarray) -> np.ndarray:
    """Seed 001's softmax of one vector (O,)."""
    e = np.exp(z - np.max(z))
    return e / np.sum(e)


class SeedLoop:
    """Seed 001's RNN, one sequence at a time: forward_propagation + bptt per sequence.

    The seed's algorithm, kept as written: for each output t the error is carried back
    through at most `truncate` + 1 steps with one matrix-vector product per step, so full
    BPTT costs O(T^2) steps per sequence. Additions over the seed, all needed to compute
    the model's exact loss and gradients: the biases b and c and their gradients, `dtype`
    (the seed uses float64), the loss taken from the same forward pass, and the sum over
    the B sequences of a batch. truncate=None is full BPTT.
    """

    name = "seed-loop"

    def __init__(self, params: dict, dtype: str = "float64", truncate: int | None = None):
        self.dtype = np.dtype(dtype)
        p = {k: np.array(np.asarray(v), dtype=self.dtype) for k, v in _host(params).items()}
        self.U, self.W, self.V, self.b, self.c = p["U"], p["W"], p["V"], p["b"], p["c"]
        self.hidden_dim = self.W.shape[0]
        self.bptt_truncate = truncate

    def forward_propagation(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x: ids (T,) -> outputs o (T, O) (softmax probabilities), states s (T+1, H).

        s[-1] is the initial (zero) state, so s[t-1] at t = 0 reads it, as in the seed.
        """
        T = len(x)
        s = np.zeros((T + 1, self.hidden_dim), dtype=self.dtype)
        o = np.zeros((T, self.V.shape[0]), dtype=self.dtype)
        for t in np.arange(T):
            s[t] = np.tanh(self.U[:, x[t]] + self.W.dot(s[t - 1]) + self.b)
            o[t] = _softmax(self.V.dot(s[t]) + self.c)
        return o, s

    def bptt(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """One sequence: loss and [dLdU, dLdV, dLdW, dLdb, dLdc], the seed's loops."""
        T = len(y)
        k = T if self.bptt_truncate is None else self.bptt_truncate
        o, s = self.forward_propagation(x)
        loss = -float(np.sum(np.log(o[np.arange(T), y])))
        dLdU = np.zeros(self.U.shape, dtype=self.dtype)
        dLdV = np.zeros(self.V.shape, dtype=self.dtype)
        dLdW = np.zeros(self.W.shape, dtype=self.dtype)
        dLdb = np.zeros(self.b.shape, dtype=self.dtype)
        dLdc = np.zeros(self.c.shape, dtype=self.dtype)
        delta_o = o
        delta_o[np.arange(len(y)), y] -= 1.0
        for t in np.arange(T)[::-1]:  # for each output backwards
            dLdV += np.outer(delta_o[t], s[t].T)
            dLdc += delta_o[t]
            delta_t = self.V.T.dot(delta_o[t]) * (1 - (s[t] ** 2))  # dL_t/dz_t
            for bptt_step in np.arange(max(0, t - k), t + 1)[::-1]:
                dLdW += np.outer(delta_t, s[bptt_step - 1])
                dLdU[:, x[bptt_step]] += delta_t
                dLdb += delta_t
                delta_t = self.W.T.dot(delta_t) * (1 - s[bptt_step - 1] ** 2)  # dL_t/dz_{j-1}
        return loss, [dLdU, dLdV, dLdW, dLdb, dLdc]

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
        """x, y: ids (T, B); the batch is B independent calls of `bptt`, summed."""
        x, y = np.asarray(x), np.asarray(y)
        loss = 0.0
        total = None
        for i in range(x.shape[1]):
            l_i, g = self.bptt(x[:, i], y[:, i])
            loss += l_i
            if total is None:
                total = g
            else:
                for acc, gi in zip(total, g):
                    acc += gi
        return loss, dict(zip(("U", "V", "W", "b", "c"), total))


# -------------------------------------------------------------------------------------


def torch_unavailable_reason(device: str = "cpu") -> str | None:
    """Why the PyTorch peer cannot run on `device` ("cpu" or "cuda"), or None."""
    try:
        import torch  # noqa: PLC0415 - optional peer
    except Exception as e:
        return f"PyTorch does not import ({type(e).__name__}: {e})"
    if device == "cuda" and not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA device"
    return None


class TorchRNN:
    """Embedding(I, H) + nn.RNN(H, H, tanh) + Linear(H, O), cross-entropy summed.

    The embedding holds U^T; nn.RNN computes tanh(W_ih e + b_ih + W_hh h + b_hh), so W_ih
    is set to the identity, b_ih to b, W_hh to W and b_hh to zero: the same function as the
    model, but with the extra input GEMM and its gradient that the standard PyTorch model
    does. On CUDA, nn.RNN runs cuDNN's RNN kernels.
    """

    name = "torch"

    def __init__(self, params: dict, device: str = "cpu", dtype: str = "float32"):
        why = torch_unavailable_reason(device)
        if why is not None:
            raise RuntimeError(why)
        import torch  # noqa: PLC0415

        self.torch = torch
        self.device = torch.device(device)
        tdtype = getattr(torch, np.dtype(dtype).name)
        p = _host(params)
        H, I = p["U"].shape
        O = p["V"].shape[0]
        kw = {"device": self.device, "dtype": tdtype}
        self.embed = torch.nn.Embedding(I, H, **kw)
        self.rnn = torch.nn.RNN(H, H, nonlinearity="tanh", **kw)
        self.out = torch.nn.Linear(H, O, **kw)

        def t(a):
            return torch.as_tensor(np.ascontiguousarray(a), **kw)

        with torch.no_grad():
            self.embed.weight.copy_(t(p["U"].T))
            self.rnn.weight_ih_l0.copy_(torch.eye(H, **kw))
            self.rnn.bias_ih_l0.copy_(t(p["b"]))
            self.rnn.weight_hh_l0.copy_(t(p["W"]))
            self.rnn.bias_hh_l0.zero_()
            self.out.weight.copy_(t(p["V"]))
            self.out.bias.copy_(t(p["c"]))
        self.parameters = [*self.embed.parameters(), *self.rnn.parameters(),
                           *self.out.parameters()]
        self._xy: tuple[Any, Any] | None = None
        self._xy_src: tuple[int, int] | None = None

    def _inputs(self, x, y):
        key = (id(x), id(y))
        if self._xy_src != key:  # move the batch once, not in every timed call
            torch = self.torch
            self._xy = (torch.as_tensor(np.asarray(x), dtype=torch.long, device=self.device),
                        torch.as_tensor(np.asarray(y), dtype=torch.long, device=self.device))
            self._xy_src = key
        return self._xy

    def step(self, x, y):
        """Forward + backward; gradients land in .grad. Returns the loss tensor (no sync)."""
        xt, yt = self._inputs(x, y)
        for q in self.parameters:
            q.grad = None
        h, _ = self.rnn(self.embed(xt))  # (T, B, H)
        logits = self.out(h)  # (T, B, O)
        loss = self.torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), yt.reshape(-1), reduction="sum")
        loss.backward()
        return loss

    def loss_and_grads(self, x, y) -> tuple[float, dict]:
        """Loss and gradients as NumPy arrays in the model's layout (for validation)."""
        loss = self.step(x, y)

        def n(q):
            return q.grad.detach().cpu().numpy()

        grads = {"U": n(self.embed.weight).T, "W": n(self.rnn.weight_hh_l0),
                 "V": n(self.out.weight), "b": n(self.rnn.bias_ih_l0), "c": n(self.out.bias)}
        return float(loss.item()), grads


def _host(params: dict) -> dict:
    """Parameters as NumPy arrays (from either backend)."""
    return {k: to_numpy(v) for k, v in params.items()}
