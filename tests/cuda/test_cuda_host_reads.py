"""On a CUDA backend the public API reads back as little as it can: NumPy inputs are
checked on the host before they are uploaded (no device read), device inputs with one
fused check and one read for the whole call; the loss is the other read. Counted on the
emulator, which records every device-to-host read."""
from __future__ import annotations

import numpy as np
import pytest

from ..helpers import cuda_device, cuda_model, make_problem

SIZES = (7, 6, 5)


@pytest.fixture(scope="module")
def device():
    with cuda_device("emulated") as dev:
        yield dev


def _reads(fn):
    from ..cuda_emu import memory

    start = len(memory.HOST_READS)
    out = fn()
    return out, memory.HOST_READS[start:]


@pytest.mark.parametrize("dense", [False, True])
def test_numpy_inputs_are_checked_on_the_host(device, dense):
    m = cuda_model(device, *SIZES, dtype="float64")
    x, y, h0, mask = make_problem("softmax", dense, True, True, T=5, B=3, sizes=SIZES)
    lm = np.ones((5, 3))
    _, reads = _reads(lambda: m.loss_and_grads(x, y, h0=h0, mask=mask, loss_mask=lm))
    assert reads == ["float()"]  # the summed loss, and nothing else


@pytest.mark.parametrize("dense", [False, True])
def test_device_inputs_are_checked_with_one_read(device, dense):
    m = cuda_model(device, *SIZES, dtype="float64")
    x, y, h0, mask = make_problem("softmax", dense, True, True, T=5, B=3, sizes=SIZES)
    be = m.backend
    args = [be.asarray(a) for a in (x, y, h0, mask)]
    want, _ = _reads(lambda: m.loss_and_grads(x, y, h0=h0, mask=mask))
    got, reads = _reads(lambda: m.loss_and_grads(args[0], args[1], h0=args[2], mask=args[3]))
    assert reads == ["get", "float()"]  # one fused check, then the loss
    assert got[0] == want[0]


def test_a_bad_device_input_is_reported_by_the_fused_check(device):
    m = cuda_model(device, *SIZES, dtype="float64")
    x, y, h0, _ = make_problem("softmax", False, False, True, T=5, B=3, sizes=SIZES)
    be = m.backend
    y = y.copy()
    y[2, 1] = SIZES[2] + 3  # out of range
    with pytest.raises(ValueError, match=r"y: expected class ids in \[0, 5\), got values in "
                                         r"\[0, 8\]"):
        m.loss_and_grads(be.asarray(x), be.asarray(y), h0=be.asarray(h0))
    bad_h0 = h0.copy()
    bad_h0[0, 0] = np.nan
    with pytest.raises(ValueError, match="h0: expected finite values"):
        m.loss_and_grads(be.asarray(x), be.asarray(y % SIZES[2]), h0=be.asarray(bad_h0))
    with pytest.raises(ValueError, match="mask: expected 0/1"):
        m.loss_and_grads(x, y % SIZES[2], mask=be.asarray(np.full((5, 3), 0.5)))
