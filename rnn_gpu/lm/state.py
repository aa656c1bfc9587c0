"""A run's state and its checkpoint, one symmetric pair: what :func:`save_run` writes is
what :func:`restore_run` reads back.

A checkpoint of a run holds the model (parameters and configuration), the vocabulary, the
:class:`~rnn_gpu.lm.config.TrainConfig`, the optimizer's and the schedule's state, and
the :class:`RunState`: the position in the data, the hidden state carried into the next
chunk, the random stream (dropout, sampling), the history of evaluations, and the
Mikolov schedule's copy of the previous weights.

The carried state is stored as ``state/hidden`` (:meth:`rnn_gpu.RNN.state_shape`); an
LSTM's is the pair (h, c), stored as ``state/hidden`` (h, so that the entry means the
same for every cell) and ``state/hidden_c`` (c, the same shape). Elman and GRU runs have
no ``state/hidden_c``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..states import is_pair
from .checkpoint import Checkpoint, save_checkpoint
from .config import TrainConfig


@dataclass
class RunState:
    """Where a run is. Saved in checkpoints, except `started`."""

    rng: np.random.Generator  # dropout masks and sampling
    step: int = 0  # optimizer steps since the start of the run
    epoch: int = 0  # completed epochs
    chunk: int = 0  # next chunk of the current epoch
    # the state carried into the next chunk (RNN.state_shape: (B, H) for one layer), an
    # LSTM's the pair (h, c); backend arrays; None: zeros
    hidden: Any = None
    elapsed: float = 0.0  # training seconds before the current call of fit()
    tokens: int = 0  # training tokens since the start of the run
    history: list[dict] = field(default_factory=list)  # one record per evaluation
    prev_params: dict | None = None  # Mikolov schedule: the weights to restore
    started: float | None = None  # perf_counter() at the start of the current fit()

    def seconds(self) -> float:
        """Training seconds over all calls of fit(), up to now."""
        if self.started is None:
            return self.elapsed
        return self.elapsed + time.perf_counter() - self.started

    def to_checkpoint(self) -> tuple[dict, dict[str, Any]]:
        """(the JSON record ``train_state``, the arrays stored as ``state/<name>``)."""
        record = {
            "step": self.step, "epoch": self.epoch, "chunk": self.chunk,
            "elapsed": self.seconds(), "tokens": self.tokens,
            "rng": self.rng.bit_generator.state, "history": self.history,
        }
        arrays: dict[str, Any] = {}
        if is_pair(self.hidden):  # an LSTM's (h, c)
            arrays["hidden"], arrays["hidden_c"] = self.hidden
        elif self.hidden is not None:
            arrays["hidden"] = self.hidden
        if self.prev_params is not None:
            arrays.update({f"prev_{k}": v for k, v in self.prev_params.items()})
        return record, arrays

    @classmethod
    def from_checkpoint(cls, record: dict, arrays: dict[str, np.ndarray], *, model) -> RunState:
        """The inverse of :meth:`to_checkpoint`; arrays go to `model`'s backend and dtype.
        KeyError, TypeError or ValueError when the record is incomplete."""
        rng = np.random.default_rng()
        rng.bit_generator.state = record["rng"]
        be, dt = model.backend, model.dtype
        problem = hidden_problem(arrays, model)
        if problem:
            raise ValueError(problem)
        hidden, cell = arrays.get("hidden"), arrays.get("hidden_c")
        if hidden is not None:
            hidden = be.asarray(hidden, dtype=dt)
            if model.cell == "lstm":
                hidden = (hidden, be.asarray(cell, dtype=dt))
        prev = {k[len("prev_"):]: be.asarray(v, dtype=dt) for k, v in arrays.items()
                if k.startswith("prev_")}
        return cls(
            rng=rng, step=int(record["step"]), epoch=int(record["epoch"]),
            chunk=int(record["chunk"]), hidden=hidden, elapsed=float(record.get("elapsed", 0.0)),
            tokens=int(record.get("tokens", 0)), history=list(record.get("history", [])),
            prev_params=prev or None,
        )


def hidden_problem(arrays: dict[str, np.ndarray], model, batch_size: int | None = None) -> str:
    """What is wrong with the carried state among a checkpoint's `arrays` (``state/...``)
    for `model` (and, when given, `batch_size` streams), or "" when nothing is."""
    h, c = arrays.get("hidden"), arrays.get("hidden_c")
    lstm = model.cell == "lstm"
    if c is not None and not lstm:
        return (f"it holds an LSTM cell state (state/hidden_c) but the model is a "
                f"{model.cell} model, whose state is one array")
    if lstm and (h is None) != (c is None):
        have, lack = ("hidden", "hidden_c") if c is None else ("hidden_c", "hidden")
        return (f"the LSTM's carried state (h, c) is half there: state/{have} without "
                f"state/{lack}")
    if batch_size is not None:
        want = model.state_shape(batch_size)
        for name, what, a in (("hidden", "hidden state", h), ("hidden_c", "cell state", c)):
            if a is not None and tuple(a.shape) != want:
                return (f"{what} has shape {tuple(a.shape)}, expected {want} "
                        f"(state/{name}, {batch_size} streams)")
    return ""


def save_run(path: str | Path, *, model, vocab, config: TrainConfig, state: RunState, optimizer,
             schedule, corpus: str, data_sha256: str = "") -> Path:
    """Write the run to `path` atomically. `corpus` (where the text came from) is noted
    in ``train_state`` for people; resuming reads the text named by the configuration
    and, when `data_sha256` (of that text) is saved, checks that it is the same text."""
    record, arrays = state.to_checkpoint()
    extra = {"corpus": corpus, **({"data_sha256": data_sha256} if data_sha256 else {})}
    return save_checkpoint(
        path, model, vocab=vocab, train_config=config.to_dict(),
        train_state={**record, **extra}, optimizer=optimizer, schedule=schedule,
        arrays=arrays,
    )


def restore_run(ck: Checkpoint, *, model, config: TrainConfig, optimizer, schedule) -> RunState:
    """Put the optimizer's and the schedule's state back from `ck` and return the run's
    state. An explicit ``config.lr`` that differs from the saved one replaces the
    schedule's rate. CheckpointError when the checkpoint's training state is incomplete."""
    try:
        optimizer.load_state_dict(ck.meta["optimizer"], ck.optim)
        if ck.meta.get("schedule"):
            schedule.load_state_dict(ck.meta["schedule"])
        optimizer.lr = schedule.lr
        if config.lr is not None and config.lr != ck.train_config.get("lr"):
            optimizer.lr = schedule.lr = float(config.lr)  # explicit change
        problem = hidden_problem(ck.state, model, config.batch_size)
        if problem:
            raise CheckpointError(f"checkpoint {ck.path}: {problem}")
        return RunState.from_checkpoint(ck.train_state, ck.state, model=model)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ck.path}: training state is incomplete ({e})") from None
