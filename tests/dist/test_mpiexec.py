"""``mpiexec -n 2 rnn-gpu train``: the same model as one process, deterministic, clean
errors, failures and interrupts that end every rank. Skipped where mpiexec or mpi4py is
missing; in CI (CI=true) that is a failure (the ``mpi`` extra brings both)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rnn_gpu.lm.checkpoint import load_checkpoint

from ..lm.test_train import make_text

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("mpi_script.py")
pytestmark = pytest.mark.slow


def _mpiexec() -> str:
    here = Path(sys.executable).with_name("mpiexec")
    found = str(here) if here.exists() else shutil.which("mpiexec")
    why = None
    if found is None:
        why = "mpiexec not found (pip install 'rnn-gpu[mpi]')"
    else:
        try:
            import mpi4py  # noqa: F401, PLC0415
        except ImportError:
            why = "mpi4py is not installed (pip install 'rnn-gpu[mpi]')"
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}, and CI=true: CI must run the MPI tests")
        pytest.skip(why)
    return found


@pytest.fixture(scope="module")
def mpiexec():
    return _mpiexec()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("mpi") / "corpus.txt"
    p.write_text(make_text(400))
    return p


def train_args(corpus, out, dtype="float64", **kw):
    opts = {"data": corpus, "max-steps": 20, "batch-size": 8, "bptt": 16, "hidden": 32,
            "dtype": dtype, "backend": "numpy", "sample-length": 0, "lr": 0.01,
            "out": out, **kw}
    return ["train", "--no-progress", *(x for k, v in opts.items() for x in (f"--{k}", str(v)))]


def run(mpiexec, n, args, *, fault=None, timeout=120, env=None):
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
         "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    e.pop("RNN_GPU_TEST_FAULT", None)
    if fault:
        e["RNN_GPU_TEST_FAULT"] = fault
    cmd = [mpiexec, "-n", str(n), sys.executable, str(SCRIPT), *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    r.seconds = time.perf_counter() - t0
    return r


def params(path):
    ck = load_checkpoint(path)
    return {k: np.asarray(v) for k, v in ck.params.items()}, ck


@pytest.mark.parametrize("dtype,tol", [("float64", dict(rtol=1e-12, atol=1e-12)),
                                       ("float32", dict(rtol=1e-5, atol=1e-6))])
def test_two_ranks_give_the_model_of_one_and_checkpoints_resume_under_either(
        mpiexec, corpus, tmp_path, dtype, tol):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    r1 = run(mpiexec, 1, train_args(corpus, one, dtype))
    r2 = run(mpiexec, 2, train_args(corpus, two, dtype))
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("stopped: reached --max-steps 20") == 1  # rank 0 alone prints
    p1, ck1 = params(one)
    p2, ck2 = params(two)
    for k in p1:
        np.testing.assert_allclose(p2[k], p1[k], err_msg=k, **tol)
    v1, v2 = ck1.train_state["history"][-1], ck2.train_state["history"][-1]
    assert v2["val_ppl"] == pytest.approx(v1["val_ppl"], rel=1e-10 if dtype == "float64" else 1e-5)
    assert ck2.state["hidden"].shape == ck1.state["hidden"].shape == (8, 32)
    np.testing.assert_allclose(ck2.state["hidden"], ck1.state["hidden"], **tol)
    if dtype == "float32":
        return
    # each checkpoint goes on under the other rank count, to the same model
    more = ["--resume", "--max-steps", "25"]
    ra = run(mpiexec, 1, ["train", "--out", str(two), *more, "--no-progress"])
    rb = run(mpiexec, 2, ["train", "--out", str(one), *more, "--no-progress"])
    assert ra.returncode == 0, ra.stderr
    assert rb.returncode == 0, rb.stderr
    pa, cka = params(two)
    pb, ckb = params(one)
    assert cka.train_state["step"] == ckb.train_state["step"] == 25
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], err_msg=k, **tol)


def test_an_lstm_on_two_ranks_gives_the_model_and_states_of_one_and_resumes_under_either(
        mpiexec, corpus, tmp_path):
    """The LSTM's (h, c) of every stream is gathered into state/hidden and state/hidden_c,
    and split again when a checkpoint resumes under another rank count."""
    tol = dict(rtol=1e-12, atol=1e-12)
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    small = {"cell": "lstm", "hidden": 16, "max-steps": 6, "eval-every": 3, "dropout": 0.2}
    for n, out in ((1, one), (2, two)):
        r = run(mpiexec, n, train_args(corpus, out, **small))
        assert r.returncode == 0, r.stderr
    p1, ck1 = params(one)
    p2, ck2 = params(two)
    assert ck1.model.cell == ck2.model.cell == "lstm"
    for k in p1:
        np.testing.assert_allclose(p2[k], p1[k], err_msg=k, **tol)
    assert set(ck1.state) == set(ck2.state) == {"hidden", "hidden_c"}
    for k in ck1.state:
        assert ck2.state[k].shape == (8, 16)  # the states of all 8 streams
        np.testing.assert_allclose(ck2.state[k], ck1.state[k], err_msg=k, **tol)
    more = ["--resume", "--max-steps", "8", "--no-progress"]
    ra = run(mpiexec, 1, ["train", "--out", str(two), *more])
    rb = run(mpiexec, 2, ["train", "--out", str(one), *more])
    assert ra.returncode == 0, ra.stderr
    assert rb.returncode == 0, rb.stderr
    pa, cka = params(two)
    pb, ckb = params(one)
    assert cka.train_state["step"] == ckb.train_state["step"] == 8
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], err_msg=k, **tol)
    for k in ("hidden", "hidden_c"):
        np.testing.assert_allclose(cka.state[k], ckb.state[k], err_msg=k, **tol)


def test_two_rank_runs_are_deterministic(mpiexec, corpus, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for out in (a, b):
        r = run(mpiexec, 2, train_args(corpus, out, "float32", dropout=0.2))
        assert r.returncode == 0, r.stderr
    pa, cka = params(a)
    pb, ckb = params(b)
    for k in pa:
        assert pa[k].tobytes() == pb[k].tobytes(), k
    assert cka.state["hidden"].tobytes() == ckb.state["hidden"].tobytes()


def test_a_batch_the_ranks_do_not_divide_is_a_clean_error(mpiexec, corpus, tmp_path):
    r = run(mpiexec, 2, train_args(corpus, tmp_path / "x.npz", **{"batch-size": 5}))
    assert r.returncode == 2
    assert r.stderr.strip() == ("rnn-gpu: error: --batch-size 5 is not divisible by the number "
                                "of MPI ranks 2: each rank takes batch_size / ranks streams")
    assert not (tmp_path / "x.npz").exists()


def test_a_rank_that_raises_stops_both_within_seconds(mpiexec, corpus, tmp_path):
    out = tmp_path / "f.npz"
    r = run(mpiexec, 2, train_args(corpus, out, **{"eval-every": 2, "max-steps": 100000}),
            fault="1:5:raise", timeout=60, env={"RNN_GPU_COLLECTIVE_TIMEOUT": "30"})
    assert r.returncode == 1
    assert "rnn-gpu: error: rank 1: injected failure at step 5" in r.stderr
    assert r.seconds < 30
    assert load_checkpoint(out).train_state["step"] == 4  # the last good one stays


def test_a_stuck_collective_times_out(mpiexec, corpus, tmp_path):
    # rank 1 sleeps in its step 3 past the 4 s limit; rank 0 waits in the collective
    r = run(mpiexec, 2, train_args(corpus, tmp_path / "t.npz", **{"max-steps": 100000}),
            fault="1:3:sleep", timeout=60, env={"RNN_GPU_COLLECTIVE_TIMEOUT": "4"})
    assert r.returncode != 0
    assert "did not complete within 4 s" in r.stderr, r.stderr
    assert "RNN_GPU_COLLECTIVE_TIMEOUT" in r.stderr
    assert r.seconds < 30


def test_an_interrupt_stops_every_rank_after_the_same_step(mpiexec, corpus, tmp_path):
    out = tmp_path / "s.npz"
    r = run(mpiexec, 2, train_args(corpus, out, **{"max-steps": 100000}), fault="1:5:sigint")
    assert r.returncode == 130, r.stderr
    assert r.stderr.count("rnn-gpu: interrupted; the run is saved in") == 1
    assert load_checkpoint(out).train_state["step"] == 6  # rank 1's Ctrl-C rides on step 6


def test_ctrl_c_to_mpiexec_reaches_every_rank(mpiexec, corpus, tmp_path):
    out = tmp_path / "c.npz"
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "rnn_gpu",
           *train_args(corpus, out, **{"max-steps": 100000, "eval-every": 10})]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:  # training has begun
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted; the run is saved in" in err
    assert load_checkpoint(out).train_state["step"] >= 10
