"""Plots of a CPU benchmark run (the JSON of `python -m bench --json`), as PNG.

    python -m bench.plots RESULTS.json [--out-dir DIR]

Writes <stem>_times.png (median time per layer kind and pass, ours beside the PyTorch peer, one
panel per suite shape) and <stem>_roofline.png (arithmetic intensity against achieved GFLOP/s,
under the measured ceilings: NumPy's sgemm rate and the all-core copy bandwidth). Shared conv
reuses each weight N·P·Q times and sits near the compute roof; a locally connected layer uses
each weight N times and sits on the bandwidth slope: parameter sharing, measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

LAYERS = ("shared", "tiled", "local")
PASSES = ("forward", "backward")
COLORS = {"ours": "tab:blue", "torch": "tab:orange"}
MARKERS = {"shared": "o", "tiled": "s", "local": "^"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _results(doc):
    """{(shape, layer, pass, impl): result} of a CPU report."""
    return {(r["shape"], r.get("layer", "shared"), r["pass"], r["impl"]): r
            for r in doc["results"]}


def plot_times(doc, path):
    plt = _pyplot()
    res = _results(doc)
    shapes = list(doc.get("shapes", {})) or sorted({k[0] for k in res})
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 4), squeeze=False)
    groups = [(layer, p) for layer in LAYERS for p in PASSES]
    for ax, shape in zip(axes[0], shapes):
        for j, impl in enumerate(("ours", "torch")):
            xs, ys = [], []
            for i, (layer, p) in enumerate(groups):
                r = res.get((shape, layer, p, impl))
                if r is not None:
                    xs.append(i + (j - 0.5) * 0.38)
                    ys.append(r["median_s"] * 1e3)
            ax.bar(xs, ys, width=0.38, color=COLORS[impl],
                   label="ours" if impl == "ours" else "PyTorch (oneDNN / unfold+einsum)")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{layer}\n{p[0]}wd" for layer, p in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_title(shape, fontsize=10)
        ax.set_ylabel("median ms (log)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(_title(doc, "time per layer kind"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roofline(doc, path):
    plt = _pyplot()
    res = _results(doc)
    lim = doc["limits"]
    peak, bw = lim["sgemm_gflops"], lim["copy_gbps"]
    fig, ax = plt.subplots(figsize=(7, 5))
    ai = [r["gflops"] / r["gbps"] for r in res.values() if r.get("gbps")]
    lo, hi = min(ai + [0.1]) / 2, max(ai + [peak / bw]) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(peak, bw * x) for x in xs], "k-", lw=1.5,
            label=f"roof: sgemm {peak:.0f} GFLOP/s, copy {bw:.0f} GB/s")
    for (shape, layer, p, impl), r in res.items():
        if not r.get("gbps"):
            continue
        ax.scatter(r["gflops"] / r["gbps"], r["gflops"], marker=MARKERS.get(layer, "o"),
                   facecolors=COLORS[impl] if p == "forward" else "none",
                   edgecolors=COLORS[impl], s=40)
    for layer, m in MARKERS.items():
        ax.scatter([], [], marker=m, color="gray", label=layer)
    for impl, c in COLORS.items():
        ax.scatter([], [], marker="o", color=c, label=impl)
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="hollow: backward")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte a pass must move)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(_title(doc, "roofline"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(doc, what):
    m = doc.get("machine", {})
    return f"{what}: {m.get('processor', '?')}, {m.get('cpu_count', '?')} cores, float32"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__.split("\n")[0])
    p.add_argument("json")
    p.add_argument("--out-dir", help="where the PNGs go (default: beside the JSON)")
    args = p.parse_args(argv)
    with open(args.json) as f:
        doc = json.load(f)
    stem = os.path.splitext(os.path.basename(args.json))[0]
    out = args.out_dir or os.path.dirname(os.path.abspath(args.json))
    for fn, suffix in ((plot_times, "times"), (plot_roofline, "roofline")):
        print(fn(doc, os.path.join(out, f"{stem}_{suffix}.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
