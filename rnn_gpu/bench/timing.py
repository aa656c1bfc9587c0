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


def _gpu_benchmark(xp) -> Callable | None:
    """cupyx.profiler.benchmark for the real CuPy array module, else None.

    The tests' CPU emulator hands an array module of its own (``cuda_emu.cupy``) with no
    cupyx beside it; the CUDA-event loop of :func:`_event_ms` is there for it only.
    """
    if getattr(xp, "__name__", "") != "cupy":
        return None
    try:
        from cupyx.profiler import benchmark  # noqa: PLC0415 - GPU only
    except Exception:  # noqa: BLE001 - any failure: fall back to CUDA events
        return None
    return benchmark


def _calls(fn: Callable[[], Any], inner: int) -> Callable[[], None]:
    if inner == 1:
        return fn

    def run() -> None:
        for _ in range(inner):
            fn()

    return run


def _event_ms(xp, fn: Callable[[], Any], inner: int) -> float:
    """Milliseconds per call of fn, by CUDA events on the current stream (emulator)."""
    start, end = xp.cuda.Event(), xp.cuda.Event()
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return xp.cuda.get_elapsed_time(start, end) / inner


def cupy_stats(xp, fn: Callable[[], Any], reps: int, warmup: int, inner: int = 1,
               benchmark: Callable | None = None) -> Stats:
    """GPU milliseconds per call of fn on the array module `xp` (a backend's): `warmup`
    untimed repetitions, then `reps` timed ones of `inner` calls each, by
    cupyx.profiler.benchmark (its GPU times; `benchmark` stands in for it)."""
    bench = _gpu_benchmark(xp) if benchmark is None else benchmark
    if bench is None:
        for _ in range(warmup):
            _calls(fn, inner)()
        return Stats([_event_ms(xp, fn, inner) for _ in range(reps)])
    r = bench(_calls(fn, inner), n_repeat=reps, n_warmup=warmup)
    return Stats([float(t) * 1e3 / inner for t in r.gpu_times[0]])


def gpu_timer(xp, benchmark: Callable | None = None) -> Callable[[Callable[[], Any], int], float]:
    """A timer (fn, inner) -> GPU milliseconds per call on `xp`: one repetition of
    :func:`cupy_stats` (for :func:`interleaved`, which does the warm-up)."""
    def timer(fn: Callable[[], Any], inner: int = 1) -> float:
        return cupy_stats(xp, fn, 1, 0, inner, benchmark).times_ms[0]
    return timer


def timer_for(backend) -> Callable[[Callable[[], Any], int], float]:
    """The timer of a backend: GPU time on CuPy, the wall clock on NumPy."""
    return gpu_timer(backend.xp) if backend.is_gpu else wall_timer


def torch_cuda_timer(fn: Callable[[], Any], inner: int = 1) -> float:
    """Milliseconds per call of fn over `inner` calls, by torch.utils.benchmark.Timer (which
    synchronizes CUDA before and after; it also runs two untimed calls first)."""
    import torch  # noqa: PLC0415 - GPU only
    from torch.utils.benchmark import Timer  # noqa: PLC0415

    t = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return t.timeit(inner).times[0] * 1e3


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


def alternating_blocks(fns: dict[str, tuple[Callable[[], Any], Callable]], reps: int,
                       warmup: int, block: int = 3, settle_s: float = 0.25,
                       inner: dict[str, int] | None = None) -> dict[str, Stats]:
    """Time several implementations side by side in alternating blocks.

    Each round runs every implementation (the order rotating from round to round) as a
    block: a pause of `settle_s`, one untimed call, then `block` timed calls; rounds
    repeat until each has `reps` times. Implementations with thread pools of their own
    (OpenBLAS, PyTorch's OpenMP) keep their worker threads spinning for a while after a
    call; timed right after another implementation, a call shares the cores with those
    spinning threads. The pause lets them sleep, the untimed call wakes the pool of the
    implementation about to be timed, and a noisy patch of the machine still hurts all
    of them alike. Every call of :func:`interleaved` follows another implementation's
    call, which is why whole steps of different libraries on a CPU are timed this way.
    """
    inner = inner or {}
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n][0]()
    times: dict[str, list[float]] = {n: [] for n in names}
    r = 0
    while min(len(t) for t in times.values()) < reps:
        k = r % len(names)
        for n in names[k:] + names[:k]:
            fn, timer = fns[n]
            if settle_s:
                time.sleep(settle_s)
            fn()  # the pool of this implementation wakes up
            for _ in range(min(block, reps - len(times[n]))):
                times[n].append(timer(fn, inner.get(n, 1)))
        r += 1
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
