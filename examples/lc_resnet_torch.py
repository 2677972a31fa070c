"""A small locally connected ResNet with dynamic weight sharing (Pogodin et al., NeurIPS 2021,
"Towards biologically plausible convolutional networks") on scikit-learn's bundled 8x8 digits
(no download): every layer locally connected (no weight transport between positions), and every
`--every` optimizer steps sharenet_fast.torch.BankAverager sets each layer's banks to their mean
(the network is a convnet at that moment, and drifts apart again until the next sync).

    python examples/lc_resnet_torch.py [--every 10] [--groups-of all|GP,GQ] [--epochs 8]

Prints the test accuracy and the time per step with and without the averaging.
"""
from __future__ import annotations

import argparse
import time

import torch

import sharenet_fast.torch as sft
from digits_torch import data


class Block(torch.nn.Module):
    """x + LC(ReLU(LC(x))), both 3x3 with padding 1 (the size kept)."""

    def __init__(self, channels, size):
        super().__init__()
        self.a = sft.LocallyConnected2d(channels, channels, 3, input_size=size, padding=1)
        self.b = sft.LocallyConnected2d(channels, channels, 3, input_size=size, padding=1)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.a(x))))


def model():
    return torch.nn.Sequential(
        sft.LocallyConnected2d(1, 8, 3, input_size=(8, 8), padding=1), torch.nn.ReLU(),
        Block(8, (8, 8)),
        sft.LocallyConnected2d(8, 16, 3, input_size=(8, 8), stride=2, padding=1),
        torch.nn.ReLU(), Block(16, (4, 4)),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))


def local_layers(net):
    return [m for m in net.modules() if isinstance(m, sft.LocallyConnected2d)]


def train(every=10, groups_of="all", epochs=8, seed=0, batch=64, log=print):
    """(test accuracy, seconds per step, the BankAverager or None); every=None: no averaging."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = data(seed)
    net = model()
    averager = sft.BankAverager(local_layers(net), every, groups_of) if every else None
    if averager:
        with torch.no_grad():                      # start shared, as Pogodin et al. do: every
            for m in local_layers(net):            # bank a copy of one (the mean of random
                m.weight.copy_(m.weight[:1, :1].expand_as(m.weight))   # banks would be tiny)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    steps = 0
    for epoch in range(epochs):
        for idx in torch.randperm(len(ytr), generator=g).split(batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
            if averager:
                averager.step()
            steps += 1
            if steps == 1:                  # the first step compiles the kernels: not timed
                t0 = time.perf_counter()
    per_step = (time.perf_counter() - t0) / max(1, steps - 1)
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    if log:
        how = f"banks averaged every {every} steps over {groups_of}" if every else "no averaging"
        log(f"{how}: test accuracy {acc:.3f}, {per_step * 1e3:.1f} ms per step")
    return acc, per_step, averager


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--groups-of", default="all",
                   help="'all' or GP,GQ: blocks of positions averaged together")
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args(argv)
    groups = (args.groups_of if args.groups_of == "all"
              else tuple(int(v) for v in args.groups_of.split(",")))
    train(None, epochs=args.epochs)
    train(args.every, groups, args.epochs)


if __name__ == "__main__":
    main()
