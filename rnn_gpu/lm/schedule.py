"""Learning-rate schedules.

A schedule sees the validation loss at each scheduled evaluation (the end of every
epoch, and every ``eval_every`` steps when that is set) and answers with a
:class:`Decision`: the new learning rate, whether to restore the weights saved at the
previous evaluation, and whether to stop. A schedule that follows the run's progress
instead (``cosine``) also answers :meth:`Schedule.rate_at` before every step.

- ``constant``: the rate never changes.
- ``plateau``: divide the rate by ``factor`` (4) whenever validation does not improve on
  the best so far (PyTorch's word_language_model).
- ``mikolov``: the RNNLM toolkit's rule. If validation got worse, restore the previous
  weights. Once an evaluation improves the loss by less than the ratio
  ``min_improvement`` (1.003), halve the rate at every evaluation from then on; at the
  next such plateau, stop.
- ``cosine``: from the base rate down to zero along a half cosine,
  ``lr * (1 + cos(pi * p)) / 2``, where ``p`` is the fraction of the run done (the trainer
  measures it by the stopping rules: steps, epochs or seconds, whichever is furthest
  along). It ignores the validation loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import CheckpointError
from .checks import expect, is_real, one_of

SCHEDULES = ("constant", "plateau", "mikolov", "cosine")


@dataclass
class Decision:
    lr: float
    restore: bool = False  # put back the weights saved at the previous evaluation
    stop: bool = False
    note: str = ""  # what happened, for the log


class Schedule:
    name = "constant"
    keeps_weights = False  # True when the trainer must keep a copy for `restore`

    def __init__(self, lr: float):
        self.lr = float(lr)

    def on_eval(self, val_loss: float) -> Decision:
        return Decision(self.lr)

    def rate_at(self, progress: float) -> float | None:
        """The rate for a step taken at `progress` (0..1) of the run; None: unchanged."""
        return None

    def state_dict(self) -> dict:
        return {"name": self.name, "lr": self.lr}

    def load_state_dict(self, d: dict) -> None:
        if d.get("name") != self.name:
            raise CheckpointError(
                f"schedule mismatch: the checkpoint used {d.get('name')!r}, not {self.name!r}"
            )
        for k, v in d.items():
            if k != "name":
                setattr(self, k, v)


class Plateau(Schedule):
    """Divide the rate by `factor` when validation does not beat the best so far."""

    name = "plateau"

    def __init__(self, lr: float, factor: float = 4.0):
        super().__init__(lr)
        expect(is_real(factor) and factor > 1, "factor", "a number > 1", factor)
        self.factor = float(factor)
        self.best: float | None = None

    def on_eval(self, val_loss: float) -> Decision:
        if self.best is None or val_loss < self.best:
            self.best = float(val_loss)
            return Decision(self.lr)
        self.lr /= self.factor
        return Decision(self.lr, note=f"no improvement: lr / {self.factor:g}")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "factor": self.factor, "best": self.best}


class Mikolov(Schedule):
    """The RNNLM toolkit's schedule (restore on regression, halve after a plateau, stop)."""

    name = "mikolov"
    keeps_weights = True

    def __init__(self, lr: float, min_improvement: float = 1.003):
        super().__init__(lr)
        expect(is_real(min_improvement) and min_improvement >= 1.0, "min_improvement",
               "a number >= 1", min_improvement)
        self.min_improvement = float(min_improvement)
        self.prev: float | None = None  # validation loss at the previous evaluation
        self.halving = False

    def on_eval(self, val_loss: float) -> Decision:
        val_loss = float(val_loss)
        if self.prev is None:
            self.prev = val_loss
            return Decision(self.lr)
        restore = val_loss > self.prev or not math.isfinite(val_loss)
        notes = ["worse: previous weights restored"] if restore else []
        # RNNLM: `if (logp * min_improvement < llogp)`, with logp = -loss.
        if not val_loss * self.min_improvement < self.prev:
            if self.halving:
                return Decision(self.lr, restore=restore, stop=True,
                                note="; ".join([*notes, "converged: stopping"]))
            self.halving = True
        if self.halving:
            self.lr /= 2.0
            notes.append("lr / 2")
        self.prev = val_loss  # as the toolkit does, even after a restore
        return Decision(self.lr, restore=restore, note="; ".join(notes))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "min_improvement": self.min_improvement,
                "prev": self.prev, "halving": self.halving}


class Cosine(Schedule):
    """Half-cosine decay from the base rate `lr` to zero over the run."""

    name = "cosine"

    def __init__(self, lr: float):
        super().__init__(lr)
        self.progress = 0.0  # the last fraction of the run seen by rate_at

    def _current(self) -> float:
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * self.progress))

    def rate_at(self, progress: float) -> float:
        self.progress = min(max(float(progress), 0.0), 1.0)
        return self._current()

    def on_eval(self, val_loss: float) -> Decision:
        return Decision(self._current())

    def state_dict(self) -> dict:
        return {**super().state_dict(), "progress": self.progress}


def make_schedule(name: str, lr: float, min_improvement: float = 1.003) -> Schedule:
    name = name.lower()
    one_of("name", name, SCHEDULES)
    if name == "constant":
        return Schedule(lr)
    if name == "plateau":
        return Plateau(lr)
    if name == "mikolov":
        return Mikolov(lr, min_improvement)
    return Cosine(lr)
