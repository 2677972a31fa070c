"""A small locally connected ResNet with dynamic weight sharing (Pogodin et al., NeurIPS 2021,
"Towards biologically plausible convolutional networks") on scikit-learn's bundled 8x8 digits
(no download): every layer locally connected (no weight transport between positions), and every
`--every` optimizer steps sharenet_fast.torch.BankAverager sets each layer's banks to their mean
(the network is a convnet at that moment, and drifts apart again until the next sync).

The residual blocks' layers are grouped (`--groups`, as in torch.nn.Conv2d: each filter sees
C / groups channels), as Pogodin et al.'s LocallyConnected2d allows.

    python examples/lc_resnet_torch.py [--every 10] [--groups-of all|GP,GQ] [--epochs 8]
                                       [--groups 2]

Prints the test accuracy and the time per step with and without the averaging, and the time
per step of the same model built on unfold + einsum (Pogodin et al.'s formulation).
"""
from __future__ import annotations

import argparse
import gc
import time

import torch

import sharenet_fast.torch as sft
from digits_torch import EinsumLC, data


class Block(torch.nn.Module):
    """x + LC(ReLU(LC(x))), both 3x3 with padding 1 (the size kept), `groups` channel groups."""

    def __init__(self, channels, size, groups, lc):
        super().__init__()
        self.a = lc(channels, channels, 3, input_size=size, padding=1, groups=groups)
        self.b = lc(channels, channels, 3, input_size=size, padding=1, groups=groups)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.a(x))))


def model(groups=2, lc=sft.LocallyConnected2d):
    return torch.nn.Sequential(
        lc(1, 8, 3, input_size=(8, 8), padding=1), torch.nn.ReLU(),
        Block(8, (8, 8), groups, lc),
        lc(8, 16, 3, input_size=(8, 8), stride=2, padding=1),
        torch.nn.ReLU(), Block(16, (4, 4), groups, lc),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))


def local_layers(net):
    return [m for m in net.modules() if isinstance(m, sft.LocallyConnected2d)]


def train(every=10, groups_of="all", epochs=8, seed=0, batch=64, log=print, groups=2,
          lc=sft.LocallyConnected2d):
    """(test accuracy, seconds per step, the BankAverager or None); every=None: no averaging;
    lc: the layer class (EinsumLC: the unfold + einsum peer)."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = data(seed)
    net = model(groups, lc)
    averager = sft.BankAverager(local_layers(net), every, groups_of) if every else None
    if averager:
        with torch.no_grad():                      # start shared, as Pogodin et al. do: every
            for m in local_layers(net):            # bank a copy of one (the mean of random
                m.weight.copy_(m.weight[:1, :1].expand_as(m.weight))   # banks would be tiny)
        sft.average_banks_(torch.zeros(2, 2, 1, 1, 1, 1))   # compile it before the timing
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
            if steps == 1:  # the first step compiles the kernels: not timed; nor is the
                gc.collect()  # full collection the compiler's ~500k objects trigger (~0.4 s)
                t0 = time.perf_counter()
    per_step = (time.perf_counter() - t0) / max(1, steps - 1)
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    if log:
        how = f"banks averaged every {every} steps over {groups_of}" if every else "no averaging"
        log(f"{lc.__name__}, groups {groups}, {how}: test accuracy {acc:.3f}, "
            f"{per_step * 1e3:.1f} ms per step")
    return acc, per_step, averager


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--groups-of", default="all",
                   help="'all' or GP,GQ: blocks of positions averaged together")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--groups", type=int, default=2, help="channel groups of the blocks' layers")
    args = p.parse_args(argv)
    groups_of = (args.groups_of if args.groups_of == "all"
                 else tuple(int(v) for v in args.groups_of.split(",")))
    _, ours, _ = train(None, epochs=args.epochs, groups=args.groups)
    train(args.every, groups_of, args.epochs, groups=args.groups)
    _, peer, _ = train(None, epochs=args.epochs, groups=args.groups, lc=EinsumLC)
    print(f"step time: sharenet_fast {ours * 1e3:.1f} ms, unfold + einsum {peer * 1e3:.1f} ms "
          f"({peer / ours:.1f}x)")


if __name__ == "__main__":
    main()
