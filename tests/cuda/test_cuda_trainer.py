"""The trainer on the CUDA backend (on a GPU, and on the emulator): each step replays one
captured CUDA Graph by default, dropout included, and reads one value back to the host,
the loss it logs; eager steps (cuda_graph=False) train to the same parameters."""
from __future__ import annotations

import numpy as np
import pytest

from rnn_gpu import to_numpy
from rnn_gpu.errors import UsageError
from rnn_gpu.lm import TrainConfig, Trainer
from rnn_gpu.states import parts as state_parts

from ..helpers import cuda_device, device_params

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module", params=device_params("emulated"))
def device(request):
    with cuda_device(request.param) as dev:
        yield dev


def _trainer(tmp_path, backend, **kw):
    data = tmp_path / "t.txt"
    data.write_text(TEXT)
    cfg = TrainConfig(data=str(data), hidden=13, batch_size=3, bptt=7, max_steps=4,
                      dtype="float64", backend=backend, out=str(tmp_path / "c.npz"),
                      sample_length=0, seed=3, **kw)
    return Trainer(cfg, progress=False)


def _reads(device):
    """The device-to-host reads from now on, as the emulator records them (every float,
    int, bool, get, item of a device array); on a GPU there is nothing to count."""
    if device.kind == "cuda":
        return None
    from ..cuda_emu import memory

    start = len(memory.HOST_READS)
    return lambda: memory.HOST_READS[start:]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_graphed_steps_equal_eager_steps_with_one_host_read_each(device, tmp_path, dropout):
    eager = _trainer(tmp_path, device.backend, cuda_graph=False, dropout=dropout)
    graphed = _trainer(tmp_path, device.backend, dropout=dropout)
    for _ in range(3):
        eager.train_step()
    graphed.train_step()  # the first call captures
    reads = _reads(device)
    graphed.train_step()
    graphed.train_step()
    if reads is not None:
        assert reads() == ["float()", "float()"]  # the logged loss, once per step
    assert graphed._steps and all(s.graph is not None for s in graphed._steps.values())
    for k, v in eager.model.params.items():
        np.testing.assert_allclose(to_numpy(graphed.model.params[k]), to_numpy(v),
                                   rtol=1e-12, atol=1e-14, err_msg=k)
    np.testing.assert_allclose(to_numpy(graphed.state.hidden), to_numpy(eager.state.hidden),
                               rtol=1e-12, atol=1e-14)


def test_eager_steps_read_only_the_loss_too(device, tmp_path):
    tr = _trainer(tmp_path, device.backend, cuda_graph=False, clip=1.0)
    tr.train_step()
    reads = _reads(device)
    tr.train_step()
    if reads is not None:
        assert reads() == ["float()"]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_cells_train_graphed_as_eager_and_carry_their_state(device, tmp_path, cell):
    """The trainer's GPU paths with gated cells: captured steps (an LSTM's (h, c) loaded
    into the step's two static buffers) train to the parameters and states of eager
    steps (``loss_and_grads_trusted``), reading one value per step."""
    if not hasattr(device.backend.ops, "lstm_forward"):
        pytest.skip(f"the CUDA kernel set ({type(device.backend.ops).__name__}) has no "
                    "lstm_forward yet: the gated cells' kernels are not in this tree")
    eager = _trainer(tmp_path, device.backend, cuda_graph=False, dropout=0.3, cell=cell)
    graphed = _trainer(tmp_path, device.backend, dropout=0.3, cell=cell)
    for _ in range(3):
        eager.train_step()
    graphed.train_step()
    reads = _reads(device)
    graphed.train_step()
    graphed.train_step()
    if reads is not None:
        assert reads() == ["float()", "float()"]
    for k, v in eager.model.params.items():
        np.testing.assert_allclose(to_numpy(graphed.model.params[k]), to_numpy(v),
                                   rtol=1e-12, atol=1e-14, err_msg=k)
    ge, gg = state_parts(eager.state.hidden), state_parts(graphed.state.hidden)
    assert len(ge) == len(gg) == (2 if cell == "lstm" else 1)
    for a, b in zip(gg, ge):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-12, atol=1e-14)
    # a checkpoint of the GPU run holds the pair on the host, and resumes
    graphed.save()
    back = type(graphed).from_checkpoint(tmp_path / "c.npz", progress=False,
                                         backend=device.backend, max_steps=4)
    for a, b in zip(state_parts(back.state.hidden), gg):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_a_gated_cell_without_its_kernels_is_a_clear_error(device, tmp_path):
    """Until the CUDA kernel set has a cell's kernels, training that cell on it stops
    before anything is written, naming --cell and the way out."""
    if hasattr(device.backend.ops, "lstm_forward"):
        pytest.skip("the CUDA kernel set has the gated cells' kernels")
    with pytest.raises(UsageError, match=r"^--cell lstm: the cupy backend's kernel set has no "
                                         r"lstm kernels .* --backend numpy"):
        _trainer(tmp_path, device.backend, cell="lstm")
    assert not (tmp_path / "c.npz").exists()
