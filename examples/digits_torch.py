"""Train a small PyTorch model whose layers are sharenet_fast's, on scikit-learn's bundled 8x8
digits (no download), in a plain PyTorch loop: torch.optim, autograd, optionally torch.compile.

    python examples/digits_torch.py [--first local|tiled|conv] [--epochs 15] [--compile]

The network: x (N, 1, 8, 8) -> first layer (16 filters 3x3, pad 1: sft.LocallyConnected2d,
sft.TiledConv2d 2x2, or sft.Conv2d) -> ReLU -> sft.TiledConv2d(16, 32, 3, tiles=2, stride=2)
-> ReLU -> flatten -> torch.nn.Linear(32*4*4, 10). Prints the test accuracy (a fixed 2/3 split).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import sharenet_fast.torch as sft


def data(seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)   # (1797, 1, 8, 8)
    y = torch.tensor(d.target)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    cut = 2 * len(y) // 3
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


class EinsumLC(sft.LocallyConnected2d):
    """The same layer (parameters, initialisation) computed the way Pogodin et al. do: unfold,
    then one einsum per group with a bank per position. The peer for the step-time comparison."""

    def forward(self, x):
        N = x.shape[0]
        P, Q, K, Cg, R, S = self.weight.shape
        G = self.groups
        cols = torch.nn.functional.unfold(x, (R, S), dilation=self.dilation,
                                          padding=self.padding, stride=self.stride)
        cols = cols.view(N, G, Cg * R * S, P * Q)
        w = self.weight.view(P * Q, G, K // G, Cg * R * S)
        y = torch.einsum("ngtl,lgkt->ngkl", cols, w).reshape(N, K, P, Q)
        return y if self.bias is None else y + self.bias.permute(2, 0, 1)


def model(first="local"):
    layer1 = {
        "local": lambda: sft.LocallyConnected2d(1, 16, 3, input_size=(8, 8), padding=1),
        "tiled": lambda: sft.TiledConv2d(1, 16, 3, tiles=(2, 2), padding=1),
        "conv": lambda: sft.Conv2d(1, 16, 3, padding=1),
    }[first]()
    return torch.nn.Sequential(
        layer1, torch.nn.ReLU(),
        sft.TiledConv2d(16, 32, 3, tiles=(2, 2), stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 10))


def train(first="local", epochs=15, compile=False, seed=0, batch=64, log=print):
    """Returns the test accuracy after `epochs` of Adam on mini-batches."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = data(seed)
    net = model(first)
    run = torch.compile(net, fullgraph=True) if compile else net
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        for idx in torch.randperm(len(ytr), generator=g).split(batch):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(run(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
        if log and (epoch + 1) % 5 == 0:
            log(f"epoch {epoch + 1}: loss {loss.item():.3f}")
    with torch.no_grad():
        acc = (run(xte).argmax(1) == yte).float().mean().item()
    if log:
        n = sum(p.numel() for p in net.parameters())
        log(f"{first} first layer, {n} parameters, compile={compile}: test accuracy "
            f"{acc:.3f} ({time.perf_counter() - t0:.1f} s)")
    return acc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--first", choices=("local", "tiled", "conv"), default="local")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True)")
    args = p.parse_args(argv)
    train(args.first, args.epochs, args.compile)


if __name__ == "__main__":
    main()
