"""Plots: step time against T, B and H, from the sweep rows of a run or a result file."""
from __future__ import annotations


def plot_sweeps(rows: list[dict], path: str, console) -> bool:
    """Step time against T, B and H, one panel each, one line per implementation."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.ticker import ScalarFormatter  # noqa: PLC0415
    except ImportError:
        console.print(f"--plot: matplotlib is not installed (pip install 'rnn-gpu[plot]'); "
                      f"{path} not written")
        return False
    sw = [r for r in rows if r.get("kind") == "sweep" and r.get("status") == "ok"]
    if not sw:
        console.print(f"--plot: no sweep results to draw; {path} not written")
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for ax, axis in zip(axes, ("T", "B", "H")):
        lines: dict[str, list[tuple[int, float]]] = {}
        for r in sw:
            if r["axis"] == axis:
                lines.setdefault(f"{r['impl']} ({r['backend']})", []).append(
                    (r["value"], r["median_ms"]))
        for label, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        base = sw[0]["base"]
        fixed = ", ".join(f"{k}={v}" for k, v in zip("TBHV", base) if k != axis)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel(axis)
        ax.set_ylabel("step time (ms, median)")
        ax.set_title(f"varying {axis} ({fixed})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    devices = sorted({r["device"] for r in sw})
    fig.suptitle(f"Training step, {sw[0]['dtype']}: {'; '.join(devices)} ({sw[0]['date'][:10]})",
                 fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    console.print(f"plot written to {path}")
    return True

