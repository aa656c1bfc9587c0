"""Memory: peak memory of one training step, and the bytes the engine keeps between calls.

On a GPU, the growth of CuPy's memory pool or of PyTorch's allocator over one step; on
the CPU, the growth of the peak resident set over the first step, in a fresh process
(``_memory_child`` of :mod:`rnn_gpu.bench`), so that nothing run before it counts.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable


def workspace_bytes(model) -> int:
    """Bytes the engine keeps between calls: workspaces and gradient buffers."""
    return model._engine.buffer_bytes()


# The child imports rnn_gpu from where this process did: it is given this sys.path.
_MEMORY_CHILD = """
import json, sys
sys.path[:0] = json.loads(sys.argv[2])
from rnn_gpu.bench import _memory_child
print(json.dumps(_memory_child(json.loads(sys.argv[1]))))
"""


def _rss_kib() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in KiB, from /proc/self/status."""
    s = Path("/proc/self/status").read_text()
    return (int(re.search(r"VmRSS:\s+(\d+)", s).group(1)),
            int(re.search(r"VmHWM:\s+(\d+)", s).group(1)))


def rss_growth(fn: Callable[[], Any]) -> int:
    """Bytes the peak resident set of this process grows by while fn() runs (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to now
    except OSError:
        pass
    rss0, _ = _rss_kib()
    fn()
    _, hwm = _rss_kib()
    return max(0, hwm - rss0) * 1024


def measure_memory(impl: Any, shape: tuple, dtype: str, threads: int) -> dict:
    """Peak memory of one step: pool/allocator figures on a GPU, RSS growth on the CPU."""
    if impl.backend == "cupy":
        m = impl.extra.get("model")
        if m is None:
            return {}
        cp = m.backend.xp
        pool = cp.get_default_memory_pool()
        m._engine.release_workspaces()
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
    path = [p for p in sys.path if isinstance(p, str)]
    try:
        r = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(spec),
                            json.dumps(path)],
                           capture_output=True, text=True, timeout=600, check=True)
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except Exception as e:
        return {"peak_mem_error": f"{type(e).__name__}: {e}"[:300]}
    out["peak_mem_method"] = "peak RSS growth over the first step, in a fresh process"
    return out
