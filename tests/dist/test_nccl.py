"""The NCCL path of data-parallel training (rnn_gpu.dist.nccl): on the emulated device
with the stand-in cupy.cuda.nccl (tests/cuda_emu/nccl.py), ranks as threads; on a GPU, a
single-rank smoke test (NCCL refuses two ranks on one device)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnn_gpu
from rnn_gpu.dist import LocalCommunicator
from rnn_gpu.dist.data_parallel import HostSum, make_summer
from rnn_gpu.dist.nccl import NcclSum, nccl_unavailable_reason, sum_mode

from ..cuda_emu import nccl as fake_nccl
from ..helpers import cuda_device
from ..lm.test_train import make_text
from .threads import run_ranks

EMULATED = Path(__file__).with_name("mpi_emulated.py")


@pytest.fixture(scope="module")
def emu():
    with cuda_device("emulated") as dev:
        yield dev


def _grads(cp, rank, dtype):
    rng = np.random.default_rng(rank)
    return {"W": cp.asarray(rng.normal(size=(5, 5)).astype(dtype)),
            "c": cp.asarray(rng.normal(size=(7,)).astype(dtype))}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nccl_sum_is_one_fused_allgather_with_the_host_path_bits(emu, dtype):
    fake_nccl.calls.clear()

    def rank(comm):
        g_dev, g_host = _grads(emu.cp, comm.rank, dtype), _grads(np, comm.rank, dtype)
        meta = np.array([comm.rank + 0.5, 1.0, 0.0])
        m1 = NcclSum(comm, g_dev, emu.cp, fake_nccl)(g_dev, meta)
        m2 = HostSum(comm, g_host, np)(g_host, meta)
        return {k: rnn_gpu.to_numpy(v) for k, v in g_dev.items()}, g_host, m1, m2

    out = run_ranks(3, rank)
    for dev, host, m1, m2 in out:
        for k in host:
            assert dev[k].dtype == dtype and dev[k].tobytes() == host[k].tobytes()
        assert m1.tolist() == m2.tolist() and m1[:, 0].tolist() == [0.5, 1.5, 2.5]
    expect = (_grads(np, 0, dtype)["W"] + _grads(np, 1, dtype)["W"]) + _grads(np, 2, dtype)["W"]
    assert out[0][0]["W"].tobytes() == expect.tobytes()  # rank order
    assert fake_nccl.calls == [("allGather", 25 + 7)]  # one call per step, every parameter


def test_allreduce_mode_is_one_ncclallreduce(emu):
    fake_nccl.calls.clear()

    def rank(comm):
        g = _grads(emu.cp, comm.rank, np.float64)
        NcclSum(comm, g, emu.cp, fake_nccl, mode="allreduce")(g, np.zeros(3))
        return rnn_gpu.to_numpy(g["W"])

    w = run_ranks(2, rank)
    np.testing.assert_allclose(w[0], _grads(np, 0, np.float64)["W"] + _grads(np, 1, np.float64)["W"])
    assert fake_nccl.calls == [("allReduce", 25 + 7)]
    with pytest.raises(ValueError, match="RNN_GPU_GRAD_SUM"):
        sum_mode({"RNN_GPU_GRAD_SUM": "tree"})


def test_without_nccl_the_sums_go_through_host_mpi_with_one_line(emu, monkeypatch):
    monkeypatch.setattr(fake_nccl, "available", False)
    assert nccl_unavailable_reason(fake_nccl) == "CuPy finds no NCCL library"
    said = []
    s = make_summer(LocalCommunicator(), _grads(emu.cp, 0, np.float32), emu.backend, fake_nccl,
                    say=said.append)
    assert isinstance(s, HostSum) and len(said) == 1 and "through host MPI" in said[0]

    def rank(comm):  # the staged sum on the device: the host path's bits
        g_dev, g_host = _grads(emu.cp, comm.rank, np.float32), _grads(np, comm.rank, np.float32)
        HostSum(comm, g_dev, emu.cp)(g_dev, np.zeros(3))
        HostSum(comm, g_host, np)(g_host, np.zeros(3))
        return all(rnn_gpu.to_numpy(g_dev[k]).tobytes() == g_host[k].tobytes() for k in g_host)

    assert run_ranks(2, rank) == [True, True]


def test_two_emulated_gpu_ranks_train_as_one(emu, tmp_path):
    # processes under mpiexec: the emulator is not thread-safe (tests/dist/mpi_emulated.py)
    from .test_mpiexec import ROOT, _mpiexec  # noqa: PLC0415

    mpiexec = _mpiexec()
    data = tmp_path / "t.txt"
    data.write_text(make_text(150))
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}.npz"
        r = subprocess.run([mpiexec, "-n", str(n), sys.executable, str(EMULATED), str(data),
                            str(tmp_path / f"c{n}.npz"), str(out)], capture_output=True,
                           text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        outs[n] = np.load(out)
    assert str(outs[2]["summer"]) == "NcclSum" and int(outs[2]["allgathers"]) == 4
    for k in ("U", "W", "V", "b", "c"):
        np.testing.assert_allclose(outs[2][k], outs[1][k], rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.gpu
def test_nccl_single_rank_smoke_on_the_gpu():
    be = rnn_gpu.get_backend("cupy")
    why = nccl_unavailable_reason()
    if why:
        pytest.skip(why)
    g = _grads(be.xp, 0, np.float32)
    before = {k: rnn_gpu.to_numpy(v).copy() for k, v in g.items()}
    metas = NcclSum(LocalCommunicator(), g, be.xp)(g, np.array([1.0, 2.0, 0.0]))
    for k in g:
        assert rnn_gpu.to_numpy(g[k]).tobytes() == before[k].tobytes()
    assert metas.tolist() == [[1.0, 2.0, 0.0]]
