"""Data-parallel training without MPI: the launch detection, the stream split, the
rank-order sums, and whole runs with ranks as threads (tests/dist/threads.py) compared
with one process (rnn_gpu.dist)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from rich.console import Console

import rnn_gpu
from rnn_gpu.dist import (DataParallel, DistributedError, LocalCommunicator, launched_under_mpi,
                          split_range, stream_range, sum_in_rank_order, world_size_from_env)
from rnn_gpu.dist.launch import collective_timeout
from rnn_gpu.errors import UsageError
from rnn_gpu.lm import TrainConfig, Trainer
from rnn_gpu.lm.checkpoint import load_checkpoint
from rnn_gpu.states import parts as state_parts

from ..lm.test_train import make_text
from .threads import run_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quiet():
    return Console(file=io.StringIO(), width=200)


def config(tmp_path, name, **kw) -> TrainConfig:
    data = tmp_path / "corpus.txt"
    if not data.exists():  # thread ranks may get here at once: never show a half file
        tmp = tmp_path / f"corpus.{threading.get_ident()}.tmp"
        tmp.write_text(make_text(200))
        os.replace(tmp, data)
    base = dict(data=str(data), hidden=16, batch_size=4, bptt=9, backend="numpy",
                dtype="float64", out=str(tmp_path / name), lr=1e-2, sample_length=0,
                max_steps=6, eval_every=3)
    base.update(kw)
    return TrainConfig(**base)


def params_of(tr):
    return {k: rnn_gpu.to_numpy(v).copy() for k, v in tr.model.params.items()}


def test_launch_is_read_from_the_environment():
    assert world_size_from_env({}) == 1 and not launched_under_mpi({})
    assert world_size_from_env({"PMI_SIZE": "4"}) == 4
    assert world_size_from_env({"OMPI_COMM_WORLD_SIZE": "2"}) == 2
    assert not launched_under_mpi({"PMI_SIZE": "1"})
    assert collective_timeout({}) == 300.0
    assert collective_timeout({"RNN_GPU_COLLECTIVE_TIMEOUT": "2.5"}) == 2.5
    with pytest.raises(ValueError, match="RNN_GPU_COLLECTIVE_TIMEOUT"):
        collective_timeout({"RNN_GPU_COLLECTIVE_TIMEOUT": "soon"})


def test_streams_are_contiguous_groups_and_the_batch_must_divide():
    assert [stream_range(12, r, 3) for r in range(3)] == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(UsageError, match=r"^batch_size 10 .* ranks 4"):
        stream_range(10, 0, 4)
    assert [split_range(5, r, 2) for r in range(2)] == [(0, 2), (2, 5)]
    assert split_range(1, 0, 2) == (0, 0)


def test_rank_order_sum():
    parts = [np.array([1e16, 1.0]), np.array([1.0, -1.0]), np.array([-1e16, 3.0])]
    assert sum_in_rank_order(parts).tolist() == [((1e16 + 1.0) - 1e16), 3.0]
    assert float(sum_in_rank_order([np.float64(1.5), np.float64(2.0)])) == 3.5


def test_local_communicator_is_the_identity():
    c = LocalCommunicator()
    a = np.arange(3.0)
    assert c.rank == 0 and c.size == 1
    assert c.allreduce_sum(a).tolist() == a.tolist()
    assert c.broadcast({"x": 1}) == {"x": 1} and c.gather(a)[0].tolist() == a.tolist()
    dp = DataParallel(4, "numpy", c)
    data = np.arange(20).reshape(5, 4)
    assert not dp.active and dp.streams(data) is data


def test_communicator_collectives_on_thread_ranks():
    def body(comm):
        s = comm.allreduce_sum(np.full(3, comm.rank + 1, dtype=np.float32))
        b = comm.broadcast(f"from {comm.rank}")
        g = comm.gather(np.arange(comm.rank + 1))
        return s.tolist(), b, None if g is None else [x.tolist() for x in g]

    out = run_ranks(3, body)
    assert all(o[0] == [6.0, 6.0, 6.0] and o[1] == "from 0" for o in out)
    assert out[0][2] == [[0], [0, 1], [0, 1, 2]] and out[1][2] is None


def test_a_run_without_mpi_never_imports_mpi4py(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}
    env["PYTHONPATH"] = ROOT
    (tmp_path / "t.txt").write_text(make_text(60))
    code = ("import sys, rnn_gpu.cli as c; s = c.main(['train', '--data', 't.txt', '--max-steps', "
            "'2', '--hidden', '8', '--batch-size', '2', '--bptt', '5', '--backend', 'numpy', "
            "'--no-progress', '--sample-length', '0']); "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'; sys.exit(s)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("dtype,dropout", [("float64", 0.0), ("float64", 0.25), ("float32", 0.0)])
def test_two_thread_ranks_train_as_one_process(tmp_path, dtype, dropout):
    one = Trainer(config(tmp_path, "one.npz", dtype=dtype, dropout=dropout), console=quiet())
    r1 = one.fit()

    def rank(comm):
        tr = Trainer(config(tmp_path, "two.npz", dtype=dtype, dropout=dropout), console=quiet(),
                     comm=comm)
        return tr.fit(), params_of(tr), rnn_gpu.to_numpy(tr.state.hidden)

    (r2, p2, h0), (_, p2b, h1) = run_ranks(2, rank)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    for k, v in params_of(one).items():
        np.testing.assert_allclose(p2[k], v, **tol)
        assert np.array_equal(p2[k], p2b[k])  # the ranks agree to the bit
    assert r2.val_ppl == pytest.approx(r1.val_ppl, rel=1e-10 if dtype == "float64" else 1e-5)
    assert r2.steps == r1.steps == 6 and r2.tokens == r1.tokens
    assert [r["train_loss"] for r in r2.history] == pytest.approx(
        [r["train_loss"] for r in r1.history], rel=1e-9 if dtype == "float64" else 1e-5)
    assert h0.shape == (2, 16) and h1.shape == (2, 16)
    ck1, ck2 = load_checkpoint(tmp_path / "one.npz"), load_checkpoint(tmp_path / "two.npz")
    assert ck2.state["hidden"].shape == (4, 16)  # the states of all streams, gathered
    np.testing.assert_allclose(ck2.state["hidden"], ck1.state["hidden"], **tol)
    np.testing.assert_array_equal(ck2.state["hidden"], np.concatenate([h0, h1]))


def test_a_two_rank_checkpoint_resumes_alone_and_the_reverse(tmp_path):
    Trainer(config(tmp_path, "one.npz", max_steps=3), console=quiet()).fit()
    run_ranks(2, lambda comm: Trainer(config(tmp_path, "two.npz", max_steps=3),
                                      console=quiet(), comm=comm).fit())
    # the 2-rank checkpoint goes on in one process; the 1-process one on 2 ranks
    a = Trainer.from_checkpoint(tmp_path / "two.npz", console=quiet(), max_steps=6)
    a.fit()
    run_ranks(2, lambda comm: Trainer.from_checkpoint(tmp_path / "one.npz", console=quiet(),
                                                      comm=comm, max_steps=6).fit())
    b = load_checkpoint(tmp_path / "one.npz")
    ref = Trainer(config(tmp_path, "ref.npz"), console=quiet())
    ref.fit()
    for k, v in params_of(ref).items():
        np.testing.assert_allclose(params_of(a)[k], v, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b.params[k], v, rtol=1e-12, atol=1e-12)


def test_drifted_parameters_stop_every_rank(tmp_path):
    def rank(comm):
        tr = Trainer(config(tmp_path, "d.npz"), console=quiet(), comm=comm)
        if comm.rank == 1:  # corrupted after step 3's update, before its evaluation
            real = tr.evaluate

            def evaluate():
                tr.model.params["W"][0, 0] += 1e-9
                return real()
            tr.evaluate = evaluate
        with pytest.raises(DistributedError, match="parameters differ at step 3"):
            tr.fit()
        return True

    assert run_ranks(2, rank) == [True, True]


def test_an_interrupt_on_one_rank_stops_all_after_the_same_step(tmp_path):
    def rank(comm):
        tr = Trainer(config(tmp_path, "i.npz", max_steps=50, eval_every=None), console=quiet(),
                     comm=comm)
        real = tr.train_step

        def step():
            out = real()
            if comm.rank == 1 and tr.state.step == 4:
                tr.interrupt()  # what Ctrl-C does, on this rank only
            return out
        tr.train_step = step
        return tr.fit()

    r0, r1 = run_ranks(2, rank)
    assert r0.stop_reason == r1.stop_reason == "interrupted"
    assert r0.steps == r1.steps == 5  # rank 1's flag travels with step 5's sums
    assert load_checkpoint(tmp_path / "i.npz").train_state["step"] == 5


def test_root_verdict_is_shared(tmp_path):
    def rank(comm):
        dp = DataParallel(4, "numpy", comm)

        def check():
            raise UsageError("--out: not writable")
        with pytest.raises(UsageError, match="not writable"):
            dp.root_verdict(check)
        return True

    assert run_ranks(2, rank) == [True, True]


@pytest.mark.parametrize("opt", [dict(optimizer="sgd", momentum=0.9, lr=0.5),
                                 dict(optimizer="adagrad", lr=0.1), dict(optimizer="adam")])
def test_three_ranks_step_their_shards_to_the_model_and_state_of_one(tmp_path, opt):
    # 3 ranks: the shard boundaries fall inside parameters; the checkpoint's optimizer
    # state is gathered whole
    kw = dict(batch_size=6, clip=0.5, **opt)
    one = Trainer(config(tmp_path, "one.npz", **kw), console=quiet())
    one.fit()

    def rank(comm):
        tr = Trainer(config(tmp_path, "three.npz", **kw), console=quiet(), comm=comm)
        tr.fit()
        return tr.dist.shards, params_of(tr)

    out = run_ranks(3, rank)
    assert all(s for s, _ in out)
    for k, v in params_of(one).items():
        np.testing.assert_allclose(out[0][1][k], v, rtol=1e-12, atol=1e-13)
        assert all(np.array_equal(o[1][k], out[0][1][k]) for o in out)
    ck1, ck3 = load_checkpoint(tmp_path / "one.npz"), load_checkpoint(tmp_path / "three.npz")
    assert set(ck1.optim) == set(ck3.optim)
    for k in ck1.optim:
        np.testing.assert_allclose(ck3.optim[k], ck1.optim[k], rtol=1e-11, atol=1e-14, err_msg=k)


def test_a_stack_with_dropout_trains_on_two_ranks_as_one_process(tmp_path):
    """States (L, B, H) and dropout (L, T, B, H) are split and gathered on their stream
    axis, the next-to-last."""
    one = Trainer(config(tmp_path, "one.npz", layers=2, dropout=0.25), console=quiet())
    one.fit()

    def rank(comm):
        tr = Trainer(config(tmp_path, "two.npz", layers=2, dropout=0.25), console=quiet(),
                     comm=comm)
        tr.fit()
        return params_of(tr), rnn_gpu.to_numpy(tr.state.hidden)

    (p2, h0), (_, h1) = run_ranks(2, rank)
    for k, v in params_of(one).items():
        np.testing.assert_allclose(p2[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
    assert h0.shape == (2, 2, 16)  # (layers, this rank's streams, H)
    ck = load_checkpoint(tmp_path / "two.npz")
    np.testing.assert_array_equal(ck.state["hidden"], np.concatenate([h0, h1], axis=1))
    np.testing.assert_allclose(ck.state["hidden"], load_checkpoint(tmp_path / "one.npz").state["hidden"],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("lstm", 2), ("gru", 1)])
def test_gated_cells_train_on_two_ranks_as_one_process_and_resume_under_either(
        tmp_path, cell, layers):
    """An LSTM's (h, c) is split into each rank's streams and gathered back element by
    element: 2 ranks give the model, states and checkpoint of 1, and each checkpoint goes
    on under the other rank count."""
    kw = dict(cell=cell, layers=layers, dropout=0.25, max_steps=4, eval_every=2)
    one = Trainer(config(tmp_path, "one.npz", **kw), console=quiet())
    one.fit()

    def rank(comm):
        tr = Trainer(config(tmp_path, "two.npz", **kw), console=quiet(), comm=comm)
        tr.fit()
        assert isinstance(tr.state.hidden, tuple) == (cell == "lstm")
        return params_of(tr), [rnn_gpu.to_numpy(a) for a in state_parts(tr.state.hidden)]

    (p2, s0), (p2b, s1) = run_ranks(2, rank)
    for k, v in params_of(one).items():
        np.testing.assert_allclose(p2[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
        assert np.array_equal(p2[k], p2b[k])
    names = ["hidden", "hidden_c"] if cell == "lstm" else ["hidden"]
    ck1, ck2 = load_checkpoint(tmp_path / "one.npz"), load_checkpoint(tmp_path / "two.npz")
    assert set(ck1.state) == set(ck2.state) == set(names) and len(s0) == len(names)
    for name, a, b in zip(names, s0, s1):
        assert a.shape == ((2, 16) if layers == 1 else (layers, 2, 16))  # this rank's streams
        np.testing.assert_array_equal(ck2.state[name], np.concatenate([a, b], axis=-2))
        np.testing.assert_allclose(ck2.state[name], ck1.state[name], rtol=1e-12, atol=1e-12)

    # the 2-rank checkpoint goes on in one process, the 1-process one on 2 ranks
    Trainer.from_checkpoint(tmp_path / "two.npz", console=quiet(), max_steps=6).fit()
    run_ranks(2, lambda comm: Trainer.from_checkpoint(tmp_path / "one.npz", console=quiet(),
                                                      comm=comm, max_steps=6).fit())
    ref = Trainer(config(tmp_path, "ref.npz", **{**kw, "max_steps": 6}), console=quiet())
    ref.fit()
    ca, cb = load_checkpoint(tmp_path / "two.npz"), load_checkpoint(tmp_path / "one.npz")
    for k, v in params_of(ref).items():
        np.testing.assert_allclose(ca.params[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(cb.params[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
    for name in names:
        np.testing.assert_allclose(ca.state[name], cb.state[name], rtol=1e-12, atol=1e-12)
