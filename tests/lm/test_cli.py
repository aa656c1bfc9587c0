"""The rnn-gpu command line (rnn_gpu.cli): commands, and one clear line for every bad input."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from rnn_gpu.lm.checkpoint import load_checkpoint
from rnn_gpu.cli import main

from .test_train import make_text

SMALL = ["--hidden", "16", "--batch-size", "4", "--bptt", "10", "--backend", "numpy",
         "--no-progress"]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(80))
    return p


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    ck = tmp_path / "ck.npz"
    assert main(["train", "--data", str(corpus), "--out", str(ck), "--max-steps", "6",
                 "--sample-length", "0", *SMALL]) == 0
    capsys.readouterr()
    return ck


def assert_one_line_error(capsys, rc, pattern=None):
    out = capsys.readouterr()
    assert rc != 0
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("rnn-gpu"), lines[0]
    assert "Traceback" not in out.err + out.out
    if pattern:
        assert pattern in lines[0], lines[0]
    return lines[0]


def test_train_end_to_end(tmp_path, corpus, capsys):
    ck = tmp_path / "ck.npz"
    rc = main(["train", "--data", str(corpus), "--out", str(ck), "--max-steps", "90",
               "--eval-every", "30", "--lr", "0.01", "--sample-length", "40", *SMALL])
    out = capsys.readouterr().out
    assert rc == 0
    assert "valid loss" in out and "stopped: reached --max-steps 90" in out and "sample" in out
    hist = load_checkpoint(ck).train_state["history"]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert load_checkpoint(ck).train_state["step"] == 90


def test_sample_command_is_deterministic(trained, capsys):
    args = ["sample", str(trained), "--length", "50", "--seed", "3", "--backend", "numpy"]
    assert main(args) == 0
    a = capsys.readouterr().out
    assert main(args) == 0
    b = capsys.readouterr().out
    assert a == b and len(a) == 51
    assert main(["sample", str(trained), "--length", "20", "--temperature", "0",
                 "--prime", "the cat", "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.startswith("the cat")


def test_ctrl_c_saves_the_run_and_exits_130(tmp_path, corpus, capsys, monkeypatch):
    from rnn_gpu.lm.trainer import Trainer

    real = Trainer.train_step

    def step_then_ctrl_c(self):
        out = real(self)
        if self.state.step == 3:
            self.interrupt()  # what the SIGINT handler does
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    ck = tmp_path / "ck.npz"
    rc = main(["train", "--data", str(corpus), "--out", str(ck), "--max-steps", "50", *SMALL])
    out = capsys.readouterr()
    assert rc == 130
    assert "stopped: interrupted" in out.out and "sample" not in out.out
    assert f"rnn-gpu train --resume {ck}" in out.err
    assert load_checkpoint(ck).train_state["step"] == 3


def test_resume_via_cli_matches_uninterrupted(tmp_path, corpus, capsys):
    common = ["train", "--data", str(corpus), "--sample-length", "0", "--eval-every", "4", *SMALL]
    assert main([*common, "--out", str(tmp_path / "a.npz"), "--max-steps", "12"]) == 0
    assert main([*common, "--out", str(tmp_path / "b.npz"), "--max-steps", "5"]) == 0
    assert main(["train", "--resume", str(tmp_path / "b.npz"), "--max-steps", "12", "--no-progress",
                 "--sample-length", "0"]) == 0
    capsys.readouterr()
    a, b = load_checkpoint(tmp_path / "a.npz"), load_checkpoint(tmp_path / "b.npz")
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_info_and_gradcheck(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "backend" in out
    assert main(["gradcheck", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "18 of 18 cases" in out and "FAIL" not in out


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert "rnn-gpu" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "--time-budget" in capsys.readouterr().out


def test_cuda_graph_option(capsys):
    assert main(["train", "--help"]) == 0
    assert "--no-cuda-graph" in capsys.readouterr().out
    from rnn_gpu.cli import build_parser
    from rnn_gpu.lm import TrainConfig

    assert build_parser().parse_args(["train", "--no-cuda-graph"]).cuda_graph is False
    assert "cuda_graph" not in vars(build_parser().parse_args(["train"]))
    assert TrainConfig().cuda_graph is True  # the default: captured steps on CuPy


def test_bench_missing_module_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rnn_gpu.bench", None)
    assert_one_line_error(capsys, main(["bench"]), "rnn_gpu.bench is missing")


# -------------------------------------------------------------------------------------
# Bad input: one line on stderr, a non-zero status, the existing checkpoint untouched.


def _bad_inputs(tmp_path, corpus, ck):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("d\xe9j\xe0 vu\n".encode("latin-1") * 50)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abc\n")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(ck.read_bytes()[:300])
    old = tmp_path / "old.npz"
    with np.load(ck, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.frombuffer(
        arrays["meta"].tobytes().replace(b'"format_version": 1', b'"format_version": 0'), np.uint8)
    np.savez(old, **arrays)
    other = tmp_path / "other.txt"
    other.write_text(make_text(80) + "Zebra & Quokka\n")
    out = ["--out", str(ck)]
    d = ["--data", str(corpus)]
    return [
        (["train", "--data", str(tmp_path / "missing.txt"), *out], "not found"),
        (["train", "--data", str(empty), *out], "empty"),
        (["train", "--data", str(latin), *out], "not valid UTF-8"),
        (["train", "--data", str(tiny), *out], "too small"),
        (["train", *d, "--valid", str(tmp_path / "nope.txt"), *out], "not found"),
        (["train", *d, "--hidden", "0", *out], "--hidden"),
        (["train", *d, "--batch-size", "-1", *out], "--batch-size"),
        (["train", *d, "--bptt", "0", *out], "--bptt"),
        (["train", *d, "--lr", "0", *out], "--lr"),
        (["train", *d, "--lr", "-0.1", *out], "--lr"),
        (["train", *d, "--epochs", "0", *out], "--epochs"),
        (["train", *d, "--hidden", "ten", *out], "invalid int value"),
        (["train", "--resume", str(truncated), "--out", str(ck)], "truncated or corrupt"),
        (["train", "--resume", str(old), "--out", str(ck)], "format version 0"),
        (["train", "--resume", str(ck), "--data", str(other)], "vocabulary mismatch"),
        (["train", "--resume", str(ck), "--hidden", "99"], "differs from the checkpoint"),
        (["train", "--resume", str(tmp_path / "none.npz"), "--out", str(ck)], "not found"),
        (["sample", str(truncated)], "truncated or corrupt"),
        (["sample", str(old)], "format version 0"),
        (["sample", str(ck), "--length", "-3"], "--length"),
        (["sample", str(ck), "--temperature", "-1"], "--temperature"),
        (["sample", str(ck), "--prime", "\u2603"], "not in the vocabulary"),
    ]


def test_every_bad_input_gets_one_line_and_keeps_the_checkpoint(tmp_path, corpus, trained, capsys):
    before = trained.read_bytes()
    mtime = os.stat(trained).st_mtime_ns
    for argv, pattern in _bad_inputs(tmp_path, corpus, trained):
        rc = main([*argv, "--no-progress"] if argv[0] == "train" else argv)
        try:
            assert_one_line_error(capsys, rc, pattern)
        except AssertionError as e:
            raise AssertionError(f"{argv}: {e}") from None
        assert trained.read_bytes() == before, argv
        assert os.stat(trained).st_mtime_ns == mtime, argv
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, corpus, trained, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = main(["train", "--data", str(corpus), "--out", str(trained), "--max-steps", "2",
               "--plot", str(tmp_path / "c.png"), *SMALL])
    assert_one_line_error(capsys, rc, "pip install 'rnn-gpu[plot]'")


def test_plot_writes_a_png(tmp_path, corpus, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "c.npz"), "--max-steps", "6",
                 "--eval-every", "2", "--sample-length", "0", "--plot", str(png), *SMALL]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_subprocess_smoke(tmp_path, corpus):
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    ck = tmp_path / "s.npz"
    r = subprocess.run([sys.executable, "-m", "rnn_gpu", "train", "--data", str(corpus), "--out", str(ck),
                        "--max-steps", "4", "--sample-length", "20", *SMALL],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "valid loss" in r.stdout and ck.exists()
    r = subprocess.run([sys.executable, "-m", "rnn_gpu", "train", "--data", str(tmp_path / "x.txt")],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not found" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "rnn-gpu-checkpoint.npz").exists()


def test_messages_name_the_options(tmp_path, corpus, trained, capsys):
    # the library names its arguments (lr, length, ...); the command line names its options
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abcdefghij" * 5)
    d = ["--data", str(corpus), "--out", str(tmp_path / "x.npz"), "--no-progress"]
    ck = str(trained)
    cases = [
        (["train", *d, "--lr", "-0.1"], "--lr: expected a positive number, got -0.1"),
        (["train", *d, "--momentum", "0.5"], "--momentum applies to --optimizer sgd only, not adam"),
        (["train", *d, "--optimizer", "sgd", "--momentum", "1.5"],
         "--momentum: expected a number in [0, 1), got 1.5"),
        (["train", *d, "--min-improvement", "0.5"],
         "--min-improvement: expected a number >= 1, got 0.5"),
        (["train", *d, "--valid-fraction", "1.5"],
         "--valid-fraction: expected a number in (0, 1), got 1.5"),
        (["train", *d, "--vocab-size", "2"], "--vocab-size: expected an integer >= 3, got 2"),
        (["train", "--data", str(tiny), "--no-progress"],
         "training text is too small: 45 tokens, but one batch of one chunk needs batch_size * "
         "(bptt + 1) = 32 * (64 + 1) = 2080; use a larger text or smaller --batch-size / --bptt"),
        (["sample", ck, "--length", "-3"], "--length: expected a non-negative integer, got -3"),
        (["sample", ck, "--temperature", "-1"], "--temperature: expected a number >= 0, got -1.0"),
        (["sample", ck, "--prime", "\u2603"], "--prime holds '\u2603', which is not in the vocabulary"),
    ]
    for argv, message in cases:
        rc = main(argv)
        assert rc == 2, argv
        assert assert_one_line_error(capsys, rc) == f"rnn-gpu: error: {message}", argv


def test_choices_are_the_library_constants():
    from rnn_gpu.backend import BACKENDS
    from rnn_gpu.cli import build_parser
    from rnn_gpu.lm import INPUT_INITS, LEVELS, OPTIMIZERS, SCHEDULES
    from rnn_gpu.lm.config import OUTPUT_LAYERS
    from rnn_gpu.model import DTYPES
    from rnn_gpu.reference import ACTIVATIONS, CELLS

    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    choices = {name: {a.option_strings[0]: tuple(a.choices) for a in sub._actions if a.choices}
               for name, sub in commands.choices.items()}
    assert choices["train"] == {"--level": LEVELS, "--activation": ACTIVATIONS,
                                "--input-init": INPUT_INITS, "--dtype": DTYPES,
                                "--backend": BACKENDS, "--optimizer": OPTIMIZERS,
                                "--schedule": SCHEDULES, "--output": OUTPUT_LAYERS,
                                "--cell": CELLS}
    assert choices["sample"] == {"--backend": BACKENDS}
    assert choices["gradcheck"] == {"--backend": BACKENDS, "--cell": CELLS}
