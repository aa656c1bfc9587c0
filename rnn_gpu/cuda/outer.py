"""The per-shape choice between the two outer-product versions (tiled kernel, cuBLAS).

Host-side only: the timing itself is handed in, so the rule is testable without a GPU.
"""
from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("rnn_gpu")

OUTER_TILE = 64  # the tiled kernel's tile edge (also a #define of rnn_outer.cu)
TILED_MAX_M = 65535 * OUTER_TILE  # the tiled grid's y dimension covers M in tiles


def tiled_fits(M: int) -> bool:
    """Whether the tiled kernel's grid can cover M columns of `a` (gridDim.y <= 65535)."""
    return M <= TILED_MAX_M


class OuterChoice:
    """Which version each shape uses: key (N, M, K, dtype char, tf32) -> version name."""

    VERSIONS = ("cublas", "tiled")

    def __init__(self):
        self._chosen: dict[tuple, str] = {}

    def get(self, key: tuple) -> str | None:
        return self._chosen.get(key)

    def choose(self, key: tuple, M: int, capturing: bool,
               time_version: Callable[[str], float]) -> str:
        """The version for an untimed shape `key`: cuBLAS where the tiled grid cannot
        cover M (chosen for good) or during a graph capture (no timing there; left
        untimed), else the faster of ``time_version(name)`` (ms), cached."""
        if not tiled_fits(M):
            self._chosen[key] = "cublas"
            return "cublas"
        if capturing:
            return "cublas"
        t = {v: time_version(v) for v in self.VERSIONS}
        name = min(t, key=t.get)
        self._chosen[key] = name
        log.debug("rnn_gpu: outer_accum %s: %s -> %s", key,
                  ", ".join(f"{v} {ms:.3f} ms" for v, ms in t.items()), name)
        return name
