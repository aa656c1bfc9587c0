"""Optimizers and gradient clipping, updating a model's parameters in place.

Everything is written with the backend's array module ``xp``, so the same code updates
NumPy arrays on the CPU and CuPy arrays on the GPU without copies to the host. The
update rules follow PyTorch's ``torch.optim`` (SGD with momentum, Adam) and Karpathy's
min-char-rnn (Adagrad). Optimizer state is exported as host arrays for checkpoints.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..errors import CheckpointError, UsageError
from .checks import expect, is_real, one_of, positive_number

OPTIMIZERS = ("sgd", "adagrad", "adam")

# Learning rates that work for a character model with gradients of the mean token loss.
DEFAULT_LR = {"sgd": 1.0, "adagrad": 0.1, "adam": 2e-3}


def _array_module(params: dict) -> Any:
    from ..backend import array_module  # noqa: PLC0415

    return array_module(*params.values())


def global_norm(grads: dict, xp=None) -> float:
    """The 2-norm of all gradients taken together, as a Python float."""
    xp = xp or _array_module(grads)
    total = sum(xp.vdot(g.ravel(), g.ravel()) for g in grads.values())
    return math.sqrt(float(total))


def clip_grad_norm(grads: dict, max_norm: float | None, xp=None) -> float:
    """Scale all gradients in place so their joint 2-norm is at most `max_norm`.

    PyTorch's ``clip_grad_norm_`` semantics: one norm over all gradients, scale factor
    ``max_norm / (norm + 1e-6)`` applied only when it is below 1. Returns the norm
    before clipping (inf or nan when a gradient is not finite; nothing is scaled then).
    """
    xp = xp or _array_module(grads)
    norm = global_norm(grads, xp)
    scale = clip_factor(norm, max_norm)
    if scale is not None:
        for g in grads.values():
            g *= g.dtype.type(scale)
    return norm


def clip_factor(norm: float, max_norm: float | None) -> float | None:
    """The factor :func:`clip_grad_norm` scales by at global norm `norm`; None: none."""
    if max_norm is not None and max_norm > 0 and math.isfinite(norm):
        scale = max_norm / (norm + 1e-6)
        if scale < 1.0:
            return scale
    return None


def clip_grad_norm_on_device(grads: dict, max_norm: float | None, xp) -> None:
    """:func:`clip_grad_norm` without reading the norm back to the host (GPU backends).

    The same scale factor, ``min(1, max_norm / (norm + 1e-6))``, computed and applied on
    the device. A non-finite norm is not detected here: it makes the parameters
    non-finite, which the next step's loss shows."""
    if max_norm is None or max_norm <= 0:
        return
    total = None
    for g in grads.values():
        sq = xp.vdot(g.ravel(), g.ravel()).astype(xp.float64)
        total = sq if total is None else total + sq
    scale = xp.minimum(max_norm / (xp.sqrt(total) + 1e-6), 1.0)
    for g in grads.values():
        g *= scale.astype(g.dtype)


def memory_order(a) -> str:
    """"F" for an array laid out column-major (and not also row-major), else "C"."""
    return "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"


def flat_view(a):
    """The contiguous array `a` as a 1-D view, elements in memory order."""
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        raise ValueError(f"expected a contiguous array, got strides {a.strides}")
    return a.reshape(-1, order=memory_order(a))


class Optimizer:
    """Base class. ``lr`` may be changed between steps (learning-rate schedules do)."""

    name = ""
    slots: tuple[str, ...] = ()  # per-parameter state arrays

    def __init__(self, params: dict, lr: float, lr_scale: dict | None = None):
        positive_number("lr", lr)
        self.params = params
        self.lr = float(lr)
        # per-parameter multipliers of the rate, e.g. {"U": 16.0}; not saved in checkpoints
        # (the trainer derives them from its configuration)
        self.lr_scale = {k: float(v) for k, v in (lr_scale or {}).items()}
        self.t = 0  # steps taken
        self.xp = _array_module(params)
        self.state: dict[str, dict[str, Any]] = {
            s: {k: self.xp.zeros_like(p) for k, p in params.items()} for s in self.slots
        }

    def step(self, grads: dict) -> None:
        """Apply one update using `grads` (same keys as the parameters); grads may be
        overwritten."""
        self.t += 1
        for k, p in self.params.items():
            self._update(k, p, grads[k], self.lr * self.lr_scale.get(k, 1.0))

    def step_pieces(self, pieces) -> None:
        """One update of parts of the parameters, the same arithmetic as :meth:`step` on
        those elements (data-parallel ranks each update their shard): `pieces` is
        [(key, lo, hi, g)], g the gradient of ``params[key].ravel()[lo:hi]``."""
        self.t += 1
        full = self.state
        try:
            for k, lo, hi, g in pieces:
                self.state = {s: {k: flat_view(d[k])[lo:hi]} for s, d in full.items()}
                self._update(k, flat_view(self.params[k])[lo:hi], g,
                             self.lr * self.lr_scale.get(k, 1.0))
        finally:
            self.state = full

    def _update(self, k: str, p, g, lr: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def hyper(self) -> dict:
        """Hyper-parameters, JSON-serializable."""
        return {}

    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-serializable metadata, host arrays named ``<slot>/<param>``)."""
        meta = {"name": self.name, "lr": self.lr, "t": self.t, **self.hyper()}
        arrays = {f"{s}/{k}": to_numpy(a) for s, d in self.state.items() for k, a in d.items()}
        return meta, arrays

    def load_state_dict(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        if meta.get("name") != self.name:
            raise CheckpointError(
                f"optimizer mismatch: the checkpoint used {meta.get('name')!r}, not {self.name!r}"
            )
        for s, d in self.state.items():
            for k, a in d.items():
                key = f"{s}/{k}"
                if key not in arrays:
                    raise CheckpointError(f"optimizer state {key!r} is missing from the checkpoint")
                src = arrays[key]
                if src.shape != a.shape:
                    raise CheckpointError(
                        f"optimizer state {key!r}: expected shape {a.shape}, got {src.shape}"
                    )
                a[...] = self.xp.asarray(src, dtype=a.dtype)
        self.lr = float(meta["lr"])
        self.t = int(meta["t"])


class SGD(Optimizer):
    """``v = momentum * v + g; p -= lr * v`` (PyTorch's form; plain SGD when momentum is 0)."""

    name = "sgd"

    def __init__(self, params: dict, lr: float, momentum: float = 0.0, lr_scale: dict | None = None):
        expect(is_real(momentum) and 0.0 <= momentum < 1.0, "momentum", "a number in [0, 1)", momentum)
        self.momentum = float(momentum)
        self.slots = ("velocity",) if momentum > 0 else ()
        super().__init__(params, lr, lr_scale)

    def _update(self, k, p, g, lr):
        if self.momentum > 0:
            v = self.state["velocity"][k]
            v *= v.dtype.type(self.momentum)
            v += g
            g = v
        p -= p.dtype.type(lr) * g

    def hyper(self):
        return {"momentum": self.momentum}


class Adagrad(Optimizer):
    """``m += g*g; p -= lr * g / sqrt(m + eps)``, as in min-char-rnn."""

    name = "adagrad"
    slots = ("sum_sq",)

    def __init__(self, params: dict, lr: float, eps: float = 1e-8, lr_scale: dict | None = None):
        self.eps = float(eps)
        super().__init__(params, lr, lr_scale)

    def _update(self, k, p, g, lr):
        m = self.state["sum_sq"][k]
        m += g * g
        p -= p.dtype.type(lr) * g / self.xp.sqrt(m + p.dtype.type(self.eps))

    def hyper(self):
        return {"eps": self.eps}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba; PyTorch's defaults)."""

    name = "adam"
    slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: dict, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 lr_scale: dict | None = None):
        b1, b2 = betas
        expect(0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0, "betas", "numbers in [0, 1)", betas)
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        super().__init__(params, lr, lr_scale)

    def _update(self, k, p, g, lr):
        b1, b2 = self.betas
        one = p.dtype.type
        m, v = self.state["exp_avg"][k], self.state["exp_avg_sq"][k]
        m *= one(b1)
        m += one(1 - b1) * g
        v *= one(b2)
        v += one(1 - b2) * (g * g)
        bc1 = 1 - b1**self.t
        bc2 = 1 - b2**self.t
        denom = self.xp.sqrt(v)
        denom *= one(1 / math.sqrt(bc2))
        denom += one(self.eps)
        p -= one(lr / bc1) * (m / denom)

    def hyper(self):
        return {"betas": list(self.betas), "eps": self.eps}


def make_optimizer(name: str, params: dict, lr: float | None = None, momentum: float = 0.0,
                   lr_scale: dict | None = None) -> Optimizer:
    """An optimizer by name ("sgd", "adagrad", "adam"); `lr` None takes DEFAULT_LR;
    `lr_scale` multiplies the rate of single parameters (e.g. {"U": 16.0})."""
    name = name.lower()
    one_of("name", name, OPTIMIZERS)
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "sgd":
        return SGD(params, lr, momentum=momentum, lr_scale=lr_scale)
    if momentum:
        raise UsageError(f"momentum: applies to sgd only, not {name}")
    if name == "adagrad":
        return Adagrad(params, lr, lr_scale=lr_scale)
    return Adam(params, lr, lr_scale=lr_scale)
