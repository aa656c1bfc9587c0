"""`rnn-gpu bench`: output format, validation before timing, --compare, plots."""
from __future__ import annotations

import argparse
import builtins
import json

import numpy as np
import pytest

from rnn_gpu import bench
from rnn_gpu.ops import numpy_ops as kernels  # the twins; REGISTRY below
from rnn_gpu.ops import registry
from rnn_gpu.bench import cli as bench_cli
from rnn_gpu.bench import kernel_level, peers

FIELDS = ("name", "device", "backend", "dtype", "shape", "median_ms", "min_ms", "max_ms",
          "peer", "peer_median_ms", "speedup", "versions", "command", "date")


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "quick.jsonl"
    rc = bench.main(["--quick", "--peers", "seed", "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    for r in rows:
        missing = [f for f in FIELDS if f not in r]
        assert not missing, (r["name"], missing)
        assert r["command"].startswith("python -m rnn_gpu.bench --quick")
        assert r["versions"]["numpy"] == np.__version__
    by_name = {r["name"]: r for r in rows}

    # this device's peaks, measured by the bench itself
    assert by_name["peak:matmul"]["gflops"] > 0
    assert by_name["peak:copy"]["gbps"] > 0

    # every kernel of the registry: validated, then timed, with derived figures
    for name in registry.REGISTRY:
        r = by_name[f"kernel:{name}:numpy"]
        assert r["status"] == "ok" and r["validated"] is True
        assert r["max_rel_err"] < bench.KERNEL_TOL["float32"]
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["gbps"] > 0 and r["pct_peak_bw"] > 0

    # the training step, ours beside the seed's loop, both checked against float64
    ours, seed = by_name["step:rnn_gpu"], by_name["step:seed-loop"]
    for r in (ours, seed):
        assert r["validated"] is True and r["max_rel_err"] < bench.STEP_TOL["float32"]
        assert r["shape"] == "T=16,B=8,H=64,V=65" and r["reps"] == 5
        assert r["pct_peak_flops"] > 0 and r["peak_matmul_beside"] is True
    assert ours["peer"] == "seed-loop"
    assert ours["speedup"] == pytest.approx(seed["median_ms"] / ours["median_ms"])
    assert ours["workspace_bytes"] > 0

    # what is missing is skipped and named
    if bench.cupy_unavailable_reason() is not None:
        skips = [r for r in rows if r["status"] == "skipped"]
        assert any("cupy" in r["name"] and r["reason"] for r in skips)
    text = capsys.readouterr().out
    assert "validated" in text and "results written" in text


def test_kernel_seam_on_the_cpu():
    import rnn_gpu

    assert kernel_level.kernel_specs() is registry.REGISTRY
    cpu = rnn_gpu.get_backend("numpy")
    for spec in registry.REGISTRY.values():
        assert kernel_level.kernel_versions(spec, cpu) == {"numpy": spec.twin}


def test_broken_kernel_version_fails_and_is_not_timed(tmp_path, monkeypatch, capsys):
    spec = registry.REGISTRY["act_forward"]
    calls = []

    def broken(a, h_prev, keep, act):
        calls.append(1)
        kernels.act_forward(a, h_prev, keep, act)
        a *= 1.01

    monkeypatch.setattr(registry, "REGISTRY", {"act_forward": spec})
    monkeypatch.setattr(kernel_level, "kernel_versions",
                        lambda s, be: {"numpy": s.twin, "broken": broken})
    out = tmp_path / "k.jsonl"
    rc = bench.main(["--quick", "--only", "kernels", "--out", str(out)])
    assert rc == 1
    rows = {r["name"]: r for r in _rows(out)}
    bad = rows["kernel:act_forward:broken"]
    assert bad["status"] == "FAILED" and bad["validated"] is False
    assert bad["median_ms"] is None and "differs from the twin" in bad["reason"]
    assert len(calls) == 1  # the validation run only
    assert rows["kernel:act_forward:numpy"]["status"] == "ok"
    assert "FAILED" in capsys.readouterr().out


def test_broken_peer_fails_the_step_level(tmp_path, monkeypatch):
    real = peers.SeedLoop.loss_and_grads

    def off(self, x, y):
        loss, grads = real(self, x, y)
        grads["W"] = grads["W"] * 2
        return loss, grads

    monkeypatch.setattr(peers.SeedLoop, "loss_and_grads", off)
    out = tmp_path / "s.jsonl"
    rc = bench.main(["--quick", "--only", "steps", "--peers", "seed", "--no-memory",
                     "--shapes", "5,3,8,11", "--reps", "2", "--out", str(out)])
    assert rc == 1
    rows = {r["name"]: r for r in _rows(out)}
    assert rows["step:seed-loop"]["status"] == "FAILED"
    assert rows["step:seed-loop"]["median_ms"] is None
    assert rows["step:rnn_gpu"]["status"] == "ok" and rows["step:rnn_gpu"]["peer"] is None


def test_torch_peer_row(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "t.jsonl"
    rc = bench.main(["--only", "steps", "--peers", "torch", "--no-memory", "--threads", "1",
                     "--shapes", "6,4,16,13", "--reps", "3", "--warmup", "1", "--out", str(out)])
    assert rc == 0
    rows = {r["name"]: r for r in _rows(out)}
    t = rows["step:torch"]
    assert t["backend"] == "torch-cpu" and t["validated"] is True and t["threads"] == 1
    assert rows["step:rnn_gpu"]["peer"] == "torch-cpu"
    assert rows["step:rnn_gpu"]["speedups"]["torch-cpu"] > 0


def test_timed_steps_read_their_loss_back():
    # Our step returns the loss as a float (a host sync on a GPU); the timed PyTorch step
    # must do the same, or it could queue work past the timer's end event.
    pytest.importorskip("torch")
    import rnn_gpu

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 13, (6, 4)), rng.integers(0, 13, (6, 4))
    model = rnn_gpu.RNN(13, 16, 13, backend="numpy", seed=0)
    ours = bench._ours(rnn_gpu.get_backend("numpy"), model, x, y)
    theirs = bench._torch(model, x, y, "cpu", "float32", 1)
    loss = theirs.fn()
    assert type(loss) is float and type(ours.fn()[0]) is float
    assert loss == pytest.approx(ours.fn()[0], rel=1e-5)


def _write(path, rows):
    base = {"device": "d", "dtype": "float32", "versions": {}, "command": "c", "date": "2025-01-01"}
    path.write_text("".join(json.dumps({**base, **r}) + "\n" for r in rows))


def test_compare(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(a, [{"name": "step:rnn_gpu", "backend": "numpy", "shape": "T=1", "median_ms": 4.0},
               {"name": "kernel:x:numpy", "backend": "numpy", "shape": "N=1", "median_ms": 1.0},
               {"name": "skip:cupy", "backend": "", "shape": "", "median_ms": None}])
    _write(b, [{"name": "step:rnn_gpu", "backend": "numpy", "shape": "T=1", "median_ms": 2.0},
               {"name": "step:rnn_gpu", "backend": "numpy", "shape": "T=2", "median_ms": 9.0}])
    assert bench.main(["--compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "0.500" in text  # 2.0 / 4.0
    assert "1 timed rows only in A, 1 only in B" in text


def test_compare_through_the_cli(tmp_path, capsys):
    cli = pytest.importorskip("rnn_gpu.cli")
    a = tmp_path / "a.jsonl"
    _write(a, [{"name": "step:rnn_gpu", "backend": "numpy", "shape": "T=1", "median_ms": 3.0}])
    assert cli.main(["bench", "--compare", str(a), str(a)]) == 0
    assert "1.00" in capsys.readouterr().out


def test_compare_rejects_a_bad_line(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"a.jsonl:1: expected one JSON object per line"):
        bench.compare(str(a), str(a), None)


def test_gpu_tests_option_says_where_the_summary_went(tmp_path, capsys):
    cli = pytest.importorskip("rnn_gpu.cli")
    out = tmp_path / "none.jsonl"
    for run in (lambda: bench.main(["--quick", "--gpu-tests", "--out", str(out)]),
                lambda: cli.main(["bench", "--gpu-tests"])):
        assert run() == 2
        text = capsys.readouterr()
        lines = text.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rnn-gpu: error: --gpu-tests")
        assert "bench/gpu_check.sh OUTDIR" in lines[0] and not text.out
    assert not out.exists()  # nothing run


def test_the_bench_does_not_run_the_test_suite():
    import inspect

    import rnn_gpu.bench as pkg

    for mod in (pkg.cli, pkg.kernel_level, pkg.step_level, pkg.memory, pkg.records):
        src = inspect.getsource(mod)
        assert "pytest" not in src and "PYTHONPATH" not in src and '"tests"' not in src


def test_command_line_recorded(monkeypatch):
    assert bench.__doc__.splitlines()[0] == bench_cli.DESCRIPTION  # rnn-gpu bench --help
    ns = argparse.Namespace()
    for argv0, want in (("/x/rnn_gpu/__main__.py", "python -m rnn_gpu bench --quick"),
                        ("/usr/bin/rnn-gpu", "rnn-gpu bench --quick")):
        monkeypatch.setattr("sys.argv", [argv0, "bench", "--quick"])
        assert bench_cli._command_line(ns) == want


def test_parse_shapes_and_peers():
    assert bench.parse_shapes("64,32,256,65; 35,20,200,10000") == [(64, 32, 256, 65),
                                                                   (35, 20, 200, 10000)]
    for bad in ("64,32,256", "64,32,0,65", "a,b,c,d", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="T,B,H,V"):
            bench.parse_shapes(bad)
    assert bench.parse_peers("none") == set()
    assert bench.parse_peers("all") == {"torch", "seed"}
    with pytest.raises(argparse.ArgumentTypeError, match="jax"):
        bench.parse_peers("torch,jax")
    assert bench.step_flops(64, 32, 256, 65) == 6 * 64 * 32 * (256**2 + 256 * 65)


def test_sweep_points():
    pts = bench.sweep_points((16, 8, 64, 65), quick=True)
    assert [(a, v) for a, v, _ in pts] == [("T", 8), ("T", 16), ("T", 32), ("B", 4), ("B", 8),
                                          ("B", 16), ("H", 32), ("H", 64), ("H", 128)]
    assert pts[0][2] == (8, 8, 64, 65)


def _sweep_rows():
    rows = []
    for axis, value, shape in bench.sweep_points((8, 4, 16, 11), quick=True):
        rows.append({"kind": "sweep", "status": "ok", "axis": axis, "value": value,
                     "impl": "rnn_gpu", "backend": "numpy", "median_ms": 1.0 + value / 10,
                     "base": [8, 4, 16, 11], "device": "cpu", "dtype": "float32",
                     "date": "2025-01-01T00:00:00"})
    return rows


def test_plot_says_when_matplotlib_is_missing(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_mpl(name, *a, **kw):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    from rich.console import Console

    png = tmp_path / "s.png"
    assert bench.plot_sweeps(_sweep_rows(), str(png), Console(width=200)) is False
    text = capsys.readouterr().out.strip()
    assert "matplotlib is not installed" in text and len(text.splitlines()) == 1
    assert not png.exists()


def test_plot_from_a_result_file(tmp_path):
    pytest.importorskip("matplotlib")
    src, png = tmp_path / "s.jsonl", tmp_path / "s.png"
    src.write_text("".join(json.dumps(r) + "\n" for r in _sweep_rows()))
    assert bench.main(["--plot", str(png), "--from", str(src)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.gpu
def test_quick_on_the_gpu(tmp_path):
    """Every CUDA version validated and timed with events; eager and graphed steps."""
    import rnn_gpu

    out = tmp_path / "gpu.jsonl"
    rc = bench.main(["--quick", "--backend", "cupy", "--peers", "torch", "--no-gpu-tests",
                     "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["peak:matmul"]["backend"] == "cupy"
    gpu = rnn_gpu.get_backend("cupy")
    for name, spec in registry.REGISTRY.items():
        versions = kernel_level.kernel_versions(spec, gpu)
        assert versions, name
        for v in versions:
            r = by_name[f"kernel:{name}:{v}"]
            assert r["status"] == "ok" and r["validated"] is True, (name, v)
            assert r["peer"] == "numpy twin (host)" and r["speedup"] > 0
    steps = {(r["impl"], r["backend"]): r for r in rows if r.get("kind") == "step"}
    assert steps[("rnn_gpu", "cupy")]["validated"] is True
    assert steps[("rnn_gpu", "cupy")]["peak_mem_bytes"] > 0
    assert steps[("rnn_gpu-graph", "cupy")]["validated"] is True


def test_gpu_paths_on_the_emulator(tmp_path, monkeypatch):
    """The bench's GPU code (event timer, CUDA versions validated then timed beside the
    host twin, the step on the CUDA launchers, pool memory, the captured step) run on the
    CPU emulator (tests/cuda_emu/), handed to the bench as its "cupy" backend."""
    from ..helpers import cuda_device

    with cuda_device("emulated") as dev:
        monkeypatch.setattr(kernel_level, "matmul_sizes", lambda gpu, quick: 96)
        out = tmp_path / "emu.jsonl"
        rc = bench.main(["--quick", "--backend", "cupy", "--kernel", "softmax_xent",
                         "--kernel", "outer_accum", "--kernel", "bias_grad",
                         "--shapes", "6,4,24,17", "--peers", "seed", "--reps", "2",
                         "--warmup", "0", "--out", str(out)], backends=[dev.backend])
    assert rc == 0
    rows = _rows(out)
    for r in rows:
        assert not [f for f in FIELDS if f not in r], r["name"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["peak:matmul"]["backend"] == "cupy" and by_name["peak:copy"]["gbps"] > 0
    for name, version in (("softmax_xent", "fused"), ("outer_accum", "cublas"),
                          ("outer_accum", "tiled"), ("bias_grad", "colsum")):
        r = by_name[f"kernel:{name}:{version}"]
        assert r["backend"] == "cupy" and r["status"] == "ok" and r["validated"] is True
        assert r["max_rel_err"] < 1e-5 and r["median_ms"] > 0
        assert r["peer"] == "numpy twin (host)" and r["speedup"] > 0 and r["pct_peak_bw"] > 0
    step = by_name["step:rnn_gpu"]
    assert step["backend"] == "cupy" and step["validated"] is True
    assert step["peer"] == "seed-loop" and step["speedup"] > 0
    assert step["peak_mem_method"] == "CuPy memory pool growth over one step"
    assert step["peak_mem_bytes"] > 0 and step["workspace_bytes"] > 0
    graph = by_name["step:rnn_gpu-graph"]  # the emulator captures and replays the step
    assert graph["backend"] == "cupy" and graph["validated"] is True and graph["median_ms"] > 0
    assert not [n for n in by_name if n.startswith("skip:CUDA-Graph")]


def test_gpu_times_come_from_cupyx_profiler():
    from rnn_gpu.bench import timing

    seen = {}

    def benchmark(func, n_repeat, n_warmup):  # cupyx.profiler.benchmark's part used here
        seen.update(n_repeat=n_repeat, n_warmup=n_warmup)
        for _ in range(n_warmup + n_repeat):
            func()
        return type("Result", (), {"gpu_times": np.array([[0.004, 0.002, 0.003]])})()

    calls = []
    st = timing.cupy_stats(None, lambda: calls.append(1), reps=3, warmup=2, inner=4,
                           benchmark=benchmark)
    assert seen == {"n_repeat": 3, "n_warmup": 2} and len(calls) == 5 * 4
    assert st.times_ms == pytest.approx([1.0, 0.5, 0.75])  # seconds over 4 calls, in ms
    assert timing.gpu_timer(None, benchmark)(lambda: None, inner=2) == pytest.approx(2.0)
    cupy = pytest.importorskip("cupy")  # the real one: its own profiler is what is used

    assert timing._gpu_benchmark(cupy).__module__.startswith("cupyx.profiler")


def test_the_emulator_is_timed_by_cuda_events():
    from rnn_gpu.bench import timing

    from .. import cuda_emu

    cp = cuda_emu.fake_cupy()
    assert timing._gpu_benchmark(cp) is None
    calls = []
    st = timing.cupy_stats(cp, lambda: calls.append(1), reps=2, warmup=1, inner=3)
    assert len(calls) == 9 and len(st.times_ms) == 2 and min(st.times_ms) >= 0


def test_torch_timer_times_the_calls_it_is_given():
    pytest.importorskip("torch")
    from rnn_gpu.bench import timing

    calls = []
    ms = timing.torch_cuda_timer(lambda: calls.append(1), inner=3)
    assert ms > 0 and len(calls) == 3 + 2  # torch.utils.benchmark warms up with two calls
