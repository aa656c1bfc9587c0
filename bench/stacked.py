"""Stacked and bidirectional RNNs on the CPU: rnn-gpu's ``loss_and_grads`` against
PyTorch's ``nn.Embedding + nn.RNN(num_layers=...) + nn.Linear`` with summed
cross-entropy, forward + backward, side by side with the same threads.

    python bench/stacked.py --threads 2
    python bench/stacked.py --threads 2 --reps 30 --configs 2x256,3x512,2x256bi

Each configuration is T = 64, B = 32, token ids with a vocabulary of 65, float32. Both
models hold the same weights; before timing, the loss and every gradient are compared
(relative error printed; a mismatch above 1e-3 stops the run). Then warm-up, and the two
implementations timed in alternating blocks (so a slow patch of the machine hurts
both alike): median with min and max, the ratio of medians, and GFLOP/s from the napkin
math below. Timing is in alternating blocks, each after a pause and an untimed call
(rnn_gpu.bench.timing.alternating_blocks): timed straight after each other, each side's
calls would share the cores with the other's still-spinning worker threads.

Napkin math per step (N = T*B rows, L layers, D directions, I0 = 65 ids):
forward  2 N (D H) (D H) (L-1) [input GEMMs above layer 0] + 2 N H H L D [recurrence]
         + 2 N (D H) O [output layer]; backward about twice the forward.
"""
from __future__ import annotations

import argparse
import os
import sys


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both (default 2)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions of each (default 20)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--configs", default="2x256,3x512,2x256bi,3x512bi",
                    help="comma-separated LAYERSxHIDDEN[bi] (default 2x256,3x512,2x256bi,3x512bi)")
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=65)
    return ap.parse_args()


ARGS = _args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)  # before NumPy loads its BLAS

import numpy as np  # noqa: E402

try:
    from threadpoolctl import threadpool_limits  # noqa: E402
except ImportError:  # the environment variables above do it
    threadpool_limits = None

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import rnn_gpu  # noqa: E402
from rnn_gpu.bench.timing import alternating_blocks, wall_timer  # noqa: E402
from rnn_gpu.reference import cell_name  # noqa: E402


def _parse(spec: str):
    bi = spec.endswith("bi")
    layers, hidden = spec[:-2 if bi else None].split("x")
    return int(layers), int(hidden), bi


def _torch_model(torch, m, V, H, layers, bi):
    emb = torch.nn.Embedding(V, H)
    rnn = torch.nn.RNN(H, H, num_layers=layers, bidirectional=bi)
    lin = torch.nn.Linear(H * (2 if bi else 1), V)
    # rnn-gpu's layer 0 reads ids through U (a gather), PyTorch through an embedding
    # followed by weight_ih_l0: make both compute the same function (emb = U^T, ih = I).
    with torch.no_grad():
        for d, sfx in enumerate(("", "_reverse")[:2 if bi else 1]):
            for l in range(layers):
                U = np.asarray(m.params[cell_name("U", l, d)])
                ih = getattr(rnn, f"weight_ih_l{l}{sfx}")
                ih.copy_(torch.eye(H) if l == 0 else torch.tensor(U))
                getattr(rnn, f"weight_hh_l{l}{sfx}").copy_(torch.tensor(np.asarray(m.params[cell_name("W", l, d)])))
                getattr(rnn, f"bias_ih_l{l}{sfx}").copy_(torch.tensor(np.asarray(m.params[cell_name("b", l, d)])))
                getattr(rnn, f"bias_hh_l{l}{sfx}").zero_()
        # two directions of layer 0 need two embeddings: PyTorch's one embedding feeds both,
        # so for the check layer 0's reverse U is set equal to its forward U
        emb.weight.copy_(torch.tensor(np.asarray(m.params["U"]).T))
        lin.weight.copy_(torch.tensor(np.asarray(m.params["V"])))
        lin.bias.copy_(torch.tensor(np.asarray(m.params["c"])))
    return emb, rnn, lin


def _flops(T, B, V, H, layers, D):
    N = T * B
    fwd = 2 * N * (D * H) * H * D * (layers - 1) + 2 * N * H * H * layers * D + 2 * N * D * H * V
    return 3 * fwd


def main() -> int:
    import torch

    torch.set_num_threads(ARGS.threads)
    limiter = threadpool_limits(ARGS.threads) if threadpool_limits else None  # noqa: F841
    T, B, V = ARGS.T, ARGS.B, ARGS.vocab
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))
    xt, yt = torch.tensor(x), torch.tensor(y).reshape(-1)
    print(f"# T={T} B={B} vocab={V} float32, {ARGS.threads} threads each; numpy "
          f"{np.__version__}, torch {torch.__version__}; {ARGS.reps} reps in alternating blocks")
    print(f"{'config':>10} {'rnn-gpu ms (min-max)':>24} {'torch ms (min-max)':>24} "
          f"{'speedup':>8} {'GFLOP/s':>15} {'max rel err':>12}")
    worst = 1.0e9
    for spec in ARGS.configs.split(","):
        layers, H, bi = _parse(spec)
        D = 2 if bi else 1
        m = rnn_gpu.RNN(V, H, V, num_layers=layers, bidirectional=bi, backend="numpy",
                        dtype="float32", seed=0)
        if bi:  # see _torch_model: one embedding feeds both directions in PyTorch
            m.params["U_reverse"][...] = m.params["U"]
        emb, rnn, lin = _torch_model(torch, m, V, H, layers, bi)
        params = list(emb.parameters()) + list(rnn.parameters()) + list(lin.parameters())

        def torch_step():
            for p in params:
                p.grad = None
            out, _ = rnn(emb(xt))
            loss = torch.nn.functional.cross_entropy(lin(out).reshape(T * B, V), yt,
                                                     reduction="sum")
            loss.backward()
            return loss

        def ours_step():
            return m.loss_and_grads(x, y)

        # validate before timing: the same loss and gradients
        tl = torch_step().item()
        loss, g, _ = ours_step()
        errs = [abs(loss - tl) / abs(tl),
                float(np.abs(g["V"] - lin.weight.grad.numpy()).max() / np.abs(lin.weight.grad.numpy()).max())]
        for l in range(1, layers):
            for d, sfx in enumerate(("", "_reverse")[:D]):
                tg = getattr(rnn, f"weight_ih_l{l}{sfx}").grad.numpy()
                errs.append(float(np.abs(g[cell_name("U", l, d)] - tg).max() / np.abs(tg).max()))
        for l in range(layers):
            for d, sfx in enumerate(("", "_reverse")[:D]):
                tg = getattr(rnn, f"weight_hh_l{l}{sfx}").grad.numpy()
                errs.append(float(np.abs(g[cell_name("W", l, d)] - tg).max() / np.abs(tg).max()))
        if not bi:  # U of layer 0 is the embedding's gradient (through ih = I)
            tg = emb.weight.grad.numpy()
            errs.append(float(np.abs(np.asarray(g["U"]).T - tg).max() / np.abs(tg).max()))
        err = max(errs)
        if err > 1e-3:
            print(f"{spec}: rnn-gpu and PyTorch disagree (max rel err {err:.2e}); not timing")
            return 1
        # alternating blocks, each after a pause and an untimed call: OpenBLAS's and
        # PyTorch's worker threads spin after a call (rnn_gpu.bench.timing)
        stats = alternating_blocks({"ours": (ours_step, wall_timer),
                                    "torch": (torch_step, wall_timer)}, ARGS.reps, ARGS.warmup)
        ts = {k: [t * 1e-3 for t in st.times_ms] for k, st in stats.items()}
        med = {k: float(np.median(v)) for k, v in ts.items()}
        cell = lambda k: f"{1e3 * med[k]:8.2f} ({1e3 * min(ts[k]):.1f}-{1e3 * max(ts[k]):.1f})"  # noqa: E731
        fl = _flops(T, B, V, H, layers, D)
        ratio = med["torch"] / med["ours"]
        worst = min(worst, ratio)
        print(f"{spec:>10} {cell('ours'):>24} {cell('torch'):>24} {ratio:7.2f}x "
              f"{fl / med['ours'] / 1e9:6.1f} /{fl / med['torch'] / 1e9:6.1f} {err:12.1e}")
    print(f"# smallest speedup (torch median / rnn-gpu median): {worst:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
