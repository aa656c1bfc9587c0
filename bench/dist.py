"""Data-parallel throughput: ``mpiexec -n 2`` (one BLAS thread per rank) against one
process with one thread and one process with two BLAS threads, at the training step of
the Trainer (gradients, the rank-order sum, clip and Adam step), on synthetic text.

    python bench/dist.py                      # both default shapes
    python bench/dist.py --shapes 64,64,512,65 --steps 12

For each shape it first checks, in float64, that 2 steps on 2 ranks give the parameters
of 2 steps in one process (relative 1e-9), then times float32 steps and prints one aligned line per
configuration: median tokens/s with min and max over the timed steps, the speedup
against one process with one thread, and for the ranks the time per step spent in MPI
collectives (the all-to-all of the gradient shards, the gather of the updated shards,
the step's meta and the norm; waiting for the slower rank included) and its share.
Beside each, the CPU time of a step (rank 0's, all its threads): on a machine shared with
other work the wall-clock figures move with the load (os.getloadavg, printed before and
after), the CPU time much less.

Under mpiexec (or with --worker) this file is the worker: it trains --warmup + --steps
steps and prints one JSON line from rank 0.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((64, 64, 512, 65), (35, 40, 256, 10000))


def synthetic_text(V: int, tokens: int, seed: int = 0) -> tuple[str, str]:
    """(text, level): V distinct characters (V <= 90) or V - 2 distinct words (so the
    word vocabulary with <unk> and <eos> has V entries), `tokens` of them."""
    rng = np.random.default_rng(seed)
    if V <= 90:
        alphabet = [chr(33 + i) for i in range(V - 1)] + ["\n"]
        ids = rng.integers(0, V, tokens)
        ids[:V] = np.arange(V)  # every symbol appears
        return "".join(alphabet[i] for i in ids), "char"
    words = [f"w{i}" for i in range(V - 2)]
    ids = rng.zipf(1.2, tokens) % (V - 2)
    ids[: V - 2] = np.arange(V - 2)
    lines = [" ".join(words[i] for i in ids[k:k + 20]) for k in range(0, tokens, 20)]
    return "\n".join(lines) + "\n", "word"


def worker(a) -> None:
    from rich.console import Console  # noqa: PLC0415

    import rnn_gpu  # noqa: PLC0415
    from rnn_gpu.lm import TrainConfig, Trainer  # noqa: PLC0415

    T, B, H, V = a.shape
    level = "char" if V <= 90 else "word"
    cfg = TrainConfig(data=a.data, level=level, vocab_size=V, hidden=H, batch_size=B, bptt=T,
                      backend="numpy", dtype=a.dtype, out=a.out, sample_length=0,
                      max_steps=a.warmup + a.steps, valid_fraction=0.02)
    tr = Trainer(cfg, console=Console(file=io.StringIO()), progress=False)
    assert len(tr.vocab) == V, (len(tr.vocab), V)
    tr.state.started = time.perf_counter()
    times, comm, cpu = [], [], []
    for k in range(a.warmup + a.steps):
        c0, t0, p0 = tr.dist.comm_seconds, time.perf_counter(), time.process_time()
        _, ntok = tr.train_step()
        if k >= a.warmup:
            times.append(time.perf_counter() - t0)
            comm.append(tr.dist.comm_seconds - c0)
            cpu.append(time.process_time() - p0)
    if tr.dist.is_root:
        np.savez(a.out, **{k: rnn_gpu.to_numpy(v) for k, v in tr.model.params.items()})
        print(json.dumps({"ntok": ntok, "times": times, "comm": comm, "cpu": cpu}), flush=True)


def launch(a, shape, data, out, ranks: int, threads: int, *, dtype="float32", steps=None,
           warmup=None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **{v: str(threads) for v in (
        "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    cmd = [sys.executable, __file__, "--worker", "--data", data, "--out", out,
           "--shape", ",".join(map(str, shape)), "--dtype", dtype,
           "--steps", str(a.steps if steps is None else steps),
           "--warmup", str(a.warmup if warmup is None else warmup)]
    if ranks > 1:
        cmd = [a.mpiexec, "-n", str(ranks), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--shapes", nargs="*", help="T,B,H,V (default: " +
                   " ".join(",".join(map(str, s)) for s in SHAPES) + ")")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--mpiexec", default=str(Path(sys.executable).with_name("mpiexec")))
    a = p.parse_args(argv)
    if a.worker:
        a.shape = tuple(int(x) for x in a.shape.split(","))
        worker(a)
        return
    shapes = [tuple(int(x) for x in s.split(",")) for s in a.shapes] if a.shapes else SHAPES
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory() as tmp:
        for si, shape in enumerate(shapes):
            T, B, H, V = shape
            text, _ = synthetic_text(V, T * B * (a.steps + a.warmup + 2) * 11 // 10 + V)
            data = os.path.join(tmp, "text.txt")
            Path(data).write_text(text)
            checks = [np.load(out) for out in (
                launch(a, shape, data, os.path.join(tmp, f"c{n}-{si}.npz"), n, 1, dtype="float64",
                       steps=2, warmup=0) and os.path.join(tmp, f"c{n}-{si}.npz") for n in (1, 2))]
            err = max(float(np.abs(checks[1][k] - checks[0][k]).max()
                            / (np.abs(checks[0][k]).max() + 1e-300)) for k in checks[0].files)
            assert err < 1e-9, f"2 ranks differ from 1 process: max relative error {err:.2e}"
            rows = {}
            for name, ranks, threads in (("1 process, 1 thread", 1, 1),
                                         ("1 process, 2 threads", 1, 2),
                                         ("mpiexec -n 2, 1 thread each", 2, 1)):
                out = os.path.join(tmp, f"p{ranks}{threads}-{si}.npz")  # a new file each
                rows[name] = (launch(a, shape, data, out, ranks, threads), out)
            print(f"\n(T, B, H, V) = {shape}: 2 ranks give the parameters of 1 process "
                  f"(float64, 2 steps: max rel. error {err:.1e}); {a.steps} timed float32 steps")
            base = None
            for name, (r, _) in rows.items():
                tps = [r["ntok"] / t for t in r["times"]]
                med = statistics.median(tps)
                base = base or med
                cpu = statistics.median(r["cpu"])
                line = (f"  {name:30s} {med:10,.0f} tokens/s (min {min(tps):,.0f}, max "
                        f"{max(tps):,.0f})  x{med / base:4.2f}  CPU {1e3 * cpu:6.0f} ms/step")
                if "mpiexec" in name:
                    c, t = statistics.median(r["comm"]), statistics.median(r["times"])
                    line += f"  MPI {1e3 * c:6.1f} ms/step ({100 * c / t:4.1f}% of {1e3 * t:.0f} ms)"
                print(line, flush=True)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
