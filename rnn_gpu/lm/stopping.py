"""When a run stops, written once: by steps, epochs or seconds, on the schedule's word.

Each :class:`Rule` says how far along a run is (``done`` of ``total``, in its own unit),
whether it has been reached, why the run stopped, and how the log announces it. The
same rules decide the loop's end, feed the cosine schedule the fraction of the run done,
drive the progress bar and write the header's "stops at ...".
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import TrainConfig, flag

SCHEDULE_CONVERGED = "the learning-rate schedule converged"


@dataclass(frozen=True)
class Position:
    """Where a run is: steps and epochs since its start, seconds in this call of fit()."""

    step: int
    epoch: int
    chunk: int  # next chunk of the current epoch
    seconds: float


class Rule:
    total: float

    def done(self, pos: Position) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def reached(self, pos: Position) -> bool:
        return self.done(pos) >= self.total

    def fraction(self, pos: Position) -> float:
        return self.done(pos) / self.total


class MaxSteps(Rule):
    def __init__(self, n: int):
        self.total = n
        self.reason = f"reached {flag('max_steps')} {n}"
        self.announce = f"step {n}"

    def done(self, pos: Position) -> float:
        return pos.step


class Epochs(Rule):
    def __init__(self, n: int, chunks_per_epoch: int):
        self.n, self.chunks_per_epoch = n, chunks_per_epoch
        self.total = n * chunks_per_epoch
        self.reason = f"reached {flag('epochs')} {n}"
        self.announce = f"{n} epochs"

    def done(self, pos: Position) -> float:
        return pos.epoch * self.chunks_per_epoch + pos.chunk

    def reached(self, pos: Position) -> bool:
        return pos.epoch >= self.n


class TimeBudget(Rule):
    """Seconds count in this call of fit(), which covers what earlier calls left of the
    run (from `p0`, the fraction they had done) to its end."""

    def __init__(self, seconds: float, p0: float = 0.0):
        self.total, self.p0 = seconds, p0
        self.reason = f"used the time budget of {seconds:g} s"
        self.announce = f"{seconds:g} s"

    def done(self, pos: Position) -> float:
        return pos.seconds

    def fraction(self, pos: Position) -> float:
        return self.p0 + (1.0 - self.p0) * pos.seconds / self.total


class Stopping:
    """The rules of one call of fit(), in the order they are checked: steps, epochs,
    seconds. The first reached gives the reason, unless the schedule stopped the run."""

    def __init__(self, config: TrainConfig, chunks_per_epoch: int, p0: float = 0.0):
        epochs, max_steps, budget = config.stopping_criteria()
        self.rules: list[Rule] = []
        if max_steps is not None:
            self.rules.append(MaxSteps(max_steps))
        if epochs is not None:
            self.rules.append(Epochs(epochs, chunks_per_epoch))
        if budget is not None:
            self.rules.append(TimeBudget(budget, p0))
        self.converged = False  # set when the schedule says stop

    def reason(self, pos: Position) -> str:
        """Why the run stops at `pos`; '' while it goes on."""
        if self.converged:
            return SCHEDULE_CONVERGED
        return next((r.reason for r in self.rules if r.reached(pos)), "")

    def fraction(self, pos: Position) -> float:
        """Fraction of the run done, by whichever rule is furthest along (0..1)."""
        return min(max([0.0, *(r.fraction(pos) for r in self.rules)]), 1.0)

    def bar(self, pos: Position) -> tuple[float, float]:
        """(done, total) for a progress bar, in the unit of the first rule."""
        r = self.rules[0]
        return r.done(pos), float(r.total)

    def announce(self) -> str:
        """'2 epochs or step 500 or 60 s', for the log."""
        order = (Epochs, MaxSteps, TimeBudget)
        return " or ".join(r.announce for r in sorted(self.rules, key=lambda r: order.index(type(r))))
