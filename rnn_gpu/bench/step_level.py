"""Step level: the training step (``RNN.loss_and_grads``, forward + backward) on every
backend beside the peers that are installed, and step-time sweeps against T, B and H.

Peers: seed 001's per-sequence NumPy loop at small shapes, PyTorch on the CPU and on CUDA
with cuDNN, and the CUDA-Graph replay of our step. Everything is checked against the
float64 engine first, then timed side by side (on a CPU in alternating blocks, each after a
pause and an untimed call, so that no library runs while another's worker threads still
spin; on a GPU with repetitions interleaved); peak memory
of one step beside the time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..backend import Backend, describe, to_numpy
from ..gradcheck import rel_err
from ..model import RNN
from . import kernel_level
from .memory import measure_memory, rss_growth, workspace_bytes
from .peers import SeedLoop, TorchRNN, torch_unavailable_reason
from .records import Context, _cpu_device, _table, device_of
from ..cuda.graph import GraphedStep
from .timing import (Stats, alternating_blocks, blas_threads, interleaved, timer_for,
                     torch_cuda_timer, wall_timer)

# The training-step shapes (T, B, H, vocabulary) of the engine's benchmark.
DEFAULT_SHAPES = ((64, 32, 256, 65), (35, 20, 200, 10000), (50, 64, 1024, 1024))
QUICK_SHAPES = ((16, 8, 64, 65),)
# The seed loop runs where T*B*H*(T*H + V) stays below this (about 10 s per step on a
# 2-core CPU): full BPTT in the seed's form costs O(T^2) matrix-vector products.
SEED_MAX_WORK = 1.2e10
# Normwise relative error allowed against the float64 oracle.
STEP_TOL = {"float32": 1e-3, "float64": 1e-9}
PEERS = ("torch", "seed")


def step_flops(T: int, B: int, H: int, V: int) -> float:
    """Nominal FLOPs of one training step: 6 T B (H^2 + H V) (forward + backward GEMMs)."""
    return 6.0 * T * B * (H * H + H * V)



# -------------------------------------------------------------------------------------
# Step level


@dataclass
class Impl:
    """One way to run the training step at one shape."""

    name: str  # row name suffix: rnn_gpu, rnn_gpu-graph, torch, seed-loop
    backend: str  # numpy, cupy, torch-cpu, torch-cuda
    device: str
    fn: Callable[[], Any]  # one step, synchronized where the timer needs it
    timer: Callable
    check: Callable[[], tuple[float, dict]]  # (loss, grads as arrays) for validation
    gpu: bool = False
    extra: dict = field(default_factory=dict)


def _ours(backend: Backend, model, x, y) -> Impl:
    m = model.to(backend)
    xb, yb = backend.asarray(x), backend.asarray(y)
    fn = (lambda: m.loss_and_grads(xb, yb))

    def check():
        loss, grads, _ = m.loss_and_grads(xb, yb)
        return loss, {k: to_numpy(v) for k, v in grads.items()}

    impl = Impl("rnn_gpu", backend.name, device_of(backend), fn, timer_for(backend), check,
                gpu=backend.is_gpu)
    impl.extra["model"] = m
    return impl


def _graphed(backend: Backend, model, x, y) -> tuple[Impl | None, str | None]:
    """The same step captured once as a CUDA graph and replayed (rnn_gpu.cuda.graph)."""
    m = model.to(backend)
    xb, yb = backend.asarray(x), backend.asarray(y)
    T, B = x.shape
    try:
        g = GraphedStep(m._engine, T, B, dense=False, truncate=None, masked=False)
        g(m.params, xb, yb)  # captures
    except Exception as e:
        return None, f"capture failed ({type(e).__name__}: {e})"

    def check():
        loss, grads, _ = g(m.params, xb, yb)
        return loss, {k: to_numpy(v) for k, v in grads.items()}

    impl = Impl("rnn_gpu-graph", backend.name, backend.device, lambda: g(m.params, xb, yb),
                timer_for(backend), check, gpu=True)
    impl.extra["graph"] = g
    return impl, None


def _torch(model, x, y, device: str, dtype: str, threads: int) -> Impl:
    import torch  # noqa: PLC0415

    torch.set_num_threads(threads)
    if device == "cuda":  # strict float32, as CuPy's cuBLAS calls are
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    p = TorchRNN(model.params, device=device, dtype=dtype)
    # Read the loss back like our step does (RNN.loss_and_grads returns a float), so both
    # sides pay the same host sync per step and neither runs ahead of the timer.
    fn = (lambda: p.step(x, y).item())
    if device == "cuda":
        dev = f"{torch.cuda.get_device_name()} (cuDNN {torch.backends.cudnn.version()})"
        return Impl("torch", "torch-cuda", dev, fn, torch_cuda_timer,
                    lambda: p.loss_and_grads(x, y), gpu=True, extra={"peer": p})
    return Impl("torch", "torch-cpu", f"{describe().get('cpu', 'CPU')} ({threads} threads)",
                fn, wall_timer, lambda: p.loss_and_grads(x, y),
                extra={"peer": p})


def _seed(model, x, y, dtype: str) -> Impl:
    p = SeedLoop(model.params, dtype=dtype)
    return Impl("seed-loop", "numpy", _cpu_device(), lambda: p.loss_and_grads(x, y),
                wall_timer, lambda: p.loss_and_grads(x, y))


def _memory_child(spec: dict) -> dict:
    """Peak RSS growth over one (first) step, run in a fresh process. CPU only."""
    T, B, H, V = spec["shape"]
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    model = RNN(V, H, V, backend="numpy", dtype=spec["dtype"], seed=0)
    if spec["impl"] == "rnn_gpu":
        fn = (lambda: model.loss_and_grads(x, y))
    elif spec["impl"] == "torch":
        fn = _torch(model, x, y, "cpu", spec["dtype"], spec["threads"]).fn
    else:
        fn = _seed(model, x, y, spec["dtype"]).fn
    out = {"peak_mem_bytes": rss_growth(fn)}
    if spec["impl"] == "rnn_gpu":
        out["workspace_bytes"] = workspace_bytes(model)
    return out


def _label(key: str) -> str:
    """Implementation key "impl:backend" as a peer name: torch-cpu, seed-loop, ..."""
    impl, backend = key.split(":")
    if impl == "torch":
        return backend
    if impl == "seed-loop":
        return impl
    return f"{impl} ({backend})"


def _primary_peer(impl: Impl, stats: dict[str, Stats], impls: dict[str, Impl]) -> str | None:
    """The peer a row's speedup is against: PyTorch on the same kind of device, else the seed."""
    want = "torch:torch-cuda" if impl.gpu else "torch:torch-cpu"
    if want in stats:
        return want
    if "seed-loop:numpy" in stats:
        return "seed-loop:numpy"
    others = [k for k in stats if not k.startswith("rnn_gpu")]
    return others[0] if others else None


def _row_name(kind: str, impl: Impl, extra: dict | None) -> str:
    """step:rnn_gpu, step:torch, ...; sweeps add the axis varied (sweep:rnn_gpu:T)."""
    axis = (extra or {}).get("axis")
    return f"{kind}:{impl.name}" + (f":{axis}" if axis else "")


def step_point(ctx: Context, backends: list[Backend], shape: tuple, dtype: str, *,
               kind: str, peers: set[str], memory: bool, extra: dict | None = None) -> list[dict]:
    """Validate and time every implementation at one shape; returns the rows written."""
    T, B, H, V = shape
    args = ctx.args
    threads = args.threads or blas_threads()
    shape_s = f"T={T},B={B},H={H},V={V}"
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    model = RNN(V, H, V, backend="numpy", dtype=dtype, seed=0)
    oracle = model.to("numpy", dtype="float64")
    oloss, ograds, _ = oracle.loss_and_grads(x, y)
    ograds = {k: v.copy() for k, v in ograds.items()}
    del oracle

    impls: dict[str, Impl] = {}
    note = f"{kind} {shape_s}"
    for be in backends:
        impls[f"rnn_gpu:{be.name}"] = _ours(be, model, x, y)
        if be.is_gpu and kind == "step":
            g, why = _graphed(be, model, x, y)
            if g is None:
                ctx.skip(f"CUDA-Graph replay at {note}", why, kind)
            else:
                impls["rnn_gpu-graph:cupy"] = g
    if "torch" in peers:
        for dev in ("cpu", "cuda"):
            why = torch_unavailable_reason(dev)
            if why is None:
                try:
                    impls[f"torch:torch-{dev}"] = _torch(model, x, y, dev, dtype, threads)
                except Exception as e:
                    ctx.skip(f"PyTorch {dev.upper()} peer at {note}",
                             f"{type(e).__name__}: {e}", kind)
            else:
                ctx.skip(f"PyTorch {dev.upper()} peer", why, kind)
    if "seed" in peers and kind == "step":
        work = T * B * H * (T * H + V)
        if work <= args.seed_max_work:
            impls["seed-loop:numpy"] = _seed(model, x, y, dtype)
        else:
            ctx.skip(f"seed loop at {shape_s}",
                     f"too large for the per-sequence loop (T*B*H*(T*H+V) = {work:.2g} > "
                     f"{args.seed_max_work:.2g}; raise --seed-max-work to run it)", kind)

    # Validate everything against the float64 engine before timing anything.
    tol = STEP_TOL[dtype]
    errs: dict[str, float] = {}
    for key, impl in list(impls.items()):
        try:
            loss, grads = impl.check()
            err = max([abs(loss - oloss) / max(abs(oloss), 1e-30)]
                      + [rel_err(grads[k], ograds[k]) for k in ograds])
            problem = (None if err <= tol
                       else f"error {err:.3g} > {tol:g} against the float64 engine")
        except Exception as e:
            err, problem = math.inf, f"raised {type(e).__name__}: {e}"
        errs[key] = err
        if problem is not None:
            ctx.failed += 1
            ctx.console.print(f"[bold red]FAILED[/bold red] {kind} {impl.name} on {impl.backend} "
                              f"({dtype}, {shape_s}): {problem}; not timed")
            ctx.add({"name": _row_name(kind, impl, extra), "kind": kind, "impl": impl.name,
                     "device": impl.device, "backend": impl.backend, "dtype": dtype,
                     "shape": shape_s, "status": "FAILED", "validated": False,
                     "max_rel_err": err, "reason": problem, "median_ms": None, "min_ms": None,
                     "max_ms": None, "peer": None, "peer_median_ms": None, "speedup": None,
                     **(extra or {})})
            del impls[key]
    if not impls:
        return []

    # The matmul rate is measured again beside the steps (kind "step"), so that the
    # percentage compares two figures taken under the same conditions on a shared machine.
    fns = {k: (i.fn, i.timer) for k, i in impls.items()}
    mm_flops = {}
    if kind == "step":
        for be in backends:
            n = kernel_level.matmul_sizes(be.is_gpu, args.quick)
            fn, timer, mm_flops[be.name] = kernel_level.matmul_op(be, dtype, n)
            fns[f"peak:{be.name}"] = (fn, timer)
    # on a CPU whole steps of different libraries alternate in blocks (each side's
    # thread pool would otherwise spin through the other's calls); on a GPU interleaved
    if any(i.gpu for i in impls.values()):
        stats = interleaved(fns, args.reps, args.warmup)
    else:
        stats = alternating_blocks(fns, args.reps, args.warmup)
    peaks = {}
    for name, f in mm_flops.items():
        peaks[name] = f / (stats.pop(f"peak:{name}").median * 1e-3) / 1e9
    fns.clear()

    flops = step_flops(T, B, H, V)
    rows = []
    for key, impl in impls.items():
        s = stats[key]
        gflops = flops / (s.median * 1e-3) / 1e9
        pk = "cupy" if impl.gpu else "numpy"
        peak = peaks.get(pk) or ctx.peaks.get(pk, {}).get("matmul_gflops")
        row = {"name": _row_name(kind, impl, extra), "kind": kind, "impl": impl.name,
               "device": impl.device, "backend": impl.backend, "dtype": dtype, "shape": shape_s,
               "sizes": {"T": T, "B": B, "H": H, "V": V}, "status": "ok", "validated": True,
               "max_rel_err": errs[key], "median_ms": s.median, "min_ms": s.min,
               "max_ms": s.max, "reps": len(s.times_ms), "gflops": gflops,
               "pct_peak_flops": 100 * gflops / peak if peak else None,
               "peak_matmul_gflops": peak,
               "peak_matmul_beside": pk in peaks,
               "peer": None, "peer_median_ms": None, "speedup": None}
        if impl.name.startswith("rnn_gpu"):
            pk = _primary_peer(impl, stats, impls)
            if pk is not None:
                row.update(peer=_label(pk), peer_median_ms=stats[pk].median,
                           speedup=stats[pk].median / s.median)
            row["speedups"] = {_label(k): stats[k].median / s.median
                               for k in stats if not k.startswith("rnn_gpu")}
        if impl.backend in ("torch-cpu", "numpy") and impl.name != "rnn_gpu-graph":
            row["threads"] = threads
        if memory:
            row.update(measure_memory(impl, shape, dtype, threads))
        row.update(extra or {})
        rows.append(ctx.add(row))
    return rows


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _step_table(title: str, rows: list[dict]) -> Any:
    table = []
    for r in rows:
        sp = r.get("speedups") or {}
        table.append([r["impl"], r["backend"], r["shape"], r["median_ms"], r["min_ms"],
                      r["max_ms"], r.get("gflops"), r.get("pct_peak_flops"),
                      _mib(r.get("peak_mem_bytes")),
                      ", ".join(f"{v:.2f}x {k}" for k, v in sp.items()) or "-"])
    return _table(title, ["impl", "backend", "shape", "median ms", "min ms", "max ms",
                          "GFLOP/s", "% matmul", "peak MiB", "speedup vs peer"], table)


def bench_steps(ctx: Context, backends: list[Backend], dtype: str, shapes) -> None:
    rows = []
    for shape in shapes:
        rows += step_point(ctx, backends, shape, dtype, kind="step", peers=ctx.peer_set,
                           memory=ctx.args.memory)
    if rows:
        ctx.console.print(_step_table(
            f"Training step (loss_and_grads, forward + backward), {dtype}; GFLOP/s counts "
            "6 T B (H^2 + H V)", rows))


def sweep_points(base: tuple, quick: bool) -> list[tuple[str, int, tuple]]:
    """(axis, value, shape) around `base`: T, B and H each varied alone."""
    T, B, H, V = base
    f = (0.5, 1, 2) if quick else (0.25, 0.5, 1, 2, 4)
    pts = []
    for axis, i in (("T", 0), ("B", 1), ("H", 2)):
        for k in f:
            s = list(base)
            s[i] = max(1, int(round(base[i] * k)))
            pts.append((axis, s[i], tuple(s)))
    return pts


def bench_sweeps(ctx: Context, backends: list[Backend], dtype: str, base: tuple) -> None:
    rows = []
    for axis, value, shape in sweep_points(base, ctx.args.quick):
        rows += step_point(ctx, backends, shape, dtype, kind="sweep",
                           peers=ctx.peer_set - {"seed"}, memory=False,
                           extra={"axis": axis, "value": value, "base": list(base)})
    if rows:
        ctx.console.print(_step_table(f"Sweeps around T,B,H,V = {base}, {dtype}", rows))

