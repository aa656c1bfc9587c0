"""Every CuPy name the CUDA code uses exists in the installed CuPy, with the keyword
arguments we pass where its signature can be read. The emulator stands in for CuPy in CI,
so this keeps the stand-in from accepting a name or a keyword that real CuPy lacks.

The AST of rnn_gpu/cuda/*.py is walked for attribute chains on the array module (``cp``,
``cupy``, ``xp``, ``self.xp``, ``self.cp``, ``self.engine.xp`` and local aliases of
those), and for methods called on the capture stream and the captured graph."""
from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest

import rnn_gpu

CUDA_DIR = Path(rnn_gpu.__file__).parent / "cuda"
ROOTS = {"cp", "cupy", "xp", "self.xp", "self.cp", "self.engine.xp"}
# objects of CuPy's classes, by the expression that holds them in our code
OBJECTS = {"self.stream": "cuda.Stream", "caller": "cuda.Stream", "stream": "cuda.Stream",
           "self.graph": "cuda.graph.Graph", "graph": "cuda.graph.Graph"}


def _cupy():
    try:
        import cupy  # noqa: PLC0415
    except Exception as e:  # pragma: no cover - depends on the machine
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CuPy does not import, and CI=true: CI installs it ({e})")
        pytest.skip(f"CuPy does not import: {e}")
    return cupy


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _uses():
    """(file, line, chain relative to the cupy module, keywords) for every use."""
    out = []
    for path in sorted(CUDA_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.Module)):
                continue
            aliases = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                        and isinstance(node.targets[0], ast.Name):
                    d = _dotted(node.value)
                    if d and any(d == r or d.startswith(r + ".") for r in ROOTS):
                        aliases[node.targets[0].id] = d
            calls = {id(n.func): n for n in ast.walk(fn) if isinstance(n, ast.Call)}
            for node in ast.walk(fn):
                if not isinstance(node, ast.Attribute):
                    continue
                d = _dotted(node)
                if d is None:
                    continue
                head = d.split(".")[0]
                if head in aliases:
                    d = aliases[head] + d[len(head):]
                kws = [k.arg for k in calls[id(node)].keywords if k.arg] if id(node) in calls else []
                for root in sorted(ROOTS, key=len, reverse=True):
                    if d.startswith(root + "."):
                        out.append((path.name, node.lineno, d[len(root) + 1:], kws))
                        break
                else:
                    for obj, cls in OBJECTS.items():
                        if d.startswith(obj + ".") and d.count(".") == obj.count(".") + 1:
                            out.append((path.name, node.lineno, f"{cls}.{d.split('.')[-1]}", kws))
    return out


def _resolve(cupy, chain: str):
    obj = cupy
    for part in chain.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_cupy_name_we_use_exists_with_our_keywords():
    cupy = _cupy()
    uses = _uses()
    chains = {c for _, _, c, _ in uses}
    for must in ("cuda.Stream.begin_capture", "cuda.Stream.end_capture", "RawModule",
                 "cuda.get_current_stream", "cuda.device.get_cublas_handle",
                 "cuda.graph.Graph.launch", "cuda.using_allocator"):
        assert must in chains, f"the walk no longer sees {must}: it is broken"
    missing, bad_kw = [], []
    for fname, line, chain, kws in uses:
        if chain.split(".")[-1].startswith("__"):
            continue
        try:
            obj = _resolve(cupy, chain)
        except AttributeError:
            missing.append(f"{fname}:{line}: cupy.{chain}")
            continue
        if kws and callable(obj):
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):  # a Cython function without a signature
                continue
            if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                continue
            bad_kw += [f"{fname}:{line}: cupy.{chain}({k}=)" for k in kws if k not in params]
    assert not missing, "names real CuPy does not have:\n" + "\n".join(missing)
    assert not bad_kw, "keywords real CuPy does not take:\n" + "\n".join(bad_kw)


def test_the_walk_sees_a_name_cupy_lacks(tmp_path, monkeypatch):
    """The check can fail: a use of a name CuPy does not have is reported."""
    cupy = _cupy()
    src = CUDA_DIR / "graph.py"
    fake = tmp_path / "cuda"
    fake.mkdir()
    (fake / "graph.py").write_text(src.read_text().replace("cp.cuda.Stream(", "cp.cuda.Strem("))
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "CUDA_DIR", fake)
    chains = [c for _, _, c, _ in _uses()]
    assert "cuda.Strem" in chains
    with pytest.raises(AttributeError):
        _resolve(cupy, "cuda.Strem")
