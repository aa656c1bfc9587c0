"""Kernel level: this device's peaks, then every kernel of the registry and every version
of it, each validated against its float64 NumPy twin before it is timed.

A version that disagrees with its twin is marked FAILED, is not timed, and makes the
command exit with status 1. Times come with GB/s, GFLOP/s and the percentage of this
device's copy bandwidth and matmul rate, both measured here first.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..backend import Backend
from ..gradcheck import rel_err
from ..ops import registry
from ..ops.registry import KernelSpec
from .records import Context, _table, device_of
from .timing import calibrate, cupy_stats, interleaved, timer_for, wall_timer

# Normwise relative error allowed against the float64 oracle.
KERNEL_TOL = {"float32": 1e-4, "float64": 1e-10}


# -------------------------------------------------------------------------------------
# The registry (rnn_gpu.ops.registry) and a backend's versions of each kernel


def kernel_specs() -> dict[str, KernelSpec]:
    """The kernel registry: name -> spec (twin, make_args, outputs, sizes, cost model),
    looked up at each call."""
    return registry.REGISTRY


def kernel_versions(spec: KernelSpec, backend: Backend) -> dict[str, Callable]:
    """The versions of a kernel timed on `backend`: the twin on a CPU, every CUDA version
    of the backend's kernel set on a GPU."""
    return spec.versions(backend.ops)


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
    timer = timer_for(backend)
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
    copy_fn = (lambda: xp.copyto(dst, src))
    if gpu:  # GPU times, one operation after the other
        st = {"matmul": cupy_stats(xp, mm_fn, reps, 1), "copy": cupy_stats(xp, copy_fn, reps, 1)}
    else:
        st = interleaved({"matmul": (mm_fn, timer), "copy": (copy_fn, timer)}, reps, 1)
    mm = mm_flops / (st["matmul"].median * 1e-3) / 1e9
    bw = 2.0 * src.nbytes / (st["copy"].median * 1e-3) / 1e9
    del mm_fn, copy_fn, src, dst
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


def validate_kernel(spec: KernelSpec, fn: Callable, backend: Backend, size: dict,
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
    timer = timer_for(backend)
    itemsize = np.dtype(dtype).itemsize
    table = []
    only = set(args.kernel or [])
    for name, spec in kernel_specs().items():
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
            inner = {"ours": calibrate(call, timer)}
            if backend.is_gpu:  # GPU times, then the twin on the host, for a speedup
                h = spec.make_args(np, np.random.default_rng(1), size, np.dtype(dtype))
                twin_call = (lambda s=spec, h=h: s.twin(*h))
                inner["twin"] = calibrate(twin_call, wall_timer)
                st = {"ours": cupy_stats(backend.xp, call, reps, warmup, inner["ours"]),
                      **interleaved({"twin": (twin_call, wall_timer)}, reps, warmup, inner)}
            else:
                st = interleaved({"ours": (call, timer)}, reps, warmup, inner)
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

