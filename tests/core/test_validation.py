"""Every bad input is a ValueError (TypeError for mixed backends) naming the argument."""
from __future__ import annotations

import numpy as np
import pytest

import rnn_gpu

T, B, I, H, O = 4, 2, 6, 5, 3


@pytest.fixture
def m():
    return rnn_gpu.RNN(I, H, O, backend="numpy")


def ids(shape=(T, B), hi=I):
    return np.random.default_rng(0).integers(0, hi, size=shape)


@pytest.mark.parametrize("x,match", [
    (ids() + I, r"x: expected token ids in \[0, 6\), got values in"),
    (ids() - I, r"x: expected token ids in \[0, 6\), got values in \[-"),
    (np.zeros((0, B), dtype=int), r"x: expected T >= 1"),
    (np.zeros((T, 0), dtype=int), r"x: expected T >= 1 and B >= 1"),
    (np.zeros((T,), dtype=int), r"x: expected token ids \(T, B\) or floats \(T, B, 6\), got an array of rank 1"),
    (np.zeros((T, B, I, 1)), r"x: .*rank 4"),
    (np.zeros((T, B, I + 1)), r"x: expected shape \(T, B, 6\), got \(4, 2, 7\)"),
    (np.full((T, B, I), np.nan), r"x: expected finite values"),
    (np.full((T, B, I), np.inf), r"x: expected finite values"),
    (np.zeros((T, B), dtype=np.float32), r"x: expected integer token ids"),
])
def test_bad_x(m, x, match):
    with pytest.raises(ValueError, match=match):
        m.loss_and_grads(x, ids(hi=O))


@pytest.mark.parametrize("y,match", [
    (ids((T + 1, B), O), r"y: expected shape \(4, 2\) to match x, got \(5, 2\)"),
    (ids((T, B + 1), O), r"y: expected shape \(4, 2\) to match x, got \(4, 3\)"),
    (ids((T, B), O) + O, r"y: expected class ids in \[0, 3\)"),
    (-ids((T, B), O) - 1, r"y: expected class ids in \[0, 3\), got values in \[-"),
    (np.zeros((T, B)), r"y: expected integer class ids"),
    (np.zeros((T, B, O), dtype=int), r"y: expected integer class ids of shape \(4, 2\)"),
])
def test_bad_y(m, y, match):
    with pytest.raises(ValueError, match=match):
        m.loss_and_grads(ids(), y)


def test_bad_dense_targets():
    for out in ("sigmoid", "linear"):
        m = rnn_gpu.RNN(I, H, O, backend="numpy", output=out)
        with pytest.raises(ValueError, match=r"y: expected shape \(4, 2, 3\), got \(4, 2, 4\)"):
            m.loss_and_grads(ids(), np.zeros((T, B, O + 1)))
        with pytest.raises(ValueError, match=r"y: expected floats of shape \(4, 2, 3\)"):
            m.loss_and_grads(ids(), ids(hi=O))
        with pytest.raises(ValueError, match="y: expected finite values"):
            m.loss_and_grads(ids(), np.full((T, B, O), np.nan))
    m = rnn_gpu.RNN(I, H, O, backend="numpy", output="sigmoid")
    with pytest.raises(ValueError, match=r"y: expected targets in \[0, 1\]"):
        m.loss_and_grads(ids(), np.full((T, B, O), 2.0))


@pytest.mark.parametrize("kw,match", [
    ({"mask": np.ones((T + 1, B))}, r"mask: expected shape \(4, 2\) to match x, got \(5, 2\)"),
    ({"mask": np.full((T, B), 0.5)}, r"mask: expected 0/1"),
    ({"h0": np.zeros((B, H + 1))}, r"h0: expected floats of shape \(2, 5\)"),
    ({"h0": np.zeros((B + 1, H))}, r"h0: expected floats of shape \(2, 5\), got float64 array of shape \(3, 5\)"),
    ({"h0": np.full((B, H), np.nan)}, r"h0: expected finite values"),
    ({"truncate": -1}, r"truncate: expected None or an integer >= 0, got -1"),
    ({"truncate": 1.5}, r"truncate: expected None or an integer >= 0, got 1.5"),
    ({"dropout": 0.2}, r"dropout: expected float multipliers of shape \(4, 2, 5\)"),
    ({"dropout": np.ones((T, B, H + 1))}, r"dropout: expected float multipliers of shape \(4, 2, 5\)"),
    ({"dropout": np.ones((T, B, H), dtype=int)}, r"dropout: expected float multipliers"),
    ({"dropout": np.full((T, B, H), -1.0)}, r"dropout: expected finite multipliers >= 0"),
    ({"dropout": np.full((T, B, H), np.nan)}, r"dropout: expected finite multipliers >= 0"),
])
def test_bad_keywords(m, kw, match):
    with pytest.raises(ValueError, match=match):
        m.loss_and_grads(ids(), ids(hi=O), **kw)


def test_boolean_mask_is_accepted(m):
    mask = np.ones((T, B), dtype=bool)
    mask[-1, 0] = False
    loss_b = m.loss_and_grads(ids(), ids(hi=O), mask=mask)[0]
    loss_f = m.loss_and_grads(ids(), ids(hi=O), mask=mask.astype(float))[0]
    assert loss_b == loss_f


@pytest.mark.parametrize("kw,match", [
    ({"hidden_activation": "gelu"}, r"hidden_activation: expected one of tanh, sigmoid, relu, got 'gelu'"),
    ({"output": "softplus"}, r"output: expected one of softmax, sigmoid, linear, adaptive, got 'softplus'"),
    ({"dtype": "float16"}, r"dtype: expected one of float32, float64, got 'float16'"),
    ({"dtype": np.int32}, r"dtype: expected one of float32, float64, got 'int32'"),
    ({"backend": "tpu"}, r"backend: expected one of auto, numpy, cupy, got 'tpu'"),
    ({"seed": -1}, r"seed: expected a non-negative integer"),
])
def test_bad_constructor_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        rnn_gpu.RNN(I, H, O, **kw)


@pytest.mark.parametrize("sizes,name", [((0, H, O), "input_size"), ((I, -2, O), "hidden_size"),
                                        ((I, H, 2.5), "output_size")])
def test_bad_sizes(sizes, name):
    with pytest.raises(ValueError, match=f"{name}: expected a positive integer"):
        rnn_gpu.RNN(*sizes)


def test_numpy_dtype_objects_are_accepted():
    assert rnn_gpu.RNN(I, H, O, backend="numpy", dtype=np.float64).dtype == np.float64


def test_bad_environment_backend(monkeypatch):
    monkeypatch.setenv("RNN_GPU_BACKEND", "tpu")
    with pytest.raises(ValueError, match="RNN_GPU_BACKEND: expected one of auto, numpy, cupy"):
        rnn_gpu.get_backend("auto")


def test_load_params_checks_shapes(m):
    with pytest.raises(ValueError, match=r"params\['W'\]: expected shape \(5, 5\), got \(4, 5\)"):
        m.load_params({**{k: v for k, v in m.params.items()}, "W": np.zeros((4, 5))})
    with pytest.raises(ValueError, match="params: missing 'c'"):
        m.load_params({k: v for k, v in m.params.items() if k != "c"})
