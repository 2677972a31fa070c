"""A topographic network (in the spirit of All-TNN, Lu et al. 2023) on scikit-learn's bundled
8x8 digits (no download): two locally connected layers whose banks are pulled towards their
grid neighbours by sharenet_fast's neighbour penalty (cosine, 8-neighbourhood), the smoothness
term All-TNN adds to its loss.

    python examples/topographic_torch.py [--strength 0.5] [--epochs 12]

Prints the test accuracy, the time per training step, and each layer's mean cosine similarity
between neighbouring banks' filters (1 - the penalty at strength 1): it rises with --strength
(0 trains the same network with no pull: each bank free, as in a plain locally connected net).
Then it times the same model built the way such networks are written today (unfold + einsum
layers, the penalty in plain torch ops) and prints both step times.
"""
from __future__ import annotations

import argparse
import gc
import time

import torch

import sharenet_fast.torch as sft
from digits_torch import EinsumLC, data


def model(lc=sft.LocallyConnected2d):
    return torch.nn.Sequential(
        lc(1, 8, 3, input_size=(8, 8), padding=1), torch.nn.ReLU(),
        lc(8, 16, 3, input_size=(8, 8), stride=2, padding=1),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))


def torch_neighbour_penalty(weight, strength, metric="cosine", neighbourhood=8):
    """The peer's penalty: sft.neighbour_penalty's cosine formula (no wrap) in plain torch ops,
    one shifted slice of the bank grid per direction, autograd for the gradient."""
    assert metric == "cosine" and neighbourhood == 8
    P, Q, K = weight.shape[:3]
    v = weight.reshape(P, Q, K, -1)
    norm = v.norm(dim=-1).clamp_min(1e-8)            # reference.COSINE_EPS
    total, pairs = 0.0, 0
    for dp, dq in ((0, 1), (1, 0), (1, 1), (1, -1)):
        q0, q1 = max(0, -dq), Q - max(0, dq)          # columns that have this neighbour
        a, na = v[:P - dp, q0:q1], norm[:P - dp, q0:q1]
        b, nb = v[dp:, q0 + dq:q1 + dq], norm[dp:, q0 + dq:q1 + dq]
        total = total + (1 - (a * b).sum(-1) / (na * nb)).sum()
        pairs += a.shape[0] * a.shape[1]
    return strength * total / (pairs * K)


def smoothness(net):
    """Each locally connected layer's mean cosine similarity between neighbouring filters."""
    with torch.no_grad():
        return [1.0 - float(sft.neighbour_penalty(m.weight, 1.0, metric="cosine",
                                                  neighbourhood=8))
                for m in net if isinstance(m, sft.LocallyConnected2d)]


def train(strength=0.5, epochs=12, seed=0, batch=64, log=print, peer=False):
    """(test accuracy, seconds per step, [per-layer neighbour similarity]); peer=True: the
    same model on unfold + einsum layers with torch_neighbour_penalty."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = data(seed)
    net = model(EinsumLC if peer else sft.LocallyConnected2d)
    penalty = torch_neighbour_penalty if peer else sft.neighbour_penalty
    banks = [m.weight for m in net if isinstance(m, sft.LocallyConnected2d)]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    steps, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        for idx in torch.randperm(len(ytr), generator=g).split(batch):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
            if strength:
                loss = loss + sum(penalty(w, strength, metric="cosine", neighbourhood=8)
                                  for w in banks)
            loss.backward()
            opt.step()
            steps += 1
            if steps == 1:  # the first step compiles the kernels: not timed; nor is the
                gc.collect()  # full collection the compiler's ~500k objects trigger (~0.4 s)
                t0 = time.perf_counter()
    per_step = (time.perf_counter() - t0) / max(1, steps - 1)
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    sim = smoothness(net)
    if log:
        who = "unfold + einsum" if peer else "sharenet_fast"
        log(f"{who}, strength {strength}: test accuracy {acc:.3f}, "
            f"{per_step * 1e3:.1f} ms per step, neighbour cosine similarity per layer "
            + ", ".join(f"{s:.3f}" for s in sim))
    return acc, per_step, sim


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=12)
    args = p.parse_args(argv)
    train(0.0, args.epochs)
    _, ours, _ = train(args.strength, args.epochs)
    _, theirs, _ = train(args.strength, args.epochs, peer=True)
    print(f"step time: sharenet_fast {ours * 1e3:.1f} ms, unfold + einsum {theirs * 1e3:.1f} ms "
          f"({theirs / ours:.1f}x)")


if __name__ == "__main__":
    main()
