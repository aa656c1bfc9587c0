"""Adaptive softmax against the full softmax at equal wall time, on a word-level corpus.

Both models are the same token-input RNN (an Elman, GRU or LSTM cell: --cell; hidden 256,
batch 20, bptt 35, Adam,
global gradient-norm clip 5, state carried across chunks), built and trained through the
library API alone, on the word level of a text: words split on white space, an ``<eos>``
at every line end, the vocabulary ``<eos>``, ``<unk>`` and then words by frequency (the
order the adaptive softmax needs). The last 10% of the text is the validation text.

The two runs are interleaved a few steps at a time, each on its own training clock, so
that a change of machine load hits both alike; evaluation (exact: the summed -log p of
every validation token, which for the adaptive model is the normalized distribution's)
runs every `--eval-every` seconds of a model's training time and is not counted in it.
The figure of merit is the validation perplexity each reaches within the same budget.

    python bench/adaptive_convergence.py --data ../shared/data/tinyshakespeare.txt --budget 150

Prints one line per evaluation and a JSON summary line (also appended to --out).
"""
from __future__ import annotations

import os
import sys

_THREADS = "1"
for i, _a in enumerate(sys.argv):
    if _a == "--threads" and i + 1 < len(sys.argv):
        _THREADS = sys.argv[i + 1]
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = _THREADS  # before NumPy loads its BLAS

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rnn_gpu  # noqa: E402
from rnn_gpu.heads import default_cutoffs  # noqa: E402
from rnn_gpu.optim import make_optimizer  # noqa: E402
from rnn_gpu.states import map_state  # noqa: E402


def word_corpus(path: str) -> tuple[list[str], np.ndarray]:
    """(vocabulary, ids): <eos>, <unk>, then words by decreasing frequency."""
    words = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        words.extend(line.split())
        words.append("<eos>")
    counts = collections.Counter(w for w in words if w != "<eos>")
    vocab = ["<eos>", "<unk>"] + [w for w, _ in counts.most_common()]
    index = {w: i for i, w in enumerate(vocab)}
    return vocab, np.array([index[w] for w in words], dtype=np.int64)


def batchify(ids: np.ndarray, B: int) -> np.ndarray:
    rows = len(ids) // B
    return ids[:rows * B].reshape(B, rows).T.copy()  # (rows, B): column b is one stream


class Run:
    """One model, its optimizer, its position in the training text and its clock."""

    def __init__(self, name, model, lr, train, bptt, clip):
        self.name, self.model = name, model
        self.opt = make_optimizer("adam", model.params, lr=lr)
        self.train, self.bptt, self.clip = train, bptt, clip
        self.pos, self.h, self.clock, self.steps, self.tokens = 0, None, 0.0, 0, 0
        self.curve = []  # (train seconds, tokens, validation perplexity)
        self.evaluated_at = -1.0

    def step(self) -> None:
        t0 = time.perf_counter()
        if self.pos + 1 + self.bptt > self.train.shape[0]:
            self.pos, self.h = 0, None  # next epoch
        x = self.train[self.pos:self.pos + self.bptt]
        y = self.train[self.pos + 1:self.pos + 1 + self.bptt]
        _, grads, h = self.model.loss_and_grads(x, y, h0=self.h)
        self.h = map_state(lambda a: a.copy(), h)  # an LSTM's state is a pair
        norm = math.sqrt(sum(float(np.vdot(g.reshape(-1), g.reshape(-1))) for g in grads.values()))
        if norm > self.clip:
            for g in grads.values():
                g *= self.clip / norm
        self.opt.step(grads)
        self.pos += self.bptt
        self.steps += 1
        self.tokens += x.size
        self.clock += time.perf_counter() - t0

    def evaluate(self, valid: np.ndarray, bptt: int) -> float:
        total, count, h = 0.0, 0, None
        for s in range(0, valid.shape[0] - 1, bptt):
            x = valid[s:s + bptt]
            y = valid[s + 1:s + 1 + bptt]
            x = x[:y.shape[0]]
            loss, h = self.model.loss(x, y, h0=h)
            h = map_state(lambda a: a.copy(), h)
            total += loss
            count += y.size
        return math.exp(total / count)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                          "data" / "tinyshakespeare.txt"))
    ap.add_argument("--budget", type=float, default=150.0, help="training seconds per model")
    ap.add_argument("--eval-every", type=float, default=30.0)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--cell", choices=("elman", "gru", "lstm"), default="elman",
                    help="the recurrent cell of both models (default elman)")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--cutoffs", default="auto")
    ap.add_argument("--div-value", type=float, default=4.0)
    ap.add_argument("--threads", default=_THREADS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    vocab, ids = word_corpus(a.data)
    V, cut = len(vocab), int(len(ids) * 0.9)
    train, valid = batchify(ids[:cut], a.batch), batchify(ids[cut:], 10)
    cutoffs = (default_cutoffs(V, a.hidden, a.div_value) if a.cutoffs == "auto"
               else tuple(int(c) for c in a.cutoffs.split(",")))
    print(f"# {a.data}: {len(ids)} words, vocabulary {V}, train {train.size}, valid "
          f"{valid.size}; H={a.hidden} B={a.batch} bptt={a.bptt} Adam lr={a.lr}, "
          f"{a.budget:.0f} s each, {a.threads} thread(s), cell {a.cell}; adaptive "
          f"cutoffs={cutoffs}")
    runs = [
        Run("full softmax", rnn_gpu.RNN(V, a.hidden, V, backend="numpy", dtype="float32",
                                        seed=a.seed, cell=a.cell), a.lr, train, a.bptt,
            a.clip),
        Run("adaptive", rnn_gpu.RNN(V, a.hidden, V, backend="numpy", dtype="float32",
                                    seed=a.seed, cell=a.cell, output="adaptive", cutoffs=cutoffs,
                                    div_value=a.div_value), a.lr, train, a.bptt, a.clip),
    ]
    next_eval = {r.name: a.eval_every for r in runs}
    while any(r.clock < a.budget for r in runs):
        for r in runs:  # interleaved: a second of training each, in turn
            start = r.clock
            while r.clock < a.budget and r.clock - start < 1.0:
                r.step()
            if r.clock >= min(next_eval[r.name], a.budget) and r.evaluated_at < r.clock:
                r.evaluated_at = r.clock
                ppl = r.evaluate(valid, a.bptt)
                r.curve.append((round(r.clock, 1), r.tokens, ppl))
                next_eval[r.name] += a.eval_every
                print(f"{r.name:<13} {r.clock:7.1f} s  {r.steps:6d} steps  "
                      f"{r.tokens / r.clock:8.0f} tokens/s  valid ppl {ppl:9.2f}", flush=True)
    summary = {
        "data": a.data, "vocab": V, "cell": a.cell, "hidden": a.hidden, "batch": a.batch, "bptt": a.bptt,
        "lr": a.lr, "budget_s": a.budget, "threads": a.threads, "cutoffs": cutoffs,
        "div_value": a.div_value, "seed": a.seed,
        "runs": {r.name: {"steps": r.steps, "tokens_per_s": r.tokens / r.clock,
                          "final_ppl": r.curve[-1][2], "best_ppl": min(c[2] for c in r.curve),
                          "curve": r.curve} for r in runs},
    }
    print(json.dumps(summary))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
