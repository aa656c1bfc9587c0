"""The ``rnn-gpu`` command line: train, sample, eval, gradcheck, info, bench.

``main(argv)`` returns the exit status. Problems with the user's input (files, options,
checkpoints) print one line, ``rnn-gpu: error: ...``, on stderr and return non-zero:
2 for bad input (before anything is written), 3 when training diverged, 1 for a failure
during training (a full disk, say), 130 when interrupted by Ctrl-C, 143 by SIGTERM.
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from typing import Sequence

from .backend import BACKENDS
from .errors import RnnGpuError, UsageError

TRAIN_HELP = """\
Train a language model. With no options: a character model of the documentation every
CPython ships (pydoc_data.topics), for 60 s, on the GPU when one is usable.
Validation runs at the end of every epoch (and every --eval-every steps); each
evaluation writes the checkpoint (--out) atomically, and a new best one also writes
NAME.best.npz beside it (--keep-best). An existing checkpoint is replaced only with
--resume or --overwrite. Ctrl-C or SIGTERM stops after the current step with a
checkpoint (exit 130 or 143)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and the usual status 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _cutoffs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 2000,10000, got {text!r}") from None


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .lm import INPUT_INITS, LEVELS, OPTIMIZERS, SCHEDULES  # noqa: PLC0415
    from .lm.config import (DEFAULT_CHECKPOINT, DEFAULT_TIME_BUDGET,  # noqa: PLC0415
                            OUTPUT_LAYERS, TrainConfig)
    from .model import DTYPES  # noqa: PLC0415
    from .reference import ACTIVATIONS, CELLS  # noqa: PLC0415

    d = TrainConfig()
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help="UTF-8 text file (default: the built-in corpus)")
    g.add_argument("--valid", metavar="PATH", help="validation text (default: split off --valid-fraction)")
    g.add_argument("--valid-fraction", type=float, metavar="F",
                   help=f"last fraction of --data used for validation (default {d.valid_fraction})")
    g.add_argument("--level", choices=LEVELS, help="tokens: characters or words (default char)")
    g.add_argument("--vocab-size", type=int, metavar="N",
                   help=f"word level: vocabulary cap incl. <unk>, <eos> (default {d.vocab_size})")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=int, metavar="H", help=f"hidden units (default {d.hidden})")
    g.add_argument("--cell", choices=CELLS,
                   help="recurrent cell: elman (default), gru or lstm (PyTorch's nn.GRU and "
                        "nn.LSTM equations and gate layouts; an LSTM carries the pair (h, c))")
    g.add_argument("--activation", choices=ACTIVATIONS,
                   help="hidden nonlinearity of an Elman cell (default tanh; a gated cell "
                        "has its own)")
    g.add_argument("--input-init", choices=INPUT_INITS,
                   help="embedding (default): U starts in +-1 and, with adam/adagrad, learns "
                        "--input-lr-scale times faster; uniform: the RNN's +-1/sqrt(H) and one rate")
    g.add_argument("--input-lr-scale", type=float, metavar="X",
                   help="multiplier of U's learning rate (default 2*sqrt(H) with the embedding "
                        "init and adam/adagrad, else 1)")
    g.add_argument("--layers", type=int, metavar="N",
                   help=f"stacked recurrent layers (default {d.layers})")
    g.add_argument("--bidirectional", action="store_true",
                   help="a reverse direction in every layer (refused: a language model "
                        "cannot read the tokens it predicts; for the Python API)")
    g.add_argument("--output", choices=OUTPUT_LAYERS,
                   help="output layer: softmax (default), or adaptive, the exact adaptive "
                        "softmax of Grave et al. for large (word-level) vocabularies")
    g.add_argument("--cutoffs", type=_cutoffs, metavar="C1,C2,...",
                   help="adaptive: the cluster edges of the frequency-sorted vocabulary "
                        "(default: those of 2000,10000,50000 below the vocabulary size)")
    g.add_argument("--div-value", type=float, metavar="D",
                   help=f"adaptive: cluster i's projection has H/D^(i+1) features (default {d.div_value:g})")
    g.add_argument("--dtype", choices=DTYPES, help="parameter dtype (default float32)")
    g.add_argument("--backend", choices=BACKENDS, help="array backend (default auto)")
    g.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="on the CuPy backend, run each step eagerly instead of replaying one "
                        "captured CUDA Graph per step shape")
    g.add_argument("--seed", type=int, help=f"seed for initialization and sampling (default {d.seed})")
    g = p.add_argument_group("truncated BPTT")
    g.add_argument("--batch-size", type=int, metavar="B", help=f"parallel streams (default {d.batch_size})")
    g.add_argument("--bptt", type=int, metavar="T",
                   help=f"chunk length; the state carries over between chunks (default {d.bptt})")
    g.add_argument("--truncate", type=int, metavar="K",
                   help="per-output BPTT window inside a chunk (default: the whole chunk)")
    g = p.add_argument_group("optimization")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="default adam")
    g.add_argument("--lr", type=float, help="learning rate (default: adam 2e-3, adagrad 0.1, sgd 1.0)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0)")
    g.add_argument("--clip", type=float,
                   help=f"clip the global gradient norm to this; 0 = off (default {d.clip})")
    g.add_argument("--dropout", type=float, metavar="P",
                   help="dropout rate on each layer's output (between layers and before the "
                   "output layer, not on the input), in training (default 0)")
    g.add_argument("--schedule", choices=SCHEDULES,
                   help="learning-rate schedule (default constant): plateau = divide by 4 when "
                   "validation does not improve; mikolov = restore on regression, halve "
                   "after a plateau, stop at the next; cosine = from --lr down to 0 over "
                   "the run (its steps, epochs or seconds)")
    g.add_argument("--min-improvement", type=float, metavar="R",
                   help=f"mikolov: improvement ratio that counts as progress (default {d.min_improvement})")
    g = p.add_argument_group("stopping and evaluation")
    g.add_argument("--epochs", type=int, help="stop after this many epochs")
    g.add_argument("--max-steps", type=int, metavar="N", help="stop after this many steps in total")
    g.add_argument("--time-budget", type=float, metavar="S",
                   help=f"stop after S seconds (default {DEFAULT_TIME_BUDGET:g} when no other "
                   "stopping option is given)")
    g.add_argument("--eval-every", type=int, metavar="N", help="also evaluate every N steps")
    g.add_argument("--explode-threshold", type=float, metavar="X",
                   help=f"stop when the training loss exceeds X * log(vocab size) (default {d.explode_threshold:g})")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="PATH", help=f"checkpoint file (default {DEFAULT_CHECKPOINT})")
    g.add_argument("--resume", nargs="?", const=True, metavar="CHECKPOINT",
                   help="continue the run saved in CHECKPOINT (default: --out)")
    g.add_argument("--overwrite", action="store_true",
                   help="let a fresh run replace an existing checkpoint at --out")
    g.add_argument("--keep-best", action=argparse.BooleanOptionalAction,
                   help="also keep the weights of the best validation in NAME.best.npz "
                        "beside --out, for sample/eval --best (default on)")
    g.add_argument("--plot", metavar="PATH.png", help="write training/validation curves (needs matplotlib)")
    g.add_argument("--sample-length", type=int, metavar="N",
                   help=f"characters/words to sample at the end; 0 = none (default {d.sample_length})")
    g.add_argument("--sample-temperature", type=float, metavar="T",
                   help=f"temperature of that sample (default {d.sample_temperature})")
    g.add_argument("--no-progress", action="store_true", help="no live progress bar")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__  # noqa: PLC0415

    p = _Parser(prog="rnn-gpu", description="RNNs (Elman, GRU, LSTM) trained with exact BPTT, "
                "on a GPU (CuPy) or CPU (NumPy).")
    p.add_argument("--version", action="version", version=f"rnn-gpu {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a language model", description=TRAIN_HELP,
                       argument_default=argparse.SUPPRESS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    from .lm.config import DEFAULT_CHECKPOINT, TrainConfig  # noqa: PLC0415

    temp = TrainConfig().sample_temperature
    s = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text from a trained checkpoint.")
    s.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?", default=DEFAULT_CHECKPOINT,
                   help=f"default {DEFAULT_CHECKPOINT}")
    s.add_argument("--best", action="store_true", help="use the best weights (NAME.best.npz)")
    s.add_argument("--length", type=int, default=200, help="tokens to generate (default 200)")
    s.add_argument("--temperature", type=float, default=temp,
                   help=f"0 = always the most likely token (default {temp}, as train's sample)")
    s.add_argument("--prime", default="", help="text to start from")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--backend", choices=BACKENDS, default="auto")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="perplexity of a text under a checkpoint",
                       description="Mean loss (nats/token) and perplexity of a text under a "
                       "trained checkpoint. Characters a character vocabulary lacks are left "
                       "out and counted; words a word vocabulary lacks are <unk>.")
    e.add_argument("checkpoint", metavar="CHECKPOINT")
    e.add_argument("file", metavar="FILE", help="UTF-8 text to score")
    e.add_argument("--best", action="store_true", help="use the best weights (NAME.best.npz)")
    e.add_argument("--backend", choices=BACKENDS, default="auto")
    e.add_argument("--batch-size", type=int, default=16, metavar="B",
                   help="streams read side by side (default 16)")
    e.add_argument("--bptt", type=int, default=256, metavar="T", help="steps per chunk (default 256)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)

    from .reference import CELLS  # noqa: PLC0415

    g = sub.add_parser("gradcheck", help="check BPTT gradients against finite differences",
                       description="Check the engine's gradients against central differences "
                       "on small random float64 models of one cell, for every activation "
                       "(an Elman cell's), output and truncation.")
    g.add_argument("--backend", choices=BACKENDS, default="auto")
    g.add_argument("--cell", choices=CELLS, default="elman",
                   help="the recurrent cell of the models checked (default elman)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--tolerance", type=float, default=1e-6, help="largest relative error accepted (default 1e-6)")
    g.set_defaults(func=cmd_gradcheck)

    i = sub.add_parser("info", help="versions, backend and devices; a checkpoint's contents",
                       description="Versions, backend and devices; with CHECKPOINT, also what "
                       "it holds: model, vocabulary, training configuration and progress.")
    i.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?")
    i.add_argument("--best", action="store_true", help="describe the best weights (NAME.best.npz)")
    i.set_defaults(func=cmd_info)

    # Its options belong to rnn_gpu.bench and are parsed there (see _run_bench).
    sub.add_parser("bench", help="benchmarks (rnn-gpu bench --help)", add_help=False)
    return p


# -------------------------------------------------------------------------------------
# Commands


def cmd_train(args: argparse.Namespace) -> int:
    from .dist import world  # noqa: PLC0415 - imports mpi4py only under mpiexec

    comm = world()
    if comm.size > 1:  # one of several MPI ranks: failures end every rank (rnn_gpu.dist.ranks)
        from .dist.ranks import train_ranks  # noqa: PLC0415

        return train_ranks(comm, lambda: _make_trainer(args), _run_trainer, _failure)
    return _run_trainer(_make_trainer(args))


def _make_trainer(args: argparse.Namespace):
    from .lm import DEFAULT_CHECKPOINT, TrainConfig, Trainer  # noqa: PLC0415

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    opts = {k: v for k, v in vars(args).items() if k in names}
    progress = False if getattr(args, "no_progress", False) else None
    resume = getattr(args, "resume", None)
    if "vocab_size" in opts and not resume and opts.get("level", "char") != "word":
        TrainConfig(**opts).validate()  # a bad value is reported as such first
        raise UsageError("--vocab-size applies to --level word only; a character vocabulary "
                         "holds every character of the text")
    if resume:
        path = opts.get("out", DEFAULT_CHECKPOINT) if resume is True else resume
        return Trainer.from_checkpoint(path, progress=progress, **opts)
    return Trainer(TrainConfig(**opts), progress=progress)


def _run_trainer(trainer) -> int:
    result = trainer.fit()
    cfg = trainer.config
    if not trainer.dist.is_root:
        return 130 if result.stop_reason == "interrupted" else 0
    if result.stop_reason == "interrupted":
        term = trainer.stop_signal == getattr(signal, "SIGTERM", None)
        print(f"rnn-gpu: {'terminated' if term else 'interrupted'}; the run is saved in "
              f"{result.checkpoint} (continue it with: rnn-gpu train --resume "
              f"{result.checkpoint})", file=sys.stderr)
        return 143 if term else 130
    if cfg.sample_length:
        text = trainer.sample(cfg.sample_length, temperature=cfg.sample_temperature)
        trainer.console.rule("sample", style="dim")
        trainer.console.print(text, markup=False, highlight=False, soft_wrap=True)
    return 0


def _checkpoint_path(args: argparse.Namespace) -> str:
    """The checkpoint a command reads: CHECKPOINT, or with --best the best weights beside it."""
    from .errors import CheckpointError  # noqa: PLC0415
    from .lm.checkpoint import best_path  # noqa: PLC0415

    if not getattr(args, "best", False):
        return args.checkpoint
    best = best_path(args.checkpoint)
    if not best.exists():
        raise CheckpointError(f"--best: {best} not found (the run kept no best weights beside "
                              f"{args.checkpoint}: trained with --no-keep-best, or not yet evaluated)")
    return str(best)


def _load_for_text(args: argparse.Namespace, what: str):
    """The checkpoint of `args` on its --backend, with a vocabulary (for sample and eval)."""
    from .errors import CheckpointError  # noqa: PLC0415
    from .lm.checkpoint import load_checkpoint  # noqa: PLC0415
    from .lm.config import check_backend  # noqa: PLC0415

    path = _checkpoint_path(args)
    load_checkpoint(path, with_model=False)  # the file's problems first, then the backend's
    check_backend(args.backend)
    ck = load_checkpoint(path, backend=args.backend)
    if ck.vocab is None:
        raise CheckpointError(f"checkpoint {path} has no vocabulary; it cannot be {what}")
    return ck


def cmd_sample(args: argparse.Namespace) -> int:
    from .lm.checks import expect, is_int, non_negative_number  # noqa: PLC0415
    from .lm.sample import prime_ids, sample  # noqa: PLC0415

    expect(args.length >= 0, "--length", "a non-negative integer", args.length)
    non_negative_number("--temperature", args.temperature)
    expect(is_int(args.seed) and args.seed >= 0, "--seed", "an integer >= 0", args.seed)
    ck = _load_for_text(args, "sampled")
    if args.prime:
        prime_ids(ck.vocab, args.prime, what="--prime")
    text = sample(ck.model, ck.vocab, args.length, prime=args.prime,
                  temperature=args.temperature, seed=args.seed)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415

    from .lm.checks import positive_int  # noqa: PLC0415
    from .lm.data import read_text  # noqa: PLC0415
    from .lm.metrics import evaluate_text  # noqa: PLC0415

    positive_int("--batch-size", args.batch_size)
    positive_int("--bptt", args.bptt)
    text = read_text(args.file, "text file")
    ck = _load_for_text(args, "evaluated")
    err = Console(stderr=True, highlight=False)
    bar = None
    if err.is_terminal and not args.no_progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

        bar = Progress(TextColumn("[bold]eval"), BarColumn(bar_width=20),
                       TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                       console=err, transient=True)
        task = bar.add_task("eval", total=None)
        bar.start()
    try:
        score = evaluate_text(ck.model, ck.vocab, text, batch_size=args.batch_size,
                              bptt=args.bptt,
                              progress=(lambda d, t: bar.update(task, completed=d, total=t))
                              if bar is not None else None)
    finally:
        if bar is not None:
            bar.stop()
    print(f"{args.file}: {score.tokens:,} tokens scored, mean loss {score.loss:.4f} nats/token, "
          f"perplexity {score.perplexity:.3f} ({ck.path}, backend {ck.model.backend.name})")
    if score.skipped:
        print(f"{score.skipped:,} characters not in the vocabulary were left out (not scored)")
    return 0


def gradcheck_cases(cell: str = "elman"):
    """(activation, output, truncate) for every combination the engine offers a model of
    `cell` (a gated cell's activations are its own: tanh stands for them)."""
    from .reference import ACTIVATIONS, OUTPUTS  # noqa: PLC0415

    acts = ACTIVATIONS if cell == "elman" else ("tanh",)
    return [(a, o, t) for a in acts for o in OUTPUTS for t in (None, 2)]


def run_gradchecks(backend: str = "auto", seed: int = 0, cell: str = "elman") -> list[dict]:
    """Gradient check of a small random float64 model of `cell` per case; one row per
    case, with the max relative error of each parameter (the model's names)."""
    import numpy as np  # noqa: PLC0415

    from . import RNN, gradcheck  # noqa: PLC0415

    I, H, O, T, B = 5, 4, 3, 6, 2
    rows = []
    for k, (act, out, trunc) in enumerate(gradcheck_cases(cell)):
        rng = np.random.default_rng(seed + k)
        m = RNN(I, H, O, backend=backend, dtype="float64", seed=seed + k, cell=cell,
                hidden_activation=act, output=out)
        for v in m.params.values():  # non-zero biases and larger weights exercise every term
            v[...] = m.backend.asarray(rng.uniform(-0.6, 0.6, size=v.shape))
        x = rng.integers(0, I, size=(T, B))
        if out == "softmax":
            y = rng.integers(0, O, size=(T, B))
        elif out == "sigmoid":
            y = rng.uniform(0, 1, size=(T, B, O))
        else:
            y = rng.normal(size=(T, B, O))
        h0 = rng.uniform(-0.5, 0.5, size=(B, H))
        if cell == "lstm":  # the pair (h0, c0)
            h0 = (h0, rng.uniform(-0.5, 0.5, size=(B, H)))
        errs = gradcheck(m, x, y, h0=h0, truncate=trunc)
        errs = {n: errs[n] for n in m.param_names}  # the model's order
        rows.append({"activation": act, "output": out, "truncate": trunc, **errs,
                     "max": max(errs.values())})
    return rows


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from rich import box  # noqa: PLC0415
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from .backend import get_backend  # noqa: PLC0415

    be = get_backend(args.backend)
    rows = run_gradchecks(be.name, args.seed, args.cell)
    names = [k for k in rows[0] if k not in ("activation", "output", "truncate", "max")]
    table = Table(title=f"gradient check ({args.cell} cell, float64, {be.name}): max relative "
                  "error, BPTT vs central differences", box=box.SIMPLE_HEAD)
    for col in ("activation", "output", "truncate", *names, "result"):
        table.add_column(col, justify="left" if col in ("activation", "output") else "right",
                         no_wrap=True)
    failed = 0
    for r in rows:
        ok = r["max"] <= args.tolerance
        failed += not ok
        table.add_row(r["activation"] if args.cell == "elman" else "-", r["output"], "-" if r["truncate"] is None else str(r["truncate"]),
                      *(f"{r[n]:.1e}" for n in names), "ok" if ok else "FAIL")
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=100 + 10 * max(0, len(names) - 5))
    console.print(table)
    console.print(f"{len(rows) - failed} of {len(rows)} cases within {args.tolerance:g}")
    return 1 if failed else 0


def cmd_info(args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from .backend import describe  # noqa: PLC0415

    report = None if args.checkpoint is None else _checkpoint_report(_checkpoint_path(args))
    console = Console(highlight=False)
    for rows in (list(describe().items()), report):
        if rows is None:
            continue
        table = Table(show_header=False, box=None)
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for k, v in rows:
            table.add_row(k, str(v))
        if rows is report:
            console.print()
        console.print(table)
    return 0


def _checkpoint_report(path: str) -> list[tuple[str, str]]:
    """(label, value) rows saying what the checkpoint at `path` holds."""
    import math  # noqa: PLC0415

    from . import __version__  # noqa: PLC0415
    from .lm.checkpoint import best_path, load_checkpoint  # noqa: PLC0415
    from .lm.report import hidden_label, model_label  # noqa: PLC0415

    ck = load_checkpoint(path, with_model=False)
    m, meta = ck.model_config, ck.meta
    cell = m.get("cell", "elman")  # a record without one: an Elman model
    n_layers = int(m.get("num_layers", 1))
    layers = f" x {n_layers} layers" if n_layers > 1 else ""
    n_params = sum(int(v.size) for v in ck.params.values())
    rows = [
        ("checkpoint", str(ck.path)),
        ("format version", f"{meta.get('format_version')} (written by rnn-gpu "
                           f"{meta.get('rnn_gpu_version', '?')}; this is rnn-gpu {__version__})"),
        ("model", f"{model_label(cell)} {m['input_size']} -> {m['hidden_size']} hidden"
                  f"{hidden_label(cell, m.get('hidden_activation', 'tanh'))}{layers} -> "
                  f"{m['output_size']} ({m.get('output', 'softmax')}), "
                  f"{m.get('dtype', 'float32')}, {n_params:,} parameters"),
        ("cell", f"{cell}" + (" (state: the pair h, c)" if cell == "lstm" else "")),
        ("vocabulary", "none" if ck.vocab is None else f"{len(ck.vocab)} {ck.vocab.level} tokens"),
    ]
    cfg, st = ck.train_config, ck.train_state
    if cfg:
        keys = ("data", "valid", "level", "hidden", "cell", "batch_size", "bptt", "truncate",
                "optimizer", "lr", "clip", "dropout", "schedule", "seed")
        rows.append(("training config", ", ".join(
            [f"data {cfg.get('data') or 'the built-in corpus'}"]
            + [f"{k} {cfg[k]}" for k in keys[1:] if cfg.get(k) is not None])))
    if st:
        rows.append(("progress", f"{st.get('step', 0)} steps, {st.get('epoch', 0)} epochs, "
                                 f"{st.get('tokens', 0):,} tokens, {st.get('elapsed', 0.0):.1f} s"))
        hist = st.get("history") or []
        if hist:
            best = min(hist, key=lambda r: r["val_ppl"] if math.isfinite(r["val_ppl"]) else math.inf)
            rows.append(("valid ppl", f"{hist[-1]['val_ppl']:.3f} (last, step {hist[-1]['step']}); "
                                      f"best {best['val_ppl']:.3f} (step {best['step']})"))
        b = best_path(ck.path)
        if b.exists() and b != ck.path:
            rows.append(("best weights", str(b)))
    return rows


def _run_bench(argv: list[str]) -> int:
    try:
        import rnn_gpu.bench as bench  # noqa: PLC0415
    except ModuleNotFoundError as e:
        if e.name != "rnn_gpu.bench":
            raise
        raise RnnGpuError("the bench subcommand is not available in this installation "
                          "(module rnn_gpu.bench is missing)") from None
    p = _Parser(prog="rnn-gpu bench", description=(bench.__doc__ or "").strip().split("\n")[0])
    bench.add_arguments(p)
    return int(bench.run(p.parse_args(argv)) or 0)


# -------------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split("\n")).strip()
    return msg or type(e).__name__


def _failure(e: BaseException) -> tuple[int, str]:
    """(exit status, the line to print) for an exception, as :func:`main` reports it."""
    if isinstance(e, RnnGpuError):
        return e.exit_code, f"rnn-gpu: error: {_one_line(e)}"
    if isinstance(e, KeyboardInterrupt):
        return 130, "rnn-gpu: interrupted"
    return 1, f"rnn-gpu: error: {_one_line(e)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            return _run_bench(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except RnnGpuError as e:
        print(f"rnn-gpu: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rnn-gpu: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, MemoryError) as e:
        # Bad values the engine rejects (ValueError naming the argument), unusable
        # backends (RuntimeError), file-system problems (OSError).
        print(f"rnn-gpu: error: {_one_line(e)}", file=sys.stderr)
        return 1
