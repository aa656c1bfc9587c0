"""Host-side decisions of the CUDA modules, checked without a GPU: which outer-product
version a shape gets, how TF32 mode leaves CuPy's own matmul setting, and which error a
failed CUDA Graph capture reports. CuPy must import (CI installs it); cuBLAS, the driver
and the device are replaced by stand-ins, so nothing here launches a kernel."""
from __future__ import annotations

import logging
import types

import pytest

cupy = pytest.importorskip("cupy")


@pytest.fixture
def cuda_ops(cuda_ops_host):
    return cuda_ops_host


# -------------------------------------------------------------------------------------
# Outer-product version choice


def _timer(times: dict, calls: list):
    def time_version(name):
        calls.append(name)
        return times[name]
    return time_version


def test_outer_choice_takes_the_faster_version_and_caches_it(cuda_ops):
    calls = []
    key = (640, 256, 256, "f", False)
    name = cuda_ops.choose_outer(key, 256, False, _timer({"cublas": 0.30, "tiled": 0.12}, calls))
    assert name == "tiled" and sorted(calls) == ["cublas", "tiled"]
    assert cuda_ops.outer_choice(640, 256, 256, "float32") == "tiled"


def test_outer_choice_beyond_the_tiled_grid_is_cublas_without_timing(cuda_ops):
    M = cuda_ops._TILED_MAX_M + 1  # one column more than 65535 tiles cover
    assert not cuda_ops.tiled_fits(M) and cuda_ops.tiled_fits(M - 1)
    calls = []
    key = (8, M, 4, "f", False)
    name = cuda_ops.choose_outer(key, M, False, _timer({"cublas": 9.0, "tiled": 1.0}, calls))
    assert name == "cublas" and calls == []  # the tiled kernel would raise on this shape
    assert cuda_ops.outer_choice(8, M, 4, "float32") == "cublas"


def test_outer_choice_under_capture_is_cublas_and_left_untimed(cuda_ops):
    calls = []
    name = cuda_ops.choose_outer((16, 32, 8, "d", False), 32, True,
                                 _timer({"cublas": 1.0, "tiled": 0.5}, calls))
    assert name == "cublas" and calls == []
    assert cuda_ops.outer_choice(16, 32, 8, "float64") is None  # timed at the next eager call


# -------------------------------------------------------------------------------------
# TF32 mode and CuPy's own compute type


@pytest.fixture
def fake_linalg(monkeypatch):
    """CuPy's matmul compute type and the device's compute capability, as stand-ins."""
    from cupy._core import _routines_linalg as rl

    state = {"type": rl.COMPUTE_TYPE_DEFAULT, "cc": "90"}
    monkeypatch.setattr(rl, "get_compute_type", lambda dtype: state["type"])
    monkeypatch.setattr(rl, "set_compute_type", lambda dtype, t: state.__setitem__("type", t))
    monkeypatch.setattr(cupy.cuda, "Device",
                        lambda *a: types.SimpleNamespace(compute_capability=state["cc"]))
    return rl, state


def test_tf32_off_restores_the_users_cupy_setting(cuda_ops, fake_linalg):
    rl, state = fake_linalg
    state["type"] = rl.COMPUTE_TYPE_TF32  # as CUPY_TF32=1 sets it
    cuda_ops.set_tf32(True)
    assert cuda_ops.tf32_enabled() and state["type"] == rl.COMPUTE_TYPE_TF32
    cuda_ops.set_tf32(False)
    assert not cuda_ops.tf32_enabled()
    assert state["type"] == rl.COMPUTE_TYPE_TF32  # cupy.matmul keeps what the user asked for


def test_tf32_round_trip_from_cupy_default(cuda_ops, fake_linalg):
    rl, state = fake_linalg
    cuda_ops.set_tf32(True)
    assert state["type"] == rl.COMPUTE_TYPE_TF32
    cuda_ops.set_tf32(False)
    assert state["type"] == rl.COMPUTE_TYPE_DEFAULT


def test_tf32_refused_below_compute_capability_80(cuda_ops, fake_linalg, caplog):
    rl, state = fake_linalg
    state["cc"] = "75"
    with caplog.at_level(logging.WARNING, logger="rnn_gpu"):
        cuda_ops.set_tf32(True)
    assert not cuda_ops.tf32_enabled()
    assert state["type"] == rl.COMPUTE_TYPE_DEFAULT
    assert "compute capability 8.0" in caplog.text


# -------------------------------------------------------------------------------------
# CUDA Graph capture


class _FakeStream:
    """Enough of cupy.cuda.Stream for GraphedStep._capture: a context manager whose
    capture can be made to fail when it ends."""

    def __init__(self, end_error: Exception | None = None):
        self.end_error = end_error
        self.capturing = False
        self.events: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        self.events.append("sync")

    def begin_capture(self):
        self.capturing = True
        self.events.append("begin")

    def end_capture(self):
        self.capturing = False
        self.events.append("end")
        if self.end_error is not None:
            raise self.end_error
        return "graph"


def _graphed_step(stream, step):
    from rnn_gpu.cuda_graph import GraphedStep

    g = object.__new__(GraphedStep)  # no device: only the capture logic is under test
    g.stream, g.graph, g._step = stream, None, step
    return g


def test_failed_capture_reports_the_steps_own_error():
    calls = []

    def step(params):
        calls.append(len(calls))
        if len(calls) == 2:  # the captured run, after the eager warm-up
            raise ValueError("softmax_xent: y: expected int array of shape (4, 2)")

    stream = _FakeStream(end_error=RuntimeError("cudaErrorStreamCaptureInvalidated"))
    g = _graphed_step(stream, step)
    with pytest.raises(ValueError, match="softmax_xent: y"):
        g._capture({})
    assert stream.events == ["sync", "begin", "end"] and not stream.capturing
    assert g.graph is None


def test_capture_keeps_the_graph():
    stream = _FakeStream()
    g = _graphed_step(stream, lambda params: None)
    g._capture({})
    assert g.graph == "graph" and g.capture_allocations == 0 and g._param_ptrs == ()
    assert stream.events == ["sync", "begin", "end"]
