"""The configuration of a training run, :class:`TrainConfig`, and its validation.

This is the edge between the user and the library: the CLI's ``train`` options map one to
one onto the fields, :meth:`TrainConfig.validate` checks every value before anything is
loaded or built, and its messages name the option (``--lr``). The library below checks
its own arguments again and names them (``lr``); this module and ``rnn_gpu.cli`` are the
only places that spell flags (:func:`flag`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..reference import ACTIVATIONS, CELLS
from .checkpoint import best_path, probe_writable
from .checks import expect, is_int, is_real, non_negative_number, one_of, positive_int, positive_number
from .data import LEVELS, check_trainable
from .optim import DEFAULT_LR, OPTIMIZERS
from .report import require_matplotlib
from .schedule import SCHEDULES

DEFAULT_TIME_BUDGET = 60.0  # seconds, when no other stopping criterion is given
DEFAULT_CHECKPOINT = "rnn-gpu-checkpoint.npz"
INPUT_INITS = ("embedding", "uniform")

# Options that fix the model, the data layout or the optimizer's state: a resumed run
# must use the checkpoint's values.
RESUME_FIXED = (
    "level", "vocab_size", "valid_fraction", "hidden", "batch_size", "bptt", "activation",
    "dtype", "seed", "optimizer", "momentum", "schedule", "min_improvement", "input_init",
    "input_lr_scale", "output", "cutoffs", "div_value", "layers", "cell",
)
OUTPUT_LAYERS = ("softmax", "adaptive")  # the training application's output layers
STOPS = ("epochs", "max_steps", "time_budget")


def flag(name: str) -> str:
    """The command-line option of the TrainConfig field `name`: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI's ``train`` options map one to one."""

    # data
    data: str | None = None  # UTF-8 text file; None: the built-in corpus
    valid: str | None = None  # validation text; None: the last valid_fraction of data
    valid_fraction: float = 0.1
    level: str = "char"  # "char" or "word"
    vocab_size: int = 10000  # word level: cap, including <unk> and <eos>
    # model
    hidden: int = 128
    cell: str = "elman"  # "elman", "gru" or "lstm" (PyTorch's gate layouts)
    activation: str = "tanh"  # Elman only: a gated cell has its own (sigmoid and tanh)
    layers: int = 1  # stacked recurrent layers (PyTorch's num_layers)
    bidirectional: bool = False  # refused for language modelling: it would read the future
    output: str = "softmax"  # or "adaptive": the exact adaptive softmax (word level)
    cutoffs: tuple[int, ...] | None = None  # adaptive: None = heads.default_cutoffs(vocab)
    div_value: float = 4.0  # adaptive: each tail cluster's projection is F / div_value^(i+1)
    # "embedding": U (a token's column is its embedding) starts uniform in +-1 and, with
    # adam/adagrad, learns input_lr_scale times faster; "uniform": the RNN's
    # +-1/sqrt(hidden), one rate
    input_init: str = "embedding"
    input_lr_scale: float | None = None  # None: 2 * sqrt(hidden) (embedding init, adam/adagrad)
    dtype: str = "float32"
    backend: str = "auto"  # or a rnn_gpu.Backend (recorded by its name)
    cuda_graph: bool = True  # CuPy backend: replay one captured CUDA Graph per step shape
    seed: int = 0
    # truncated BPTT
    batch_size: int = 32
    bptt: int = 64
    truncate: int | None = None  # per-output BPTT window inside a chunk (None: whole chunk)
    # optimization
    optimizer: str = "adam"
    lr: float | None = None  # None: optim.DEFAULT_LR[optimizer]
    momentum: float = 0.0
    clip: float | None = 5.0  # global gradient-norm clip; None or 0: off
    dropout: float = 0.0  # dropout rate on the states the output layer sees (training only)
    schedule: str = "constant"
    min_improvement: float = 1.003  # Mikolov schedule
    # stopping and evaluation
    epochs: int | None = None
    max_steps: int | None = None
    time_budget: float | None = None  # seconds; DEFAULT_TIME_BUDGET when nothing else is set
    eval_every: int | None = None  # steps; evaluation also ends every epoch
    explode_threshold: float = 3.0  # stop when train loss/token > this * log(vocab size)
    # output
    out: str = DEFAULT_CHECKPOINT
    overwrite: bool = False  # a fresh run may replace an existing checkpoint at out
    keep_best: bool = True  # also keep the best weights in NAME.best.npz beside out
    plot: str | None = None
    sample_length: int = 200
    sample_temperature: float = 0.8

    def resolved_lr(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)

    def lr_scale(self) -> dict:
        """Per-parameter rate multipliers implied by the configuration."""
        if self.input_lr_scale is not None:
            return {"U": float(self.input_lr_scale)}
        if self.input_init == "embedding" and self.optimizer in ("adam", "adagrad"):
            return {"U": 2.0 * math.sqrt(self.hidden)}
        return {}

    def model_config(self, vocab_size: int) -> dict:
        """The RNN's configuration (``RNN.from_config``) for a vocabulary of `vocab_size`."""
        cfg = {"input_size": vocab_size, "hidden_size": self.hidden, "output_size": vocab_size,
               "dtype": self.dtype, "hidden_activation": self.activation, "output": self.output,
               "seed": self.seed, "cell": self.cell, "num_layers": self.layers,
               "bidirectional": False}
        if self.output == "adaptive":
            from ..heads import check_adaptive, default_cutoffs  # noqa: PLC0415

            cutoffs = (default_cutoffs(vocab_size, self.hidden, self.div_value)
                       if self.cutoffs is None else tuple(int(c) for c in self.cutoffs))
            try:
                check_adaptive("adaptive", cutoffs, self.div_value, vocab_size, self.hidden)
            except ValueError as e:  # cutoffs that do not fit this vocabulary
                raise UsageError(f"{flag('cutoffs')}: {e} (the vocabulary has {vocab_size} "
                                 "tokens)") from None
            cfg.update(cutoffs=list(cutoffs), div_value=float(self.div_value))
        return cfg

    def stopping_criteria(self) -> tuple[int | None, int | None, float | None]:
        """(epochs, max_steps, time_budget), with the default time budget filled in."""
        if self.epochs is None and self.max_steps is None and self.time_budget is None:
            return None, None, DEFAULT_TIME_BUDGET
        return self.epochs, self.max_steps, self.time_budget

    def validate(self) -> None:
        """UsageError naming the first option with a value that cannot work."""
        for n in ("hidden", "batch_size", "bptt", "vocab_size", "layers"):
            positive_int(flag(n), getattr(self, n))
        for n in ("epochs", "max_steps", "eval_every"):
            if getattr(self, n) is not None:
                positive_int(flag(n), getattr(self, n))
        if self.truncate is not None:  # 0: each output sees its own step only
            expect(is_int(self.truncate) and self.truncate >= 0, "--truncate", "an integer >= 0",
                   self.truncate)
        expect(is_int(self.seed) and self.seed >= 0, "--seed", "an integer >= 0", self.seed)
        for n in ("lr", "time_budget"):
            if getattr(self, n) is not None:
                positive_number(flag(n), getattr(self, n))
        if self.clip is not None:
            non_negative_number("--clip", self.clip)
        non_negative_number("--momentum", self.momentum)
        non_negative_number("--sample-temperature", self.sample_temperature)
        expect(is_int(self.sample_length) and self.sample_length >= 0, "--sample-length",
               "an integer >= 0", self.sample_length)
        expect(is_real(self.explode_threshold) and self.explode_threshold > 1,
               "--explode-threshold", "a number > 1", self.explode_threshold)
        expect(is_real(self.valid_fraction) and 0 < self.valid_fraction < 1, "--valid-fraction",
               "a number in (0, 1)", self.valid_fraction)
        expect(is_real(self.dropout) and 0 <= self.dropout < 1, "--dropout", "a rate in [0, 1)",
               self.dropout)
        if self.input_lr_scale is not None:
            positive_number("--input-lr-scale", self.input_lr_scale)
        one_of("--input-init", self.input_init, INPUT_INITS)
        one_of("--cell", self.cell, CELLS)
        one_of("--activation", self.activation, ACTIVATIONS)
        if self.cell != "elman" and self.activation != "tanh":
            raise UsageError(f"--activation {self.activation}: the {self.cell.upper()} cell has "
                             "its own gate activations (sigmoid and tanh); --activation "
                             "applies to --cell elman only")
        if self.bidirectional:
            raise UsageError("--bidirectional: a language model cannot have a reverse "
                             "direction, which would read the tokens it is to predict")
        one_of("--output", self.output, OUTPUT_LAYERS)
        if self.output != "adaptive" and self.cutoffs is not None:
            raise UsageError("--cutoffs applies to --output adaptive only")
        if self.cutoffs is not None:
            c = tuple(self.cutoffs)
            expect(len(c) > 0 and all(is_int(v) and v > 0 for v in c)
                   and all(a < b for a, b in zip(c, c[1:])), "--cutoffs",
                   "strictly increasing positive integers (e.g. 2000,10000)", self.cutoffs)
        expect(is_real(self.div_value) and self.div_value > 0, "--div-value", "a number > 0",
               self.div_value)
        expect(self.level in LEVELS, "--level", " or ".join(LEVELS), repr(self.level))
        expect(self.vocab_size >= 3, "--vocab-size", "an integer >= 3", self.vocab_size)
        one_of("--optimizer", self.optimizer, OPTIMIZERS)
        if self.momentum and self.optimizer != "sgd":
            raise UsageError(f"--momentum applies to --optimizer sgd only, not {self.optimizer}")
        expect(self.momentum < 1, "--momentum", "a number in [0, 1)", self.momentum)
        one_of("--schedule", self.schedule, SCHEDULES)
        expect(is_real(self.min_improvement) and self.min_improvement >= 1, "--min-improvement",
               "a number >= 1", self.min_improvement)
        out = Path(self.out)
        if out.is_dir():
            raise UsageError(f"--out: {out} is a directory, expected a checkpoint file name")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise UsageError(f"--out: directory {out.parent} does not exist")
        check_backend(self.backend)
        if self.plot is not None:
            require_matplotlib("--plot")
            check_plot_format(self.plot)
            if not (Path(self.plot).parent if str(Path(self.plot).parent) else Path(".")).is_dir():
                raise UsageError(f"--plot: directory {Path(self.plot).parent} does not exist")

    def check_output(self, *, resuming: bool) -> None:
        """UsageError, before anything is written, when the run could not write its
        checkpoints (a probe file is written and removed beside out), would replace a
        read-only one, or -- a fresh run without overwrite -- another run's."""
        out = Path(self.out)
        targets = [out, best_path(out)] if self.keep_best else [out]
        for p in targets:
            if p.is_file() and not (p.stat().st_mode & 0o222 and os.access(p, os.W_OK)):
                raise UsageError(f"{flag('out')}: checkpoint {p} is read-only and is never "
                                 f"replaced; choose another {flag('out')}")
        if not resuming and not self.overwrite:
            for p in targets:
                if p.exists():
                    raise UsageError(
                        f"{flag('out')}: {p} already exists; continue that run with "
                        f"{flag('resume')}, or replace it with {flag('overwrite')}")
        try:
            probe_writable(out)
        except OSError as e:
            where = out.parent if str(out.parent) else Path(".")
            raise UsageError(f"{flag('out')}: cannot write {out} (in {where.resolve()}): "
                             f"{e.strerror or e}") from None

    def check_trainable(self, n_tokens: int) -> None:
        """DataError unless `n_tokens` of training text fill one batch of one chunk."""
        check_trainable(n_tokens, self.batch_size, self.bptt,
                        advice=f"smaller {flag('batch_size')} / {flag('bptt')}")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not isinstance(d["backend"], str):  # a Backend object: recorded by its name
            d["backend"] = d["backend"].name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def for_resume(cls, saved: dict, path: str | Path, overrides: dict) -> TrainConfig:
        """The configuration of a run saved (as `saved`) in `path`, going on with
        `overrides`: they may change how long and where it goes on, but not RESUME_FIXED;
        any of epochs, max_steps, time_budget replaces all three saved ones; it writes
        back to `path` unless `overrides` says otherwise."""
        defaults = cls()
        for k in RESUME_FIXED:  # a key older runs did not save has its default value
            was = saved.get(k, getattr(defaults, k))
            if k in overrides and overrides[k] != was:
                raise UsageError(
                    f"{flag(k)} {overrides[k]} differs from the checkpoint's "
                    f"{was}; a resumed run keeps the checkpoint's value"
                )
        for k in ("data", "valid"):
            if overrides.get(k) is None and saved.get(k) and not Path(saved[k]).exists():
                raise UsageError(
                    f"the run's {'data' if k == 'data' else 'validation'} file {saved[k]} is not "
                    f"found; if it has moved, resume with {flag(k)} NEW_PATH (the same text)")
        d = {**saved, "out": str(path)}
        if "input_lr_scale" not in saved and saved.get("input_init", "embedding") == "embedding" \
                and saved.get("optimizer") in ("adam", "adagrad"):
            d["input_lr_scale"] = math.sqrt(saved["hidden"])  # runs saved before the option
        if any(overrides.get(k) is not None for k in STOPS):  # new stopping rules replace the old
            d.update(dict.fromkeys(STOPS))
        d.update(overrides)
        return cls.from_dict(d)


def check_backend(name: str) -> None:
    """UsageError, naming the command-line fix, when backend `name` cannot be used."""
    from ..backend import Backend, get_backend  # noqa: PLC0415

    if isinstance(name, Backend):  # handed a backend object (the library's callers)
        return
    try:
        get_backend(name)
    except (RuntimeError, ValueError) as e:
        why = str(e).split(". To fix:")[0]
        raise UsageError(
            f"{flag('backend')} {name}: {why}; run on the CPU with {flag('backend')} numpy, or "
            "install the CuPy wheel matching your CUDA driver (pip install 'rnn-gpu[cuda12]' "
            "or 'rnn-gpu[cuda13]')") from None


def check_plot_format(path: str) -> None:
    """UsageError unless matplotlib can write a file named `path` (by its extension)."""
    from matplotlib.backend_bases import FigureCanvasBase  # noqa: PLC0415

    kinds = FigureCanvasBase.get_supported_filetypes()
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in kinds:
        raise UsageError(f"{flag('plot')}: cannot write {path!s}: expected a file name ending in "
                         + ", ".join(f".{k}" for k in sorted(kinds)))


def diverged_advice() -> str:
    """What to try after a run diverged."""
    return f"try a smaller {flag('lr')} or {flag('clip')}"
