"""What a run shows: its console lines, the live progress bar, and the curves' plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UsageError
from .data import corpus_summary
from .metrics import perplexity


def model_label(cell: str) -> str:
    """How reports name a model of `cell`: ``RNN`` (Elman), ``GRU`` or ``LSTM``."""
    return "RNN" if cell == "elman" else cell.upper()


def hidden_label(cell: str, activation: str = "tanh") -> str:
    """The hidden layer's note: an Elman cell's activation, or nothing for a gated cell."""
    return f" ({activation})" if cell == "elman" else ""


def require_matplotlib(what: str = "plot_history") -> None:
    """UsageError, saying how to install it, when matplotlib is missing; `what` names
    the thing that needs it."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise UsageError(
            f"{what} needs matplotlib, which is not installed: pip install 'rnn-gpu[plot]'"
        ) from None


def plot_history(history: list[dict], path: str | Path) -> Path:
    """Training and validation perplexity against training tokens, as a PNG."""
    require_matplotlib()
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    toks = [r["tokens"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(toks, [perplexity(r["train_loss"]) for r in history], "o-", label="training")
    ax.plot(toks, [r["val_ppl"] for r in history], "s-", label="validation")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


class Report:
    """The console side of a run: a header, one line per evaluation, a closing line,
    and (when `show_progress`) a transient progress bar that the lines print above.
    `console` is a ``rich.console.Console``."""

    def __init__(self, console, show_progress: bool):
        self.console = console
        self.show_progress = show_progress
        self._progress = None
        self._task = None

    def line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def header(self, *, corpus, model, config, lr: float, chunks_per_epoch: int, stops: str,
               step: int, epoch: int) -> None:
        cfg, v = config, len(corpus.vocab)
        resumed = f" (resuming at step {step}, epoch {epoch})" if step else ""
        self.line(f"corpus: {corpus_summary(corpus)}")
        self.line(
            f"model: {model_label(cfg.cell)} {v} -> {cfg.hidden}"
            f"{hidden_label(cfg.cell, cfg.activation)}"
            f"{f' x {cfg.layers} layers' if cfg.layers > 1 else ''} -> {v}"
            f"{' (adaptive softmax)' if cfg.output == 'adaptive' else ''}, "
            f"{np.dtype(model.dtype).name}, backend {model.backend.name} ({model.backend.device})"
        )
        self.line(
            f"training: {cfg.optimizer} lr {lr:g}, clip {cfg.clip or 'off'}, "
            f"schedule {cfg.schedule}, batch {cfg.batch_size} x bptt {cfg.bptt}"
            f"{f', truncate {cfg.truncate}' if cfg.truncate is not None else ''}, {chunks_per_epoch} "
            f"steps/epoch; stops at {stops}{resumed}"
        )

    def evaluation(self, rec: dict, seconds: float, *, end_of_epoch: bool, note: str) -> None:
        """One line for the evaluation record `rec` (train_loss, val_loss, lr, step, epoch)
        after `seconds` of training."""
        train, val = rec["train_loss"], rec["val_loss"]
        label = f"end of epoch {rec['epoch']:3d}" if end_of_epoch else f"step {rec['step']:6d}   "
        line = (
            f"{label} | train loss {train:6.3f} ppl {perplexity(train):8.2f} | "
            f"valid loss {val:6.3f} ppl {perplexity(val):8.2f} | lr {rec['lr']:.2e} | "
            f"{seconds:6.1f} s"
        )
        self.line(f"{line} | {note}" if note else line)

    def finished(self, result) -> None:
        """The closing line, for a :class:`~rnn_gpu.lm.trainer.TrainResult`."""
        self.line(
            f"stopped: {result.stop_reason}; {result.steps} steps, {result.epochs} epochs, "
            f"{result.tokens_per_s:,.0f} tokens/s; valid ppl {result.val_ppl:.3f} "
            f"(best {result.best_val_ppl:.3f}); checkpoint {result.checkpoint}"
            + (f" (best weights: {result.best_checkpoint})" if result.best_checkpoint else "")
        )

    # ---- progress bar -----------------------------------------------------------------

    def start_progress(self, total: float) -> None:
        if not self.show_progress:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

        # under 80 columns up to step 999999 and 9999k tok/s, so that every figure stays visible in an 80-column terminal
        self._progress = Progress(
            BarColumn(bar_width=6), TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
            console=self.console, transient=True,
        )
        self._task = self._progress.add_task("train", total=total, stats="")
        self._progress.start()

    def progress(self, done: float, *, step: int, tokens_per_s: float, train_loss: float,
                 lr: float) -> None:
        if self._progress is None:
            return
        stats = (
            f"step {step} {tokens_per_s / 1e3:.1f}k tok/s loss {train_loss:.3f} "
            f"ppl {perplexity(train_loss):.2f} lr {lr:.1e}"
        )
        self._progress.update(self._task, completed=done, stats=stats)

    def stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
