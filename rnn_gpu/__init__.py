"""rnn-gpu: Elman recurrent networks trained with exact Backpropagation Through Time.

The same code runs on an NVIDIA GPU through CuPy and on any CPU through NumPy::

    import rnn_gpu
    m = rnn_gpu.RNN(65, 256, 65)                 # input, hidden, output sizes
    loss, grads, h_last = m.loss_and_grads(x, y) # x, y: token ids of shape (T, B)
"""
from __future__ import annotations

from .version import __version__  # noqa: E402

from .backend import BACKENDS, Backend, get_backend, to_numpy  # noqa: E402
from .gradcheck import gradcheck  # noqa: E402
from .model import RNN  # noqa: E402

__all__ = ["RNN", "gradcheck", "get_backend", "to_numpy", "Backend", "BACKENDS", "__version__"]
