"""Timing: per-repetition statistics, timers (wall clock, CUDA), interleaving, calibration.

A timer is ``timer(fn, inner) -> milliseconds per call`` over `inner` calls of `fn`.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Stats:
    """Times of one operation in milliseconds."""

    times_ms: list[float]

    @property
    def median(self) -> float:
        return float(statistics.median(self.times_ms))

    @property
    def min(self) -> float:
        return float(min(self.times_ms))

    @property
    def max(self) -> float:
        return float(max(self.times_ms))


def wall_timer(fn: Callable[[], Any], inner: int = 1) -> float:
    """Milliseconds per call of fn, by the wall clock over `inner` calls."""
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) * 1e3 / inner


def cupy_timer(fn: Callable[[], Any], inner: int = 1) -> float:
    """Milliseconds per call of fn, by CUDA events on the current CuPy stream."""
    import cupy as cp  # noqa: PLC0415 - GPU only

    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / inner


def torch_cuda_timer(fn: Callable[[], Any], inner: int = 1) -> float:
    """Milliseconds per call of fn, by CUDA events on the current PyTorch stream."""
    import torch  # noqa: PLC0415 - GPU only

    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / inner


def interleaved(fns: dict[str, tuple[Callable[[], Any], Callable]], reps: int, warmup: int,
                inner: dict[str, int] | None = None) -> dict[str, Stats]:
    """Time several operations side by side: every repetition runs each of them once.

    fns: name -> (fn, timer). The order rotates from one repetition to the next so that
    no operation always follows the same one (caches, clocks and a noisy machine are
    shared fairly).
    """
    inner = inner or {}
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n][0]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            fn, timer = fns[n]
            times[n].append(timer(fn, inner.get(n, 1)))
    return {n: Stats(t) for n, t in times.items()}


def calibrate(fn: Callable[[], Any], timer: Callable, target_ms: float = 2.0,
              cap: int = 1000) -> int:
    """Calls per timed repetition so that one repetition lasts about `target_ms`."""
    t = max(timer(fn, 1), 1e-4)
    return int(max(1, min(cap, math.ceil(target_ms / t))))


def blas_threads() -> int:
    """Threads NumPy's BLAS uses (threadpoolctl if installed, else environment/affinity)."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415 - optional

        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                return int(pool["num_threads"])
    except Exception:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
