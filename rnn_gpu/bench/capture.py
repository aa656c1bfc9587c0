"""The capture probe of ``bench/gpu_check.sh``: the training step of a small model
captured as a CUDA Graph, replayed, and compared with the eager step."""
from __future__ import annotations

import numpy as np

from ..backend import Backend, to_numpy
from ..gradcheck import rel_err
from ..model import RNN


def capture_probe(backend: Backend, T: int = 16, B: int = 8, H: int = 64, V: int = 65,
                  dropout: float = 0.25) -> tuple[bool, str]:
    """(passed, one-line report) for a captured step on `backend` (CuPy, or the tests'
    emulated device) against the eager step of the same model, dropout included."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))
    drop = (rng.random((T, B, H)) >= dropout) / (1.0 - dropout)
    m = RNN(V, H, V, backend=backend, dtype="float32", seed=0)
    loss, grads, _ = m.loss_and_grads(x, y, dropout=drop)
    eager = {k: to_numpy(v).copy() for k, v in grads.items()}
    step = m.captured_step(T, B, dropout=True)
    xb, yb, db = backend.asarray(x), backend.asarray(y), backend.asarray(drop, m.dtype)
    try:
        for _ in range(3):  # the first call runs eagerly, then captures; each call replays
            rloss, rgrads, _ = step(m.params, xb, yb, None, None, db)
    except Exception as e:  # noqa: BLE001 - the report says what went wrong
        return False, (f"capture probe at T,B,H,V = {T},{B},{H},{V}: FAIL, the capture "
                       f"failed ({type(e).__name__}: {e})")
    err = max([abs(rloss - loss) / abs(loss)] + [rel_err(rgrads[k], eager[k]) for k in eager])
    ok = bool(err <= 1e-5 and step.capture_allocations == 0 and step.replays == 3)
    return ok, (f"capture probe at T,B,H,V = {T},{B},{H},{V} with dropout: "
                f"{'pass' if ok else 'FAIL'} (replayed vs eager: error {err:.2g}, "
                f"allocations during capture {step.capture_allocations})")
