"""Stopping rules (rnn_gpu.lm.stopping): the reason, the fraction done, the bar, the header."""
from __future__ import annotations

import pytest

from rnn_gpu.lm import TrainConfig
from rnn_gpu.lm.stopping import SCHEDULE_CONVERGED, Position, Stopping


def test_the_first_rule_reached_gives_the_reason_in_the_order_steps_epochs_seconds():
    s = Stopping(TrainConfig(epochs=2, max_steps=20, time_budget=30.0), chunks_per_epoch=10)
    assert s.reason(Position(step=19, epoch=1, chunk=9, seconds=29.9)) == ""
    assert s.reason(Position(20, 2, 0, 31.0)) == "reached --max-steps 20"
    assert s.reason(Position(19, 2, 0, 31.0)) == "reached --epochs 2"
    assert s.reason(Position(19, 1, 9, 30.0)) == "used the time budget of 30 s"
    s.converged = True
    assert s.reason(Position(20, 2, 0, 31.0)) == SCHEDULE_CONVERGED
    assert s.announce() == "2 epochs or step 20 or 30 s"


def test_fraction_is_the_furthest_rule_clamped_to_one():
    s = Stopping(TrainConfig(epochs=4, max_steps=100, time_budget=10.0), chunks_per_epoch=10,
                 p0=0.5)
    assert s.fraction(Position(10, 1, 5, 1.0)) == pytest.approx(max(10 / 100, 15 / 40, 0.55))
    assert s.fraction(Position(50, 1, 0, 8.0)) == pytest.approx(0.9)  # seconds: 0.5 + 0.5 * 0.8
    assert s.fraction(Position(500, 9, 0, 99.0)) == 1.0


def test_the_bar_follows_the_first_rule():
    pos = Position(7, 1, 3, 2.5)
    assert Stopping(TrainConfig(max_steps=50, epochs=3), 10).bar(pos) == (7, 50.0)
    assert Stopping(TrainConfig(epochs=3), 10).bar(pos) == (13, 30.0)
    assert Stopping(TrainConfig(), 10).bar(pos) == (2.5, 60.0)  # the default time budget
