"""Shared by the tests: random problems for the engine, the kernel names a CUDA source
defines, and the devices the CUDA tests run on (a GPU, or the CPU emulator)."""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import types

import numpy as np

from rnn_gpu.gradcheck import rel_err  # noqa: F401 - one definition, shared

I, H, O = 5, 4, 3


def make_problem(output: str, dense: bool, masked: bool, with_h0: bool, T: int = 6, B: int = 3,
                 seed: int = 0, sizes=(I, H, O)):
    """x, y, h0, mask for a model of `sizes` (I, H, O); masked problems pad the ends."""
    i, h, o = sizes
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, B, i)) if dense else rng.integers(0, i, size=(T, B))
    if output == "softmax":
        y = rng.integers(0, o, size=(T, B))
    elif output == "sigmoid":
        y = rng.uniform(0, 1, size=(T, B, o))
    else:
        y = rng.normal(size=(T, B, o))
    h0 = rng.uniform(-0.5, 0.5, size=(B, h)) if with_h0 else None
    mask = None
    if masked:  # variable lengths, one hole in the middle too
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T
        mask = (np.arange(T)[:, None] < lengths[None, :]).astype(np.float64)
        mask[T // 2, 0] = 0
    return x, y, h0, mask


def central_differences(f, p: dict, eps: float = 1e-6) -> dict:
    """d f(p) / d p[name] for every entry of every array of `p`, by central differences
    (each entry nudged in place and restored)."""
    num = {}
    for name, v in p.items():
        n = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            old = v[i]
            v[i] = old + eps
            lp = f(p)
            v[i] = old - eps
            lm = f(p)
            v[i] = old
            n[i] = (lp - lm) / (2 * eps)
        num[name] = n
    return num


def randomize(model, seed: int = 1, scale: float = 0.6):
    """Give the model non-zero biases and larger weights (so every term is exercised)."""
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        v[...] = model.backend.asarray(rng.uniform(-scale, scale, size=v.shape), dtype=model.dtype)
    return model


# -------------------------------------------------------------------------------------
# Kernel names, read from the source: extern "C" definitions, also through a macro whose
# body pastes a suffix (`rnn_softmax_xent_##SUFFIX`) and its invocations.

_DIRECT = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?'
                     r'(\w+)\s*\(')
_MACRO = re.compile(r"#define\s+(\w+)\((\w+)[^)]*\)((?:[^\n]*\\\n)*[^\n]*)")


def defined_kernels(src: str) -> set[str]:
    flat = src.replace("\\\n", " ")  # join macro continuation lines
    names = {n for n in _DIRECT.findall(flat) if not n.startswith("__")}
    for macro, param, body in _MACRO.findall(src):
        if 'extern "C"' not in body:
            continue
        prefixes = re.findall(rf"(\w+)_##{param}\b", body)
        for suffix in re.findall(rf"^{macro}\((\w+)", src, flags=re.M):
            names.update(f"{p}_{suffix}" for p in prefixes)
    return names


def header_kernels(src: str) -> set[str]:
    """Names in the opening comment block; {a,b} alternatives are expanded."""
    lines = []
    for line in src.splitlines():
        if not line.startswith("//"):
            break
        lines.append(line)
    names = set()
    for token in re.findall(r"\brnn_[\w{},]+(?![\w.{},])", "\n".join(lines)):
        parts = re.split(r"\{([^}]*)\}", token)  # literal, alternatives, literal, ...
        choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
        names.update("".join(c) for c in itertools.product(*choices))
    return names


# -------------------------------------------------------------------------------------
# Where the CUDA tests run: a real GPU through CuPy, or the CPU emulator (tests/cuda_emu/)

EMULATED_ORDERS = {"emulated": 2, "emulated-ascending": 0, "emulated-descending": 1}


def device_params(*emulated: str) -> list:
    """Fixture params: "cuda" (marked gpu: skipped, with the reason, without a GPU) and the
    emulator in the thread orders named (see cuda_emu.h)."""
    import pytest  # noqa: PLC0415

    return [pytest.param("cuda", marks=pytest.mark.gpu), *emulated]


@contextlib.contextmanager
def cuda_device(kind: str):
    """A namespace with cp (the array module the tests allocate with), ops (the backend's
    CUDA kernel set, a rnn_gpu.cuda.launchers.CudaOps) and backend on `kind`; make models
    with :func:`cuda_model`."""
    import pytest  # noqa: PLC0415

    import rnn_gpu  # noqa: PLC0415

    if kind == "cuda":
        be = rnn_gpu.get_backend("cupy")
        yield types.SimpleNamespace(kind=kind, cp=be.xp, ops=be.ops, backend=be)
        return
    from . import cuda_emu  # noqa: PLC0415

    if cuda_emu.compiler() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no C++ compiler (g++), and CI=true: CI must run the CUDA kernels "
                        "on the emulator")
        pytest.skip("no C++ compiler (g++) to build the CUDA kernels for the emulator")
    saved = cuda_emu.Kernel.order
    cuda_emu.Kernel.order = EMULATED_ORDERS[kind]
    try:
        be = cuda_emu.emulated_backend()
        yield types.SimpleNamespace(kind=kind, cp=be.xp, ops=be.ops, backend=be)
    finally:
        cuda_emu.Kernel.order = saved


def cuda_model(dev, *args, **kwargs):
    """rnn_gpu.RNN(*args, **kwargs) on the device `dev` from :func:`cuda_device`."""
    import rnn_gpu  # noqa: PLC0415

    return rnn_gpu.RNN(*args, backend=dev.backend, **kwargs)
