"""Convergence at equal wall time: rnn-gpu's Trainer against PyTorch on the CPU.

Both train a character-level RNN language model (an Elman, GRU or LSTM cell: --cell;
hidden 256, batch 32, bptt 64,
Adam lr 2e-3, global gradient-norm clip 5, the same learning-rate schedule) on the same
split of the same text, for the same wall-clock budget, with the same number of CPU
threads, and evaluate on the same validation text at the end of every epoch and once
more when the budget is spent. The figure of merit is the validation perplexity reached;
tokens/s is reported beside it.

PyTorch's model is the one its users would write: ``nn.Embedding`` + ``nn.RNN(tanh)``
(``nn.GRU``, ``nn.LSTM``) + ``nn.Linear``, mean cross-entropy, ``clip_grad_norm_``, hidden state detached between
chunks (the same truncated BPTT). It runs only when torch imports.

    python bench/convergence.py --data ../shared/data/tinyshakespeare.txt --budget 300
    python bench/convergence.py --data tinyshakespeare.txt --schedule mikolov --seeds 0,1,2,3
    python bench/convergence.py --summary bench/results/convergence-seeds.jsonl

Prints one JSON line per run and appends it to --out (bench/results/convergence.jsonl).
With --seeds, one pair of runs per seed (seeds change both initializations), then the
paired summary: per seed, the two perplexities and their difference; over the seeds, the
means, the mean difference with its standard error, and how many seeds each side won;
then the same at equal wall time, every 30 s of the budget, from the validation curves
(the best perplexity each side had evaluated by then). --summary prints that summary for
every configuration recorded in a result file.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="UTF-8 text, e.g. tinyshakespeare.txt (required unless --summary)")
    p.add_argument("--budget", type=float, default=300.0, help="wall-clock seconds per run (default 300)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1, help="stacked layers, both sides (default 1)")
    p.add_argument("--cell", choices=("elman", "gru", "lstm"), default="elman",
                   help="the recurrent cell, both sides: nn.RNN, nn.GRU or nn.LSTM for PyTorch "
                        "(default elman)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bptt", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--schedule", choices=("constant", "plateau", "mikolov", "cosine"),
                   default="constant",
                   help="learning-rate schedule, the same rnn_gpu.lm.schedule object driving both "
                        "(default constant); cosine decays to zero over --budget seconds")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout on the RNN outputs before the output layer, for both (default 0)")
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", help="comma-separated seeds: one pair of runs for each, then the "
                                   "paired summary (overrides --seed)")
    p.add_argument("--summary", metavar="FILE",
                   help="print the paired summary of the runs recorded in FILE, run nothing")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for both (default: all)")
    p.add_argument("--only", choices=("rnn-gpu", "torch", "both"), default="both")
    p.add_argument("--backend", default="numpy", help="rnn-gpu backend (default numpy: the CPU comparison)")
    p.add_argument("--out", default=str(HERE / "results" / "convergence.jsonl"))
    return p.parse_args(argv)


def record(args, impl: str, **fields) -> dict:
    from rnn_gpu.backend import describe

    info = describe()
    return {
        "bench": "convergence", "impl": impl, "data": Path(args.data).name,
        "budget_s": args.budget, "hidden": args.hidden, "batch_size": args.batch_size,
        "bptt": args.bptt, "lr": args.lr, "clip": args.clip, "schedule": args.schedule,
        "dropout": args.dropout, "seed": args.seed, "layers": args.layers,
        "cell": args.cell, "threads": args.threads,
        **fields, "cpu": info.get("cpu"), "numpy": info.get("numpy"), "blas": info.get("blas"),
        "date": time.strftime("%Y-%m-%d"),
    }


def run_rnn_gpu(args) -> dict:
    from rich.console import Console

    from rnn_gpu.lm import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            data=args.data, valid_fraction=args.valid_fraction, level="char", hidden=args.hidden,
            batch_size=args.batch_size, bptt=args.bptt, optimizer="adam", lr=args.lr,
            clip=args.clip, schedule=args.schedule, time_budget=args.budget, seed=args.seed,
            dropout=args.dropout, layers=args.layers, cell=args.cell,
            backend=args.backend,
            out=str(Path(tmp) / "ck.npz"), sample_length=0,
        )
        trainer = Trainer(cfg, console=Console(file=sys.stderr, highlight=False), progress=False)
        res = trainer.fit()
        sample = trainer.sample(200, temperature=0.8, seed=0)
    return record(
        args, "rnn-gpu", backend=trainer.model.backend.name, val_ppl=round(res.val_ppl, 4),
        val_loss=round(res.val_loss, 5), best_val_ppl=round(res.best_val_ppl, 4),
        tokens_per_s=round(res.tokens_per_s), steps=res.steps, epochs=res.epochs,
        train_seconds=round(res.seconds, 1),
        curve=[(r["time"], round(r["val_ppl"], 3)) for r in res.history], sample=sample,
    )


def run_torch(args) -> dict:
    import torch
    from torch import nn

    from rnn_gpu.lm.data import batchify, get_chunk, load_corpus, n_chunks
    from rnn_gpu.lm.schedule import make_schedule

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    corpus = load_corpus(args.data, valid_fraction=args.valid_fraction, level="char")
    V, H = len(corpus.vocab), args.hidden
    train = torch.from_numpy(batchify(corpus.train, args.batch_size).astype(np.int64))
    eval_b = max(1, min(args.batch_size, len(corpus.valid) // (args.bptt + 1)))
    valid = torch.from_numpy(batchify(corpus.valid, eval_b).astype(np.int64))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, H)
            kw = dict(num_layers=args.layers, dropout=args.dropout if args.layers > 1 else 0.0)
            if args.cell == "elman":
                self.rnn = nn.RNN(H, H, nonlinearity="tanh", **kw)
            else:
                self.rnn = (nn.GRU if args.cell == "gru" else nn.LSTM)(H, H, **kw)
            self.out = nn.Linear(H, V)
            self.drop = nn.Dropout(args.dropout)

        def forward(self, x, h):
            y, h = self.rnn(self.emb(x), h)
            return self.out(self.drop(y)), h

    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    def evaluate() -> float:
        model.eval()
        total, count, h = 0.0, 0, zeros(eval_b)
        with torch.no_grad():
            for k in range(n_chunks(valid.shape[0], args.bptt)):
                x, y = get_chunk(valid, k * args.bptt, args.bptt)
                logits, h = model(x, h)
                total += float(nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1),
                                                           reduction="sum"))
                count += y.numel()
        model.train()
        return total / count

    per_epoch = n_chunks(train.shape[0], args.bptt)
    steps = epochs = tokens = 0
    curve = []
    start = time.perf_counter()
    def zeros(b):
        z = torch.zeros(args.layers, b, H)
        return (z, z.clone()) if args.cell == "lstm" else z

    h = zeros(args.batch_size)
    k = 0
    schedule = make_schedule(args.schedule, args.lr)  # the rule rnn-gpu's Trainer follows
    saved = None  # mikolov: the weights of the previous evaluation
    while time.perf_counter() - start < args.budget:
        rate = schedule.rate_at((time.perf_counter() - start) / args.budget)
        if rate is not None:
            for group in opt.param_groups:
                group["lr"] = rate
        x, y = get_chunk(train, k * args.bptt, args.bptt)
        h = tuple(a.detach() for a in h) if isinstance(h, tuple) else h.detach()
        logits, h = model(x, h)
        loss = loss_fn(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        steps += 1
        tokens += y.numel()
        k += 1
        if k >= per_epoch:
            k, epochs = 0, epochs + 1
            h = zeros(args.batch_size)
            vl = evaluate()
            curve.append((round(time.perf_counter() - start, 3), round(math.exp(vl), 3)))
            d = schedule.on_eval(vl)
            if d.restore and saved is not None:
                model.load_state_dict(saved)
            elif schedule.keeps_weights:
                saved = copy.deepcopy(model.state_dict())
            for group in opt.param_groups:
                group["lr"] = d.lr
            print(f"torch: end of epoch {epochs} | valid ppl {math.exp(vl):.3f} | "
                  f"{time.perf_counter() - start:.1f} s{' | ' + d.note if d.note else ''}",
                  file=sys.stderr)
            if d.stop:
                break
    seconds = time.perf_counter() - start
    vl = evaluate()
    curve.append((round(time.perf_counter() - start, 3), round(math.exp(vl), 3)))
    print(f"torch: stopped | valid ppl {math.exp(vl):.3f} | {tokens / seconds:,.0f} tokens/s",
          file=sys.stderr)
    return record(
        args, "pytorch", torch=torch.__version__, val_ppl=round(math.exp(vl), 4),
        val_loss=round(vl, 5), best_val_ppl=round(min(c[1] for c in curve), 4),
        tokens_per_s=round(tokens / seconds), steps=steps, epochs=epochs,
        train_seconds=round(seconds, 1), curve=curve,
    )


# Fields that make two recorded runs the same experiment (seed and implementation aside).
CONFIG_KEYS = ("data", "budget_s", "hidden", "batch_size", "bptt", "lr", "clip", "schedule",
               "dropout", "layers", "cell")


def _mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error (NaN for fewer than two values)."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, math.nan
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def best_by(curve, t: float) -> float | None:
    """The lowest validation perplexity evaluated within the first `t` seconds of a run
    (what stopping it at t, keeping the best weights, would give), or None before the
    first evaluation."""
    seen = [ppl for when, ppl in curve if when <= t]
    return min(seen) if seen else None


def equal_time_grid(budget: float) -> list[float]:
    """Where to compare the two sides: every 30 s (every budget/10 for short budgets)."""
    step = 30.0 if budget >= 150 else budget / 10
    grid, t = [], step
    while t < budget - 1e-9:
        grid.append(round(t, 3))
        t += step
    return grid + [budget]


def paired_summary(rows: list[dict]) -> list[dict]:
    """Pair rnn-gpu and PyTorch runs by configuration and seed (the last run of a pair
    wins); one dict per configuration with at least one pair, in first-seen order.

    Beside the final perplexities, `equal_time` compares the pairs at equal wall time:
    for each t of :func:`equal_time_grid`, the mean best-so-far perplexity of each side
    over the seeds where both had evaluated by t, their mean difference and its standard
    error, and in how many of those seeds rnn-gpu was lower.
    """
    groups: dict[tuple, dict[int, dict[str, dict]]] = {}
    for r in rows:
        if r.get("bench") != "convergence" or r.get("seed") is None:
            continue
        key = tuple(r.get(k) for k in CONFIG_KEYS)
        groups.setdefault(key, {}).setdefault(int(r["seed"]), {})[r["impl"]] = r
    out = []
    for key, by_seed in groups.items():
        runs = [(s, v["rnn-gpu"], v["pytorch"]) for s, v in sorted(by_seed.items())
                if "rnn-gpu" in v and "pytorch" in v]
        if not runs:
            continue
        pairs = [(s, float(a["val_ppl"]), float(b["val_ppl"])) for s, a, b in runs]
        n = len(pairs)
        mean_d, se_d = _mean_se([a - b for _, a, b in pairs])
        config = dict(zip(CONFIG_KEYS, key))
        equal_time = []
        if all(a.get("curve") and b.get("curve") for _, a, b in runs):
            for t in equal_time_grid(float(config["budget_s"])):
                both = [(best_by(a["curve"], t), best_by(b["curve"], t)) for _, a, b in runs]
                both = [(x, y) for x, y in both if x is not None and y is not None]
                if not both:
                    continue
                d, d_se = _mean_se([x - y for x, y in both])
                equal_time.append({
                    "t": t, "n": len(both), "rnn_gpu": sum(x for x, _ in both) / len(both),
                    "pytorch": sum(y for _, y in both) / len(both), "diff": d,
                    "stderr_diff": d_se, "rnn_gpu_lower": sum(x < y for x, y in both)})
        out.append({
            "config": config, "pairs": pairs, "n": n,
            "mean_rnn_gpu": sum(a for _, a, _ in pairs) / n,
            "mean_pytorch": sum(b for _, _, b in pairs) / n,
            "mean_diff": mean_d, "stderr_diff": se_d,
            "rnn_gpu_lower": sum(a < b for _, a, b in pairs),
            "pytorch_lower": sum(a > b for _, a, b in pairs),
            "train_seconds": [(a.get("train_seconds"), b.get("train_seconds"))
                              for _, a, b in runs],
            "equal_time": equal_time,
        })
    return out


def format_summary(summaries: list[dict]) -> str:
    lines = []
    for s in summaries:
        c = s["config"]
        lines.append(f"{c['data']}: hidden {c['hidden']}, batch {c['batch_size']}, bptt "
                     f"{c['bptt']}, lr {c['lr']:g}, schedule {c['schedule']}, dropout "
                     f"{c['dropout']}, budget {c['budget_s']:g} s; valid ppl at the end")
        lines.append(f"  {'seed':>4}  {'rnn-gpu':>8}  {'PyTorch':>8}  {'difference':>10}")
        for seed, a, b in s["pairs"]:
            lines.append(f"  {seed:>4}  {a:8.3f}  {b:8.3f}  {a - b:+10.3f}")
        se = "" if math.isnan(s["stderr_diff"]) else f" +- {s['stderr_diff']:.3f} (standard error)"
        lines.append(f"  mean  {s['mean_rnn_gpu']:8.3f}  {s['mean_pytorch']:8.3f}  "
                     f"{s['mean_diff']:+10.3f}{se}")
        lines.append(f"  rnn-gpu lower in {s['rnn_gpu_lower']} of {s['n']} seeds, PyTorch lower "
                     f"in {s['pytorch_lower']}")
        secs = [t for pair in s["train_seconds"] for t in pair if t is not None]
        hit = sum(t >= c["budget_s"] for t in secs)
        if secs:
            lines.append(f"  training stopped after {min(secs):g} to {max(secs):g} s; "
                         f"{hit} of {len(secs)} runs used the whole budget")
        both = [(a, b) for a, b in s["train_seconds"] if a is not None and b is not None]
        if both:
            ours, theirs = [a for a, _ in both], [b for _, b in both]
            lines.append(f"  stopped after (median): rnn-gpu {statistics.median(ours):g} s, PyTorch "
                         f"{statistics.median(theirs):g} s; rnn-gpu's time over PyTorch's, median "
                         f"over seeds: {statistics.median(a / b for a, b in both):.2f}")
        if s["equal_time"]:
            lines.append("  at equal wall time (best valid ppl evaluated so far, mean over seeds):")
            lines.append(f"  {'t (s)':>6}  {'rnn-gpu':>8}  {'PyTorch':>8}  {'difference':>10}  "
                         f"{'+- s.e.':>7}  rnn-gpu lower")
            for e in s["equal_time"]:
                err = "" if math.isnan(e["stderr_diff"]) else f"{e['stderr_diff']:.3f}"
                lines.append(f"  {e['t']:>6g}  {e['rnn_gpu']:8.3f}  {e['pytorch']:8.3f}  "
                             f"{e['diff']:+10.3f}  {err:>7}  {e['rnn_gpu_lower']} of {e['n']}")
    return "\n".join(lines)


def _read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summary:
        try:
            rows = _read_rows(args.summary)
        except (OSError, ValueError) as e:
            print(f"convergence: error: cannot read {args.summary}: {e}", file=sys.stderr)
            return 2
        text = format_summary(paired_summary(rows))
        print(text or f"no paired runs with a recorded seed in {args.summary}")
        return 0
    if not args.data or not Path(args.data).is_file():
        print(f"convergence: error: data file not found: {args.data}", file=sys.stderr)
        return 2
    if args.seeds:
        try:
            seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
        except ValueError:
            print(f"convergence: error: --seeds: expected integers, got {args.seeds!r}",
                  file=sys.stderr)
            return 2
        all_runs = []
        for seed in seeds:
            args.seed = seed
            all_runs += run_pair(args)
        print()
        print(format_summary(paired_summary(all_runs)))
        return 0
    run_pair(args)
    return 0


def run_pair(args) -> list[dict]:
    """One rnn-gpu run and one PyTorch run (as --only allows) for args.seed, recorded."""
    runs = []
    if args.only in ("rnn-gpu", "both"):
        runs.append(run_rnn_gpu(args))
    if args.only in ("torch", "both"):
        try:
            import torch  # noqa: F401
        except ImportError:
            print("convergence: torch is not installed; PyTorch run skipped", file=sys.stderr)
        else:
            runs.append(run_torch(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        for r in runs:
            line = json.dumps(r, ensure_ascii=False)
            print(line)
            f.write(line + "\n")
    if len(runs) == 2:
        a, b = runs
        print(f"\nseed {args.seed}: validation perplexity after {args.budget:g} s: rnn-gpu "
              f"{a['val_ppl']:.3f} ({a['tokens_per_s']:,} tokens/s) vs PyTorch "
              f"{b['val_ppl']:.3f} ({b['tokens_per_s']:,} tokens/s)")
    return runs


if __name__ == "__main__":
    sys.exit(main())
