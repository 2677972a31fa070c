"""Plots of a benchmark run (the JSON of `python -m bench --json`, CPU or GPU), as PNG.

    python -m bench.report.plots RESULTS.json [--out-dir DIR]     (or python -m bench --plot STEM)

Writes <stem>_times.png (median time per layer kind and pass, each of ours beside each PyTorch
peer, one panel per suite shape) and <stem>_roofline.png (arithmetic intensity against achieved
GFLOP/s, under the measured ceilings: the sgemm rate and the read bandwidth, or the copy
bandwidth in a run that did not measure it). conv2d
reuses each weight N·P·Q times and sits near the compute roof; a locally connected layer uses
each weight N times and sits on the bandwidth slope: parameter sharing, measured.
"""
from __future__ import annotations

import argparse
import os
import sys

import sharenet_fast as sf
from bench.report import schema

LAYERS = tuple(sf.layers())                    # op names, the op table's order
PASSES = ("forward", schema.BACKWARD)
MARKERS = dict(zip(LAYERS, "os^D*"))
PALETTE = ("tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")


def _impls(doc):
    """[(impl, label)], ours first, in a fixed order (the colours)."""
    seen = {}
    for r in sorted(doc["results"], key=lambda r: r["role"] != "ours"):
        seen.setdefault(r["impl"], r["label"])
    return list(seen.items())


def pyplot():
    """matplotlib.pyplot on the Agg backend: PNGs without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path):
    """Lay out, write `path` as PNG and free the figure; the path is returned."""
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_times(doc, path):
    plt = pyplot()
    res = {schema.key(r): r for r in doc["results"]}
    shapes = list(doc["shapes"])
    groups = [(layer, p) for layer in LAYERS for p in PASSES
              if any(k[1] == layer and k[2] == p for k in res)]
    # the impls with a bar here (the penalty's peer has none): an empty bar has no colour
    impls = [(i, label) for i, label in _impls(doc)
             if any(k[3] == i and (k[1], k[2]) in groups for k in res)]
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.2 * len(shapes), 4.2), squeeze=False)
    width = 0.8 / len(impls)
    for ax, shape in zip(axes[0], shapes):
        for j, (impl, label) in enumerate(impls):
            xs, ys = [], []
            for i, (layer, p) in enumerate(groups):
                r = res.get((shape, layer, p, impl))
                if r is not None and r["median_s"] > 0:
                    xs.append(i + (j - (len(impls) - 1) / 2) * width)
                    ys.append(r["median_s"] * 1e3)
            ax.bar(xs, ys, width=width, color=PALETTE[j % len(PALETTE)], label=label)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{layer}\n{p}" for layer, p in groups], fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"{shape} (batch {doc['shapes'][shape]['N']})", fontsize=10)
        ax.set_ylabel("median ms (log)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(_title(doc, "time per layer kind"), fontsize=10)
    return save(fig, path)


def plot_roofline(doc, path):
    plt = pyplot()
    lim = doc["limits"]
    rows = [r for r in doc["results"] if r["pass"] in PASSES and not r["accumulate"]
            and r["gbps"] == r["gbps"] and r["gbps"] > 0]
    fig, ax = plt.subplots(figsize=(7, 5))
    # the roof of the floor (bench/harness.py): the read bandwidth where it was measured
    peak = lim.get("sgemm_gflops")
    bw_name, bw = next(((n, lim[n]) for n in ("read_gbps", "copy_gbps") if lim.get(n)),
                       (None, None))
    ai = [r["flops"] / r["bytes"] for r in rows]
    if peak and bw:
        lo, hi = min(ai + [0.1]) / 2, max(ai + [peak / bw]) * 2
        xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(xs, [min(peak, bw * x) for x in xs], "k-", lw=1.5,
                label=f"roof: sgemm {peak:.0f} GFLOP/s, {bw_name.split('_')[0]} {bw:.0f} GB/s")
    impls = [(i, label) for i, label in _impls(doc) if any(r["impl"] == i for r in rows)]
    colors = {impl: PALETTE[j % len(PALETTE)] for j, (impl, _) in enumerate(impls)}
    for r in rows:
        ax.scatter(r["flops"] / r["bytes"], r["gflops"], marker=MARKERS.get(r["layer"], "o"),
                   facecolors=colors[r["impl"]] if r["pass"] == "forward" else "none",
                   edgecolors=colors[r["impl"]], s=40)
    for layer, m in MARKERS.items():
        ax.scatter([], [], marker=m, color="gray", label=layer)
    for impl, label in impls:
        ax.scatter([], [], marker="o", color=colors[impl], label=label)
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="hollow: backward")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte a pass must move)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(_title(doc, "roofline"), fontsize=10)
    return save(fig, path)


def plot_all(doc, stem):
    """Both PNGs: [stem_times.png, stem_roofline.png] (a trailing .png on stem is dropped)."""
    stem = stem[:-4] if stem.endswith(".png") else stem
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    return [plot_times(doc, f"{stem}_times.png"), plot_roofline(doc, f"{stem}_roofline.png")]


def _title(doc, what):
    m, cfg = doc["machine"], doc["config"]
    return f"{what}: {m['device']}, float32, {cfg['mode']} run"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.report.plots",
                                description=__doc__.split("\n")[0])
    p.add_argument("json")
    p.add_argument("--out-dir", help="where the PNGs go (default: beside the JSON)")
    args = p.parse_args(argv)
    try:
        doc = schema.load(args.json)
    except ValueError as exc:
        print(f"python -m bench.report.plots: {exc}", file=sys.stderr)
        return 2
    stem = os.path.splitext(os.path.basename(args.json))[0]
    out = args.out_dir or os.path.dirname(os.path.abspath(args.json))
    for path in plot_all(doc, os.path.join(out, stem)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
