"""rnn_gpu.bench.timing's two ways of timing implementations side by side."""
from __future__ import annotations

from rnn_gpu.bench.timing import alternating_blocks, interleaved


def _recorder(log, name):
    def fn():
        log.append(name)
    return fn


def _count_timer(fn, inner):
    fn()
    return 1.0


def test_alternating_blocks_time_each_after_an_untimed_call_of_its_own():
    log: list[str] = []
    fns = {n: (_recorder(log, n), _count_timer) for n in ("a", "b")}
    st = alternating_blocks(fns, reps=5, warmup=1, block=2, settle_s=0.0)
    assert {n: len(s.times_ms) for n, s in st.items()} == {"a": 5, "b": 5}
    # warm-up a b, then rounds: (untimed + 2 timed) per name, the order rotating
    assert log[:2] == ["a", "b"]
    # then per round and name one untimed call and up to 2 timed ones, the order rotating
    assert "".join(log[2:]) == "aaa" "bbb" + "bbb" "aaa" + "aa" "bb"


def test_interleaved_alternates_call_by_call():
    log: list[str] = []
    fns = {n: (_recorder(log, n), _count_timer) for n in ("a", "b")}
    st = interleaved(fns, reps=3, warmup=0)
    assert log == ["a", "b", "b", "a", "a", "b"] and len(st["a"].times_ms) == 3
