"""The CUDA sources without a GPU: each kernels/*.cu compiles on its own with nvcc for
sm_80 and sm_90, its header lists exactly the kernels it defines, the registry points
at files that exist, and, as the launchers configure them, no kernel spills registers.
In CI (CI=true) a missing nvcc is a failure; elsewhere a skip."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rnn_gpu import backend
from rnn_gpu.cuda.launchers import DEFINES
from rnn_gpu.ops import REGISTRY

from ..helpers import defined_kernels, header_kernels

KDIR = backend.kernel_dir()
SOURCES = sorted(KDIR.glob("*.cu"))
ARCHS = ("sm_80", "sm_90")


def _nvcc() -> str:
    exe = shutil.which("nvcc")
    if exe is None and Path("/usr/local/cuda/bin/nvcc").exists():
        exe = "/usr/local/cuda/bin/nvcc"
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("nvcc not found, and CI=true: CI must compile every kernels/*.cu")
        pytest.skip("nvcc not found: install the CUDA toolkit to compile kernels/*.cu")
    return exe


def _run_nvcc(*args: str) -> str:
    """nvcc with `-I kernels/` and `args`; asserts it succeeded, returns what it printed."""
    cmd = [_nvcc(), "-I", str(KDIR), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _compile(path: Path, arch: str, out: Path, *defines: str) -> str:
    _run_nvcc("-ptx", f"-arch={arch}", "--Werror", "all-warnings", *defines, str(path),
              "-o", str(out))
    return out.read_text()


def test_there_are_kernel_sources():
    assert {p.name for p in SOURCES} >= {"rnn_forward.cu", "rnn_backward.cu", "rnn_xent.cu",
                                         "rnn_outer.cu", "rnn_embed.cu"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_header_lists_exactly_the_kernels(path):
    src = path.read_text()
    assert src.startswith("//"), f"{path.name}: expected an opening header comment"
    defined = defined_kernels(src)
    assert defined, f"{path.name}: no extern \"C\" kernels found"
    for name in defined:
        assert name.startswith("rnn_") and name.rsplit("_", 1)[-1] in ("f32", "f64", "i32",
                                                                       "i64"), name
    listed = header_kernels(src)
    assert defined - listed == set(), f"{path.name}: kernels missing from the header"
    assert listed - defined == set(), f"{path.name}: header lists kernels that do not exist"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_tunables_have_defaults(path):
    """Every macro the launchers pass as a #define has an #ifndef default in the file."""
    src = path.read_text()
    for name in re.findall(r"#ifndef\s+(\w+)", src):
        assert re.search(rf"#define\s+{name}\s+\S", src), name


def test_registry_sources_exist_and_define_the_kernel():
    for spec in REGISTRY.values():
        if spec.source is None:
            continue
        path = KDIR / spec.source
        assert path.is_file(), f"{spec.name}: {spec.source} not found in {KDIR}"
        names = defined_kernels(path.read_text())
        assert any(n.startswith(f"rnn_{spec.name}_") for n in names), (spec.name, names)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_kernel_compiles(path, arch, tmp_path):
    ptx = _compile(path, arch, tmp_path / "out.ptx")
    for name in defined_kernels(path.read_text()):
        assert re.search(rf"\.entry\s+{name}\b", ptx), f"{name} missing from the PTX"


def test_kernels_compile_with_other_tunables(tmp_path):
    defines = ("-DELEM_BLOCK=128", "-DXENT_BLOCK=1024", "-DOUTER_TILE=32",
               "-DOUTER_THREADS=8", "-DOUTER_TN=8", "-DBIAS_COLS=16", "-DBIAS_ROWS=8")
    for path in SOURCES:
        _compile(path, "sm_90", tmp_path / f"{path.stem}.ptx", *defines)


# -------------------------------------------------------------------------------------
# The runtime path: NVRTC, as cupy.RawModule compiles the sources on a user's machine
# (the launchers' #defines prepended, the same options), with no GPU needed.


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415

        nvrtc.getVersion()
    except Exception as e:  # CuPy missing, or no NVRTC library to load
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"NVRTC unusable, and CI=true: CI must compile kernels/*.cu through it ({why})")
        pytest.skip(f"NVRTC unusable ({why}): pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12")
    return nvrtc


@pytest.mark.parametrize("arch", ("compute_80", "compute_90"))
def test_kernels_compile_with_nvrtc_as_raw_module_does(arch):
    nvrtc = _nvrtc()
    assert set(DEFINES) == {p.name for p in SOURCES}
    for name, defines in DEFINES.items():
        prog = nvrtc.createProgram(backend.module_source(name, defines), name, [], [])
        try:
            nvrtc.compileProgram(prog, [*backend.nvrtc_options(), f"--gpu-architecture={arch}"])
        except Exception as e:
            pytest.fail(f"{name} ({arch}): {e}\n{nvrtc.getProgramLog(prog)}")
        ptx = nvrtc.getPTX(prog)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == defined_kernels((KDIR / name).read_text()), name


# -------------------------------------------------------------------------------------
# What ptxas makes of the sources as the launchers configure them: no kernel spills
# registers to local memory (a spill turns the fused kernels' register traffic into
# memory traffic) and none needs a stack frame.

_USAGE = re.compile(r"Function properties for (\w+)\s*\n\s*(\d+) bytes stack frame, "
                    r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@pytest.mark.parametrize("arch", ARCHS)
def test_no_kernel_spills_registers(arch, tmp_path):
    seen = set()
    for name, defines in DEFINES.items():
        src = tmp_path / name
        src.write_text(backend.module_source(name, defines))
        printed = _run_nvcc("-cubin", f"-arch={arch}", "--resource-usage", str(src),
                            "-o", str(tmp_path / f"{name}.cubin"))
        usage = {k: (int(f), int(s), int(l)) for k, f, s, l in _USAGE.findall(printed)}
        assert set(usage) == defined_kernels(src.read_text()), (name, sorted(usage))
        for kern, (frame, stores, loads) in usage.items():
            assert (frame, stores, loads) == (0, 0, 0), (
                f"{kern} ({arch}): {frame} bytes stack frame, {stores} bytes spill stores, "
                f"{loads} bytes spill loads")
        seen |= set(usage)
    assert len(seen) >= 20


def test_module_source_names_the_headers_it_includes():
    """CuPy's compile cache keys on the source text: a changed header must change it."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(KDIR.glob("*.cuh")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    assert list(KDIR.glob("*.cuh")), "kernels/ has no shared header"
    for name, defines in DEFINES.items():
        first = backend.module_source(name, defines).splitlines()[0]
        assert first == f"// rnn_gpu headers {h.hexdigest()[:16]}", name
