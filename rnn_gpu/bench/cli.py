"""The command line of `rnn-gpu bench` (and ``python -m rnn_gpu.bench``): options, the
order the levels run in, the results file and the exit status."""
from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
import time
from pathlib import Path

from ..backend import Backend, cupy_unavailable_reason, get_backend
from .kernel_level import bench_kernels, measure_peaks
from .peers import torch_unavailable_reason
from .plot import plot_sweeps
from .records import (Context, _torch_versions, collect_versions, compare, device_of,
                      device_slug, load_rows, write_rows)
from .step_level import (DEFAULT_SHAPES, PEERS, QUICK_SHAPES, SEED_MAX_WORK, bench_steps,
                         bench_sweeps)
from .timing import blas_threads

# The first line of the package's docstring, which `rnn-gpu bench --help` shows.
DESCRIPTION = ("Benchmark the kernels, the training step and step-time sweeps, validating "
               "before timing.")
# The bench no longer runs the test suite: that needs the source tree, not the package.
GPU_TESTS_MOVED = ("rnn-gpu: error: --gpu-tests: the GPU test summary moved to "
                   "bench/gpu_check.sh; run it from a source checkout on a GPU machine: "
                   "bash bench/gpu_check.sh OUTDIR [--quick]")


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """'64,32,256,65;35,20,200,10000' -> [(64, 32, 256, 65), (35, 20, 200, 10000)]."""
    out = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            vals = tuple(int(v) for v in part.split(","))
        except ValueError:
            vals = ()
        if len(vals) != 4 or min(vals) < 1:
            raise argparse.ArgumentTypeError(
                f"expected T,B,H,V (four positive integers) separated by ';', got {part!r}")
        out.append(vals)
    if not out:
        raise argparse.ArgumentTypeError("expected at least one shape T,B,H,V")
    return out


def parse_peers(text: str) -> set[str]:
    items = {p.strip() for p in text.split(",") if p.strip()}
    if items <= {"none"}:
        return set()
    if "all" in items:
        return set(PEERS)
    bad = items - set(PEERS)
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(PEERS)}, all or none, "
            f"got {', '.join(sorted(bad))}")
    return items


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `rnn-gpu bench`."""
    B = argparse.BooleanOptionalAction
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few repetitions (under a minute on a 2-core CPU)")
    p.add_argument("--kernels", action=B, default=True, help="kernel level (default on)")
    p.add_argument("--steps", action=B, default=True, help="training-step level (default on)")
    p.add_argument("--sweeps", action=B, default=None,
                   help="step time against T, B and H (default: on when --plot is given)")
    p.add_argument("--only", choices=("kernels", "steps", "sweeps"),
                   help="run this level alone")
    p.add_argument("--backend", default="all", choices=("all", "auto", "numpy", "cupy"),
                   help="backends to time: all available (default), numpy or cupy")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--shapes", type=parse_shapes, metavar="T,B,H,V;...",
                   help="training-step shapes (default: the engine's three, or a small one "
                        "with --quick); the first is the centre of the sweeps")
    p.add_argument("--kernel", action="append", metavar="NAME",
                   help="time only this kernel (repeatable)")
    p.add_argument("--peers", type=parse_peers, default=None, metavar="LIST",
                   help="peers for the step level: torch, seed, all (default) or none")
    p.add_argument("--seed-max-work", type=float, default=SEED_MAX_WORK, metavar="W",
                   help="run the seed loop only where T*B*H*(T*H+V) <= W "
                        f"(default {SEED_MAX_WORK:.2g})")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions after warm-up (default 11, 5 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warm-up repetitions (default 2, 1 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch CPU threads (default: NumPy's BLAS threads)")
    p.add_argument("--memory", action=B, default=True,
                   help="peak memory of one step (default on)")
    p.add_argument("--gpu-tests", action=B, default=None,
                   help="gone: the GPU test summary is bench/gpu_check.sh in the source tree "
                        "(--gpu-tests exits 2 saying so; --no-gpu-tests does nothing)")
    p.add_argument("--out", metavar="FILE.jsonl", help="write the results as JSON lines")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="compare two result files (ratios B/A) and exit")
    p.add_argument("--plot", metavar="PNG", help="draw the sweeps (needs matplotlib)")
    p.add_argument("--from", dest="from_file", metavar="FILE.jsonl",
                   help="with --plot: draw the sweeps of an existing result file, run nothing")


def _command_line(args: argparse.Namespace) -> str:
    argv = getattr(args, "argv", None)
    if argv is not None:  # main() of this module
        return shlex.join(["python", "-m", "rnn_gpu.bench", *argv])
    argv0 = Path(sys.argv[0])
    if argv0.name == "__main__.py" and argv0.parent.name == "rnn_gpu":  # python -m rnn_gpu
        return shlex.join(["python", "-m", "rnn_gpu", *sys.argv[1:]])
    if argv0.name in ("cli.py", "__main__.py", "-m", "-c"):
        return shlex.join(["python", "-m", "rnn_gpu.bench", *sys.argv[1:]])
    return shlex.join([argv0.name, *sys.argv[1:]])


def _backends(ctx: Context) -> list[Backend]:
    want = ctx.args.backend
    out = []
    if want in ("all", "auto", "numpy"):
        out.append(get_backend("numpy"))
    if want in ("all", "auto", "cupy"):
        why = cupy_unavailable_reason()
        if why is None:
            out.append(get_backend("cupy"))
        else:
            ctx.skip("backend cupy (GPU kernels, GPU steps, CUDA graphs, PyTorch CUDA)", why)
    return out


def run(args: argparse.Namespace, backends: list[Backend] | None = None) -> int:
    """Run the benchmark; 0 when everything validated, 1 when something FAILED.

    backends: the backends to time (default: those ``--backend`` names that are usable
    here); a caller may hand its own, such as the tests' emulated device."""
    from rich.console import Console  # noqa: PLC0415

    # Tables keep their columns when the output goes to a file or a pipe.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    if getattr(args, "gpu_tests", None):
        print(GPU_TESTS_MOVED, file=sys.stderr)
        return 2
    if args.compare:
        return compare(args.compare[0], args.compare[1], console)
    if args.from_file:
        if not args.plot:
            console.print("--from needs --plot PNG")
            return 2
        return 0 if plot_sweeps(load_rows(args.from_file), args.plot, console) else 1

    args.reps = args.reps if args.reps is not None else (5 if args.quick else 11)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.reps < 1 or args.warmup < 0:
        console.print("--reps must be >= 1 and --warmup >= 0")
        return 2
    shapes = args.shapes or list(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    levels = {"kernels": args.kernels, "steps": args.steps,
              "sweeps": bool(args.plot) if args.sweeps is None else args.sweeps}
    if args.only:
        levels = {k: k == args.only for k in levels}
    peer_set = set(PEERS) if args.peers is None else args.peers

    ctx = Context(args, console, _command_line(args),
                  _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  collect_versions())
    ctx.peer_set = peer_set
    if "torch" in peer_set and (levels["steps"] or levels["sweeps"]):
        if torch_unavailable_reason("cpu") is None:
            import torch  # noqa: PLC0415

            torch.set_num_threads(args.threads or blas_threads())
            _torch_versions(ctx)

    t0 = time.perf_counter()
    backends = _backends(ctx) if backends is None else list(backends)
    for be in backends:
        ctx.peaks[be.name] = measure_peaks(ctx, be, args.dtype)
    if levels["kernels"]:
        for be in backends:
            bench_kernels(ctx, be, args.dtype)
    if levels["steps"]:
        bench_steps(ctx, backends, args.dtype, shapes)
    if levels["sweeps"]:
        bench_sweeps(ctx, backends, args.dtype, shapes[0])
    if args.plot:
        plot_sweeps(ctx.rows, args.plot, console)

    if args.out:
        write_rows(ctx.rows, args.out)
        console.print(f"{len(ctx.rows)} results written to {args.out}")
    elif backends:
        be = backends[-1]
        console.print("to keep these results: --out bench/results/"
                      f"{'gpu' if be.is_gpu else 'cpu'}-{device_slug(device_of(be))}.jsonl")
    console.print(f"done in {time.perf_counter() - t0:.1f} s"
                  + (f"; [bold red]{ctx.failed} FAILED[/bold red]" if ctx.failed else
                     "; every timed kernel and step was validated first"))
    return 1 if ctx.failed else 0


def main(argv: list[str] | None = None, backends: list[Backend] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m rnn_gpu.bench", description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(argv)
    args.argv = argv
    return run(args, backends)

