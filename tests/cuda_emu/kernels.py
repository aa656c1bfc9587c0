"""Kernels for the emulator: each ``kernels/*.cu`` compiled by ``g++`` exactly as the
launchers hand it to ``cupy.RawModule`` (the same prepended ``#define``s, through
:func:`rnn_gpu.cuda.compile.module_source`), with ``cuda_emu.h`` included first, and
launched through ctypes. :class:`Loader` is the emulator's kernel loader, the stand-in of
:class:`rnn_gpu.cuda.compile.RawModuleLoader`."""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from rnn_gpu.cuda.compile import kernel_dir, module_source

from ..helpers import defined_kernels
from . import streams
from .errors import EmulationError
from .memory import DeviceArray, check_guards

HEADER = Path(__file__).with_name("cuda_emu.h")
_CODE = {np.dtype(np.float32): "f", np.dtype(np.float64): "d", np.dtype(np.int32): "i",
         np.dtype(np.int64): "q", np.dtype(np.uint32): "I", np.dtype(np.uint64): "Q"}
_CTYPE = {"f": ctypes.c_float, "d": ctypes.c_double, "i": ctypes.c_int32,
          "q": ctypes.c_int64, "I": ctypes.c_uint32, "Q": ctypes.c_uint64}


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


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
    cmd = [compiler() or "g++", "-E", "-P", "-x", "c++", f"-I{kernel_dir()}", "-"]
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
    headers = "".join(p.read_text() for p in sorted(kernel_dir().glob("*.cuh")))  # included
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
               "-Wno-unused-function", "-Wno-unknown-pragmas", f"-I{kernel_dir()}",
               str(cpp), "-o", str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise EmulationError(f"{label} does not compile for the emulator:\n{r.stderr}")
        os.replace(tmp, lib)  # atomic: a concurrent run never loads half a file
    return Library(ctypes.CDLL(str(lib)), launch_bounds(src))


@functools.lru_cache(maxsize=None)
def _library(filename: str, defines: tuple) -> Library:
    """kernels/<filename> as the launchers compile it: their #defines prepended."""
    return build(module_source(filename, defines), filename)


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
        keep = (vals, ptrs, g, b)  # the argument values are fixed at launch, as on a GPU

        def launch():
            err = ctypes.create_string_buffer(512)
            if self._launch(keep[2], keep[3], keep[1], Kernel.order, err, len(err)):
                raise EmulationError(f"{self.name}: {err.value.decode()}")
            check_guards(self.name)

        streams.run(self.name, launch)


@functools.lru_cache(maxsize=None)
def kernel(filename: str, name: str, defines: tuple) -> Kernel:
    return Kernel(_library(filename, defines), name)


class Loader:
    """The emulator's kernel loader: ``loader(filename, defines, name)`` -> :class:`Kernel`.

    overrides: {filename: source text} to build instead of the real file (the emulator's
    own tests run deliberately broken kernels this way)."""

    def __init__(self, overrides: dict[str, str] | None = None):
        self.overrides = dict(overrides or {})

    def __call__(self, filename: str, defines: tuple, name: str) -> Kernel:
        if filename in self.overrides:
            return Kernel(_built(self.overrides[filename], f"broken_{filename}"), name)
        return kernel(filename, name, defines)


@functools.lru_cache(maxsize=None)
def _built(src: str, label: str) -> Library:
    return build(src, label)

