"""The CUDA launchers of :mod:`rnn_gpu.cuda_ops` on a CPU: an emulated device for tests.

Nothing here needs a GPU, CuPy or the CUDA toolkit; it needs the host C++ compiler.

* **Kernels.** Each ``kernels/*.cu`` file is compiled by ``g++`` exactly as the launchers
  hand it to ``cupy.RawModule`` (the same prepended ``#define``s, through
  :func:`rnn_gpu.backend.module_source`), with ``tests/cuda_emu.h`` included first: the
  blocks of a launch run one after another, and the threads of a block are fibers that
  meet at ``__syncthreads`` and at warp shuffles (see the header). A launch checks what
  CuPy does not: that each argument's type matches the kernel's parameter (array dtype
  against pointee type, scalar width), and that the grid and block are legal (the block
  within the kernel's ``__launch_bounds__`` too).
* **Device memory.** :class:`DeviceArray` is a NumPy array that the launchers accept as a
  ``cupy.ndarray`` (a plain NumPy array is rejected, as on the GPU). Arrays made through
  the fake ``cupy`` live between guards of signalling NaNs: a kernel that writes out of
  bounds is caught after the launch, and one that reads out of bounds brings a NaN into
  its results.
* **cuBLAS.** ``sgemm``/``dgemm`` follow cuBLAS's column-major contract on raw pointers
  (leading dimensions checked), so the launchers' row-major-to-column-major argument
  mapping is what gets tested.

:func:`load_cuda_ops` imports :mod:`rnn_gpu.cuda_ops` afresh against these stand-ins;
:func:`emulated_backend` and :func:`installed` give the engine on it.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
import weakref
from pathlib import Path

import numpy as np

from rnn_gpu import backend
from rnn_gpu.backend import Backend

from .helpers import defined_kernels

HEADER = Path(__file__).with_name("cuda_emu.h")
_GUARD_BYTES = 1 << 16  # a stray row of a few thousand floats still lands in a guard
_CODE = {np.dtype(np.float32): "f", np.dtype(np.float64): "d", np.dtype(np.int32): "i",
         np.dtype(np.int64): "q", np.dtype(np.uint32): "I", np.dtype(np.uint64): "Q"}
_CTYPE = {"f": ctypes.c_float, "d": ctypes.c_double, "i": ctypes.c_int32,
          "q": ctypes.c_int64, "I": ctypes.c_uint32, "Q": ctypes.c_uint64}


class EmulationError(RuntimeError):
    """A launch the GPU would reject or get wrong: bad arguments, grid, barrier, bounds."""


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


# -------------------------------------------------------------------------------------
# Device memory with guard bands


class DeviceArray(np.ndarray):
    """A host array standing for device memory. ``.data.ptr`` is its address, as CuPy's."""

    @property
    def data(self):  # cupy.ndarray.data is a MemoryPointer with .ptr
        return types.SimpleNamespace(ptr=self.ctypes.data)


# What the guards hold: for floats a signalling NaN (arithmetic on one that was read out of
# bounds gives a quiet NaN, so even a NaN written back into a guard differs), else 0xA5 bytes.
_GUARD_WORD = {4: np.uint32(0x7FA5A5A5), 8: np.uint64(0x7FF4A5A5A5A5A5A5)}
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# id(buffer) -> (weak reference to the whole buffer, guards included; elements per guard)
_GUARDED: dict[int, tuple[weakref.ref, int]] = {}


def _guard_word(dtype: np.dtype):
    if dtype.kind == "f":
        return _GUARD_WORD[dtype.itemsize]
    return np.frombuffer(b"\xa5" * dtype.itemsize, _UINT[dtype.itemsize])[0]


def _alloc(shape, dtype) -> DeviceArray:
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    g = _GUARD_BYTES // dtype.itemsize
    buf = np.empty(2 * g + n, dtype)
    words = buf.view(_UINT[dtype.itemsize])
    words[:g] = words[g + n:] = _guard_word(dtype)
    key = id(buf)
    _GUARDED[key] = (weakref.ref(buf, lambda _, key=key: _GUARDED.pop(key, None)), g)
    return buf[g:g + n].reshape(shape).view(DeviceArray)


def check_guards(after: str) -> None:
    """Raise if any guarded allocation's guards were written (an out-of-bounds store)."""
    for ref, g in list(_GUARDED.values()):
        buf = ref()
        if buf is None:
            continue
        words = buf.view(_UINT[buf.dtype.itemsize])
        want = _guard_word(buf.dtype)
        changed = int((words[:g] != want).sum() + (words[len(words) - g:] != want).sum())
        if changed:
            words[:g] = words[len(words) - g:] = want
            raise EmulationError(f"{after}: wrote outside an array ({changed} guard elements "
                                 f"changed around a {buf.dtype} array of {len(buf) - 2 * g})")


def empty(shape, dtype=np.float64) -> DeviceArray:
    """Not zeros, as on a GPU: filled like the guards, so reading it before writing shows."""
    a = _alloc(shape, dtype)
    a.view(_UINT[a.dtype.itemsize])[...] = _guard_word(a.dtype)
    return a


def zeros(shape, dtype=np.float64) -> DeviceArray:
    a = _alloc(shape, dtype)
    a[...] = 0
    return a


def ones(shape, dtype=np.float64) -> DeviceArray:
    a = _alloc(shape, dtype)
    a[...] = 1
    return a


def asarray(a, dtype=None) -> DeviceArray:
    """A device copy of `a`; a device array of the dtype asked for comes back as it is."""
    if isinstance(a, DeviceArray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    a = np.asarray(a, dtype=dtype)
    out = _alloc(a.shape, a.dtype)
    out[...] = a
    return out


def empty_like(a, dtype=None) -> DeviceArray:
    return empty(a.shape, a.dtype if dtype is None else dtype)


def zeros_like(a, dtype=None) -> DeviceArray:
    return zeros(a.shape, a.dtype if dtype is None else dtype)


def ascontiguousarray(a, dtype=None) -> DeviceArray:
    a = np.asarray(a, dtype=dtype)
    if a.flags.c_contiguous and isinstance(a, DeviceArray):
        return a
    return asarray(a)


# -------------------------------------------------------------------------------------
# Kernels: compiled by g++ against cuda_emu.h, launched through ctypes


@dataclasses.dataclass
class Library:
    """A kernel file built for the emulator: the shared library and, per kernel, the
    most threads a block may have (its __launch_bounds__)."""

    dll: ctypes.CDLL
    launch_bounds: dict[str, int]


_BOUNDS = re.compile(r"__launch_bounds__\(([^,)]*)[^)]*\)\s*(\w+)\s*\(")


def launch_bounds(src: str) -> dict[str, int]:
    """Kernel name -> its __launch_bounds__ maximum, read after the preprocessor has
    expanded the file's macros (tunables and the macros that define kernels)."""
    cmd = [compiler() or "g++", "-E", "-P", "-x", "c++", f"-I{backend.kernel_dir()}", "-"]
    r = subprocess.run(cmd, input=src, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise EmulationError(f"the preprocessor failed:\n{r.stderr}")
    out = {}
    for expr, name in _BOUNDS.findall(r.stdout):
        if not re.fullmatch(r"[\d\s()*+-]+", expr):
            raise EmulationError(f"{name}: __launch_bounds__({expr}) is not a constant")
        out[name] = int(eval(expr, {"__builtins__": {}}))  # digits and + - * only
    return out


def build(src: str, label: str) -> Library:
    """Compile CUDA source `src` (its kernels found by name) for the emulator, once per
    text: the library is kept in the temporary directory under a hash of the text."""
    names = sorted(defined_kernels(src))
    trailer = ["", "// entry points for the emulator"]
    for n in names:
        trailer.append(
            f'extern "C" int emu_launch_{n}(const unsigned* g, const unsigned* b, void** a, '
            f"unsigned order, char* err, int errlen) {{ return cuda_emu::launch(&{n}, g, b, a, "
            f"order, err, errlen); }}")
        trailer.append(f'extern "C" const char* emu_sig_{n}() {{ return cuda_emu::signature(&{n}); }}')
    code = f'#include "{HEADER}"\n#line 1 "{label}"\n{src}\n' + "\n".join(trailer) + "\n"
    headers = "".join(p.read_text() for p in sorted(backend.kernel_dir().glob("*.cuh")))
    key = hashlib.sha256((code + HEADER.read_text() + headers).encode()).hexdigest()[:16]
    out_dir = Path(tempfile.gettempdir()) / f"rnn_gpu_cuda_emu_{os.getuid()}"
    out_dir.mkdir(exist_ok=True)
    stem = f"{Path(label).stem}-{key}"
    lib = out_dir / f"{stem}.so"
    if not lib.exists():
        cpp = out_dir / f"{stem}.cpp"
        cpp.write_text(code)
        tmp = out_dir / f"{stem}.{os.getpid()}.tmp"
        cmd = [compiler() or "g++", "-std=c++17", "-O1", "-g0", "-fPIC", "-shared",
               "-ffp-contract=off", "-U_FORTIFY_SOURCE", "-Wall", "-Werror",
               "-Wno-unused-function", "-Wno-unknown-pragmas", f"-I{backend.kernel_dir()}",
               str(cpp), "-o", str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise EmulationError(f"{label} does not compile for the emulator:\n{r.stderr}")
        os.replace(tmp, lib)  # atomic: a concurrent run never loads half a file
    return Library(ctypes.CDLL(str(lib)), launch_bounds(src))


@functools.lru_cache(maxsize=None)
def _library(filename: str, defines: tuple) -> Library:
    """kernels/<filename> as the launchers compile it: their #defines prepended."""
    return build(backend.module_source(filename, defines), filename)


class Kernel:
    """One emulated kernel, called as CuPy's RawKernel is: kernel(grid, block, args)."""

    order = 0  # thread order inside barrier intervals: 0 ascending, 1 descending, 2+ shuffled

    def __init__(self, lib: Library, name: str):
        self.name = name
        self.max_threads = lib.launch_bounds.get(name, 1024)
        self._launch = getattr(lib.dll, f"emu_launch_{name}")
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint)] * 2 + [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint, ctypes.c_char_p, ctypes.c_int]
        sig = getattr(lib.dll, f"emu_sig_{name}")
        sig.restype = ctypes.c_char_p
        self.params = sig().decode().split(",")

    def _arg(self, i: int, param: str, a):
        if param.startswith("*"):
            if not isinstance(a, DeviceArray):
                raise EmulationError(f"{self.name}: argument {i}: expected a device array for a "
                                     f"pointer parameter, got {type(a).__name__}")
            if _CODE.get(a.dtype) != param[1]:
                raise EmulationError(f"{self.name}: argument {i}: a {a.dtype} array passed for "
                                     f"a parameter of type code {param}")
            return ctypes.c_void_p(a.ctypes.data)
        if not isinstance(a, np.generic) or _CODE.get(a.dtype) != param:
            raise EmulationError(f"{self.name}: argument {i}: expected a NumPy scalar of type "
                                 f"code {param}, got {type(a).__name__} {a!r}")
        return _CTYPE[param](a.item())

    def __call__(self, grid, block, args):
        if len(args) != len(self.params):
            raise EmulationError(f"{self.name}: {len(args)} arguments for {len(self.params)} "
                                 "parameters")
        vals = [self._arg(i, p, a) for i, (p, a) in enumerate(zip(self.params, args))]
        ptrs = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        dims = [tuple(d) + (1,) * (3 - len(d)) for d in (grid, block)]
        threads = int(np.prod(dims[1]))
        if threads > self.max_threads:  # the driver refuses such a launch
            raise EmulationError(f"{self.name}: a block of {threads} threads exceeds its "
                                 f"__launch_bounds__({self.max_threads})")
        g = (ctypes.c_uint * 3)(*dims[0])
        b = (ctypes.c_uint * 3)(*dims[1])
        err = ctypes.create_string_buffer(512)
        if self._launch(g, b, ptrs, Kernel.order, err, len(err)):
            raise EmulationError(f"{self.name}: {err.value.decode()}")
        check_guards(self.name)


@functools.lru_cache(maxsize=None)
def kernel(filename: str, name: str, defines: tuple) -> Kernel:
    return Kernel(_library(filename, defines), name)


# -------------------------------------------------------------------------------------
# cuBLAS: column-major GEMMs on raw pointers


def _matrix(ptr: int, rows: int, cols: int, ld: int, dtype, what: str) -> np.ndarray:
    """The column-major (rows, cols) matrix at ptr with leading dimension ld, as a view."""
    if ld < max(1, rows):
        raise EmulationError(f"gemm: {what}: leading dimension {ld} < rows {rows} "
                             "(cuBLAS: CUBLAS_STATUS_INVALID_VALUE)")
    itemsize = np.dtype(dtype).itemsize
    n = (cols - 1) * ld + rows if rows and cols else 0
    flat = np.ctypeslib.as_array((ctypes.c_char * (n * itemsize)).from_address(ptr))
    flat = flat.view(dtype)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (itemsize, ld * itemsize))


def _gemm(dtype, handle, transa, transb, m, n, k, alpha_p, A, lda, B, ldb, beta_p, C, ldc):
    """C (m, n) = alpha op(A) op(B) + beta C, all column-major, as cublas<t>gemm."""
    ct = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    alpha = ct.from_address(alpha_p).value
    beta = ct.from_address(beta_p).value
    ra, ca = (m, k) if transa == CUBLAS_OP_N else (k, m)
    rb, cb = (k, n) if transb == CUBLAS_OP_N else (n, k)
    a = _matrix(A, ra, ca, lda, dtype, "A")
    b = _matrix(B, rb, cb, ldb, dtype, "B")
    c = _matrix(C, m, n, ldc, dtype, "C")
    a = a if transa == CUBLAS_OP_N else a.T
    b = b if transb == CUBLAS_OP_N else b.T
    prod = alpha * (a.astype(np.float64) @ b.astype(np.float64))
    if beta != 0:  # beta = 0: C is not read (cuBLAS), so NaN garbage there is harmless
        prod += beta * c
    c[...] = prod.astype(dtype)
    check_guards("gemm")


CUBLAS_OP_N, CUBLAS_OP_T = 0, 1


def _fake_cublas() -> types.ModuleType:
    m = types.ModuleType("cupy.cuda.cublas")
    m.CUBLAS_OP_N, m.CUBLAS_OP_T = CUBLAS_OP_N, CUBLAS_OP_T
    m.CUBLAS_POINTER_MODE_HOST = 0
    m.setStream = lambda handle, stream: None
    m.setPointerMode = lambda handle, mode: None
    m.sgemm = functools.partial(_gemm, np.float32)
    m.dgemm = functools.partial(_gemm, np.float64)
    return m


# -------------------------------------------------------------------------------------
# The fake cupy module the launchers import


class _Stream:
    ptr = 0

    def __init__(self, *args, **kwargs):
        raise EmulationError("CUDA streams and graph capture are not emulated")

    def is_capturing(self) -> bool:
        return False

    def synchronize(self) -> None:
        pass


class _Event:
    def record(self, stream=None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass


class _MemoryPool:
    """CuPy's pool as far as the bench reads it: the bytes of the live device arrays."""

    def free_all_blocks(self) -> None:
        pass

    def total_bytes(self) -> int:
        total = 0
        for ref, g in list(_GUARDED.values()):
            buf = ref()
            if buf is not None:
                total += (len(buf) - 2 * g) * buf.itemsize
        return total

    used_bytes = total_bytes


class _ArrayModule(types.ModuleType):
    """NumPy, with allocations made as guarded device arrays."""

    def __getattr__(self, name):
        return getattr(np, name)


def fake_cupy() -> types.ModuleType:
    """A `cupy` for the launchers, the engine and the bench: NumPy underneath, DeviceArray
    for cupy.ndarray, the cuBLAS above, CUDA events by the wall clock; no streams."""
    cp = _ArrayModule("cupy")
    cp.__path__ = []  # a package, so that "from cupy.cuda import cublas" resolves
    cp.__version__ = "emulated"
    cp.ndarray = DeviceArray
    for f in (empty, zeros, ones, asarray, empty_like, zeros_like, ascontiguousarray):
        setattr(cp, f.__name__, f)
    pool = _MemoryPool()
    cp.get_default_memory_pool = lambda: pool
    cuda = types.ModuleType("cupy.cuda")
    cuda.cublas = _fake_cublas()
    stream = object.__new__(_Stream)
    cuda.get_current_stream = lambda: stream
    cuda.Stream = _Stream
    cuda.device = types.SimpleNamespace(get_cublas_handle=lambda: 1)
    cuda.Event = _Event
    cuda.get_elapsed_time = lambda start, stop: 1e3 * (stop.t - start.t)
    cp.cuda = cuda
    return cp


def emulated_backend(name: str = "cuda-emu") -> Backend:
    """A backend whose xp is :func:`fake_cupy`; named "cupy", it takes the GPU paths."""
    return Backend(name, fake_cupy(), "CUDA kernels emulated on the CPU")


def load_cuda_ops() -> types.ModuleType:
    """A fresh rnn_gpu.cuda_ops imported against the fake cupy, its kernels emulated.

    The import leaves nothing behind: sys.modules, the package attribute
    ``rnn_gpu.cuda_ops`` and the kernel registry (which importing cuda_ops extends) are put
    back as they were, so a real CuPy, if any, is never shadowed.
    """
    import rnn_gpu
    from rnn_gpu import kernels

    cp = fake_cupy()
    fakes = {"cupy": cp, "cupy.cuda": cp.cuda, "cupy.cuda.cublas": cp.cuda.cublas}
    saved_modules = {k: sys.modules.get(k) for k in (*fakes, "rnn_gpu.cuda_ops")}
    saved_attr = rnn_gpu.__dict__.get("cuda_ops")
    saved_registry = {n: dict(s.cupy_versions) for n, s in kernels.REGISTRY.items()}
    try:
        sys.modules.pop("rnn_gpu.cuda_ops", None)
        sys.modules.update(fakes)
        ops = importlib.import_module("rnn_gpu.cuda_ops")
    finally:
        for k, v in saved_modules.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        if saved_attr is None:
            rnn_gpu.__dict__.pop("cuda_ops", None)
        else:
            rnn_gpu.cuda_ops = saved_attr
        for n, spec in kernels.REGISTRY.items():
            spec.cupy_versions.clear()
            spec.cupy_versions.update(saved_registry[n])
    ops._kernel = lambda filename, name: kernel(filename, name, ops._DEFINES[filename])
    return ops


@contextlib.contextmanager
def installed(ops: types.ModuleType):
    """While open, ``rnn_gpu.cuda_ops`` is `ops`: an engine made then (an rnn_gpu.RNN on
    :func:`emulated_backend`) takes its launchers. The engine keeps them afterwards."""
    import rnn_gpu

    saved = rnn_gpu.__dict__.get("cuda_ops")
    rnn_gpu.cuda_ops = ops
    try:
        yield ops
    finally:
        if saved is None:
            rnn_gpu.__dict__.pop("cuda_ops", None)
        else:
            rnn_gpu.cuda_ops = saved


@contextlib.contextmanager
def as_cupy(cp: types.ModuleType):
    """While open, ``import cupy`` gives `cp`. Modules of rnn_gpu first imported meanwhile
    (rnn_gpu.cuda_graph binds cupy at import) are forgotten on exit, so that a later
    import binds the real CuPy."""
    import rnn_gpu

    before = set(sys.modules)
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = cp
    try:
        yield cp
    finally:
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved
        for name in set(sys.modules) - before:
            if name.startswith("rnn_gpu."):
                del sys.modules[name]
                rnn_gpu.__dict__.pop(name.split(".", 1)[1], None)
