"""Parameter sharing, measured: four first layers trained on scikit-learn's bundled 8x8 digits.

    python -m experiments.digits [--seeds 5] [--epochs 40] [--strengths 0.1,1] [--backend cpu]
                                 [--json PATH] [--plot PATH] [--markdown PATH] [--save]

--save writes experiments/results/digits.{json,md,png}.

The network is the same in every variant except its first layer, and every layer runs on this
package's kernels (forward, backward; the SGD updates are NumPy on their gradients):

    x (N, 1, 8, 8) -> layer 1: 16 filters 3x3, pad 1 -> ReLU -> conv2d 32 filters 3x3, pad 1
                   -> ReLU -> global average pool -> conv2d 10 filters 1x1 (dense) -> softmax

Everything after layer 1 is shared and pooled over all positions, so the network can only be
as translation-invariant as its first layer lets it: with a shared first layer a shifted digit
gives shifted feature maps and (border effects aside) the same pooled features.

    shared   conv2d                  one bank (16, 1, 3, 3)                       160 parameters
    tiled    tiled_conv2d 2x2        a 2 x 2 grid of banks                         640
    local    local2d                 one bank per output position (8 x 8)        10,240
    soft     local2d + soft_sharing_penalty(bank, mean bank, strength) on the weights and on
             the biases: the local banks pulled toward their mean (the penalty's gradient
             through the mean is zero, as sum(w - m) = 0)

Trained with SGD + momentum on a fixed 2/3 split; reported per variant: parameters, training
time, accuracy on the test third, and on the test third shifted by 1 and 2 pixels (each of the
four directions, zero fill, averaged): the translation-invariance claim of weight sharing. The
mean and range over --seeds runs (the same seeds for every variant). Deterministic: the CPU
kernels sum in a fixed order, so a seed gives the same numbers on every run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import sharenet_fast as sf
from sharenet_fast import optable

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VARIANTS = ("shared", "tiled", "local", "soft")
SHARING = {"soft": "local"}    # the soft variant is a local2d layer plus the penalty
K = 16                         # first-layer filters
K2 = 32                        # second-layer filters
CLASSES = 10
SHIFTS = (0, 1, 2)


def load_digits():
    """(images (1797, 1, 8, 8) float32 in [0, 1], labels (1797,)): scikit-learn's bundled copy
    of the UCI digits, read from the package (no download)."""
    try:
        from sklearn.datasets import load_digits as sk_load
    except ImportError as exc:
        raise SystemExit("experiments.digits needs scikit-learn (pip install scikit-learn, or "
                         "pip install -e '.[bench]')") from exc
    d = sk_load()
    return (d.images[:, None] / 16.0).astype(np.float32), d.target.astype(np.int64)


def split(x, y, seed=0):
    """A fixed stratification-free 2/3 : 1/3 split (its own seed: every run and variant tests
    on the same images)."""
    order = np.random.default_rng(seed).permutation(len(y))
    cut = 2 * len(y) // 3
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def shift(x, dy, dx):
    """Images moved by (dy, dx) pixels, zero fill (what leaves the frame is lost)."""
    out = np.zeros_like(x)
    H, W = x.shape[-2:]
    out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        x[..., max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


# ------------------------------------------------------------------------------ the network
class Net:
    """Layer 1 of the given variant, ReLU, a shared 3x3 conv2d, ReLU, global average pool, and
    a 1x1 conv2d as the classifier."""

    def __init__(self, variant, rng, backend="cpu", strength=0.0, dtype=np.float32):
        self.variant, self.backend, self.strength = variant, backend, strength
        self.dtype = dt = np.dtype(dtype)
        grid = {"shared": (), "tiled": (2, 2), "local": (8, 8), "soft": (8, 8)}[variant]
        # the variant's sharing word names its layer kind in the op table (soft: local2d)
        self.layer = optable.lookup(SHARING.get(variant, variant)).name
        self.fwd, self.bwd = getattr(sf, self.layer), getattr(sf, self.layer + "_backward")

        def he(shape, fan_in):
            return (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(dt)
        # every bank of layer 1 starts from the same draw of the shared filters, so the
        # variants differ only in what sharing lets them learn
        bank = he((K, 1, 3, 3), 9)
        self.params = {
            "w1": np.broadcast_to(bank, grid + bank.shape).copy(),
            "b1": np.zeros(grid + (K,), dt),
            "w2": he((K2, K, 3, 3), K * 9), "b2": np.zeros(K2, dt),
            "w3": he((CLASSES, K2, 1, 1), K2) / dt.type(2), "b3": np.zeros(CLASSES, dt),
        }
        self.velocity = {k: np.zeros_like(v) for k, v in self.params.items()}

    def first_layer_params(self):
        return self.params["w1"].size + self.params["b1"].size

    def n_params(self):
        return sum(v.size for v in self.params.values())

    def forward(self, x):
        p, be = self.params, self.backend
        x = x.astype(self.dtype, copy=False)
        h1 = self.fwd(x, p["w1"], p["b1"], padding=1, backend=be)
        a1 = np.maximum(h1, 0)
        h2 = sf.conv2d(a1, p["w2"], p["b2"], padding=1, backend=be)
        a2 = np.maximum(h2, 0)
        pooled = np.ascontiguousarray(a2.mean(axis=(2, 3), keepdims=True))
        z = sf.conv2d(pooled, p["w3"], p["b3"], backend=be)
        return z[:, :, 0, 0], (x, h1, a1, h2, pooled)

    def loss_and_grads(self, x, y):
        """(data loss, soft-sharing penalty, gradients of their sum)."""
        logits, (x, h1, a1, h2, pooled) = self.forward(x)
        n = len(y)
        shifted = logits - logits.max(axis=1, keepdims=True)
        prob = np.exp(shifted)
        prob /= prob.sum(axis=1, keepdims=True)
        loss = float(-np.log(prob[np.arange(n), y] + 1e-12).mean())
        dz = prob
        dz[np.arange(n), y] -= 1
        dz = np.ascontiguousarray((dz / n)[:, :, None, None], dtype=self.dtype)
        p, be = self.params, self.backend
        g3 = sf.conv2d_backward(dz, pooled, p["w3"], backend=be)
        # global average pool backward: every position gets 1/64 of its channel's gradient
        dh2 = np.ascontiguousarray(np.broadcast_to(g3.input / self.dtype.type(64), h2.shape)
                                   * (h2 > 0))
        g2 = sf.conv2d_backward(dh2, a1, p["w2"], padding=1, backend=be)
        dh1 = np.ascontiguousarray(g2.input * (h1 > 0))
        g1 = self.bwd(dh1, x, p["w1"], padding=1, needs=("weight", "bias"), backend=be)
        grads = {"w1": g1.weight, "b1": g1.bias, "w2": g2.weight, "b2": g2.bias,
                 "w3": g3.weight, "b3": g3.bias}
        penalty = 0.0
        if self.variant == "soft":         # each bank (weights and bias) toward the mean bank
            for k in ("w1", "b1"):
                mean = np.broadcast_to(p[k].mean(axis=(0, 1)), p[k].shape).copy()
                penalty += float(sf.soft_sharing_penalty(p[k], mean, self.strength,
                                                         grad_a=grads[k], backend=be))
        return loss, penalty, grads

    def sgd_step(self, grads, lr, momentum=0.9):
        for k, g in grads.items():
            v = self.velocity[k]
            v *= self.dtype.type(momentum)
            v -= self.dtype.type(lr) * g
            self.params[k] += v

    def accuracy(self, x, y, batch=256):
        hits = 0
        for i in range(0, len(y), batch):
            logits, _ = self.forward(np.ascontiguousarray(x[i:i + batch]))
            hits += int((logits.argmax(axis=1) == y[i:i + batch]).sum())
        return hits / len(y)


def shifted_accuracy(net, x, y, s):
    """Accuracy on the images moved s pixels right, left, down and up (mean of the four)."""
    if s == 0:
        return net.accuracy(x, y)
    return float(np.mean([net.accuracy(shift(x, dy, dx), y)
                          for dy, dx in ((0, s), (0, -s), (s, 0), (-s, 0))]))


def train(variant, data, seed, epochs, lr=0.05, batch=32, backend="cpu", strength=0.0,
          progress=None):
    (xtr, ytr), (xte, yte) = data
    rng = np.random.default_rng(seed)
    net = Net(variant, rng, backend, strength)
    # compile every kernel this variant uses on a throwaway copy: training time is not JIT time
    Net(variant, np.random.default_rng(0), backend, strength).loss_and_grads(
        np.ascontiguousarray(xtr[:batch]), ytr[:batch])
    t0 = time.perf_counter()
    losses, penalties = [], []
    for epoch in range(epochs):
        order = rng.permutation(len(ytr))
        total = total_pen = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss, penalty, grads = net.loss_and_grads(np.ascontiguousarray(xtr[idx]), ytr[idx])
            net.sgd_step(grads, lr)
            total += loss * len(idx)
            total_pen += penalty * len(idx)
        losses.append(total / len(ytr))
        penalties.append(total_pen / len(ytr))
        if progress:
            progress(f"{variant} seed {seed} epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    seconds = time.perf_counter() - t0
    acc = {s: shifted_accuracy(net, xte, yte, s) for s in SHIFTS}
    return dict(variant=variant, seed=seed, first_layer_params=int(net.first_layer_params()),
                params=int(net.n_params()), train_s=seconds, losses=losses, penalties=penalties,
                accuracy={str(s): a for s, a in acc.items()})


def run(seeds=5, epochs=40, backend="cpu", strengths=(0.1, 1.0), limit=None, log=print):
    """Every variant (soft once per strength) x every seed; the result dict (--json)."""
    x, y = load_digits()
    if limit:
        x, y = x[:limit], y[:limit]
    data = split(x, y)
    runs = []
    for variant, strength in [(v, 0.0) for v in VARIANTS[:3]] + [("soft", s) for s in strengths]:
        name = variant if variant != "soft" else f"soft {strength:g}"
        for seed in range(seeds):
            r = dict(train(variant, data, seed, epochs, backend=backend, strength=strength),
                     name=name, strength=strength)
            runs.append(r)
            log(f"{name:9s} seed {seed}: {r['train_s']:.1f} s, loss {r['losses'][-1]:.3f}, "
                + ", ".join(f"shift {s}: {r['accuracy'][str(s)]:.3f}" for s in SHIFTS))
    return dict(config=dict(seeds=seeds, epochs=epochs, backend=backend,
                            strengths=list(strengths), train=len(data[0][1]),
                            test=len(data[1][1]), lr=0.05, batch=32, momentum=0.9,
                            filters=[K, K2], sharenet_fast=sf.__version__),
                runs=runs, summary=summarise(runs))


def summarise(runs):
    out = {}
    for name in dict.fromkeys(r["name"] for r in runs):
        rs = [r for r in runs if r["name"] == name]
        out[name] = dict(
            first_layer_params=rs[0]["first_layer_params"], params=rs[0]["params"],
            train_s=float(np.mean([r["train_s"] for r in rs])),
            final_loss=float(np.mean([r["losses"][-1] for r in rs])),
            accuracy={str(s): dict(mean=float(np.mean([r["accuracy"][str(s)] for r in rs])),
                                   min=min(r["accuracy"][str(s)] for r in rs),
                                   max=max(r["accuracy"][str(s)] for r in rs))
                      for s in SHIFTS})
    return out


def label(name):
    if name.startswith("soft "):
        return f"local + soft sharing, strength {name.split()[1]}"
    return {"shared": "shared conv2d", "tiled": "tiled 2x2", "local": "locally connected"}[name]


def markdown(result):
    cfg = result["config"]
    lines = [f"Digits (8x8, {cfg['train']} train / {cfg['test']} test images), {cfg['epochs']} "
             f"epochs, {cfg['seeds']} seeds, backend {cfg['backend']}. Accuracy: mean over "
             "seeds (min-max); shifted = the test "
             "images moved 1 or 2 pixels in each of four directions, zero fill.", "",
             "| first layer | its params | all params | train s | final data loss | test acc "
             "| shifted 1 px | shifted 2 px |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in result["summary"].items():
        acc = [f"{a['mean'] * 100:.1f}% ({a['min'] * 100:.1f}-{a['max'] * 100:.1f})"
               for a in (s["accuracy"][str(k)] for k in SHIFTS)]
        lines.append(f"| {label(name)} | {s['first_layer_params']:,} | {s['params']:,} | "
                     f"{s['train_s']:.1f} | {s['final_loss']:.3f} | " + " | ".join(acc) + " |")
    return "\n".join(lines)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")                 # a PNG without a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, s in result["summary"].items():
        means = [s["accuracy"][str(k)]["mean"] * 100 for k in SHIFTS]
        lo = [m - s["accuracy"][str(k)]["min"] * 100 for m, k in zip(means, SHIFTS)]
        hi = [s["accuracy"][str(k)]["max"] * 100 - m for m, k in zip(means, SHIFTS)]
        ax.errorbar(SHIFTS, means, yerr=[lo, hi], marker="o", capsize=3,
                    label=f"{label(name)} ({s['first_layer_params']:,} params)")
    ax.set_xticks(SHIFTS)
    ax.set_xlabel("test images shifted by (pixels)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("digits: first layer with and without parameter sharing", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.digits",
                                description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--backend", default="cpu")
    p.add_argument("--strengths", default="0.1,1",
                   help="comma-separated soft-sharing strengths, one variant each (default 0.1,1)")
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--plot")
    p.add_argument("--save", action="store_true",
                   help="write experiments/results/digits.{json,md,png}")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be >= 1")
    try:
        args.strengths = [float(v) for v in args.strengths.split(",") if v.strip()]
    except ValueError:
        p.error(f"--strengths: numbers, comma-separated; got {args.strengths!r}")
    if any(not np.isfinite(v) or v < 0 for v in args.strengths):
        p.error("--strengths must be finite and >= 0")
    if args.save:
        stem = os.path.join(RESULTS, "digits")
        args.json, args.markdown, args.plot = (args.json or stem + ".json",
                                               args.markdown or stem + ".md",
                                               args.plot or stem + ".png")
    result = run(args.seeds, args.epochs, args.backend, args.strengths,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    text = markdown(result)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
