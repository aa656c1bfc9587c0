"""Benchmark the kernels, the training step and step-time sweeps, validating before timing.

Three levels, each optional:

* **kernels**: every entry of :data:`rnn_gpu.kernels.REGISTRY` and every version of it.
  Each version is first run on random inputs and compared with its NumPy twin run in
  float64 on host copies of the same inputs; a version that disagrees is marked FAILED,
  is not timed, and makes the command exit with status 1. Then it is warmed up and timed
  (CUDA events on the GPU, a wall clock on the CPU), with GB/s, GFLOP/s and the percentage
  of this device's copy bandwidth and matmul rate, both measured here first.
* **steps**: the training step (``RNN.loss_and_grads``, forward + backward) on every
  available backend, beside the peers that are installed (seed 001's per-sequence NumPy
  loop at small shapes, PyTorch on the CPU and on CUDA with cuDNN, CUDA-Graph replay),
  all checked against the float64 engine first and timed side by side, repetitions
  interleaved; peak memory of one step.
* **sweeps**: step time against T, B and H around the first shape (``--plot`` draws them).

Output: rich tables on the terminal and, with ``--out FILE.jsonl``, one JSON object per
line, each carrying the device, library versions, command line and date.
``--compare A.jsonl B.jsonl`` prints the ratios B/A of two such files.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import importlib.metadata
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import kernels as _kernels
from .backend import Backend, cupy_unavailable_reason, describe, get_backend, to_numpy
from .gradcheck import rel_err

# The training-step shapes (T, B, H, vocabulary) of the engine's benchmark.
DEFAULT_SHAPES = ((64, 32, 256, 65), (35, 20, 200, 10000), (50, 64, 1024, 1024))
QUICK_SHAPES = ((16, 8, 64, 65),)
# The seed loop runs where T*B*H*(T*H + V) stays below this (about 10 s per step on a
# 2-core CPU): full BPTT in the seed's form costs O(T^2) matrix-vector products.
SEED_MAX_WORK = 1.2e10
# Normwise relative error allowed against the float64 oracle.
KERNEL_TOL = {"float32": 1e-4, "float64": 1e-10}
STEP_TOL = {"float32": 1e-3, "float64": 1e-9}
PEERS = ("torch", "seed")


def step_flops(T: int, B: int, H: int, V: int) -> float:
    """Nominal FLOPs of one training step: 6 T B (H^2 + H V) (forward + backward GEMMs)."""
    return 6.0 * T * B * (H * H + H * V)


# -------------------------------------------------------------------------------------
# Timing


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


# -------------------------------------------------------------------------------------
# Run context: device, versions, the rows written, the tables shown.


@dataclass
class Context:
    args: argparse.Namespace
    console: Any
    command: str
    date: str
    versions: dict
    rows: list[dict] = field(default_factory=list)
    failed: int = 0
    peaks: dict = field(default_factory=dict)  # backend name -> {"matmul_gflops", "copy_gbps"}
    peer_set: set = field(default_factory=set)
    skipped: set = field(default_factory=set)

    def add(self, row: dict) -> dict:
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in row.items()}
        row.update(versions=self.versions, command=self.command, date=self.date)
        self.rows.append(row)
        return row

    def skip(self, what: str, reason: str, level: str = "") -> None:
        """Name something that was not run, on the terminal and in the output file (once)."""
        if what in self.skipped:
            return
        self.skipped.add(what)
        self.console.print(f"[yellow]skipped[/yellow] {what}: {reason}")
        self.add({"name": f"skip:{what}", "kind": "skip", "level": level, "device": "",
                  "backend": "", "dtype": "", "shape": "", "status": "skipped",
                  "reason": reason, "median_ms": None, "min_ms": None, "max_ms": None,
                  "peer": None, "peer_median_ms": None, "speedup": None})


@functools.lru_cache(maxsize=None)
def _cpu_device() -> str:
    info = describe()
    return f"{info.get('cpu', 'CPU')} ({blas_threads()} threads)"


def device_of(backend: Backend) -> str:
    return backend.device if backend.is_gpu else _cpu_device()


def device_slug(text: str) -> str:
    """A file-name-safe slug of a device description ("AMD EPYC (2 ...)" -> "amd-epyc")."""
    text = re.sub(r"\(.*?\)", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def collect_versions() -> dict:
    v = dict(describe())
    v["blas_threads"] = str(blas_threads())
    for dist in ("rich", "matplotlib", "torch"):
        try:
            v[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[dist] = "not installed"
    return v


def _torch_versions(ctx: Context) -> None:
    """Record PyTorch's threads and CUDA/cuDNN versions once the peer is in use."""
    import torch  # noqa: PLC0415

    ctx.versions["torch_threads"] = str(torch.get_num_threads())
    if torch.cuda.is_available():
        ctx.versions["torch_cuda"] = str(torch.version.cuda)
        ctx.versions["cudnn"] = str(torch.backends.cudnn.version())


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        mag = math.floor(math.log10(abs(v)))
        return f"{v:.{max(0, digits - 1 - mag)}f}" if -3 <= mag < 6 else f"{v:.{digits - 1}e}"
    return str(v)


def _table(title: str, columns: list[str], rows: list[list]) -> Any:
    from rich.table import Table  # noqa: PLC0415

    t = Table(title=title, title_justify="left", header_style="bold")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i < 2 else "right", no_wrap=i == 0)
    for r in rows:
        t.add_row(*[x if isinstance(x, str) else _fmt(x) for x in r])
    return t


# -------------------------------------------------------------------------------------
# Peaks: this device's copy bandwidth and matmul rate, measured here.


def matmul_sizes(gpu: bool, quick: bool) -> int:
    return (4096 if quick else 8192) if gpu else (768 if quick else 2048)


def matmul_op(backend: Backend, dtype: str, n: int) -> tuple[Callable[[], Any], Callable, float]:
    """(fn, timer, flops): one n x n by n x n product into a preallocated result."""
    xp = backend.xp
    rng = np.random.default_rng(0)
    a = backend.asarray(rng.standard_normal((n, n)).astype(dtype))
    b = backend.asarray(rng.standard_normal((n, n)).astype(dtype))
    c = xp.empty((n, n), dtype=dtype)
    timer = cupy_timer if backend.is_gpu else wall_timer
    return (lambda: xp.matmul(a, b, out=c)), timer, 2.0 * n**3


def measure_peaks(ctx: Context, backend: Backend, dtype: str) -> dict:
    """Matmul GFLOP/s (n x n times n x n) and copy GB/s (read + write) on `backend`."""
    xp = backend.xp
    quick = ctx.args.quick
    gpu = backend.is_gpu
    n = matmul_sizes(gpu, quick)
    copy_mib = (256 if quick else 1024) if gpu else (32 if quick else 256)
    reps = 3 if quick else 7
    mm_fn, timer, mm_flops = matmul_op(backend, dtype, n)
    elems = copy_mib * 2**20 // np.dtype(dtype).itemsize
    src = xp.ones(elems, dtype=dtype)
    dst = xp.empty(elems, dtype=dtype)
    st = interleaved({"matmul": (mm_fn, timer),
                      "copy": (lambda: xp.copyto(dst, src), timer)}, reps, 1)
    mm = mm_flops / (st["matmul"].median * 1e-3) / 1e9
    bw = 2.0 * src.nbytes / (st["copy"].median * 1e-3) / 1e9
    del mm_fn, src, dst
    dev = device_of(backend)
    copied = 2 * elems * np.dtype(dtype).itemsize
    for name, s, extra in (("matmul", st["matmul"], {"gflops": mm, "n": n}),
                           ("copy", st["copy"], {"gbps": bw, "bytes": copied})):
        ctx.add({"name": f"peak:{name}", "kind": "peak", "device": dev, "backend": backend.name,
                 "dtype": dtype, "shape": f"n={n}" if name == "matmul" else f"MiB={copy_mib}",
                 "median_ms": s.median, "min_ms": s.min, "max_ms": s.max, "reps": len(s.times_ms),
                 "peer": None, "peer_median_ms": None, "speedup": None, "status": "ok", **extra})
    ctx.console.print(f"peak on {dev} ({backend.name}, {dtype}): matmul {mm:.1f} GFLOP/s "
                      f"(n={n}), copy {bw:.1f} GB/s ({copy_mib} MiB, read + write)")
    return {"matmul_gflops": mm, "copy_gbps": bw}


# -------------------------------------------------------------------------------------
# Kernel level


def kernel_versions(spec: _kernels.KernelSpec, backend: Backend) -> dict[str, Callable]:
    """The versions of a kernel timed on `backend`: the CUDA ones on a GPU, the twin on a CPU."""
    return spec.versions(backend.ops)


def _host64(a):
    """A float64 copy of a float array (integers copied as they are; non-arrays unchanged)."""
    if isinstance(a, np.ndarray):
        if a.dtype.kind != "f":
            return a.copy()
        with np.errstate(invalid="ignore"):  # output buffers come from empty(): any bits
            return a.astype(np.float64)
    return a


def _on(backend: Backend, host_args: tuple) -> tuple:
    return tuple(backend.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in host_args)


def validate_kernel(spec: _kernels.KernelSpec, fn: Callable, backend: Backend, size: dict,
                    dtype: str, seed: int = 0) -> tuple[float, str | None]:
    """Run `fn` and the float64 twin on the same random inputs; (max error, problem or None)."""
    host = spec.make_args(np, np.random.default_rng(seed), size, np.dtype(dtype))
    ref = tuple(_host64(a) for a in host)
    spec.twin(*ref)
    args = _on(backend, host)
    try:
        fn(*args)
        backend.synchronize()
    except Exception as e:
        return math.inf, f"raised {type(e).__name__}: {e}"
    errs = [rel_err(args[i], ref[i]) for i in spec.outputs]
    err = max(errs) if errs else 0.0
    tol = KERNEL_TOL[dtype]
    if not err <= tol:
        worst = spec.outputs[int(np.argmax(errs))]
        return err, f"output argument {worst} differs from the twin: error {err:.3g} > {tol:g}"
    return err, None


def bench_kernels(ctx: Context, backend: Backend, dtype: str) -> None:
    args = ctx.args
    size_key = "quick" if args.quick else "full"
    reps, warmup = args.reps, args.warmup
    peak = ctx.peaks.get(backend.name, {})
    dev = device_of(backend)
    timer = cupy_timer if backend.is_gpu else wall_timer
    itemsize = np.dtype(dtype).itemsize
    table = []
    only = set(args.kernel or [])
    for name, spec in _kernels.REGISTRY.items():
        if only and name not in only:
            continue
        size = spec.sizes[size_key]
        shape = ",".join(f"{k}={v}" for k, v in size.items())
        versions = kernel_versions(spec, backend)
        if not versions:
            ctx.skip(f"kernel {name} on {backend.name}", "no version registered for this backend",
                     "kernels")
            continue
        for vname, fn in versions.items():
            base = {"name": f"kernel:{name}:{vname}", "kind": "kernel", "kernel": name,
                    "version": vname, "device": dev, "backend": backend.name, "dtype": dtype,
                    "shape": shape, "sizes": size, "source": spec.source}
            err, problem = validate_kernel(spec, fn, backend, size, dtype)
            if problem is not None:
                ctx.failed += 1
                ctx.console.print(f"[bold red]FAILED[/bold red] kernel {name} version {vname} "
                                  f"on {backend.name} ({dtype}, {shape}): {problem}; not timed")
                ctx.add({**base, "status": "FAILED", "validated": False, "max_rel_err": err,
                         "reason": problem, "median_ms": None, "min_ms": None, "max_ms": None,
                         "peer": None, "peer_median_ms": None, "speedup": None})
                table.append([f"{name}[{vname}]", shape, "FAILED", None, None, None, None,
                              None, None, None])
                continue
            a = _on(backend, spec.make_args(np, np.random.default_rng(1), size, np.dtype(dtype)))
            call = (lambda f=fn, a=a: f(*a))
            fns = {"ours": (call, timer)}
            inner = {"ours": calibrate(call, timer)}
            if backend.is_gpu:  # the twin on the host beside it, for a speedup
                h = spec.make_args(np, np.random.default_rng(1), size, np.dtype(dtype))
                twin_call = (lambda s=spec, h=h: s.twin(*h))
                fns["twin"] = (twin_call, wall_timer)
                inner["twin"] = calibrate(twin_call, wall_timer)
            st = interleaved(fns, reps, warmup, inner)
            s = st["ours"]
            t_s = s.median * 1e-3
            nbytes = spec.nbytes(size) * itemsize / 4  # the cost model counts float32
            flops = spec.flops(size)
            gbps = nbytes / t_s / 1e9
            gflops = flops / t_s / 1e9 if flops else None
            pbw = 100 * gbps / peak["copy_gbps"] if peak.get("copy_gbps") else None
            pfl = (100 * gflops / peak["matmul_gflops"]
                   if gflops and peak.get("matmul_gflops") else None)
            peer = st.get("twin")
            ctx.add({**base, "status": "ok", "validated": True, "max_rel_err": err,
                     "median_ms": s.median, "min_ms": s.min, "max_ms": s.max,
                     "reps": len(s.times_ms), "calls_per_rep": inner["ours"],
                     "gbps": gbps, "gflops": gflops, "pct_peak_bw": pbw, "pct_peak_flops": pfl,
                     "peer": "numpy twin (host)" if peer else None,
                     "peer_median_ms": peer.median if peer else None,
                     "speedup": peer.median / s.median if peer else None})
            table.append([f"{name}[{vname}]", shape, f"ok {err:.1e}", s.median * 1e3,
                          s.min * 1e3, s.max * 1e3, gbps, gflops, pbw, pfl])
    ctx.console.print(_table(
        f"Kernels on {dev} ({backend.name}, {dtype}); validated against the float64 twin",
        ["kernel[version]", "size", "check", "median us", "min us", "max us", "GB/s",
         "GFLOP/s", "% copy BW", "% matmul"], table))


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

    impl = Impl("rnn_gpu", backend.name, device_of(backend), fn,
                cupy_timer if backend.is_gpu else wall_timer, check, gpu=backend.is_gpu)
    impl.extra["model"] = m
    return impl


def _graphed(backend: Backend, model, x, y) -> tuple[Impl | None, str | None]:
    """The same step captured once as a CUDA graph and replayed (rnn_gpu.cuda_graph)."""
    try:
        from .cuda_graph import GraphedStep  # noqa: PLC0415 - GPU only
    except ImportError as e:
        return None, f"rnn_gpu.cuda_graph does not import ({type(e).__name__}: {e})"
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
                cupy_timer, check, gpu=True)
    impl.extra["graph"] = g
    return impl, None


def _torch(model, x, y, device: str, dtype: str, threads: int) -> Impl:
    from .peers import TorchRNN  # noqa: PLC0415

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
    from .peers import SeedLoop  # noqa: PLC0415

    p = SeedLoop(model.params, dtype=dtype)
    return Impl("seed-loop", "numpy", _cpu_device(), lambda: p.loss_and_grads(x, y),
                wall_timer, lambda: p.loss_and_grads(x, y))


def workspace_bytes(model) -> int:
    """Bytes the engine keeps between calls: workspaces and gradient buffers."""
    eng = model._engine
    total = sum(int(g.nbytes) for g in eng.grads.values())
    for ws in eng._workspaces.values():
        total += sum(int(v.nbytes) for v in vars(ws).values() if hasattr(v, "nbytes"))
    return total


_MEMORY_CHILD = """
import json, sys
from rnn_gpu.bench import _memory_child
print(json.dumps(_memory_child(json.loads(sys.argv[1]))))
"""


def _rss_kib() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in KiB, from /proc/self/status."""
    s = Path("/proc/self/status").read_text()
    return (int(re.search(r"VmRSS:\s+(\d+)", s).group(1)),
            int(re.search(r"VmHWM:\s+(\d+)", s).group(1)))


def _memory_child(spec: dict) -> dict:
    """Peak RSS growth over one (first) step, run in a fresh process. CPU only."""
    import rnn_gpu  # noqa: PLC0415

    T, B, H, V = spec["shape"]
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    model = rnn_gpu.RNN(V, H, V, backend="numpy", dtype=spec["dtype"], seed=0)
    if spec["impl"] == "rnn_gpu":
        fn = (lambda: model.loss_and_grads(x, y))
    elif spec["impl"] == "torch":
        fn = _torch(model, x, y, "cpu", spec["dtype"], spec["threads"]).fn
    else:
        fn = _seed(model, x, y, spec["dtype"]).fn
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to now
    except OSError:
        pass
    rss0, _ = _rss_kib()
    fn()
    _, hwm = _rss_kib()
    out = {"peak_mem_bytes": max(0, hwm - rss0) * 1024}
    if spec["impl"] == "rnn_gpu":
        out["workspace_bytes"] = workspace_bytes(model)
    return out


def measure_memory(impl: Impl, shape: tuple, dtype: str, threads: int) -> dict:
    """Peak memory of one step: pool/allocator figures on a GPU, RSS growth on the CPU."""
    if impl.backend == "cupy":
        import cupy as cp  # noqa: PLC0415

        pool = cp.get_default_memory_pool()
        m = impl.extra.get("model")
        if m is None:
            return {}
        m._engine._workspaces.clear()
        pool.free_all_blocks()
        base = pool.total_bytes()
        impl.fn()
        cp.cuda.get_current_stream().synchronize()
        # The pool keeps what it allocated, so what it holds is the peak of the step.
        return {"peak_mem_bytes": int(pool.total_bytes() - base),
                "workspace_bytes": workspace_bytes(m),
                "peak_mem_method": "CuPy memory pool growth over one step"}
    if impl.backend == "torch-cuda":
        import torch  # noqa: PLC0415

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        impl.fn()
        torch.cuda.synchronize()
        return {"peak_mem_bytes": int(torch.cuda.max_memory_allocated() - base),
                "peak_mem_method": "torch.cuda.max_memory_allocated growth over one step"}
    if impl.name == "rnn_gpu-graph":
        return {}
    if not Path("/proc/self/status").exists():
        return {}
    spec = {"impl": impl.name, "shape": list(shape), "dtype": dtype, "threads": threads}
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        r = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(spec)], env=env,
                           capture_output=True, text=True, timeout=600, check=True)
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except Exception as e:
        return {"peak_mem_error": f"{type(e).__name__}: {e}"[:300]}
    out["peak_mem_method"] = "peak RSS growth over the first step, in a fresh process"
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
    import rnn_gpu  # noqa: PLC0415

    T, B, H, V = shape
    args = ctx.args
    threads = args.threads or blas_threads()
    shape_s = f"T={T},B={B},H={H},V={V}"
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    model = rnn_gpu.RNN(V, H, V, backend="numpy", dtype=dtype, seed=0)
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
            from .peers import torch_unavailable_reason  # noqa: PLC0415

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
            fn, timer, mm_flops[be.name] = matmul_op(be, dtype, matmul_sizes(be.is_gpu, args.quick))
            fns[f"peak:{be.name}"] = (fn, timer)
    stats = interleaved(fns, args.reps, args.warmup)
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


def plot_sweeps(rows: list[dict], path: str, console) -> bool:
    """Step time against T, B and H, one panel each, one line per implementation."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.ticker import ScalarFormatter  # noqa: PLC0415
    except ImportError:
        console.print(f"--plot: matplotlib is not installed (pip install 'rnn-gpu[plot]'); "
                      f"{path} not written")
        return False
    sw = [r for r in rows if r.get("kind") == "sweep" and r.get("status") == "ok"]
    if not sw:
        console.print(f"--plot: no sweep results to draw; {path} not written")
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for ax, axis in zip(axes, ("T", "B", "H")):
        lines: dict[str, list[tuple[int, float]]] = {}
        for r in sw:
            if r["axis"] == axis:
                lines.setdefault(f"{r['impl']} ({r['backend']})", []).append(
                    (r["value"], r["median_ms"]))
        for label, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        base = sw[0]["base"]
        fixed = ", ".join(f"{k}={v}" for k, v in zip("TBHV", base) if k != axis)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel(axis)
        ax.set_ylabel("step time (ms, median)")
        ax.set_title(f"varying {axis} ({fixed})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    devices = sorted({r["device"] for r in sw})
    fig.suptitle(f"Training step, {sw[0]['dtype']}: {'; '.join(devices)} ({sw[0]['date'][:10]})",
                 fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    console.print(f"plot written to {path}")
    return True


# -------------------------------------------------------------------------------------
# GPU test summary (GPU result files carry one)


def gpu_test_summary(ctx: Context) -> None:
    tests = Path(__file__).resolve().parent.parent / "tests"
    if not tests.is_dir():
        ctx.skip("GPU test summary", "no tests/ directory beside the package (installed wheel)")
        return
    import xml.etree.ElementTree as ET  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as d:
        junit = Path(d) / "gpu.xml"
        try:
            subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q",
                            "-p", "no:cacheprovider", f"--junitxml={junit}", str(tests)],
                           capture_output=True, text=True, timeout=1800,
                           cwd=str(tests.parent))
            root = ET.parse(junit).getroot()
        except Exception as e:
            ctx.skip("GPU test summary", f"pytest did not run ({type(e).__name__}: {e})")
            return
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites)
         for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    failed = n["failures"] + n["errors"]
    if failed:
        ctx.failed += 1
    ctx.console.print(f"GPU tests (pytest -m gpu): {passed} passed, {failed} failed, "
                      f"{n['skipped']} skipped")
    ctx.add({"name": "gpu-tests", "kind": "gpu-tests", "device": get_backend("cupy").device,
             "backend": "cupy", "dtype": "", "shape": "",
             "status": "FAILED" if failed else "ok",
             "passed": passed, "failed": failed, "skipped": n["skipped"],
             "median_ms": None, "min_ms": None, "max_ms": None,
             "peer": None, "peer_median_ms": None, "speedup": None})


# -------------------------------------------------------------------------------------
# Comparing two result files


def _key(r: dict) -> tuple:
    return (r.get("name"), r.get("backend"), r.get("dtype"), r.get("shape"))


def load_rows(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: expected one JSON object per line ({e})") from None
    return rows


def compare(path_a: str, path_b: str, console) -> int:
    """Print median_ms of B over A for every row the two files share."""
    a, b = load_rows(path_a), load_rows(path_b)
    for label, path, rows in (("A", path_a, a), ("B", path_b, b)):
        r0 = next((r for r in rows if r.get("date")), {})
        console.print(f"{label}: {path} - {r0.get('date', '?')}, "
                      f"{sorted({r['device'] for r in rows if r.get('device')})}")
    amap = {_key(r): r for r in a if r.get("median_ms") is not None}
    table = []
    for r in b:
        k = _key(r)
        if r.get("median_ms") is None or k not in amap:
            continue
        ma, mb = amap[k]["median_ms"], r["median_ms"]
        table.append([k[0], k[1], k[2], k[3], ma, mb, mb / ma])
    console.print(_table("Median time, B / A (below 1: B is faster)",
                         ["name", "backend", "dtype", "shape", "A ms", "B ms", "B/A"], table))
    only_a = len({_key(r) for r in a if r.get("median_ms") is not None} - {_key(r) for r in b})
    only_b = len({_key(r) for r in b if r.get("median_ms") is not None} - set(amap))
    if only_a or only_b:
        console.print(f"not compared: {only_a} timed rows only in A, {only_b} only in B")
    return 0


# -------------------------------------------------------------------------------------
# Command line


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """'64,32,256,65;35,20,200,10000' -> [(64, 32, 256, 65), (35, 20, 200, 10000)]."""
    out = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            vals = tuple(int(v) for v in part.split(","))
        except ValueError:
            vals = ()
        if len(vals) != 4 or min(vals) < 1:
            raise argparse.ArgumentTypeError(
                f"expected T,B,H,V (four positive integers) separated by ';', got {part!r}")
        out.append(vals)
    if not out:
        raise argparse.ArgumentTypeError("expected at least one shape T,B,H,V")
    return out


def parse_peers(text: str) -> set[str]:
    items = {p.strip() for p in text.split(",") if p.strip()}
    if items <= {"none"}:
        return set()
    if "all" in items:
        return set(PEERS)
    bad = items - set(PEERS)
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(PEERS)}, all or none, "
            f"got {', '.join(sorted(bad))}")
    return items


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `rnn-gpu bench`."""
    B = argparse.BooleanOptionalAction
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few repetitions (under a minute on a 2-core CPU)")
    p.add_argument("--kernels", action=B, default=True, help="kernel level (default on)")
    p.add_argument("--steps", action=B, default=True, help="training-step level (default on)")
    p.add_argument("--sweeps", action=B, default=None,
                   help="step time against T, B and H (default: on when --plot is given)")
    p.add_argument("--only", choices=("kernels", "steps", "sweeps"),
                   help="run this level alone")
    p.add_argument("--backend", default="all", choices=("all", "auto", "numpy", "cupy"),
                   help="backends to time: all available (default), numpy or cupy")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--shapes", type=parse_shapes, metavar="T,B,H,V;...",
                   help="training-step shapes (default: the engine's three, or a small one "
                        "with --quick); the first is the centre of the sweeps")
    p.add_argument("--kernel", action="append", metavar="NAME",
                   help="time only this kernel (repeatable)")
    p.add_argument("--peers", type=parse_peers, default=None, metavar="LIST",
                   help="peers for the step level: torch, seed, all (default) or none")
    p.add_argument("--seed-max-work", type=float, default=SEED_MAX_WORK, metavar="W",
                   help="run the seed loop only where T*B*H*(T*H+V) <= W "
                        f"(default {SEED_MAX_WORK:.2g})")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions after warm-up (default 11, 5 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warm-up repetitions (default 2, 1 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch CPU threads (default: NumPy's BLAS threads)")
    p.add_argument("--memory", action=B, default=True,
                   help="peak memory of one step (default on)")
    p.add_argument("--gpu-tests", action=B, default=None,
                   help="run pytest -m gpu and record the counts (default: on a GPU, "
                        "without --quick)")
    p.add_argument("--out", metavar="FILE.jsonl", help="write the results as JSON lines")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="compare two result files (ratios B/A) and exit")
    p.add_argument("--plot", metavar="PNG", help="draw the sweeps (needs matplotlib)")
    p.add_argument("--from", dest="from_file", metavar="FILE.jsonl",
                   help="with --plot: draw the sweeps of an existing result file, run nothing")


def _command_line(args: argparse.Namespace) -> str:
    argv = getattr(args, "argv", None)
    if argv is not None:  # main() of this module
        return shlex.join(["python", "-m", "rnn_gpu.bench", *argv])
    prog = Path(sys.argv[0]).name
    if prog in ("bench.py", "__main__.py", "-m", "-c"):
        return shlex.join(["python", "-m", "rnn_gpu.bench", *sys.argv[1:]])
    return shlex.join([prog, *sys.argv[1:]])


def _backends(ctx: Context) -> list[Backend]:
    want = ctx.args.backend
    out = []
    if want in ("all", "auto", "numpy"):
        out.append(get_backend("numpy"))
    if want in ("all", "auto", "cupy"):
        why = cupy_unavailable_reason()
        if why is None:
            out.append(get_backend("cupy"))
        else:
            ctx.skip("backend cupy (GPU kernels, GPU steps, CUDA graphs, PyTorch CUDA)", why)
    return out


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when everything validated, 1 when something FAILED."""
    from rich.console import Console  # noqa: PLC0415

    # Tables keep their columns when the output goes to a file or a pipe.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    if args.compare:
        return compare(args.compare[0], args.compare[1], console)
    if args.from_file:
        if not args.plot:
            console.print("--from needs --plot PNG")
            return 2
        return 0 if plot_sweeps(load_rows(args.from_file), args.plot, console) else 1

    args.reps = args.reps if args.reps is not None else (5 if args.quick else 11)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.reps < 1 or args.warmup < 0:
        console.print("--reps must be >= 1 and --warmup >= 0")
        return 2
    shapes = args.shapes or list(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    levels = {"kernels": args.kernels, "steps": args.steps,
              "sweeps": bool(args.plot) if args.sweeps is None else args.sweeps}
    if args.only:
        levels = {k: k == args.only for k in levels}
    peer_set = set(PEERS) if args.peers is None else args.peers

    ctx = Context(args, console, _command_line(args),
                  _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  collect_versions())
    ctx.peer_set = peer_set
    if "torch" in peer_set and (levels["steps"] or levels["sweeps"]):
        from .peers import torch_unavailable_reason  # noqa: PLC0415

        if torch_unavailable_reason("cpu") is None:
            import torch  # noqa: PLC0415

            torch.set_num_threads(args.threads or blas_threads())
            _torch_versions(ctx)

    t0 = time.perf_counter()
    backends = _backends(ctx)
    for be in backends:
        ctx.peaks[be.name] = measure_peaks(ctx, be, args.dtype)
    if levels["kernels"]:
        for be in backends:
            bench_kernels(ctx, be, args.dtype)
    if levels["steps"]:
        bench_steps(ctx, backends, args.dtype, shapes)
    if levels["sweeps"]:
        bench_sweeps(ctx, backends, args.dtype, shapes[0])
    gpu = any(be.is_gpu for be in backends)
    if gpu and (args.gpu_tests if args.gpu_tests is not None else not args.quick):
        gpu_test_summary(ctx)
    if args.plot:
        plot_sweeps(ctx.rows, args.plot, console)

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            for r in ctx.rows:
                f.write(json.dumps(r, sort_keys=False) + "\n")
        console.print(f"{len(ctx.rows)} results written to {args.out}")
    elif backends:
        be = backends[-1]
        console.print("to keep these results: --out bench/results/"
                      f"{'gpu' if be.is_gpu else 'cpu'}-{device_slug(device_of(be))}.jsonl")
    console.print(f"done in {time.perf_counter() - t0:.1f} s"
                  + (f"; [bold red]{ctx.failed} FAILED[/bold red]" if ctx.failed else
                     "; every timed kernel and step was validated first"))
    return 1 if ctx.failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m rnn_gpu.bench",
                                description=(__doc__ or "").strip().split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    args.argv = argv
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
