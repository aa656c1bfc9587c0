"""The public model: an RNN whose loss and exact BPTT gradients run on either backend.

    h_t = f(U x_t + W h_{t-1} + b)        f: tanh (default), sigmoid or relu
                                          (cell="elman"; "gru" and "lstm" are
                                          torch.nn.GRU's and torch.nn.LSTM's cells)
    o_t = g(V h_t + c)                    g + loss: softmax + cross-entropy (default),
                                          sigmoid + binary cross-entropy, linear + 1/2 squared error
    L   = sum over all steps and sequences of L_t

or, with ``output="adaptive"``, the exact adaptive softmax over ids sorted by frequency
(:mod:`rnn_gpu.heads.adaptive`, PyTorch's ``AdaptiveLogSoftmaxWithLoss`` parametrization).

Stacked (``num_layers``) and bidirectional: layer l > 0 reads [forward state, reverse
state] of layer l-1 and the output layer reads that of the top layer (PyTorch's wiring);
a reverse direction runs from step T-1 down to 0.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import reference
from .backend import Backend, get_backend, is_cupy_array, to_numpy
from .engine import Engine
from .heads.adaptive import DEFAULT_DIV_VALUE, check_adaptive
from .reference import ACTIVATIONS, CELLS, OUTPUTS, PARAM_NAMES, param_shapes

MODEL_OUTPUTS = (*OUTPUTS, "adaptive")
_ID_TARGETS = ("softmax", "adaptive")  # outputs whose targets are class ids

DTYPES = ("float32", "float64")
__all__ = ["RNN", "DTYPES", "PARAM_NAMES", "CELLS"]


def _check_positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return int(v)


def _check_choice(name: str, v, choices) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {v!r}")
    return v


class _Checks:
    """The value checks of one call. A host (NumPy) array is checked at once, before it
    is uploaded; a device array's checks are gathered and read back together by
    :meth:`flush`: one device-to-host read for the whole call."""

    def __init__(self, xp, on_device: Callable[[Any], bool]):
        self.xp, self.on_device = xp, on_device
        self._conds: list = []  # device booleans, read at flush
        self._messages: list = []  # (index, message, array) for each requirement
        self._read = None

    def _add(self, a, cond):
        if self.on_device(a):
            self._conds.append(cond(self.xp, a))
            return len(self._conds) - 1, None
        return None, bool(cond(np, np.asarray(a)))

    def require(self, a, cond, message) -> None:
        """cond(module, a) must hold: a ValueError with `message` (a string, or a function
        of the array) otherwise."""
        i, ok = self._add(a, cond)
        if i is None:
            if not ok:
                raise ValueError(message(np.asarray(a)) if callable(message) else message)
        else:
            self._messages.append((i, message, a))

    def flag(self, a, cond) -> Callable[[], bool]:
        """cond(module, a), to be read after :meth:`flush` (a function returning it)."""
        i, value = self._add(a, cond)
        return (lambda: value) if i is None else (lambda: bool(self._read[i]))

    def flush(self) -> None:
        if not self._conds:
            return
        flags = self.xp.stack([self.xp.asarray(c, dtype=bool).reshape(()) for c in self._conds])
        self._read = flags.get() if hasattr(flags, "get") else np.asarray(flags)  # one read
        for i, message, a in self._messages:
            if not self._read[i]:
                raise ValueError(message(a) if callable(message) else message)


class RNN:
    """An RNN with parameters U (G*H, I), W (G*H, H), V (O, D*H), b (G*H,), c (O,): G = 1
    for the Elman cell, 3 for a GRU (which also has "bh" (3H,), PyTorch's bias_hh), 4 for
    an LSTM, the gates' rows in PyTorch's order (GRU [r, z, n], LSTM [i, f, g, o]).

    With ``num_layers`` > 1, layer l >= 1 has "U{l}" (H, D*H), "W{l}" (H, H), "b{l}" (H,);
    with ``bidirectional``, every layer's reverse direction has the same names plus
    "_reverse" (D = 2). Parameters start uniform in +-1/sqrt(H) (biases zero),
    reproducibly from `seed`, and live on the chosen backend ("auto", "numpy" or "cupy")
    in `dtype`.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *,
                 cell: str = "elman", num_layers: int = 1, bidirectional: bool = False,
                 backend: str | Backend = "auto", dtype: str = "float32", seed: int = 0,
                 hidden_activation: str = "tanh", output: str = "softmax",
                 cutoffs=None, div_value: float = DEFAULT_DIV_VALUE):
        I = _check_positive_int("input_size", input_size)
        H = _check_positive_int("hidden_size", hidden_size)
        O = _check_positive_int("output_size", output_size)
        num_layers = _check_positive_int("num_layers", num_layers)
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise ValueError(f"bidirectional: expected True or False, got {bidirectional!r}")
        bidirectional = bool(bidirectional)
        try:
            dtype_name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        except TypeError:
            dtype_name = repr(dtype)
        _check_choice("dtype", dtype_name, DTYPES)
        _check_choice("hidden_activation", hidden_activation, ACTIVATIONS)
        _check_choice("cell", cell, CELLS)
        if cell != "elman" and hidden_activation != "tanh":
            raise ValueError(f"hidden_activation: a {cell} cell has its own gate activations "
                             f"(sigmoid and tanh, as torch.nn.{cell.upper()}); leave "
                             f"hidden_activation at 'tanh', got {hidden_activation!r}")
        _check_choice("output", output, MODEL_OUTPUTS)
        # the output layer reads F = D*H features: the adaptive head's sizes follow them
        self.adaptive = check_adaptive(output, cutoffs, div_value, O, (1 + bidirectional) * H)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
        self.backend = get_backend(backend)
        self.dtype = np.dtype(dtype_name)
        self.input_size, self.hidden_size, self.output_size = I, H, O
        self.hidden_activation = hidden_activation
        self.output = output
        self.seed = int(seed)
        self.num_layers, self.bidirectional = num_layers, bidirectional
        self.cell = cell

        rng = np.random.default_rng(self.seed)
        r = 1.0 / np.sqrt(H)
        shapes = param_shapes(I, H, O, num_layers, bidirectional, cell)
        if self.adaptive is None:
            host = {k: rng.uniform(-r, r, shapes[k]) for k in ("U", "W", "V")}  # this order:
            host.update(b=np.zeros(shapes["b"]), c=np.zeros(O))  # the init stream so far
        else:  # U, W, then the head's parameters at torch.nn.Linear's scale
            host = {k: rng.uniform(-r, r, shapes[k]) for k in ("U", "W")}
            host["b"] = np.zeros(shapes["b"])
            host.update(self.adaptive.init_params(rng))
        for k, shape in shapes.items():  # then the other layers and directions, in order
            if k not in host:
                host[k] = np.zeros(shape) if k[0] == "b" else rng.uniform(-r, r, shape)
        if cell == "lstm":  # forget gates start open: bias 1 (Jozefowicz et al., 2015)
            for k, v in host.items():
                if k[0] == "b":
                    v[H:2 * H] = 1.0
        self.params: dict[str, Any] = {
            k: self.backend.asarray(np.ascontiguousarray(v, dtype=self.dtype))
            for k, v in host.items()
        }
        # Layer 0's U is stored as U^T (I, H) in C order and exposed as its (H, I) view:
        # the token gather then reads whole rows and never copies a transpose.
        for k in ("U", "U_reverse") if bidirectional else ("U",):
            self.params[k] = self.backend.asarray(
                np.ascontiguousarray(host[k].T, dtype=self.dtype)).T
        self._engine = Engine(self.backend, self.dtype, (I, H, O), hidden_activation, output,
                              num_layers, bidirectional, self.adaptive, cell)

    # ---------------------------------------------------------------------------------

    @property
    def config(self) -> dict:
        """The constructor arguments (without the backend), enough to rebuild the model.
        An adaptive model's also has ``cutoffs`` (a list) and ``div_value``."""
        cfg = {
            "input_size": self.input_size, "hidden_size": self.hidden_size,
            "output_size": self.output_size, "dtype": self.dtype.name,
            "hidden_activation": self.hidden_activation, "output": self.output,
            "seed": self.seed, "cell": self.cell, "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
        }
        if self.adaptive is not None:
            cfg.update(cutoffs=list(self.adaptive.cutoffs), div_value=self.adaptive.div_value)
        return cfg

    @property
    def cutoffs(self) -> tuple[int, ...] | None:
        return None if self.adaptive is None else self.adaptive.cutoffs

    @classmethod
    def from_config(cls, config: dict, *, backend: str | Backend = "auto",
                    params: dict | None = None) -> RNN:
        """A model built from :attr:`config` (a checkpoint's model record), optionally
        with `params` (NumPy or backend arrays) copied in. Missing optional keys take the
        constructor's defaults."""
        c = dict(config)
        try:
            sizes = c.pop("input_size"), c.pop("hidden_size"), c.pop("output_size")
        except KeyError as e:
            raise ValueError(f"config: missing {e.args[0]!r}") from None
        known = {"dtype", "hidden_activation", "output", "seed", "num_layers", "bidirectional",
                 "cutoffs", "div_value", "cell"}
        m = cls(*sizes, backend=backend, **{k: v for k, v in c.items() if k in known})
        if params is not None:
            m.load_params(params)
        return m

    @property
    def param_names(self) -> tuple[str, ...]:
        """The names of this model's parameters (see :func:`rnn_gpu.reference.param_shapes`,
        and the adaptive head's)."""
        return tuple(self.param_shapes)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each parameter's shape."""
        return RNN.config_param_shapes(self.config)

    @staticmethod
    def config_param_shapes(config: dict) -> dict[str, tuple[int, ...]]:
        """The parameter names and shapes a model of `config` (:attr:`config`) has, without
        building it: the stack's, then for output="adaptive" the head's V, c and tails."""
        try:
            I, H, O = (int(config[k]) for k in ("input_size", "hidden_size", "output_size"))
        except KeyError as e:
            raise ValueError(f"config: missing {e.args[0]!r}") from None
        layers, bi = int(config.get("num_layers", 1)), bool(config.get("bidirectional", False))
        cell = _check_choice("cell", config.get("cell", "elman"), CELLS)
        shapes = param_shapes(I, H, O, layers, bi, cell)
        spec = check_adaptive(config.get("output", "softmax"), config.get("cutoffs"),
                              config.get("div_value", DEFAULT_DIV_VALUE), O, (1 + bi) * H)
        if spec is not None:
            shapes.update(spec.param_shapes())
        return shapes

    def state_shape(self, B: int) -> tuple[int, ...]:
        """The shape of h0 and h_last: (B, H) for one unidirectional layer, else
        (num_layers*D, B, H), index l*D + d (PyTorch's h_n layout)."""
        return self._engine.state_shape(B)

    def dropout_shape(self, T: int, B: int) -> tuple[int, ...]:
        """The shape of `dropout`: (T, B, H) for one unidirectional layer, else
        (num_layers, T, B, D*H)."""
        return self._engine.dropout_shape(T, B)

    def __repr__(self) -> str:
        stack = "" if self.cell == "elman" else f"cell={self.cell!r}, "
        stack += "" if self.num_layers == 1 else f"num_layers={self.num_layers}, "
        stack += "bidirectional=True, " if self.bidirectional else ""
        extra = "" if self.adaptive is None else (
            f", cutoffs={self.adaptive.cutoffs}, div_value={self.adaptive.div_value}")
        return (f"RNN({self.input_size}, {self.hidden_size}, {self.output_size}, {stack}"
                f"backend={self.backend.name!r}, dtype={self.dtype.name!r}, "
                f"hidden_activation={self.hidden_activation!r}, output={self.output!r}{extra})")

    def to(self, backend: str | Backend = "auto", dtype: str | None = None) -> RNN:
        """A copy of this model on another backend and/or dtype."""
        cfg = self.config
        if dtype is not None:
            cfg["dtype"] = dtype
        return RNN.from_config(cfg, backend=backend,
                               params={k: to_numpy(v) for k, v in self.params.items()})

    def load_params(self, params: dict) -> None:
        """Copy parameters (NumPy or backend arrays) into this model, checking shapes."""
        for name in self.param_names:
            if name not in params:
                raise ValueError(f"params: missing {name!r}")
            v = params[name]
            want = self.params[name].shape
            if tuple(v.shape) != want:
                raise ValueError(f"params[{name!r}]: expected shape {want}, got {tuple(v.shape)}")
            self.params[name][...] = self.backend.asarray(v, dtype=self.dtype)

    # ---------------------------------------------------------------------------------
    # Validation: every bad input is a ValueError naming the argument.

    def _array(self, name: str, a):
        if a is None:
            return None
        if is_cupy_array(a) and not self.backend.is_gpu:
            raise TypeError(
                f"{name}: got a CuPy array but this model runs on NumPy; mixing backends in "
                "one call is not allowed (pass rnn_gpu.to_numpy(...) or use backend='cupy')"
            )
        if not hasattr(a, "shape"):
            a = np.asarray(a)
        return a

    def _on_device(self, a) -> bool:
        return self.backend.is_gpu and isinstance(a, self.backend.xp.ndarray)

    def _values(self) -> _Checks:
        return _Checks(self.backend.xp, self._on_device)

    def _check_x(self, x, checks: _Checks):
        x = self._array("x", x)
        if x is None:
            raise ValueError("x: expected token ids (T, B) or floats (T, B, I), got None")
        if x.ndim == 2:
            if x.dtype.kind not in "iu":
                raise ValueError(f"x: expected integer token ids of shape (T, B), got dtype {x.dtype}")
            if x.shape[0] == 0 or x.shape[1] == 0:
                raise ValueError(f"x: expected T >= 1 and B >= 1, got shape {tuple(x.shape)}")
            n = self.input_size
            checks.require(x, lambda m, a: (a.min() >= 0) & (a.max() < n),
                           lambda a: f"x: expected token ids in [0, {n}), got values in "
                                     f"[{int(a.min())}, {int(a.max())}]")
        elif x.ndim == 3:
            if x.dtype.kind != "f":
                raise ValueError(f"x: expected float inputs of shape (T, B, I), got dtype {x.dtype}")
            if x.shape[0] == 0 or x.shape[1] == 0:
                raise ValueError(f"x: expected T >= 1 and B >= 1, got shape {tuple(x.shape)}")
            if x.shape[2] != self.input_size:
                raise ValueError(
                    f"x: expected shape (T, B, {self.input_size}), got {tuple(x.shape)}")
            checks.require(x, lambda m, a: m.isfinite(a).all(),
                           "x: expected finite values, got NaN or inf")
        else:
            raise ValueError(
                f"x: expected token ids (T, B) or floats (T, B, {self.input_size}), "
                f"got an array of rank {x.ndim} with shape {tuple(x.shape)}")
        return x

    def _check_y(self, y, T, B, checks: _Checks):
        y = self._array("y", y)
        if y is None:
            raise ValueError("y: expected targets, got None")
        if self.output in _ID_TARGETS:
            if y.ndim != 2 or y.dtype.kind not in "iu":
                raise ValueError(
                    f"y: expected integer class ids of shape ({T}, {B}), "
                    f"got {y.dtype} array of shape {tuple(y.shape)}")
            if tuple(y.shape) != (T, B):
                raise ValueError(f"y: expected shape ({T}, {B}) to match x, got {tuple(y.shape)}")
            n = self.output_size
            checks.require(y, lambda m, a: (a.min() >= 0) & (a.max() < n),
                           lambda a: f"y: expected class ids in [0, {n}), got values in "
                                     f"[{int(a.min())}, {int(a.max())}]")
        else:
            want = (T, B, self.output_size)
            if y.ndim != 3 or y.dtype.kind not in "fiub":
                raise ValueError(f"y: expected floats of shape {want}, got {y.dtype} array "
                                 f"of shape {tuple(y.shape)}")
            if tuple(y.shape) != want:
                raise ValueError(f"y: expected shape {want}, got {tuple(y.shape)}")
            checks.require(y, lambda m, a: m.isfinite(a).all(),
                           "y: expected finite values, got NaN or inf")
            if self.output == "sigmoid":
                checks.require(y, lambda m, a: ((a >= 0) & (a <= 1)).all(),
                               "y: expected targets in [0, 1] for output='sigmoid'")
        return y

    def _check_h0(self, h0, B, checks: _Checks):
        if self.cell == "lstm" and h0 is not None:
            if not isinstance(h0, (tuple, list)) or len(h0) != 2:
                raise ValueError(
                    f"h0: an LSTM's state is a pair (h, c), each of shape "
                    f"{self.state_shape(B)}, got {type(h0).__name__}")
            if any(a is None for a in h0):
                raise ValueError("h0: expected two arrays in the pair (h, c), got None")
            return tuple(self._check_state(a, B, checks) for a in h0)
        return self._check_state(h0, B, checks)

    def _check_state(self, h0, B, checks: _Checks):
        h0 = self._array("h0", h0)
        if h0 is None:
            return None
        want = self.state_shape(B)
        if tuple(h0.shape) != want or h0.dtype.kind != "f":
            raise ValueError(f"h0: expected floats of shape {want}, got {h0.dtype} array "
                             f"of shape {tuple(h0.shape)}")
        checks.require(h0, lambda m, a: m.isfinite(a).all(),
                       "h0: expected finite values, got NaN or inf")
        return h0

    def _check_mask(self, mask, T, B, checks: _Checks):
        """The mask and, to be read after the checks, whether it is all ones."""
        mask = self._array("mask", mask)
        if mask is None:
            return None, None
        if tuple(mask.shape) != (T, B):
            raise ValueError(f"mask: expected shape ({T}, {B}) to match x, got {tuple(mask.shape)}")
        checks.require(mask, lambda m, a: ((a == 0) | (a == 1)).all(),
                       "mask: expected 0/1 (or boolean) values, got other values")
        return mask, checks.flag(mask, lambda m, a: (a == 1).all())

    def _check_truncate(self, truncate):
        if truncate is None:
            return None
        if isinstance(truncate, bool) or not isinstance(truncate, (int, np.integer)) or truncate < 0:
            raise ValueError(f"truncate: expected None or an integer >= 0, got {truncate!r}")
        if self.bidirectional:
            raise ValueError("truncate: truncation is defined for unidirectional models; "
                             "got truncate with bidirectional=True")
        return int(truncate)

    def _prepare(self, x, y, h0, mask, need_y=True):
        """(x, y, h0, keep) of :meth:`_inputs`."""
        return self._inputs(x, y, h0, mask, need_y)[:4]

    def _inputs(self, x, y, h0, mask, need_y=True, loss_mask=None, dropout=None):
        """The call's inputs checked (a ValueError naming the first bad one) and on this
        backend: (x, y, h0, keep, loss weights, dropout). NumPy inputs are checked on the
        host before they are uploaded; the value checks of device inputs are read back
        together, one host read for the call."""
        checks = self._values()
        x = self._check_x(x, checks)
        T, B = x.shape[:2]
        y = self._check_y(y, T, B, checks) if need_y else None
        h0 = self._check_h0(h0, B, checks)
        mask, all_ones = self._check_mask(mask, T, B, checks)
        lm = self._check_loss_mask(loss_mask, T, B, checks)
        drop = self._check_dropout(dropout, T, B, checks)
        checks.flush()
        be = self.backend
        xb = be.asarray(x) if x.ndim == 2 else be.asarray(x, dtype=self.dtype)
        if xb.ndim == 3 or not xb.flags.c_contiguous:
            xb = be.xp.ascontiguousarray(xb)
        if y is not None:
            if self.output in _ID_TARGETS:
                y = be.xp.ascontiguousarray(be.asarray(y))
            else:
                y = be.xp.ascontiguousarray(be.asarray(y, dtype=self.dtype))
        h0 = self._upload_state(h0)
        keep = None
        if mask is not None and not all_ones():  # an all-ones mask is no mask: faster path
            keep = be.asarray(mask, dtype=self.dtype)
        weight = None
        if lm is not None:
            w = be.xp.ascontiguousarray(be.asarray(lm, dtype=self.dtype))
            weight = w if keep is None else w * keep
        if drop is not None:
            drop = be.xp.ascontiguousarray(be.asarray(drop, dtype=self.dtype))
        return xb, y, h0, keep, weight, drop

    def _upload_state(self, h):
        """A state (an LSTM's pair) on this backend in the model's dtype, or None."""
        if h is None:
            return None
        if isinstance(h, (tuple, list)):
            return tuple(self.backend.asarray(a, dtype=self.dtype) for a in h)
        return self.backend.asarray(h, dtype=self.dtype)

    # ---------------------------------------------------------------------------------

    def _check_loss_mask(self, loss_mask, T, B, checks: _Checks):
        lm = self._array("loss_mask", loss_mask)
        if lm is None:
            return None
        if tuple(lm.shape) != (T, B) or lm.dtype.kind not in "fiub":
            raise ValueError(f"loss_mask: expected float weights of shape ({T}, {B}) to match "
                             f"x, got {lm.dtype} array of shape {tuple(lm.shape)}")
        checks.require(lm, lambda m, a: (m.isfinite(a) & (a >= 0)).all(),
                       "loss_mask: expected finite weights >= 0")
        return lm

    def _check_dropout(self, drop, T, B, checks: _Checks):
        drop = self._array("dropout", drop)
        if drop is None:
            return None
        want = self._engine.dropout_shape(T, B)
        if tuple(drop.shape) != want or drop.dtype.kind != "f":
            raise ValueError(
                f"dropout: expected float multipliers of shape {want} (0 for a dropped "
                f"unit, 1/(1-p) for a kept one), got {drop.dtype} array of shape {tuple(drop.shape)}")
        checks.require(drop, lambda m, a: (m.isfinite(a) & (a >= 0)).all(),
                       "dropout: expected finite multipliers >= 0")
        return drop

    def loss_and_grads(self, x, y, h0=None, truncate=None, mask=None, loss_mask=None,
                       dropout=None):
        """Summed loss, gradients and last state for one batch of sequences.

        x: token ids (T, B) or floats (T, B, I); y: ids (T, B) for softmax, floats
        (T, B, O) otherwise; h0: initial state (:meth:`state_shape`: (B, H) for one
        unidirectional layer, else (num_layers*D, B, H), index l*D + d; a reverse
        direction's enters at the last step) or None for zeros (the gradient stops at h0,
        so chunked truncated BPTT is one call per chunk); truncate: None for full BPTT or
        k >= 0, unidirectional only (each output's loss with the states of all layers k+1
        steps back held fixed); mask: (T, B) 0/1, masked steps are skipped in every layer
        and direction (no loss, no gradient, state carried through unchanged);
        loss_mask: (T, B) weights >= 0 on each step's loss (the step still runs);
        dropout: multipliers, (T, B, H) for one unidirectional layer, else
        (num_layers, T, B, D*H): layer l's output is multiplied before layer l+1 (or the
        output layer) reads it (inverted dropout: 0 or 1/(1-p); every recurrence keeps
        its undropped states), or None. Inputs may be NumPy arrays on either backend.

        Returns (loss: float, grads: dict of backend arrays keyed like `params`,
        h_last: backend array of :meth:`state_shape`; a reverse direction's is its state
        after step 0). The gradient arrays are reused by the next call. For an LSTM the
        state is a pair: h0 is (h0, c0) or None, and h_last is (h, c), each of
        :meth:`state_shape`.
        """
        truncate = self._check_truncate(truncate)
        xb, yb, h0b, keep, weight, drop = self._inputs(x, y, h0, mask, True, loss_mask,
                                                       dropout)
        return self._engine.loss_and_grads(self.params, xb, yb, h0b, keep, truncate, drop,
                                           weight)

    def loss(self, x, y, h0=None, mask=None, loss_mask=None, dropout=None) -> tuple[float, Any]:
        """Forward only: (summed loss, last state (:meth:`state_shape`))."""
        xb, yb, h0b, keep, weight, drop = self._inputs(x, y, h0, mask, True, loss_mask,
                                                       dropout)
        return self._engine.loss(self.params, xb, yb, h0b, keep, drop, weight)

    def forward(self, x, h0=None, mask=None) -> tuple[Any, Any]:
        """Logits (T, B, O) before the output nonlinearity, and the last state
        (:meth:`state_shape`). For output="adaptive" they are the full log-probabilities
        (as logits of a softmax they give the same distribution), so sampling and
        evaluation are exact."""
        xb, _, h0b, keep = self._prepare(x, None, h0, mask, need_y=False)
        return self._engine.forward(self.params, xb, h0b, keep)

    def log_prob(self, x, h0=None, mask=None):
        """Full log-probabilities (T, B, O) of the class at every step, a backend array,
        for output="softmax" or "adaptive". x: ids (T, B) or floats (T, B, I); h0: as
        :meth:`state_shape`, or None for zeros."""
        if self.output not in _ID_TARGETS:
            raise ValueError(f"output: log_prob needs output='softmax' or 'adaptive' (a "
                             f"distribution over classes), this model has {self.output!r}")
        xb, _, h0b, keep = self._prepare(x, None, h0, mask, need_y=False)
        return self._engine.log_prob(self.params, xb, h0b, keep)[0]

    def step(self, x_t, h=None) -> tuple[Any, Any]:
        """One time step, for sampling: x_t ids (B,) or floats (B, I) -> (logits (B, O), h)."""
        x_t = self._array("x_t", x_t)
        if x_t is None or x_t.ndim not in (1, 2):
            raise ValueError("x_t: expected ids (B,) or floats (B, I)")
        logits, h_new = self.forward(x_t[None], h0=h)
        return logits[0], h_new

    def reference_loss_and_grads(self, x, y, h0=None, truncate=None, mask=None,
                                 loss_mask=None, dropout=None):
        """The clear float64 reference (rnn_gpu.reference) on this model's parameters.

        Returns (loss, grads as float64 NumPy arrays, h_last as a NumPy array).
        """
        truncate = self._check_truncate(truncate)
        xb, yb, h0b, keep, _, drop = self._inputs(x, y, h0, mask, True, loss_mask, dropout)
        return reference.loss_and_grads(
            {k: to_numpy(v) for k, v in self.params.items()}, to_numpy(xb), to_numpy(yb),
            h0=None if h0b is None else (tuple(map(to_numpy, h0b)) if isinstance(h0b, tuple)
                                         else to_numpy(h0b)), truncate=truncate,
            mask=None if keep is None else to_numpy(keep),
            hidden_activation=self.hidden_activation, output=self.output,
            drop=None if drop is None else to_numpy(drop),
            loss_mask=None if loss_mask is None else np.asarray(to_numpy(loss_mask), np.float64))

    def loss_and_grads_trusted(self, x, y, h0=None, truncate=None, dropout=None):
        """:meth:`loss_and_grads` for inputs the caller has validated already (the
        trainer: token ids checked once when the corpus was loaded, a state it got from
        this model), so that a step on a GPU reads nothing back but its loss. x, y: token
        ids (T, B); h0: :meth:`state_shape` or None; dropout: :meth:`dropout_shape`
        multipliers or None."""
        be = self.backend
        xb = be.xp.ascontiguousarray(be.asarray(x))
        yb = be.xp.ascontiguousarray(be.asarray(y))
        h0b = self._upload_state(h0)
        drop = None if dropout is None else be.xp.ascontiguousarray(
            be.asarray(dropout, dtype=self.dtype))
        return self._engine.loss_and_grads(self.params, xb, yb, h0b, None,
                                           self._check_truncate(truncate), drop)

    def captured_step(self, T: int, B: int, *, truncate: int | None = None, dense: bool = False,
                      masked: bool = False, dropout: bool = False):
        """The training step of this model for one shape, captured as a CUDA Graph on first
        call and replayed after (CuPy backend): a :class:`rnn_gpu.cuda.graph.GraphedStep`,
        called as ``step(params, x, y, h0, keep, drop)`` with device arrays of that shape,
        returning (loss, grads, h_last) as ``loss_and_grads`` does. Inputs are not
        validated: the caller has (token ids in range, finite values)."""
        if not self.backend.is_gpu:
            raise ValueError(f"captured_step: needs the CuPy backend, this model runs on "
                             f"{self.backend.name!r}")
        from .cuda.graph import GraphedStep  # noqa: PLC0415 - GPU only

        return GraphedStep(self._engine, T, B, dense, self._check_truncate(truncate), masked,
                           dropout=dropout)
