"""Records: the run's context (device, versions, command line, date), the rows it writes,
the tables it shows, and reading two result files back to compare them.

Every row is one JSON object with at least name, device, backend, dtype, shape,
median_ms, min_ms, max_ms, peer, peer_median_ms, speedup, versions, command and date.
"""
from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backend import Backend, describe
from .timing import blas_threads


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



def write_rows(rows: list[dict], path: str) -> None:
    """One JSON object per line."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=False) + "\n")


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

