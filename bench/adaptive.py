"""Adaptive softmax against the full softmax and against PyTorch: one word-level step.

A training step (forward + backward, loss summed over tokens) of a token-input Elman RNN
at V = 30,000 classes, H = 512, T = 35, B = 20, float32, on the CPU, with token ids drawn
from a Zipf-distributed synthetic stream (ids sorted by frequency, as the trainer's word
vocabulary puts them), every contender with the same number of threads:

  full      rnn_gpu.RNN(V, H, V)                                  (3 GEMMs of N x H x V)
  adaptive  rnn_gpu.RNN(V, H, V, output="adaptive", cutoffs=(2000, 10000), div_value=4)
  torch     nn.Embedding(V, H) + nn.RNN(H, H) + nn.AdaptiveLogSoftmaxWithLoss(H, V,
            [2000, 10000], div_value=4, head_bias=True), loss summed, backward()

Validated before timed: the adaptive model's float32 loss and gradients against its own
float64 copy, and PyTorch's loss against ours on the same parameters (the embedding is
U^T, the RNN's input weights the identity, so both compute the same function).

    python bench/adaptive.py                         # the issue's figures, 2 threads
    python bench/adaptive.py --threads 1 --reps 5 --vocab 10000 --json out.jsonl

Prints one aligned line per contender (median, min, max of the step time, tokens/s, the
output layer's GFLOP/s) and the ratios; --json appends the rows as JSON lines.
"""
from __future__ import annotations

import os
import sys


def _threads_from_argv(argv) -> int:
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 2


def limit_threads(n: int) -> None:
    """n threads for everyone: BLAS's count (read when NumPy is first imported, so this
    runs before that), and the process pinned to n cores (NumPy's row-parallel loss
    kernels and PyTorch's pool then use no more)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cores[:max(1, n)]))


if __name__ == "__main__":
    limit_threads(_threads_from_argv(sys.argv[1:]))

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rnn_gpu  # noqa: E402
from rnn_gpu.gradcheck import rel_err  # noqa: E402


def zipf_stream(V: int, n: int, s: float, seed: int) -> np.ndarray:
    """n ids in [0, V) with P(id = r) proportional to 1 / (r + 1)^s."""
    p = 1.0 / np.arange(1, V + 1) ** s
    return np.random.default_rng(seed).choice(V, size=n, p=p / p.sum())


def output_flops(model, y: np.ndarray) -> float:
    """Multiply-adds x 2 of the output layer for one step (forward + backward: 3 GEMMs
    per product), counting each cluster's own rows as the adaptive head does."""
    N = y.size
    if model.output != "adaptive":
        return 6.0 * N * model.hidden_size * model.output_size
    spec = model.adaptive
    total = 6.0 * N * spec.features * spec.head_size
    for i in range(spec.n_clusters):
        rows = int(((y >= spec.bounds[i]) & (y < spec.bounds[i + 1])).sum())
        total += 6.0 * rows * spec.tail_dim(i) * (spec.features + spec.tail_size(i))
    return total


def time_it(fn, reps: int, warmup: int) -> list[float]:
    time.sleep(0.25)  # the worker threads of the previous block stop spinning
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def validate_adaptive(model, x, y) -> float:
    """Worst normwise error of the float32 loss and gradients against the float64 model."""
    loss, grads, _ = model.loss_and_grads(x, y)
    m64 = model.to("numpy", dtype="float64")
    l64, g64, _ = m64.loss_and_grads(x, y)
    errs = [abs(loss - l64) / abs(l64)] + [rel_err(grads[k], g64[k]) for k in grads]
    return max(errs)


class TorchModel:
    """Embedding + nn.RNN(tanh) + AdaptiveLogSoftmaxWithLoss(head_bias=True), float32."""

    def __init__(self, torch, V: int, H: int, cutoffs, div_value: float):
        nn = torch.nn
        self.torch = torch
        self.emb = nn.Embedding(V, H)
        self.rnn = nn.RNN(H, H, nonlinearity="tanh")
        self.head = nn.AdaptiveLogSoftmaxWithLoss(H, V, list(cutoffs), div_value=div_value,
                                                  head_bias=True)
        self.params = [*self.emb.parameters(), *self.rnn.parameters(), *self.head.parameters()]

    def copy_from(self, m) -> None:
        """Our parameters into this model: the same function (input weights = I)."""
        t = self.torch
        p = {k: t.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in
             m.params.items()}
        with t.no_grad():
            self.emb.weight.copy_(p["U"].T)
            self.rnn.weight_ih_l0.copy_(t.eye(m.hidden_size))
            self.rnn.bias_ih_l0.copy_(p["b"])
            self.rnn.weight_hh_l0.copy_(p["W"])
            self.rnn.bias_hh_l0.zero_()
            self.head.head.weight.copy_(p["V"])
            self.head.head.bias.copy_(p["c"])
            for i in range(m.adaptive.n_clusters):
                self.head.tail[i][0].weight.copy_(p[f"tail{i}_proj"])
                self.head.tail[i][1].weight.copy_(p[f"tail{i}_out"])

    def step(self, x, y) -> float:
        for q in self.params:
            q.grad = None
        out, _ = self.rnn(self.emb(x))  # (T, B, H)
        loss = -self.head(out.reshape(-1, out.shape[-1]), y.reshape(-1)).output.sum()
        loss.backward()
        return float(loss.detach())


def row(name, times, tokens, flops, **extra) -> dict:
    med = statistics.median(times)
    return {"name": name, "median_s": med, "min_s": min(times), "max_s": max(times),
            "reps": len(times), "tokens_per_s": tokens / med,
            "output_gflops": flops / med / 1e9, **extra}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=30_000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--cutoffs", default="2000,10000")
    ap.add_argument("--div-value", type=float, default=4.0)
    ap.add_argument("--zipf", type=float, default=1.0, help="exponent s of the stream")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="append the rows to this JSON-lines file")
    a = ap.parse_args(argv)
    V, H, T, B = a.vocab, a.hidden, a.bptt, a.batch
    cutoffs = tuple(int(c) for c in a.cutoffs.split(","))

    ids = zipf_stream(V, T * B * (a.reps + a.warmup + 1) + B, a.zipf, seed=0)
    x = ids[:T * B].reshape(T, B)
    y = ids[B:T * B + B].reshape(T, B)  # next tokens
    tail_share = float((y >= cutoffs[0]).mean())
    print(f"# V={V} H={H} T={T} B={B} float32, Zipf s={a.zipf} (tokens outside the "
          f"shortlist: {100 * tail_share:.1f}%), cutoffs={cutoffs}, div_value={a.div_value}, "
          f"{a.threads} threads")

    full = rnn_gpu.RNN(V, H, V, backend="numpy", dtype="float32", seed=0)
    adapt = rnn_gpu.RNN(V, H, V, backend="numpy", dtype="float32", seed=0, output="adaptive",
                        cutoffs=cutoffs, div_value=a.div_value)
    err = validate_adaptive(adapt, x, y)
    ok = err < 1e-3
    print(f"# validate adaptive float32 vs float64: worst normwise error {err:.2e} "
          f"{'ok' if ok else 'FAILED'}")
    if not ok:
        return 1

    rows = []
    t = time_it(lambda: full.loss_and_grads(x, y), a.reps, a.warmup)
    rows.append(row("rnn_gpu full softmax", t, T * B, output_flops(full, y)))
    t = time_it(lambda: adapt.loss_and_grads(x, y), a.reps, a.warmup)
    rows.append(row("rnn_gpu adaptive", t, T * B, output_flops(adapt, y)))

    if not a.no_torch:
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            torch = None
            print("# torch does not import: its row is skipped")
        if torch is not None:
            torch.set_num_threads(a.threads)
            tm = TorchModel(torch, V, H, cutoffs, a.div_value)
            tm.copy_from(adapt)
            xt, yt = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))
            ours = adapt.loss(x, y)[0]
            theirs = tm.step(xt, yt)
            terr = abs(theirs - ours) / abs(ours)
            print(f"# validate torch loss vs ours on the same parameters: {theirs:.6g} vs "
                  f"{ours:.6g}, relative {terr:.1e} {'ok' if terr < 1e-4 else 'FAILED'}")
            if terr >= 1e-4:
                return 1
            t = time_it(lambda: tm.step(xt, yt), a.reps, a.warmup)
            rows.append(row(f"torch {torch.__version__} cpu adaptive", t, T * B,
                            output_flops(adapt, y)))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"# machine load average over the last minute: {load} on {os.cpu_count()} cores")
    print(f"{'contender':<34} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'tokens/s':>10} "
          f"{'out GFLOP/s':>11}")
    for r in rows:
        print(f"{r['name']:<34} {1e3 * r['median_s']:>10.1f} {1e3 * r['min_s']:>8.1f} "
              f"{1e3 * r['max_s']:>8.1f} {r['tokens_per_s']:>10.0f} {r['output_gflops']:>11.1f}")
    base = rows[1]["median_s"]
    ratios = {f"{r['name']} / adaptive": r["median_s"] / base for r in rows if r is not rows[1]}
    for k, v in ratios.items():
        print(f"speedup of adaptive over {k.split(' / ')[0]}: {v:.2f}x")
    if a.json:
        with open(a.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "V": V, "H": H, "T": T, "B": B, "cutoffs": cutoffs,
                                    "div_value": a.div_value, "zipf": a.zipf,
                                    "threads": a.threads, "cores": os.cpu_count(),
                                    "load_avg_1m": load}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
