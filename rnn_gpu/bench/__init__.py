"""Benchmark the kernels, the training step and step-time sweeps, validating before timing.

Three levels, each optional:

* **kernels**: every entry of :data:`rnn_gpu.ops.REGISTRY` and every version of it.
  Each version is first run on random inputs and compared with its NumPy twin run in
  float64 on host copies of the same inputs; a version that disagrees is marked FAILED,
  is not timed, and makes the command exit with status 1. Then it is warmed up and timed
  (the GPU times of ``cupyx.profiler.benchmark`` on the GPU, a wall clock on the CPU), with
  GB/s, GFLOP/s and the percentage of this device's copy bandwidth and matmul rate, both
  measured here first.
* **steps**: the training step (``RNN.loss_and_grads``, forward + backward) on every
  available backend, beside the peers that are installed (seed 001's per-sequence NumPy
  loop at small shapes, PyTorch on the CPU and on CUDA with cuDNN, CUDA-Graph replay),
  all checked against the float64 engine first and timed side by side, repetitions
  interleaved (PyTorch on CUDA by ``torch.utils.benchmark.Timer``); peak memory of one step.
* **sweeps**: step time against T, B and H around the first shape (``--plot`` draws them).

Output: rich tables on the terminal and, with ``--out FILE.jsonl``, one JSON object per
line, each carrying the device, library versions, command line and date.
``--compare A.jsonl B.jsonl`` prints the ratios B/A of two such files.

Modules, one per concern: :mod:`.timing` (statistics, timers, interleaving),
:mod:`.records` (the rows, the run's context, reading and comparing result files),
:mod:`.kernel_level`, :mod:`.step_level`, :mod:`.peers` (the seed loop and PyTorch),
:mod:`.memory`, :mod:`.plot` and :mod:`.cli` (options, ``run``, ``main``).
"""
from __future__ import annotations

from ..backend import cupy_unavailable_reason
from .cli import _backends, add_arguments, main, parse_peers, parse_shapes, run
from .kernel_level import KERNEL_TOL, kernel_versions, matmul_sizes, validate_kernel
from .peers import SeedLoop, TorchRNN, torch_unavailable_reason
from .plot import plot_sweeps
from .records import compare, load_rows
from .step_level import (DEFAULT_SHAPES, PEERS, QUICK_SHAPES, STEP_TOL, _memory_child, _ours,
                         _torch, step_flops, sweep_points)
from .timing import Stats, interleaved

__all__ = ["add_arguments", "run", "main", "compare", "load_rows", "plot_sweeps",
           "parse_shapes", "parse_peers", "step_flops", "sweep_points", "kernel_versions",
           "validate_kernel", "matmul_sizes", "interleaved", "Stats", "SeedLoop", "TorchRNN",
           "torch_unavailable_reason", "cupy_unavailable_reason", "KERNEL_TOL", "STEP_TOL",
           "DEFAULT_SHAPES", "QUICK_SHAPES", "PEERS", "_memory_child", "_backends", "_ours",
           "_torch"]
