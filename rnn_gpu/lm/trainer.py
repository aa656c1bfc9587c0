"""Training a language model: :class:`Trainer`, the loop.

A run reads a corpus, cuts it into ``batch_size`` streams (PyTorch's column layout) and
trains on consecutive chunks of ``bptt`` steps, carrying the hidden state from chunk to
chunk (truncated BPTT; the gradient stops at chunk boundaries). Gradients are those of
the mean token loss, so learning rates and ``clip`` mean what they mean in PyTorch.

Validation runs at the end of every epoch (and every ``eval_every`` steps when set); each
such evaluation feeds the learning-rate schedule and writes a checkpoint, and one with a
new best validation loss also writes the best weights (``keep_best``: ``NAME.best.npz``
beside the checkpoint, :func:`~rnn_gpu.lm.checkpoint.best_path`). Training stops
by the rules of :mod:`rnn_gpu.lm.stopping` (``epochs``, ``max_steps``, ``time_budget``
seconds, the schedule), on Ctrl-C or SIGTERM (after the current step, with a checkpoint),
or -- with
a TrainingDiverged error and the last good checkpoint left in place -- when the loss
stops being finite or explodes. The configuration is :mod:`rnn_gpu.lm.config`, the state
that checkpoints save :mod:`rnn_gpu.lm.state`, the console output :mod:`rnn_gpu.lm.report`.

Example::

    from rnn_gpu.lm import Trainer, TrainConfig
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

import numpy as np

from ..dist import DataParallel
from ..errors import CheckpointError, DataError, TrainingDiverged, UsageError
from ..model import RNN
from ..states import map_state
from .checkpoint import Checkpoint, best_path, load_checkpoint
from .config import TrainConfig, diverged_advice, flag
from .data import Corpus, batchify, get_chunk, load_corpus, n_chunks
from .metrics import perplexity
from .optim import clip_grad_norm, clip_grad_norm_on_device, make_optimizer
from .report import Report, plot_history
from .sample import sample as sample_text
from .schedule import Decision, make_schedule
from .state import RunState, restore_run, save_run
from .stopping import Position, Stopping


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
    best_checkpoint: str = ""  # the best weights (keep_best), "" when none were kept


class Trainer:
    """Owns a model, its data, optimizer and schedule, and the run's :class:`RunState`.

    ``Trainer(config)`` starts a fresh run; :meth:`from_checkpoint` resumes one. Nothing
    is written to disk before :meth:`fit`, and every input is checked in the constructor:
    a fresh run refuses to replace an existing checkpoint unless ``config.overwrite``, and
    a probe file checks that ``config.out`` can be written. Data paths are stored resolved.
    `console` is a ``rich.console.Console`` for progress and logs (None: stdout);
    `progress` forces the live progress bar on or off (None: on at a terminal).
    Under ``mpiexec`` (or with `comm`, a :class:`rnn_gpu.dist.Communicator`) the run is
    data-parallel over the ranks (:mod:`rnn_gpu.dist`); rank 0 alone prints and writes.
    """

    def __init__(self, config: TrainConfig, *, console=None, progress: bool | None = None,
                 comm=None, _checkpoint: Checkpoint | None = None):
        config.validate()
        self.config = cfg = config
        from rich.console import Console  # noqa: PLC0415

        # data parallel: this rank's streams, device and share of the sums (a no-op alone)
        self.dist = DataParallel(cfg.batch_size, cfg.backend if isinstance(cfg.backend, str)
                                 else cfg.backend.name, comm, name=flag("batch_size"))
        if not self.dist.is_root:
            console, progress = self.dist.console(console), False
        self.console = console if console is not None else Console(highlight=False)
        self.report = Report(self.console, self.console.is_terminal if progress is None else progress)
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
        saved_digest = (ck.train_state or {}).get("data_sha256") if ck is not None else None
        if cfg.data is not None and saved_digest and saved_digest != self.corpus.digest:
            raise CheckpointError(
                f"the text of {cfg.data} differs from the text checkpoint {ck.path} was trained "
                "on (SHA-256 mismatch); resume with the data the run started with"
            )
        for k in ("data", "valid"):  # a resume from another directory finds them
            if getattr(cfg, k) is not None:
                setattr(cfg, k, str(Path(getattr(cfg, k)).resolve()))
        cfg.check_trainable(len(self.corpus.train))
        if len(self.corpus.valid) < 2:
            raise DataError("validation text is too small: it needs at least 2 tokens")
        self.vocab = self.corpus.vocab
        self.train_data = self.dist.streams(batchify(self.corpus.train, cfg.batch_size))  # (rows, B/N)
        eval_b = max(1, min(cfg.batch_size, len(self.corpus.valid) // (cfg.bptt + 1)))
        self.valid_data = batchify(self.corpus.valid, eval_b)
        self.chunks_per_epoch = n_chunks(self.train_data.shape[0], cfg.bptt)
        V = len(self.vocab)
        for what, ids in (("training", self.corpus.train), ("validation", self.corpus.valid)):
            # once, here: the steps then pass ids on without checking them (no host reads)
            if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
                raise DataError(f"{what} text: token ids outside [0, {V}) (a corrupt corpus)")

        if ck is None:
            self.model = RNN.from_config(cfg.model_config(len(self.vocab)), backend=cfg.backend)
            if cfg.input_init == "embedding":
                self.model.params["U"][...] *= self.model.dtype.type(math.sqrt(cfg.hidden))  # +-1
        else:
            self.model = RNN.from_config(ck.model_config, backend=cfg.backend, params=ck.params)
        cell = self.model.cell
        if cell != "elman" and not hasattr(self.model.backend.ops, f"{cell}_forward"):
            raise UsageError(f"{flag('cell')} {cell}: the {self.model.backend.name} backend's "
                             f"kernel set has no {cell} kernels in this installation; train "
                             f"it with {flag('backend')} numpy")
        self.optimizer = make_optimizer(cfg.optimizer, self.model.params, cfg.resolved_lr(),
                                        momentum=cfg.momentum, lr_scale=cfg.lr_scale())
        self.schedule = make_schedule(cfg.schedule, cfg.resolved_lr(), cfg.min_improvement)
        self.last_saved: str | None = None  # the latest checkpoint of this run
        if ck is None:
            self.state = RunState(rng=np.random.default_rng(cfg.seed))
        else:
            self.state = restore_run(ck, model=self.model, config=cfg, optimizer=self.optimizer,
                                     schedule=self.schedule)
            self.last_saved = str(ck.path)
            self.state.hidden = self.dist.local_hidden(self.state.hidden)
            if self.state.chunk >= self.chunks_per_epoch:  # the data changed size: a new epoch
                self.state.chunk, self.state.hidden = 0, None
        self.interrupted = False  # set by interrupt(): stop after the current step
        self.stop_signal: int | None = None  # the signal that interrupted fit(), if one did
        # output writable, no other run's checkpoint replaced: checked on rank 0, shared
        self.dist.root_verdict(lambda: cfg.check_output(resuming=ck is not None))

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, console=None, progress: bool | None = None,
                        comm=None, **overrides) -> Trainer:
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
        if not ck.train_config or not ck.train_state or ck.vocab is None:
            raise CheckpointError(f"checkpoint {path} holds a model only, not a training run to resume")
        config = TrainConfig.for_resume(ck.train_config, path, overrides)
        return cls(config, console=console, progress=progress, comm=comm, _checkpoint=ck)

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint of the current state (atomically) to `path` or config.out.
        Under MPI every rank calls it; rank 0 writes the states of all streams."""
        state = self.state
        if self.dist.active:  # the states of all ranks' streams (an LSTM's h and c), on rank 0
            self.dist.gather_optimizer(self.optimizer)
            state = dataclasses.replace(state, hidden=self.dist.full_hidden(state.hidden,
                                                                            self.model.backend))
            if not self.dist.is_root:
                self.last_saved = str(path or self.config.out)
                return Path(self.last_saved)
        p = save_run(path or self.config.out, model=self.model, vocab=self.vocab,
                     config=self.config, state=state, optimizer=self.optimizer,
                     schedule=self.schedule, corpus=self.corpus.source,
                     data_sha256=self.corpus.digest)
        self.last_saved = str(p)
        return p

    @property
    def best_checkpoint(self) -> Path:
        """Where the best weights are kept (when ``config.keep_best``)."""
        return best_path(self.config.out)

    def interrupt(self) -> None:
        """Stop :meth:`fit` after the current step, with a checkpoint (what Ctrl-C does)."""
        self.interrupted = True

    # ---- one step -------------------------------------------------------------------

    def train_step(self) -> tuple[float, int]:
        """One optimizer step on the next chunk; returns (summed loss, tokens)."""
        cfg, st = self.config, self.state
        x, y = get_chunk(self.train_data, st.chunk * cfg.bptt, cfg.bptt)
        drop = (self.dist.local_dropout(self._dropout_multipliers((x.shape[0], cfg.batch_size)))
                if cfg.dropout else None)
        gpu = self.model.backend.is_gpu
        if gpu and cfg.cuda_graph:  # one captured step per shape, replayed
            loss, grads, h = self._captured(x.shape)(
                self.model.params, *self._on_device(x, y), st.hidden, None,
                None if drop is None else self.model.backend.asarray(drop))
        elif gpu:  # the ids were checked once, the state is the model's own
            loss, grads, h = self.model.loss_and_grads_trusted(x, y, h0=st.hidden,
                                                               truncate=cfg.truncate, dropout=drop)
        else:
            loss, grads, h = self.model.loss_and_grads(x, y, h0=st.hidden, truncate=cfg.truncate,
                                                       dropout=drop)
        ntok = int(x.size)
        loss = float(loss)  # the step's one host read
        if self.dist.active:  # summed over ranks: gradients, loss, tokens; agreed interrupt
            loss, ntok = self.dist.sum_step(grads, loss, ntok, self.interrupted,
                                            time.perf_counter() - (st.started or time.perf_counter()),
                                            self.model.backend)
        per_tok = loss / ntok
        limit = cfg.explode_threshold * math.log(max(len(self.vocab), 2))
        if not math.isfinite(per_tok) or per_tok > limit:
            why = "became non-finite" if not math.isfinite(per_tok) else (
                f"exploded ({per_tok:.3g} nats/token > {cfg.explode_threshold:g} x log(vocab))")
            self._diverged(f"training loss {why} at step {st.step + 1}")
        inv = 1.0 / ntok
        if self.dist.shards:  # data parallel on the host: each rank steps its shard
            if not math.isfinite(self.dist.update(inv, cfg.clip or None, self.optimizer)):
                self._diverged(f"gradient norm became non-finite at step {st.step + 1}")
        else:
            self._update(grads, inv, gpu)
        st.hidden = map_state(lambda a: a.copy(), h)  # (an LSTM's (h, c)) never a buffer reused
        st.step += 1
        st.chunk += 1
        st.tokens += ntok
        return loss, ntok

    def _update(self, grads: dict, inv: float, gpu: bool) -> None:
        """Scale `grads` by `inv` (to the mean token loss), clip, step the optimizer."""
        cfg = self.config
        for g in grads.values():  # gradient of the mean token loss
            g *= g.dtype.type(inv)
        if gpu:  # no host read: a non-finite norm shows in the next step's loss
            clip_grad_norm_on_device(grads, cfg.clip or None, self.model.backend.xp)
        else:
            norm = clip_grad_norm(grads, cfg.clip or None, self.model.backend.xp)
            if not math.isfinite(norm):
                self._diverged(f"gradient norm became non-finite at step {self.state.step + 1}")
        self.optimizer.step(grads)

    def _captured(self, shape: tuple[int, int]):
        """The captured step for chunks of `shape` (T, B), made on first use."""
        steps = self.__dict__.setdefault("_steps", {})
        if shape not in steps:
            steps[shape] = self.model.captured_step(*shape, truncate=self.config.truncate,
                                                    dropout=bool(self.config.dropout))
        return steps[shape]

    def _on_device(self, x, y):
        be = self.model.backend
        return be.asarray(x), be.asarray(y)

    def _dropout_multipliers(self, shape) -> np.ndarray:
        """(T, B, H) inverted-dropout multipliers, 0 or 1/(1-p), from the run's random
        stream (saved in checkpoints, so a resumed run draws the same ones)."""
        p, dt = self.config.dropout, self.model.dtype
        keep = self.state.rng.random(self.model.dropout_shape(*shape), dtype=np.float32) >= p
        return np.multiply(keep, dt.type(1.0 / (1.0 - p)), dtype=dt)  # one pass

    def _diverged(self, what: str) -> None:
        kept = (f"the last good checkpoint is kept at {self.last_saved}" if self.last_saved
                else "no checkpoint was written")
        raise TrainingDiverged(f"{what}; training stopped ({kept}); {diverged_advice()}")

    # ---- evaluation -----------------------------------------------------------------

    def evaluate(self) -> float:
        """Mean validation cross-entropy per token (nats)."""
        return self.dist.evaluate(self.model, self.valid_data, self.config.bptt)

    def _scheduled_eval(self, val_loss: float) -> Decision:
        """Let the schedule act on `val_loss` (new rate, restored weights); its decision."""
        d = self.schedule.on_eval(val_loss)
        st = self.state
        if d.restore and st.prev_params is not None:
            for k, v in st.prev_params.items():
                self.model.params[k][...] = v
        elif self.schedule.keeps_weights:
            st.prev_params = {k: v.copy() for k, v in self.model.params.items()}
        self.optimizer.lr = d.lr
        return d

    def _evaluation(self, start: float, train_loss: float, *, scheduled: bool,
                    end_of_epoch: bool = False) -> Decision | None:
        """Evaluate, let the schedule act (when `scheduled`), record, save and report."""
        st = self.state
        now = time.perf_counter() - start
        val = self.evaluate()
        self.dist.check_in_step(self.model.params, st.step)
        d = self._scheduled_eval(val) if scheduled else None
        rec = {
            "step": st.step, "epoch": st.epoch, "tokens": st.tokens,
            "time": round(st.elapsed + now, 3), "train_loss": train_loss,
            "val_loss": val, "val_ppl": perplexity(val), "lr": self.optimizer.lr,
        }
        best_before = min((r["val_loss"] for r in st.history), default=math.inf)
        st.history.append(rec)
        self.save()
        if self.config.keep_best and val < best_before:
            self.save(self.best_checkpoint)
            self.last_saved = str(self.config.out)
        self.report.evaluation(rec, st.elapsed + now, end_of_epoch=end_of_epoch,
                               note=d.note if d is not None else "")
        return d

    # ---- the loop -------------------------------------------------------------------

    def _position(self, start: float) -> Position:
        st = self.state
        return Position(st.step, st.epoch, st.chunk, self.dist.seconds(start))

    def fit(self) -> TrainResult:
        """Train until a stopping rule says stop; returns a :class:`TrainResult`."""
        cfg, st = self.config, self.state
        stops = Stopping(cfg, self.chunks_per_epoch, p0=getattr(self.schedule, "progress", 0.0))
        self.report.header(corpus=self.corpus, model=self.model, config=cfg, lr=self.optimizer.lr,
                           chunks_per_epoch=self.chunks_per_epoch, stops=stops.announce(),
                           step=st.step, epoch=st.epoch)
        start = st.started = time.perf_counter()
        tokens_here = 0
        loss_sum, loss_tok = 0.0, 0  # since the last evaluation
        last_eval_step = -1
        restore_sig = self._install_signals()
        self.report.start_progress(stops.bar(self._position(start))[1])
        try:
            while True:
                pos = self._position(start)
                reason = "interrupted" if self.dist.interrupted(self.interrupted) else stops.reason(pos)
                if reason:
                    break
                lr = self.schedule.rate_at(stops.fraction(pos))
                if lr is not None:
                    self.optimizer.lr = lr
                loss, ntok = self.train_step()
                loss_sum += loss
                loss_tok += ntok
                tokens_here += ntok
                end_of_epoch = st.chunk >= self.chunks_per_epoch
                if end_of_epoch:
                    st.epoch += 1
                    st.chunk, st.hidden = 0, None  # each epoch starts from a zero state
                pos = self._position(start)
                self.report.progress(stops.bar(pos)[0], step=st.step,
                                     tokens_per_s=tokens_here / max(pos.seconds, 1e-9),
                                     train_loss=loss_sum / loss_tok, lr=self.optimizer.lr)
                if end_of_epoch or (cfg.eval_every and st.step % cfg.eval_every == 0):
                    d = self._evaluation(start, loss_sum / loss_tok, scheduled=True,
                                         end_of_epoch=end_of_epoch)
                    stops.converged = stops.converged or d.stop
                    loss_sum, loss_tok = 0.0, 0
                    last_eval_step = st.step
            seconds = time.perf_counter() - start  # training time, without the closing evaluation
            if last_eval_step != st.step or not st.history:
                train_loss = loss_sum / loss_tok if loss_tok else (
                    st.history[-1]["train_loss"] if st.history else float("nan"))
                self._evaluation(start, train_loss, scheduled=False)
        finally:
            self.report.stop_progress()
            restore_sig()
        st.elapsed += time.perf_counter() - start
        st.started = None
        last = st.history[-1]
        result = TrainResult(
            steps=st.step, epochs=st.epoch, tokens=tokens_here, seconds=seconds,
            tokens_per_s=tokens_here / max(seconds, 1e-9), val_loss=last["val_loss"],
            val_ppl=last["val_ppl"], best_val_ppl=min(r["val_ppl"] for r in st.history),
            stop_reason=reason, checkpoint=str(self.last_saved), history=list(st.history),
            best_checkpoint=str(self.best_checkpoint)
            if cfg.keep_best and self.best_checkpoint.exists() else "",
        )
        self.report.finished(result)
        if cfg.plot and self.dist.is_root:
            plot_history(st.history, cfg.plot)
            self.report.line(f"curves written to {cfg.plot}")
        return result

    def _install_signals(self):
        """Ctrl-C (SIGINT) and SIGTERM (timeout, batch schedulers, docker stop) stop the run
        after the current step, with a checkpoint; a second one gives up at once."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self.interrupted:  # the second signal: give up at once
                raise KeyboardInterrupt
            self.stop_signal = signum
            self.interrupt()

        sigs = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
        old = {s: signal.signal(s, handler) for s in sigs}

        def restore():
            for s, h in old.items():
                signal.signal(s, h)

        return restore

    # ---- sampling -------------------------------------------------------------------

    def sample(self, length: int = 200, *, prime: str = "", temperature: float = 0.8,
               seed: int | None = None) -> str:
        """Text drawn from the model; `seed` None continues the run's own RNG stream."""
        rng = self.state.rng if seed is None else np.random.default_rng(seed)
        return sample_text(self.model, self.vocab, length, prime=prime, temperature=temperature, rng=rng)
