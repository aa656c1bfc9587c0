"""Gated cells on the CPU: a training step of rnn-gpu's GRU and LSTM against PyTorch's
``nn.Embedding + nn.GRU / nn.LSTM + nn.Linear`` with summed cross-entropy, forward +
backward, side by side with the same threads.

    python bench/cells.py --threads 2
    python bench/cells.py --threads 2 --reps 15 --configs gru1,lstm2 --shapes 64x32x256x65
    python bench/cells.py --device cuda     # CuPy backend against PyTorch with cuDNN

Each configuration is a cell (gru, lstm) and a number of layers; each shape is
TxBxHxVOCAB (default 64x32x256x65 and 35x20x650x10000), token ids, float32. The two
models compute the same function: PyTorch in its usual form (an embedding of width H,
then the cell's input weights W_ih), rnn-gpu with the embedding folded into layer 0's U
(U = W_ih E^T, a gather of U's columns per token), so PyTorch's layer 0 does one input
GEMM (2 N H G H flops) that rnn-gpu does not. Before timing, the loss and the gradients
of every recurrent weight are compared (relative error printed; above 1e-3 stops the
run). Then warm-up, and the two timed in alternating blocks (each block after a pause
and an untimed call, so that neither runs while the other's worker threads still spin):
median with min and max, the ratio of medians.

With ``--device cuda`` rnn-gpu runs on the CuPy backend, as its trainer does (the step
captured as a CUDA Graph and replayed; the eager step is timed too, as ``eager``), and
PyTorch on the GPU, where nn.GRU and nn.LSTM run cuDNN; every timed call ends with its
loss read back, so each includes its device work.
"""
from __future__ import annotations

import argparse
import os
import sys


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both (default 2)")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions of each (default 15)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: NumPy against PyTorch CPU (default); cuda: CuPy against cuDNN")
    ap.add_argument("--configs", default="gru1,gru2,lstm1,lstm2",
                    help="comma-separated CELL+LAYERS (default gru1,gru2,lstm1,lstm2)")
    ap.add_argument("--shapes", default="64x32x256x65,35x20x650x10000",
                    help="comma-separated TxBxHxVOCAB (default 64x32x256x65,35x20x650x10000)")
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


def _torch_model(torch, m, cell, V, H, layers, device):
    """PyTorch's model, and rnn-gpu's weights set to compute the same function."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(V, H)
    net = (torch.nn.GRU if cell == "gru" else torch.nn.LSTM)(H, H, num_layers=layers)
    lin = torch.nn.Linear(H, V)
    with torch.no_grad():
        for l in range(layers):
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(net, f"{w}_l{l}").uniform_(-0.5 / np.sqrt(H), 0.5 / np.sqrt(H))
    get = lambda w, l: getattr(net, f"{w}_l{l}").detach().numpy()  # noqa: E731
    p = {"U": get("weight_ih", 0) @ emb.weight.detach().numpy().T,  # (G H, V): E folded in
         "V": lin.weight.detach().numpy(), "c": lin.bias.detach().numpy()}
    for l in range(layers):
        if l:
            p[cell_name("U", l, 0)] = get("weight_ih", l)
        p[cell_name("W", l, 0)] = get("weight_hh", l)
        if cell == "gru":
            p[cell_name("b", l, 0)] = get("bias_ih", l)
            p[cell_name("bh", l, 0)] = get("bias_hh", l)
        else:
            p[cell_name("b", l, 0)] = get("bias_ih", l) + get("bias_hh", l)
    m.load_params(p)
    return emb.to(device), net.to(device), lin.to(device)


def _flops(T, B, V, H, layers, G):
    """rnn-gpu's step: recurrent and input GEMMs (layers above 0), the output layer; x3."""
    N = T * B
    return 3 * (2 * N * H * G * H * (2 * layers - 1) + 2 * N * H * V)


def main() -> int:
    import torch

    torch.set_num_threads(ARGS.threads)
    limiter = threadpool_limits(ARGS.threads) if threadpool_limits else None  # noqa: F841
    gpu = ARGS.device == "cuda"
    backend = "cupy" if gpu else "numpy"
    if gpu:
        import cupy as cp

        if not torch.cuda.is_available():
            print("--device cuda: PyTorch sees no CUDA device")
            return 1
        where = f"GPU {torch.cuda.get_device_name(0)}, cuDNN {torch.backends.cudnn.version()}"
    else:
        where = f"{ARGS.threads} threads each"
    print(f"# float32, {where}; numpy {np.__version__}, torch "
          f"{torch.__version__}; {ARGS.reps} reps in alternating blocks")
    print(f"{'shape':>16} {'config':>7} {'rnn-gpu ms (min-max)':>24} {'torch ms (min-max)':>24} "
          f"{'speedup':>8} {'GFLOP/s':>8} {'max rel err':>12}")
    worst = 1.0e9
    for shape in ARGS.shapes.split(","):
        T, B, H, V = (int(v) for v in shape.split("x"))
        rng = np.random.default_rng(0)
        x = rng.integers(0, V, (T, B))
        y = rng.integers(0, V, (T, B))
        xt, yt = torch.tensor(x, device=ARGS.device), torch.tensor(y, device=ARGS.device).reshape(-1)
        xd, yd = (cp.asarray(x), cp.asarray(y)) if gpu else (x, y)
        for spec in ARGS.configs.split(","):
            cell, layers = spec.rstrip("0123456789"), int(spec.lstrip("grulstm"))
            G = 3 if cell == "gru" else 4
            m = rnn_gpu.RNN(V, H, V, cell=cell, num_layers=layers, backend=backend,
                            dtype="float32", seed=0)
            emb, net, lin = _torch_model(torch, m, cell, V, H, layers, ARGS.device)
            params = list(emb.parameters()) + list(net.parameters()) + list(lin.parameters())

            def torch_step():
                for q in params:
                    q.grad = None
                out, _ = net(emb(xt))
                loss = torch.nn.functional.cross_entropy(lin(out).reshape(T * B, V), yt,
                                                         reduction="sum")
                loss.backward()
                return loss

            def ours_step():
                return m.loss_and_grads(xd, yd)

            steps = {"ours": ours_step, "torch": lambda: torch_step().item()}
            if gpu:  # the trainer's step: captured once, replayed
                graphed = m.captured_step(T, B)
                steps = {"ours": lambda: graphed(m.params, xd, yd)[0], "eager": ours_step,
                         "torch": steps["torch"]}

            tl = torch_step().item()
            loss, g, _ = ours_step()
            g = {k: rnn_gpu.to_numpy(v) for k, v in g.items()}
            errs = [abs(loss - tl) / abs(tl)]
            for l in range(layers):
                tg = getattr(net, f"weight_hh_l{l}").grad.cpu().numpy()
                errs.append(float(np.abs(g[cell_name("W", l, 0)] - tg).max() / np.abs(tg).max()))
                if l:
                    tg = getattr(net, f"weight_ih_l{l}").grad.cpu().numpy()
                    errs.append(float(np.abs(g[cell_name("U", l, 0)] - tg).max()
                                      / np.abs(tg).max()))
            tg = lin.weight.grad.cpu().numpy()
            errs.append(float(np.abs(g["V"] - tg).max() / np.abs(tg).max()))
            err = max(errs)
            if err > 1e-3:
                print(f"{shape} {spec}: rnn-gpu and PyTorch disagree (max rel err {err:.2e}); "
                      "not timing")
                return 1
            # alternating blocks, each after a pause and an untimed call (see
            # rnn_gpu.bench.timing.alternating_blocks: OpenBLAS's and PyTorch's worker
            # threads spin after a call, and would share the cores with the next one)
            stats = alternating_blocks({k: (fn, wall_timer) for k, fn in steps.items()},
                                       ARGS.reps, ARGS.warmup)
            ts = {k: [t * 1e-3 for t in st.times_ms] for k, st in stats.items()}
            med = {k: float(np.median(v)) for k, v in ts.items()}
            show = lambda k: f"{1e3 * med[k]:8.2f} ({1e3 * min(ts[k]):.1f}-{1e3 * max(ts[k]):.1f})"  # noqa: E731
            ratio = med["torch"] / med["ours"]
            worst = min(worst, ratio)
            print(f"{shape:>16} {spec:>7} {show('ours'):>24} {show('torch'):>24} {ratio:7.2f}x "
                  f"{_flops(T, B, V, H, layers, G) / med['ours'] / 1e9:8.1f} {err:12.1e}"
                  + (f"  eager {show('eager')}" if "eager" in med else ""), flush=True)
    print(f"# smallest speedup (torch median / rnn-gpu median): {worst:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
