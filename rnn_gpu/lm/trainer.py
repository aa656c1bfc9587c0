"""Training a language model: :class:`TrainConfig`, :class:`Trainer`, evaluation.

A run reads a corpus, cuts it into ``batch_size`` streams (PyTorch's column layout) and
trains on consecutive chunks of ``bptt`` steps, carrying the hidden state from chunk to
chunk (truncated BPTT; the gradient stops at chunk boundaries). Gradients are those of
the mean token loss, so learning rates and ``clip`` mean what they mean in PyTorch.

Validation runs at the end of every epoch (and every ``eval_every`` steps when set); each
such evaluation feeds the learning-rate schedule and writes a checkpoint. Training stops
at ``epochs``, ``max_steps``, ``time_budget`` seconds, when the schedule says so, on
Ctrl-C (after the current step, with a checkpoint), or -- with a TrainingDiverged error
and the last good checkpoint left in place -- when the loss stops being finite or
explodes.

Example::

    from rnn_gpu.train import Trainer, TrainConfig
    trainer = Trainer(TrainConfig(data="input.txt", hidden=128, max_steps=500))
    result = trainer.fit()
    print(result.val_ppl, trainer.sample(200, temperature=0.8))
"""
from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, DataError, TrainingDiverged, UsageError
from .checkpoint import Checkpoint, build_model, load_checkpoint, save_checkpoint
from .data import Corpus, batchify, check_trainable, corpus_summary, get_chunk, load_corpus, n_chunks
from .optim import DEFAULT_LR, OPTIMIZERS, clip_grad_norm, make_optimizer
from .sample import sample as sample_text
from .schedule import SCHEDULES, make_schedule

DEFAULT_TIME_BUDGET = 60.0  # seconds, when no other stopping criterion is given
DEFAULT_CHECKPOINT = "rnn-gpu-checkpoint.npz"

# Options that fix the model, the data layout or the optimizer's state: a resumed run
# must use the checkpoint's values.
RESUME_FIXED = (
    "level", "vocab_size", "valid_fraction", "hidden", "batch_size", "bptt", "activation",
    "dtype", "seed", "optimizer", "momentum", "schedule", "min_improvement", "input_init",
    "input_lr_scale",
)
INPUT_INITS = ("embedding", "uniform")


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
    activation: str = "tanh"
    # "embedding": U (a token's column is its embedding) starts uniform in +-1 and, with
    # adam/adagrad, learns input_lr_scale times faster; "uniform": the RNN's
    # +-1/sqrt(hidden), one rate
    input_init: str = "embedding"
    input_lr_scale: float | None = None  # None: 2 * sqrt(hidden) (embedding init, adam/adagrad)
    dtype: str = "float32"
    backend: str = "auto"
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
    plot: str | None = None
    sample_length: int = 200
    sample_temperature: float = 0.8

    def resolved_lr(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)

    def stopping_criteria(self) -> tuple[int | None, int | None, float | None]:
        """(epochs, max_steps, time_budget), with the default time budget filled in."""
        if self.epochs is None and self.max_steps is None and self.time_budget is None:
            return None, None, DEFAULT_TIME_BUDGET
        return self.epochs, self.max_steps, self.time_budget

    def validate(self) -> None:
        """UsageError naming the first option with a value that cannot work."""

        def positive_int(name, v, optional=False):
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')}: expected a positive integer, got {v}")

        def positive_num(name, v, optional=False, zero_ok=False):
            if v is None and optional:
                return
            ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
            ok = ok and math.isfinite(v) and (v >= 0 if zero_ok else v > 0)
            if not ok:
                what = "a number >= 0" if zero_ok else "a positive number"
                raise UsageError(f"--{name.replace('_', '-')}: expected {what}, got {v}")

        for n in ("hidden", "batch_size", "bptt", "vocab_size"):
            positive_int(n, getattr(self, n))
        for n in ("truncate", "epochs", "max_steps", "eval_every"):
            positive_int(n, getattr(self, n), optional=True)
        positive_num("lr", self.lr, optional=True)
        positive_num("time_budget", self.time_budget, optional=True)
        positive_num("clip", self.clip, optional=True, zero_ok=True)
        positive_num("momentum", self.momentum, zero_ok=True)
        positive_num("sample_temperature", self.sample_temperature, zero_ok=True)
        if isinstance(self.sample_length, bool) or not isinstance(self.sample_length, int) or self.sample_length < 0:
            raise UsageError(f"--sample-length: expected an integer >= 0, got {self.sample_length}")
        if not (isinstance(self.explode_threshold, (int, float)) and self.explode_threshold > 1):
            raise UsageError(f"--explode-threshold: expected a number > 1, got {self.explode_threshold}")
        if not (isinstance(self.valid_fraction, (int, float)) and 0 < self.valid_fraction < 1):
            raise UsageError(f"--valid-fraction: expected a number in (0, 1), got {self.valid_fraction}")
        if not (isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
                and 0 <= self.dropout < 1):
            raise UsageError(f"--dropout: expected a rate in [0, 1), got {self.dropout}")
        positive_num("input_lr_scale", self.input_lr_scale, optional=True)
        if self.input_init not in INPUT_INITS:
            raise UsageError(f"--input-init: expected one of {', '.join(INPUT_INITS)}, got {self.input_init!r}")
        if self.level not in ("char", "word"):
            raise UsageError(f"--level: expected char or word, got {self.level!r}")
        if self.vocab_size < 3:
            raise UsageError(f"--vocab-size: expected an integer >= 3, got {self.vocab_size}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.momentum and self.optimizer != "sgd":
            raise UsageError(f"--momentum applies to --optimizer sgd only, not {self.optimizer}")
        if self.momentum >= 1:
            raise UsageError(f"--momentum: expected a number in [0, 1), got {self.momentum}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not self.min_improvement >= 1:
            raise UsageError(f"--min-improvement: expected a number >= 1, got {self.min_improvement}")
        out = Path(self.out)
        if out.is_dir():
            raise UsageError(f"--out: {out} is a directory, expected a checkpoint file name")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise UsageError(f"--out: directory {out.parent} does not exist")
        if self.plot is not None:
            _require_matplotlib()
            if not (Path(self.plot).parent if str(Path(self.plot).parent) else Path(".")).is_dir():
                raise UsageError(f"--plot: directory {Path(self.plot).parent} does not exist")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did."""

    steps: int  # optimizer steps so far, including those before a resume
    epochs: int  # completed epochs
    tokens: int  # training tokens seen in this call
    seconds: float  # wall time of this call's training (scheduled evaluations included)
    tokens_per_s: float
    val_loss: float  # mean validation cross-entropy per token (nats) at the end
    val_ppl: float
    best_val_ppl: float
    stop_reason: str
    checkpoint: str
    history: list[dict] = field(default_factory=list)


# -------------------------------------------------------------------------------------
# Evaluation


def token_nll_sum(logits, y) -> float:
    """Sum over all positions of -log softmax(logits)[y]; logits (T, B, O), y (T, B)."""
    xp = _xp_of(logits)
    m = logits.max(axis=-1, keepdims=True)
    lse = xp.log(xp.exp(logits - m).sum(axis=-1)) + m[..., 0]
    picked = xp.take_along_axis(logits, y[..., None].astype(xp.int64), axis=-1)[..., 0]
    return float((lse - picked).sum(dtype=xp.float64))


def evaluate(model, source: np.ndarray, bptt: int) -> float:
    """Mean cross-entropy per token (nats) of `model` on batchified ids `source` (rows, B),
    reading it in chunks of `bptt` with the hidden state carried across chunks."""
    be = model.backend
    total, count, h = 0.0, 0, None
    for k in range(n_chunks(source.shape[0], bptt)):
        x, y = get_chunk(source, k * bptt, bptt)
        logits, h = model.forward(be.asarray(x), h0=h)
        total += token_nll_sum(logits, be.asarray(y))
        h = h.copy()  # the engine may reuse its output buffers
        count += y.size
    if count == 0:
        raise DataError("validation text is too small to evaluate on")
    return total / count


def _xp_of(a):
    from ..backend import array_module  # noqa: PLC0415

    return array_module(a)


def perplexity(loss_per_token: float) -> float:
    return math.exp(loss_per_token) if loss_per_token < 700 else math.inf


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'rnn-gpu[plot]'"
        ) from None


def plot_history(history: list[dict], path: str | Path) -> Path:
    """Training and validation perplexity against training tokens, as a PNG."""
    _require_matplotlib()
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    toks = [r["tokens"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(toks, [perplexity(r["train_loss"]) for r in history], "o-", label="training")
    ax.plot(toks, [r["val_ppl"] for r in history], "s-", label="validation")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# -------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Owns a model, its data, optimizer and schedule, and the position in the data.

    ``Trainer(config)`` starts a fresh run; :meth:`from_checkpoint` resumes one. Nothing
    is written to disk before :meth:`fit`, and every input is checked in the constructor.
    `console` is a ``rich.console.Console`` for progress and logs (None: stdout);
    `progress` forces the live progress bar on or off (None: on at a terminal).
    """

    def __init__(self, config: TrainConfig, *, console=None, progress: bool | None = None,
                 _checkpoint: Checkpoint | None = None):
        config.validate()
        self.config = cfg = config
        from rich.console import Console  # noqa: PLC0415

        self.console = console if console is not None else Console(highlight=False)
        self.show_progress = self.console.is_terminal if progress is None else progress
        ck = _checkpoint

        self.corpus: Corpus = load_corpus(
            cfg.data, valid=cfg.valid, valid_fraction=cfg.valid_fraction, level=cfg.level,
            vocab_size=cfg.vocab_size,
        )
        if ck is not None and ck.vocab != self.corpus.vocab:
            raise CheckpointError(
                f"vocabulary mismatch on resume: the data gives a different vocabulary than "
                f"checkpoint {ck.path} ({ck.vocab.describe_difference(self.corpus.vocab)}); "
                "resume with the data the run started with"
            )
        check_trainable(len(self.corpus.train), cfg.batch_size, cfg.bptt,
                        advice="smaller --batch-size / --bptt")
        if len(self.corpus.valid) < 2:
            raise DataError("validation text is too small: it needs at least 2 tokens")
        self.vocab = self.corpus.vocab
        self.train_data = batchify(self.corpus.train, cfg.batch_size)  # (rows, B)
        eval_b = max(1, min(cfg.batch_size, len(self.corpus.valid) // (cfg.bptt + 1)))
        self.valid_data = batchify(self.corpus.valid, eval_b)
        self.chunks_per_epoch = n_chunks(self.train_data.shape[0], cfg.bptt)

        V = len(self.vocab)
        if ck is None:
            from ..model import RNN  # noqa: PLC0415

            self.model = RNN(V, cfg.hidden, V, backend=cfg.backend, dtype=cfg.dtype, seed=cfg.seed,
                             hidden_activation=cfg.activation, output="softmax")
        else:
            self.model = build_model(ck.model_config, ck.params, cfg.backend)
        self.xp = self.model.backend.xp
        if ck is None and cfg.input_init == "embedding":
            self.model.params["U"][...] *= self.model.dtype.type(math.sqrt(cfg.hidden))  # +-1
        self.optimizer = make_optimizer(cfg.optimizer, self.model.params, cfg.resolved_lr(),
                                        momentum=cfg.momentum, lr_scale=self.lr_scale())
        self.schedule = make_schedule(cfg.schedule, cfg.resolved_lr(), cfg.min_improvement)
        self.rng = np.random.default_rng(cfg.seed)

        # position in the data and training state (all saved in checkpoints)
        self.step = 0
        self.epoch = 0
        self.chunk = 0  # next chunk of the current epoch
        self.hidden = None  # (B, H) carried into the next chunk; None: zeros
        self.elapsed = 0.0  # training seconds before this call of fit()
        self.tokens_total = 0
        self.history: list[dict] = []
        self.prev_params: dict | None = None  # Mikolov schedule: weights to restore
        self.last_saved: str | None = None
        self._interrupted = False
        self._fit_start: float | None = None  # perf_counter at the start of fit()
        if ck is not None:
            self._restore(ck)

    def lr_scale(self) -> dict:
        """Per-parameter rate multipliers implied by the configuration."""
        cfg = self.config
        if cfg.input_lr_scale is not None:
            return {"U": float(cfg.input_lr_scale)}
        if cfg.input_init == "embedding" and cfg.optimizer in ("adam", "adagrad"):
            return {"U": 2.0 * math.sqrt(cfg.hidden)}
        return {}

    # ---- resuming -------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, console=None, progress: bool | None = None,
                        **overrides) -> Trainer:
        """Resume the run saved in `path`. `overrides` may change how long and where it
        goes on (epochs, max_steps, time_budget, eval_every, out, plot, backend, lr, clip,
        ...) but not what fixes the model, the data layout or the optimizer
        (RESUME_FIXED); by default it writes back to `path`. Any of epochs, max_steps,
        time_budget given replaces all three saved ones; max_steps and epochs count from
        the start of the original run."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise TypeError(f"from_checkpoint: unknown TrainConfig fields {sorted(unknown)}")
        ck = load_checkpoint(path, with_model=False)
        saved = ck.train_config
        if not saved or not ck.train_state or ck.vocab is None:
            raise CheckpointError(f"checkpoint {path} holds a model only, not a training run to resume")
        for k in RESUME_FIXED:
            if k in overrides and overrides[k] != saved.get(k):
                raise UsageError(
                    f"--{k.replace('_', '-')} {overrides[k]} differs from the checkpoint's "
                    f"{saved.get(k)}; a resumed run keeps the checkpoint's value"
                )
        d = {**saved, "out": str(path)}
        if "input_lr_scale" not in saved and saved.get("input_init", "embedding") == "embedding" \
                and saved.get("optimizer") in ("adam", "adagrad"):
            d["input_lr_scale"] = math.sqrt(saved["hidden"])  # runs saved before the option
        stops = ("epochs", "max_steps", "time_budget")
        if any(overrides.get(k) is not None for k in stops):  # new stopping rules replace the old
            d.update(dict.fromkeys(stops))
        d.update(overrides)
        return cls(TrainConfig.from_dict(d), console=console, progress=progress, _checkpoint=ck)

    def _restore(self, ck: Checkpoint) -> None:
        st = ck.train_state
        try:
            self.optimizer.load_state_dict(ck.meta["optimizer"], ck.optim)
            if ck.meta.get("schedule"):
                self.schedule.load_state_dict(ck.meta["schedule"])
            self.optimizer.lr = self.schedule.lr
            if self.config.lr is not None and self.config.lr != ck.train_config.get("lr"):
                self.optimizer.lr = self.schedule.lr = float(self.config.lr)  # explicit change
            self.step, self.epoch, self.chunk = int(st["step"]), int(st["epoch"]), int(st["chunk"])
            self.elapsed = float(st.get("elapsed", 0.0))
            self.tokens_total = int(st.get("tokens", 0))
            self.history = list(st.get("history", []))
            self.rng.bit_generator.state = st["rng"]
            self.last_saved = str(ck.path)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ck.path}: training state is incomplete ({e})") from None
        be = self.model.backend
        if "hidden" in ck.state:
            h = ck.state["hidden"]
            if h.shape != (self.config.batch_size, self.config.hidden):
                raise CheckpointError(f"checkpoint {ck.path}: hidden state has shape {h.shape}")
            self.hidden = be.asarray(h, dtype=self.model.dtype)
        prev = {k[len("prev_"):]: v for k, v in ck.state.items() if k.startswith("prev_")}
        if prev:
            self.prev_params = {k: be.asarray(v, dtype=self.model.dtype) for k, v in prev.items()}
        if self.chunk >= self.chunks_per_epoch:  # the data changed size; start a new epoch
            self.chunk, self.hidden = 0, None

    # ---- checkpoints ----------------------------------------------------------------

    def train_state(self) -> dict:
        return {
            "step": self.step, "epoch": self.epoch, "chunk": self.chunk,
            "elapsed": self._elapsed(), "tokens": self.tokens_total,
            "rng": self.rng.bit_generator.state, "history": self.history,
            "corpus": self.corpus.source,
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint of the current state (atomically) to `path` or config.out."""
        arrays: dict[str, Any] = {}
        if self.hidden is not None:
            arrays["hidden"] = self.hidden
        if self.prev_params is not None:
            arrays.update({f"prev_{k}": v for k, v in self.prev_params.items()})
        p = save_checkpoint(
            path or self.config.out, self.model, vocab=self.vocab,
            train_config=self.config.to_dict(), train_state=self.train_state(),
            optimizer=self.optimizer, schedule=self.schedule, arrays=arrays,
        )
        self.last_saved = str(p)
        return p

    # ---- training -------------------------------------------------------------------

    def train_step(self) -> tuple[float, int]:
        """One optimizer step on the next chunk; returns (summed loss, tokens)."""
        cfg, be = self.config, self.model.backend
        x, y = get_chunk(self.train_data, self.chunk * cfg.bptt, cfg.bptt)
        loss, grads, h = self.model.loss_and_grads(
            be.asarray(x), be.asarray(y), h0=self.hidden, truncate=cfg.truncate,
            dropout=self._dropout_multipliers(x.shape) if cfg.dropout else None,
        )
        ntok = int(x.size)
        loss = float(loss)
        per_tok = loss / ntok
        limit = cfg.explode_threshold * math.log(max(len(self.vocab), 2))
        if not math.isfinite(per_tok) or per_tok > limit:
            why = "became non-finite" if not math.isfinite(per_tok) else (
                f"exploded ({per_tok:.3g} nats/token > {cfg.explode_threshold:g} x log(vocab))")
            self._diverged(f"training loss {why} at step {self.step + 1}")
        inv = 1.0 / ntok
        for g in grads.values():  # gradient of the mean token loss
            g *= g.dtype.type(inv)
        norm = clip_grad_norm(grads, cfg.clip or None, self.xp)
        if not math.isfinite(norm):
            self._diverged(f"gradient norm became non-finite at step {self.step + 1}")
        self.optimizer.step(grads)
        self.hidden = h.copy()
        self.step += 1
        self.chunk += 1
        self.tokens_total += ntok
        return loss, ntok

    def _dropout_multipliers(self, shape) -> np.ndarray:
        """(T, B, H) inverted-dropout multipliers, 0 or 1/(1-p), from the run's random
        stream (saved in checkpoints, so a resumed run draws the same ones)."""
        p, dt = self.config.dropout, self.model.dtype
        keep = self.rng.random((*shape, self.config.hidden), dtype=np.float32) >= p
        return np.multiply(keep, dt.type(1.0 / (1.0 - p)), dtype=dt)  # one pass

    def _diverged(self, what: str) -> None:
        kept = (f"the last good checkpoint is kept at {self.last_saved}" if self.last_saved
                else "no checkpoint was written")
        raise TrainingDiverged(f"{what}; training stopped ({kept}); try a smaller --lr or --clip")

    def evaluate(self) -> float:
        """Mean validation cross-entropy per token (nats)."""
        return evaluate(self.model, self.valid_data, self.config.bptt)

    def _elapsed(self) -> float:
        """Training seconds over all runs, up to now."""
        if self._fit_start is None:
            return self.elapsed
        return self.elapsed + time.perf_counter() - self._fit_start

    def _copy_params(self) -> dict:
        return {k: v.copy() for k, v in self.model.params.items()}

    def _scheduled_eval(self, val_loss: float) -> str:
        """Let the schedule act on `val_loss`; returns a note for the log ('' if none)."""
        d = self.schedule.on_eval(val_loss)
        if d.restore and self.prev_params is not None:
            for k, v in self.prev_params.items():
                self.model.params[k][...] = v
        elif self.schedule.keeps_weights:
            self.prev_params = self._copy_params()
        self.optimizer.lr = d.lr
        if d.stop:
            self._stop_reason = "the learning-rate schedule converged"
        return d.note

    def fit(self) -> TrainResult:
        """Train until a stopping criterion; returns a :class:`TrainResult`."""
        cfg = self.config
        epochs, max_steps, budget = cfg.stopping_criteria()
        self._stop_reason = ""
        self._log_header(epochs, max_steps, budget)
        start = self._fit_start = time.perf_counter()
        p0 = getattr(self.schedule, "progress", 0.0)  # where a resumed run left off
        tokens_here = 0
        loss_sum, loss_tok = 0.0, 0  # since the last evaluation
        last_eval_step = -1
        restore_sig = self._install_sigint()
        progress, task = self._start_progress(epochs, max_steps, budget)
        try:
            while True:
                now = time.perf_counter() - start
                if max_steps is not None and self.step >= max_steps:
                    self._stop_reason = self._stop_reason or f"reached --max-steps {max_steps}"
                if epochs is not None and self.epoch >= epochs:
                    self._stop_reason = self._stop_reason or f"reached --epochs {epochs}"
                if budget is not None and now >= budget:
                    self._stop_reason = self._stop_reason or f"used the time budget of {budget:g} s"
                if self._interrupted:
                    self._stop_reason = "interrupted"
                if self._stop_reason:
                    break
                lr = self.schedule.rate_at(self._progress(now, p0, epochs, max_steps, budget))
                if lr is not None:
                    self.optimizer.lr = lr
                loss, ntok = self.train_step()
                loss_sum += loss
                loss_tok += ntok
                tokens_here += ntok
                end_of_epoch = self.chunk >= self.chunks_per_epoch
                if end_of_epoch:
                    self.epoch += 1
                    self.chunk, self.hidden = 0, None  # each epoch starts from a zero state
                if progress is not None:
                    self._update_progress(progress, task, start, tokens_here, loss_sum / loss_tok,
                                          epochs, max_steps, budget)
                if end_of_epoch or (cfg.eval_every and self.step % cfg.eval_every == 0):
                    self._evaluation(start, loss_sum / loss_tok, scheduled=True,
                                     progress=progress, end_of_epoch=end_of_epoch)
                    loss_sum, loss_tok = 0.0, 0
                    last_eval_step = self.step
            seconds = time.perf_counter() - start  # training time, without the closing evaluation
            if last_eval_step != self.step or not self.history:
                train_loss = loss_sum / loss_tok if loss_tok else (
                    self.history[-1]["train_loss"] if self.history else float("nan"))
                self._evaluation(start, train_loss, scheduled=False, progress=progress)
        finally:
            if progress is not None:
                progress.stop()
            restore_sig()
        self.elapsed += time.perf_counter() - start
        self._fit_start = None
        last = self.history[-1]
        result = TrainResult(
            steps=self.step, epochs=self.epoch, tokens=tokens_here, seconds=seconds,
            tokens_per_s=tokens_here / max(seconds, 1e-9), val_loss=last["val_loss"],
            val_ppl=last["val_ppl"], best_val_ppl=min(r["val_ppl"] for r in self.history),
            stop_reason=self._stop_reason, checkpoint=str(self.last_saved), history=list(self.history),
        )
        self._print(
            f"stopped: {result.stop_reason}; {result.steps} steps, {self.epoch} epochs, "
            f"{result.tokens_per_s:,.0f} tokens/s; valid ppl {result.val_ppl:.3f} "
            f"(best {result.best_val_ppl:.3f}); checkpoint {result.checkpoint}"
        )
        if cfg.plot:
            plot_history(self.history, cfg.plot)
            self._print(f"curves written to {cfg.plot}")
        return result

    def _progress(self, now: float, p0: float, epochs, max_steps, budget) -> float:
        """Fraction of the run done, by whichever stopping rule is furthest along. Steps
        and epochs count from the start of the run; seconds count in this call, which
        covers what the previous calls left (from `p0`) to the end."""
        done = [0.0]
        if max_steps is not None:
            done.append(self.step / max_steps)
        if epochs is not None:
            cpe = self.chunks_per_epoch
            done.append((self.epoch * cpe + self.chunk) / (epochs * cpe))
        if budget is not None:
            done.append(p0 + (1.0 - p0) * now / budget)
        return min(max(done), 1.0)

    def _evaluation(self, start: float, train_loss: float, *, scheduled: bool, progress,
                    end_of_epoch: bool = False) -> None:
        now = time.perf_counter() - start
        val = self.evaluate()
        note = self._scheduled_eval(val) if scheduled else ""
        rec = {
            "step": self.step, "epoch": self.epoch, "tokens": self.tokens_total,
            "time": round(self.elapsed + now, 3), "train_loss": train_loss,
            "val_loss": val, "val_ppl": perplexity(val), "lr": self.optimizer.lr,
        }
        self.history.append(rec)
        self.save()
        label = f"end of epoch {self.epoch:3d}" if end_of_epoch else f"step {self.step:6d}   "
        line = (
            f"{label} | train loss {train_loss:6.3f} ppl {perplexity(train_loss):8.2f} | "
            f"valid loss {val:6.3f} ppl {perplexity(val):8.2f} | lr {self.optimizer.lr:.2e} | "
            f"{self.elapsed + now:6.1f} s"
        )
        if note:
            line += f" | {note}"
        self._print(line, progress)

    # ---- output ---------------------------------------------------------------------

    def _print(self, line: str, progress=None) -> None:
        console = progress.console if progress is not None else self.console
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _log_header(self, epochs, max_steps, budget) -> None:
        cfg, m = self.config, self.model
        stops = [s for s in (
            f"{epochs} epochs" if epochs is not None else "",
            f"step {max_steps}" if max_steps is not None else "",
            f"{budget:g} s" if budget is not None else "",
        ) if s]
        resumed = f" (resuming at step {self.step}, epoch {self.epoch})" if self.step else ""
        self._print(f"corpus: {corpus_summary(self.corpus)}")
        self._print(
            f"model: RNN {len(self.vocab)} -> {cfg.hidden} ({cfg.activation}) -> {len(self.vocab)}, "
            f"{np.dtype(m.dtype).name}, backend {m.backend.name} ({m.backend.device})"
        )
        self._print(
            f"training: {cfg.optimizer} lr {self.optimizer.lr:g}, clip {cfg.clip or 'off'}, "
            f"schedule {cfg.schedule}, batch {cfg.batch_size} x bptt {cfg.bptt}"
            f"{f', truncate {cfg.truncate}' if cfg.truncate else ''}, {self.chunks_per_epoch} "
            f"steps/epoch; stops at {' or '.join(stops)}{resumed}"
        )

    def _start_progress(self, epochs, max_steps, budget):
        if not self.show_progress:
            return None, None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

        progress = Progress(
            TextColumn("[bold]train"), BarColumn(bar_width=16), TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
            console=self.console, transient=True,
        )
        total = self._progress_total(epochs, max_steps, budget)
        task = progress.add_task("train", total=total, stats="")
        progress.start()
        return progress, task

    def _progress_total(self, epochs, max_steps, budget) -> float:
        if max_steps is not None:
            return float(max_steps)
        if epochs is not None:
            return float(epochs * self.chunks_per_epoch)
        return float(budget)

    def _update_progress(self, progress, task, start, tokens_here, train_loss, epochs, max_steps, budget):
        now = time.perf_counter() - start
        if max_steps is not None:
            done = self.step
        elif epochs is not None:
            done = self.epoch * self.chunks_per_epoch + self.chunk
        else:
            done = now
        stats = (
            f"step {self.step} | {tokens_here / max(now, 1e-9) / 1e3:.1f}k tok/s | "
            f"loss {train_loss:.3f} | ppl {perplexity(train_loss):.2f} | lr {self.optimizer.lr:.1e}"
        )
        progress.update(task, completed=done, stats=stats)

    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self._interrupted:  # second Ctrl-C: give up at once
                raise KeyboardInterrupt
            self._interrupted = True

        old = signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, old)

    # ---- sampling -------------------------------------------------------------------

    def sample(self, length: int = 200, *, prime: str = "", temperature: float = 0.8,
               seed: int | None = None) -> str:
        """Text drawn from the model; `seed` None continues the run's own RNG stream."""
        rng = self.rng if seed is None else np.random.default_rng(seed)
        return sample_text(self.model, self.vocab, length, prime=prime, temperature=temperature, rng=rng)
