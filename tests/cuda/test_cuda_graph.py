"""The whole training step captured as a CUDA Graph and replayed: equal, bit for bit, to
the same step run eagerly, for every configuration of the engine tests, dropout included;
no allocation during capture; in-place parameter updates seen by every replay; a new
parameter array recaptures. On a GPU (marker gpu) and on the CPU emulator, whose capture
records the kernels, the GEMMs through cuBLAS's C API and the in-place array operations,
and refuses what a real capture refuses (tests/cuda_emu/test_capture.py)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from rnn_gpu import reference, to_numpy
from rnn_gpu.states import parts as state_parts

from ..helpers import H, I, O, cuda_device, cuda_model, device_params, make_problem, randomize

SIZES = (I, H, O)  # as in the engine tests: not multiples of any block or tile
T, B = 6, 3
CONFIGS = list(itertools.product(reference.ACTIVATIONS, reference.OUTPUTS, (None, 0, 1, 2, T),
                                 (False, True), (False, True), (False, True)))


@pytest.fixture(scope="module", params=device_params("emulated"))
def device(request):
    with cuda_device(request.param) as dev:
        yield dev


def _snapshot(result):
    """(loss, grads, the last state's arrays: (h,) or an LSTM's (h, c)) on the host."""
    loss, grads, h = result
    return (loss, {k: to_numpy(v).copy() for k, v in grads.items()},
            tuple(to_numpy(a).copy() for a in state_parts(h)))


def _poison(m, step):
    """NaN into every buffer the step writes, so that a replay that did nothing shows."""
    for g in m._engine.grads.values():
        g.fill(np.nan)
    for S in step.ws.states + (getattr(step.ws, "cstates", None) or []):  # every layer's h (and an LSTM's c)
        S.fill(np.nan)
    step.ws.loss.fill(np.nan)


def _needs_gated_kernels(device):
    """Skip, saying why, while the CUDA kernel set has no gated cells (they come with the
    kernels' own change); the tests then run as they are."""
    if not hasattr(device.backend.ops, "lstm_forward"):
        pytest.skip(f"the CUDA kernel set ({type(device.backend.ops).__name__}) has no "
                    "lstm_forward yet: the gated cells' kernels are not in this tree")


def _batches(m, output, dense, masked, with_h0, drop):
    out = []
    for seed in (0, 1):
        x, y, h0, mask = make_problem(output, dense, masked, with_h0, T=T, B=B, seed=seed,
                                      sizes=SIZES)
        d = None
        if drop:
            rng = np.random.default_rng(10 + seed)
            d = (rng.random((T, B, SIZES[1])) > 0.3) / 0.7
        xb, yb, h0b, keep = m._prepare(x, y, h0, mask)
        out.append((xb, yb, h0b, keep, None if d is None else m.backend.asarray(d, m.dtype),
                     (x, y, h0, mask, d)))
    return out


def _assert_same(got, want, what):
    assert got[0] == want[0], f"{what}: loss {got[0]!r} != {want[0]!r}"
    assert len(got[2]) == len(want[2]), f"{what}: h_last is not of the same form"
    for name, a, b in zip(("h_last", "c_last"), got[2], want[2]):
        np.testing.assert_array_equal(a, b, err_msg=f"{what}: {name}")
    for k in want[1]:
        np.testing.assert_array_equal(got[1][k], want[1][k], err_msg=f"{what}: d{k}")


@pytest.mark.parametrize("i,config", list(enumerate(CONFIGS)), ids=lambda v: str(v))
def test_replay_equals_eager(device, i, config, monkeypatch):
    from rnn_gpu.cuda.graph import GraphedStep

    act, out, trunc, dense, masked, with_h0 = config
    monkeypatch.setenv("RNN_GPU_RECUR", ("fused", "gemm")[(i // 2) % 2])  # both recurrences
    dtype = ("float64", "float32")[i % 2]
    drop = i % 3 == 0
    m = randomize(cuda_model(device, *SIZES, dtype=dtype, hidden_activation=act, output=out),
                  scale=0.4)
    step = GraphedStep(m._engine, T, B, dense, trunc, masked, dropout=drop)
    batches = _batches(m, out, dense, masked, with_h0, drop)
    eager = []  # the public eager call: the very step the graph captures
    for b in batches:
        x, y, h0, mask, d = b[5]
        eager.append(_snapshot(m.loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask,
                                                dropout=d)))
    for b, want in zip(batches, eager):  # batch 0 captures, batch 1 replays the same graph
        _poison(m, step)
        _assert_same(_snapshot(step(m.params, *b[:5])), want, "replay")
    assert step.replays == 2 and step.capture_allocations == 0


def test_eager_step_on_the_capture_stream_equals_loss_and_grads(device):
    from rnn_gpu.cuda.graph import GraphedStep

    m = randomize(cuda_model(device, *SIZES, dtype="float32"), scale=0.4)
    step = GraphedStep(m._engine, T, B, True, 1, True, dropout=True)
    xb, yb, h0b, keep, db, (x, y, h0, mask, d) = _batches(m, "softmax", True, True, True,
                                                          True)[1]
    want = _snapshot(m.loss_and_grads(x, y, h0=h0, truncate=1, mask=mask, dropout=d))
    _assert_same(_snapshot(step.eager(m.params, xb, yb, h0b, keep, db)), want, "eager")
    assert step.graph is None


def test_replay_sees_in_place_parameter_updates_and_recaptures_new_arrays(device):
    from rnn_gpu.cuda.graph import GraphedStep

    m = randomize(cuda_model(device, *SIZES, dtype="float64"), scale=0.4)
    step = GraphedStep(m._engine, T, B, False, None, False)
    xb, yb, h0b, keep, _, _ = _batches(m, "softmax", False, False, True, False)[0]
    first = _snapshot(step(m.params, xb, yb, h0b))
    m.params["W"] *= 0.5  # in place, as the optimizers update
    m.params["U"] += 0.01
    graph = step.graph
    eager = _snapshot(step.eager(m.params, xb, yb, h0b))
    _poison(m, step)
    got = _snapshot(step(m.params, xb, yb, h0b))
    assert step.graph is graph and got[0] != first[0]
    _assert_same(got, eager, "after an in-place update")
    m.params["W"] = m.params["W"].copy()  # a new array: the step recaptures
    _assert_same(_snapshot(step(m.params, xb, yb, h0b)), eager, "recaptured")
    assert step.graph is not graph


def test_inputs_of_the_wrong_kind_are_refused(device):
    from rnn_gpu.cuda.graph import GraphedStep

    m = cuda_model(device, *SIZES, dtype="float64")
    step = GraphedStep(m._engine, T, B, False, None, False)
    xb, yb, h0b, keep, _, _ = _batches(m, "softmax", False, True, True, False)[0]
    with pytest.raises(ValueError, match="keep: expected None for a step captured with "
                                         "masked=False"):
        step(m.params, xb, yb, h0b, keep)
    with pytest.raises(ValueError, match="drop: expected None for a step captured with "
                                         "dropout=False"):
        step(m.params, xb, yb, h0b, None, m.backend.xp.ones((T, B, SIZES[1])))
    with pytest.raises(ValueError, match=r"x: expected shape \(6, 3\)"):
        step(m.params, xb[:3], yb, h0b)


def test_capture_through_cupys_cublas_binding_fails_with_the_reason():
    """CuPy's own binding refuses cuBLAS during capture: the step says why, at once."""
    from .. import cuda_emu

    with cuda_device("emulated"):
        from rnn_gpu import RNN
        from rnn_gpu.cuda.graph import GraphedStep

        be = cuda_emu.emulated_backend(capi=False)
        m = RNN(*SIZES, backend=be, dtype="float64")
        step = GraphedStep(m._engine, T, B, False, None, False)
        xb, yb, h0b, _, _, _ = _batches(m, "softmax", False, False, True, False)[0]
        with pytest.raises(RuntimeError, match="refuses every call during stream capture"):
            step(m.params, xb, yb, h0b)
        assert step.graph is None and not be.xp.cuda.get_current_stream().is_capturing()


@pytest.mark.parametrize("layers,bi,out", [(2, False, "softmax"), (2, True, "softmax"),
                                           (3, False, "sigmoid")])
def test_stacks_capture_and_replay(device, layers, bi, out):
    """Stacked and bidirectional models, dropout between layers, captured as one step."""
    m = randomize(cuda_model(device, *SIZES, dtype="float64", num_layers=layers,
                             bidirectional=bi, output=out), scale=0.4)
    step = m.captured_step(T, B, masked=True, dropout=True)
    rng = np.random.default_rng(4)
    for seed in (0, 1):
        x, y, _, mask = make_problem(out, False, True, False, T=T, B=B, seed=seed, sizes=SIZES)
        h0 = rng.uniform(-0.5, 0.5, m.state_shape(B))
        d = (rng.random(m.dropout_shape(T, B)) > 0.3) / 0.7
        want = _snapshot(m.loss_and_grads(x, y, h0=h0, mask=mask, dropout=d))
        xb, yb, h0b, keep = m._prepare(x, y, h0, mask)
        _poison(m, step)
        got = _snapshot(step(m.params, xb, yb, h0b, keep, m.backend.asarray(d, m.dtype)))
        _assert_same(got, want, f"{layers} layers, bidirectional={bi}")
    assert step.capture_allocations == 0 and step.replays == 2


def test_an_lstm_step_loads_its_state_pair_into_two_static_buffers(device):
    """Runs without the gated kernels: the static (h0, c0) buffers and their checks."""
    m = cuda_model(device, *SIZES, cell="lstm", dtype="float64")
    step = m.captured_step(T, B)
    shape = m.state_shape(B)
    assert isinstance(step.h0, tuple) and len(step.h0) == 2 and step.h0[0] is not step.h0[1]
    assert all(tuple(b.shape) == shape for b in step.h0)
    rng = np.random.default_rng(0)
    h, c = rng.uniform(-1, 1, shape), rng.uniform(-1, 1, shape)
    x = m.backend.asarray(rng.integers(0, I, (T, B)).astype(np.int32))
    y = m.backend.asarray(rng.integers(0, O, (T, B)).astype(np.int32))
    step._load(x, y, (m.backend.asarray(h), m.backend.asarray(c)), None, None)
    np.testing.assert_array_equal(to_numpy(step.h0[0]), h)
    np.testing.assert_array_equal(to_numpy(step.h0[1]), c)
    step._load(x, y, None, None, None)  # no state: zeros in both
    assert not to_numpy(step.h0[0]).any() and not to_numpy(step.h0[1]).any()
    with pytest.raises(ValueError, match=r"h0: expected a pair \(h0, c0\) of arrays of shape "
                                         r"\(3, 4\) \(an LSTM's state\), got an array"):
        step._load(x, y, m.backend.asarray(h), None, None)
    with pytest.raises(ValueError, match=r"c0: expected shape \(3, 4\), got shape \(2, 4\)"):
        step._load(x, y, (m.backend.asarray(h), m.backend.asarray(c[:2])), None, None)
    elman = cuda_model(device, *SIZES, dtype="float64").captured_step(T, B)
    with pytest.raises(ValueError, match=r"h0: expected one array of shape \(3, 4\), got a "
                                         r"tuple of 2"):
        elman._load(x, y, (m.backend.asarray(h), m.backend.asarray(c)), None, None)


@pytest.mark.parametrize("cell,layers,trunc", [("lstm", 1, None), ("lstm", 2, 2),
                                               ("gru", 1, 1), ("gru", 2, None)])
def test_gated_cells_capture_and_replay(device, cell, layers, trunc):
    """GRU and LSTM steps (an LSTM's h0 a pair of static buffers), captured and replayed:
    the bits of the eager step."""
    _needs_gated_kernels(device)
    m = randomize(cuda_model(device, *SIZES, dtype="float64", cell=cell, num_layers=layers),
                  scale=0.4)
    step = m.captured_step(T, B, truncate=trunc, masked=True, dropout=True)
    rng = np.random.default_rng(5)
    for seed in (0, 1):
        x, y, _, mask = make_problem("softmax", False, True, False, T=T, B=B, seed=seed,
                                     sizes=SIZES)
        shape = m.state_shape(B)
        h0 = rng.uniform(-0.5, 0.5, shape)
        if cell == "lstm":
            h0 = (h0, rng.uniform(-0.5, 0.5, shape))
        d = (rng.random(m.dropout_shape(T, B)) > 0.3) / 0.7
        want = _snapshot(m.loss_and_grads(x, y, h0=h0, truncate=trunc, mask=mask, dropout=d))
        assert len(want[2]) == (2 if cell == "lstm" else 1)
        xb, yb, h0b, keep = m._prepare(x, y, h0, mask)
        _poison(m, step)
        got = _snapshot(step(m.params, xb, yb, h0b, keep, m.backend.asarray(d, m.dtype)))
        _assert_same(got, want, f"{cell}, {layers} layers, truncate {trunc}")
    assert step.capture_allocations == 0 and step.replays == 2
