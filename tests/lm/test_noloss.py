"""No lost work, and the commands users reach for: eval, info CHECKPOINT, keep-best,
SIGTERM, and one clear line (exit 2) for every problem with the input."""
from __future__ import annotations

import errno
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rnn_gpu.cli import build_parser, main
from rnn_gpu.lm.checkpoint import load_checkpoint

from .test_cli import SMALL, assert_one_line_error
from .test_train import make_text

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(80))
    return p


def train(corpus, out, *extra):
    return main(["train", "--data", str(corpus), "--out", str(out), "--max-steps", "6",
                 "--sample-length", "0", *SMALL, *extra])


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    ck = tmp_path / "ck.npz"
    assert train(corpus, ck, "--eval-every", "2") == 0
    capsys.readouterr()
    return ck


# -------------------------------------------------------------------------------------
# Lost or damaged work


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_unwritable_output_is_refused_before_training(err, tmp_path, corpus, capsys, monkeypatch):
    import rnn_gpu.lm.checkpoint as ckmod

    def fails(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(ckmod.tempfile, "mkstemp", fails)
    rc = train(corpus, tmp_path / "x.npz")
    line = assert_one_line_error(capsys, rc, "--out")
    assert rc == 2 and os.strerror(err) in line and str(tmp_path) in line
    assert "valid loss" not in capsys.readouterr().out


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_directory_is_refused_before_training(tmp_path, corpus, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc = train(corpus, ro / "x.npz")
        assert rc == 2
        assert_one_line_error(capsys, rc, "--out")
    finally:
        ro.chmod(0o755)


def test_a_fresh_run_does_not_replace_an_existing_checkpoint(tmp_path, corpus, trained, capsys):
    before = trained.read_bytes()
    rc = train(corpus, trained)
    line = assert_one_line_error(capsys, rc, "--resume")
    assert rc == 2 and "--overwrite" in line
    assert trained.read_bytes() == before
    assert train(corpus, trained, "--overwrite") == 0
    capsys.readouterr()
    assert load_checkpoint(trained).train_state["step"] == 6


def test_a_read_only_checkpoint_is_never_replaced(tmp_path, corpus, trained, capsys):
    before = trained.read_bytes()
    trained.chmod(0o444)
    try:
        for extra in (["--overwrite"], ["--resume"]):
            rc = train(corpus, trained, *extra)
            assert rc == 2, extra
            assert_one_line_error(capsys, rc, "read-only")
            assert trained.read_bytes() == before
    finally:
        trained.chmod(0o644)


def test_keep_best_writes_the_best_weights_beside_out(tmp_path, corpus, capsys):
    from rnn_gpu.lm.checkpoint import best_path

    ck = tmp_path / "ck.npz"
    assert main(["train", "--data", str(corpus), "--out", str(ck), "--max-steps", "30",
                 "--eval-every", "3", "--lr", "0.5", "--sample-length", "0", *SMALL]) == 0
    best = best_path(ck)
    assert f"(best weights: {best})" in capsys.readouterr().out
    assert best == tmp_path / "ck.best.npz" and best.exists()
    hist = load_checkpoint(ck).train_state["history"]
    b = load_checkpoint(best)
    assert b.train_state["history"][-1]["val_ppl"] == min(r["val_ppl"] for r in hist)
    for cmd in (["sample", str(ck), "--best", "--length", "5"], ["eval", str(ck), str(corpus), "--best"]):
        assert main([*cmd, "--backend", "numpy"]) == 0, cmd
    capsys.readouterr()
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "n.npz"), "--max-steps", "3",
                 "--no-keep-best", "--sample-length", "0", *SMALL]) == 0
    assert not best_path(tmp_path / "n.npz").exists()
    assert main(["sample", str(tmp_path / "n.npz"), "--best", "--backend", "numpy"]) == 2


def test_sigterm_checkpoints_and_exits_143(tmp_path, corpus):
    big = tmp_path / "big.txt"
    big.write_text(make_text(3000))
    ck = tmp_path / "t.npz"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "rnn_gpu", "train", "--data", str(big), "--out", str(ck),
                          "--max-steps", "100000", "--eval-every", "5", *SMALL],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in p.stdout:
            if "valid loss" in line:  # training has started
                break
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert f"rnn-gpu train --resume {ck}" in err
    assert load_checkpoint(ck).train_state["step"] >= 5


def test_atomic_write_never_replaces_a_read_only_file(tmp_path):
    from rnn_gpu.lm.checkpoint import atomic_write_npz

    p = tmp_path / "ck.npz"
    p.write_bytes(b"keep")
    p.chmod(0o444)
    with pytest.raises(PermissionError, match="read-only"):
        atomic_write_npz(p, {"a": np.zeros(2)})
    assert p.read_bytes() == b"keep"


def test_stale_temporaries_are_removed_at_the_next_write(tmp_path):
    from rnn_gpu.lm.checkpoint import atomic_write_npz

    stale = tmp_path / ".ck.npz.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.npz.abcd1234.tmp"
    other.write_bytes(b"someone else's")
    atomic_write_npz(tmp_path / "ck.npz", {"a": np.zeros(2)})
    assert not stale.exists() and other.exists()


def test_plot_extension_is_checked_before_training(tmp_path, corpus, capsys):
    pytest.importorskip("matplotlib")
    rc = train(corpus, tmp_path / "x.npz", "--plot", str(tmp_path / "curves.txt"))
    assert rc == 2
    assert_one_line_error(capsys, rc, "--plot")
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_checkpoints_respect_the_umask(tmp_path):
    from rnn_gpu.lm.checkpoint import atomic_write_npz

    old = os.umask(0o022)
    try:
        p = atomic_write_npz(tmp_path / "ck.npz", {"a": np.zeros(2)})
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o644


def test_resume_from_another_directory_and_moved_data(tmp_path, monkeypatch, capsys):
    d = tmp_path / "run"
    d.mkdir()
    (d / "input.txt").write_text(make_text(80))
    monkeypatch.chdir(d)
    assert main(["train", "--data", "input.txt", "--out", "ck.npz", "--max-steps", "3",
                 "--sample-length", "0", *SMALL]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ck = str(d / "ck.npz")
    assert main(["train", "--resume", ck, "--max-steps", "5", "--no-progress", "--sample-length", "0"]) == 0
    capsys.readouterr()
    moved = tmp_path / "moved.txt"
    (d / "input.txt").rename(moved)
    rc = main(["train", "--resume", ck, "--max-steps", "7", "--no-progress"])
    line = assert_one_line_error(capsys, rc, "--data")
    assert rc == 2 and "moved" in line
    assert main(["train", "--resume", ck, "--data", str(moved), "--max-steps", "7", "--no-progress",
                 "--sample-length", "0"]) == 0
    capsys.readouterr()
    changed = tmp_path / "changed.txt"
    changed.write_text("".join(reversed(make_text(80).splitlines(True))))  # same characters
    rc = main(["train", "--resume", ck, "--data", str(changed), "--max-steps", "9", "--no-progress"])
    assert rc == 2
    assert_one_line_error(capsys, rc, "differs")


# -------------------------------------------------------------------------------------
# Commands users expect


def test_eval_reports_perplexity(tmp_path, corpus, trained, capsys):
    from rnn_gpu.lm import evaluate_text

    assert main(["eval", str(trained), str(corpus), "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "tokens" in out and "loss" in out
    ck = load_checkpoint(trained, backend="numpy")
    s = evaluate_text(ck.model, ck.vocab, corpus.read_text())
    assert s.tokens == len(corpus.read_text()) - 1 and s.skipped == 0
    assert f"{s.perplexity:.3f}" in out
    # unseen characters are counted, not a crash
    odd = tmp_path / "odd.txt"
    odd.write_text("the cat \u2603 sat on the mat\n" * 5)
    assert main(["eval", str(trained), str(odd), "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "5 characters" in out and "not in the vocabulary" in out


def test_evaluate_text_matches_the_model_loss(tmp_path, trained):
    from rnn_gpu.lm import evaluate_text

    ck = load_checkpoint(trained, backend="numpy")
    text = "the cat sat on the mat.\nthe dog ran.\n"
    ids = ck.vocab.encode(text)
    loss, _ = ck.model.loss(ids[:-1, None], ids[1:, None])
    s = evaluate_text(ck.model, ck.vocab, text, batch_size=1, bptt=1000)
    assert s.loss == pytest.approx(loss / (len(ids) - 1), rel=1e-5)
    seen = []
    s4 = evaluate_text(ck.model, ck.vocab, text, batch_size=4, bptt=3,
                       progress=lambda done, total: seen.append((done, total)))
    assert s4.tokens == len(ids) - 1 and math.isfinite(s4.loss)
    assert seen == [(k, 3) for k in (1, 2, 3)]  # 35 targets in 4 streams of 9, chunks of 3


@pytest.mark.gpu
def test_eval_and_log_prob_on_the_gpu_match_numpy(trained):
    import rnn_gpu
    from rnn_gpu.lm import evaluate_text, next_token_log_probs

    if not rnn_gpu.backend.gpu_available():
        pytest.skip(f"no usable GPU: {rnn_gpu.backend.cupy_unavailable_reason()}")
    text = make_text(20)
    cpu, gpu = (load_checkpoint(trained, backend=b) for b in ("numpy", "cupy"))
    a, b = (evaluate_text(c.model, c.vocab, text) for c in (cpu, gpu))
    assert b.tokens == a.tokens and b.loss == pytest.approx(a.loss, rel=1e-5)
    np.testing.assert_allclose(next_token_log_probs(gpu.model, gpu.vocab, text[:50]),
                               next_token_log_probs(cpu.model, cpu.vocab, text[:50]), atol=1e-5)


def test_info_checkpoint(trained, capsys):
    assert main(["info", str(trained)]) == 0
    out = capsys.readouterr().out
    for word in ("hidden", "vocabulary", "steps", "epochs", "best", "valid ppl", "format version",
                 "written by rnn-gpu", "optimizer"):
        assert word in out, word
    assert main(["info", str(trained.parent / "nope.npz")]) == 2


def test_sample_defaults(tmp_path, corpus, capsys, monkeypatch):
    from rnn_gpu.lm import TrainConfig

    p = build_parser()
    args = p.parse_args(["sample"])
    assert args.temperature == TrainConfig().sample_temperature == 0.8
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(corpus), "--max-steps", "2", "--sample-length", "0", *SMALL]) == 0
    capsys.readouterr()
    assert main(["sample", "--length", "10", "--backend", "numpy"]) == 0
    assert len(capsys.readouterr().out) == 11


def test_log_prob_is_the_log_softmax_of_forward(trained):
    from rnn_gpu import RNN

    ck = load_checkpoint(trained, backend="numpy")
    x = np.array([[1, 2], [3, 4], [5, 6]])
    lp = ck.model.log_prob(x)
    logits, _ = ck.model.forward(x)
    z = logits.astype(np.float64)
    want = z - z.max(-1, keepdims=True)
    want -= np.log(np.exp(want).sum(-1, keepdims=True))
    assert lp.shape == (3, 2, ck.model.output_size)
    np.testing.assert_allclose(lp, want, atol=1e-5)
    with pytest.raises(ValueError, match="softmax"):
        RNN(3, 4, 2, backend="numpy", output="linear").log_prob(np.zeros((2, 1), dtype=int))


def test_next_token_log_probs_helper(trained):
    from rnn_gpu.lm import next_token_log_probs

    ck = load_checkpoint(trained, backend="numpy")
    lp = next_token_log_probs(ck.model, ck.vocab, "the cat")
    assert lp.shape == (7, len(ck.vocab))
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-5)


# -------------------------------------------------------------------------------------
# Messages and codes


CASES = {
    "cupy-missing-train": (["train", "DATA", "X", "--backend", "cupy"], "--backend numpy"),
    "negative-seed": (["train", "DATA", "X", "--seed", "-1"], "--seed"),
    "nan-weights": (["sample", "NAN", "--backend", "numpy"], "NAN"),
    "unknown-activation": (["sample", "ACT", "--backend", "numpy"], "ACT"),
    "unknown-activation-resume": (["train", "--resume", "ACT", "--no-progress"], "ACT"),
    "random-bytes": (["sample", "RAND", "--backend", "numpy"], "not an .npz"),
    "vocab-size-char": (["train", "DATA", "X", "--vocab-size", "50"], "--level word"),
    "cupy-missing-sample": (["sample", "CK", "--backend", "cupy"], "--backend numpy"),
    "negative-sample-seed": (["sample", "CK", "--seed", "-2"], "--seed"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_input_problems_exit_2_with_one_line(case, tmp_path, corpus, trained, capsys, monkeypatch):
    import rnn_gpu.backend as be

    monkeypatch.setattr(be, "_probe_cupy", lambda: (None, "CuPy is not installed", None))
    be._cupy_backend.cache_clear()
    files = {"NAN": tmp_path / "nan.npz", "ACT": tmp_path / "act.npz", "RAND": tmp_path / "rand.npz",
             "CK": trained}
    _rewrite(trained, files["NAN"], param=("W", np.nan))
    _rewrite(trained, files["ACT"], model={"hidden_activation": "swish"})
    files["RAND"].write_bytes(np.random.default_rng(0).bytes(4096))
    x = ["--out", str(tmp_path / "x.npz"), "--batch-size", "4", "--bptt", "10", "--no-progress"]
    argv, pattern = CASES[case]
    argv = [a for w in argv for a in (["--data", str(corpus)] if w == "DATA" else x if w == "X"
                                      else [str(files[w])] if w in files else [w])]
    pattern = str(files[pattern]) if pattern in files else pattern
    try:
        rc = main(argv)
    finally:
        be._cupy_backend.cache_clear()
    line = assert_one_line_error(capsys, rc, pattern)
    assert rc == 2, line
    assert "allow_pickle" not in line and "expected finite" not in line
    assert "backend='numpy'" not in line
    assert not (tmp_path / "x.npz").exists()


def _rewrite(src, dst, param=None, model=None):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if param:
        arrays[f"param/{param[0]}"] = arrays[f"param/{param[0]}"].copy()
        arrays[f"param/{param[0]}"].flat[0] = param[1]
    if model:
        meta = json.loads(arrays["meta"].tobytes())
        meta["model"].update(model)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(dst, **arrays)


def test_disk_full_mid_run_names_the_path_and_keeps_the_checkpoint(tmp_path, corpus, trained,
                                                                   capsys, monkeypatch):
    import rnn_gpu.lm.checkpoint as ckmod

    before = trained.read_bytes()

    def full(f, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckmod, "_write_arrays", full)
    rc = main(["train", "--resume", str(trained), "--max-steps", "8", "--no-progress"])
    line = assert_one_line_error(capsys, rc, str(trained))
    assert rc == 1 and "No space left" in line
    assert trained.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_truncate_0_is_accepted(tmp_path, corpus, capsys):
    assert train(corpus, tmp_path / "x.npz", "--truncate", "0") == 0


def _bar_text(**stats) -> str:
    from rich.console import Console

    from rnn_gpu.lm.report import Report

    r = Report(Console(file=io.StringIO(), width=80, force_terminal=True), True)
    r.start_progress(1000)
    try:
        r.progress(500, **stats)
        r._progress._tasks[r._task].start_time = r._progress.get_time() - 3675  # 1:01:15
        probe = Console(file=io.StringIO(), width=80)
        probe.print(r._progress.make_tasks_table(r._progress.tasks))
    finally:
        r.stop_progress()
    return probe.file.getvalue()


def test_progress_bar_fits_80_columns():
    text = _bar_text(step=500, tokens_per_s=123456.0, train_loss=1.2345, lr=2e-3)
    assert len(text.strip().splitlines()) == 1, text
    for s in ("step 500", "123.5k tok/s", "loss 1.234", "ppl 3.44", "lr 2.0e-03", "1:01:15"):
        assert s in text, (s, text)
    wide = _bar_text(step=999999, tokens_per_s=9999000.0, train_loss=7.2345, lr=2e-3)
    assert len(wide.strip().splitlines()) == 1 and "\u2026" not in wide and "1:01:15" in wide, wide
