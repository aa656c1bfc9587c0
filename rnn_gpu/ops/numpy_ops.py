"""The NumPy twins of the engine's kernels, and :class:`NumpyOps`, the kernel set of the
NumPy backend.

Each operation the engine hands to a kernel has a twin here with the same signature and
in-place semantics as its CUDA version (:class:`rnn_gpu.cuda.launchers.CudaOps`); the
CUDA tests compare the two on random inputs.

Conventions: all arrays of one call share one float dtype (float32 or float64), are
C-contiguous, and live on one backend; ``keep`` is a (B,) or (N,) 0/1 float array
(1 = step is real, 0 = masked) or None; ``act`` is "tanh", "sigmoid" or "relu".
Outputs are written in place into the arrays passed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# -------------------------------------------------------------------------------------
# NumPy twins


def act_forward(a, h_prev, keep, act: str) -> None:
    """Hidden activation in place: a <- f(a); masked rows take h_prev.

    a, h_prev: (B, H); a holds U x_t + b + W h_prev on entry, the new state on exit.
    """
    if act == "tanh":
        np.tanh(a, out=a)
    elif act == "sigmoid":  # 1/(1+e^-a) = (1 + tanh(a/2)) / 2, never overflows
        a *= 0.5
        np.tanh(a, out=a)
        a += 1.0
        a *= 0.5
    elif act == "relu":
        np.maximum(a, 0.0, out=a)
    else:
        raise ValueError(f"act: expected tanh, sigmoid or relu, got {act!r}")
    if keep is not None:
        np.copyto(a, h_prev, where=(keep == 0)[:, None])


def _act_grad(s, act: str, out) -> None:
    """out <- f'(a) written through s = f(a)."""
    if act == "tanh":  # 1 - s^2
        np.multiply(s, s, out=out)
        np.subtract(1.0, out, out=out)
    elif act == "sigmoid":  # s (1 - s)
        np.subtract(1.0, s, out=out)
        out *= s
    elif act == "relu":
        np.greater(s, 0, out=out)  # casts True/False to 1/0
    else:
        raise ValueError(f"act: expected tanh, sigmoid or relu, got {act!r}")


def delta_step(carry, e, s, keep, dz, act: str) -> None:
    """Fused recurrent delta update for one step (seed: delta = (W^T delta) * (1 - s^2)).

    carry: (B, H) = W^T dz_{t+1} (the error flowing back from step t+1)
    e:     (B, H) = V^T delta_o_t (the error from this step's output)
    s:     (B, H) = s_t, the state this step produced
    dz:    (B, H) out: dL/d(pre-activation) = (carry + e) * f'(s) * keep
    carry is scratch: on exit it holds (carry + e) * (1 - keep), the part that passes
    through masked steps unchanged, onto which the caller's GEMM adds W^T dz; without a
    mask it holds carry + e, which the caller's GEMM overwrites.
    """
    carry += e
    _act_grad(s, act, dz)
    dz *= carry
    if keep is not None:
        dz *= keep[:, None]
        carry *= (1.0 - keep)[:, None]


def trunc_delta_step(G, s, keep, dz_all, dz_sum, act: str) -> None:
    """Per-output truncated BPTT: one step for all live error streams at once.

    G:      (L, B, H) streams, G[i] = dL_t/ds_j for the outputs t still within their window
    s:      (B, H) = s_j
    dz_all: (L, B, H) out: G * f'(s) * keep
    dz_sum: (B, H) out: dz_all summed over streams (what step j contributes to dW, dU, db)
    With a mask, G is overwritten with G * (1 - keep) (the pass-through part).
    """
    # f'(s) goes in the output's storage until the sum overwrites it
    _streams_times_fprime(G, s, keep, dz_all, dz_sum, act, fp=dz_sum)
    if keep is not None:
        G *= (1.0 - keep)[:, None]


def _streams_times_fprime(g, s, keep, dz_all, dz_sum, act: str, fp) -> None:
    """dz_all (L, B, H) = g f'(s) keep and dz_sum (B, H) its sum over the L streams;
    fp (B, H) is scratch for f'(s) keep (it may be dz_sum: the sum comes last)."""
    _act_grad(s, act, fp)
    if keep is not None:
        fp *= keep[:, None]
    np.multiply(g, fp, out=dz_all)
    np.sum(dz_all, axis=0, out=dz_sum)


def softmax_xent(logits, y, keep, loss) -> None:
    """Softmax + cross-entropy, forward and backward in one pass per row.

    logits: (N, O) in: z; out: dL/dz = softmax(z) - onehot(y), times keep
    y: (N,) int ids; loss: (N,) out: logsumexp(z) - z_y, times keep
    Large inputs are split by rows over the CPU's cores (NumPy releases the GIL).
    """
    _split_rows(_softmax_xent_rows, logits, y, keep, loss)


def _softmax_xent_rows(logits, y, keep, loss) -> None:
    rows = np.arange(logits.shape[0])
    zmax = logits.max(axis=1)
    zy = logits[rows, y] - zmax
    logits -= zmax[:, None]
    np.exp(logits, out=logits)
    ssum = logits.sum(axis=1)
    np.subtract(np.log(ssum), zy, out=loss)
    logits *= (1.0 / ssum)[:, None]
    logits[rows, y] -= 1.0
    if keep is not None:
        loss *= keep
        logits *= keep[:, None]


_POOL = None
_PARALLEL_MIN = 1 << 20  # elements; below this a thread hand-off costs more than it saves


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _split_rows(fn, a, *rest) -> None:
    """Run fn(a, *rest) over row ranges in parallel threads when `a` is large.

    Every argument that is an array with a.shape[0] rows is sliced alike; None passes.
    """
    global _POOL
    n = a.shape[0]
    parts = min(_cores(), n)
    if a.size < _PARALLEL_MIN or parts < 2:
        fn(a, *rest)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="rnn_gpu")
    cuts = [n * i // parts for i in range(parts + 1)]
    sl = lambda v, i: v[cuts[i]:cuts[i + 1]] if v is not None else None  # noqa: E731
    futures = [_POOL.submit(fn, sl(a, i), *(sl(v, i) for v in rest)) for i in range(1, parts)]
    fn(sl(a, 0), *(sl(v, 0) for v in rest))
    for f in futures:
        f.result()


def sigmoid_bce(logits, d, keep, loss) -> None:
    """Sigmoid + binary cross-entropy (seed 002 eq. 16), in one pass per row.

    logits: (N, O) in: z; out: sigmoid(z) - d, times keep; d: (N, O) in [0, 1]
    loss: (N,) out: sum_k d softplus(-z) + (1 - d) softplus(z) = softplus(z) - d z
    """
    _split_rows(_sigmoid_bce_rows, logits, d, keep, loss)


def _sigmoid_bce_rows(logits, d, keep, loss) -> None:
    # softplus(z) = max(z, 0) + log1p(exp(-|z|)): exact and never overflows
    t = np.abs(logits)
    np.negative(t, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)
    t += np.maximum(logits, 0.0)
    t -= d * logits
    np.sum(t, axis=1, out=loss)
    np.multiply(logits, 0.5, out=logits)  # sigmoid(z) = (1 + tanh(z/2)) / 2
    np.tanh(logits, out=logits)
    logits += 1.0
    logits *= 0.5
    logits -= d
    if keep is not None:
        loss *= keep
        logits *= keep[:, None]


def squared_error(logits, d, keep, loss) -> None:
    """Linear output + squared error 1/2 sum_k (z - d)^2 (seeds 000, 002).

    logits: (N, O) in: z; out: z - d, times keep; loss: (N,) out
    """
    logits -= d
    np.einsum("nk,nk->n", logits, logits, out=loss)
    loss *= 0.5
    if keep is not None:
        loss *= keep
        logits *= keep[:, None]


def outer_accum(dW, a, b, accumulate: bool) -> None:
    """Sum of outer products over rows: dW (+)= a^T b, a (N, M), b (N, K), dW (M, K).

    dW = sum_t delta_t s_{t-1}^T and dV = sum_t delta_o_t s_t^T, with all T*B rows at once.
    """
    if accumulate:
        dW += a.T @ b
    else:
        np.matmul(a.T, b, out=dW)


def embed_gather(UT, ids, bias, out) -> None:
    """Token input: out[n] = UT[ids[n]] + bias (a column gather of U; no one-hot).

    UT: (I, H) the transpose of U; ids: (N,) int; bias: (H,); out: (N, H)
    """
    np.take(UT, ids, axis=0, out=out)
    out += bias


def embed_scatter_add(dUT, ids, dz) -> None:
    """Token input backward: dUT[ids[n]] += dz[n]; repeated ids add up.

    dUT: (I, H) the transpose of dU; ids: (N,) int; dz: (N, H)
    """
    n = ids.shape[0]
    if n == 0:
        return
    order = np.argsort(ids, kind="stable")
    sid = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sid[1:] != sid[:-1])))
    if 2 * len(starts) > n:  # mostly distinct ids: one flat scatter-add over all elements
        H = dz.shape[1]
        flat = (ids[:, None] * H + np.arange(H)).reshape(-1)
        np.add.at(dUT.reshape(-1), flat, dz.reshape(-1))
        return
    # many repeats: sum each id's rows as one contiguous block after a stable sort
    d = dz[order]
    bounds = np.append(starts, n)
    for i in range(len(starts)):
        dUT[sid[starts[i]]] += d[bounds[i]:bounds[i + 1]].sum(axis=0)


def bias_grad(dz, out) -> None:
    """out (H,) = dz (N, H) summed over rows."""
    np.sum(dz, axis=0, out=out)


# Adaptive softmax (rnn_gpu.heads.adaptive): the cluster partition, the row gather and
# scatter of one cluster, and the loss with a float weight per row.


def adaptive_partition(y, bounds, head_target, idx, counts) -> None:
    """Rows by cluster: a stable partition of 0..N-1 by the cluster of each target.

    y: (N,) int class ids in [0, O); bounds: (n+1,) int64 = c_0, c_1, ..., c_{n-1}, O
    head_target: (N,) int32 out: y for the shortlist (y < c_0), c_0 + i for cluster i
    idx: (n, N) int32 out: idx[i, :counts[i]] = the rows of cluster i, ascending (the rest
    is not written); counts: (n,) int32 out
    """
    n = bounds.shape[0] - 1
    cluster = np.searchsorted(bounds, y, side="right") - 1  # -1: the shortlist
    np.copyto(head_target, np.where(cluster < 0, y, bounds[0] + cluster), casting="unsafe")
    for i in range(n):
        rows = np.flatnonzero(cluster == i)
        counts[i] = rows.size
        idx[i, :rows.size] = rows


def adaptive_gather(S, y, w, idx, count, lo: int, Sg, tg, wg) -> None:
    """One cluster's rows, gathered: for r < R (R = Sg's rows) and k = min(count, R),

    Sg[r] = S[idx[r]], tg[r] = y[idx[r]] - lo, wg[r] = w[idx[r]] (1 if w is None) for r < k;
    Sg[r] = 0, tg[r] = 0, wg[r] = 0 for k <= r < R (the padding of a fixed-size buffer).
    S: (N, F); y: (N,) int; w: (N,) or None; idx: (N,) int32; count: (1,) int32 (on the
    device, so that no host read is needed); Sg: (R, F); tg: (R,) int32; wg: (R,)
    """
    k = min(int(count[0]), Sg.shape[0])
    rows = idx[:k]
    np.take(S, rows, axis=0, out=Sg[:k])
    Sg[k:] = 0
    np.subtract(y[rows], lo, out=tg[:k], casting="unsafe")
    tg[k:] = 0
    if w is None:
        wg[:k] = 1
    else:
        np.take(w, rows, out=wg[:k])
    wg[k:] = 0


def adaptive_scatter_add(dS, idx, count, dSg) -> None:
    """dS[idx[r]] += dSg[r] for r < min(count, R), R = dSg's rows. The rows of a cluster
    are distinct, so this is a plain (deterministic) add. dS: (N, F); dSg: (R, F)."""
    k = min(int(count[0]), dSg.shape[0])
    dS[idx[:k]] += dSg[:k]


def weighted_xent(logits, y, w, loss) -> None:
    """Softmax + cross-entropy with a float weight per row, in place, one pass per row.

    logits: (N, K) in: z; out: w (softmax(z) - onehot(y)); y: (N,) int ids
    w: (N,) weights or None (ones); loss: (N,) out: w (logsumexp(z) - z_y)
    """
    _split_rows(_softmax_xent_rows, logits, y, w, loss)


# -------------------------------------------------------------------------------------
# Fused recurrent steps: a step's recurrent product and its pointwise update as one
# operation (one launch per step on the GPU, kernels/rnn_recur.cu)


def recur_forward(s_prev, WT, s_next, keep, act: str) -> None:
    """One forward step: s_next <- f(s_next + s_prev @ WT); masked rows take s_prev.

    s_prev, s_next: (B, H), s_next holding U x_t + b on entry; WT: (H, H), W^T as the
    engine passes it (a transposed view of W, or any (H, H) array).
    """
    s_next += s_prev @ WT
    act_forward(s_next, s_prev, keep, act)


def recur_backward(dz_next, W, carry, e, s, keep, dz, act: str) -> None:
    """One step of full BPTT: c = dz_next @ W + carry + e, dz = c * f'(s) * keep.

    dz_next: (B, H) dz of step t+1, or None at the first step taken (t = T-1)
    W:       (H, H)
    carry:   (B, H) the part that passes through masked steps: zeros before the first
             step; on exit c * (1 - keep). Only with a mask; None (or untouched) without.
    e, s:    (B, H) V^T delta_o_t and s_t; dz: (B, H) out, may be the same array as e
    A loop over t = T-1..0 gives delta_step's dz for every step (engine.backward_step),
    with carry holding only the pass-through, never the product.
    """
    c = np.zeros_like(e) if dz_next is None else dz_next @ W
    if keep is not None:
        c += carry
    c += e  # e is used before dz, which may be the same array, is written
    _act_grad(s, act, dz)
    dz *= c
    if keep is not None:
        dz *= keep[:, None]
        np.multiply(c, (1.0 - keep)[:, None], out=carry)


def recur_trunc_backward(dz_prev, W, G, fresh: int, e, s, keep, dz_all, dz_sum,
                         act: str) -> None:
    """One step j of per-output truncated BPTT for all L live error streams.

    dz_prev: (L, B, H) dz_all of step j+1, or None at the first step taken (j = T-1)
    G:       (L, B, H) the masked pass-through of each stream: zeros before the first
             step; on exit g * (1 - keep). Only with a mask; None (or untouched) without.
    fresh:   the slot, 0 <= fresh < L, where output j's stream starts (j % L): g = e
             there, whatever dz_prev and G hold; elsewhere g = dz_prev @ W + G
    e, s:    (B, H) V^T delta_o_j and s_j
    dz_all:  (L, B, H) out: g * f'(s) * keep; must not be dz_prev
    dz_sum:  (B, H) out: dz_all summed over streams; may be the same array as e
    """
    L, B, H = dz_all.shape
    if dz_prev is None:
        g = np.zeros((L, B, H), dtype=e.dtype)
    else:
        g = (dz_prev.reshape(L * B, H) @ W).reshape(L, B, H)
    if keep is not None:
        g += G
    g[fresh] = e
    _streams_times_fprime(g, s, keep, dz_all, dz_sum, act, fp=np.empty_like(s))
    if keep is not None:
        np.multiply(g, (1.0 - keep)[:, None], out=G)


# -------------------------------------------------------------------------------------
# Gated cells (kernels/rnn_gates.cu): one fused pointwise operation per step for all the
# gates forward, one for all the gate derivatives backward. The recurrent product is the
# caller's GEMM. Gate blocks are PyTorch's: GRU [r, z, n], LSTM [i, f, g, o], each H wide.


def _sigmoid_(a) -> None:
    """a <- 1 / (1 + e^-a) in place, as (1 + tanh(a/2)) / 2 (never overflows)."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1.0
    a *= 0.5


def _pass_masked(new, old, keep) -> None:
    if keep is not None:
        np.copyto(new, old, where=(keep == 0)[:, None])


_GATE_AFFINE: dict = {}


def _gate_affine(H: int, dtype):
    """(scale, offset) over an LSTM's 4H gate columns: 1/2 and 1/2 on the sigmoid gates
    i, f, o, 1 and 0 on g, so that scale * tanh(scale * a) + offset is sigma(a) (as
    (1 + tanh(a/2)) / 2, the same rounding) on i, f, o and tanh(a) on g."""
    key = (H, np.dtype(dtype).char)
    got = _GATE_AFFINE.get(key)
    if got is None:
        scale = np.full(4 * H, 0.5, dtype=dtype)
        scale[2 * H:3 * H] = 1.0
        offset = np.full(4 * H, 0.5, dtype=dtype)
        offset[2 * H:3 * H] = 0.0
        got = _GATE_AFFINE[key] = (scale, offset)
    return got


def lstm_forward(gates, c_prev, c_next, h_prev, h_next, keep) -> None:
    """One LSTM step after its GEMM (torch.nn.LSTM's equations).

    gates:  (B, 4H) in: the pre-activations U x + b + W h_prev of [i, f, g, o];
            out: the activations sigma(i), sigma(f), tanh(g), sigma(o)
    c_prev, h_prev: (B, H) the step's input state; c_next, h_next: (B, H) out:
            c' = f c + i g, h' = o tanh(c'); masked rows take c_prev and h_prev
    """
    H = c_prev.shape[1]
    scale, offset = _gate_affine(H, gates.dtype)
    gates *= scale  # all four gates in three passes: sigma = (1 + tanh(a/2)) / 2
    np.tanh(gates, out=gates)
    gates *= scale
    gates += offset
    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
    np.multiply(f, c_prev, out=c_next)
    np.multiply(i, g, out=h_next)  # h_next is scratch until its own value below
    c_next += h_next
    np.tanh(c_next, out=h_next)
    h_next *= o
    _pass_masked(c_next, c_prev, keep)
    _pass_masked(h_next, h_prev, keep)


def lstm_backward(G, DC, gates, c_prev, c_next, keep, e, fresh: int, dG_all) -> None:
    """One LSTM step of BPTT for all L live error streams (L = 1: full BPTT).

    G:      (L, B, H) in: dL/dh' of each stream (plus e in slot `fresh` when e is given);
            out, with a mask: the part that passes through masked rows, dh' (1 - keep),
            onto which the caller's GEMM adds dG @ W (without a mask G is left for the
            GEMM to overwrite)
    DC:     (L, B, H) in: dL/dc' of each stream; out: dL/dc, f dc_total (DC on masked rows)
    gates:  (B, 4H) in: the step's activations [i, f, g, o]; out: dL/d(pre-activations)
            summed over the streams (what the step adds to dU, dW and b)
    c_prev, c_next: (B, H) the step's cell states; keep: (B,) or None
    e:      (B, H) or None: the error from this step's output, added to stream `fresh`
    dG_all: (L, B, 4H) out: each stream's dL/d(pre-activations), for the GEMM with W;
            None when L = 1 (the GEMM then reads `gates`)

    With tc = tanh(c'), dc_total = DC + dh' o (1 - tc^2):
    do = dh' tc o (1 - o), di = dc_total g i (1 - i), dg = dc_total i (1 - g^2),
    df = dc_total c f (1 - f).
    """
    L, B, H = G.shape
    if e is not None:
        G[fresh] += e
    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
    tc = np.tanh(c_next)
    a_c = o * (1.0 - tc * tc)  # dc_total = DC + dh' a_c
    b_o = tc * o * (1.0 - o)  # do = dh' b_o
    b_i = g * i * (1.0 - i)  # di = dc_total b_i
    b_g = i * (1.0 - g * g)  # dg = dc_total b_g
    b_f = c_prev * f * (1.0 - f)  # df = dc_total b_f
    f = f.copy()  # gates is overwritten below
    if keep is not None:
        k = keep[:, None]
        for coef in (b_o, b_i, b_g, b_f):
            coef *= k
    dct = DC + G * a_c  # (L, B, H)
    out = gates.reshape(1, B, 4 * H) if dG_all is None else dG_all
    for n, coef in ((0, b_i), (1, b_f), (2, b_g)):
        np.multiply(dct, coef, out=out[:, :, n * H:(n + 1) * H])
    np.multiply(G, b_o, out=out[:, :, 3 * H:])
    if dG_all is not None:
        np.sum(dG_all, axis=0, out=gates)
    if keep is None:
        np.multiply(dct, f, out=DC)
    else:
        k = keep[:, None]
        dct *= f
        np.copyto(DC, dct, where=(k != 0)[None])
        G *= 1.0 - k


def gru_forward(gates, A, bh, h_prev, h_next, hn, keep) -> None:
    """One GRU step after its GEMM (torch.nn.GRU's equations).

    gates:  (B, 3H) in: U x + b (bias_ih) of [r, z, n]; out: the activations r, z, n
    A:      (B, 3H) in: h_prev W^T (the GEMM's product, without bh)
    bh:     (3H,) bias_hh
    hn:     (B, H) out: W_n h_prev + bh_n, kept for backward
    h_next: (B, H) out: (1 - z) n + z h_prev with r = sigma(.. + W_r h + bh_r),
            z = sigma(.. + W_z h + bh_z), n = tanh(U_n x + b_n + r (W_n h + bh_n));
            masked rows take h_prev
    """
    H = h_prev.shape[1]
    rz = gates[:, :2 * H]
    rz += A[:, :2 * H]
    rz += bh[:2 * H]
    _sigmoid_(rz)
    np.add(A[:, 2 * H:], bh[2 * H:], out=hn)
    r, z, n = (gates[:, k * H:(k + 1) * H] for k in range(3))
    np.multiply(r, hn, out=h_next)
    n += h_next
    np.tanh(n, out=n)
    np.subtract(h_prev, n, out=h_next)  # h' = n + z (h - n)
    h_next *= z
    h_next += n
    _pass_masked(h_next, h_prev, keep)


def gru_backward(G, gates, hn, h_prev, keep, e, fresh: int, dGh_all, dGh_sum,
                 dGx_all=None) -> None:
    """One GRU step of BPTT for all L live error streams (L = 1: full BPTT).

    G:       (L, B, H) in: dL/dh' of each stream (plus e in slot `fresh` when e is given);
             out: the part that does not go through W, dh' z (dh' on masked rows), onto
             which the caller's GEMM adds dGh @ W
    gates:   (B, 3H) in: the step's activations [r, z, n]; out: dL/d(U x + b) summed over
             the streams, [dr, dz, dn] at the pre-activations (for dU and db)
    hn:      (B, H) W_n h + bh_n of the forward step; h_prev: (B, H); keep: (B,) or None
    e:       (B, H) or None: the error from this step's output, added to stream `fresh`
    dGh_all: (L, B, 3H) out: each stream's dL/d(W h + bh) = [dr, dz, r dn], for the GEMM
             with W; None when L = 1 (the GEMM then reads dGh_sum)
    dGh_sum: (B, 3H) out: dGh summed over the streams (for dW and bh)
    dGx_all: (L, B, 3H) out, or None: each stream's dL/d(U x + b), [dr, dz, dn] (what a
             truncated stack sends to the layer below through U)

    dn = dh' (1 - z)(1 - n^2), dz = dh' (h - n) z (1 - z), dr = dn hn r (1 - r).
    """
    L, B, H = G.shape
    if e is not None:
        G[fresh] += e
    r, z, n = (gates[:, k * H:(k + 1) * H] for k in range(3))
    a_n = (1.0 - z) * (1.0 - n * n)  # dn = dh' a_n
    a_z = (h_prev - n) * z * (1.0 - z)  # dz = dh' a_z
    a_r = hn * r * (1.0 - r)  # dr = dn a_r
    r = r.copy()
    pass_h = z.copy()  # the part of dh' that reaches h directly
    if keep is not None:
        k = keep[:, None]
        a_n *= k
        a_z *= k
        pass_h *= k
        pass_h += 1.0 - k
    dn = G * a_n  # (L, B, H)
    dz = G * a_z
    out = dGh_sum.reshape(1, B, 3 * H) if dGh_all is None else dGh_all
    np.multiply(dn, a_r, out=out[:, :, :H])
    out[:, :, H:2 * H] = dz
    np.multiply(dn, r, out=out[:, :, 2 * H:])
    if dGh_all is not None:
        np.sum(dGh_all, axis=0, out=dGh_sum)
    gates[:, :2 * H] = dGh_sum[:, :2 * H]
    np.sum(dn, axis=0, out=gates[:, 2 * H:])
    if dGx_all is not None:
        dGx_all[:, :, :2 * H] = out[:, :, :2 * H]
        dGx_all[:, :, 2 * H:] = dn
    G *= pass_h


# -------------------------------------------------------------------------------------
# The kernel set


class NumpyOps:
    """The kernel set of the NumPy backend: the twins above, and a GEMM with the CUDA
    side's contract (``C <- A @ B + beta C``, no allocation on the hot path)."""

    name = "numpy"
    act_forward = staticmethod(act_forward)
    delta_step = staticmethod(delta_step)
    trunc_delta_step = staticmethod(trunc_delta_step)
    softmax_xent = staticmethod(softmax_xent)
    sigmoid_bce = staticmethod(sigmoid_bce)
    squared_error = staticmethod(squared_error)
    outer_accum = staticmethod(outer_accum)
    embed_gather = staticmethod(embed_gather)
    embed_scatter_add = staticmethod(embed_scatter_add)
    bias_grad = staticmethod(bias_grad)
    recur_forward = staticmethod(recur_forward)
    recur_backward = staticmethod(recur_backward)
    recur_trunc_backward = staticmethod(recur_trunc_backward)
    adaptive_partition = staticmethod(adaptive_partition)
    adaptive_gather = staticmethod(adaptive_gather)
    adaptive_scatter_add = staticmethod(adaptive_scatter_add)
    weighted_xent = staticmethod(weighted_xent)
    lstm_forward = staticmethod(lstm_forward)
    lstm_backward = staticmethod(lstm_backward)
    gru_forward = staticmethod(gru_forward)
    gru_backward = staticmethod(gru_backward)

    def __init__(self):
        self._scratch: dict[tuple, np.ndarray] = {}

    @staticmethod
    def recurrence(B: int, H: int, dtype) -> str:
        """The per-step recurrence on the CPU: NumPy's GEMM plus the pointwise twin."""
        return "gemm"

    def gemm(self, A, B, C, beta: float) -> None:
        """C (m, n) <- A (m, k) @ B (k, n) + beta C, beta 0 or 1 (A, B may be transposed
        views). With beta = 1 the product goes through a scratch buffer kept per shape."""
        if not beta:
            np.matmul(A, B, out=C)
            return
        key = (C.shape, C.dtype.char)
        tmp = self._scratch.get(key)
        if tmp is None:
            tmp = self._scratch[key] = np.empty(C.shape, C.dtype)
        np.matmul(A, B, out=tmp)
        C += tmp

    def __repr__(self) -> str:
        return "NumpyOps()"
