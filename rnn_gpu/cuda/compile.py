"""CUDA sources and their compilation: where ``kernels/*.cu`` are, the text and options
NVRTC gets, and :class:`RawModuleLoader`, the kernel loader of the CuPy backend.

In a source checkout the sources sit in <repo>/kernels; an installed wheel carries them
as ``rnn_gpu/cuda_kernels``. Nothing here imports CuPy: the loader is handed the array
module. A kernel loader is any callable ``loader(filename, defines, name)`` returning a
kernel called as CuPy's RawKernel is, ``kernel(grid, block, args)``; the tests' CPU
emulator provides another.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any


def kernel_dir() -> Path:
    """The directory holding the CUDA sources (``*.cu`` and ``rnn_common.cuh``)."""
    pkg = Path(__file__).resolve().parent.parent
    for cand in (pkg / "cuda_kernels", pkg.parent / "kernels"):
        if any(cand.glob("*.cu")):
            return cand
    raise FileNotFoundError(
        f"CUDA sources not found in {pkg / 'cuda_kernels'} or {pkg.parent / 'kernels'}; "
        "the installation is incomplete (reinstall rnn-gpu)"
    )


def kernel_source(filename: str) -> str:
    return _read_source(str(kernel_dir() / filename))


@functools.lru_cache(maxsize=None)
def _read_source(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def module_source(filename: str, defines: tuple[tuple[str, str], ...] = ()) -> str:
    """The code a RawModule compiles: the #defines, then `kernels/<filename>`.

    It opens with a comment naming a hash of the headers the file includes
    (``kernels/*.cuh``): CuPy's on-disk compile cache keys on the source text and the
    options only, so without it a release that changed only a header would keep running
    the kernels compiled from the old one."""
    return (f"// rnn_gpu headers {_headers_hash()}\n"
            + "".join(f"#define {k} {v}\n" for k, v in defines) + kernel_source(filename))


@functools.lru_cache(maxsize=None)
def _headers_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(kernel_dir().glob("*.cuh")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def nvrtc_options() -> tuple[str, ...]:
    """The NVRTC options the modules compile with (CuPy adds the architecture)."""
    return ("--std=c++14", f"-I{kernel_dir()}")


@functools.lru_cache(maxsize=None)
def raw_module(cp: Any, filename: str, defines: tuple[tuple[str, str], ...] = ()):
    """`kernels/<filename>` compiled once (per array module and set of #defines) as a
    ``cp.RawModule``."""
    return cp.RawModule(code=module_source(filename, defines), options=nvrtc_options())


class RawModuleLoader:
    """Kernels of ``kernels/*.cu`` through ``cp.RawModule`` (NVRTC), memoized."""

    def __init__(self, cp: Any):
        self.cp = cp
        self._functions: dict[tuple, Any] = {}

    def __call__(self, filename: str, defines: tuple[tuple[str, str], ...], name: str):
        key = (filename, defines, name)
        fn = self._functions.get(key)
        if fn is None:
            fn = self._functions[key] = raw_module(self.cp, filename, defines).get_function(name)
        return fn
