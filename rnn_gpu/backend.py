"""Array-backend shim: chooses NumPy or CuPy, assembles each with its kernel set, and
moves arrays between them.

Backend-generic code asks a :class:`Backend` for its array module ``xp`` and its kernel
set ``ops`` and never imports CuPy itself. Importing this module touches no GPU and reads
no environment: CuPy is imported, and a device probed, only when a backend is first
resolved. This is the one module that imports CuPy; :mod:`rnn_gpu.cuda` and
:mod:`rnn_gpu.ops` are handed what they need.

Names: ``"numpy"``, ``"cupy"`` and ``"auto"`` (the default, also read from the
environment variable ``RNN_GPU_BACKEND``). ``"auto"`` picks CuPy only when it imports
and a CUDA device answers; otherwise NumPy.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cuda.blas import CublasGemm
from .cuda.compile import RawModuleLoader, kernel_dir, kernel_source, module_source, nvrtc_options
from .cuda.compile import raw_module as _raw_module
from .cuda.cublas_capi import load_capi
from .cuda.launchers import CudaOps
from .machine import machine_info
from .ops.numpy_ops import NumpyOps

__all__ = ["BACKENDS", "Backend", "get_backend", "to_numpy", "as_backend", "array_module",
           "is_cupy_array", "gpu_available", "cupy_unavailable_reason", "describe",
           "raw_module", "kernel_dir", "kernel_source", "module_source", "nvrtc_options"]

log = logging.getLogger("rnn_gpu")

BACKENDS = ("auto", "numpy", "cupy")
ENV_VAR = "RNN_GPU_BACKEND"
TF32_VAR = "RNN_GPU_TF32"

_FIX_HINT = (
    "install the CuPy wheel matching your CUDA driver (pip install 'rnn-gpu[cuda12]' or "
    "'rnn-gpu[cuda13]'), check that `nvidia-smi` lists a GPU, or use backend='numpy'"
)


@dataclass(frozen=True)
class Backend:
    """One array backend: its name, its array module, the device, and its kernel set.

    ops: what the engine calls (:class:`rnn_gpu.ops.Ops`): the NumPy twins for "numpy"
    (the default there), a :class:`rnn_gpu.cuda.launchers.CudaOps` for "cupy".
    """

    name: str  # "numpy" or "cupy"
    xp: Any  # the array module
    device: str  # human-readable description
    ops: Any = None  # the kernel set

    def __post_init__(self):
        if self.ops is None:
            if self.name != "numpy":
                raise ValueError(f"ops: backend {self.name!r} needs its kernel set (a CudaOps)")
            object.__setattr__(self, "ops", NumpyOps())

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def asarray(self, a, dtype=None):
        """Put `a` (a NumPy or this backend's array, or a scalar/list) on this backend."""
        if self.name == "numpy":
            if is_cupy_array(a):
                a = a.get()
            return np.asarray(a, dtype=dtype)
        return self.xp.asarray(a, dtype=dtype)

    def synchronize(self) -> None:
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"Backend({self.name!r}, {self.device!r})"


# -------------------------------------------------------------------------------------
# CuPy probing. The reason a probe failed is remembered so that an explicit request for
# CuPy can say why it cannot be honoured.


@functools.lru_cache(maxsize=None)
def _probe_cupy() -> tuple[Any, str | None, str]:
    """Return (cupy module or None, reason it is unusable or None, device description)."""
    try:
        import cupy  # noqa: PLC0415 - imported lazily on purpose
    except Exception as e:  # ImportError, or a broken CUDA library underneath
        return None, f"CuPy does not import ({type(e).__name__}: {e})", ""
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, driver too old, ...
        return None, f"CuPy imports but CUDA is unusable ({type(e).__name__}: {e})", ""
    if n < 1:
        return None, "CuPy imports but no CUDA device is visible", ""
    try:
        from cupy.cuda import cublas  # noqa: F401,PLC0415 - CuPy 14 wheels may lack its library
    except Exception as e:
        return None, (f"CuPy imports but cuBLAS does not load ({type(e).__name__}: {e}); "
                      "install the CUDA libraries with pip install 'rnn-gpu[cuda12]' (or "
                      "'[cuda13]')"), ""
    try:
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as e:
        return None, f"CuPy sees a device but cannot run on it ({type(e).__name__}: {e})", ""
    why = _run_probe(cupy)
    if why is not None:
        return None, why, ""
    cc = props.get("major", "?"), props.get("minor", "?")
    return cupy, None, f"{name} (device {dev.id}, compute capability {cc[0]}.{cc[1]})"


_PROBE_KERNEL = r"""
extern "C" __global__ void rnn_probe(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += (float)i;
}
"""


def _run_probe(cupy) -> str | None:
    """Compile and launch one tiny kernel (NVRTC, the driver) and run one GEMM (cuBLAS),
    and check both results; the reason it failed, or None."""
    try:
        k = cupy.RawKernel(_PROBE_KERNEL, "rnn_probe", options=("--std=c++14",))
        x = cupy.ones(64, dtype=cupy.float32)
        k((1,), (64,), (x, np.int32(64)))
        ok = bool(abs(float(x.sum()) - (64 + 63 * 64 / 2)) < 1e-3)
    except Exception as e:
        return (f"CuPy cannot compile or launch a kernel ({type(e).__name__}: {e}); NVRTC and "
                "the driver must match: pip install 'rnn-gpu[cuda12]' (or '[cuda13]')")
    if not ok:
        return "CuPy launched a test kernel that computed a wrong result"
    try:
        a = cupy.full((8, 8), 0.5, dtype=cupy.float32)
        ok = bool(abs(float((a @ a).sum()) - 8 * 8 * 8 * 0.25) < 1e-3)
    except Exception as e:
        return (f"CuPy cannot run a cuBLAS GEMM ({type(e).__name__}: {e}); install the CUDA "
                "libraries: pip install 'rnn-gpu[cuda12]' (or '[cuda13]')")
    if not ok:
        return "cuBLAS computed a wrong result for a test GEMM"
    return None


def cupy_unavailable_reason() -> str | None:
    """Why CuPy cannot be used here, or None when it can."""
    return _probe_cupy()[1]


def gpu_available() -> bool:
    return _probe_cupy()[0] is not None


@functools.lru_cache(maxsize=None)
def _numpy_backend() -> Backend:
    return Backend("numpy", np, "CPU (NumPy)", NumpyOps())


def cuda_backend(cp: Any, cublas: Any, device: str, loader=None, name: str = "cupy") -> Backend:
    """A CUDA backend assembled from an array module, its cuBLAS binding and a kernel
    loader (default: NVRTC through ``cp.RawModule``). ``RNN_GPU_TF32=1`` turns TF32 on."""
    ops = CudaOps(cp, RawModuleLoader(cp) if loader is None else loader, CublasGemm(cp, cublas))
    if os.environ.get(TF32_VAR, "").strip().lower() in ("1", "true", "yes", "on"):
        ops.blas.set_tf32(True)
    return Backend(name, cp, device, ops)


@functools.lru_cache(maxsize=None)
def _cupy_backend() -> Backend:
    cp, why, device = _probe_cupy()
    if cp is None:
        raise RuntimeError(f"backend 'cupy' is not usable: {why}. To fix: {_FIX_HINT}.")
    from cupy.cuda import cublas  # noqa: PLC0415 - the probe has imported it already

    capi = load_capi()  # the capturable binding, on the library CuPy just loaded
    if capi is None:
        log.info("rnn_gpu: cuBLAS's C API not found; GEMMs go through CuPy (no CUDA Graphs)")
    return cuda_backend(cp, cublas if capi is None else capi, device)


def get_backend(name: str | Backend | None = "auto") -> Backend:
    """Resolve a backend name ("auto", "numpy", "cupy"; None means "auto")."""
    if isinstance(name, Backend):
        return name
    if name is None or name == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(
                    f"{ENV_VAR}: expected one of {', '.join(BACKENDS)}, got {env!r}"
                )
            return get_backend(env)
        return _auto_backend()
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    name = name.lower()
    if name == "numpy":
        return _numpy_backend()
    return _cupy_backend()


@functools.lru_cache(maxsize=None)
def _auto_backend() -> Backend:
    if gpu_available():
        b = _cupy_backend()
        log.info("rnn_gpu: backend 'auto' chose CuPy on %s", b.device)
        return b
    log.info("rnn_gpu: backend 'auto' chose NumPy (%s)", cupy_unavailable_reason())
    return _numpy_backend()


# -------------------------------------------------------------------------------------
# Array helpers


def is_cupy_array(a) -> bool:
    """True for a cupy.ndarray, decided without importing CuPy."""
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(*arrays):
    """The module (numpy or cupy) of `arrays`; TypeError if they mix backends."""
    kinds = {("cupy" if is_cupy_array(a) else "numpy") for a in arrays if a is not None}
    if len(kinds) > 1:
        raise TypeError(
            "arrays from different backends were mixed in one call (NumPy and CuPy); "
            "move them to one backend first with rnn_gpu.to_numpy or Backend.asarray"
        )
    if kinds == {"cupy"}:
        return _cupy_backend().xp
    return np


def to_numpy(a) -> np.ndarray:
    """A host (NumPy) copy or view of `a`, from either backend."""
    if is_cupy_array(a):
        return a.get()
    return np.asarray(a)


def as_backend(a, backend: Backend, dtype=None):
    """Put `a` on `backend` (host arrays are copied to the device when needed)."""
    return backend.asarray(a, dtype=dtype)


# -------------------------------------------------------------------------------------
# CUDA sources: compiled by rnn_gpu.cuda.compile (re-exported above)


def raw_module(filename: str, defines: tuple[tuple[str, str], ...] = ()):
    """Compile `kernels/<filename>` once (per set of #defines) as a cupy.RawModule."""
    return _raw_module(_cupy_backend().xp, filename, defines)


def describe() -> dict[str, str]:
    """Versions and devices, for `rnn-gpu info` and benchmark records."""
    info = machine_info()
    cp, why, device = _probe_cupy()
    if cp is None:
        info["cupy"] = why or "unavailable"
    else:
        info["cupy"] = cp.__version__
        try:
            info["cuda_runtime"] = str(cp.cuda.runtime.runtimeGetVersion())
            info["cuda_driver"] = str(cp.cuda.runtime.driverGetVersion())
        except Exception:  # pragma: no cover - depends on the machine
            pass
        info["gpu"] = device
    try:
        info["backend"] = f"{get_backend('auto').name}"
    except Exception as e:  # an invalid RNN_GPU_BACKEND, say
        info["backend"] = f"error: {e}"
    return info
