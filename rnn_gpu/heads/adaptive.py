"""The adaptive softmax (Grave et al. 2017), exact, in PyTorch's parametrization.

Classes are ids sorted roughly by frequency. ``cutoffs`` c_0 < c_1 < ... < c_{n-1} split
[0, O) into the head's shortlist [0, c_0) and n tail clusters [c_i, c_{i+1}) (c_n = O).
With F the features the output layer reads (F = H for one layer)::

    head   = V f + c                       (c_0 + n,)   V (c_0 + n, F), c (c_0 + n,)
    tail_i = O_i (P_i f)                   (size_i,)    P_i (h_i, F), O_i (size_i, h_i)
    log p(y) = log_softmax(head)[y]                               y < c_0
             = log_softmax(head)[c_0 + i] + log_softmax(tail_i)[y - c_i]   y in cluster i

with h_i = int(F // div_value ** (i + 1)) and no tail biases: this is
``torch.nn.AdaptiveLogSoftmaxWithLoss(F, O, cutoffs, div_value, head_bias=True)`` with
``head.weight = V``, ``head.bias = c``, ``tail[i][0].weight = P_i`` (our
``"tail{i}_proj"``) and ``tail[i][1].weight = O_i`` (``"tail{i}_out"``). The distribution
is normalized: sum_y p(y) = 1 exactly, so perplexities compare with a full softmax.

Three things live here:

* :class:`AdaptiveSpec` and :func:`check_adaptive`: the shapes, and the checks of the
  constructor's arguments.
* :func:`reference_output` and :func:`reference_log_prob`: the oracle in float64, one
  token at a time, exactly the formula above.
* :class:`AdaptiveHead`: the fast version on a backend's kernel set. The head is one GEMM
  over all N rows; each cluster is one gather of the rows whose target falls in it, two
  GEMMs over those rows, the fused loss kernel and two GEMMs back, and one scatter-add of
  the rows' errors. No (N, O) array is made in training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_DIV_VALUE = 4.0


@dataclass(frozen=True)
class AdaptiveSpec:
    """The shape of an adaptive softmax over `n_classes` classes reading `features`."""

    features: int
    n_classes: int
    cutoffs: tuple[int, ...]
    div_value: float = DEFAULT_DIV_VALUE

    @property
    def shortlist(self) -> int:
        return self.cutoffs[0]

    @property
    def n_clusters(self) -> int:
        return len(self.cutoffs)

    @property
    def head_size(self) -> int:
        return self.cutoffs[0] + len(self.cutoffs)

    @property
    def bounds(self) -> tuple[int, ...]:
        """c_0, c_1, ..., c_{n-1}, O: cluster i is [bounds[i], bounds[i+1])."""
        return (*self.cutoffs, self.n_classes)

    def tail_dim(self, i: int) -> int:
        return int(self.features // self.div_value ** (i + 1))

    def tail_size(self, i: int) -> int:
        return self.bounds[i + 1] - self.bounds[i]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The output layer's parameters: head V, c and per cluster a projection and an
        output matrix (in this order, which is also the order of initialization)."""
        shapes = {"V": (self.head_size, self.features), "c": (self.head_size,)}
        for i in range(self.n_clusters):
            shapes[f"tail{i}_proj"] = (self.tail_dim(i), self.features)
            shapes[f"tail{i}_out"] = (self.tail_size(i), self.tail_dim(i))
        return shapes

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Float64 host values: V and each tail matrix uniform in +-1/sqrt(fan_in) (the
        scale of torch.nn.Linear's default init; fan_in is F for V and the projections,
        h_i for the tail outputs), drawn from `rng` in :meth:`param_shapes` order; c zero."""
        out = {}
        for name, shape in self.param_shapes().items():
            if name == "c":
                out[name] = np.zeros(shape)
            else:
                r = 1.0 / math.sqrt(shape[1])
                out[name] = rng.uniform(-r, r, shape)
        return out

    @classmethod
    def from_params(cls, params: dict) -> AdaptiveSpec:
        """The spec that parameter shapes imply (the reference needs no other argument).
        div_value is not recoverable from shapes and is left at its default."""
        n = 0
        while f"tail{n}_out" in params:
            n += 1
        head, F = params["V"].shape
        c0 = head - n
        bounds = [c0]
        for i in range(n):
            bounds.append(bounds[-1] + params[f"tail{i}_out"].shape[0])
        return cls(F, bounds[-1], tuple(bounds[:-1]))


def check_adaptive(output: str, cutoffs, div_value, n_classes: int,
                   features: int) -> AdaptiveSpec | None:
    """Validate the adaptive-softmax arguments of the model's constructor; the spec for
    output == "adaptive", None otherwise. Every bad value is a ValueError naming it."""
    if isinstance(div_value, bool) or not isinstance(div_value, (int, float, np.integer,
                                                                 np.floating)):
        raise ValueError(f"div_value: expected a positive number, got {div_value!r}")
    div = float(div_value)
    if not math.isfinite(div) or div <= 0:
        raise ValueError(f"div_value: expected a positive finite number, got {div_value!r}")
    if output != "adaptive":
        if cutoffs is not None:
            raise ValueError(f"cutoffs: only used with output='adaptive', got cutoffs="
                             f"{cutoffs!r} with output={output!r}")
        return None
    if cutoffs is None:
        raise ValueError("cutoffs: output='adaptive' needs cutoffs, e.g. cutoffs=(2000, 10000) "
                         "(strictly increasing class ids in (0, output_size))")
    if isinstance(cutoffs, (str, bytes)) or not hasattr(cutoffs, "__iter__"):
        raise ValueError(f"cutoffs: expected a sequence of integers, got {cutoffs!r}")
    cuts = list(cutoffs)
    if not cuts or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in cuts):
        raise ValueError(f"cutoffs: expected a non-empty sequence of integers, got {cutoffs!r}")
    cuts = [int(c) for c in cuts]
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"cutoffs: expected strictly increasing values, got {tuple(cuts)}")
    if cuts[0] <= 0 or cuts[-1] >= n_classes:
        raise ValueError(f"cutoffs: expected values in (0, {n_classes}) (output_size "
                         f"{n_classes}), got {tuple(cuts)}")
    spec = AdaptiveSpec(int(features), int(n_classes), tuple(cuts), div)
    for i in range(spec.n_clusters):
        if spec.tail_dim(i) < 1:
            raise ValueError(
                f"div_value: {div_value!r} leaves cluster {i} a projection of "
                f"int({features} // {div_value!r}**{i + 1}) = 0 features; use a smaller "
                "div_value or fewer cutoffs")
    return spec


def default_cutoffs(n_classes: int, features: int | None = None,
                    div_value: float = DEFAULT_DIV_VALUE) -> tuple[int, ...]:
    """Cutoffs for a vocabulary of `n_classes` ids sorted by frequency: every one of
    2,000, 10,000 and 50,000 (the usual word-level shortlist and cluster edges) that lies
    below n_classes, or, for a vocabulary of at most 2,000 ids, one cutoff at a quarter of
    it (char-level vocabularies gain nothing from a tail; this is only a valid choice).
    With `features` given, clusters whose projection would have no feature
    (features // div_value^(i+1) = 0) are dropped from the end."""
    n = int(n_classes)
    if n < 2:
        raise ValueError(f"n_classes: expected at least 2 classes for cutoffs, got {n_classes!r}")
    cuts = tuple(c for c in (2000, 10000, 50000) if c < n) or (max(1, n // 4),)
    if features is not None:
        while len(cuts) > 1 and int(features // div_value ** len(cuts)) < 1:
            cuts = cuts[:-1]
    return cuts


# -------------------------------------------------------------------------------------
# The reference: float64, one token at a time, the formula as written


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def reference_output(p: dict, f: np.ndarray, y: np.ndarray, w: np.ndarray,
                     grads: dict) -> tuple[np.ndarray, np.ndarray]:
    """Loss per row -log p(y_b) (B,) and the error dL/df (B, F) of sum_b w_b (-log p(y_b)),
    for features f (B, F), ids y (B,), weights w (B,); the parameters' gradients of that
    sum are added into `grads` (float64 arrays keyed like `p`)."""
    spec = AdaptiveSpec.from_params(p)
    c0, bounds = spec.shortlist, spec.bounds
    V, c = p["V"], p["c"]
    B = f.shape[0]
    loss = np.zeros(B)
    df = np.zeros_like(f)
    for b in range(B):
        fb, yb, wb = f[b], int(y[b]), float(w[b])
        head = V @ fb + c  # (c0 + n,)
        prob = np.exp(_log_softmax(head))
        if yb < c0:
            target, tail = yb, None
        else:
            i = max(k for k in range(spec.n_clusters) if bounds[k] <= yb)
            target, tail = c0 + i, i
        loss[b] = -np.log(prob[target])
        dhead = prob.copy()
        dhead[target] -= 1.0  # d(-log softmax(head)[target]) / d head
        dhead *= wb
        grads["V"] += np.outer(dhead, fb)
        grads["c"] += dhead
        df[b] = V.T @ dhead
        if tail is not None:
            P, Out = p[f"tail{tail}_proj"], p[f"tail{tail}_out"]
            hb = P @ fb  # (h_i,)
            tprob = np.exp(_log_softmax(Out @ hb))  # (size_i,)
            j = yb - bounds[tail]
            loss[b] -= np.log(tprob[j])
            dz = tprob.copy()
            dz[j] -= 1.0
            dz *= wb
            grads[f"tail{tail}_out"] += np.outer(dz, hb)
            dh = Out.T @ dz
            grads[f"tail{tail}_proj"] += np.outer(dh, fb)
            df[b] += P.T @ dh
    return loss, df


def reference_log_prob(p: dict, f: np.ndarray) -> np.ndarray:
    """The full log-probabilities (B, O) for features f (B, F), in float64."""
    spec = AdaptiveSpec.from_params(p)
    c0, bounds = spec.shortlist, spec.bounds
    lh = _log_softmax(f @ p["V"].T + p["c"])
    out = np.empty((f.shape[0], spec.n_classes))
    out[:, :c0] = lh[:, :c0]
    for i in range(spec.n_clusters):
        lt = _log_softmax((f @ p[f"tail{i}_proj"].T) @ p[f"tail{i}_out"].T)
        out[:, bounds[i]:bounds[i + 1]] = lh[:, c0 + i:c0 + i + 1] + lt
    return out


# -------------------------------------------------------------------------------------
# The fast head


class _Buffers:
    """Device buffers for N rows, reused from call to call. Per-cluster arrays are sized
    for all N rows (the most a cluster can have) and shared by the clusters in turn."""

    def __init__(self, xp, dtype, spec: AdaptiveSpec, N: int):
        n, F = spec.n_clusters, spec.features
        e = lambda *shape, dt=dtype: xp.empty(shape, dtype=dt)  # noqa: E731
        self.head = e(N, spec.head_size)  # head logits, then dL/dhead in place
        self.head_target = e(N, dt=np.int32)
        self.idx = e(n, N, dt=np.int32)  # rows of each cluster, first counts[i] entries
        self.counts = e(n, dt=np.int32)
        self.rows = e(N, F)  # the cluster's gathered features, then (backward) their errors
        self.target = e(N, dt=np.int32)  # class within the cluster
        self.weight = e(N)
        self.loss = e(N)
        hmax = max(spec.tail_dim(i) for i in range(n))
        smax = max(spec.tail_size(i) for i in range(n))
        self.proj = e(N * hmax)  # flat: (R, h_i) views for any R <= N
        self.dproj = e(N * hmax)
        self.logits = e(N * smax)  # (R, size_i) views


class AdaptiveHead:
    """The adaptive softmax on a kernel set `ops` (see :mod:`rnn_gpu.ops`).

    row_bound: "count" runs each cluster's GEMMs over exactly its rows (the counts are
    read to the host once per call: a device sync on a GPU); "padded" runs them over all
    N rows, the rows past a cluster's count being zeros of weight 0 (fixed shapes, no host
    read: what a CUDA Graph capture needs, and chosen automatically during a capture).
    """

    def __init__(self, spec: AdaptiveSpec, xp, ops, dtype, row_bound: str = "count"):
        if row_bound not in ("count", "padded"):
            raise ValueError(f"row_bound: expected 'count' or 'padded', got {row_bound!r}")
        self.spec = spec
        self.xp = xp
        self.ops = ops
        self.dtype = np.dtype(dtype)
        self.row_bound = row_bound
        self.bounds = xp.asarray(np.array(spec.bounds, dtype=np.int64))
        self._buffers: dict[int, _Buffers] = {}

    def buffers(self, N: int) -> _Buffers:
        buf = self._buffers.get(N)
        if buf is None:
            if len(self._buffers) >= 4:  # as the engine's workspaces: a few shapes
                self._buffers.pop(next(iter(self._buffers)))
            buf = self._buffers[N] = _Buffers(self.xp, self.dtype, self.spec, N)
        return buf

    def _padded(self) -> bool:
        if self.row_bound == "padded":
            return True
        cuda = getattr(self.xp, "cuda", None)
        return self.ops.name == "cuda" and cuda.get_current_stream().is_capturing()

    def run(self, params: dict, S, y, w, loss, dS=None, grads: dict | None = None) -> None:
        """Loss per row into `loss` (N,) = w (-log p(y)); with `dS` (N, F) and `grads`,
        also the errors dL/dS and the head's and tails' gradients (into grads[name]).

        S (N, F): the features; y (N,) int class ids in [0, O); w (N,) weights (0/1 keep
        mask or any float) or None for ones. All arrays on this head's backend.
        """
        ops, spec = self.ops, self.spec
        N = S.shape[0]
        buf = self.buffers(N)
        backward = dS is not None
        V, HL = params["V"], buf.head
        ops.adaptive_partition(y, self.bounds, buf.head_target, buf.idx, buf.counts)
        ops.gemm(S, V.T, HL, 0.0)
        HL += params["c"]
        ops.weighted_xent(HL, buf.head_target, w, loss)  # HL <- w (softmax - onehot)
        if backward:
            ops.gemm(HL.T, S, grads["V"], 0.0)
            ops.bias_grad(HL, grads["c"])
            ops.gemm(HL, V, dS, 0.0)
        padded = self._padded()
        counts = None
        if not padded:  # a device-to-host read (cupy's .get(): a sync, never in a capture)
            counts = buf.counts.get() if self.ops.name == "cuda" else buf.counts
        for i in range(spec.n_clusters):
            R = N if padded else int(counts[i])
            P, Out = params[f"tail{i}_proj"], params[f"tail{i}_out"]
            if R == 0:  # no token of this cluster in the batch
                if backward:
                    grads[f"tail{i}_proj"].fill(0)
                    grads[f"tail{i}_out"].fill(0)
                continue
            h, size = spec.tail_dim(i), spec.tail_size(i)
            idx, count = buf.idx[i], buf.counts[i:i + 1]
            Sg, tg, wg, lg = buf.rows[:R], buf.target[:R], buf.weight[:R], buf.loss[:R]
            Hg = buf.proj[:R * h].reshape(R, h)
            Z = buf.logits[:R * size].reshape(R, size)
            ops.adaptive_gather(S, y, w, idx, count, spec.bounds[i], Sg, tg, wg)
            ops.gemm(Sg, P.T, Hg, 0.0)
            ops.gemm(Hg, Out.T, Z, 0.0)
            ops.weighted_xent(Z, tg, wg, lg)
            ops.adaptive_scatter_add(loss.reshape(N, 1), idx, count, lg.reshape(R, 1))
            if not backward:
                continue
            dHg = buf.dproj[:R * h].reshape(R, h)
            ops.gemm(Z.T, Hg, grads[f"tail{i}_out"], 0.0)
            ops.gemm(Z, Out, dHg, 0.0)
            ops.gemm(dHg.T, Sg, grads[f"tail{i}_proj"], 0.0)
            ops.gemm(dHg, P, Sg, 0.0)  # the rows' errors, over the gathered rows
            ops.adaptive_scatter_add(dS, idx, count, Sg)

    def log_prob(self, params: dict, S) -> Any:
        """Full log-probabilities (N, O), a fresh array, for features S (N, F)."""
        xp, ops, spec = self.xp, self.ops, self.spec
        N = S.shape[0]
        c0, bounds = spec.shortlist, spec.bounds
        lh = xp.empty((N, spec.head_size), dtype=self.dtype)
        ops.gemm(S, params["V"].T, lh, 0.0)
        lh += params["c"]
        _log_softmax_inplace(xp, lh)
        out = xp.empty((N, spec.n_classes), dtype=self.dtype)
        out[:, :c0] = lh[:, :c0]
        for i in range(spec.n_clusters):
            hp = xp.empty((N, spec.tail_dim(i)), dtype=self.dtype)
            ops.gemm(S, params[f"tail{i}_proj"].T, hp, 0.0)
            lt = xp.empty((N, spec.tail_size(i)), dtype=self.dtype)
            ops.gemm(hp, params[f"tail{i}_out"].T, lt, 0.0)
            _log_softmax_inplace(xp, lt)
            lt += lh[:, c0 + i:c0 + i + 1]
            out[:, bounds[i]:bounds[i + 1]] = lt
        return out


def _log_softmax_inplace(xp, z) -> None:
    """z (N, K) <- log_softmax(z) along rows."""
    m = z.max(axis=1, keepdims=True)
    z -= m
    z -= xp.log(xp.exp(z).sum(axis=1, keepdims=True))
